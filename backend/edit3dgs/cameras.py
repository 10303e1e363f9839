"""Pinhole cameras: the one place where camera axes are decided.

Files (NeRSemble/GaussianAvatars ``transforms_*.json``) store camera-to-world
in OpenGL axes (x right, y up, looking down -z). The renderer takes OpenCV
world-to-camera matrices (x right, y down, z forward) and K with the
principal point. ``Camera`` converts between the two.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import Edit3DGSError
from .fsutil import atomic_path

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Camera:
    """One pinhole camera. ``c2w`` is camera-to-world in OpenGL axes (as in the files)."""

    index: int
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    c2w: np.ndarray

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    @property
    def viewmat(self) -> np.ndarray:
        """World-to-camera, OpenCV axes (4,4)."""
        return np.linalg.inv(self.c2w @ GL_TO_CV)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    @property
    def forward(self) -> np.ndarray:
        """Viewing direction in world space."""
        return -self.c2w[:3, 2]

    def scaled(self, factor: float) -> "Camera":
        """The same camera at ``factor`` times the resolution."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return replace(self, width=w, height=h, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N,3) -> pixel coordinates (N,2) and depth (N,) (OpenCV)."""
        vm = self.viewmat
        pc = points @ vm[:3, :3].T + vm[:3, 3]
        uv = pc[:, :2] / pc[:, 2:3] * [self.fx, self.fy] + [self.cx, self.cy]
        return uv, pc[:, 2]

    def to_frame(self) -> dict:
        return {
            "camera_index": int(self.index), "w": int(self.width), "h": int(self.height),
            "fl_x": float(self.fx), "fl_y": float(self.fy), "cx": float(self.cx), "cy": float(self.cy),
            "camera_angle_x": float(2 * math.atan(self.width / (2 * self.fx))),
            "transform_matrix": np.asarray(self.c2w, float).tolist(),
        }


def stack(cameras: Sequence[Camera], device="cpu") -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """viewmats (C,4,4), Ks (C,3,3), width, height for ``rasterize``; all sizes must agree."""
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras of one batch must share a resolution, got {sorted(sizes)}")
    w, h = sizes.pop()
    vm = torch.tensor(np.stack([c.viewmat for c in cameras]), dtype=torch.float32, device=device)
    K = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float32, device=device)
    return vm, K, w, h


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world (OpenGL axes) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(x, float) for x in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, back, eye
    return m


# NeRSemble-like rig: 16 cameras on an arc in front of the head, camera 8 frontal.
RIG_AZIMUTHS = [-75, -66, -57, -48, -39, -30, -21, -12, 0, 12, 21, 30, 39, 48, 57, 66]
RIG_ELEVATIONS = [10, -6, 12, -4, 14, -8, 10, -5, 0, -5, 10, -8, 14, -4, 12, -6]
HELD_OUT_CAMERA = 8


def camera_rig(width: int = 550, height: int = 802, distance: float = 1.0, target=(0.0, -0.02, 0.0),
               head_height: float = 0.34, azimuths=RIG_AZIMUTHS, elevations=RIG_ELEVATIONS) -> list[Camera]:
    """A 16-camera rig like NeRSemble's (portrait 550x802 images, white background)."""
    f = 0.9 * height / head_height * distance
    cams = []
    for i, (az, el) in enumerate(zip(azimuths, elevations)):
        a, e = math.radians(az), math.radians(el)
        eye = np.asarray(target) + distance * np.array([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)])
        cams.append(Camera(i, width, height, f, f, width / 2, height / 2, look_at(eye, target)))
    return cams


def orbit(n: int, width: int, height: int, distance: float = 1.0, target=(0.0, -0.02, 0.0),
          head_height: float = 0.34, max_azimuth: float = 60.0, elevation: float = 5.0) -> list[Camera]:
    """A smooth path of n cameras sweeping across the front (for videos and CLIP-C)."""
    az = np.linspace(-max_azimuth, max_azimuth, n) if n > 1 else [0.0]
    return camera_rig(width, height, distance, target, head_height, list(az), [elevation] * n)


def _check_rigid(path, m: np.ndarray, where: str) -> None:
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise Edit3DGSError(path, f"a finite 4x4 transform_matrix ({where})", f"shape {m.shape}")
    R = m[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3 or np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise Edit3DGSError(path, f"a rigid camera-to-world transform_matrix ({where})",
                            f"a non-rigid matrix (|R^T R - I| = {err:.3g}, det = {np.linalg.det(R):.4g})")


def camera_from_frame(frame: dict, defaults: dict, path=None, where: str = "") -> Camera:
    get = lambda k: frame.get(k, defaults.get(k))  # noqa: E731
    try:
        w, h = int(get("w")), int(get("h"))
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        fx = get("fl_x")
        if fx is None and get("camera_angle_x") is not None:
            fx = w / (2 * math.tan(float(get("camera_angle_x")) / 2))
        fy = get("fl_y") if get("fl_y") is not None else fx
        cx = get("cx") if get("cx") is not None else w / 2
        cy = get("cy") if get("cy") is not None else h / 2
        fx, fy, cx, cy = float(fx), float(fy), float(cx), float(cy)
    except (KeyError, TypeError, ValueError) as exc:
        raise Edit3DGSError(path, f"camera fields w, h, fl_x/fl_y (or camera_angle_x), transform_matrix ({where})", f"{type(exc).__name__}: {exc}") from None
    if w <= 0 or h <= 0 or fx <= 0 or fy <= 0:
        raise Edit3DGSError(path, f"positive w, h, fl_x, fl_y ({where})", f"w={w} h={h} fl_x={fx} fl_y={fy}")
    _check_rigid(path, m, where)
    return Camera(int(frame.get("camera_index", 0)), w, h, fx, fy, cx, cy, m)


def load_cameras(path: os.PathLike | str) -> list[Camera]:
    """Unique cameras (by camera_index) of a transforms JSON, sorted by index."""
    path = Path(path)
    if not path.is_file():
        raise Edit3DGSError(path, "a cameras JSON (transforms_*.json layout)", "no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Edit3DGSError(path, "valid JSON", f"{type(exc).__name__}: {exc}") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise Edit3DGSError(path, "a 'frames' list with at least one camera", "none")
    cams: dict[int, Camera] = {}
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise Edit3DGSError(path, f"frame objects (frames[{i}])", type(fr).__name__)
        cam = camera_from_frame(fr, data, path, f"frames[{i}]")
        if "camera_index" not in fr:
            cam = replace(cam, index=i)
        cams.setdefault(cam.index, cam)
    return [cams[k] for k in sorted(cams)]


def save_cameras(path: os.PathLike | str, cameras: Iterable[Camera]) -> Path:
    path = Path(path)
    data = {"frames": [c.to_frame() for c in cameras]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path
