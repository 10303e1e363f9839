"""Rendering world-space Gaussians: the one entry point, ``rasterize``.

Two backends share gsplat 1.x's conventions (docs/internals.md, "Renderer"):
``gsplat`` (CUDA) and ``torch``, a pure-PyTorch tile rasterizer for CPU and
MPS. ``backend="auto"`` takes gsplat for CUDA tensors when it imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..cancel import check as check_cancel
from .gsplat_raster import gsplat_available, rasterize_gsplat
from .sh import C0, RGB2SH, SH2RGB, eval_sh, num_sh_bases, sh_to_rgb
from .torch_raster import rasterize_torch

__all__ = [
    "RenderResult",
    "rasterize",
    "eval_sh",
    "sh_to_rgb",
    "num_sh_bases",
    "RGB2SH",
    "SH2RGB",
    "C0",
]

BACKENDS = ("auto", "gsplat", "torch")

# Peak memory of a render grows with cameras x Gaussians (projection, SH colours and binning are
# per pair). ``rasterize`` draws at most this many camera-Gaussian pairs at once (whole cameras;
# at least one camera per pass), so peak memory is bounded by this setting, not by the camera
# count: 16 cameras of a 2-million-Gaussian avatar go through in passes of 4 at the default.
# Set it with $EDIT3DGS_RENDER_MAX_PAIRS (or this attribute); benchmarks/render_memory_bench.py
# measures the bound.
MAX_PAIRS = int(os.environ.get("EDIT3DGS_RENDER_MAX_PAIRS", 8_000_000))
# The pure-PyTorch rasterizer projects, bins and gathers all cameras of a pass before its first
# cancel point (between tile chunks): 15 cameras of the built-in avatar took 2.0-2.45 s beside two
# busy loops on 2 cores (issue 17: cancel within 2 s). Passes of at most 8 cameras halve that at
# no measurable cost (45 renders, quiet 2-core machine: 3.47 s vs 3.70 s in one pass; 4 per pass
# cost 6 %); gsplat is not affected.
TORCH_CAMERAS_PER_PASS = 8


@dataclass
class RenderResult:
    """Images of ``C`` cameras: ``rgb (C,H,W,3)`` background included,
    ``alpha (C,H,W,1)`` accumulated opacity, ``depth (C,H,W,1)`` expected
    camera z (``sum(w_i z_i) / alpha``, 0 where alpha is 0), and the name
    of the ``backend`` that drew them ("gsplat" or "torch")."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    backend: str


def rasterize(
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
    background: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 100.0,
    backend: str = "auto",
    eps2d: float = 0.3,
    tile_size: int = 16,
) -> RenderResult:
    """Render world-space Gaussians into ``C`` pinhole cameras.

    Args:
        means: ``(N,3)`` centres, metres.
        quats: ``(N,4)`` rotations, w first (normalised here).
        scales: ``(N,3)`` standard deviations, linear (already exp'd).
        opacities: ``(N,)`` in (0,1) (already sigmoid'ed).
        colors: ``(N,K,3)`` SH coefficients when ``sh_degree`` is given
            (``K >= (sh_degree+1)^2``), else ``(N,3)`` RGB.
        viewmats: ``(C,4,4)`` world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: ``(C,3,3)`` pinhole intrinsics with principal point.
        width, height: image size in pixels, shared by all cameras.
        sh_degree: 0..3, or None for RGB colours.
        background: None (black), ``(3,)`` or ``(C,3)``, added as ``bg * (1 - alpha)``.
        near, far: Gaussians whose camera z is outside ``[near, far]`` are culled.
        backend: "auto", "gsplat" or "torch".
        eps2d: added to the diagonal of every 2D covariance (pixels^2).
        tile_size: tile edge in pixels. Only speed depends on it; on a CPU
            the torch backend is 10-25% faster with 8.

    Returns:
        ``RenderResult``; differentiable w.r.t. means, quats, scales,
        opacities, colors (and background).
    """
    N = _check_tensor("means", means, (None, 3))
    dtype, device = means.dtype, means.device
    if not dtype.is_floating_point:
        raise ValueError(f"means must be a floating-point tensor, got {dtype}")
    _check_tensor("quats", quats, (N, 4), device)
    _check_tensor("scales", scales, (N, 3), device)
    _check_tensor("opacities", opacities, (N,), device)
    if sh_degree is None:
        _check_tensor("colors", colors, (N, 3), device, hint="RGB colours (sh_degree=None)")
    else:
        if not isinstance(sh_degree, int) or sh_degree not in (0, 1, 2, 3):
            raise ValueError(f"sh_degree must be None or 0..3, got {sh_degree!r}")
        K = (sh_degree + 1) ** 2
        _check_tensor("colors", colors, (N, None, 3), device, hint=f"SH coefficients for sh_degree={sh_degree}")
        if colors.shape[1] < K:
            raise ValueError(
                f"colors has {colors.shape[1]} SH coefficients per channel, "
                f"sh_degree={sh_degree} needs {K}"
            )
    C = _check_tensor("viewmats", viewmats, (None, 4, 4), device)
    if C == 0:
        raise ValueError("viewmats must hold at least one camera, got shape (0, 4, 4)")
    _check_tensor("Ks", Ks, (C, 3, 3), device)
    for name, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (near < far):
        raise ValueError(f"near must be smaller than far, got near={near}, far={far}")
    if eps2d < 0:
        raise ValueError(f"eps2d must be >= 0, got {eps2d}")
    backgrounds = None
    if background is not None:
        if not isinstance(background, torch.Tensor):
            raise ValueError(f"background must be a tensor of shape (3,) or ({C}, 3), got {type(background).__name__}")
        if tuple(background.shape) == (3,):
            backgrounds = background[None].expand(C, 3)
        elif tuple(background.shape) == (C, 3):
            backgrounds = background
        else:
            raise ValueError(
                f"background must have shape (3,) or ({C}, 3), got {tuple(background.shape)}"
            )
        if background.device != device:
            raise ValueError(f"background is on {background.device}, means on {device}")
        backgrounds = backgrounds.to(dtype)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    elif backend == "gsplat":
        if device.type != "cuda":
            raise ValueError(f"backend='gsplat' needs CUDA tensors, got tensors on {device}")
        if not gsplat_available():
            raise ImportError("backend='gsplat' needs the gsplat package (pip install gsplat)")

    fn = rasterize_gsplat if backend == "gsplat" else rasterize_torch
    per_pass = max(1, MAX_PAIRS // max(1, N))
    if backend == "torch":
        per_pass = min(per_pass, TORCH_CAMERAS_PER_PASS)
    outs = []
    q, sc, op, co = quats.to(dtype), scales.to(dtype), opacities.to(dtype), colors.to(dtype)
    vm_all, K_all = viewmats.to(dtype), Ks.to(dtype)
    for c0 in range(0, C, per_pass):  # whole cameras per pass, at most MAX_PAIRS camera-Gaussian pairs
        check_cancel()
        sl = slice(c0, c0 + per_pass)
        outs.append(fn(
            means, q, sc, op, co, vm_all[sl], K_all[sl], width, height,
            sh_degree=sh_degree, backgrounds=None if backgrounds is None else backgrounds[sl], near=near, far=far,
            eps2d=eps2d, tile_size=tile_size,
        ))
    if len(outs) == 1:
        rgb, alpha, depth = outs[0]
    else:
        rgb, alpha, depth = (torch.cat(parts) for parts in zip(*outs))
    return RenderResult(rgb=rgb, alpha=alpha, depth=depth, backend=backend)


def _check_tensor(name, value, shape, device=None, hint=""):
    """Check ``value`` is a tensor of ``shape`` (None = any size) on ``device``;
    returns the size of its first dimension."""
    want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    what = f" ({hint})" if hint else ""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape {want}{what}, got {type(value).__name__}")
    if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValueError(f"{name} must have shape {want}{what}, got {tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device}, means on {device}")
    return value.shape[0]
