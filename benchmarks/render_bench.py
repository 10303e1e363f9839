"""Renderer timings: the pure-torch fallback on CPU, and gsplat vs it on CUDA.

    PYTHONPATH=backend .venv/bin/python benchmarks/render_bench.py [--quick]

Scene: a head-like cloud (Gaussian blobs on an ellipsoid shell about the
size of a head, SH degree 3) seen from 1 m. Prints one line per figure and
a JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from edit3dgs.render import RGB2SH, rasterize  # noqa: E402


def head_cloud(n: int, sh_degree: int = 3, seed: int = 0) -> dict:
    """``n`` Gaussians on an ellipsoid shell of a head's size (metres), SH colours."""
    g = torch.Generator().manual_seed(seed)
    semi_axes = torch.tensor([0.08, 0.11, 0.095])
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * semi_axes * (1.0 + 0.02 * torch.randn(n, 1, generator=g))
    spacing = math.sqrt(4 * math.pi * 0.095**2 / n)
    scales = spacing * 0.5 * torch.exp(0.35 * torch.randn(n, 3, generator=g))
    quats = F.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.sigmoid(1.5 + 1.5 * torch.randn(n, generator=g))
    base = torch.tensor([0.8, 0.6, 0.5]) + 0.15 * torch.randn(n, 3, generator=g)
    sh = 0.05 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    sh[:, 0] = RGB2SH(base)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=sh)


def look_at(eye: torch.Tensor, target: torch.Tensor = None, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera (OpenCV: x right, y down, z forward) looking from ``eye`` at ``target``."""
    target = torch.zeros(3) if target is None else target
    f = F.normalize(target - eye, dim=0)
    r = F.normalize(torch.linalg.cross(f, torch.tensor(up)), dim=0)
    d = torch.linalg.cross(f, r)
    R = torch.stack([r, d, f])
    view = torch.eye(4)
    view[:3, :3] = R
    view[:3, 3] = -R @ eye
    return view


def orbit_cameras(n: int, width: int, height: int, distance: float = 1.0, fill: float = 0.75):
    """``n`` cameras on an arc in front of the head; focal so the head fills ``fill`` of the height."""
    f = fill * height * distance / 0.22
    views = []
    for i in range(n):
        yaw = math.radians(-40 + 80 * i / max(n - 1, 1))
        pitch = math.radians(10 * math.sin(i))
        eye = distance * torch.tensor(
            [math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]
        )
        views.append(look_at(eye))
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return torch.stack(views), K.expand(n, 3, 3).clone()


def _time(fn, repeat: int, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def bench_cpu(n: int, width: int, height: int, repeat: int) -> dict:
    scene = head_cloud(n)
    viewmats, Ks = orbit_cameras(1, width, height)
    kw = dict(viewmats=viewmats, Ks=Ks, width=width, height=height, sh_degree=3, backend="torch")

    def forward():
        with torch.no_grad():
            rasterize(**scene, **kw)

    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}

    def forward_backward():
        out = rasterize(**params, **kw)
        (out.rgb.sum() + out.alpha.sum()).backward()

    return {"n": n, "size": [width, height], "fwd_s": _time(forward, repeat), "fwd_bwd_s": _time(forward_backward, repeat)}


def bench_cuda(n: int, width: int, height: int, cameras: int, repeat: int) -> dict:
    from edit3dgs.render.gsplat_raster import gsplat_available

    dev = torch.device("cuda")
    scene = {k: v.to(dev) for k, v in head_cloud(n).items()}
    viewmats, Ks = orbit_cameras(cameras, width, height)
    viewmats, Ks = viewmats.to(dev), Ks.to(dev)
    kw = dict(viewmats=viewmats, Ks=Ks, width=width, height=height, sh_degree=3)
    sync = torch.cuda.synchronize
    result = {"n": n, "size": [width, height], "cameras": cameras, "device": torch.cuda.get_device_name()}
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}

    def timings(backend: str) -> dict:
        def forward():
            with torch.no_grad():
                rasterize(**scene, **kw, backend=backend)

        def forward_backward():
            out = rasterize(**params, **kw, backend=backend)
            (out.rgb.sum() + out.alpha.sum()).backward()

        return {f"{backend}_fwd_s": _time(forward, repeat, sync), f"{backend}_fwd_bwd_s": _time(forward_backward, repeat, sync)}

    with torch.no_grad():
        torch_out = rasterize(**scene, **kw, backend="torch")
    result.update(timings("torch"))
    if gsplat_available():
        with torch.no_grad():
            gs_out = rasterize(**scene, **kw, backend="gsplat")
        result.update(timings("gsplat"))
        result["psnr_rgb_db"] = _psnr(gs_out.rgb, torch_out.rgb)
        result["psnr_alpha_db"] = _psnr(gs_out.alpha, torch_out.alpha)
        result["max_abs_rgb"] = (gs_out.rgb - torch_out.rgb).abs().max().item()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--no-cuda", action="store_true")
    args = ap.parse_args()
    repeat = 1 if args.quick else 3
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}

    for key, (n, w, h) in {"cpu_30k_512x512": (30_000, 512, 512), "cpu_10k_138x200": (10_000, 138, 200)}.items():
        r = bench_cpu(n, w, h, repeat)
        print(f"cpu torch  {n // 1000}k Gaussians {w}x{h}: forward {r['fwd_s']*1e3:.0f} ms, "
              f"forward+backward {r['fwd_bwd_s']*1e3:.0f} ms")
        report[key] = r

    if torch.cuda.is_available() and not args.no_cuda:
        r = bench_cuda(20_000, 550, 802, 4, repeat)
        line = (f"cuda ({r['device']}) 20k Gaussians 550x802 x4 cams: torch fwd {r['torch_fwd_s']*1e3:.1f} ms, "
                f"fwd+bwd {r['torch_fwd_bwd_s']*1e3:.1f} ms")
        if "gsplat_fwd_s" in r:
            line += (f"; gsplat fwd {r['gsplat_fwd_s']*1e3:.2f} ms, fwd+bwd {r['gsplat_fwd_bwd_s']*1e3:.2f} ms; "
                     f"PSNR gsplat vs torch {r['psnr_rgb_db']:.1f} dB")
        else:
            line += " (gsplat not installed)"
        print(line)
        report["cuda_20k_550x802"] = r
    print(json.dumps(report))


if __name__ == "__main__":
    main()
