"""``edit3dgs demo``: the embedded default, end to end (README's first command, ``make demo``)."""

from __future__ import annotations

import sys

from .common import TqdmProgress


def config_from_args(a):
    """The ``DemoConfig`` of parsed ``edit3dgs demo`` arguments."""
    from ..demo import DemoConfig

    return DemoConfig(prompt=a.prompt, seed=a.seed, device=a.device, editor=a.editor, model=a.model,
                      ablation=bool(a.ablation))


def cmd_demo(a) -> int:
    from ..demo import run_demo

    cfg = config_from_args(a)
    bar = TqdmProgress()
    try:
        m = run_demo(a.out, cfg, overwrite=a.overwrite, progress=bar, log=lambda s: print(s, file=sys.stderr))
    finally:
        bar.close()
    print(f"{'setting':<18} {'PSNR vs GT':>11} {'SSIM':>6} {'inside region':>14} {'SSIM':>6} {'PSNR outside':>13}")
    for key, r in m["settings"].items():
        print(f"{key:<18} {float(r['psnr_vs_ground_truth']):>8.2f} dB {r['ssim_vs_ground_truth']:>6.3f} "
              f"{float(r['psnr_inside_region_vs_ground_truth']):>11.2f} dB {float(r['ssim_inside_region_vs_ground_truth']):>6.3f} "
              f"{float(r['psnr_outside_region']):>10.2f} dB")
    print(f"report: {a.out}/report.html  (metrics.json, grids, GIFs, edited/ avatar)")
    return 0


def add_demo_args(s) -> None:
    from ..demo import DEFAULT_PROMPT

    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    s.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"edit instruction (default: '{DEFAULT_PROMPT}')")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("--editor", default="ip2p", choices=("ip2p", "region"),
                   help="ip2p (default): the paper's method with the built-in Instruct-Pix2Pix (multi-view batch "
                        "editing + inpainting + refit); region: colour maps on named regions, no weights")
    s.add_argument("--model", default="builtin", help="Instruct-Pix2Pix model for --editor ip2p (default: builtin)")
    s.add_argument("--ablation", action="store_true",
                   help="--editor ip2p: also the paper's ablation (per-view; multi-view; + inpainting; + temporal "
                        "keys), each against ground truth, in the report and metrics.json (about 4x the time)")
