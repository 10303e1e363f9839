"""Instruct-Pix2Pix editing on a CUDA device (tiny models built in code): what only a GPU shows.

Skipped without CUDA; needs no gsplat (the renderer's GPU tests are in test_render_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


@pytest.mark.parametrize("multiview", [False, True], ids=["per-view", "multi-view"])
def test_denoising_steps_wait_for_the_gpu_at_most_once_per_match_plan(tmp_path, multiview):
    """The denoising loop queues its UNet calls without host syncs (a sync drains the GPU's queue, which then
    idles while the host launches again): rows are taken by slices or by indices copied from pinned memory,
    the scheduler steps on host timesteps. Per-view editing: no more syncs for more steps. Multi-view: at
    most one more per UNet call (each call's match plan reads back which tokens have no candidate)."""
    import warnings

    from edit3dgs.cameras import camera_rig
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images, load_ip2p
    from edit3dgs.edit.mv_attention import View
    from tiny_models import build_tiny_ip2p

    d = build_tiny_ip2p(tmp_path / "m", unet_channels=(32, 64), vae_channels=(32, 64), groups=8)
    cams = camera_rig(64, 64, azimuths=[-40.0, -20.0, 0.0, 20.0, 40.0, 60.0], elevations=[5.0] * 6)
    views = [View(c, 0) for c in cams]
    imgs = torch.rand(6, 64, 64, 3, generator=torch.Generator().manual_seed(0)).cuda()
    m = load_ip2p(str(d), device="cuda")

    def syncs(steps):
        s = IP2PSettings(steps=steps, resolution=64, chunk_size=3, min_timestep=0, inpaint=False, batch_size=3,
                         multiview=multiview)
        edit_images(m, imgs, "warm up", s, views=views if multiview else None)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                edit_images(m, imgs, "make it blue", s, views=views if multiview else None)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    few, many = syncs(2), syncs(6)
    assert few > 0      # the count sees syncs at all (the edit has a few: prompt, noise, timesteps, read-back)
    # 6 views, chunks of 3 (2 key views), batch 3: two multi-view UNet calls a step
    assert many - few <= (4 * 2 if multiview else 0)


@pytest.mark.parametrize("scope", ["blocks", "unet"])
def test_compiled_ip2p_unet_on_cuda_edits_as_the_eager_one(tmp_path, monkeypatch, scope):
    """--compile-unet with inductor on CUDA: the multi-view edit of a tiny Instruct-Pix2Pix is the eager one up to
    fp16 rounding, and the UNet really ran compiled (graphs made, no graph break but the eager attention's)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from edit3dgs.cameras import camera_rig
    from edit3dgs.edit import ip2p
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images, load_ip2p
    from edit3dgs.edit.mv_attention import View
    from tiny_models import build_tiny_ip2p

    monkeypatch.setattr(ip2p, "COMPILE_SCOPE", scope)
    d = build_tiny_ip2p(tmp_path / "m", unet_channels=(32, 64), vae_channels=(32, 64), groups=8)
    cams = camera_rig(64, 64, azimuths=[-40.0, -20.0, 0.0, 20.0, 40.0, 60.0], elevations=[5.0] * 6)
    views = [View(c, 0) for c in cams]
    imgs = torch.rand(6, 64, 64, 3, generator=torch.Generator().manual_seed(0)).cuda()
    s = IP2PSettings(steps=3, resolution=64, chunk_size=3, min_timestep=0, inpaint=False, batch_size=4)
    m = load_ip2p(str(d), device="cuda")
    eager = edit_images(m, imgs, "make it blue", s, views=views).images
    torch._dynamo.reset()
    counters.clear()
    try:
        m = load_ip2p(str(d), device="cuda", compile_unet=True)
        assert m.compiled == scope
        out = edit_images(m, imgs, "make it blue", s, views=views).images
        assert counters["stats"]["unique_graphs"] > 0
        assert all("torch.compiler.disable" in why for why in counters["graph_break"])
        assert bool(counters["graph_break"]) == (scope == "unet")
        torch.testing.assert_close(out, eager, atol=2e-2, rtol=0)
        assert (out - eager).abs().mean() < 2e-3
    finally:
        ip2p.set_compiled(m, False)
        torch._dynamo.reset()


def test_fused_matching_on_cuda_matches_and_blends_as_the_unfused_one():
    """The matching's tail compiled by inductor (band test, masked argmax, blend in float32) at the top level's
    shapes in fp16 (8 heads of 40, 48 x 32 tokens here): the same candidate masks, the same matches, and outputs
    equal up to fp16 rounding of the blend."""
    from diffusers.models.attention_processor import Attention

    from edit3dgs.cameras import camera_rig
    from edit3dgs.edit.mv_attention import MultiViewAttnProcessor, MultiViewContext, View

    h, w, c = 48, 32, 320
    n = h * w
    cams = camera_rig(256, 384, azimuths=[-60.0, -35.0, -15.0, 0.0, 15.0, 35.0, 60.0, 80.0], elevations=[5.0] * 8)
    torch.manual_seed(0)
    attn = Attention(query_dim=c, heads=8, dim_head=40).eval().cuda().half()
    hs = torch.randn(3 * 8, n, c, device="cuda", dtype=torch.float16)
    nbrs = {1: [(0, 0.6), (3, 0.4)], 2: [(3, 0.7), (0, 0.3)], 4: [(3, 0.5), (5, 0.5)], 6: [(5, 0.8), (7, 0.2)]}

    def run(fused):
        ctx = MultiViewContext()
        ctx.fused, ctx.record_matches = fused, True
        proc = MultiViewAttnProcessor(ctx, "layer")
        ctx.begin([View(cam, 0) for cam in cams], (h, w))
        try:
            ctx.set_keys([0, 3, 5, 7], nbrs)
            ctx.mode, ctx.batch, ctx.n_keys = "mixed", [0, 3, 5, 7, 1, 2, 4, 6], 4
            with torch.no_grad():
                out = proc(attn, hs)
            plan = ctx.plan([1, 2, 4, 6], h, w, {0: 0, 3: 1, 5: 2, 7: 3}, "cuda")
            return out, plan, {key: (i.clone(), v.clone()) for key, (i, v) in ctx.matches.items()}
        finally:
            ctx.end()

    want, wplan, wmatch = run(None)
    got, gplan, gmatch = run("inductor")
    assert torch.equal(gplan.valid, wplan.valid) and wplan.valid.any()
    assert (gplan.not_cand != wplan.not_cand).float().mean() < 1e-5      # the band's edge may round either way
    assert len(wmatch) == 8
    for key, (idx, valid) in wmatch.items():
        assert (gmatch[key][0][valid] == idx[valid]).float().mean() > 0.999, key
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    assert (got.float() - want.float()).abs().mean() < 1e-3
