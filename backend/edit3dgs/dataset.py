"""The GaussianAvatars/VHAP multi-view layout (formats.md §2), read and written.

    DIR/transforms.json                    all frames; top level: timestep_indices, camera_indices
    DIR/transforms_{train,val,test}.json   the splits (same frame fields)
        frame fields: timestep_index, timestep_index_original, timestep_id, camera_index,
                      camera_id, cx, cy (VHAP: cy = h - cy_opencv), fl_x, fl_y, w, h,
                      camera_angle_x, camera_angle_y, transform_matrix (camera-to-world,
                      OpenGL), file_path, fg_mask_path, flame_param_path (relative to DIR)
    DIR/canonical_flame_param.npz          shape, static_offset, zero expression/pose, jaw 0.3
                                           (GaussianAvatars' Scene recognises a FLAME dataset by it)
    DIR/images/{t:05d}_{c:02d}.png         RGB on white
    DIR/fg_masks/{t:05d}_{c:02d}.png       foreground masks (one 8-bit channel)
    DIR/flame_param/{t:05d}.npz            per-frame FLAME parameters: shape (S,) unbatched,
                                           the others with a leading 1, static_offset (1,V,3)

Frames are addressed by ``timestep_index`` (0..N-1 across all splits; train and val share
timesteps, test holds later ones). ``load_dataset`` reads every split, ``load_motion`` turns
a dataset folder into a sequence whose row t is the frame with ``timestep_index`` t, and
``write_capture`` writes the layout so that GaussianAvatars and VHAP load it as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cameras import VHAP, Camera, CameraFile, read_camera_file
from .errors import Edit3DGSError
from .flame_params import FlameParams, load_per_frame
from .fsutil import atomic_dir

SPLITS = ("train", "val", "test")
CANONICAL_JAW = 0.3  # VHAP's canonical FLAME parameters open the mouth


@dataclass
class Frame:
    timestep: int  # timestep_index
    camera: Camera
    image: Path | None
    fg_mask: Path | None
    flame_param: Path | None
    split: str = ""


@dataclass
class Capture:
    root: Path
    split: str
    frames: list[Frame]
    files: list[CameraFile] = field(default_factory=list)

    @property
    def cameras(self) -> list[Camera]:
        seen: dict[int, Camera] = {}
        for f in self.frames:
            seen.setdefault(f.camera.index, f.camera)
        return [seen[k] for k in sorted(seen)]

    @property
    def timesteps(self) -> list[int]:
        return sorted({f.timestep for f in self.frames})

    def flame_files(self) -> dict[int, Path]:
        """timestep_index -> its per-frame FLAME file (one file per timestep across splits)."""
        by_t: dict[int, Path] = {}
        for f in self.frames:
            if f.flame_param is None:
                continue
            old = by_t.setdefault(f.timestep, f.flame_param)
            if old != f.flame_param:
                raise Edit3DGSError(self.root, f"one flame_param_path per timestep_index (timestep_index {f.timestep})",
                                    f"{old.relative_to(self.root)} and {f.flame_param.relative_to(self.root)}")
        if not by_t:
            raise Edit3DGSError(self.files[0].path if self.files else self.root, "frames with flame_param_path", "none")
        return by_t

    def flame_params(self, n_verts: int | None = None, n_shape: int | None = None, n_expr: int | None = None) -> FlameParams:
        """The per-frame FLAME files as one sequence: row t is the frame with ``timestep_index`` t."""
        by_t = self.flame_files()
        ts = sorted(by_t)
        missing = sorted(set(range(ts[-1] + 1)) - set(ts))
        if ts[0] < 0 or missing:
            raise Edit3DGSError(self.root, "timestep_index values 0..N-1 across the splits (as VHAP numbers them)",
                                f"{'negative indices' if ts[0] < 0 else f'no frame with timestep_index {missing[0]}'}"
                                f" (indices {ts[0]}..{ts[-1]}, {len(ts)} of them)")
        return load_per_frame([by_t[t] for t in ts], n_verts, n_shape, n_expr)


def _frames_of(cf: CameraFile, split: str) -> list[Frame]:
    root = cf.path.parent
    out = []
    for i, (fr, cam) in enumerate(zip(cf.frames, cf.frame_cameras)):
        def rel(k):
            v = fr.get(k)
            if v is None or v == "":
                return None
            if not isinstance(v, str):
                raise Edit3DGSError(cf.path, f"'{k}' as a path relative to the dataset folder (frames[{i}])", repr(v)[:60])
            return root / v

        try:
            t = int(fr.get("timestep_index", 0))
        except (TypeError, ValueError):
            raise Edit3DGSError(cf.path, "integer timestep_index values", repr(fr.get("timestep_index"))) from None
        out.append(Frame(t, cam, rel("file_path"), rel("fg_mask_path"), rel("flame_param_path"), split))
    return out


def load_capture(root: os.PathLike | str, split: str = "train", convention: str = "auto") -> Capture:
    """One split (``transforms_{split}.json``; ``split=None``: ``transforms.json``)."""
    root = Path(root)
    name = "transforms.json" if split is None else f"transforms_{split}.json"
    path = root / name
    if not path.is_file():
        raise Edit3DGSError(path, f"a {name} (GaussianAvatars/VHAP layout)", "no such file")
    cf = read_camera_file(path, convention, allow_empty=True)
    return Capture(root, split or "all", _frames_of(cf, split or "all"), [cf])


def load_dataset(root: os.PathLike | str, convention: str = "auto") -> Capture:
    """Every split of a dataset folder (``transforms_{train,val,test}.json`` that exist, else
    ``transforms.json``), frames addressed by ``timestep_index``; a (timestep, camera) pair
    found twice is an error."""
    root = Path(root)
    names = [s for s in SPLITS if (root / f"transforms_{s}.json").is_file()]
    if not names:
        if not (root / "transforms.json").is_file():
            raise Edit3DGSError(root, "a dataset folder with transforms_{train,val,test}.json or transforms.json", "none of them")
        return load_capture(root, None, convention)
    frames, files, seen = [], [], {}
    for s in names:
        cf = read_camera_file(root / f"transforms_{s}.json", convention, allow_empty=True)
        files.append(cf)
        for f in _frames_of(cf, s):
            key = (f.timestep, f.camera.index)
            if key in seen:
                raise Edit3DGSError(cf.path, "each (timestep_index, camera_index) pair in one split only",
                                    f"timestep_index {key[0]}, camera_index {key[1]} also in transforms_{seen[key]}.json")
            seen[key] = s
            frames.append(f)
    return Capture(root, "all", frames, files)


def is_dataset(path: os.PathLike | str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f"transforms{s}.json").is_file() for s in ("", "_train", "_val", "_test"))


def load_motion(path: os.PathLike | str, n_verts: int | None = None, report: Callable[[str], None] | None = None,
                n_shape: int | None = None, n_expr: int | None = None) -> FlameParams:
    """A motion: a ``flame_param.npz`` sequence, or a dataset folder's per-frame files with row t
    the frame whose ``timestep_index`` is t (whichever split holds it). ``n_verts``, ``n_shape``,
    ``n_expr``: the head model's, which the parameters must fit."""
    path = Path(path)
    if path.is_dir():
        if is_dataset(path):
            cap = load_dataset(path)
            p = cap.flame_params(n_verts, n_shape, n_expr)
            if report is not None:
                report(f"motion: {path} — {p.num_timesteps} timesteps, row t = timestep_index t "
                       f"({', '.join(cf.path.name for cf in cap.files)})")
            return p
        files = sorted((path / "flame_param").glob("*.npz")) if (path / "flame_param").is_dir() else sorted(path.glob("*.npz"))
        if not files:
            raise Edit3DGSError(path, "a flame_param.npz or a dataset folder with flame_param/*.npz", "no .npz files")
        return load_per_frame(files, n_verts, n_shape, n_expr)
    return FlameParams.load(path, n_verts, n_shape, n_expr)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


def per_frame_arrays(one: FlameParams, n_verts: int | None = None) -> dict:
    """One timestep as VHAP writes it: ``shape`` unbatched, the rest with a leading 1,
    ``static_offset`` (1,V,3) always (zeros when the sequence has none and V is known)."""
    d = one.as_dict()
    d["shape"] = np.asarray(one.shape).reshape(-1)
    if one.static_offset is None and n_verts is not None:
        d["static_offset"] = np.zeros((1, n_verts, 3), np.float32)
    return d


def canonical_arrays(params: FlameParams, n_verts: int | None = None) -> dict:
    """``canonical_flame_param.npz`` as VHAP writes it: identity, zero expression and pose, jaw 0.3."""
    one = params.select([0])
    d = {"shape": np.asarray(params.shape).reshape(-1), "expr": np.zeros_like(one.expr),
         "rotation": np.zeros_like(one.rotation), "neck_pose": np.zeros_like(one.neck_pose),
         "jaw_pose": np.array([[CANONICAL_JAW, 0, 0]], np.float32), "eyes_pose": np.zeros_like(one.eyes_pose),
         "translation": np.zeros_like(one.translation)}
    if params.static_offset is not None:
        d["static_offset"] = params.static_offset
    elif n_verts is not None:
        d["static_offset"] = np.zeros((1, n_verts, 3), np.float32)
    return d


def _save_mask(path: Path, alpha) -> None:
    from PIL import Image

    from .images import to_uint8

    a = to_uint8(alpha)
    Image.fromarray(a.reshape(a.shape[0], a.shape[1])).save(str(path))


def write_capture(root: os.PathLike | str, splits: dict[str, tuple[Sequence[int], Sequence[Camera]]],
                  params: FlameParams, render: Callable[[int, Sequence[Camera]], list] | None = None,
                  overwrite: bool = False, n_verts: int | None = None) -> Path:
    """Write a capture in the GaussianAvatars/VHAP layout (module docstring).

    ``splits`` maps split name -> (timesteps, cameras), timesteps indexing ``params``
    (written as ``timestep_index_original``; ``timestep_index`` numbers the written
    timesteps 0..N-1 in order); ``render(t, cameras)`` returns one (rgb (H,W,3) on white,
    alpha (H,W,1)) pair per camera (floats in [0,1]); without it only the cameras and
    FLAME files are written. ``n_verts``: head vertices, for a zero ``static_offset``
    when ``params`` has none (GaussianAvatars reads it from every dataset).
    """
    from .images import save_png

    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"splits must be among {SPLITS}, got {bad}")
    originals = sorted({int(t) for ts, _ in splits.values() for t in ts})
    index_of = {t: i for i, t in enumerate(originals)}
    root = Path(root)
    with atomic_dir(root, overwrite=overwrite) as tmp:
        (tmp / "flame_param").mkdir()
        _save_npz(tmp / "canonical_flame_param.npz", canonical_arrays(params, n_verts))
        for t in originals:
            _save_npz(tmp / "flame_param" / f"{index_of[t]:05d}.npz", per_frame_arrays(params.select([t]), n_verts))
        all_frames, per_split = [], {}
        for split in SPLITS:
            timesteps, cams = splits.get(split, ([], []))
            frames = []
            for t in timesteps:
                ti = index_of[int(t)]
                images = render(int(t), cams) if render is not None and len(cams) else None
                for i, c in enumerate(cams):
                    name = f"{ti:05d}_{c.index:02d}.png"
                    fr = {"timestep_index": ti, "timestep_index_original": int(t), "timestep_id": f"frame_{int(t):05d}",
                          "camera_index": int(c.index), "camera_id": f"{c.index:02d}"}
                    fr.update(c.to_frame(VHAP))
                    fr.update(file_path=f"images/{name}", fg_mask_path=f"fg_masks/{name}",
                              flame_param_path=f"flame_param/{ti:05d}.npz")
                    frames.append(fr)
                    if images is not None:
                        (tmp / "images").mkdir(exist_ok=True)
                        (tmp / "fg_masks").mkdir(exist_ok=True)
                        rgb, alpha = images[i]
                        save_png(tmp / "images" / name, rgb)
                        _save_mask(tmp / "fg_masks" / name, alpha)
            per_split[split] = (frames, sorted({index_of[int(t)] for t in timesteps}), sorted({int(c.index) for c in cams}))
            all_frames += frames
        shared = {}
        if all_frames:  # shared intrinsics, as VHAP adds them for other NeRF libraries
            shared = {k: all_frames[0][k] for k in ("cx", "cy", "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y")}
        for split, (frames, ts, cs) in per_split.items():
            db = {"camera_convention": VHAP, **shared, "frames": frames, "timestep_indices": ts, "camera_indices": cs}
            (tmp / f"transforms_{split}.json").write_text(json.dumps(db, indent=1))
        db = {"camera_convention": VHAP, **shared, "frames": all_frames, "timestep_indices": list(range(len(originals))),
              "camera_indices": sorted({f["camera_index"] for f in all_frames})}
        (tmp / "transforms.json").write_text(json.dumps(db, indent=1))
    return root
