"""Commands on an avatar folder: ``make-avatar``, ``render``, ``export``, ``capture``."""

from __future__ import annotations

import time

from ..errors import Edit3DGSError
from ..validate import whole
from .common import (add_avatar_args, add_camera_args, check_timesteps, load_avatar, motion, motion_source,
                     parse_int_list, read_cameras)

MAX_FRAMES = 100_000  # make-avatar: frames of each motion sequence
MAX_GAUSSIANS_PER_FACE = 64  # make-avatar: about 650,000 Gaussians on the built-in head


def add_make_avatar_args(s) -> None:
    s.add_argument("--out", required=True)
    s.add_argument("--identity", type=int, default=0, choices=(0, 1), help="0 'ada' (edited in the demo), 1 'ben'")
    s.add_argument("--frames", type=int, default=24, help="frames per motion sequence")
    s.add_argument("--gaussians-per-face", type=int, default=3)
    s.add_argument("--sh-degree", type=int, default=3, choices=(0, 1, 2, 3))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")


def cmd_make_avatar(a) -> int:
    from ..builtin import make_avatar

    whole(a.frames, "--frames", "frames per sequence", 1, MAX_FRAMES)
    whole(a.gaussians_per_face, "--gaussians-per-face", "Gaussians per face", 1, MAX_GAUSSIANS_PER_FACE)
    whole(a.seed, "--seed", "a seed", 0, 2**32 - 1)
    t0 = time.perf_counter()
    out = make_avatar(a.out, identity=a.identity, frames=a.frames, gaussians_per_face=a.gaussians_per_face,
                      sh_degree=a.sh_degree, seed=a.seed, overwrite=a.overwrite)
    print(f"built-in avatar written to {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def add_render_args(s) -> None:
    add_avatar_args(s)
    s.add_argument("--cameras", required=True,
                   help="cameras JSON: transforms_*.json layout, or a GaussianAvatars model folder's cameras.json")
    add_camera_args(s)
    s.add_argument("--camera-ids", help="only these camera indices, e.g. '0,8'")
    s.add_argument("--flame-params", help="motion: a flame_param.npz, or a dataset folder (frames by timestep_index, "
                                          "all splits); default: the avatar's own")
    s.add_argument("--timesteps", help="e.g. '0,10,20' or '0-40:5' (default: all); with a dataset folder, timestep_index values")
    s.add_argument("--scale", type=float, default=1.0, help="resolution factor (pixels stay square)")
    s.add_argument("--background", default="white", choices=("white", "black"))
    s.add_argument("--alpha", action="store_true", help="write RGBA")
    s.add_argument("--compile-posing", action="store_true",
                   help="fuse FLAME posing and the binding transform with torch.compile (GPU; about half a minute "
                        "once, then faster per timestep: for long sequences)")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")


def cmd_render(a) -> int:
    from tqdm import tqdm  # progress bars: maintained, prints to stderr

    from ..cameras import stack
    from ..fsutil import atomic_dir
    from ..images import save_png

    b, dev = load_avatar(a)
    cams = read_cameras(a, b, a.cameras, a.scale)
    if a.camera_ids is not None:
        ids = parse_int_list(a.camera_ids, "--camera-ids")
        cams = [c for c in cams if c.index in ids]
        if not cams:
            raise Edit3DGSError(a.cameras, f"cameras with index {ids}", "none of them")
    params = motion(a, b)
    ts = parse_int_list(a.timesteps, "--timesteps")
    ts = list(range(params.num_timesteps)) if ts is None else ts
    check_timesteps(ts, params, "--timesteps", motion_source(a, b))
    groups: dict = {}
    for c in cams:
        groups.setdefault((c.width, c.height), []).append(c)
    from ..render import rasterize
    from ..render_avatar import WorldPoser, background_tensor

    poser = WorldPoser(b, compile=bool(getattr(a, "compile_posing", False)))
    bg = background_tensor(a.background, dev)
    stacks = [(group, stack(group, dev)) for group in groups.values()]
    with atomic_dir(a.out, overwrite=a.overwrite) as tmp, tqdm(total=len(ts) * len(cams), desc="render", unit="img") as bar:
        from .. import render as render_mod

        # one LBS call and one binding pass per chunk of timesteps; chunk x Gaussians bounded like a render pass;
        # one copy to the device, chunks are views of it; the last chunk padded (its last timestep repeated) to
        # the others' length, so posing is captured (and, with --compile-posing, compiled) once; on CUDA the
        # next chunk is posed on a side stream while this one rasterizes (all of it enqueued before the next)
        per_chunk = max(1, min(16, len(ts), render_mod.MAX_PAIRS // max(1, b.gaussians.num_gaussians)))
        sequence = poser.upload(params.select(ts + ts[-1:] * (-len(ts) % per_chunk)))
        for start, posed in poser.posed_chunks(sequence, range(0, len(ts), per_chunk), per_chunk):
            for t, g in zip(ts[start:start + per_chunk], posed):
                for group, (vm, K, w, h) in stacks:
                    res = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h,
                                    sh_degree=g.sh_degree, background=bg)
                    for i, c in enumerate(group):
                        save_png(tmp / f"{t:05d}_{c.index:02d}.png", res.rgb[i], res.alpha[i] if a.alpha else None)
                    bar.update(len(group))
    print(f"{len(ts) * len(cams)} images written to {a.out}")
    return 0


def add_export_args(s) -> None:
    add_avatar_args(s)
    s.add_argument("--timestep", type=int, default=0)
    s.add_argument("--flame-params", help="motion npz or dataset folder (--timestep is a timestep_index); default: the avatar's own")
    s.add_argument("--up", default="y", choices=("y", "-y"),
                   help="up axis of the written PLY: y (FLAME's; upright in Spark and GaussianSplats3D) or -y "
                        "(turned 180 degrees about x, for viewers that assume 3DGS/COLMAP's y-down)")
    s.add_argument("--out", required=True)


def cmd_export(a) -> int:
    from ..avatar import turn_upside_down, write_world_ply

    b, dev = load_avatar(a)
    params = motion(a, b)
    check_timesteps([a.timestep], params, "--timestep", motion_source(a, b))
    verts = b.pose(params, [a.timestep], device=dev)
    g = b.world(verts[0])
    if a.up == "-y":
        g = turn_upside_down(g)
    write_world_ply(a.out, g)
    print(f"timestep {a.timestep}: {g.means.shape[0]} world-space Gaussians written to {a.out} (up axis {a.up})")
    return 0


def add_capture_args(s) -> None:
    add_avatar_args(s)
    s.add_argument("--cameras", help="cameras JSON (default: the avatar's cameras.json)")
    add_camera_args(s)
    s.add_argument("--scale", type=float, default=0.25, help="resolution factor of the 550x802 rig (pixels stay square)")
    s.add_argument("--step", type=int, default=1, help="every n-th timestep")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true")


def cmd_capture(a) -> int:
    from tqdm import tqdm

    from ..dataset import write_capture
    from ..flame_params import FlameParams
    from ..render_avatar import render_frames

    b, dev = load_avatar(a)
    cams_file = a.cameras or (b.folder / b.meta.get("cameras", "cameras.json"))
    cams = read_cameras(a, b, cams_file, a.scale)
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
