"""Rendering an avatar: FLAME posing -> binding transform -> rasterize, per timestep and camera."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .avatar import GaussianAvatar
from .bundle import AvatarBundle
from .cameras import Camera, stack
from .flame_params import FlameParams


def pick_device(name: str = "auto") -> torch.device:
    """cuda -> mps -> cpu for "auto"; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


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


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(path: os.PathLike | str, img, alpha=None) -> None:
    """Write an (H,W,3) float image in [0,1] (optionally with (H,W,1) alpha) as PNG (Pillow)."""
    from PIL import Image

    a = to_uint8(img)
    if alpha is not None:
        a = np.concatenate([a, to_uint8(alpha)], -1)
    Image.fromarray(a).save(str(path), format="PNG")  # PNG whatever the name (a temporary's ends in .part)


def load_png(path: os.PathLike | str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


from .posing import WorldPoser  # noqa: E402,F401  (the one posing path; kept importable from here)
