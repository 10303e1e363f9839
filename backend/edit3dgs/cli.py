"""The ``edit3dgs`` command line.

Every user error ends with one line ``error: <file>: expected ..., found ...``
and exit status 2 (a traceback only with ``--debug``); outputs are written to
a temporary path and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import CancelledError, Edit3DGSError
from .validate import limit, limit_note, whole


def _parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'0,5,10' or '0-20:5' (start-stop:step, stop exclusive) -> list of ints.

    Validated, never reinterpreted: an empty list or item, a range that is empty or reversed, a
    step below 1, a negative number or text that is not a number is the one-line error.
    """
    if text is None:
        return None
    form = "a list like '0,4,8' or a range like '0-40:10' (start below stop, step 1 or more)"
    lim = limit("MAX_LIST_ITEMS", 100_000)
    out: list[int] = []
    for part in text.split(","):
        item = part.strip()
        try:
            rng, colon, step = item.partition(":")
            if "-" in rng:
                a, b = rng.split("-", 1)
                a, b, k = int(a), int(b), int(step) if colon else 1
                if min(a, b) < 0 or k < 1 or a >= b:
                    raise ValueError
                n = (b - a + k - 1) // k
            else:
                if colon:
                    raise ValueError
                v = int(rng)
                if v < 0:
                    raise ValueError
                a, b, k, n = v, v + 1, 1, 1
        except ValueError:
            where = "" if item == text.strip() else (" (an empty item)" if not item else f" (item {item!r})")
            raise Edit3DGSError(what, form, repr(text) + where) from None
        if len(out) + n > lim:  # counted before it is expanded: '0-10000000000' allocates nothing
            raise Edit3DGSError(what, f"at most {lim:,} items {limit_note('MAX_LIST_ITEMS')}",
                                f"{len(out) + n:,} in {text[:60]!r}")
        out += range(a, b, k)
    return out


def check_timesteps(ts, params, what: str, source) -> None:
    """Every timestep is an index of ``params`` (from ``source``), or the one-line error naming both."""
    T = params.num_timesteps
    bad = [t for t in ts if t < 0 or t >= T]
    if bad:
        raise Edit3DGSError(f"{what} ({source}: {T} timesteps)", f"timesteps in [0,{T})",
                            ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""))


def _add_avatar_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--avatar", required=True, help="avatar folder (GaussianAvatars layout)")
    p.add_argument("--flame", help="FLAME 2020/2023 pickle (not needed for avatars made by Edit3DGS)")
    p.add_argument("--flame-masks", help="FLAME_masks.pkl (default: beside --flame)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")


MAX_FRAMES = 100_000  # make-avatar: frames of each motion sequence
MAX_GAUSSIANS_PER_FACE = 64  # make-avatar: about 650,000 Gaussians on the built-in head


def cmd_make_avatar(a) -> int:
    from .builtin import make_avatar

    whole(a.frames, "--frames", "frames per sequence", 1, MAX_FRAMES)
    whole(a.gaussians_per_face, "--gaussians-per-face", "Gaussians per face", 1, MAX_GAUSSIANS_PER_FACE)
    whole(a.seed, "--seed", "a seed", 0, 2**32 - 1)
    t0 = time.perf_counter()
    out = make_avatar(a.out, identity=a.identity, frames=a.frames, gaussians_per_face=a.gaussians_per_face,
                      sh_degree=a.sh_degree, seed=a.seed, overwrite=a.overwrite)
    print(f"built-in avatar written to {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _load(a):
    from .bundle import open_avatar
    from .views import pick_device

    dev = pick_device(a.device)
    b = open_avatar(a.avatar, a.flame, a.flame_masks, device=dev)
    print(f"avatar: {b.folder} — {b.gaussians.num_gaussians} Gaussians (SH {b.gaussians.sh_degree}) on {b.topology}, "
          f"{b.params.num_timesteps} timesteps, device {dev}", file=sys.stderr)
    return b, dev


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _motion(a, b):
    from .dataset import load_motion

    if getattr(a, "flame_params", None):
        p = load_motion(a.flame_params, report=_say, **b.head.param_sizes())
        if getattr(a, "keep_identity", True):
            p = p.with_identity(b.params)
        return p
    return b.params


def auto_camera_model(b) -> tuple[str, str]:
    """The camera model that puts the avatar where it was trained (``AvatarBundle.default_camera_model``)."""
    return b.default_camera_model()


def _cameras(a, b, path, scale: float = 1.0):
    """The cameras of ``path`` in the convention and camera model the options ask for, said on stderr."""
    ac = b.read_cameras(path, getattr(a, "camera_convention", "auto"), getattr(a, "camera_model", "auto"))
    for line in ac.describe():
        _say(line)
    cams = ac.cameras
    if scale != 1.0:
        cams = [c.resized(scale) for c in cams]
    return cams


def _add_camera_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--camera-convention", default="auto", choices=("auto", "vhap", "nerfstudio"),
                   help="cy of a transforms file: vhap (cy = h - cy_top_left, VHAP/GaussianAvatars datasets) or "
                        "nerfstudio (top-left); auto reads it from the file and refuses to guess")
    s.add_argument("--camera-model", default="auto", choices=("auto", "file", "gaussianavatars"),
                   help="gaussianavatars: GaussianAvatars' cameras (centred principal point, camera_angle_x, square "
                        "pixels) for renders comparable with its own; file: the file's fl_x, fl_y, cx, cy; "
                        "auto: GaussianAvatars' for its avatars, the file's for built-in avatars")


def _motion_source(a, b):
    return getattr(a, "flame_params", None) or (b.folder / "flame_param.npz")


def cmd_render(a) -> int:
    from tqdm import tqdm  # progress bars: maintained, prints to stderr

    from .cameras import stack
    from .fsutil import atomic_dir
    from .views import save_png

    b, dev = _load(a)
    cams = _cameras(a, b, a.cameras, a.scale)
    if a.camera_ids is not None:
        ids = _parse_int_list(a.camera_ids, "--camera-ids")
        cams = [c for c in cams if c.index in ids]
        if not cams:
            raise Edit3DGSError(a.cameras, f"cameras with index {ids}", "none of them")
    params = _motion(a, b)
    ts = _parse_int_list(a.timesteps, "--timesteps")
    ts = list(range(params.num_timesteps)) if ts is None else ts
    check_timesteps(ts, params, "--timesteps", _motion_source(a, b))
    groups: dict = {}
    for c in cams:
        groups.setdefault((c.width, c.height), []).append(c)
    from .render import rasterize
    from .views import WorldPoser, background_tensor

    poser = WorldPoser(b)
    bg = background_tensor(a.background, dev)
    stacks = [(group, stack(group, dev)) for group in groups.values()]
    with atomic_dir(a.out, overwrite=a.overwrite) as tmp, tqdm(total=len(ts) * len(cams), desc="render", unit="img") as bar:
        from . import render as render_mod

        # one LBS call and one binding pass per chunk of timesteps; chunk x Gaussians bounded like a render pass
        per_chunk = max(1, min(16, render_mod.MAX_PAIRS // max(1, b.gaussians.num_gaussians)))
        for start in range(0, len(ts), per_chunk):
            chunk = ts[start:start + per_chunk]
            for t, g in zip(chunk, poser.pose_and_place(params.select(chunk))):
                for group, (vm, K, w, h) in stacks:
                    res = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h,
                                    sh_degree=g.sh_degree, background=bg)
                    for i, c in enumerate(group):
                        save_png(tmp / f"{t:05d}_{c.index:02d}.png", res.rgb[i], res.alpha[i] if a.alpha else None)
                    bar.update(len(group))
    print(f"{len(ts) * len(cams)} images written to {a.out}")
    return 0


def cmd_export(a) -> int:
    from .avatar import turn_upside_down, write_world_ply

    b, dev = _load(a)
    params = _motion(a, b)
    check_timesteps([a.timestep], params, "--timestep", _motion_source(a, b))
    verts = b.pose(params, [a.timestep], device=dev)
    g = b.world(verts[0])
    if a.up == "-y":
        g = turn_upside_down(g)
    write_world_ply(a.out, g)
    print(f"timestep {a.timestep}: {g.means.shape[0]} world-space Gaussians written to {a.out} (up axis {a.up})")
    return 0


def cmd_capture(a) -> int:
    from tqdm import tqdm

    from .dataset import write_capture
    from .flame_params import FlameParams
    from .views import render_frames

    b, dev = _load(a)
    cams_file = a.cameras or (b.folder / b.meta.get("cameras", "cameras.json"))
    cams = _cameras(a, b, cams_file, a.scale)
    # The held-out (val) camera as VHAP splits: the avatar's, else 8 (NeRSemble's frontal), else the last;
    # a single camera leaves val empty.
    ids = [c.index for c in cams]
    held = b.meta.get("held_out_camera", 8)
    if held not in ids:
        held = ids[-1] if len(ids) > 1 else None
    train_cams = [c for c in cams if c.index != held]
    val_cams = [c for c in cams if c.index == held]
    T = b.params.num_timesteps
    step = whole(a.step, "--step", "every n-th timestep", 1, 10**6)
    params = b.params
    splits = {"train": (list(range(0, T, step)), train_cams), "val": (list(range(0, T, step)), val_cams)}
    if b.meta.get("held_out_sequence") and (b.folder / b.meta["held_out_sequence"]).is_file():
        held_seq = FlameParams.load(b.folder / b.meta["held_out_sequence"], **b.head.param_sizes()).with_identity(b.params)
        held_seq.static_offset = b.params.static_offset
        params = FlameParams.concat([b.params, held_seq])
        splits["test"] = (list(range(T, params.num_timesteps, step)), cams)
    total = sum(len(ts) for ts, cs in splits.values() if cs)
    bar = tqdm(total=total, desc="capture", unit="timestep")

    def render(t, cs):
        verts = b.pose(params, [t], device=dev)
        res = next(render_frames(b, verts, cs, (1.0, 1.0, 1.0)))
        bar.update(1)
        return [(res.rgb[i], res.alpha[i]) for i in range(len(cs))]

    write_capture(a.out, splits, params, render, overwrite=a.overwrite, n_verts=b.head.n_verts)
    bar.close()
    print(f"capture written to {a.out} ({', '.join(f'{k}: {len(v[0])}x{len(v[1])}' for k, v in splits.items())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edit3dgs", description="Edit FLAME-bound 3D Gaussian head avatars with text.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--threads", default=None,
                   help="CPU threads: 'auto' (default, or EDIT3DGS_THREADS): the cores other processes leave free")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-avatar", help="write the built-in avatar (no licence-gated data needed)")
    s.add_argument("--out", required=True)
    s.add_argument("--identity", type=int, default=0, choices=(0, 1), help="0 'ada' (edited in the demo), 1 'ben'")
    s.add_argument("--frames", type=int, default=24, help="frames per motion sequence")
    s.add_argument("--gaussians-per-face", type=int, default=3)
    s.add_argument("--sh-degree", type=int, default=3, choices=(0, 1, 2, 3))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_make_avatar)

    s = sub.add_parser("render", help="render an avatar from cameras at timesteps to PNGs")
    _add_avatar_args(s)
    s.add_argument("--cameras", required=True,
                   help="cameras JSON: transforms_*.json layout, or a GaussianAvatars model folder's cameras.json")
    _add_camera_args(s)
    s.add_argument("--camera-ids", help="only these camera indices, e.g. '0,8'")
    s.add_argument("--flame-params", help="motion: a flame_param.npz, or a dataset folder (frames by timestep_index, "
                                          "all splits); default: the avatar's own")
    s.add_argument("--timesteps", help="e.g. '0,10,20' or '0-40:5' (default: all); with a dataset folder, timestep_index values")
    s.add_argument("--scale", type=float, default=1.0, help="resolution factor (pixels stay square)")
    s.add_argument("--background", default="white", choices=("white", "black"))
    s.add_argument("--alpha", action="store_true", help="write RGBA")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("export", help="write one timestep as a standard world-space 3DGS PLY")
    _add_avatar_args(s)
    s.add_argument("--timestep", type=int, default=0)
    s.add_argument("--flame-params", help="motion npz or dataset folder (--timestep is a timestep_index); default: the avatar's own")
    s.add_argument("--up", default="y", choices=("y", "-y"),
                   help="up axis of the written PLY: y (FLAME's; upright in Spark and GaussianSplats3D) or -y "
                        "(turned 180 degrees about x, for viewers that assume 3DGS/COLMAP's y-down)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("capture", help="write an avatar's renders as a GaussianAvatars/VHAP multi-view dataset")
    _add_avatar_args(s)
    s.add_argument("--cameras", help="cameras JSON (default: the avatar's cameras.json)")
    _add_camera_args(s)
    s.add_argument("--scale", type=float, default=0.25, help="resolution factor of the 550x802 rig (pixels stay square)")
    s.add_argument("--step", type=int, default=1, help="every n-th timestep")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_capture)

    from . import commands  # noqa: F401  (later stages register their subcommands)

    for register in commands.REGISTRY:
        register(sub)
    return p


# Options that name files or folders a command reads, and those it writes (every command, one policy).
INPUT_OPTIONS = ("avatar", "flame", "flame_masks", "cameras", "flame_params", "original", "edited", "model", "clip",
                 "held_out_sequence", "cross_sequence")
OUTPUT_OPTIONS = ("out", "json")


def check_outputs(a) -> None:
    from .fsutil import check_output, check_output_path

    inputs = {"--" + k.replace("_", "-"): getattr(a, k, None) for k in INPUT_OPTIONS}
    for k in OUTPUT_OPTIONS:
        v = getattr(a, k, None)
        if isinstance(v, (str, os.PathLike)) and str(v):
            check_output_path(v, "--" + k)
            check_output(v, inputs, "--" + k)


def _stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return st.st_ino, st.st_mtime_ns


def interrupted_message(out, before: tuple | None) -> str:
    """What an interruption left at ``out``, read from the disk (not assumed)."""
    if not out:
        return "interrupted; the input is untouched and no partial output was kept"
    now = _stamp(out)
    if now is None:
        state = f"nothing was written to {out}" + (" (the previous result there is gone)" if before else "")
    elif now == before:
        state = f"{out} is as it was before this run"
    else:
        state = f"{out} was completed before the interruption"
    return f"interrupted; the input is untouched, no partial output was kept, and {state}"


def main(argv=None) -> int:
    from . import threads

    parser = build_parser()
    args, rest = [], list(sys.argv[1:] if argv is None else argv)
    while rest:  # "--up -y": argparse would take "-y" for an option
        x = rest.pop(0)
        if x == "--up" and rest[:1] == ["-y"]:
            x = "--up=" + rest.pop(0)
        args.append(x)
    a = parser.parse_args(args)
    out = getattr(a, "out", None)
    before = _stamp(out) if out else None
    try:
        threads.apply(a.threads)
        check_outputs(a)
        return a.func(a)
    except Edit3DGSError as exc:
        if a.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # what the system refused (a read-only folder, a full disk): one line too
        if a.debug:
            raise
        where = exc.filename if exc.filename is not None else out
        print(f"error: {Edit3DGSError(where, 'a file or folder this program can read and write', exc.strerror or str(exc))}",
              file=sys.stderr)
        return 2
    except (KeyboardInterrupt, CancelledError):
        print(f"error: {interrupted_message(out, before)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
