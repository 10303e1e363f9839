"""Refit fidelity: how close the refit avatar comes to the ground truth inside the edited region.

The demo's avatar and edit ("make the hair blue" by default, region editor) are
rendered and edited once; then each refit variant fits the same edited images
and is evaluated like the demo: the held-out camera (unseen timesteps), the
held-out sequence and cross-identity reenactment, whole image / inside / outside
the edited region. The ground truth is the avatar with the region's Gaussians
recoloured by the editor's colour map. A second edit set, "sparse" (4 cameras x
2 timesteps, like an artist's key views in Blender), adds the spread of the
region's mean colour over the 16 cameras (max - min over mean, per channel).

    python benchmarks/refit_fidelity.py [--prompt "..."] [--variants seed,default,...] [--sets dense,sparse]

Every variant prints one row; the last line is JSON with every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from edit3dgs import loop as loop_mod  # noqa: E402
from edit3dgs.builtin import make_avatar  # noqa: E402
from edit3dgs.bundle import open_avatar  # noqa: E402
from edit3dgs.cameras import load_cameras  # noqa: E402
from edit3dgs.demo import DemoConfig, _frames, _render, region_weight  # noqa: E402
from edit3dgs.edit.region import recolour_gaussians  # noqa: E402
from edit3dgs.fit import EDIT_LRS, RefitConfig, refit  # noqa: E402
from edit3dgs.flame_params import FlameParams  # noqa: E402
from edit3dgs.loop import EditSession, EditSettings  # noqa: E402
from edit3dgs.metrics import region_colour, region_scores  # noqa: E402

SPARSE_CAMERAS = [2, 6, 10, 14]  # 4 key views spread over the arc (the frontal camera 8 is held out)
SPARSE_TIMESTEPS = 2

# name -> RefitConfig keyword arguments (on top of the demo's views_per_iter and background)
VARIANTS = {
    "seed": dict(lrs="seed", appearance_only=False, sh_rest="free", stop="fixed"),
    "seed_80it": dict(lrs="seed", appearance_only=False, sh_rest="free", iters=80),
    "ga_rates": dict(lrs="gaussian_avatars", appearance_only=False, sh_rest="free", stop="fixed"),
    "edit_rates": dict(lrs="edit", appearance_only=False, sh_rest="free", stop="fixed"),
    "edit_rates_conv": dict(lrs="edit", appearance_only=False, sh_rest="free"),
    "appearance": dict(lrs="edit", appearance_only=True, sh_rest="free", stop="fixed"),
    "appearance_conv": dict(lrs="edit", appearance_only=True, sh_rest="free"),
    "appearance_hold": dict(lrs="edit", appearance_only=True, sh_rest="hold"),
    "appearance_reg": dict(lrs="edit", appearance_only=True, sh_rest="regularise"),
    "default": dict(appearance_only=True),  # what the loop runs for the region editor
    "default_l2": dict(appearance_only=True, lambda_ssim=0.0),
    "dc_lr_0.1": dict(appearance_only=True, lrs={**EDIT_LRS, "features_dc": 0.1, "features_rest": 0.005}),
    "dc_lr_0.2": dict(appearance_only=True, lrs={**EDIT_LRS, "features_dc": 0.2, "features_rest": 0.01}),
}


class Case:
    """The demo's avatar, one edit set rendered and edited once, the ground truth and the evaluation views."""

    def __init__(self, folder: Path, prompt: str, cameras, num_timesteps: int, scale: float, views_per_iter,
                 eval_frames: int, dc: DemoConfig):
        self.bundle = open_avatar(folder)
        b = self.bundle
        captured = {}

        def capture(gaussians, faces, batches, cfg, trainable=None, **kw):
            captured.update(batches=batches, trainable=trainable)
            return refit(gaussians, faces, batches, replace(cfg, iters=1), trainable=trainable, **kw)

        settings = EditSettings(prompt=prompt, editor="region", scale=scale, num_timesteps=num_timesteps,
                                cameras=cameras, views_per_iter=views_per_iter, device="cpu")
        session = EditSession(b, settings)
        real, loop_mod.refit = loop_mod.refit, capture
        try:
            with tempfile.TemporaryDirectory() as tmp:
                session.run(Path(tmp) / "edited")
        finally:
            loop_mod.refit = real
        self.batches, self.trainable = captured["batches"], captured["trainable"]
        self.views_per_iter = views_per_iter
        self.maps = list(session.editor.maps)
        self.regions = sorted({m.region for m in self.maps})
        gt = b.gaussians
        for m in self.maps:
            gt = recolour_gaussians(gt, b.gaussian_mask([m.region]), m)
        self.gt = gt
        held = int(b.meta.get("held_out_camera", 8))
        self.all_cams = [c.scaled(dc.eval_scale) for c in load_cameras(b.folder / b.meta["cameras"])]
        self.cam = [c for c in self.all_cams if c.index == held]
        T = b.params.num_timesteps
        edit_ts = {tb.timestep for tb in self.batches}
        held_seq = FlameParams.load(b.folder / b.meta["held_out_sequence"]).with_identity(b.params)
        cross_seq = FlameParams.load(b.folder / b.meta["cross_identity_sequence"]).with_identity(b.params)
        self.settings = {"novel_view": (b.params, _frames(T, eval_frames, edit_ts)),
                         "self_reenactment": (held_seq, _frames(held_seq.num_timesteps, eval_frames)),
                         "cross_identity": (cross_seq, _frames(cross_seq.num_timesteps, eval_frames))}
        self.ref = {}
        for key, (params, ts) in self.settings.items():
            self.ref[key] = (_render(b, b.gaussians, params, ts, self.cam), _render(b, gt, params, ts, self.cam),
                             region_weight(b, b.gaussians, params, ts, self.cam, self.regions))
        # the 16 cameras at one unseen timestep of the training sequence
        self.t_spread = [_frames(T, 3, edit_ts)[1]]
        self.w_spread = region_weight(b, b.gaussians, b.params, self.t_spread, self.all_cams, self.regions)

    def run(self, **kw) -> dict:
        b = self.bundle
        cfg = RefitConfig(**{"views_per_iter": self.views_per_iter,
                             "background": tuple(b.meta.get("background", (1.0, 1.0, 1.0))), **kw})
        t0 = time.perf_counter()
        res = refit(b.gaussians, b.head.faces, self.batches, cfg, trainable=self.trainable)
        out = {"iterations": res.iters, "refit_s": round(time.perf_counter() - t0, 2)}
        g0, g1 = b.gaussians, res.gaussians
        out["mean_abs_delta"] = {k: float((getattr(g1, k) - getattr(g0, k)).abs().mean())
                                 for k in ("features_dc", "features_rest", "xyz", "opacity", "scaling")}
        for key, (params, ts) in self.settings.items():
            o, gt, w = self.ref[key]
            e = _render(b, g1, params, ts, self.cam)
            out[key] = region_scores(o, e, gt, w)
        e16 = _render(b, g1, b.params, self.t_spread, self.all_cams)
        col = region_colour(e16, self.w_spread)
        out["colour_spread"] = ((col.amax(0) - col.amin(0)) / col.mean(0)).tolist()
        gcol = region_colour(_render(b, self.gt, b.params, self.t_spread, self.all_cams), self.w_spread)
        out["colour_spread_ground_truth"] = ((gcol.amax(0) - gcol.amin(0)) / gcol.mean(0)).tolist()
        # per camera and channel: the refit's mean colour of the region relative to the ground truth's
        out["colour_vs_ground_truth"] = ((col - gcol) / gcol).abs().amax(0).tolist()
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="make the hair blue")
    ap.add_argument("--variants", default="seed,ga_rates,edit_rates,appearance,appearance_conv,appearance_hold,default")
    ap.add_argument("--sets", default="dense,sparse")
    ap.add_argument("--scale", type=float, default=None, help="edit-view resolution (default: the demo's)")
    ap.add_argument("--views-per-iter", type=int, default=0, help="0: the demo's")
    ap.add_argument("--eval-frames", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dc = DemoConfig()
    scale = a.scale or dc.edit_scale
    vpi = dc.views_per_iter if a.views_per_iter == 0 else a.views_per_iter
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "avatar"
        make_avatar(folder, identity=0, frames=dc.frames, gaussians_per_face=dc.gaussians_per_face,
                    sh_degree=dc.sh_degree, seed=dc.seed)
        for set_name in a.sets.split(","):
            cams, nts = (None, dc.num_timesteps) if set_name == "dense" else (SPARSE_CAMERAS, SPARSE_TIMESTEPS)
            case = Case(folder, a.prompt, cams, nts, scale, min(vpi, 4) if cams else vpi, a.eval_frames, dc)
            print(f"\n{set_name}: {a.prompt!r}, {len(case.batches[0].cameras)} cameras x {len(case.batches)} timesteps "
                  f"at {scale}x, {case.views_per_iter} views/iteration")
            print(f"{'variant':18s} {'iters':>5s} {'s':>6s} | inside dB (nv/self/cross) | inside SSIM | whole dB | "
                  f"outside dB | colour vs GT % | |d dc| |d rest| |d xyz| |d opac|")
            for v in a.variants.split(","):
                r = case.run(**VARIANTS[v])
                results[f"{set_name}/{v}"] = r
                s = [r[k] for k in ("novel_view", "self_reenactment", "cross_identity")]
                f = lambda key: "/".join(f"{float(x[key]):.1f}" for x in s)  # noqa: E731
                fs = lambda key: "/".join(f"{float(x[key]):.3f}" for x in s)  # noqa: E731
                d = r["mean_abs_delta"]
                print(f"{v:18s} {r['iterations']:5d} {r['refit_s']:6.1f} | {f('psnr_inside_region_vs_ground_truth'):>24s} | "
                      f"{fs('ssim_inside_region_vs_ground_truth')} | {f('psnr_vs_ground_truth')} | "
                      f"{f('psnr_outside_region')} | {'/'.join(f'{100 * x:.1f}' for x in r['colour_vs_ground_truth'])} | "
                      f"{d['features_dc']:.3f} {d['features_rest']:.3f} {d['xyz']:.4f} {d['opacity']:.3f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
