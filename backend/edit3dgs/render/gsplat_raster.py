"""The CUDA path: a thin wrapper over ``gsplat.rasterization`` (gsplat 1.5.x).

gsplat is imported on first use, so importing ``edit3dgs.render`` never
needs it (nor CUDA). The call fixes the conventions the torch fallback
reproduces: ``packed=False``, ``rasterize_mode="classic"``,
``render_mode="RGB+ED"`` (expected depth = accumulated z / alpha, gsplat's
clamp at 1e-10 makes it 0 where nothing was hit), ``radius_clip=0``.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def gsplat_available() -> bool:
    """True when ``gsplat`` imports (it still needs CUDA tensors to run)."""
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return False
    return True


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same signature and outputs as ``torch_raster.rasterize_torch``."""
    from gsplat import rasterization

    dtype = means.dtype
    # gsplat's kernels are float32; the casts keep the autograd graph.
    f32 = [t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
    if backgrounds is not None:
        backgrounds = backgrounds.float()
    render, alpha, _meta = rasterization(
        *f32,
        width,
        height,
        near_plane=near,
        far_plane=far,
        radius_clip=0.0,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=backgrounds,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    rgb, depth = render[..., :3], render[..., 3:4]
    return rgb.to(dtype), alpha.to(dtype), depth.to(dtype)
