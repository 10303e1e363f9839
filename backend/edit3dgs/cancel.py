"""Cancel points inside long loops (issue 17: a cancel is answered within 2 s whatever the load).

A job of ``edit3dgs serve`` runs inside ``watching(should_stop)``; code that can run longer than a
fraction of a second calls ``check()`` between pieces of work (the rasterizer between tile chunks,
forward and backward, a render between passes of cameras, a save between files), and ``check()``
raises ``CancelledError`` once ``should_stop()`` is true. Outside ``watching`` (the command line,
tests, other threads) ``check()`` does nothing, so library code can call it anywhere.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from .errors import CancelledError

_local = threading.local()


@contextlib.contextmanager
def watching(should_stop: Callable[[], bool]) -> Iterator[None]:
    """``check()`` in this thread raises ``CancelledError`` once ``should_stop()`` is true."""
    previous = getattr(_local, "should_stop", None)
    _local.should_stop = should_stop
    try:
        yield
    finally:
        _local.should_stop = previous


def check() -> None:
    """Raise ``CancelledError`` if the job this thread runs was cancelled (cheap: one call)."""
    f = getattr(_local, "should_stop", None)
    if f is not None and f():
        raise CancelledError("cancelled")
