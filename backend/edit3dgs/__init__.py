"""Edit3DGS backend: edit FLAME-bound 3D Gaussian head avatars with text.

Read top down: ``flame`` (the head model) -> ``avatar`` (Gaussians bound to
its faces) -> ``render`` -> ``edit`` -> ``fit`` -> ``loop``.
"""

__version__ = "0.1.0"
