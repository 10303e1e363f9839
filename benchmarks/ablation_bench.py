"""The paper's ablation over several prompts on the built-in avatar, against exact ground truth.

    python benchmarks/ablation_bench.py [--device cuda] [--prompts "make the hair blue" "give her red lips" "make the hair pink"]

Prints, per prompt and variant (per-view; multi-view; multi-view + inpainting; + FLAME-binding temporal
keys), PSNR against ground truth after the refit (whole image / inside the edited region) in the three
settings, the edited 2D images' colour spread across views and expression PSNR, and time per stage;
writes everything to --out (JSON). "make the hair pink" is a held-out combination (never trained).
The baseline of every ratio is the per-view variant run in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))


def main() -> int:
    from edit3dgs import ablation
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import load_cameras
    from edit3dgs.demo import DemoConfig, _settings_eval
    from edit3dgs.loop import default_timesteps
    from edit3dgs.device import pick_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", default=["make the hair blue", "give her red lips", "make the hair pink"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--num-timesteps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/ablation.json")
    a = ap.parse_args()
    dev = pick_device(a.device)
    cfg = DemoConfig(frames=24, eval_frames=8)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_avatar(tmp / "avatar", identity=0, frames=cfg.frames, gaussians_per_face=1, sh_degree=1)
        bundle = open_avatar(tmp / "avatar", device=dev)
        held = int(bundle.meta["held_out_camera"])
        cam = [c.scaled(cfg.eval_scale) for c in load_cameras(bundle.folder / "cameras.json") if c.index == held]
        edit_ts = set(default_timesteps(bundle.params.num_timesteps, a.num_timesteps))
        settings_eval = _settings_eval(bundle, cfg, edit_ts)
        for p in a.prompts:
            t0 = time.perf_counter()
            rows[p] = ablation.run_ablation(bundle, p, tmp / "work" / p.replace(" ", "_"), settings_eval, cam,
                                            model=a.model, device=str(dev), num_timesteps=a.num_timesteps,
                                            views_per_iter=None if dev.type == "cuda" else 5,
                                            ip2p={"steps": a.steps}, log=lambda s: print(s, file=sys.stderr))
            print(f"\n== {p!r} ({time.perf_counter() - t0:.0f} s)")
            print(f"{'variant':<34}{'novel':>14}{'held-out seq':>14}{'cross-id':>14}{'2D spread':>10}{'expr 2D':>9}{'edit s':>8}")
            for v, r in rows[p]["variants"].items():
                cell = lambda k: f"{r['settings'][k]['psnr_vs_ground_truth']:.1f}/{r['settings'][k]['psnr_inside_region_vs_ground_truth']:.1f}"  # noqa: E731
                e = r["edited"]
                print(f"{v:<34}{cell('novel_view'):>14}{cell('self_reenactment'):>14}{cell('cross_identity'):>14}"
                      f"{100 * e['colour_spread_across_views']:>9.1f}%{e['psnr_expression_edited_vs_ground_truth']:>9.2f}"
                      f"{r['timings_s']['edit']:>8.1f}")
            base = rows[p]["variants"]["per_view"]["timings_s"]["edit"]
            for v, r in rows[p]["variants"].items():
                print(f"  edit time vs per-view: {v} {r['timings_s']['edit'] / base:.2f}x")
            for c in rows[p]["summary"].values():
                print(f"  {c.get('verdict', 'agrees' if c['agrees'] else 'disagrees').upper()}: {c['finding']}")
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)   # after every prompt: a cut run keeps its rows
            Path(a.out).write_text(json.dumps({"device": str(dev), "prompts": rows}, indent=1, default=str))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"device": str(dev), "prompts": rows}, indent=1, default=str))
    print(f"\nwritten to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
