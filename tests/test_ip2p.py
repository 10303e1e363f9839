"""Instruct-Pix2Pix editor: loading, multi-view batch editing, inpainting, and the edit loop.

Tiny random components are built in code, saved with save_pretrained and
loaded through ``load_ip2p``, the loader users call (formats.md §3–§5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from edit3dgs.cameras import Camera, look_at  # noqa: E402
from edit3dgs.edit import correspondence as corr  # noqa: E402
from edit3dgs.edit.ip2p import IP2PSettings, edit_images, load_ip2p, plan_groups  # noqa: E402
from edit3dgs.edit.mv_attention import View  # noqa: E402
from edit3dgs.errors import Edit3DGSError  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ip2p_dir(tmp_path_factory):
    from tiny_models import build_tiny_ip2p

    return build_tiny_ip2p(tmp_path_factory.mktemp("models") / "tiny-ip2p")


@pytest.fixture(scope="session")
def models(tiny_ip2p_dir):
    return load_ip2p(str(tiny_ip2p_dir), device="cpu")


def ring_cameras(n: int, size: int = 32, span: float = 40.0, cx: float = 14.0, cy: float = 18.0) -> list[Camera]:
    """n cameras on an arc around the origin, with an off-centre principal point."""
    cams = []
    for i, az in enumerate(np.linspace(-span / 2, span / 2, n)):
        a = math.radians(az)
        eye = np.array([math.sin(a), 0.05 * (i % 2), math.cos(a)])
        cams.append(Camera(i, size, size, 40.0, 42.0, cx, cy, look_at(eye, np.zeros(3))))
    return cams


def unet_input(models, n_views: int, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n_views, 8, size, size, generator=g)
    emb = torch.randn(3 * n_views, 16, 32, generator=g)
    return x, emb


def self_attention_outputs(unet):
    """Forward hooks that record every self-attention layer's output by processor name."""
    outs, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            handles.append(module.register_forward_hook(
                lambda mod, args, out, key=name + ".processor": outs.__setitem__(key, out.detach().clone())))
    return outs, handles


# -- loading ----------------------------------------------------------------------------

def test_loader_caches_and_reports_missing_weights(tiny_ip2p_dir, models, tmp_path):
    assert load_ip2p(str(tiny_ip2p_dir), device="cpu") is models
    assert models.dtype == torch.float32 and models.unet.config.in_channels == 8
    with pytest.raises(Edit3DGSError) as e:
        load_ip2p(str(tmp_path / "nowhere"), device="cpu")
    assert "--model" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Edit3DGSError) as e:
        load_ip2p(str(tmp_path / "empty"), device="cpu")
    assert "download" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Edit3DGSError) as e:   # offline: a hub id that is not in the cache
        load_ip2p("nobody/not-a-cached-model", device="cpu")
    assert "--model" in str(e.value)


# -- multi-view batch editing ---------------------------------------------------------------

@pytest.mark.parametrize("extended", [True, False])
def test_extended_attention_links_key_views(models, extended):
    unet, ctx = models.unet, models.mv
    views = [View(c, 0) for c in ring_cameras(2)]
    x, emb = unet_input(models, 2)
    t = torch.tensor(500)
    ctx.begin(views, (16, 16))
    ctx.extended = extended
    try:
        ctx.set_keys([0, 1], {})
        ctx.mode, ctx.batch = "key", [0, 1]
        with torch.no_grad():
            a = unet(x, t, encoder_hidden_states=emb).sample
            x2 = x.clone()
            x2[0::2] += torch.randn_like(x2[0::2])      # view 0 of every branch (branch-major layout)
            b = unet(x2, t, encoder_hidden_states=emb).sample
    finally:
        ctx.end()
    view1 = [1, 3, 5]
    changed = (a[view1] - b[view1]).abs().max().item()
    if extended:
        assert changed > 1e-4
    else:
        assert changed < 1e-5


def test_injection_copies_key_outputs_at_matches_inside_the_band(models):
    unet, ctx = models.unet, models.mv
    cams = ring_cameras(2)
    views = [View(c, 0) for c in cams]
    t = torch.tensor(500)
    ctx.begin(views, (16, 16))
    ctx.record_matches = True
    outs, handles = self_attention_outputs(unet)
    try:
        ctx.set_keys([0], {1: [(0, 1.0)]})
        with torch.no_grad():
            x, emb = unet_input(models, 1, seed=1)
            ctx.mode, ctx.batch = "key", [0]
            unet(x, t, encoder_hidden_states=emb)
            x, emb = unet_input(models, 1, seed=2)
            ctx.mode, ctx.batch = "inject", [1]
            unet(x, t, encoder_hidden_states=emb)
        checked = 0
        for name, (pos, feat, kout) in ctx.cache.items():
            idx, valid = ctx.matches[(name, 1, 0)]
            assert valid.any()
            mine = outs[name]                            # (3, N, C): the non-key view, 3 branches
            expect = torch.gather(kout[:, pos[0]], 1, idx[..., None].expand(-1, -1, kout.shape[-1]))
            torch.testing.assert_close(mine[:, valid], expect[:, valid], rtol=0, atol=0)
            n = mine.shape[1]
            h, w = corr.token_hw(n, (16, 16))
            dist = corr.epipolar_distance(cams[1], cams[0], h, w)
            d = torch.gather(dist, 1, idx.T)             # (Nq, 3) distances of the matched tokens
            assert (d[valid] <= ctx.band + 1e-6).all()
            checked += 1
        assert checked == len([k for k in unet.attn_processors if k.endswith("attn1.processor")])
    finally:
        for h in handles:
            h.remove()
        ctx.record_matches = False
        ctx.end()


def test_epipolar_geometry_with_known_points():
    cams = ring_cameras(3)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.15, 0.15, (200, 3))
    for qa, ka in [(0, 1), (2, 0), (1, 2)]:
        cq, ck = cams[qa], cams[ka]
        uq, _ = cq.project(pts)
        uk, _ = ck.project(pts)
        Fm = corr.fundamental_matrix(cq, ck)
        lines = np.c_[uq, np.ones(len(uq))] @ Fm.T
        d = np.abs((np.c_[uk, np.ones(len(uk))] * lines).sum(1)) / np.linalg.norm(lines[:, :2], axis=1)
        assert d.max() < 1e-6                           # exact epipolar geometry, principal point included
        inside = (uq >= 0).all(1) & (uq[:, 0] < 32) & (uq[:, 1] < 32) & (uk >= 0).all(1) & (uk[:, 0] < 32) & (uk[:, 1] < 32)
        # The true correspondence of each query token is inside its band (quantised to 16x16 tokens).
        h = w = 16
        tq = (uq[inside] // 2).astype(int)
        tk = (uk[inside] // 2).astype(int)
        cand = corr.epipolar_candidates(cq, ck, h, w, band=1.0)
        assert cand[torch.as_tensor(tq[:, 1] * w + tq[:, 0]), torch.as_tensor(tk[:, 1] * w + tk[:, 0])].float().mean() > 0.97
        # And the matcher never leaves the band, whatever the features.
        idx, valid = corr.match_tokens(torch.randn(h * w, 8), torch.randn(h * w, 8), cand)
        assert cand[torch.arange(h * w)[valid], idx[valid]].all()


def test_binding_correspondences_follow_the_moving_head():
    cam = ring_cameras(1)[0]
    rng = np.random.default_rng(1)
    pts = torch.as_tensor(rng.uniform(-0.1, 0.1, (400, 3)), dtype=torch.float32)
    moved = pts + torch.tensor([0.06, -0.03, 0.0])      # the head moved between the timesteps
    ta = corr.gaussian_tokens(pts, cam, 16, 16)
    tb = corr.gaussian_tokens(moved, cam, 16, 16)
    cand = corr.binding_candidates(ta, tb, 16, 16, dilate=0)
    both = (ta >= 0) & (tb >= 0)
    assert both.sum() > 100 and cand[ta[both], tb[both]].all()
    assert cand.sum(1).float().mean() < 16                # far tighter than any epipolar band


def test_views_are_ordered_by_angle_and_chunked():
    cams = ring_cameras(12)
    order = [5, 0, 11, 3, 8, 1, 10, 2, 9, 4, 7, 6]
    views = [View(cams[i], t) for t in (0, 3) for i in order]
    (g,) = plan_groups(views, chunk_size=5, temporal=True)
    assert [len(c) for c in g.chunks] == [4, 4, 4] and len(g.members) == 24
    flat = [views[i].camera.index for c in g.chunks for i in c]
    assert flat == sorted(flat, reverse=flat[0] > flat[-1]) and all(views[i].timestep == 0 for c in g.chunks for i in c)
    assert len(plan_groups(views, 5, temporal=False)) == 2


def test_multiview_edit_runs_across_timesteps(models):
    cams = ring_cameras(3)
    pts = torch.as_tensor(np.random.default_rng(2).uniform(-0.1, 0.1, (300, 3)), dtype=torch.float32)
    views = [View(c, t, pts + 0.02 * t) for t in (0, 1) for c in cams]
    imgs = torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    s = IP2PSettings(steps=3, resolution=32, chunk_size=2, min_timestep=0, inpaint=False)
    out = edit_images(models, imgs, "make it blue", s, views=views)
    assert out.images.shape == imgs.shape and torch.isfinite(out.images).all()
    assert len(out.key_views) == 3 and all(len(k) == 2 for k in out.key_views)
    per_view = edit_images(models, imgs, "make it blue", IP2PSettings(steps=3, resolution=32, inpaint=False, multiview=False))
    assert not torch.allclose(per_view.images, out.images)


# -- inpainting -----------------------------------------------------------------------------

def test_inpainting_restores_original_latents_inside_the_mask(models):
    imgs = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:16, 10:20] = 1.0
    s = IP2PSettings(steps=4, resolution=32, multiview=False, inpaint=True, inpaint_strength=1.0, inpaint_start=1,
                     inpaint_dilate=1)
    out = edit_images(models, imgs, "make it blue", s, masks=masks)
    inside = out.masks.expand_as(out.latents) > 0.5
    assert 0 < inside.float().mean() < 0.6
    torch.testing.assert_close(out.latents[inside], out.original_latents[inside], rtol=0, atol=1e-6)
    assert (out.latents[~inside] - out.original_latents[~inside]).abs().mean() > 1e-2


# -- in the edit loop ---------------------------------------------------------------------------

def test_edit_command_with_ip2p_writes_an_edited_avatar(builtin_avatar_dir, tiny_ip2p_dir, tmp_path, cli):
    out = tmp_path / "edited"
    code, _, err = cli("edit", "--avatar", builtin_avatar_dir, "--editor", "ip2p", "--model", tiny_ip2p_dir,
                       "--prompt", "make him look older", "--cameras", "7,8", "--timesteps", "0,4", "--scale", 0.06,
                       "--iters-per-batch", 1, "--steps", 2, "--resolution", 32, "--device", "cpu",
                       "--rounds", 2, "--reedit-each-round", "--reedit-strength", 0.5, "--out", out)
    assert code == 0, err
    import json

    rec = json.loads((out / "edit.json").read_text())
    assert rec["editor"] == "ip2p" and set(rec["regions_rendered"]) == {"eye_region", "eyes", "lips"}
    opts = rec["settings"]["editor_options"]
    assert opts["reedit_strength"] == 0.5 and opts["multiview"] and opts["inpaint"]
    assert (out / "point_cloud.ply").is_file() and (out / "avatar.json").is_file()


def test_editor_options_and_errors(tiny_ip2p_dir):
    import argparse

    from edit3dgs.edit import make_editor
    from edit3dgs.edit.ip2p import add_cli_args, options_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto")
    add_cli_args(p)
    a = p.parse_args(["--model", str(tiny_ip2p_dir), "--no-multiview", "--inpaint-regions", "eyes,lips",
                      "--inpaint-start", "3", "--mask-source", "detector", "--reedit-strength", "0.7"])
    o = options_from_args(a)
    assert o["multiview"] is False and o["inpaint_regions"] == ["eyes", "lips"] and o["inpaint_start"] == 3
    ed = make_editor("ip2p", **o)
    assert ed.regions_for("make it blue") == [] and ed.reedit_strength == 0.7   # detector masks: none rendered
    with pytest.raises(Edit3DGSError):
        make_editor("ip2p", reedit_strength=1.5)
    with pytest.raises(Edit3DGSError):
        make_editor("ip2p", mask_source="sam3")
    with pytest.raises(Edit3DGSError):
        make_editor("ip2p").regions_for("  ")
