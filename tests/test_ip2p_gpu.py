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
