"""``python -m edit3dgs.cli``: the same as the ``edit3dgs`` console script."""

import sys

from . import main

sys.exit(main())
