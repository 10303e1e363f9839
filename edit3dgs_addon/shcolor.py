"""The Gaussians' colours as the backend renders them, for the preview (numpy only, no bpy).

The backend's colour of a Gaussian seen from a camera is
``clamp_min(SH(dir) + 0.5, 0)`` with ``dir = mean - camera centre`` in the
avatar's (FLAME) space (backend/edit3dgs/render/sh.py, the basis of 3DGS and
gsplat). The rig file holds the DC colour (``gs_color``, SH0 + 0.5 clamped)
and the higher bands (``gs_sh_rest``); ``view_colors`` adds the bands seen
from one camera. Those are display (sRGB) values; a FLOAT_COLOR attribute
holds scene-linear ones (``srgb_to_linear``), so the preview is not washed out.
The preview's Geometry Nodes compute the same per point and frame
(scene/preview.py); these functions are their reference in the tests.

Each Gaussian's alpha is ``opacity * exp(-d^2 / 2 sigma^2)``, cut off where it
falls below 1/255: at ``gaussian_extent(opacity)`` sigmas, at most 3.33
(backend/edit3dgs/render/torch_raster.py and gsplat); the preview's spheres
end there.
"""

from __future__ import annotations

import numpy as np

# Copied from backend/edit3dgs/render/torch_raster.py (ALPHA_MIN, EXTENT_MAX); tests/test_preview_colors.py checks
ALPHA_MIN = 1.0 / 255.0
EXTENT_MAX = 3.33
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display (sRGB-encoded) values in [0, 1] -> scene-linear (the IEC 61966-2-1 curve)."""
    c = np.clip(np.asarray(c, np.float32), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def gaussian_extent(opacity: np.ndarray) -> np.ndarray:
    """How many sigmas from its centre a Gaussian of ``opacity`` is drawn: min(3.33, sqrt(2 ln(255 o))),
    beyond which its alpha is below 1/255 (0 where the opacity itself is)."""
    o = np.asarray(opacity, np.float32)
    return np.minimum(EXTENT_MAX, np.sqrt(2.0 * np.log(np.maximum(o / ALPHA_MIN, 1.0)))).astype(np.float32)


def sh_rest(rest: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(N,3): the bands above DC of (N,K-1,3) coefficients seen along (N,3) directions (K = 4, 9 or 16)."""
    rest = np.asarray(rest, np.float32)
    k = rest.shape[1] + 1
    if k not in (1, 4, 9, 16):
        raise ValueError(f"expected 0, 3, 8 or 15 SH coefficients above DC, found {k - 1}")
    out = np.zeros((rest.shape[0], 3), np.float32)
    if k == 1:
        return out
    d = np.asarray(dirs, np.float32)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    out += -C1 * y * rest[:, 0] + C1 * z * rest[:, 1] - C1 * x * rest[:, 2]
    if k == 4:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out += (C2[0] * xy * rest[:, 3] + C2[1] * yz * rest[:, 4] + C2[2] * (2 * zz - xx - yy) * rest[:, 5]
            + C2[3] * xz * rest[:, 6] + C2[4] * (xx - yy) * rest[:, 7])
    if k == 9:
        return out
    out += (C3[0] * y * (3 * xx - yy) * rest[:, 8] + C3[1] * xy * z * rest[:, 9]
            + C3[2] * y * (4 * zz - xx - yy) * rest[:, 10] + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * rest[:, 11]
            + C3[4] * x * (4 * zz - xx - yy) * rest[:, 12] + C3[5] * z * (xx - yy) * rest[:, 13]
            + C3[6] * x * (xx - 3 * yy) * rest[:, 14])
    return out


def view_colors(dc_color: np.ndarray, rest: np.ndarray | None, means: np.ndarray, camera_centre) -> np.ndarray:
    """(N,3) display colours in [0, 1] of Gaussians at ``means`` seen from ``camera_centre`` (same space)."""
    c = np.asarray(dc_color, np.float32)
    if rest is not None and rest.shape[1]:
        c = c + sh_rest(rest, np.asarray(means, np.float32) - np.asarray(camera_centre, np.float32)[None])
    return np.clip(c, 0.0, 1.0)
