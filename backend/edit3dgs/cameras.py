"""Pinhole cameras: the one place where camera axes and camera files are decided.

Files (NeRSemble/GaussianAvatars ``transforms_*.json``) store camera-to-world
in OpenGL axes (x right, y up, looking down -z). The renderer takes OpenCV
world-to-camera matrices (x right, y down, z forward) and K with the
principal point in top-left pixel coordinates. ``Camera`` always holds the
latter (``cy`` measured down from the top edge); files are converted on the
way in and out (formats.md §2):

- ``vhap``: VHAP's export (and so GaussianAvatars' datasets) stores
  ``cy_file = h - cy`` (its opencv->opengl conversion flips the principal point).
- ``nerfstudio``: ``cy_file = cy`` (top-left), same keys.
- ``gaussianavatars``: a GaussianAvatars/3DGS model folder's ``cameras.json``,
  a list of ``{id, img_name, width, height, position, rotation (camera-to-world,
  OpenCV axes), fx, fy}`` with a centred principal point.

Which of the first two a transforms file uses is read from the file: the
``camera_convention`` key (Edit3DGS writes it), VHAP's keys (``timestep_indices``,
``camera_indices``, ``timestep_id``, ``camera_id``, ``timestep_index_original``)
or nerfstudio's (``camera_model``, ``applied_transform``), or given by the
caller; a file with an off-centre principal point and no evidence is refused,
never guessed. Edit3DGS writes its own files in the ``vhap`` convention.

Rendering with GaussianAvatars' camera model (``Camera.gaussianavatars()``):
centred principal point, focal length from ``camera_angle_x``, square pixels,
as GaussianAvatars' reader builds its cameras (it ignores ``cx, cy, fl_y``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import Edit3DGSError
from .fsutil import atomic_path
from .validate import image_size, positive, read_json, real_array, whole

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

VHAP = "vhap"
NERFSTUDIO = "nerfstudio"
GA_LIST = "gaussianavatars"
CENTRED = "centred"
CONVENTIONS = (VHAP, NERFSTUDIO)
VHAP_TOP_KEYS = ("timestep_indices", "camera_indices")
VHAP_FRAME_KEYS = ("timestep_index_original", "timestep_id", "camera_id")
NERFSTUDIO_TOP_KEYS = ("camera_model", "applied_transform")
CAMERA_MODELS = ("auto", "file", "gaussianavatars")


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
    angle_x: float | None = None  # the file's camera_angle_x, when it has one

    @property
    def fov_x(self) -> float:
        return self.angle_x if self.angle_x is not None else 2 * math.atan(self.width / (2 * self.fx))

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
        """The same camera's image resampled to ``factor`` times the resolution (each axis by
        its own rounded ratio, so pixels become slightly non-square; the demo and evaluation use it).
        Commands that write cameras or renders for other tools use ``resized``."""
        w, h = _scaled_size(self, factor)
        sx, sy = w / self.width, h / self.height
        return replace(self, width=w, height=h, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       angle_x=None)

    def resized(self, factor: float) -> "Camera":
        """This camera at ``factor`` times the resolution with pixels kept square: focal lengths
        scale by ``factor`` exactly (``fx / fy`` unchanged), the image size is rounded and the
        rounding is split evenly on both sides (a centred principal point stays centred)."""
        w, h = _scaled_size(self, factor)
        return replace(self, width=w, height=h, fx=self.fx * factor, fy=self.fy * factor,
                       cx=self.cx * factor + (w - self.width * factor) / 2,
                       cy=self.cy * factor + (h - self.height * factor) / 2, angle_x=None)

    def gaussianavatars(self) -> "Camera":
        """GaussianAvatars' camera model of this camera: focal length from the horizontal field of
        view (``camera_angle_x``), square pixels, principal point at the image centre."""
        f = self.width / (2 * math.tan(self.fov_x / 2))
        return replace(self, fx=f, fy=f, cx=self.width / 2, cy=self.height / 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N,3) -> pixel coordinates (N,2) and depth (N,) (OpenCV)."""
        vm = self.viewmat
        pc = points @ vm[:3, :3].T + vm[:3, 3]
        uv = pc[:, :2] / pc[:, 2:3] * [self.fx, self.fy] + [self.cx, self.cy]
        return uv, pc[:, 2]

    def to_frame(self, convention: str = VHAP) -> dict:
        """The transforms-file fields of this camera; ``cy`` in ``convention`` (VHAP's by default)."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        return {
            "camera_index": int(self.index), "w": int(self.width), "h": int(self.height),
            "fl_x": float(self.fx), "fl_y": float(self.fy), "cx": float(self.cx),
            "cy": float(self.height - self.cy if convention == VHAP else self.cy),
            "camera_angle_x": float(2 * math.atan(self.width / (2 * self.fx))),
            "camera_angle_y": float(2 * math.atan(self.height / (2 * self.fy))),
            "transform_matrix": np.asarray(self.c2w, float).tolist(),
        }


def _scaled_size(cam: Camera, factor: float) -> tuple[int, int]:
    """The image size at ``factor`` times the resolution: a finite positive factor, sides within the limit."""
    factor = positive(factor, "--scale", "a resolution factor")
    w, h = max(1, round(cam.width * factor)), max(1, round(cam.height * factor))
    return image_size(w, h, "--scale", f"camera {cam.index} at {factor:g} x {cam.width}x{cam.height}")


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


def _num(frame: dict, defaults: dict, key: str):
    v = frame.get(key, defaults.get(key))
    return None if v is None else v


def camera_from_frame(frame: dict, defaults: dict, path=None, where: str = "", convention: str = NERFSTUDIO,
                      root: Path | None = None) -> Camera:
    """One frame of a transforms file -> ``Camera`` (``cy`` converted from ``convention``).

    Missing ``w``/``h`` are read from the frame's image (as GaussianAvatars does); a focal
    length needs ``fl_x`` or ``camera_angle_x``; ``cx``/``cy`` come together or not at all
    (then the principal point is the image centre)."""
    get = lambda k: _num(frame, defaults, k)  # noqa: E731
    sfx = f" ({where})"
    w, h = get("w"), get("h")
    if (w is None or h is None) and root is not None and isinstance(frame.get("file_path"), str) and frame["file_path"]:
        img = root / frame["file_path"]
        if img.is_file():
            w, h = _image_size(img, path, where)
    if w is None or h is None:
        raise Edit3DGSError(path, f"the image size w and h ({where})", f"no {'w' if w is None else 'h'} (and no readable image)")
    w, h = image_size(w, h, path, where)
    if "transform_matrix" not in frame:
        raise Edit3DGSError(path, f"a transform_matrix ({where})", "none")
    m = real_array(frame["transform_matrix"], path, f"transform_matrix{sfx}").astype(np.float64)
    fx, ax = get("fl_x"), get("camera_angle_x")
    if fx is None and ax is None:
        raise Edit3DGSError(path, f"intrinsics fl_x or camera_angle_x ({where})", "neither")
    if ax is not None:
        ax = positive(ax, path, f"camera_angle_x{sfx}")
        if not ax < math.pi:
            raise Edit3DGSError(path, f"camera_angle_x in (0, pi) radians{sfx}", f"{ax:g}")
    fx = positive(fx, path, f"fl_x{sfx}") if fx is not None else w / (2 * math.tan(ax / 2))
    fy = positive(get("fl_y"), path, f"fl_y{sfx}") if get("fl_y") is not None else fx
    cx, cy = get("cx"), get("cy")
    if (cx is None) != (cy is None):
        raise Edit3DGSError(path, f"intrinsics cx and cy together ({where})", f"only {'cx' if cy is None else 'cy'}")
    cx = _real(cx, path, f"cx{sfx}") if cx is not None else w / 2
    cy = _real(cy, path, f"cy{sfx}") if cy is not None else h / 2
    if convention == VHAP:
        cy = h - cy
    _check_rigid(path, m, where)
    index = whole(frame.get("camera_index", 0), path, f"camera_index{sfx}", 0, 10**6)
    return Camera(index, w, h, fx, fy, cx, cy, m, ax)


def camera_from_job(c: dict, where: str = "job argument 'camera'") -> Camera:
    """A pinhole camera sent by the Blender extension (``w, h, fx, fy, cx, cy`` top-left, ``c2w`` OpenGL):
    sizes within the image-side limit, positive focal lengths, finite numbers; its matrix is used as sent."""
    missing = [k for k in ("w", "h", "fx", "fy", "cx", "cy", "c2w") if k not in c]
    if missing:
        raise Edit3DGSError(where, "a camera with w, h, fx, fy, cx, cy, c2w", f"no {', '.join(missing)}")
    w, h = image_size(c["w"], c["h"], where)
    m = real_array(c["c2w"], where, "c2w").astype(np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise Edit3DGSError(where, "c2w as a finite invertible 4x4 matrix", f"shape {m.shape}" + (" (NaN/inf or singular)" if m.shape == (4, 4) else ""))
    return Camera(0, w, h, positive(c["fx"], where, "fx"), positive(c["fy"], where, "fy"),
                  _real(c["cx"], where, "cx"), _real(c["cy"], where, "cy"), m)


def _real(v, path, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e12:
        raise Edit3DGSError(path, f"{what} as a finite number of pixels", repr(v)[:60])
    return float(v)


def _image_size(img: Path, path, where: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(img) as im:  # reads the header only
            return im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise Edit3DGSError(img, f"a readable image ({where} of {path})", f"{type(exc).__name__}: {exc}") from None


def detect_convention(data: dict, path=None, convention: str = "auto") -> tuple[str, str]:
    """(convention, why) of a transforms file: ``vhap`` or ``nerfstudio`` (or ``centred`` when every
    principal point is the image centre, where the two agree). Never a silent guess."""
    if convention not in ("auto",) + CONVENTIONS:
        raise Edit3DGSError("--camera-convention", f"one of auto, {', '.join(CONVENTIONS)}", repr(convention))
    if convention != "auto":
        return convention, "chosen with --camera-convention"
    frames = data.get("frames") or []
    marked = data.get("camera_convention")
    if marked is not None:
        if marked not in CONVENTIONS:
            raise Edit3DGSError(path, f"camera_convention one of {', '.join(CONVENTIONS)}", repr(marked))
        return marked, "the file's camera_convention key"
    vhap = [k for k in VHAP_TOP_KEYS if k in data]
    vhap += [k for k in VHAP_FRAME_KEYS if any(isinstance(f, dict) and k in f for f in frames)]
    ns = [k for k in NERFSTUDIO_TOP_KEYS if k in data]
    if vhap and ns:
        raise Edit3DGSError(path, "the keys of one camera convention (VHAP's or nerfstudio's)",
                            f"both ({', '.join(vhap)}; {', '.join(ns)}): add \"camera_convention\" or pass --camera-convention")
    if vhap:
        return VHAP, f"VHAP's keys ({', '.join(vhap)})"
    if ns:
        return NERFSTUDIO, f"nerfstudio's keys ({', '.join(ns)})"
    for i, f in enumerate(frames):
        if not isinstance(f, dict):
            continue
        h, cy = _num(f, data, "h"), _num(f, data, "cy")
        try:
            off = cy is not None and h is not None and abs(float(cy) - float(h) / 2) > 1e-3
        except (TypeError, ValueError):
            continue  # reported with the frame's other fields
        if off:
            raise Edit3DGSError(path, "evidence of the cy convention (VHAP's keys timestep_indices/camera_id/..., "
                                "nerfstudio's camera_model, or a camera_convention key), or --camera-convention vhap|nerfstudio",
                                f"an off-centre principal point (frames[{i}]: cy={float(cy):g}, h={float(h):g}) and none")
    return CENTRED, "every principal point is the image centre, where VHAP's and nerfstudio's cy agree"


@dataclass
class CameraFile:
    """A camera file as read: unique cameras, one camera per frame, and the convention used."""

    path: Path
    cameras: list[Camera]
    convention: str
    why: str
    frames: list[dict] = field(default_factory=list)
    frame_cameras: list[Camera] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def describe(self) -> str:
        kind = ("GaussianAvatars cameras.json (centred principal point)" if self.convention == GA_LIST
                else f"cy convention {self.convention}: {self.why}")
        return f"cameras: {self.path} — {len(self.cameras)} cameras; {kind}"


def _ga_cameras(path: Path, entries: list) -> list[Camera]:
    """A GaussianAvatars/3DGS ``cameras.json``: one entry per training image; a camera per index."""
    cams: dict[int, Camera] = {}
    for i, e in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(e, dict) or any(k not in e for k in ("width", "height", "fx", "fy", "rotation", "position")):
            raise Edit3DGSError(path, f"GaussianAvatars camera entries with id, img_name, width, height, position, rotation, fx, fy ({where})",
                                type(e).__name__ if not isinstance(e, dict) else f"keys {', '.join(sorted(map(str, e)))}")
        w, h = image_size(e["width"], e["height"], path, where)
        fx, fy = positive(e["fx"], path, f"fx ({where})"), positive(e["fy"], path, f"fy ({where})")
        R = real_array(e["rotation"], path, f"rotation ({where})").astype(np.float64)
        pos = real_array(e["position"], path, f"position ({where})").astype(np.float64)
        if R.shape != (3, 3) or pos.shape != (3,) or not (np.isfinite(R).all() and np.isfinite(pos).all()):
            shapes = R.shape == (3, 3) and pos.shape == (3,)
            raise Edit3DGSError(path, f"a finite 3x3 rotation and 3-vector position ({where})",
                                f"rotation {R.shape}, position {pos.shape}" + (" with NaN/inf" if shapes else ""))
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, pos
        m = m @ GL_TO_CV  # OpenCV camera-to-world -> OpenGL (GL_TO_CV is its own inverse)
        _check_rigid(path, m, where)
        match = re.fullmatch(r"\d+_(\d+)", str(e.get("img_name", "")))
        idx = int(match.group(1)) if match else whole(e.get("id", i), path, f"id ({where})", 0, 10**6)
        cams.setdefault(idx, Camera(idx, w, h, fx, fy, w / 2, h / 2, m, 2 * math.atan(w / (2 * fx))))
    return [cams[k] for k in sorted(cams)]


def read_camera_file(path: os.PathLike | str, convention: str = "auto", check_images: bool = True,
                     allow_empty: bool = False) -> CameraFile:
    """Read a transforms JSON (``{"frames": [...]}``) or a GaussianAvatars ``cameras.json`` (a list).

    Checks what would make renders land in the wrong place: intrinsics present, ``w/h`` equal
    to the image's size where the image exists, no ``(timestep_index, camera_index)`` twice."""
    path = Path(path)
    data = read_json(path, "a cameras JSON (transforms_*.json layout, or a GaussianAvatars cameras.json)")
    if isinstance(data, list):
        if not data:
            raise Edit3DGSError(path, "at least one camera", "an empty list")
        cams = _ga_cameras(path, data)
        return CameraFile(path, cams, GA_LIST, "a list of cameras as GaussianAvatars/3DGS write it", frame_cameras=cams)
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not (frames or allow_empty):
        raise Edit3DGSError(path, "a 'frames' list with at least one camera", "none")
    conv, why = detect_convention(data, path, convention)
    root = path.parent
    cams: dict[int, Camera] = {}
    per_frame, seen = [], {}
    for i, fr in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise Edit3DGSError(path, f"frame objects ({where})", type(fr).__name__)
        cam = camera_from_frame(fr, data, path, where, conv, root)
        if "camera_index" not in fr:
            cam = replace(cam, index=i)
        if "timestep_index" in fr:
            key = (whole(fr["timestep_index"], path, f"timestep_index ({where})", 0), cam.index)
            if key in seen:
                raise Edit3DGSError(path, f"each (timestep_index, camera_index) pair once ({where})",
                                    f"timestep_index {key[0]}, camera_index {key[1]} also in frames[{seen[key]}]")
            seen[key] = i
        if check_images and isinstance(fr.get("file_path"), str) and fr["file_path"]:
            img = root / fr["file_path"]
            if img.is_file():
                size = _image_size(img, path, where)
                if size != (cam.width, cam.height):
                    raise Edit3DGSError(path, f"w, h equal to the size of {fr['file_path']} ({where})",
                                        f"w={cam.width} h={cam.height}, image {size[0]}x{size[1]}")
        per_frame.append(cam)
        cams.setdefault(cam.index, cam)
    return CameraFile(path, [cams[k] for k in sorted(cams)], conv, why, frames, per_frame, data)


def load_cameras(path: os.PathLike | str, convention: str = "auto") -> list[Camera]:
    """Unique cameras (by camera_index) of a camera file, sorted by index (see ``read_camera_file``)."""
    return read_camera_file(path, convention).cameras


def apply_camera_model(cameras: Sequence[Camera], model: str) -> list[Camera]:
    """``file``: the file's intrinsics; ``gaussianavatars``: GaussianAvatars' camera model."""
    if model == "gaussianavatars":
        return [c.gaussianavatars() for c in cameras]
    if model == "file":
        return list(cameras)
    raise Edit3DGSError("--camera-model", "file or gaussianavatars", repr(model))


def save_cameras(path: os.PathLike | str, cameras: Iterable[Camera], convention: str = VHAP) -> Path:
    """A transforms-layout cameras JSON, ``cy`` in ``convention`` (recorded in the file)."""
    path = Path(path)
    data = {"camera_convention": convention, "frames": [c.to_frame(convention) for c in cameras]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path
