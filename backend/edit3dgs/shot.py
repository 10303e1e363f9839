"""A film shot: one camera and one set of FLAME parameters per frame, splat-rendered to RGBA PNGs.

Blender bakes the shot (edit3dgs_addon/shotcam.py): a transforms JSON with one
camera per frame (``camera_index`` = the shot's frame index, OpenGL c2w in
FLAME space) and a ``flame_param.npz`` with one timestep per frame. Frames are
rendered on a black background and written with straight (un-premultiplied)
alpha, as PNG expects, so compositing them over anything is exact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .bundle import AvatarBundle
from .cameras import Camera, load_cameras
from .errors import Edit3DGSError
from .flame_params import FlameParams


def straight_rgba(rgb: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Premultiplied (H,W,3) colour and (H,W,1) alpha -> straight RGBA (H,W,4) uint8."""
    a = alpha.clamp(0, 1)
    c = torch.where(a > 1e-6, rgb / a.clamp_min(1e-6), torch.zeros_like(rgb)).clamp(0, 1)
    out = torch.cat([c, a], -1).detach().cpu().numpy()
    return (out * 255 + 0.5).astype(np.uint8)


def load_shot(cameras_json: os.PathLike | str, flame_params: os.PathLike | str,
              bundle: AvatarBundle) -> tuple[list[Camera], FlameParams]:
    cams = load_cameras(cameras_json)
    params = FlameParams.load(flame_params, **bundle.head.param_sizes())
    if params.num_timesteps != len(cams):
        raise Edit3DGSError(flame_params, f"{len(cams)} timesteps (one per camera of {cameras_json})",
                            f"{params.num_timesteps}")
    return cams, params.with_identity(bundle.params)


def render_shot(bundle: AvatarBundle, cameras: Sequence[Camera], params: FlameParams, out_dir: os.PathLike | str,
                progress: Callable[[str, int, int], None] | None = None, device=None) -> list[Path]:
    """Render frame i with cameras[i] and params' timestep i; writes ``out_dir/{i:05d}.png`` (RGBA)."""
    from PIL import Image

    from .render_avatar import render_frames

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    n = len(cameras)
    for i, cam in enumerate(cameras):
        if progress is not None:
            progress("render", i, n)
        verts = bundle.pose(params, [i], device=device)
        res = next(render_frames(bundle, verts, [cam], background=(0.0, 0.0, 0.0)))
        p = out_dir / f"{i:05d}.png"
        Image.fromarray(straight_rgba(res.rgb[0], res.alpha[0])).save(str(p))
        paths.append(p)
    if progress is not None:
        progress("render", n, n)
    return paths


def deliver(files: Sequence[Path], outputs: Sequence[os.PathLike | str]) -> list[str]:
    """Move rendered frames to their final paths (the folders are made; existing frames replaced)."""
    if len(files) != len(outputs):
        raise Edit3DGSError(None, f"{len(files)} output paths", f"{len(outputs)}")
    done = []
    for src, dst in zip(files, outputs):
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        done.append(str(dst))
    return done
