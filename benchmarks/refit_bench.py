"""Refit speed: iterations/s of ``fit.refit`` vs raw rasterizer forward+backward, and a whole region-editor episode.

On CUDA (the numbers for the README, e.g. an H100): 100k Gaussians, 550x802
images, episode at 16 cameras x 10 timesteps. On CPU a small configuration
runs and prints the same table. The last line is JSON with every number.

    python benchmarks/refit_bench.py [--device auto|cpu|cuda] [--iters N] [--small]
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
from edit3dgs.cameras import load_cameras, stack  # noqa: E402
from edit3dgs.fit import RefitConfig, TargetBatch, photometric_loss, refit  # noqa: E402
from edit3dgs.loop import EditSession, EditSettings  # noqa: E402
from edit3dgs.render import rasterize  # noqa: E402
from edit3dgs.device import pick_device  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, iters, warmup=3):
    for _ in range(warmup):
        fn()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(dev)
    return iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="the CPU configuration, also on CUDA")
    ap.add_argument("--views", type=int, default=1, help="views per refit iteration (the loop uses a timestep's cameras)")
    a = ap.parse_args()
    dev = pick_device(a.device)
    big = dev.type == "cuda" and not a.small
    n_target = 100_000 if big else 10_000
    scale = 1.0 if big else 0.2
    n_cams, n_ts = (16, 10) if big else (4, 2)
    iters = a.iters or (100 if big else 10)

    tmp = Path(tempfile.mkdtemp(prefix="refit_bench_"))
    t0 = time.perf_counter()
    # Gaussians per face so that the avatar has at least n_target; cut to exactly n_target.
    make_avatar(tmp / "avatar", identity=0, frames=max(n_ts, 10), gaussians_per_face=1, sh_degree=3)
    b = open_avatar(tmp / "avatar")
    gpf = math.ceil(n_target / b.head.n_faces)
    if gpf > 1:
        make_avatar(tmp / "avatar", identity=0, frames=max(n_ts, 10), gaussians_per_face=gpf, sh_degree=3, overwrite=True)
        b = open_avatar(tmp / "avatar")
    keep = torch.randperm(b.gaussians.num_gaussians, generator=torch.Generator().manual_seed(0))[:n_target].sort().values
    b.gaussians = b.gaussians.subset(keep)
    b.gaussians.save_ply(tmp / "avatar" / "point_cloud.ply")
    b = open_avatar(tmp / "avatar", device=dev)
    setup_s = time.perf_counter() - t0
    cams = [c.scaled(scale) for c in load_cameras(tmp / "avatar" / "cameras.json")]
    cam = cams[: a.views] if a.views > 1 else [c for c in cams if c.index == 8]
    W, H = cam[0].width, cam[0].height

    # 1. refit iterations/s (one camera per iteration, like one view of a batch)
    verts = b.pose(timesteps=[0], device=dev)
    with torch.no_grad():
        wg = b.world(verts[0])
        target = rasterize(wg.means, wg.quats, wg.scales, wg.opacities, wg.sh, *stack(cam, dev),
                           sh_degree=wg.sh_degree, background=torch.ones(3, device=dev)).rgb.clamp(0, 1) * 0.9
    batch = [TargetBatch(0, verts[0], cam, target)]
    refit(b.gaussians, b.head.faces, batch, RefitConfig(iters=3))  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    refit(b.gaussians, b.head.faces, batch, RefitConfig(iters=iters))
    sync(dev)
    refit_its = iters / (time.perf_counter() - t0)

    # 2. raw rasterizer forward+backward on the same (world) Gaussians, same loss, no optimiser
    leaves = [x.detach().clone().requires_grad_(True) for x in (wg.means, wg.quats, wg.scales, wg.opacities, wg.sh)]
    vm, K, w, h = stack(cam, dev)
    bg = torch.ones(3, device=dev)
    try:
        import gsplat  # noqa: F401

        raw_name = "gsplat.rasterization" if dev.type == "cuda" else None
    except ImportError:
        raw_name = None

    def raw_step():
        m, q, s, o, sh = leaves
        if raw_name:
            import gsplat

            img, alpha, _ = gsplat.rasterization(m, q, s, o, sh, vm, K, w, h, sh_degree=wg.sh_degree)
            img = img + (1 - alpha) * bg
        else:
            img = rasterize(m, q, s, o, sh, vm, K, w, h, sh_degree=wg.sh_degree, background=bg, backend="torch").rgb
        loss = photometric_loss(img, target)
        loss.backward()

    raw_its = timed(raw_step, dev, iters)
    raw_name = raw_name or "edit3dgs torch rasterizer"

    # 3. a whole region-editor episode
    def prog(stage, done, total):
        pass

    s = EditSettings(prompt="make the hair blue", cameras=list(range(n_cams)), timesteps=list(range(n_ts)),
                     scale=scale, device=str(dev))
    sess = EditSession(b, s, progress=prog)
    t0 = time.perf_counter()
    sess.run(tmp / "edited")
    sync(dev)
    episode_s = time.perf_counter() - t0

    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "num_gaussians": b.gaussians.num_gaussians, "resolution": [W, H],
        "views_per_iter": len(cam), "refit_iters_per_s": round(refit_its, 2), "raw": raw_name, "raw_fwd_bwd_per_s": round(raw_its, 2),
        "ratio": round(refit_its / raw_its, 3), "goal_ratio": 0.8,
        "episode": {"cameras": n_cams, "timesteps": n_ts, "iterations": sess.metrics["iterations"],
                    "seconds": round(episode_s, 2), "stages_s": sess.timings},
        "setup_s": round(setup_s, 1),
    }
    print(f"{'measure':<38} {'value':>12}")
    print(f"{'device':<38} {res['device']:>12}")
    print(f"{'Gaussians / resolution':<38} {res['num_gaussians']:>6} {W}x{H}")
    print(f"{f'refit iterations/s ({len(cam)} views)':<38} {refit_its:>12.2f}")
    print(f"{'raw fwd+bwd/s (' + raw_name + ')':<38} {raw_its:>12.2f}")
    print(f"{'ratio (goal >= 0.8)':<38} {res['ratio']:>12.3f}")
    print(f"{f'episode {n_cams} cams x {n_ts} timesteps':<38} {episode_s:>10.1f} s")
    for k, v in sess.timings.items():
        print(f"{'  ' + k:<38} {v:>10.1f} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
