"""What the commands share: list options, the avatar and camera flags, loading an avatar, progress bars."""

from __future__ import annotations

import argparse
import sys

from ..errors import Edit3DGSError
from ..validate import limit, limit_note, parse_int_list  # noqa: F401  (the one parser of index lists)


def check_timesteps(ts, params, what: str, source) -> None:
    """Every timestep is an index of ``params`` (from ``source``), or the one-line error naming both."""
    T = params.num_timesteps
    bad = [t for t in ts if t < 0 or t >= T]
    if bad:
        raise Edit3DGSError(f"{what} ({source}: {T} timesteps)", f"timesteps in [0,{T})",
                            ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""))


def add_avatar_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--avatar", required=True, help="avatar folder (GaussianAvatars layout)")
    p.add_argument("--flame", help="FLAME 2020/2023 pickle (not needed for avatars made by Edit3DGS)")
    p.add_argument("--flame-masks", help="FLAME_masks.pkl (default: beside --flame)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")


def add_camera_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--camera-convention", default="auto", choices=("auto", "vhap", "nerfstudio"),
                   help="cy of a transforms file: vhap (cy = h - cy_top_left, VHAP/GaussianAvatars datasets) or "
                        "nerfstudio (top-left); auto reads it from the file and refuses to guess")
    s.add_argument("--camera-model", default="auto", choices=("auto", "file", "gaussianavatars"),
                   help="gaussianavatars: GaussianAvatars' cameras (centred principal point, camera_angle_x, square "
                        "pixels) for renders comparable with its own; file: the file's fl_x, fl_y, cx, cy; "
                        "auto: GaussianAvatars' for its avatars, the file's for built-in avatars")


def say(text: str) -> None:
    print(text, file=sys.stderr)


def load_avatar(a):
    """The avatar of ``--avatar`` (``--flame``, ``--flame-masks``) on ``--device``: (bundle, device)."""
    from ..bundle import open_avatar
    from ..device import pick_device

    dev = pick_device(a.device)
    b = open_avatar(a.avatar, a.flame, a.flame_masks, device=dev)
    print(f"avatar: {b.folder} — {b.gaussians.num_gaussians} Gaussians (SH {b.gaussians.sh_degree}) on {b.topology}, "
          f"{b.params.num_timesteps} timesteps, device {dev}", file=sys.stderr)
    return b, dev


def motion(a, b):
    """``--flame-params`` (keeping the avatar's identity unless told otherwise), else the avatar's own motion."""
    from ..dataset import load_motion

    if getattr(a, "flame_params", None):
        p = load_motion(a.flame_params, report=say, **b.head.param_sizes())
        if getattr(a, "keep_identity", True):
            p = p.with_identity(b.params)
        return p
    return b.params


def motion_source(a, b):
    return getattr(a, "flame_params", None) or (b.folder / "flame_param.npz")


def read_cameras(a, b, path, scale: float = 1.0):
    """The cameras of ``path`` in the convention and camera model the options ask for, said on stderr
    (``AvatarBundle.read_cameras``: the camera model that puts the avatar where it was trained)."""
    ac = b.read_cameras(path, getattr(a, "camera_convention", "auto"), getattr(a, "camera_model", "auto"))
    for line in ac.describe():
        say(line)
    cams = ac.cameras
    if scale != 1.0:
        cams = [c.resized(scale) for c in cams]
    return cams


class TqdmProgress:
    """progress(stage, done, total) -> one tqdm bar per stage (on stderr)."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm  # maintained progress bars

        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
