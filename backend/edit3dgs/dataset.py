"""The GaussianAvatars/VHAP multi-view layout (formats.md §2), read and written.

    DIR/transforms_{train,val,test}.json   frames: timestep_index, camera_index, cx, cy,
                                           fl_x, fl_y, w, h, camera_angle_x, transform_matrix
                                           (camera-to-world, OpenGL), file_path, fg_mask_path,
                                           flame_param_path (paths relative to DIR)
    DIR/images/{t:05d}_{c:02d}.png         RGB on white
    DIR/fg_masks/{t:05d}_{c:02d}.png       foreground masks
    DIR/flame_param/{t:05d}.npz            per-frame FLAME parameters (leading dim 1)

A preprocessed NeRSemble subject loads with ``load_capture``; the built-in
avatar's capture is written by ``write_capture`` in the same layout.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cameras import Camera, camera_from_frame
from .errors import Edit3DGSError
from .flame_params import FlameParams, load_per_frame
from .fsutil import atomic_dir

SPLITS = ("train", "val", "test")


@dataclass
class Frame:
    timestep: int
    camera: Camera
    image: Path | None
    fg_mask: Path | None
    flame_param: Path | None


@dataclass
class Capture:
    root: Path
    split: str
    frames: list[Frame]

    @property
    def cameras(self) -> list[Camera]:
        seen: dict[int, Camera] = {}
        for f in self.frames:
            seen.setdefault(f.camera.index, f.camera)
        return [seen[k] for k in sorted(seen)]

    @property
    def timesteps(self) -> list[int]:
        return sorted({f.timestep for f in self.frames})

    def flame_params(self, n_verts: int | None = None) -> FlameParams:
        """Per-frame FLAME files stacked in timestep order."""
        by_t: dict[int, Path] = {}
        for f in self.frames:
            if f.flame_param is not None:
                by_t.setdefault(f.timestep, f.flame_param)
        if not by_t:
            raise Edit3DGSError(self.root / f"transforms_{self.split}.json", "frames with flame_param_path", "none")
        return load_per_frame([by_t[t] for t in sorted(by_t)], n_verts)


def load_capture(root: os.PathLike | str, split: str = "train") -> Capture:
    root = Path(root)
    path = root / f"transforms_{split}.json"
    if not path.is_file():
        raise Edit3DGSError(path, f"a transforms_{split}.json (GaussianAvatars/VHAP layout)", "no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise Edit3DGSError(path, "valid JSON", str(exc)) from None
    frames = []
    for i, fr in enumerate(data.get("frames", [])):
        cam = camera_from_frame(fr, data, path, f"frames[{i}]")
        rel = lambda k: (root / fr[k]) if fr.get(k) else None  # noqa: E731
        frames.append(Frame(int(fr.get("timestep_index", 0)), cam, rel("file_path"), rel("fg_mask_path"), rel("flame_param_path")))
    if not frames:
        raise Edit3DGSError(path, "at least one frame", "an empty 'frames' list")
    return Capture(root, split, frames)


def load_motion(path: os.PathLike | str, n_verts: int | None = None, split: str = "train") -> FlameParams:
    """A motion: a ``flame_param.npz`` sequence, or a dataset folder's per-frame files."""
    path = Path(path)
    if path.is_dir():
        if (path / f"transforms_{split}.json").is_file():
            return load_capture(path, split).flame_params(n_verts)
        files = sorted((path / "flame_param").glob("*.npz")) if (path / "flame_param").is_dir() else sorted(path.glob("*.npz"))
        if not files:
            raise Edit3DGSError(path, "a flame_param.npz or a dataset folder with flame_param/*.npz", "no .npz files")
        return load_per_frame(files, n_verts)
    return FlameParams.load(path, n_verts)


def write_capture(root: os.PathLike | str, splits: dict[str, tuple[Sequence[int], Sequence[Camera]]],
                  params: FlameParams, render: Callable[[int, Sequence[Camera]], list] | None = None,
                  overwrite: bool = False) -> Path:
    """Write a capture in the GaussianAvatars layout.

    ``splits`` maps split name -> (timesteps, cameras); ``params`` holds the FLAME
    parameters indexed by timestep; ``render(t, cameras)`` returns one
    (rgb (H,W,3), alpha (H,W,1)) pair per camera (floats in [0,1]); without it
    only the cameras and FLAME files are written.
    """
    from .views import save_png

    root = Path(root)
    with atomic_dir(root, overwrite=overwrite) as tmp:
        (tmp / "flame_param").mkdir()
        written_t: set[int] = set()
        for split, (timesteps, cams) in splits.items():
            frames = []
            for t in timesteps:
                if t not in written_t:
                    one = params.select([t])
                    d = one.as_dict()
                    d["shape"] = one.shape[None]  # per-frame files carry a leading dimension of 1
                    with open(tmp / "flame_param" / f"{t:05d}.npz", "wb") as fh:
                        np.savez(fh, **d)
                    written_t.add(t)
                images = render(t, cams) if render is not None else None
                for i, c in enumerate(cams):
                    name = f"{t:05d}_{c.index:02d}.png"
                    fr = c.to_frame()
                    fr.update(timestep_index=int(t), camera_angle_y=float(2 * math.atan(c.height / (2 * c.fy))),
                              file_path=f"images/{name}", fg_mask_path=f"fg_masks/{name}",
                              flame_param_path=f"flame_param/{t:05d}.npz")
                    frames.append(fr)
                    if images is not None:
                        (tmp / "images").mkdir(exist_ok=True)
                        (tmp / "fg_masks").mkdir(exist_ok=True)
                        rgb, alpha = images[i]
                        save_png(tmp / "images" / name, rgb)
                        save_png(tmp / "fg_masks" / name, np.repeat(np.asarray(alpha), 3, -1))
            (tmp / f"transforms_{split}.json").write_text(json.dumps({"frames": frames}, indent=1))
    return root
