"""Rendering an avatar: FLAME posing -> binding transform -> rasterize, per timestep and camera."""

from __future__ import annotations

from typing import Sequence

import torch

from .avatar import GaussianAvatar
from .bundle import AvatarBundle
from .cameras import Camera, stack


def background_tensor(bg, device) -> torch.Tensor:
    if isinstance(bg, str):
        bg = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}[bg]
    return torch.tensor(bg, dtype=torch.float32, device=device)


def render_frames(bundle: AvatarBundle, verts: torch.Tensor, cameras: Sequence[Camera], background=(1.0, 1.0, 1.0),
                  gaussians: GaussianAvatar | None = None, colors: torch.Tensor | None = None):
    """Render posed meshes ``verts`` (T,V,3) from ``cameras``: RenderResult per timestep, batched over cameras.

    ``colors`` (N,3) replaces the Gaussians' SH with flat RGB (used for region masks).
    """
    from .render import rasterize

    g = bundle.gaussians if gaussians is None else gaussians
    dev = g.device
    vm, K, w, h = stack(cameras, dev)
    bg = background_tensor(background, dev)
    for t in range(verts.shape[0]):
        wg = bundle.world(verts[t], g)
        if colors is None:
            yield rasterize(wg.means, wg.quats, wg.scales, wg.opacities, wg.sh, vm, K, w, h,
                            sh_degree=wg.sh_degree, background=bg)
        else:
            yield rasterize(wg.means, wg.quats, wg.scales, wg.opacities, colors, vm, K, w, h, background=bg)


from .posing import WorldPoser  # noqa: E402,F401  (the one posing path; kept importable from here)
