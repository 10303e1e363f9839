"""FLAME motion as rig channels, and back (numpy only; no bpy, so it is tested on its own).

A motion is a dict of float64 arrays, T timesteps (formats.md §1):
``expr (T,E)``, ``rotation (T,3)``, ``neck_pose (T,3)``, ``jaw_pose (T,3)``,
``eyes_pose (T,6)`` (left then right), ``translation (T,3)``; rotations are
axis-angle in radians. Files: a ``flame_param.npz`` sequence, or a
GaussianAvatars/VHAP dataset folder (its ``transforms_{train,val,test}.json``
name per-frame files; frames are addressed by ``timestep_index`` across the
splits, as the backend does), or a folder of ``flame_param/*.npz``; each
per-frame file holds the same keys with a leading dimension of 1.

On the rig (edit3dgs_addon/scene/rig.py) every bone has an identity rest
orientation in FLAME's axes (the root empty does the y-up -> z-up turn), so a
FLAME axis-angle is the bone's local quaternion as is; ``translation`` is the
armature object's location; expressions are the shape keys ``expr_000``...
The motion's ``shape``/``static_offset`` are never used: the avatar keeps its
identity (another person's motion is cross-identity reenactment).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

MOTION_KEYS = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
WIDTHS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
# (motion key, column offset) -> bone; the bones' quaternions are (w, x, y, z).
BONES = (("rotation", 0, "root"), ("neck_pose", 0, "neck"), ("jaw_pose", 0, "jaw"),
         ("eyes_pose", 0, "eye_left"), ("eyes_pose", 3, "eye_right"))


class MotionError(Exception):
    """A motion file the rig cannot take; the message names the file, what was expected and what was found."""


def _err(path, expected, found) -> MotionError:
    return MotionError(f"{path}: expected {expected}, found {found}")


# -- reading ------------------------------------------------------------------------------------
def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _err(path, "a FLAME parameter file (.npz)", f"{type(exc).__name__}: {exc}") from None


def validate(d: dict, path, n_expr: int) -> dict:
    """Check keys and shapes of one file's arrays; returns the motion (float64, 2-D) and ``shape`` if given."""
    missing = [k for k in MOTION_KEYS if k not in d]
    if missing:
        raise _err(path, f"keys {', '.join(MOTION_KEYS)}", f"no {', '.join(missing)} (keys: {', '.join(sorted(d)) or 'none'})")
    expr = np.asarray(d["expr"], np.float64)
    if expr.ndim == 1:
        expr = expr[None]
    if expr.ndim != 2 or expr.shape[0] < 1 or not 1 <= expr.shape[1] <= n_expr:
        raise _err(path, f"expr of shape (T,E) with 1 <= E <= {n_expr} (the rig's expression keys)", f"shape {expr.shape}")
    T = expr.shape[0]
    out = {"expr": expr}
    for k, w in WIDTHS.items():
        a = np.asarray(d[k], np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.shape != (T, w):
            raise _err(path, f"{k} of shape ({T},{w})", f"shape {np.asarray(d[k]).shape}")
        out[k] = a
    for k, a in out.items():
        if not np.isfinite(a).all():
            raise _err(path, f"finite values in {k}", "NaN or inf")
    if "shape" in d:
        out["shape"] = np.asarray(d["shape"], np.float64).reshape(-1)
    return out


SPLITS = ("train", "val", "test")


def _split_frames(tf: Path) -> list[dict]:
    try:
        data = json.loads(tf.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _err(tf, "a transforms JSON with a 'frames' list", f"{type(exc).__name__}: {exc}") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        raise _err(tf, "a transforms JSON with a 'frames' list", f"{type(frames if isinstance(data, dict) else data).__name__}")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise _err(tf, f"frames as JSON objects (frames[{i}])", type(fr).__name__)
    return frames


def _per_frame_files(folder: Path, split: str = "all") -> tuple[list[Path], str]:
    """The per-frame FLAME files of a dataset folder in motion order, and where they came from.

    With transforms files (VHAP's export, GaussianAvatars' data), frames are addressed by
    ``timestep_index`` as the backend does (backend/edit3dgs/dataset.py): ``split="all"`` reads
    every split (``transforms_{train,val,test}.json`` that exist, else ``transforms.json``) and
    row t is the frame whose ``timestep_index`` is t, whichever split holds it (0..N-1, none
    missing); one split gives its own timesteps in order (consecutive). A timestep whose frames
    name different FLAME files is refused. Without transforms files: ``flame_param/*.npz`` by name."""
    names = [f"transforms_{s}.json" for s in (SPLITS if split == "all" else (split,))]
    tfs = [folder / n for n in names if (folder / n).is_file()]
    if split == "all" and not tfs and (folder / "transforms.json").is_file():
        tfs = [folder / "transforms.json"]
    if split != "all" and not tfs:
        raise _err(folder / names[0], f"the {split} split of a dataset folder", "no such file")
    if tfs:
        by_t: dict[int, tuple[Path, Path]] = {}  # timestep_index -> (FLAME file, the transforms file naming it)
        for tf in tfs:
            for i, fr in enumerate(_split_frames(tf)):
                rel = fr.get("flame_param_path")
                if rel is None or rel == "":
                    continue
                if not isinstance(rel, str):
                    raise _err(tf, f"flame_param_path as a path relative to the dataset folder (frames[{i}])", repr(rel)[:60])
                t = fr.get("timestep_index", 0)
                if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                    raise _err(tf, f"timestep_index as a whole number of at least 0 (frames[{i}])", repr(t)[:60])
                old = by_t.setdefault(t, (folder / rel, tf))
                if old[0] != folder / rel:
                    raise _err(tf, f"one flame_param_path per timestep_index (timestep_index {t})",
                               f"{rel} here and {old[0].relative_to(folder)} in {old[1].name}")
        if not by_t:
            raise _err(tfs[0] if len(tfs) == 1 else folder, "frames with flame_param_path",
                       f"none in {', '.join(tf.name for tf in tfs)}")
        ts = sorted(by_t)
        first = 0 if split == "all" else ts[0]
        missing = sorted(set(range(first, ts[-1] + 1)) - set(ts))
        if missing:
            where = tfs[0] if len(tfs) == 1 else folder
            raise _err(where, f"timestep_index values {first}..N-1 with none missing"
                              f"{' across the splits (as VHAP numbers them)' if len(tfs) > 1 else ''}",
                       f"no frame with timestep_index {missing[0]} (indices {ts[0]}..{ts[-1]}, {len(ts)} of them)")
        note = (f"{len(ts)} frames by timestep_index {ts[0]}..{ts[-1]} from {', '.join(tf.name for tf in tfs)}")
        return [by_t[t][0] for t in ts], note
    sub = folder / "flame_param"
    files = sorted((sub if sub.is_dir() else folder).glob("*.npz"))
    if not files:
        raise _err(folder, "a flame_param.npz or a dataset folder with flame_param/*.npz", "no .npz files")
    return files, f"{len(files)} frames from {files[0].parent.name}/*.npz in name order"


def load_motion(path: os.PathLike | str, n_expr: int = 100, split: str = "all",
                report: Callable[[str], None] | None = None) -> dict:
    """A motion from a sequence npz or a dataset folder (``split``: see ``_per_frame_files``);
    raises MotionError (nothing half-read). ``report(text)`` is told which frames were read."""
    path = Path(path)
    if path.is_dir():
        files, note = _per_frame_files(path, split)
        parts = []
        for f in files:
            if not f.is_file():
                raise _err(f, "a per-frame FLAME file (.npz)", "no such file")
            m = validate(_read_npz(f), f, n_expr)
            if m["expr"].shape[0] != 1:
                raise _err(f, "a per-frame file (leading dimension 1)", f"{m['expr'].shape[0]} timesteps")
            parts.append(m)
        E = {p["expr"].shape[1] for p in parts}
        if len(E) != 1:
            raise _err(path, "the same number of expression components in every frame", f"{sorted(E)}")
        out = {k: np.concatenate([p[k] for p in parts]) for k in MOTION_KEYS}
        if "shape" in parts[0]:
            out["shape"] = parts[0]["shape"]
        if report is not None:
            report(note)
        return out
    if not path.is_file():
        raise _err(path, "a flame_param.npz or a dataset folder", "no such file or folder")
    return validate(_read_npz(path), path, n_expr)


def num_frames(motion: dict) -> int:
    return int(motion["expr"].shape[0])


# -- rotations ----------------------------------------------------------------------------------
def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """(...,3) axis-angle -> (...,4) unit quaternions (w, x, y, z)."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(t/2)/t, with its series near 0
    s = np.where(theta > 1e-8, np.sin(half) / np.where(theta > 1e-8, theta, 1.0), 0.5 - theta ** 2 / 48.0)
    return np.concatenate([np.cos(half), aa * s], -1)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(...,4) quaternions (w, x, y, z; normalised here) -> (...,3) axis-angle.

    The angle is 2 atan2(|v|, w) without folding w >= 0, so a quaternion made by
    ``axis_angle_to_quat`` gives its axis-angle back for any angle below 2 pi."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, v = q[..., :1], q[..., 1:]
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    theta = 2.0 * np.arctan2(n, w)
    s = np.where(n > 1e-12, theta / np.where(n > 1e-12, n, 1.0), 2.0 / np.where(np.abs(w) > 0, w, 1.0))
    return v * s


def continuous(q: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive quaternions (T,4) lie in one hemisphere (smooth interpolation)."""
    q = np.array(q, np.float64)
    for t in range(1, len(q)):
        if np.dot(q[t], q[t - 1]) < 0:
            q[t] = -q[t]
    return q


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation of unit quaternions (N,4) at fractions u (N,)."""
    d = np.sum(q0 * q1, -1)
    q1 = np.where(d[:, None] < 0, -q1, q1)
    d = np.abs(d)
    omega = np.arccos(np.clip(d, -1.0, 1.0))
    so = np.sin(omega)
    lin = so < 1e-6
    a = np.where(lin, 1.0 - u, np.sin((1.0 - u) * omega) / np.where(lin, 1.0, so))
    b = np.where(lin, u, np.sin(u * omega) / np.where(lin, 1.0, so))
    q = a[:, None] * q0 + b[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


# -- frame rates --------------------------------------------------------------------------------
def resample(motion: dict, src_fps: float, dst_fps: float) -> dict:
    """The motion at ``dst_fps`` (same duration; linear in expr/translation, slerp in rotations)."""
    if src_fps <= 0 or dst_fps <= 0:
        raise MotionError(f"frame rates: expected positive source and scene fps, found {src_fps} and {dst_fps}")
    T = num_frames(motion)
    if abs(src_fps - dst_fps) < 1e-9 or T == 1:
        return {k: np.array(v) for k, v in motion.items()}
    M = int(np.floor((T - 1) * dst_fps / src_fps + 1e-9)) + 1
    s = np.arange(M) * (src_fps / dst_fps)
    i0 = np.clip(np.floor(s).astype(int), 0, T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    u = s - i0
    out = {k: np.array(v) for k, v in motion.items() if k not in MOTION_KEYS}
    for k in ("expr", "translation"):
        a = motion[k]
        out[k] = a[i0] * (1 - u)[:, None] + a[i1] * u[:, None]
    for key, off, _ in BONES:
        q = continuous(axis_angle_to_quat(motion[key][:, off:off + 3]))
        aa = quat_to_axis_angle(slerp(q[i0], q[i1], u))
        out.setdefault(key, np.zeros((M, motion[key].shape[1])))[:, off:off + 3] = aa
    return out


# -- channels -----------------------------------------------------------------------------------
def expr_path(i: int) -> str:
    return f'key_blocks["expr_{i:03d}"].value'


def bone_path(bone: str) -> str:
    return f'pose.bones["{bone}"].rotation_quaternion'


def motion_to_channels(motion: dict, n_expr: int) -> dict:
    """Per-frame values of every channel the motion drives.

    Returns {"key": {(data_path, index): (T,)}, "armature": {(data_path, index): (T,)}}:
    all ``n_expr`` expression keys (components the file lacks are 0), the five bones'
    quaternions (sign-continuous), and the armature's location."""
    T = num_frames(motion)
    expr = np.zeros((T, n_expr))
    expr[:, :motion["expr"].shape[1]] = motion["expr"]
    key = {(expr_path(i), 0): expr[:, i] for i in range(n_expr)}
    arm = {}
    for k, off, bone in BONES:
        q = continuous(axis_angle_to_quat(motion[k][:, off:off + 3]))
        for c in range(4):
            arm[(bone_path(bone), c)] = q[:, c]
    for c in range(3):
        arm[("location", c)] = motion["translation"][:, c]
    return {"key": key, "armature": arm}


def channels_to_motion(key: dict, arm: dict, n_expr: int) -> dict:
    """Inverse of motion_to_channels: channel values (T,) -> the motion (float64)."""
    T = len(next(iter(arm.values())))
    out = {"expr": np.stack([np.asarray(key[(expr_path(i), 0)], np.float64) for i in range(n_expr)], 1)
           if n_expr else np.zeros((T, 0))}
    out["eyes_pose"] = np.zeros((T, 6))
    for k, off, bone in BONES:
        q = np.stack([np.asarray(arm[(bone_path(bone), c)], np.float64) for c in range(4)], 1)
        aa = quat_to_axis_angle(q)
        if k == "eyes_pose":
            out[k][:, off:off + 3] = aa
        else:
            out[k] = aa
    out["translation"] = np.stack([np.asarray(arm[("location", c)], np.float64) for c in range(3)], 1)
    return out


# -- writing ------------------------------------------------------------------------------------
def find_avatar_params(folder: os.PathLike | str) -> Path | None:
    """The avatar's own flame_param.npz (beside point_cloud.ply, or in the folder)."""
    folder = Path(folder)
    cands = [folder / "flame_param.npz"]
    its = sorted(folder.glob("point_cloud/iteration_*/flame_param.npz"),
                 key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name.split("_")[-1].isdigit() else -1)
    cands = its[::-1] + cands
    return next((c for c in cands if c.is_file()), None)


def avatar_identity(folder: os.PathLike | str) -> dict:
    """``shape`` (and ``static_offset`` when present) of the avatar in ``folder``."""
    p = find_avatar_params(folder)
    if p is None:
        raise _err(folder, "an avatar folder with flame_param.npz (its identity)", "none")
    d = _read_npz(p)
    if "shape" not in d:
        raise _err(p, "a 'shape' array", f"keys {', '.join(sorted(d))}")
    out = {"shape": np.asarray(d["shape"], np.float32).reshape(-1)}
    if "static_offset" in d:
        out["static_offset"] = np.asarray(d["static_offset"], np.float32)
    return out


def save_motion(path: os.PathLike | str, motion: dict, identity: dict) -> Path:
    """Write ``flame_param.npz`` (float32; shape/static_offset from ``identity``), atomically."""
    path = Path(path)
    arrays = {"shape": np.asarray(identity["shape"], np.float32)}
    if identity.get("static_offset") is not None:
        arrays["static_offset"] = np.asarray(identity["static_offset"], np.float32)
    for k in MOTION_KEYS:
        arrays[k] = np.ascontiguousarray(motion[k], np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
