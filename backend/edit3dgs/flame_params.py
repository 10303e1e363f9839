"""FLAME parameter sequences: GaussianAvatars' ``flame_param.npz`` and per-frame files.

Keys and shapes (formats.md §1), T timesteps, V head vertices:
shape (300,), expr (T,100), rotation (T,3), neck_pose (T,3), jaw_pose (T,3),
eyes_pose (T,6) left then right, translation (T,3), static_offset (1,V,3),
dynamic_offset (T,V,3). Rotations are axis-angle in radians.

Offsets load batched or not ((1,V,3) or (V,3); (T,V,3) or (V,3) for one timestep), and
for FLAME with or without the 120 teeth vertices (5023 <-> 5143: teeth get zero offsets,
as GaussianAvatars pads them, or are dropped).

``dynamic_offset`` is read and written back unchanged but never moves the mesh: Edit3DGS
follows GaussianAvatars, whose ``FlameHead.forward`` takes it and does not add it (its
avatars save zeros), so an avatar is posed exactly where GaussianAvatars poses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import Edit3DGSError
from .fsutil import atomic_path
from .validate import float32_array, read_npz

# FLAME's 5023 vertices, and 5143 with GaussianAvatars'/VHAP's 120 teeth vertices appended.
FLAME_VERTS = {5023, 5143}
PER_FRAME_KEYS = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
SEQUENCE_KEYS = (*PER_FRAME_KEYS, "dynamic_offset")   # every field with a leading timestep dimension (if present)
WIDTHS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}


@dataclass
class FlameParams:
    """A sequence of FLAME parameters (numpy float32)."""

    shape: np.ndarray
    expr: np.ndarray
    rotation: np.ndarray
    neck_pose: np.ndarray
    jaw_pose: np.ndarray
    eyes_pose: np.ndarray
    translation: np.ndarray
    static_offset: np.ndarray | None = None
    dynamic_offset: np.ndarray | None = None

    @property
    def num_timesteps(self) -> int:
        return int(self.expr.shape[0])

    @classmethod
    def neutral(cls, T: int = 1, n_shape: int = 300, n_expr: int = 100, shape: np.ndarray | None = None) -> "FlameParams":
        z = lambda w: np.zeros((T, w), np.float32)  # noqa: E731
        return cls(
            shape=np.zeros(n_shape, np.float32) if shape is None else np.asarray(shape, np.float32),
            expr=z(n_expr), rotation=z(3), neck_pose=z(3), jaw_pose=z(3), eyes_pose=z(6), translation=z(3),
        )

    def select(self, timesteps: Sequence[int] | np.ndarray, what: str = "timesteps") -> "FlameParams":
        """The parameters at the given timesteps (static offset kept); negative indices are refused."""
        idx = np.asarray(timesteps, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_timesteps):
            bad = [int(t) for t in idx.ravel() if t < 0 or t >= self.num_timesteps][:5]
            raise Edit3DGSError(what, f"timesteps in [0,{self.num_timesteps}) of a {self.num_timesteps}-timestep sequence",
                                ", ".join(map(str, bad)))
        kw = {k: getattr(self, k)[idx] for k in PER_FRAME_KEYS}
        dyn = self.dynamic_offset[idx] if self.dynamic_offset is not None else None
        return replace(self, dynamic_offset=dyn, **kw)

    def with_identity(self, other: "FlameParams") -> "FlameParams":
        """This motion on ``other``'s identity (shape and static offset): cross-identity reenactment."""
        return replace(self, shape=other.shape.copy(), static_offset=other.static_offset, dynamic_offset=None)

    @staticmethod
    def concat(seqs: Iterable["FlameParams"]) -> "FlameParams":
        seqs = list(seqs)
        kw = {k: np.concatenate([getattr(s, k) for s in seqs]) for k in PER_FRAME_KEYS}
        dyn = None
        if all(s.dynamic_offset is not None for s in seqs):
            dyn = np.concatenate([s.dynamic_offset for s in seqs])
        return replace(seqs[0], dynamic_offset=dyn, **kw)

    def to_torch(self, device="cpu", dtype=torch.float32) -> dict:
        """Batched tensors for ``FlameHead.forward``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = torch.as_tensor(np.asarray(v), dtype=dtype, device=device)
        return out

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def save(self, path: os.PathLike | str) -> Path:
        """Write ``flame_param.npz`` (uncompressed, so a round trip is bit-identical)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.as_dict())
        return path

    @classmethod
    def load(cls, path: os.PathLike | str, n_verts: int | None = None, n_shape: int | None = None,
             n_expr: int | None = None) -> "FlameParams":
        """Read a sequence npz, or a per-frame npz (leading dimension 1). ``n_verts``, ``n_shape`` and
        ``n_expr`` are the head model's, when known: offsets and components must fit it."""
        path = Path(path)
        d = read_npz(path, "a FLAME parameter file (.npz)", ("shape",) + PER_FRAME_KEYS + ("static_offset", "dynamic_offset"))
        return cls.from_dict(d, path, n_verts, n_shape, n_expr)

    @classmethod
    def from_dict(cls, d: dict, path=None, n_verts: int | None = None, n_shape: int | None = None,
                  n_expr: int | None = None) -> "FlameParams":
        missing = [k for k in ("shape",) + PER_FRAME_KEYS if k not in d]
        if missing:
            raise Edit3DGSError(path, f"keys {', '.join(('shape',) + PER_FRAME_KEYS)}", f"no {', '.join(missing)} (keys: {', '.join(sorted(d))})")
        out = {}
        shape = float32_array(d["shape"], path, "shape")
        if shape.ndim == 2 and shape.shape[0] == 1:
            shape = shape[0]
        if shape.ndim != 1:
            raise Edit3DGSError(path, "shape of shape (S,)", f"shape {shape.shape}")
        out["shape"] = shape
        expr = float32_array(d["expr"], path, "expr")
        if expr.ndim == 1:
            expr = expr[None]
        if expr.ndim != 2:
            raise Edit3DGSError(path, "expr of shape (T,E)", f"shape {expr.shape}")
        T = expr.shape[0]
        if T == 0:
            raise Edit3DGSError(path, "at least one timestep (expr of shape (T,E), T >= 1)", f"shape {expr.shape}")
        out["expr"] = expr
        for k, w in WIDTHS.items():
            a = float32_array(d[k], path, k)
            if a.ndim == 1:
                a = a[None]
            if a.shape != (T, w):
                raise Edit3DGSError(path, f"{k} of shape ({T},{w})", f"shape {a.shape}")
            out[k] = a
        for k in ("static_offset", "dynamic_offset"):
            if k in d:
                a = float32_array(d[k], path, k)
                if a.ndim == 2:
                    a = a[None]
                want_T = 1 if k == "static_offset" else T
                if a.ndim == 3 and n_verts is not None and a.shape[1] != n_verts and {a.shape[1], n_verts} == FLAME_VERTS:
                    a = _fit_teeth(a, n_verts)
                if a.ndim != 3 or a.shape[0] != want_T or a.shape[2] != 3 or (n_verts is not None and a.shape[1] != n_verts):
                    V = n_verts if n_verts is not None else "V"
                    raise Edit3DGSError(path, f"{k} of shape ({want_T},{V},3) or ({V},3)", f"shape {a.shape}")
                out[k] = a
        for k, n in (("shape", n_shape), ("expr", n_expr)):
            check_components(out[k], n, k, path)
        return cls(**out)


def check_components(a, n: int | None, what: str, path=None) -> None:
    """``a`` (..., C): at most the head model's ``n`` components, or zeros beyond them (as the head pads)."""
    if n is None or a.shape[-1] <= n:
        return
    extra = np.asarray(a)[..., n:]
    if (extra != 0).any():
        raise Edit3DGSError(path, f"{what} with at most {n} components (the head model's), or zeros beyond",
                            f"{a.shape[-1]} components, non-zero beyond {n}")


def _fit_teeth(a: np.ndarray, n_verts: int) -> np.ndarray:
    """Offsets for FLAME without teeth on a head with teeth (zero offsets for the teeth, as
    GaussianAvatars pads them), or the other way round (the appended teeth rows dropped)."""
    if a.shape[1] < n_verts:
        return np.concatenate([a, np.zeros((a.shape[0], n_verts - a.shape[1], 3), a.dtype)], 1)
    return a[:, :n_verts]


def load_per_frame(paths: Sequence[os.PathLike | str], n_verts: int | None = None, n_shape: int | None = None,
                   n_expr: int | None = None) -> FlameParams:
    """Stack per-frame npz files (a dataset's ``flame_param/00000.npz`` ...) into one sequence."""
    if not paths:
        raise Edit3DGSError(None, "at least one per-frame FLAME file", "none")
    seqs = [FlameParams.load(p, n_verts, n_shape, n_expr) for p in paths]
    for p, s in zip(paths, seqs):  # one sequence: every frame with the first one's widths
        for k in PER_FRAME_KEYS:
            a, first = getattr(s, k), getattr(seqs[0], k)
            if a.shape[1:] != first.shape[1:]:
                raise Edit3DGSError(p, f"{k} of the width of the other frames' ({first.shape[1]} in {paths[0]})",
                                    f"{a.shape[1]}")
    return FlameParams.concat(seqs)
