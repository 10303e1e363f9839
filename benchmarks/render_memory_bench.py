"""Peak memory of rendering 16 cameras of a large avatar, against the render batching setting.

    python benchmarks/render_memory_bench.py [--gaussians 2000000] [--cameras 16] [--scale 0.25]
                                             [--max-pairs 2000000,8000000] [--work DIR]

Builds the built-in avatar with enough Gaussians per face (once, in --work), then renders one
timestep from the built-in 16-camera rig at --scale through the same path as ``edit3dgs render``
(FLAME posing -> binding -> ``rasterize``), once per --max-pairs value, each in a fresh process.
Prints, per setting, the process's peak resident memory after loading the avatar (the render's
own peak), the time, and the ratio to the setting (bytes per camera-Gaussian pair in a pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(avatar: str, cameras: int, scale: float, threads: int) -> None:
    import torch

    from edit3dgs import render
    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import load_cameras, stack
    from edit3dgs.render_avatar import WorldPoser

    torch.set_num_threads(threads)
    b = open_avatar(avatar)
    cams = [c.scaled(scale) for c in load_cameras(Path(avatar) / "cameras.json")][:cameras]
    vm, K, w, h = stack(cams, "cpu")
    poser = WorldPoser(b)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        g = poser.place_sequence(poser.pose(b.params.select([0])))[0]
        res = render.rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=g.sh_degree)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": b.gaussians.num_gaussians, "cameras": len(cams), "size": [w, h], "max_pairs": render.MAX_PAIRS,
                      "per_pass": max(1, render.MAX_PAIRS // b.gaussians.num_gaussians), "loaded_bytes": base,
                      "peak_bytes": peak, "render_bytes": peak - base, "seconds": took,
                      "mean_alpha": float(res.alpha.mean())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gaussians", type=int, default=2_000_000)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--max-pairs", default="2000000,8000000")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / ".work"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.cameras, a.scale, a.threads)
    sys.path.insert(0, str(REPO / "backend"))
    from edit3dgs.builtin import make_avatar
    from edit3dgs.flame import load_flame_model
    from edit3dgs import headmodel

    work = Path(a.work)
    avatar = work / f"avatar_{a.gaussians}"
    if not avatar.is_dir():
        pkl, masks = headmodel.write_head_model(work / "head", seed=0)
        faces = int(load_flame_model(pkl, masks).n_faces) + 168  # the built-in head carries teeth faces too
        gpf = max(1, -(-a.gaussians // faces))
        t0 = time.perf_counter()
        make_avatar(avatar, frames=2, gaussians_per_face=gpf, sh_degree=3)
        print(f"built {avatar} ({gpf} Gaussians per face) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    for mp in [int(x) for x in a.max_pairs.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(avatar), "--cameras", str(a.cameras),
                              "--scale", str(a.scale), "--threads", str(a.threads)], env={**env, "EDIT3DGS_RENDER_MAX_PAIRS": str(mp)},
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"max_pairs={mp}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        gib = 1 << 30
        print(f"N={r['n']:,} cameras={r['cameras']} {r['size'][0]}x{r['size'][1]} max_pairs={mp:,} "
              f"({r['per_pass']} cameras per pass): render peak {r['render_bytes'] / gib:.2f} GiB over the loaded "
              f"avatar ({r['loaded_bytes'] / gib:.2f} GiB), process peak {r['peak_bytes'] / gib:.2f} GiB, "
              f"{r['render_bytes'] / (r['per_pass'] * r['n']):.0f} bytes per pair in a pass, {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
