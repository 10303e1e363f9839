"""Real spherical harmonics, degree 0..3, in the basis 3DGS and gsplat use.

Coefficients are laid out ``(..., K, 3)`` with ``K = (degree + 1) ** 2``:
index 0 is the DC band, 1..3 the first band (y, z, x), 4..8 the second,
9..15 the third. The signs and constants below are those of the Inria 3DGS
code and of ``gsplat.spherical_harmonics`` (they agree), so a PLY written
by GaussianAvatars renders the same here as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients per colour channel for ``degree`` (1, 4, 9 or 16)."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree must be 0, 1, 2 or 3, got {degree!r}")
    return (degree + 1) ** 2


def RGB2SH(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient whose evaluation (plus the 0.5 offset) gives ``rgb``."""
    return (rgb - 0.5) / C0


def SH2RGB(sh: torch.Tensor) -> torch.Tensor:
    """Colour of a DC coefficient: ``sh * C0 + 0.5``."""
    return sh * C0 + 0.5


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate SH colour along ``dirs``.

    Args:
        degree: bands to use, 0..3; ``sh`` may hold more coefficients than
            ``(degree + 1) ** 2`` (the extra ones are ignored, as in gsplat).
        sh: ``(..., K, 3)`` coefficients.
        dirs: ``(..., 3)`` view directions (need not be normalised; they are
            normalised here, so the gradient flows through the normalisation).

    Returns:
        ``(..., 3)`` raw value; callers add 0.5 and clamp at 0 (``sh_to_rgb``).
    """
    k = num_sh_bases(degree)
    if sh.shape[-2] < k:
        raise ValueError(
            f"sh has {sh.shape[-2]} coefficients per channel, degree {degree} needs {k}"
        )
    result = C0 * sh[..., 0, :]
    if degree == 0:
        return result
    d = F.normalize(dirs, dim=-1)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    result = result - C1 * y * sh[..., 1, :] + C1 * z * sh[..., 2, :] - C1 * x * sh[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    result = (
        result
        + C2[0] * xy * sh[..., 4, :]
        + C2[1] * yz * sh[..., 5, :]
        + C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
        + C2[3] * xz * sh[..., 7, :]
        + C2[4] * (xx - yy) * sh[..., 8, :]
    )
    if degree == 2:
        return result
    return (
        result
        + C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
        + C3[1] * xy * z * sh[..., 10, :]
        + C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
        + C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
        + C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
        + C3[5] * z * (xx - yy) * sh[..., 14, :]
        + C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :]
    )


def sh_to_rgb(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Renderer colour: ``clamp_min(eval_sh(degree, sh, dirs) + 0.5, 0)``."""
    return torch.clamp_min(eval_sh(degree, sh, dirs) + 0.5, 0.0)
