"""Render throughput of the whole path (FLAME posing + binding transform + rasterize)
against raw gsplat on the same world Gaussians, in one run.

    python benchmarks/pipeline_bench.py [--gaussians 100000] [--cameras 16] [--width 550 --height 802]
                                        [--timesteps 10] [--sequence 32] [--reps 10]

A timed call renders a sequence of at least ``--sequence`` timesteps in chunks of ``--timesteps``
(``--timesteps 1``: one timestep at a time), as ``edit3dgs render`` does: the sequence uploaded once,
``WorldPoser.posed_chunks`` posing the next chunk (on a side CUDA stream) while the current one
rasterizes. "sequential posing (before)" poses each chunk with ``pose_and_place`` between the
rasterizations instead. On CUDA the raw baseline is ``gsplat.rasterization`` on precomputed world
Gaussians, as many renders as the sequence has timesteps; on CPU it is our torch rasterizer on
precomputed world Gaussians (so the ratio shows the cost of posing + binding). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from edit3dgs.builtin import make_avatar  # noqa: E402
from edit3dgs.bundle import open_avatar  # noqa: E402
from edit3dgs.cameras import camera_rig, stack  # noqa: E402
from edit3dgs.render import rasterize  # noqa: E402
from edit3dgs.render_avatar import WorldPoser  # noqa: E402


def timeit(fn, reps: int, sync) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gaussians", type=int, default=100_000)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--width", type=int, default=550)
    ap.add_argument("--height", type=int, default=802)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--timesteps", type=int, default=10, help="timesteps per chunk (1: one timestep at a time)")
    ap.add_argument("--sequence", type=int,
                    help="timesteps per timed sequence, at least (rounded up to whole chunks); default: 32 on CUDA, "
                         "one chunk on the CPU (where a render of 16 views takes seconds)")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        # Gaussians per face chosen so the avatar has about the requested count.
        probe = make_avatar(Path(tmp) / "probe", frames=2, gaussians_per_face=1, sh_degree=3)
        n_faces = open_avatar(probe).head.n_faces
        gpf = max(1, math.ceil(a.gaussians / n_faces))
        folder = make_avatar(Path(tmp) / "avatar", frames=4, gaussians_per_face=gpf, sh_degree=3)
        b = open_avatar(folder, device=dev)
    N = b.gaussians.num_gaussians
    cams = [c for c in camera_rig(a.width, a.height)][: a.cameras]
    vm, K, w, h = stack(cams, dev)
    bg = torch.ones(3, device=dev)
    T = a.timesteps
    n_chunks = max(1, math.ceil((a.sequence or (32 if dev.type == "cuda" else T)) / T))
    n = n_chunks * T    # timesteps per timed call (the avatar's motion repeated)
    seq = b.params.select([t % b.params.num_timesteps for t in range(n)])
    chunk = seq.select(list(range(T)))
    starts = range(0, n, T)
    one = b.params.select([1])
    params = one.to_torch(dev)
    faces = b.head.faces
    poser = WorldPoser(b)

    eager_poser = WorldPoser(b, graphs=False)

    seq_dev = poser.upload(seq)
    chunks_host = [seq.select(list(range(s, s + T))) for s in starts]

    @torch.no_grad()
    def whole(p=poser):
        # A sequence, as `edit3dgs render` does it: the sequence uploaded once, the next chunk posed + placed
        # (a CUDA graph replayed on a side stream on CUDA) while the current one rasterizes, per timestep.
        for _, gs in p.posed_chunks(seq_dev, starts, T):
            for g in gs:
                out = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3,
                                background=bg)
        return out

    @torch.no_grad()
    def sequential(chunks=None):
        # Before: each chunk posed (a graph replay on the current stream) between the rasterizations;
        # `chunks`: FlameParams per chunk, copied from the host per call.
        for s in starts:
            for g in poser.pose_and_place(chunks[s // T] if chunks else poser.timesteps_of(seq_dev, s, s + T)):
                out = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3,
                                background=bg)
        return out

    with torch.no_grad():
        g = b.gaussians.to_world(b.head(params)[0], faces)
    if dev.type == "cuda":
        import gsplat

        @torch.no_grad()
        def raw_one():
            # Same work as ours minus posing/binding: RGB + expected depth, then the background.
            out, alpha, _ = gsplat.rasterization(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h,
                                                 sh_degree=3, render_mode="RGB+ED", packed=False)
            return out[..., :3] + (1 - alpha) * bg

        def raw():
            for _ in range(n):
                r = raw_one()
            return r
        baseline = "gsplat.rasterization"
    else:
        @torch.no_grad()
        def raw():
            for _ in range(n):
                r = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3, background=bg)
            return r
        baseline = "torch rasterizer on precomputed world Gaussians"

    @torch.no_grad()
    def posing_only():
        return poser.place_sequence(poser.head(poser.timesteps_of(seq_dev, 0, T)))

    with torch.no_grad():
        eager = b.gaussians.to_world(b.head(params)[0], faces)
        batched = poser(one)
        err = max((eager.means - batched.means).abs().max().item(), (eager.quats - batched.quats).abs().max().item())
    print(f"posing: batched vs eager max difference = {err:.2e}")
    with torch.no_grad():
        piped = [g.means.clone() for _, gs in poser.posed_chunks(seq_dev, starts, T) for g in gs]
        err_p = max((m - g.means).abs().max().item() for s in starts
                    for m, g in zip(piped[s:s + T], poser.pose_and_place(poser.timesteps_of(seq_dev, s, s + T))))
    print(f"posing: pipelined vs sequential max difference = {err_p:.2e}")

    reps = a.reps if dev.type == "cuda" else max(1, a.reps // 5)
    t_whole = timeit(whole, reps, sync)
    t_raw = timeit(raw, reps, sync)
    t_seq = timeit(sequential, reps, sync)
    t_pose = timeit(posing_only, reps, sync)
    t_eager = timeit(lambda: whole(eager_poser), reps, sync)
    t_host = timeit(lambda: sequential(chunks_host), reps, sync)
    t_comp = compile_s = float("nan")
    if dev.type == "cuda":    # posing + placing fused by torch.compile, then replayed as a CUDA graph
        cposer = WorldPoser(b, compile=True)
        t0 = time.perf_counter()
        whole(cposer)
        sync()
        compile_s = time.perf_counter() - t0
        t_comp = timeit(lambda: whole(cposer), reps, sync)
        err_c = max((x.means - y.means).abs().max().item() for x, y in zip(cposer.pose_and_place(chunk),
                                                                            eager_poser.pose_and_place(chunk)))
        print(f"compiled posing: first call (compile) {compile_s:.1f} s; max |means - eager| = {err_c:.2e}")
    dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"device {dev_name}; {N} Gaussians; {len(cams)} cameras at {w}x{h}; "
          f"sequences of {n} timesteps in chunks of {T}")

    def row(what: str, t: float) -> None:
        print(f"{what:60s} {t * 1e3:9.2f} ms/seq  {t * 1e3 / n:7.3f} ms/timestep  {n * len(cams) / t:8.1f} img/s")

    row("baseline (" + baseline + ")", t_raw)
    row("whole path (pose + bind + rasterize; posing pipelined)", t_whole)
    row("whole path, sequential posing (before)", t_seq)
    row("whole path, sequential, parameters copied from the host", t_host)
    row("whole path, eager posing (no CUDA graph)", t_eager)
    row("whole path, compiled posing (--compile-posing)", t_comp)
    print(f"{'posing + binding transform alone (eager), one chunk':60s} {t_pose * 1e3:9.2f} ms")
    if not poser.graphs and dev.type == "cuda":
        print(f"CUDA graphs off: {poser.graph_error}")
    print(f"throughput ratio whole/raw = {t_raw / t_whole:.3f} (sequential posing {t_raw / t_seq:.3f}); "
          f"compiled posing {t_raw / t_comp:.3f} (goal >= 0.9)")
    print(json.dumps({"bench": "pipeline_render", "device": dev_name, "gaussians": N, "cameras": len(cams), "timesteps": n,
                      "chunk": T, "width": w, "height": h, "raw_ms": t_raw * 1e3, "whole_ms": t_whole * 1e3,
                      "whole_sequential_ms": t_seq * 1e3, "pose_ms": t_pose * 1e3, "whole_eager_ms": t_eager * 1e3,
                      "whole_host_params_ms": t_host * 1e3, "ratio": t_raw / t_whole, "ratio_sequential": t_raw / t_seq,
                      "whole_compiled_ms": t_comp * 1e3, "ratio_compiled": t_raw / t_comp, "compile_s": compile_s,
                      "pipelined_vs_sequential_max_diff": err_p}))


if __name__ == "__main__":
    main()
