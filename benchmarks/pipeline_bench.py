"""Render throughput of the whole path (FLAME posing + binding transform + rasterize)
against raw gsplat on the same world Gaussians, in one run.

    python benchmarks/pipeline_bench.py [--gaussians 100000] [--cameras 16] [--width 550 --height 802]

On CUDA the raw baseline is ``gsplat.rasterization`` on precomputed world
Gaussians; on CPU it is our torch rasterizer on precomputed world Gaussians
(so the ratio shows the cost of posing + binding). Prints a table and a JSON line.
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
    ap.add_argument("--timesteps", type=int, default=10, help="timesteps per rendered sequence")
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
    seq = b.params.select(list(range(T)))
    one = b.params.select([1])
    params = one.to_torch(dev)
    faces = b.head.faces
    poser = WorldPoser(b)

    eager_poser = WorldPoser(b, graphs=False)

    seq_dev = poser.upload(seq)

    @torch.no_grad()
    def whole(p=poser):
        # A sequence, as `edit3dgs render` does it: the sequence uploaded once, then posing + placing of
        # the chunk (a CUDA graph replay on CUDA), then per timestep rasterize.
        for g in p.pose_and_place(seq_dev):
            out = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3, background=bg)
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
            for _ in range(T):
                r = raw_one()
            return r
        baseline = "gsplat.rasterization"
    else:
        @torch.no_grad()
        def raw():
            for _ in range(T):
                r = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3, background=bg)
            return r
        baseline = "torch rasterizer on precomputed world Gaussians"

    @torch.no_grad()
    def posing_only():
        return poser.place_sequence(poser.head(seq_dev))

    with torch.no_grad():
        eager = b.gaussians.to_world(b.head(params)[0], faces)
        batched = poser(one)
        err = max((eager.means - batched.means).abs().max().item(), (eager.quats - batched.quats).abs().max().item())
    print(f"posing: batched vs eager max difference = {err:.2e}")

    reps = a.reps if dev.type == "cuda" else max(1, a.reps // 5)
    t_whole = timeit(whole, reps, sync)
    t_raw = timeit(raw, reps, sync)
    t_pose = timeit(posing_only, reps, sync)
    t_eager = timeit(lambda: whole(eager_poser), reps, sync)
    t_host = timeit(lambda: [rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3,
                                       background=bg) for g in poser.pose_and_place(seq)], reps, sync)
    t_comp = compile_s = float("nan")
    if dev.type == "cuda":    # posing + placing fused by torch.compile, then replayed as a CUDA graph
        cposer = WorldPoser(b, compile=True)
        t0 = time.perf_counter()
        whole(cposer)
        sync()
        compile_s = time.perf_counter() - t0
        t_comp = timeit(lambda: whole(cposer), reps, sync)
        err_c = max((x.means - y.means).abs().max().item() for x, y in zip(cposer.pose_and_place(seq),
                                                                            eager_poser.pose_and_place(seq)))
        print(f"compiled posing: first call (compile) {compile_s:.1f} s; max |means - eager| = {err_c:.2e}")
    dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"device {dev_name}; {N} Gaussians; {len(cams)} cameras at {w}x{h}; sequences of {T} timesteps")
    print(f"{'baseline (' + baseline + ')':60s} {t_raw * 1e3:9.2f} ms/seq  {T * len(cams) / t_raw:8.1f} img/s")
    print(f"{'whole path (pose + bind + rasterize)':60s} {t_whole * 1e3:9.2f} ms/seq  {T * len(cams) / t_whole:8.1f} img/s")
    print(f"{'whole path, parameters copied from the host per call':60s} {t_host * 1e3:9.2f} ms/seq  {T * len(cams) / t_host:8.1f} img/s")
    print(f"{'whole path, eager posing (no CUDA graph)':60s} {t_eager * 1e3:9.2f} ms/seq  {T * len(cams) / t_eager:8.1f} img/s")
    print(f"{'whole path, compiled posing (--compile-posing)':60s} {t_comp * 1e3:9.2f} ms/seq  {T * len(cams) / t_comp:8.1f} img/s")
    print(f"{'posing + binding transform alone (eager)':60s} {t_pose * 1e3:9.2f} ms")
    if not poser.graphs and dev.type == "cuda":
        print(f"CUDA graphs off: {poser.graph_error}")
    print(f"throughput ratio whole/raw = {t_raw / t_whole:.3f}; compiled posing {t_raw / t_comp:.3f} (goal >= 0.9)")
    print(json.dumps({"bench": "pipeline_render", "device": dev_name, "gaussians": N, "cameras": len(cams), "timesteps": T, "width": w,
                      "height": h, "raw_ms": t_raw * 1e3, "whole_ms": t_whole * 1e3, "pose_ms": t_pose * 1e3, "whole_eager_ms": t_eager * 1e3, "whole_host_params_ms": t_host * 1e3,
                      "ratio": t_raw / t_whole, "whole_compiled_ms": t_comp * 1e3, "ratio_compiled": t_raw / t_comp,
                      "compile_s": compile_s}))


if __name__ == "__main__":
    main()
