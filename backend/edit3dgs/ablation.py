"""The paper's ablation on the built-in head, measured against exact ground truth.

Four ways to edit the same views with the Instruct-Pix2Pix editor, each followed
by the same refit:

* ``per_view``: every view edited on its own (plain Instruct-Pix2Pix);
* ``multiview``: multi-view batch editing (key views with extended attention,
  feature injection into the other views; key views per timestep);
* ``multiview_inpaint``: plus expression-preserving eye/mouth inpainting
  (the paper's method, the demo's main edit);
* ``multiview_inpaint_temporal_keys``: plus one timestep's key views shared
  across time through the FLAME binding.

The ground truth of an instruction the region editor understands is exact: the
region's Gaussians recoloured by the colour map measured as the training data
measured it (``editor_data.measure_references``). Measured for each variant:

* after the refit, PSNR/SSIM against ground truth over the whole image and
  inside the edited region, in the three settings (held-out camera, held-out
  sequence, cross-identity reenactment);
* before the refit, the edited 2D images: against ground truth, against the
  refit avatar's render of the same view, and the spread across the views of
  one timestep of the edited region's mean colour (relative to its mean);
* expression preservation: PSNR inside the eye and mouth masks against ground
  truth, on the edited images (timesteps with different expressions) and on the
  held-out sequence after the refit;
* time per stage.

Used by ``edit3dgs demo`` (report, metrics.json) and ``benchmarks/ablation_bench.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .demo import _render, region_weight  # the demo's renders: timestep-major, region shares of opacity
from .metrics import INSIDE, finite, psnr, region_colour, region_scores

VARIANTS = {
    "per_view": {"multiview": False, "inpaint": False},
    "multiview": {"multiview": True, "inpaint": False},
    "multiview_inpaint": {"multiview": True, "inpaint": True},
    "multiview_inpaint_temporal_keys": {"multiview": True, "inpaint": True, "temporal_keys": True},
}
MAIN = "multiview_inpaint"
TITLES = {"per_view": "per-view Instruct-Pix2Pix", "multiview": "multi-view batch editing",
          "multiview_inpaint": "multi-view + inpainting (the paper)",
          "multiview_inpaint_temporal_keys": "multi-view + inpainting + FLAME-binding temporal keys"}
EXPRESSION_REGIONS = ("eye_region", "eyes", "lips")
SEED_CLAIMS = {
    "multiview": "the seed: multi-view batch editing makes the edited views of one timestep consistent "
                 "(lower colour spread across views, edited views closer to the refit's renders)",
    "inpaint": "the seed: eye/mouth inpainting restores the expressions of the source frames "
               "(higher PSNR inside the eye and mouth masks)",
}


def ground_truth(bundle, prompt: str, reference_scale: float = 0.2):
    """(colour maps, ground-truth Gaussians, edited regions) of an appearance ``prompt``, its colours
    measured as the built-in editor's training data measured them."""
    from .edit.region import recolour_gaussians
    from .edit.region import instruction_maps
    from .editor_data import measure_references, train_rig

    T = bundle.params.num_timesteps
    refs = measure_references(bundle, bundle.params, [0, T // 4], train_rig(reference_scale))
    maps = instruction_maps(prompt, refs)
    g = bundle.gaussians
    for m in maps:
        g = recolour_gaussians(g, bundle.gaussian_mask([m.region]), m)
    return maps, g, sorted({m.region for m in maps})


def edit_variant(bundle, prompt: str, variant: str, out_dir: Path, *, model: str = "builtin", device: str = "cpu",
                 scale: float = 0.2, num_timesteps: int = 4, regions=None, views_per_iter=None,
                 ip2p: dict | None = None, seed: int = 0, progress: Callable | None = None,
                 iters_per_batch: int | None = None):
    """One edit of ``bundle`` with the Instruct-Pix2Pix ``variant``; returns (session, edit record)."""
    from .loop import EditSession, EditSettings

    opts = {"model": model, "device": device, **(ip2p or {}), **VARIANTS[variant]}
    settings = EditSettings(prompt=prompt, editor="ip2p", editor_options=opts, scale=scale, num_timesteps=num_timesteps,
                            regions=list(regions) if regions else None, appearance_only=True,
                            views_per_iter=views_per_iter, iters_per_batch=iters_per_batch, seed=seed, device=device)
    session = EditSession(bundle, settings, progress=progress)
    session.run(out_dir)
    return session, json.loads((Path(out_dir) / "edit.json").read_text())


def edited_image_metrics(session, bundle, gt_g, regions, cache: dict | None = None) -> dict:
    """The edited 2D images (before the refit) against ground truth and against each other.
    ``cache``: renders that do not depend on the variant, kept across variants."""
    rgb, edited, _ = session._edit_images
    cams, ts, _ = session.edit_set()   # scaled as the session rendered them
    C = len(cams)
    edited = edited.float().cpu()
    cache = {} if cache is None else cache
    if "edit_views" not in cache:
        cache["edit_views"] = (
            _render(bundle, gt_g, bundle.params, ts, cams).cpu(),
            region_weight(bundle, bundle.gaussians, bundle.params, ts, cams, regions).cpu(),
            region_weight(bundle, bundle.gaussians, bundle.params, ts, cams, EXPRESSION_REGIONS).cpu())
    gt, w, we = cache["edit_views"]
    ins, expr = (w >= INSIDE).float(), (we >= INSIDE).float()

    def spread(images) -> float:
        """Mean over timesteps of the per-channel std across views of the region's mean colour,
        relative to that mean (0.05 = 5 %)."""
        col = region_colour(images, w).reshape(len(ts), C, 3)
        return float((col.std(1) / col.mean(1).clamp_min(1e-3)).mean())

    return {
        "psnr_edited_vs_ground_truth": finite(psnr(edited, gt)),
        "psnr_edited_inside_region_vs_ground_truth": finite(psnr(edited, gt, ins)),
        "colour_spread_across_views": round(spread(edited), 4),
        "colour_spread_across_views_ground_truth": round(spread(gt), 4),
        "psnr_edited_vs_refit_render": session.metrics.get("edit_view_psnr"),
        "psnr_expression_edited_vs_ground_truth": finite(psnr(edited, gt, expr)),
    }


def evaluate_settings(bundle, refit_g, gt_g, regions, settings_eval: dict, cam, progress=None, cache: dict | None = None):
    """PSNR/SSIM of ``refit_g`` against ``gt_g`` in each setting (whole, inside, outside the region),
    and inside the eye/mouth masks (expression). Returns (results, images per setting).
    ``cache``: the renders that do not depend on ``refit_g``, kept across calls."""
    results, imgs = {}, {}
    cache = {} if cache is None else cache
    for k, (key, (title, params, ts)) in enumerate(settings_eval.items()):
        if key not in cache:
            cache[key] = (_render(bundle, bundle.gaussians, params, ts, cam), _render(bundle, gt_g, params, ts, cam),
                          region_weight(bundle, bundle.gaussians, params, ts, cam, regions),
                          region_weight(bundle, bundle.gaussians, params, ts, cam, EXPRESSION_REGIONS))
        o, g, w, we = cache[key]
        e = _render(bundle, refit_g, params, ts, cam)
        results[key] = {"title": title, "camera": int(cam[0].index), "frames": len(ts), "timesteps": list(ts),
                        **region_scores(o, e, g, w),
                        "psnr_expression_vs_ground_truth": finite(psnr(e, g, (we >= INSIDE).float()))}
        imgs[key] = (o, e, g)
        if progress:
            progress("evaluate", k + 1, len(settings_eval))
    return results, imgs


# A claim is confirmed only by a change larger than these (smaller ones are within what a different
# seed or key-view draw moves): the colour spread must drop by 5 % of itself, a PSNR rise by 0.1 dB.
SPREAD_MARGIN = 0.05
PSNR_MARGIN = 0.1
_WORDS = {"agrees": "{}", "none": "does not measurably change", "disagrees": "worsens (does not {})"}


def _verdict(gain: float, margin: float) -> str:
    return "agrees" if gain >= margin else ("disagrees" if gain <= -margin else "none")


def summarise(rows: dict) -> dict:
    """Plain answers to the seed's claims from the variants' numbers (``rows``: variant -> metrics)."""
    out = {}

    def get(v, *path):
        x = rows.get(v)
        for p in path:
            if x is None:
                return None
            x = x.get(p)
        return None if x is None else float(x)

    a, b = get("per_view", "edited", "colour_spread_across_views"), get("multiview", "edited", "colour_spread_across_views")
    if a is not None and b is not None:
        v = _verdict(a - b, SPREAD_MARGIN * a)
        out["multiview_consistency"] = {
            "claim": SEED_CLAIMS["multiview"], "per_view_spread": a, "multiview_spread": b,
            "agrees": v == "agrees", "verdict": v,
            "finding": (f"multi-view editing {_WORDS[v].format('lower' if v != 'agrees' else 'lowers')} the colour spread across views ({a:.3f} -> {b:.3f}; "
                        f"a change under {100 * SPREAD_MARGIN:.0f} % counts as none)")}
    a = get("multiview", "edited", "psnr_expression_edited_vs_ground_truth")
    b = get("multiview_inpaint", "edited", "psnr_expression_edited_vs_ground_truth")
    if a is not None and b is not None:
        v = _verdict(b - a, PSNR_MARGIN)
        out["inpainting_expressions"] = {
            "claim": SEED_CLAIMS["inpaint"], "without_inpainting_db": a, "with_inpainting_db": b,
            "agrees": v == "agrees", "verdict": v,
            "finding": (f"inpainting {_WORDS[v].format('raise' if v != 'agrees' else 'raises')} PSNR inside the eye/mouth masks ({a:.2f} -> {b:.2f} dB; "
                        f"a change under {PSNR_MARGIN} dB counts as none)")}
    return out


def run_ablation(bundle, prompt: str, work: Path, settings_eval: dict, cam, *, variants=tuple(VARIANTS),
                 model: str = "builtin", device: str = "cpu", scale: float = 0.2, num_timesteps: int = 4,
                 regions=None, views_per_iter=None, ip2p: dict | None = None, seed: int = 0,
                 progress: Callable | None = None, log: Callable[[str], None] = print,
                 keep: dict | None = None, iters_per_batch: int | None = None) -> dict:
    """Edit with each variant into ``work/<variant>`` and measure it; ``keep`` receives the main
    variant's (session, record, images). Returns {variant: metrics} plus a 'summary'."""
    maps, gt_g, gt_regions = ground_truth(bundle, prompt, scale)
    rows = {}
    cache: dict = {}   # renders shared by all variants (original, ground truth, region weights)
    for v in variants:
        t0 = time.perf_counter()
        session, record = edit_variant(bundle, prompt, v, Path(work) / v, model=model, device=device, scale=scale,
                                       num_timesteps=num_timesteps, regions=regions or gt_regions,
                                       views_per_iter=views_per_iter, ip2p=ip2p, seed=seed, progress=progress,
                                       iters_per_batch=iters_per_batch)
        refit_g = session.result.to(bundle.gaussians.device)
        results, imgs = evaluate_settings(bundle, refit_g, gt_g, gt_regions, settings_eval, cam, cache=cache)
        rows[v] = {"title": TITLES[v], "options": VARIANTS[v], "settings": results,
                   "edited": edited_image_metrics(session, bundle, gt_g, gt_regions, cache),
                   "timings_s": record["timings_s"], "seconds": round(time.perf_counter() - t0, 2)}
        log(f"[ablation] {v}: " + ", ".join(f"{k} {r['psnr_vs_ground_truth']:.2f}/{r['psnr_inside_region_vs_ground_truth']:.2f} dB"
                                            for k, r in results.items())
            + f"; 2D spread {rows[v]['edited']['colour_spread_across_views']:.3f} ({rows[v]['seconds']:.0f} s)")
        if keep is not None and v == MAIN:
            keep.update(session=session, record=record, images=imgs, results=results, gt=gt_g, maps=maps,
                        regions=gt_regions)
    return {"variants": rows, "summary": summarise(rows), "ground_truth_maps": [m.to_json() for m in maps]}
