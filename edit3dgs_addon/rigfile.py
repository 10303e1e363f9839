"""The rig file the backend writes (backend/edit3dgs/rig_export.py), read with numpy only.

Also the small pieces of maths the Blender side needs, kept here so they are
tested without Blender: camera intrinsics as Blender lens/sensor/shift, and
the driver expressions that reproduce FLAME's skinning exactly.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GAUSSIAN_KEYS = ("gs_color", "gs_opacity", "gs_scale", "gs_scale_rel", "gs_binding", "gs_xyz", "gs_scaling",
                 "gs_rotation", "gs_region", "region_names")
RIG_KEYS = ("rig_verts", "rig_faces", "expr_deltas", "pose_deltas", "joints", "joint_expr", "parents", "weights",
            "joint_names", "expr_names")
CAMERA_KEYS = ("cam_index", "cam_c2w", "cam_fx", "cam_fy", "cam_cx", "cam_cy", "cam_w", "cam_h")
# FLAME's joints as Blender bones: joint 0 ("global") is the rig's root.
BONE_NAMES = {"global": "root", "neck": "neck", "jaw": "jaw", "eye_left": "eye_left", "eye_right": "eye_right"}


class RigFileError(Exception):
    pass


@dataclass
class RigFile:
    path: Path
    data: dict
    meta: dict

    def __getitem__(self, key):
        return self.data[key]

    def has(self, *keys) -> bool:
        return all(k in self.data for k in keys)

    @property
    def n_gaussians(self) -> int:
        return int(self.data["gs_binding"].shape[0])


def load(path, need_rig: bool = True) -> RigFile:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RigFileError(f"{path}: expected an Edit3DGS rig file (.npz), found {exc}") from None
    need = GAUSSIAN_KEYS + (RIG_KEYS + CAMERA_KEYS if need_rig else ())
    missing = [k for k in need if k not in data]
    if missing:
        raise RigFileError(f"{path}: expected arrays {', '.join(missing)}, found only {', '.join(sorted(data))}")
    meta = json.loads(str(data.pop("meta_json"))) if "meta_json" in data else {}
    n = data["gs_binding"].shape[0]
    for k in GAUSSIAN_KEYS[:-1] + tuple(k for k in ("gs_sh_rest", "gs_base_color") if k in data):
        if data[k].shape[0] != n:
            raise RigFileError(f"{path}: expected {n} rows in {k}, found {data[k].shape[0]}")
    if need_rig and data["gs_binding"].size and int(data["gs_binding"].max()) >= data["rig_faces"].shape[0]:
        raise RigFileError(f"{path}: expected bindings below {data['rig_faces'].shape[0]} faces, "
                           f"found {int(data['gs_binding'].max())}")
    return RigFile(path, data, meta)


# -- cameras ------------------------------------------------------------------------------
def blender_camera(fx: float, fy: float, cx: float, cy: float, w: int, h: int, sensor: float = 36.0) -> dict:
    """Pinhole intrinsics (pixels) as Blender camera settings (the larger side fits the sensor).

    Blender's shift is in units of the larger image side; +shift_y moves the image up,
    while +cy (OpenCV) is down. fx != fy becomes the scene's pixel aspect.
    """
    fit = "HORIZONTAL" if w >= h else "VERTICAL"
    size = max(w, h)
    f = fx if fit == "HORIZONTAL" else fy
    return {
        "sensor_fit": fit, "sensor_width": sensor, "sensor_height": sensor,
        "lens": float(f * sensor / size),
        "shift_x": float(-(cx - w / 2.0) / size), "shift_y": float((cy - h / 2.0) / size),
        "resolution": (int(w), int(h)), "pixel_aspect": (1.0, float(fx / fy) if fy else 1.0),
    }


# -- drivers --------------------------------------------------------------------------------
# (R - I)[r][c] of a rotation given as a unit quaternion (w, x, y, z); FLAME's pose feature.
_R_MINUS_I = (
    ("-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)"),
    ("2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)"),
    ("2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)"),
)


def pose_feature_expression(r: int, c: int) -> str:
    return _R_MINUS_I[r][c]


MAX_EXPRESSION = 250  # Blender keeps driver expressions to 256 characters


def linear_expressions(coefs: np.ndarray, names: list[str], tol: float = 1e-10) -> list[tuple[str, list[int]]]:
    """sum_i c_i * names[i] as a few driver expressions of at most MAX_EXPRESSION characters each.

    Returns [(expression, used indices)]; their sum is the whole (terms with |c| <= tol dropped).
    """
    out, terms, used, length = [], [], [], 0
    for i, c in enumerate(np.asarray(coefs, np.float64)):
        if abs(c) <= tol:
            continue
        t = f"{c:+.8g}*{names[i]}"
        if length + len(t) > MAX_EXPRESSION:
            out.append(("".join(terms), used))
            terms, used, length = [], [], 0
        terms.append(t)
        used.append(i)
        length += len(t)
    if terms:
        out.append(("".join(terms), used))
    return out


def unique_weight_groups(weights: np.ndarray, tol: float = 0.0):
    """For one vertex group: [(weight, vertex indices)] for the non-zero weights (bulk vertex_group.add)."""
    nz = np.nonzero(weights > tol)[0]
    vals, inv = np.unique(weights[nz], return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(vals) + 1))
    return [(float(vals[i]), nz[order[bounds[i]:bounds[i + 1]]].tolist()) for i in range(len(vals))]
