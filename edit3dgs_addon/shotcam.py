"""A Blender camera as the backend's pinhole camera (numpy only; no bpy, so it is tested on its own).

Intrinsics follow Blender's own view plane (``BKE_camera_params_compute_viewplane``):
with render size W x H (resolution x percentage / 100, integer), pixel aspect
ax, ay (ycor = ay / ax), the sensor fit decides the side the sensor spans:
    fit = HORIZONTAL if (AUTO and ax W >= ay H) or HORIZONTAL, else VERTICAL
    sensor = sensor_height if the fit is VERTICAL else sensor_width   (AUTO uses the width)
    viewfac = W if fit is HORIZONTAL else ycor H
    F = lens viewfac / sensor
    fx = F,           cx = W/2 - shift_x viewfac
    fy = F / ycor,    cy = H/2 + shift_y viewfac / ycor       (OpenCV: y down)
Extrinsics: Blender's camera looks down its -z with y up (OpenGL axes, as the
transforms files store them); the avatar's root empty turns FLAME's y-up into
Blender's z-up, so the camera in FLAME space is ``inv(root) @ camera`` with the
scale taken out. The backend converts to its OpenCV viewmat (``c2w @ diag(1,-1,-1,1)``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def render_size(res_x: int, res_y: int, percentage: int) -> tuple[int, int]:
    """Blender's rendered size: resolution x percentage / 100, truncated."""
    return max(1, (int(res_x) * int(percentage)) // 100), max(1, (int(res_y) * int(percentage)) // 100)


def intrinsics(lens: float, sensor_width: float, sensor_height: float, sensor_fit: str, shift_x: float,
               shift_y: float, width: int, height: int, pixel_aspect_x: float = 1.0,
               pixel_aspect_y: float = 1.0) -> dict:
    """Pinhole intrinsics in pixels {w, h, fx, fy, cx, cy} of a perspective Blender camera."""
    W, H = int(width), int(height)
    ax, ay = float(pixel_aspect_x), float(pixel_aspect_y)
    ycor = ay / ax
    sensor = sensor_height if sensor_fit == "VERTICAL" else sensor_width
    fit = sensor_fit if sensor_fit != "AUTO" else ("HORIZONTAL" if ax * W >= ay * H else "VERTICAL")
    viewfac = W if fit == "HORIZONTAL" else ycor * H
    F = lens * viewfac / sensor
    return {"w": W, "h": H, "fx": F, "fy": F / ycor, "cx": W / 2.0 - shift_x * viewfac,
            "cy": H / 2.0 + shift_y * viewfac / ycor}


def camera_in_frame(root_world: np.ndarray, camera_world: np.ndarray) -> np.ndarray:
    """Camera-to-world (4,4), OpenGL axes, in the space of ``root_world`` (FLAME's), rigid."""
    m = np.linalg.inv(np.asarray(root_world, np.float64)) @ np.asarray(camera_world, np.float64)
    R = m[:3, :3]
    # Orthonormalise (object scale, float noise): the nearest rotation.
    u, _, vt = np.linalg.svd(R)
    R = u @ vt
    if np.linalg.det(R) < 0:
        raise ValueError("the camera's matrix is mirrored (negative scale)")
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, m[:3, 3]
    return out


def project(c2w_gl: np.ndarray, K: dict, points: np.ndarray) -> np.ndarray:
    """World points (N,3) -> pixels (N,2) with the OpenCV pinhole (x right, y down)."""
    vm = np.linalg.inv(np.asarray(c2w_gl) @ np.diag([1.0, -1.0, -1.0, 1.0]))
    pc = np.asarray(points, np.float64) @ vm[:3, :3].T + vm[:3, 3]
    return np.stack([K["fx"] * pc[:, 0] / pc[:, 2] + K["cx"], K["fy"] * pc[:, 1] / pc[:, 2] + K["cy"]], 1)


def frame_entry(index: int, c2w_gl: np.ndarray, K: dict, file_path: str = "", flame_param_path: str = "") -> dict:
    """One frame of a transforms JSON (formats.md §2) for this camera."""
    fr = {"timestep_index": int(index), "camera_index": int(index), "w": int(K["w"]), "h": int(K["h"]),
          "fl_x": float(K["fx"]), "fl_y": float(K["fy"]), "cx": float(K["cx"]), "cy": float(K["cy"]),
          "camera_angle_x": float(2 * math.atan(K["w"] / (2 * K["fx"]))),
          "transform_matrix": np.asarray(c2w_gl, float).tolist()}
    if file_path:
        fr["file_path"] = file_path
    if flame_param_path:
        fr["flame_param_path"] = flame_param_path
    return fr


def write_transforms(path: os.PathLike | str, frames: list[dict], **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # cx, cy are top-left pixel coordinates (OpenCV): say so, the backend never guesses.
    path.write_text(json.dumps({"camera_convention": "nerfstudio", "frames": frames, **extra}, indent=1))
    return path


def frame_paths(filepath: str, frames, ext: str = ".png") -> list[str]:
    """Blender's naming of rendered frames: a run of '#' becomes the zero-padded frame number,
    else four digits are appended (``//render/`` -> ``//render/0001.png``)."""
    import re

    out = []
    runs = list(re.finditer(r"#+", os.path.basename(filepath)))
    for f in frames:
        if runs:
            m = runs[-1]
            head = os.path.dirname(filepath)
            base = os.path.basename(filepath)
            name = base[:m.start()] + f"{int(f):0{len(m.group())}d}" + base[m.end():]
            p = os.path.join(head, name)
        else:
            p = f"{filepath}{int(f):04d}"
        if not p.lower().endswith(ext):
            p += ext
        out.append(p)
    return out
