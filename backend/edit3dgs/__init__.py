"""Edit3DGS backend: edit FLAME-bound 3D Gaussian head avatars with text.

Read top down: ``flame`` (the head model) -> ``avatar`` (Gaussians bound to
its faces) -> ``render`` -> ``render_avatar`` -> ``masks`` -> ``edit`` -> ``fit``
-> ``loop``; the front ends are ``cli`` and ``server`` (over ``protocol``).
"""

__version__ = "0.1.0"
