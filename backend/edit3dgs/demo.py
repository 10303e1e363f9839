"""The embedded default: build the built-in avatar, edit it, show the result in the paper's three settings.

    DIR/avatar/   the built-in avatar (identity 0; sequences/held_out.npz, sequences/other_identity.npz)
    DIR/edited/   the edited avatar (edit.json inside)
    DIR/*.png     grids: original / edited / ground truth for novel view, self- and cross-identity reenactment
    DIR/*.gif     animations: original | edited
    DIR/metrics.json, DIR/report.html

Ground truth: the built-in avatar with the edited regions' Gaussians recoloured
directly by the region editor's colour maps (``recolour_gaussians``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .fsutil import atomic_dir

DEFAULT_PROMPT = "make the hair blue"
BARS = {"psnr_vs_ground_truth": 30.0, "psnr_outside_region": 35.0, "psnr_inside_region_vs_ground_truth": 30.0}


@dataclass
class DemoConfig:
    """Sizes chosen so that the whole demo runs in well under 3 minutes on a 2-core CPU."""

    prompt: str = DEFAULT_PROMPT
    frames: int = 24                 # frames per motion sequence
    gaussians_per_face: int = 1
    sh_degree: int = 1
    edit_scale: float = 0.2          # 110 x 160 edit views
    eval_scale: float = 0.25         # 138 x 200 evaluation views
    num_timesteps: int = 6           # edit timesteps spread over the training sequence
    views_per_iter: int | None = 5   # cameras per refit iteration
    iters_per_batch: int | None = None  # refit until converged (10: the seed's 10 x n)
    rounds: int = 1
    eval_frames: int = 12            # evaluated frames per setting
    grid_frames: int = 4
    orbit_frames: int = 16
    seed: int = 0
    device: str = "auto"
    editor_settings: dict = field(default_factory=dict)
    # "ip2p": the paper's method (multi-view batch editing + inpainting + refit) with the
    # Instruct-Pix2Pix editor trained on the built-in head (--model builtin); "region": colour
    # maps on named regions, no weights, edits consistent by construction.
    editor: str = "ip2p"
    model: str = "builtin"
    ip2p: dict = field(default_factory=lambda: {"steps": 20})
    ip2p_num_timesteps: int = 4      # edit timesteps of the ip2p edit (x 15 cameras)
    ablation: bool = False           # also the other three variants of the ablation (edit3dgs.ablation);
                                     # four edits instead of one: about 4x the demo's time


def _frames(n_total: int, n: int, avoid: set | None = None) -> list[int]:
    """n frames spread over [0, n_total), shifted off ``avoid`` where possible."""
    cand = [int(round(x)) for x in np.linspace(0, n_total - 1, n)]
    out = []
    for t in cand:
        for d in (0, 1, -1, 2, -2, 3, -3):
            u = t + d
            if 0 <= u < n_total and (avoid is None or u not in avoid) and u not in out:
                out.append(u)
                break
    return sorted(out)


def _render(bundle, gaussians, params, ts, cams, colors=None, bg=(1.0, 1.0, 1.0)):
    """(len(ts)*len(cams),H,W,3) renders, timestep-major."""
    from .render_avatar import render_frames

    verts = bundle.pose(params, ts)
    with torch.no_grad():
        out = [r.rgb for r in render_frames(bundle, verts, cams, bg, gaussians=gaussians, colors=colors)]
    return torch.cat(out)


def region_weight(bundle, gaussians, params, ts, cams, regions) -> torch.Tensor:
    """(B,H,W) share of each pixel's opacity that belongs to ``regions`` (timestep-major)."""
    from .masks import render_region_masks

    return render_region_masks(bundle, bundle.pose(params, ts), cams, {"regions": list(regions)}, gaussians)["regions"]


def run_demo(out: Path | str = "demo_out", config: DemoConfig | None = None, overwrite: bool = False,
             progress: Callable[[str, int, int], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Build, edit, evaluate, report. Returns the metrics dict (also in DIR/metrics.json)."""
    from .builtin import make_avatar
    from .bundle import open_avatar
    from .cameras import load_cameras, orbit
    from .edit.region import ColourMap, recolour_gaussians
    from .loop import EditSession, EditSettings
    from .metrics import region_scores
    from .report import grid, label_rows, save_animation, save_image, write_report
    from .device import pick_device

    cfg = config or DemoConfig()
    out = Path(out)
    prog = progress or (lambda s, d, n: None)
    timings: dict = {}
    t_all = time.perf_counter()
    dev = pick_device(cfg.device)

    def stage(name, t0):
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"[demo] {name}: {timings[name]:.1f} s")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        # 1. the built-in avatar
        t0 = time.perf_counter()
        make_avatar(tmp / "avatar", identity=0, frames=cfg.frames, gaussians_per_face=cfg.gaussians_per_face,
                    sh_degree=cfg.sh_degree, seed=cfg.seed)
        bundle = open_avatar(tmp / "avatar", device=dev)
        stage("build avatar", t0)

        if cfg.editor == "ip2p":
            metrics = _ip2p_demo(cfg, bundle, tmp, out, dev, prog, log, stage, timings, t_all)
            log(f"[demo] total: {time.perf_counter() - t_all:.1f} s")
            return metrics
        # 2. the edit (render -> edit -> refit)
        t0 = time.perf_counter()
        settings = EditSettings(prompt=cfg.prompt, editor="region", editor_options=dict(cfg.editor_settings),
                                scale=cfg.edit_scale, num_timesteps=cfg.num_timesteps, views_per_iter=cfg.views_per_iter,
                                iters_per_batch=cfg.iters_per_batch, rounds=cfg.rounds, seed=cfg.seed, device=str(dev))
        session = EditSession(bundle, settings, progress=prog)
        session.run(tmp / "edited")
        edit_record = json.loads((tmp / "edited" / "edit.json").read_text())
        stage("edit (render, edit, refit)", t0)
        for k, v in edit_record["timings_s"].items():
            if k != "total":
                log(f"[demo]   edit/{k}: {v:.1f} s")

        # 3. evaluation in the three settings
        t0 = time.perf_counter()
        refit_g = session.result.to(dev)
        orig_g = bundle.gaussians
        maps = [ColourMap.from_json(d) for d in edit_record["colour_maps"]]
        regions = sorted({m.region for m in maps})
        gt_g = orig_g
        for m in maps:
            gt_g = recolour_gaussians(gt_g, bundle.gaussian_mask([m.region]), m)
        held = int(bundle.meta.get("held_out_camera", 8))
        all_cams = load_cameras(bundle.folder / bundle.meta["cameras"])
        cam = [c.scaled(cfg.eval_scale) for c in all_cams if c.index == held]
        settings_eval = _settings_eval(bundle, cfg, set(edit_record["edit_set"]["timesteps"]))
        results, sections, imgs = {}, [], {}
        n_eval = len(settings_eval)
        for k, (key, (title, params, ts)) in enumerate(settings_eval.items()):
            o = _render(bundle, orig_g, params, ts, cam)
            e = _render(bundle, refit_g, params, ts, cam)
            g = _render(bundle, gt_g, params, ts, cam)
            w = region_weight(bundle, orig_g, params, ts, cam, regions)
            results[key] = {"title": title, "camera": held, "frames": len(ts), "timesteps": ts,
                            **region_scores(o, e, g, w)}  # whole image, inside and outside the edited region
            imgs[key] = (o, e, g)
            prog("evaluate", k + 1, n_eval)
        stage("evaluate", t0)

        # 4. figures and the report
        t0 = time.perf_counter()
        for key, (title, params, ts) in settings_eval.items():
            o, e, g = (x.cpu().numpy() for x in imgs[key])
            pick = np.linspace(0, len(ts) - 1, min(cfg.grid_frames, len(ts))).round().astype(int)
            save_image(tmp / f"{key}_grid.png", label_rows(grid([[o[i] for i in pick], [e[i] for i in pick], [g[i] for i in pick]]),
                                                           ["original", "edited", "ground truth"]))
            # Animation over the whole sequence (every frame), original | edited.
            full_ts = list(range(params.num_timesteps))
            if key == "novel_view":
                # The novel-view animation sweeps the camera around the head at one unseen timestep.
                path = orbit(cfg.orbit_frames, all_cams[0].width, all_cams[0].height)
                path = [c.scaled(cfg.eval_scale) for c in path]
                t_fix = [ts[len(ts) // 2]]
                oa = _render(bundle, orig_g, params, t_fix, path).cpu().numpy()
                ea = _render(bundle, refit_g, params, t_fix, path).cpu().numpy()
            else:
                oa = _render(bundle, orig_g, params, full_ts, cam).cpu().numpy()
                ea = _render(bundle, refit_g, params, full_ts, cam).cpu().numpy()
            frames = [grid([[a, b]]) for a, b in zip(oa, ea)]
            save_animation(tmp / f"{key}.gif", frames, fps=12)
            sections.append({"title": title, "key": key, "grid": f"{key}_grid.png", "animation": f"{key}.gif",
                             "caption": (f"camera {held}, timesteps {ts}" if key == "novel_view"
                                         else f"camera {held}, {len(ts)} of {params.num_timesteps} frames")})
        stage("figures", t0)
        timings["total"] = round(time.perf_counter() - t_all, 2)
        metrics = {
            "prompt": cfg.prompt, "editor": edit_record["editor"], "regions": regions,
            "colour_maps": edit_record["colour_maps"], "held_out_camera": held,
            "avatar": {"num_gaussians": bundle.gaussians.num_gaussians, "sh_degree": bundle.gaussians.sh_degree,
                       "frames_per_sequence": cfg.frames},
            "edit_set": edit_record["edit_set"], "edit": edit_record["metrics"],
            "settings": results, "bars": BARS,
            "passes": all(float(r[k]) >= bar for r in results.values() for k, bar in BARS.items()),
            "timings_s": {**timings, **{f"edit/{k}": v for k, v in edit_record["timings_s"].items() if k != "total"}},
            "config": cfg.__dict__,
        }
        t0 = time.perf_counter()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        write_report(tmp / "report.html", metrics, sections)
        # The edited avatar records where it came from: the final folder, not the temporary one.
        for f in (tmp / "edited" / "edit.json", tmp / "edited" / "avatar.json"):
            f.write_text(f.read_text().replace(str(tmp), str(out)))
        stage("report", t0)
    log(f"[demo] total: {time.perf_counter() - t_all:.1f} s")
    return metrics


def _settings_eval(bundle, cfg: DemoConfig, edit_ts: set) -> dict:
    """The paper's three settings: title, motion, evaluated timesteps."""
    from .flame_params import FlameParams

    T = bundle.params.num_timesteps
    held_seq = FlameParams.load(bundle.folder / bundle.meta["held_out_sequence"]).with_identity(bundle.params)
    cross_seq = FlameParams.load(bundle.folder / bundle.meta["cross_identity_sequence"]).with_identity(bundle.params)
    return {
        "novel_view": ("Novel view (held-out camera, unseen timesteps)", bundle.params, _frames(T, cfg.eval_frames, edit_ts)),
        "self_reenactment": ("Self-reenactment (held-out sequence)", held_seq, _frames(held_seq.num_timesteps, cfg.eval_frames)),
        "cross_identity": ("Cross-identity reenactment (the other identity's motion)", cross_seq,
                           _frames(cross_seq.num_timesteps, cfg.eval_frames)),
    }


def _ip2p_demo(cfg: DemoConfig, bundle, tmp: Path, out: Path, dev, prog, log, stage, timings, t_all) -> dict:
    """The demo with the Instruct-Pix2Pix editor: the paper's method as the main edit, the ablation
    beside it, all against the exact ground truth (``edit3dgs.ablation``)."""
    import shutil

    from . import ablation
    from .cameras import load_cameras, orbit
    from .edit.region import RegionEditor
    from .loop import default_timesteps
    from .report import grid, label_rows, save_animation, save_image, write_report

    regions = RegionEditor().regions_for(cfg.prompt)  # the demo needs a prompt with an exact ground truth
    held = int(bundle.meta.get("held_out_camera", 8))
    all_cams = load_cameras(bundle.folder / bundle.meta["cameras"])
    cam = [c.scaled(cfg.eval_scale) for c in all_cams if c.index == held]
    edit_ts = set(default_timesteps(bundle.params.num_timesteps, cfg.ip2p_num_timesteps))
    settings_eval = _settings_eval(bundle, cfg, edit_ts)

    # 2. the edits: the paper's method (multi-view + inpainting) and, with ``ablation``, the others.
    t0 = time.perf_counter()
    variants = list(ablation.VARIANTS) if cfg.ablation else [ablation.MAIN]
    keep: dict = {}
    work = tmp / "ablation_work"
    abl = ablation.run_ablation(bundle, cfg.prompt, work, settings_eval, cam, variants=variants, model=cfg.model,
                                device=str(dev), scale=cfg.edit_scale, num_timesteps=cfg.ip2p_num_timesteps,
                                regions=regions, views_per_iter=cfg.views_per_iter,
                                ip2p={**cfg.ip2p, **cfg.editor_settings}, seed=cfg.seed, progress=prog, log=log, keep=keep,
                                iters_per_batch=cfg.iters_per_batch)
    (work / ablation.MAIN).rename(tmp / "edited")
    shutil.rmtree(work)
    stage("edit and ablation (render, edit, refit, evaluate)", t0)
    session, record, results, imgs = keep["session"], keep["record"], keep["results"], keep["images"]
    refit_g = session.result.to(dev)
    for k, v in record["timings_s"].items():
        if k != "total":
            log(f"[demo]   edit/{k}: {v:.1f} s")

    # 3. figures and the report
    t0 = time.perf_counter()
    sections = []
    orig_g = bundle.gaussians
    for key, (title, params, ts) in settings_eval.items():
        o, e, g = (x.cpu().numpy() for x in imgs[key])
        pick = np.linspace(0, len(ts) - 1, min(cfg.grid_frames, len(ts))).round().astype(int)
        save_image(tmp / f"{key}_grid.png", label_rows(grid([[o[i] for i in pick], [e[i] for i in pick], [g[i] for i in pick]]),
                                                       ["original", "edited", "ground truth"]))
        if key == "novel_view":
            path = [c.scaled(cfg.eval_scale) for c in orbit(cfg.orbit_frames, all_cams[0].width, all_cams[0].height)]
            t_fix = [ts[len(ts) // 2]]
            oa, ea = (_render(bundle, x, params, t_fix, path).cpu().numpy() for x in (orig_g, refit_g))
        else:
            full_ts = list(range(params.num_timesteps))
            oa, ea = (_render(bundle, x, params, full_ts, cam).cpu().numpy() for x in (orig_g, refit_g))
        save_animation(tmp / f"{key}.gif", [grid([[a, b]]) for a, b in zip(oa, ea)], fps=12)
        sections.append({"title": title, "key": key, "grid": f"{key}_grid.png", "animation": f"{key}.gif",
                         "caption": (f"camera {held}, timesteps {ts}" if key == "novel_view"
                                     else f"camera {held}, {len(ts)} of {params.num_timesteps} frames")})
    # The edited 2D images of one timestep (before the refit), per variant: what multi-view editing changes.
    rgb, edited, _ = session._edit_images
    C = len(record["edit_set"]["cameras"])
    pick = np.linspace(0, C - 1, min(6, C)).round().astype(int)
    save_image(tmp / "edited_views.png", label_rows(grid([[rgb[i].cpu().numpy() for i in pick],
                                                          [edited[i].float().cpu().numpy() for i in pick]]),
                                                    ["render", "edited (2D)"]))
    stage("figures", t0)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    metrics = {
        "prompt": cfg.prompt, "editor": record["editor"], "model": cfg.model, "variant": ablation.MAIN,
        "regions": keep["regions"], "colour_maps": abl["ground_truth_maps"], "held_out_camera": held,
        "avatar": {"num_gaussians": bundle.gaussians.num_gaussians, "sh_degree": bundle.gaussians.sh_degree,
                   "frames_per_sequence": cfg.frames},
        "edit_set": record["edit_set"], "edit": record["metrics"],
        "settings": results, "bars": BARS,
        "passes": all(float(r[k]) >= bar for r in results.values() for k, bar in BARS.items()),
        "ablation": abl,
        "timings_s": {**timings, **{f"edit/{k}": v for k, v in record["timings_s"].items() if k != "total"}},
        "config": cfg.__dict__,
    }
    t0 = time.perf_counter()
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    write_report(tmp / "report.html", metrics, sections)
    for f in (tmp / "edited" / "edit.json", tmp / "edited" / "avatar.json"):
        f.write_text(f.read_text().replace(str(work / ablation.MAIN), str(out / "edited")).replace(str(tmp), str(out)))
    stage("report", t0)
    return metrics
