"""The built-in editor: its training data, its training command and the shipped model (issue: a trained editor)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edit3dgs.builtin import TRAIN_SEQUENCES
from edit3dgs.cameras import HELD_OUT_CAMERA
from edit3dgs.edit.ip2p import BUILTIN_MODEL_DIR
from edit3dgs.editor_data import (HELD_OUT_COMBOS, MIN_ANGLE_TO_HELD_OUT, angle_to_held_out, edit_key,
                                  instruction_vocabulary, jittered_camera)

SHIPPED_MANIFEST = BUILTIN_MODEL_DIR / "training_manifest.json"


def check_manifest(m: dict) -> None:
    """What the manifest says went into training leaves out camera 8, the evaluation's motion and
    the held-out colour-region combinations."""
    cams = m["cameras"]
    assert cams["held_out_camera"] == HELD_OUT_CAMERA
    assert HELD_OUT_CAMERA not in cams["rig_indices"]
    assert str(HELD_OUT_CAMERA) not in cams["rig_draws"] and sum(cams["rig_draws"].values()) > 0
    jit = cams["jittered"]
    if jit["count"]:
        assert jit["min_angle_to_held_out_deg_drawn"] >= MIN_ANGLE_TO_HELD_OUT
    assert set(m["sequences"]["kinds"]) <= set(TRAIN_SEQUENCES)
    assert {"held_out", "other_identity"} & set(m["sequences"]["kinds"]) == set()
    for ident in m["identities"]:
        assert set(ident["sequences"]) <= set(TRAIN_SEQUENCES), ident["name"]
    held = {f"{r}:{c}" for r, c in HELD_OUT_COMBOS}
    assert held == set(m["instructions"]["held_out_combinations"])
    drawn = m["instructions"]["edit_keys"]
    assert drawn and not held & set(drawn)
    # Every phrasing drawn, parsed as the region editor parses it, is a trained combination.
    for text in m["instructions"]["phrasings"]:
        assert edit_key(text) not in held, text


def test_shipped_model_manifest_leaves_out_held_out_data():
    assert SHIPPED_MANIFEST.is_file(), "the shipped built-in model has no training manifest"
    m = json.loads(SHIPPED_MANIFEST.read_text())
    check_manifest(m)
    assert m["draws"]["pairs"] > 10000 and len(m["identities"]) >= 10


def test_vocabulary_phrasings_parse_to_their_edit():
    for held in (False, True):
        for key, phrasings in instruction_vocabulary(held).items():
            for p in phrasings:
                assert edit_key(p) == key, (p, key)
    train = instruction_vocabulary()
    assert not {f"{r}:{c}" for r, c in HELD_OUT_COMBOS} & set(train)
    # each held-out colour is trained on some other region
    for r, c in HELD_OUT_COMBOS:
        assert any(k.endswith(":" + c) and not k.startswith(r + ":") for k in train), (r, c)


def test_jittered_cameras_keep_away_from_camera_8():
    import random

    rng = random.Random(0)
    angles = [angle_to_held_out(jittered_camera(rng, 1000 + i, 0.2)) for i in range(300)]
    assert min(angles) >= MIN_ANGLE_TO_HELD_OUT
    assert min(angles) < MIN_ANGLE_TO_HELD_OUT + 5   # they do come near: the rule is what keeps them out


def test_conditioning_dropout_has_the_instruct_pix2pix_proportions():
    from edit3dgs.edit.train import conditioning_dropout_masks

    n = 200_000
    text, image = conditioning_dropout_masks(n, 0.05, torch.Generator().manual_seed(0))
    frac = lambda x: float(x.float().mean())  # noqa: E731
    assert frac(text & ~image) == pytest.approx(0.05, abs=0.003)   # text only
    assert frac(text & image) == pytest.approx(0.05, abs=0.003)    # both
    assert frac(~text & image) == pytest.approx(0.05, abs=0.003)   # image only
    assert frac(~text & ~image) == pytest.approx(0.85, abs=0.004)


def test_exact_edit_targets_equal_rendering_the_recoloured_avatar(tiny_identities):
    """The data's targets (SH rows recoloured after posing) are the ground truth the demo renders."""
    from edit3dgs.editor_data import EditorDataset, ground_truth_gaussians, train_rig

    ident = tiny_identities[0]
    ds = EditorDataset([ident], size=(64, 48))
    verts = ident.bundle.pose(ident.params, [3])[0]
    cams = train_rig()[:2]
    for text in ("make the hair blue", "make him look older", "give her red lips"):
        g = ground_truth_gaussians(ident.bundle, ident.bundle.gaussians, text, ident.references)
        direct = ds._render(ident.bundle, g, verts, cams)
        b = ds.batch(1, 2, 1)
        assert b["edited"].shape == b["original"].shape == (2, 64, 48, 3)
        from edit3dgs.edit.region import instruction_maps, recolour_sh

        wg = ident.bundle.world(verts)
        sh = wg.sh
        for cm in instruction_maps(text, ident.references):
            sh = recolour_sh(sh, ident.mask(cm.region), cm)
        assert torch.allclose(ds._raster(wg, sh, cams), direct, atol=1e-6), text
        assert float((direct - ds._render(ident.bundle, ident.bundle.gaussians, verts, cams)).abs().amax()) > 0.1


def test_training_a_tiny_model_writes_a_folder_the_editor_loads(tmp_path):
    """A few steps of the tiny configuration: the folder loads through ``load_ip2p`` (the user-facing
    loader) and edits an image at its native size; manifest, loss log, curve and model card are there."""
    from edit3dgs.edit.ip2p import IP2PSettings, clear_cache, edit_images, load_ip2p
    from edit3dgs.edit.train import VAE_PROBE_EDITS, TrainConfig, train_editor
    from edit3dgs.errors import Edit3DGSError

    out = tmp_path / "model"
    cfg = TrainConfig(out=str(out), steps=3, vae_steps=2, arch="tiny", groups=1, views=2, edits=2, bank=2,
                      random_identities=0, frames=6, size=(32, 24), device="cpu", samples=False, log_every=1,
                      checkpoint_every=2, warmup=1, reference_views=3)
    train_editor(cfg, log=lambda s: None)
    for f in ("model_index.json", "edit3dgs_model.json", "README.md", "training_manifest.json", "loss_log.csv",
              "loss_curve.png", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        assert (out / f).is_file(), f
    m = json.loads((out / "training_manifest.json").read_text())
    check_manifest(m)
    assert m["steps_done"] == 3
    log = (out / "loss_log.csv").read_text().splitlines()
    assert log[0] == "phase,step,loss,lr,seconds" and any(ln.startswith("unet,3,") for ln in log)
    card = (out / "README.md").read_text()
    assert "Held out" in card and "built-in head" in card
    clear_cache()
    models = load_ip2p(str(out), device="cpu")
    assert models.unet.config.in_channels == 8 and models.resolution == 24
    img = torch.rand(1, 40, 30, 3)
    res = edit_images(models, img, "make the hair blue", IP2PSettings(steps=2, multiview=False, inpaint=False))
    assert res.images.shape == img.shape and torch.isfinite(res.images).all()
    clear_cache()
    # The same folder again: refused unless resumed.
    with pytest.raises(Edit3DGSError, match="--resume"):
        train_editor(cfg, log=lambda s: None)
    # Resuming with another objective or learning rate is refused; more steps are allowed.
    import dataclasses

    with pytest.raises(Edit3DGSError, match="--lr 0.0006 .now 0.001."):
        train_editor(dataclasses.replace(cfg, lr=1e-3, steps=4), resume=True, log=lambda s: None)
    cfg.steps = 4
    train_editor(cfg, resume=True, log=lambda s: None)
    m2 = json.loads((out / "training_manifest.json").read_text())
    assert m2["steps_done"] == 4
    # The resumed run trains on the bank it began with, and the manifest counts it once.
    assert m2["draws"] == m["draws"] and m2["instructions"]["phrasings"] == m["instructions"]["phrasings"]
    assert set(m["state"]["vae_psnr_held_out_edits"]) == set(VAE_PROBE_EDITS)
    # The saved scheduler says what the UNet predicts; a model is continued only as what it is.
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == cfg.prediction == "v_prediction"
    assert "_name_or_path" not in json.loads((out / "vae" / "config.json").read_text())
    with pytest.raises(Edit3DGSError, match="prediction_type 'v_prediction'"):
        train_editor(dataclasses.replace(cfg, out=str(tmp_path / "more"), init_model=str(out), prediction="epsilon"),
                     log=lambda s: None)
    more = train_editor(dataclasses.replace(cfg, out=str(tmp_path / "more"), init_model=str(out), steps=1),
                        log=lambda s: None)
    assert json.loads((more / "training_manifest.json").read_text())["state"]["vae_from"]["steps"] == cfg.vae_steps


@pytest.mark.parametrize("prompt, gain", [("make the hair blue", 8.0), ("blue lips", 4.0)])
def test_builtin_model_loads_offline_on_cpu_keeps_the_head_and_edits_colours(tiny_identities, prompt, gain):
    """``--model builtin``: the shipped weights load offline on CPU (fp32) at their native size, keep
    the head outside the edit and move a colour edit toward its exact ground truth inside the edited
    region, on the held-out camera ("blue lips" is a held-out combination: never trained on)."""
    from edit3dgs.cameras import camera_rig
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images, load_ip2p
    from edit3dgs.edit.train import sample_scores
    from edit3dgs.editor_data import EditorDataset, ground_truth_gaussians

    models = load_ip2p("builtin", device="cpu")
    assert models.dtype == torch.float32 and models.resolution == 112 and models.unet.config.in_channels == 8
    assert models.scheduler.config.prediction_type == "v_prediction"
    ident = tiny_identities[0]
    ds = EditorDataset([ident])
    cam = [c.scaled(0.2) for c in camera_rig() if c.index == HELD_OUT_CAMERA]
    verts = ident.bundle.pose(ident.params, [2])[0]
    img = ds._render(ident.bundle, ident.bundle.gaussians, verts, cam)
    gt = ds._render(ident.bundle, ground_truth_gaussians(ident.bundle, ident.bundle.gaussians, prompt, ident.references),
                    verts, cam)
    out = edit_images(models, img, prompt, IP2PSettings(steps=20, seed=1, multiview=False, inpaint=False)).images
    assert out.shape == img.shape
    s = sample_scores(img, out, gt)
    assert s["psnr_outside_vs_original"] > 30, s                              # the head comes back ...
    assert s["psnr_inside_vs_gt"] > s["unedited_inside_vs_gt"] + gain, s       # ... recoloured where it should be


def test_vae_loss_weighs_the_pixels_an_edit_changed():
    """The VAE learns edited colours, not only the colours it sees most: a pixel the exact edit
    changed weighs ``1 + edit_weight``; unchanged pixels and the originals weigh 1."""
    from edit3dgs.edit.train import vae_pixel_weights

    orig = torch.full((2, 8, 6, 3), 0.5)
    edited = orig.clone()
    edited[1, 2:4, 1:3, 2] = 0.9                              # a blue patch on image 1
    edited[1, 0, 0] = 0.51                                    # below the threshold: not an edit
    w = vae_pixel_weights(torch.cat([orig[:1], orig[1:]]), torch.cat([orig[:1], edited[1:]]), 4.0)
    assert w.shape == (2, 1, 8, 6)
    assert (w[0] == 1).all()
    assert (w[1, 0, 2:4, 1:3] == 5).all() and w[1].sum() == 8 * 6 + 4 * 4
    assert (vae_pixel_weights(orig, edited, 0.0) == 1).all()


def test_loss_weights_favour_the_edit_and_the_noisy_steps():
    """Min-SNR-gamma and the edit-region weight (what makes a model trained from scratch learn the
    edit rather than the copy): an error inside the edit costs ``1 + edit_weight`` times one outside;
    for v-prediction the weight is min(SNR, gamma) / (SNR + 1), for epsilon min(SNR, gamma) / SNR."""
    from edit3dgs.edit.train import edit_mask, weighted_loss

    orig = torch.zeros(2, 16, 12, 3)
    edited = orig.clone()
    edited[0, :4, :4] = 0.5                                   # top-left patch of image 0 changed
    m = edit_mask(orig, edited, (4, 3))
    assert m.shape == (2, 1, 4, 3) and m[0, 0, 0, 0] == 1 and m.sum() == 1
    target = torch.zeros(2, 4, 4, 3)
    err_in, err_out = target.clone(), target.clone()
    err_in[0, :, 0, 0] = 1
    err_out[0, :, 3, 2] = 1
    ab = torch.tensor([0.5, 0.5])                             # SNR 1 for both samples
    li = weighted_loss(err_in, target, ab, m, None, 4.0)
    lo = weighted_loss(err_out, target, ab, m, None, 4.0)
    assert torch.isclose(li, 5 * lo)
    assert torch.isclose(weighted_loss(err_in, target, ab, m, None, 0.0), lo)
    err = torch.ones(2, 4, 4, 3)
    for a_bar in (0.999, 0.5, 0.01):
        ab = torch.full((2,), a_bar)
        snr = a_bar / (1 - a_bar)
        v = weighted_loss(err, target, ab, m * 0, 5.0, 0.0, "v_prediction")
        e = weighted_loss(err, target, ab, m * 0, 5.0, 0.0, "epsilon")
        assert torch.isclose(v, torch.tensor(min(snr, 5.0) / (snr + 1)), rtol=1e-3)
        assert torch.isclose(e, torch.tensor(min(snr, 5.0) / snr), rtol=1e-3)


def test_model_card_command_reproduces_the_configuration():
    """The card's command line parses back (through the real CLI parser) to the same configuration."""
    import shlex

    from edit3dgs.cli import build_parser
    from edit3dgs.edit.train import TrainConfig, reproduce_command

    cfg = TrainConfig(out="", minutes=5.4, random_identities=12, edit_weight=2.5, snr_gamma=None, init_vae="FIRST",
                      prediction="epsilon", lr=1e-3, groups=8)
    a = build_parser().parse_args(shlex.split(reproduce_command(cfg))[1:])
    assert (a.minutes, a.random_identities, a.edit_weight, a.snr_gamma, a.init_vae, a.prediction, a.lr, a.groups) == \
        (5.4, 12, 2.5, 0.0, "FIRST", "epsilon", 1e-3, 8)
    assert a.steps == cfg.steps and a.vae_steps == cfg.vae_steps and a.out == "DIR"


def test_sample_scores_stay_json_when_an_edit_changes_nothing():
    from edit3dgs.edit.train import sample_scores

    img = torch.rand(1, 8, 6, 3)
    s = sample_scores(img, img, img)
    json.dumps(s, allow_nan=False)
    assert s["psnr_inside_vs_gt"] == "nan" and s["psnr_vs_gt"] == "inf"


def test_train_editor_refuses_a_folder_it_cannot_continue_from(tmp_path):
    from edit3dgs.edit.train import TrainConfig, train_editor
    from edit3dgs.errors import Edit3DGSError

    (tmp_path / "src" / "vae").mkdir(parents=True)
    for kw, what in (({"init_vae": str(tmp_path / "src")}, "vae"), ({"init_model": str(tmp_path / "src")}, "unet"),
                     ({"prediction": "sample"}, "--prediction")):
        with pytest.raises(Edit3DGSError, match=what):
            train_editor(TrainConfig(out=str(tmp_path / "m"), arch="tiny", device="cpu", **kw), log=lambda s: None)
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def tiny_identities(tmp_path_factory):
    from edit3dgs import headmodel
    from edit3dgs.editor_data import make_identities
    from edit3dgs.flame import FlameHead, load_flame_model

    d = tmp_path_factory.mktemp("head")
    head = FlameHead(load_flame_model(*headmodel.write_head_model(d, seed=0)))
    return make_identities(head, n_random=0, frames=6, gaussians_per_face=(1,), sh_degree=(1,), reference_views=4,
                           reference_scale=0.1)


def test_ip2p_demo_runs_the_ablation_and_reports_it(tmp_path):
    """``edit3dgs demo --editor ip2p``: the paper's method as the main edit and the three other variants,
    each measured against ground truth; metrics.json and report.html carry the same numbers."""
    from tiny_models import build_tiny_ip2p

    from edit3dgs import ablation
    from edit3dgs.demo import DemoConfig, run_demo

    model = build_tiny_ip2p(tmp_path / "ip2p")
    cfg = DemoConfig(editor="ip2p", ablation=True, model=str(model), ip2p={"steps": 2, "resolution": 32}, ip2p_num_timesteps=2,
                     frames=6, eval_frames=2, orbit_frames=2, grid_frames=2, device="cpu", iters_per_batch=2,
                     edit_scale=0.08, eval_scale=0.08)
    out = tmp_path / "demo"
    m = run_demo(out, cfg, log=lambda s: None)
    abl = m["ablation"]
    assert list(abl["variants"]) == list(ablation.VARIANTS) and m["variant"] == ablation.MAIN
    assert m["regions"] == ["hair"] and m["editor"] == "ip2p"
    html = (out / "report.html").read_text()
    assert "The paper's ablation" in html
    for v, r in abl["variants"].items():
        assert set(r["settings"]) == {"novel_view", "self_reenactment", "cross_identity"}
        assert r["title"] in html
        e = r["edited"]
        assert 0 <= e["colour_spread_across_views"] < 5 and 0 <= e["colour_spread_across_views_ground_truth"] < 1
        assert f"{float(r['settings']['novel_view']['psnr_inside_region_vs_ground_truth']):.2f}" in html
    # the main variant is the demo's own edit: the same numbers in both places
    assert m["settings"] == abl["variants"][ablation.MAIN]["settings"]
    assert {"multiview_consistency", "inpainting_expressions"} <= set(abl["summary"])
    assert json.loads((out / "edited" / "edit.json").read_text())["input"] == str(out / "avatar")
    assert not (out / "ablation_work").exists()
    # the per-view variant really edited every view on its own, the others with multi-view editing
    per_view = json.loads(json.dumps(abl["variants"]["per_view"]["options"]))
    assert per_view == {"multiview": False, "inpaint": False}


def test_ablation_confirms_a_claim_only_beyond_noise():
    """The report says a mechanism helps only when the change exceeds the stated margin (5 % of the
    colour spread, 0.1 dB of expression PSNR); smaller changes are reported as no measurable effect."""
    from edit3dgs.ablation import summarise

    def rows(spread_pv, spread_mv, expr_mv, expr_inp):
        r = lambda s, e: {"edited": {"colour_spread_across_views": s, "psnr_expression_edited_vs_ground_truth": e}}  # noqa: E731
        return {"per_view": r(spread_pv, 0.0), "multiview": r(spread_mv, expr_mv), "multiview_inpaint": r(0.0, expr_inp)}

    s = summarise(rows(0.056, 0.055, 24.14, 24.21))
    assert [c["verdict"] for c in s.values()] == ["none", "none"] and not any(c["agrees"] for c in s.values())
    assert "does not measurably change" in s["multiview_consistency"]["finding"]
    s = summarise(rows(0.129, 0.100, 22.62, 22.92))
    assert [c["verdict"] for c in s.values()] == ["agrees", "agrees"]
    s = summarise(rows(0.100, 0.129, 22.92, 22.62))
    assert [c["verdict"] for c in s.values()] == ["disagrees", "disagrees"] and "worsens" in s["inpainting_expressions"]["finding"]


def test_report_without_the_ablation_says_how_to_get_it():
    """`make demo` runs only the paper's method: the report titles that table as such, points at
    `--ablation`, and shows no empty list of the seed's claims."""
    from edit3dgs.ablation import MAIN, TITLES
    from edit3dgs.report import ablation_section

    st = {k: {"psnr_vs_ground_truth": 48.0, "psnr_inside_region_vs_ground_truth": 33.9,
              "psnr_expression_vs_ground_truth": 64.5} for k in ("novel_view", "self_reenactment", "cross_identity")}
    ed = {"psnr_edited_vs_ground_truth": 30.2, "psnr_edited_vs_refit_render": 30.5, "colour_spread_across_views": 0.128,
          "colour_spread_across_views_ground_truth": 0.119, "psnr_expression_edited_vs_ground_truth": 26.1}
    row = {"title": TITLES[MAIN], "settings": st, "edited": ed, "timings_s": {"edit": 49.1}, "seconds": 105.0}
    one = ablation_section({"ablation": {"variants": {MAIN: row}, "summary": {}}})
    assert "The paper's method, measured" in one and "--ablation" in one and "claims beside the measurements" not in one
    assert "33.90" in one and TITLES[MAIN] in one
    claim = {"claim": "views consistent", "finding": "no change", "agrees": False, "verdict": "none"}
    both = ablation_section({"ablation": {"variants": {MAIN: row, "per_view": {**row, "title": "per-view"}},
                                          "summary": {"multiview_consistency": claim}}})
    assert "The paper's ablation, against ground truth" in both and "edited 2 ways" in both
    assert "The seed's claims beside the measurements" in both and "no measurable effect" in both
