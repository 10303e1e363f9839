"""Instruct-Pix2Pix editor: guidance, multi-view batch editing, inpainting, loading, the edit loop.

The method's arithmetic is checked against stand-ins whose answers are known:
a stub UNet that returns a distinct constant per guidance branch (or a
pointwise function of its input) behind the real tiny VAE and text encoder,
and a single diffusers ``Attention`` layer driven by the multi-view processor.
Tiny random components are built in code, saved with save_pretrained and
loaded through ``load_ip2p``, the loader users call (formats.md §3–§5).
Each test's docstring names the mistakes it catches.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler  # noqa: E402

from edit3dgs.cameras import Camera, look_at  # noqa: E402
from edit3dgs.edit import correspondence as corr  # noqa: E402
from edit3dgs.edit import ip2p  # noqa: E402
from edit3dgs.edit.base import EditRequest  # noqa: E402
from edit3dgs.edit.ip2p import IP2PModels, IP2PSettings, edit_images, load_ip2p, plan_groups  # noqa: E402
from edit3dgs.edit.mv_attention import MultiViewAttnProcessor, MultiViewContext, View  # noqa: E402
from edit3dgs.errors import Edit3DGSError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with two, a busy 2-core machine spends most of the
    time in OpenMP waits (33 s instead of 0.5 s for the real-UNet test below)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_ip2p_dir(tmp_path_factory):
    from tiny_models import build_tiny_ip2p

    # Small enough that the whole file runs in well under a minute on a 2-core CPU.
    return build_tiny_ip2p(tmp_path_factory.mktemp("models") / "tiny-ip2p", unet_channels=(8, 16),
                           vae_channels=(8, 16), groups=4, heads=2)


@pytest.fixture(scope="session")
def models(tiny_ip2p_dir):
    return load_ip2p(str(tiny_ip2p_dir), device="cpu")


def ring_cameras(n: int, size: int = 32, span: float = 40.0, cx: float = 14.0, cy: float = 18.0,
                 height: int | None = None) -> list[Camera]:
    """n cameras on an arc around the origin, with an off-centre principal point."""
    cams = []
    for i, az in enumerate(np.linspace(-span / 2, span / 2, n)):
        a = math.radians(az)
        eye = np.array([math.sin(a), 0.05 * (i % 2), math.cos(a)])
        cams.append(Camera(i, size, height or size, 40.0, 42.0, cx, cy, look_at(eye, np.zeros(3))))
    return cams


# -- stand-ins ------------------------------------------------------------------------------

class StubUNet(torch.nn.Module):
    """Stands in for the 8-channel UNet: eps = fn(sample, t, emb); records every call with what
    the multi-view context said at that moment."""

    def __init__(self, fn, ctx: MultiViewContext):
        super().__init__()
        self.config = SimpleNamespace(in_channels=8, block_out_channels=(32, 64))
        self.fn, self.ctx, self.calls = fn, ctx, []

    def forward(self, sample, timestep, encoder_hidden_states=None):
        c = self.ctx
        self.calls.append(SimpleNamespace(t=int(timestep), mode=c.mode, batch=list(c.batch), keys=list(c.keys),
                                          n_keys=c.n_keys, neighbours=dict(c.neighbours)))
        return SimpleNamespace(sample=self.fn(sample, timestep, encoder_hidden_states))


class RecordingDDIM(DDIMScheduler):
    """DDIM that records (t, eps, latents) of every step."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        self.record.append((int(timestep), model_output.clone(), sample.clone()))
        return super().step(model_output, timestep, sample, *args, **kwargs)


def stub_models(models: IP2PModels, fn) -> IP2PModels:
    """The tiny model's tokenizer, text encoder and VAE with a stub UNet and a recording scheduler."""
    ctx = MultiViewContext()
    sched = RecordingDDIM.from_config(models.scheduler.config)
    sched.record = []
    return IP2PModels(models.tokenizer, models.text_encoder, models.vae, StubUNet(fn, ctx), sched,
                      torch.device("cpu"), torch.float32, ctx, "stub")


def pointwise(sample, t, emb):
    """A UNet stand-in with no spatial or cross-view mixing."""
    return 0.3 * sample[:, :4] - 0.2 * sample[:, 4:]


def vae_mode(models, imgs):
    """Unscaled ``vae.encode(img).mode()`` of (B,H,W,3) images in [0,1], computed here."""
    with torch.no_grad():
        return models.vae.encode(imgs.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()


def attention_layer(dim: int = 16, seed: int = 0):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(seed)
    return Attention(query_dim=dim, heads=2, dim_head=8).eval()


def reference_attention(attn, hs):
    """diffusers' own self-attention (its default processor) on (B, N, C)."""
    from diffusers.models.attention_processor import AttnProcessor

    with torch.no_grad():
        return AttnProcessor()(attn, hs)


# -- loading --------------------------------------------------------------------------------

def test_loader_caches_and_turns_every_failure_into_one_line(tiny_ip2p_dir, models, tmp_path, monkeypatch):
    """Catches: a traceback instead of the one-line error for a corrupt weight file or any other
    loading failure (not only OSError/ValueError/KeyError)."""
    assert load_ip2p(str(tiny_ip2p_dir), device="cpu") is models
    assert models.dtype == torch.float32 and models.unet.config.in_channels == 8
    for bad in (tmp_path / "nowhere", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(Edit3DGSError) as e:
            load_ip2p(str(bad), device="cpu")
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Edit3DGSError):   # offline: a hub id that is not in the cache
        load_ip2p("nobody/not-a-cached-model", device="cpu")
    corrupt = shutil.copytree(tiny_ip2p_dir, tmp_path / "corrupt")
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Edit3DGSError) as e:
        load_ip2p(str(corrupt), device="cpu")
    assert "\n" not in str(e.value) and "download" in str(e.value)
    import diffusers

    odd = shutil.copytree(tiny_ip2p_dir, tmp_path / "odd")

    def fail(*a, **k):
        raise RuntimeError("size mismatch for conv_in.weight\nsecond line")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", fail)
    with pytest.raises(Edit3DGSError) as e:
        load_ip2p(str(odd), device="cpu")
    assert "size mismatch" in str(e.value) and "\n" not in str(e.value)


def test_loader_works_with_the_oldest_supported_transformers(tiny_ip2p_dir, tmp_path, monkeypatch):
    """transformers 4.45 (the declared floor) rejects ``from_pretrained(..., dtype=...)`` with a
    TypeError. Catches: passing the dtype in a way only newer versions accept (the real floor
    version is checked by scripts/check_transformers_floor.sh)."""
    import transformers

    real = transformers.CLIPTextModel.from_pretrained.__func__

    def old_from_pretrained(cls, *args, **kwargs):
        if "dtype" in kwargs:
            raise TypeError("CLIPTextModel.__init__() got an unexpected keyword argument 'dtype'")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", classmethod(old_from_pretrained))
    folder = shutil.copytree(tiny_ip2p_dir, tmp_path / "floor")
    m = load_ip2p(str(folder), device="cpu", dtype="bf16")
    assert next(m.text_encoder.parameters()).dtype == torch.bfloat16 and m.unet.dtype == torch.bfloat16
    ip2p.clear_cache()


def euler_config_folder(tiny_ip2p_dir, dest):
    """The tiny model with the scheduler config timbrooks/instruct-pix2pix ships (Euler: only the
    schedule's betas; no clip_sample, set_alpha_to_one or steps_offset)."""
    folder = shutil.copytree(tiny_ip2p_dir, dest)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon", "trained_betas": None}))
    return folder


def test_ddim_step_neither_clips_nor_ends_at_alpha_one_whatever_the_config(tiny_ip2p_dir, tmp_path):
    """Catches: a DDIM scheduler taken from a config without the DDIM keys (diffusers' defaults
    clip the predicted x0 to [-1, 1] and make the last step land on alpha_bar = 1)."""
    sched = load_ip2p(str(euler_config_folder(tiny_ip2p_dir, tmp_path / "euler")), device="cpu").scheduler
    steps = 4
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()
    x = torch.full((1, 4, 2, 2), 3.0)
    eps = torch.full((1, 4, 2, 2), 0.5)
    for t in sched.timesteps.tolist():
        a_t = ac[t]
        a_prev = ac[t - 1000 // steps] if t - 1000 // steps >= 0 else ac[0]
        x0 = (3.0 - (1 - a_t).sqrt() * 0.5) / a_t.sqrt()                       # |x0| > 1: no clipping
        expect = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * 0.5
        got = sched.step(eps, t, x).prev_sample
        torch.testing.assert_close(got, torch.full_like(got, float(expect)), atol=1e-5, rtol=1e-5)
    ip2p.clear_cache()


# -- guidance -------------------------------------------------------------------------------

def test_guidance_combines_three_branches_in_diffusers_order(models):
    """eps = e_none + s_T (e_text - e_image) + s_I (e_image - e_none) with the batch laid out
    [text+image, image only, none]; the unconditional branch gets a zero image latent, the others
    the unscaled VAE mode. Catches: swapped branches or scales, a wrong sign, another batch
    order, an image latent in the unconditional branch, a scaled or sampled image latent."""
    imgs = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    emb_text, emb_none = ip2p.encode_prompt(models, "make it blue")
    mode = vae_mode(models, imgs)
    value = {(True, True): 1.0, (False, True): 0.25, (False, False): -0.125, (True, False): 8.0}
    layout = []

    def fn(sample, t, emb):
        out = torch.empty(sample.shape[0], 4, *sample.shape[2:])
        flags = []
        for i in range(sample.shape[0]):
            text = torch.equal(emb[i], emb_text[0])
            assert text or torch.equal(emb[i], emb_none[0])
            cond = sample[i, 4:]
            image = bool(cond.abs().max() > 0)
            if image:
                torch.testing.assert_close(cond, mode[i % 2], atol=1e-5, rtol=1e-5)
            flags.append((text, image))
            out[i] = value[(text, image)]
        n = sample.shape[0] // 3
        assert torch.equal(sample[:n, :4], sample[n:2 * n, :4]) and torch.equal(sample[:n, :4], sample[2 * n:, :4])
        layout.append(flags)
        return out

    m = stub_models(models, fn)
    s = IP2PSettings(steps=3, resolution=32, guidance_text=5.0, guidance_image=2.0, multiview=False, inpaint=False)
    edit_images(m, imgs, "make it blue", s)
    assert layout and all(f == [(True, True)] * 2 + [(False, True)] * 2 + [(False, False)] * 2 for f in layout)
    expect = -0.125 + 5.0 * (1.0 - 0.25) + 2.0 * (0.25 + 0.125)
    assert len(m.scheduler.record) == 3
    for _, eps, _ in m.scheduler.record:
        torch.testing.assert_close(eps, torch.full_like(eps, expect))


# -- multi-view batch editing: one attention layer ----------------------------------------------

def test_extended_attention_links_key_views_within_each_branch_and_never_across():
    """Each key view's queries attend to all key views' keys/values of the same guidance branch.
    Catches: no extended attention, or one joint sequence across the branches."""
    attn = attention_layer()
    ctx = MultiViewContext()
    proc = MultiViewAttnProcessor(ctx, "layer")
    h, w, c = 4, 6, 16
    ctx.begin([View(cam, 0) for cam in ring_cameras(2, size=60, height=40)], (h, w))
    hs = torch.randn(3 * 2, h * w, c, generator=torch.Generator().manual_seed(1))
    try:
        for extended in (True, False):
            ctx.extended = extended
            ctx.set_keys([0, 1], {})
            ctx.mode, ctx.batch = "key", [0, 1]
            with torch.no_grad():
                out = proc(attn, hs)
            for b in range(3):
                pair = hs[2 * b:2 * b + 2]
                if extended:
                    expect = reference_attention(attn, pair.reshape(1, 2 * h * w, c)).view(2, h * w, -1)
                else:
                    expect = reference_attention(attn, pair)
                torch.testing.assert_close(out[2 * b:2 * b + 2], expect, atol=1e-5, rtol=1e-5)
    finally:
        ctx.end()


def injection_scene():
    """A query view and two key views on a non-square image (100 x 60 pixels, 10 x 6 tokens) with an
    off-centre principal point; the key views have narrow fields of view, so some query tokens have
    candidates in both key views, some in one, some in none."""
    W, H, h, w = 100, 60, 6, 10

    def cam(i, az, target, f):
        a = math.radians(az)
        return Camera(i, W, H, f, 1.05 * f, 38.0, 35.0, look_at(np.array([math.sin(a), 0.1, math.cos(a)]), np.asarray(target)))

    return [cam(0, -25, [0, 0, 0], 200.0), cam(1, 0, [0, 0, 0], 80.0), cam(2, 30, [0.1, 0.05, 0], 200.0)], (h, w)


def test_injection_matches_once_on_the_image_branch_by_cosine_and_blends_normalised_weights():
    """For every token of a non-key view: the best key token by cosine similarity of the image-conditioned
    branch's features among the epipolar candidates, used for all three branches; key outputs blended
    with weights renormalised over the key views that have candidates; the view's own attention where
    none has. "mixed" calls (key views and others together) give the same. Catches: matching per
    branch (or on the text or unconditional branch), dot products instead of cosines, weights not
    renormalised, a wrong fallback, a mixed call that differs from separate calls."""
    cams, (h, w) = injection_scene()
    n, c = h * w, 16
    attn = attention_layer(seed=3)
    ctx = MultiViewContext()
    proc = MultiViewAttnProcessor(ctx, "layer")
    g = torch.Generator().manual_seed(2)
    hs_k = torch.randn(3, 2, n, c, generator=g) * torch.exp(3 * torch.rand(3, 2, n, 1, generator=g) - 1.5)
    hs_q = torch.randn(3, 1, n, c, generator=g)
    nbrs = [(0, 0.3), (2, 0.7)]
    ctx.begin([View(cam, 0) for cam in cams], (h, w))
    try:
        ctx.set_keys([0, 2], {1: nbrs})
        ctx.mode, ctx.batch = "key", [0, 2]
        with torch.no_grad():
            out_k = proc(attn, hs_k.reshape(6, n, c)).view(3, 2, n, -1)
            ctx.mode, ctx.batch = "inject", [1]
            out_q = proc(attn, hs_q.reshape(3, n, c))
            ctx.set_keys([0, 2], {1: nbrs})
            ctx.mode, ctx.batch, ctx.n_keys = "mixed", [0, 2, 1], 2
            out_mixed = proc(attn, torch.cat([hs_k, hs_q], 1).reshape(9, n, c)).view(3, 3, n, -1)
    finally:
        ctx.end()

    res, wsum, valid_n = torch.zeros(3, n, out_k.shape[-1]), torch.zeros(n), torch.zeros(n)
    qf = F.normalize(hs_q[1, 0], dim=-1)
    for p, (j, wt) in enumerate(nbrs):
        cand = corr.epipolar_candidates(cams[1], cams[j], h, w, band=1.0)
        sim = (qf @ F.normalize(hs_k[1, p], dim=-1).T).masked_fill(~cand, float("-inf"))
        idx, valid = sim.argmax(-1), cand.any(-1)
        res += wt * valid[None, :, None] * out_k[:, p].gather(1, idx[None, :, None].expand(3, -1, out_k.shape[-1]))
        wsum += wt * valid
        valid_n += valid
    assert (valid_n == 2).any() and (valid_n == 1).any() and (valid_n == 0).any()   # the scene has all three cases
    own = reference_attention(attn, hs_q.reshape(3, n, c))
    expect = torch.where((wsum > 0)[None, :, None], res / wsum.clamp_min(1e-12)[None, :, None], own)
    torch.testing.assert_close(out_q, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_mixed[:, 2], expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_mixed[:, :2], out_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("full", [False, True], ids=["a-spare-slot", "every-slot"])
@pytest.mark.parametrize("pairs_per_product", [1, 8])
def test_match_plan_holds_each_pairs_candidates_whatever_the_slots(pairs_per_product, full):
    """The match plan of a UNet call masks, per (neighbour slot, view), exactly the key tokens that are not
    that pair's candidates: the epipolar band within a timestep, the FLAME binding across timesteps; a
    view with fewer key views than slots has its spare slot fully masked and invalid. Built one pair per
    product and several at once (with a spare slot the rows of one product are not consecutive; with every
    slot filled they are, and are written in place). Catches a mask written into another view's or slot's row,
    or left un-negated."""
    cams = ring_cameras(5)
    pts = torch.as_tensor(np.random.default_rng(4).uniform(-0.1, 0.1, (400, 3)), dtype=torch.float32)
    # every slot filled: one timestep (all epipolar), so each product's rows are consecutive
    views = [View(c, 0, pts) for c in cams[:4]] + [View(cams[4], 0 if full else 1, pts * 1.02)]
    h = w = 8
    ctx = MultiViewContext()
    ctx.cand_bytes = pairs_per_product * 4 * (h * w) ** 2
    ctx.begin(views, (h, w))
    try:
        nbrs = {1: [(0, 0.5), (2, 0.5)], 3: [(2, 0.8), (0, 0.2)] if full else [(2, 1.0)], 4: [(0, 0.4), (2, 0.6)]}
        ctx.set_keys([0, 2], nbrs)
        plan = ctx.plan([1, 3, 4], h, w, {0: 0, 2: 1}, "cpu")
        assert plan.not_cand.shape == (2, 3, h * w, h * w)
        for v, i in enumerate([1, 3, 4]):
            for k in range(2):
                if k < len(nbrs[i]):
                    cand = ctx.candidates(i, nbrs[i][k][0], h, w, "cpu")
                    assert cand.any() and not cand.all()
                    assert torch.equal(plan.not_cand[k, v], ~cand), (k, i)
                    assert torch.equal(plan.valid[k, v], cand.any(-1))
                else:
                    assert plan.not_cand[k, v].all() and not plan.valid[k, v].any()
        assert sorted((i, j) for _, _, i, j in plan.pairs) == [(1, 0), (1, 2)] + [(3, 0)] * full + [(3, 2), (4, 0), (4, 2)]
    finally:
        ctx.end()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_fused_matching_tail_plans_matches_and_blends_as_the_unfused_one(backend):
    """With the UNet compiled the matching's tail runs fused (``ctx.fused``: the band test of all pairs at once,
    the masked argmax, the blend in float32): same candidate masks, same matches, same outputs, and under
    torch.compile it traces whole (no graph breaks). A query view with a single key view keeps the unfused
    plan. Catches a fused band test with the wrong line coefficients, rows or sign; an argmax over unmasked
    similarities; a blend of the wrong slot or weight."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from edit3dgs.edit import mv_attention as mva

    W, H, h, w, c = 100, 60, 6, 10, 16
    n = h * w

    def cam(i, az, f):      # key views 0 and 2 narrow, so that some tokens of the others have no candidate
        a = math.radians(az)
        return Camera(i, W, H, f, 1.05 * f, 38.0, 35.0, look_at(np.array([math.sin(a), 0.1, math.cos(a)]), np.zeros(3)))

    cams = [cam(0, -25, 200.0), cam(1, -10, 80.0), cam(2, 30, 200.0), cam(3, 10, 90.0), cam(4, 45, 70.0)]
    attn = attention_layer(seed=5)
    g = torch.Generator().manual_seed(7)
    hs = torch.randn(3, 5, n, c, generator=g)
    torch._dynamo.reset()
    counters.clear()

    def run(fused, nbrs):
        ctx = MultiViewContext()
        ctx.fused = fused
        ctx.record_matches = True
        proc = MultiViewAttnProcessor(ctx, "layer")
        ctx.begin([View(cam, 0) for cam in cams], (h, w))
        try:
            ctx.set_keys([0, 2], nbrs)
            ctx.mode, ctx.batch, ctx.n_keys = "mixed", [0, 2, 1, 3, 4], 2
            with torch.no_grad():
                out = proc(attn, hs.reshape(15, n, c))
            plan = ctx.plan([1, 3, 4], h, w, {0: 0, 2: 1}, "cpu")
            return out, plan, {key: (i.clone(), v.clone()) for key, (i, v) in ctx.matches.items()}
        finally:
            ctx.end()

    for nbrs in ({1: [(0, 0.5), (2, 0.5)], 3: [(2, 0.8), (0, 0.2)], 4: [(0, 0.4), (2, 0.6)]},
                 {1: [(0, 0.5), (2, 0.5)], 3: [(2, 1.0)], 4: [(0, 0.4), (2, 0.6)]}):
        want, wplan, wmatch = run(None, nbrs)
        got, gplan, gmatch = run(backend, nbrs)
        assert wplan.miss_views is not None and wplan.valid.any()   # tokens with candidates, and with none
        assert torch.equal(gplan.not_cand, wplan.not_cand) and torch.equal(gplan.valid, wplan.valid)
        torch.testing.assert_close(gplan.coef, wplan.coef, atol=0, rtol=0)
        assert gmatch.keys() == wmatch.keys() and len(wmatch) == sum(map(len, nbrs.values()))
        for key, (idx, valid) in wmatch.items():
            assert torch.equal(gmatch[key][1], valid)
            assert torch.equal(gmatch[key][0][valid], idx[valid]), key
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    if backend != "eager":
        assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters["graph_break"])
    # the fused band test alone, against the distances (away from the band's edge, where rounding may differ)
    pairs = [(cams[1], cams[0]), (cams[4], cams[2])]
    d = corr.epipolar_distances(pairs, h, w)
    grid = corr.token_grid(h, w)
    not_cand, valid = mva.epipolar_not_candidates(corr.epipolar_lines(pairs, h, w), grid[:, 0], grid[:, 1], 1.0)
    sure = (d - 1.0).abs() > 1e-4
    assert torch.equal(not_cand[sure], (d > 1.0)[sure]) and torch.equal(valid, (d <= 1.0).any(-1))
    torch._dynamo.reset()


def test_tokens_without_candidates_are_the_same_when_kept_from_earlier_calls_and_edits():
    """A plan reads back which tokens have candidates once per pair and keeps it (no host sync on later calls):
    plans of later calls, of a later edit with other cameras, another band, or other Gaussians across
    timesteps must find the same tokens without candidates as a fresh context. Catches a kept entry that
    ignores the cameras, the band, the views' Gaussians or the grid."""
    def misses(ctx, views, keys, nbrs, others, band, h=6, w=10):
        ctx.begin(views, (h, w))
        ctx.band = band
        try:
            ctx.set_keys(keys, nbrs)
            plan = ctx.plan(others, h, w, {j: p for p, j in enumerate(keys)}, "cpu")
            if plan.miss_views is None:
                return set()
            return set(plan.miss_flat.tolist())
        finally:
            ctx.end()

    cams, _ = injection_scene()
    other_cams = [cams[1], cams[0], cams[2]]          # the same cameras at other view indices
    rng = np.random.default_rng(3)
    pts = torch.as_tensor(rng.uniform(-0.2, 0.2, (500, 3)), dtype=torch.float32)
    kept = MultiViewContext()
    cases = [
        ([View(c, 0) for c in cams], [0, 2], {1: [(0, 0.3), (2, 0.7)]}, [1], 1.0),
        ([View(c, 0) for c in cams], [0, 2], {1: [(0, 0.3), (2, 0.7)]}, [1], 0.3),
        ([View(c, 0) for c in other_cams], [1, 2], {0: [(1, 0.5), (2, 0.5)]}, [0], 1.0),
        ([View(c, 0) for c in cams], [1], {0: [(1, 1.0)], 2: [(1, 1.0)]}, [0, 2], 1.0),
        ([View(cams[0], 0, pts), View(cams[1], 1, pts * 1.3), View(cams[2], 0, pts)], [0, 2], {1: [(0, 0.5), (2, 0.5)]}, [1], 1.0),
        ([View(cams[0], 0, pts), View(cams[1], 1, pts * 0.5), View(cams[2], 0, pts)], [0, 2], {1: [(0, 0.5), (2, 0.5)]}, [1], 1.0),
    ]
    seen = []
    for views, keys, nbrs, others, band in cases * 2:
        want = misses(MultiViewContext(), views, keys, nbrs, others, band)
        assert misses(kept, views, keys, nbrs, others, band) == want
        seen.append(len(want))
    assert len(set(seen)) > 2                        # the cases differ in what has no candidate
    assert any(k[0] == "band" for k in kept._valid_host) and not any(k[0] == "binding" for k in kept._valid_host)


def test_epipolar_band_on_a_non_square_image_with_an_off_centre_principal_point():
    """Distances from key tokens to each query token's epipolar line equal those computed by
    back-projecting the query token's ray to two depths and projecting both points into the key
    view, on a token grid whose cells are not square. Catches: width and height swapped, a principal
    point assumed central, pixel instead of token units, the line of the wrong view."""
    cams, _ = injection_scene()
    h, w = 5, 12                                        # cells of 8.3 x 12 pixels
    for qi, ki in [(1, 0), (0, 2), (2, 1)]:
        cq, ck = cams[qi], cams[ki]
        got = corr.epipolar_distance(cq, ck, h, w).double()
        ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        pix = np.c_[xs.ravel() * cq.width / w, ys.ravel() * cq.height / h, np.ones(h * w)]
        rays = pix @ np.linalg.inv(cq.K).T                                 # OpenCV camera coordinates, z = 1
        c2w = np.linalg.inv(cq.viewmat)
        ends = [(rays * d) @ c2w[:3, :3].T + c2w[:3, 3] for d in (0.6, 1.6)]
        a, b = (ck.project(e)[0] * [w / ck.width, h / ck.height] for e in ends)   # key token units
        d = b - a
        normal = np.c_[-d[:, 1], d[:, 0]] / np.linalg.norm(d, axis=1, keepdims=True)
        ky, kx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        kt = np.c_[kx.ravel(), ky.ravel()]
        expect = np.abs(((kt[None, :, :] - a[:, None, :]) * normal[:, None, :]).sum(-1))   # (Nq, Nk)
        np.testing.assert_allclose(got.numpy(), expect, atol=2e-3)


def test_epipolar_band_holds_the_true_correspondences():
    """Catches a band too narrow or misplaced for real points (non-square, off-centre principal point)."""
    cams = ring_cameras(3, size=48, height=32, cx=20.0, cy=18.0)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.15, 0.15, (300, 3))
    h, w = 16, 12                                       # cells of 4 x 2 pixels
    for qa, ka in [(0, 1), (2, 0), (1, 2)]:
        cq, ck = cams[qa], cams[ka]
        uq, _ = cq.project(pts)
        uk, _ = ck.project(pts)
        inside = ((uq >= 0).all(1) & (uq[:, 0] < 48) & (uq[:, 1] < 32) & (uk >= 0).all(1) & (uk[:, 0] < 48) & (uk[:, 1] < 32))
        tq = (uq[inside] // [4, 2]).astype(int)
        tk = (uk[inside] // [4, 2]).astype(int)
        cand = corr.epipolar_candidates(cq, ck, h, w, band=1.0)
        assert cand[torch.as_tensor(tq[:, 1] * w + tq[:, 0]), torch.as_tensor(tk[:, 1] * w + tk[:, 0])].float().mean() > 0.97


# -- multi-view batch editing: the denoising loop -------------------------------------------------

def test_plain_attention_below_the_threshold_and_key_views_drawn_per_chunk_and_step(models):
    """Multi-view modes at t >= min_timestep, plain attention below; every multi-view step draws one
    key view per chunk of each timestep (key views per timestep by default), at random,
    reproducibly per seed, and the UNet calls use exactly those key views. Catches: the threshold
    ignored or inverted, fixed key views, key views drawn once per edit, an unseeded draw, key
    views shared across timesteps by default."""
    cams = ring_cameras(6)
    views = [View(cam, t) for t in (0, 5) for cam in cams]
    imgs = torch.rand(12, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    s = IP2PSettings(steps=10, resolution=32, chunk_size=3, min_timestep=300, inpaint=False, batch_size=4)

    def run(seed):
        m = stub_models(models, pointwise)
        out = edit_images(m, imgs, "make it blue", replace(s, seed=seed), views=views)
        return m, out

    m, out = run(0)
    groups = plan_groups(views, 3)
    assert len(groups) == 2 and all(len({views[i].timestep for i in g.members}) == 1 for g in groups)
    ts = sorted({c.t for c in m.unet.calls}, reverse=True)
    mv_steps = [t for t in ts if t >= 300]
    assert len(mv_steps) == 7 and len(out.key_views) == 7
    for step, t in enumerate(mv_steps):
        calls = [c for c in m.unet.calls if c.t == t]
        assert all(c.mode in ("key", "mixed", "inject") for c in calls)
        keys = out.key_views[step]
        assert len(keys) == 4 and sorted(keys) == sorted(set(keys))
        for g in groups:
            assert sum(k in chunk for k in keys for chunk in g.chunks) == len(g.chunks)
            assert all(sum(k in chunk for k in keys) == 1 for chunk in g.chunks)
        used = {k for c in calls for k in c.keys}
        assert used == set(keys)
        for c in calls:    # a call holds views of one timestep, and its key views are that timestep's
            assert len({views[i].timestep for i in c.batch + c.keys}) == 1
            if c.mode in ("key", "mixed"):
                assert c.batch[:len(c.keys)] == c.keys
    assert all(c.mode == "off" for c in m.unet.calls if c.t < 300)
    for chunk in (ch for g in groups for ch in g.chunks):
        assert len({k for keys in out.key_views for k in keys if k in chunk}) > 1     # drawn anew each step
    assert run(0)[1].key_views == out.key_views
    assert run(1)[1].key_views != out.key_views
    # Sharing one timestep's key views across time is the option, not the default.
    m2 = stub_models(models, pointwise)
    out2 = edit_images(m2, imgs, "make it blue", replace(s, temporal_keys=True), views=views)
    assert all(views[k].timestep == 0 for keys in out2.key_views for k in keys)


def test_each_view_gets_its_own_prediction_whatever_order_the_calls_hold_it_in(models):
    """Multi-view UNet calls hold views out of order (a group's key views first, drawn at random): each
    call must read those views' latents and conditioning and write its predictions back to those views'
    rows. With a UNet that mixes nothing across views, multi-view editing then equals per-view editing.
    Catches: rows read or written in another order than the call's (e.g. sorted), both read and written in
    one wrong order (the processors would take the wrong rows for key views), a call's result written to
    the wrong views."""
    cams = ring_cameras(6)
    views = [View(cam, t) for t in (0, 5) for cam in cams]
    imgs = torch.rand(12, 32, 32, 3, generator=torch.Generator().manual_seed(6))
    s = IP2PSettings(steps=4, resolution=32, chunk_size=3, min_timestep=0, inpaint=False, batch_size=4)

    def by_view(m):
        """A UNet with no mixing whose output also depends on which view each row is (the context's batch), so
        rows taken and written back in the same wrong order still show."""
        def fn(sample, t, emb):
            ids = torch.tensor(m.mv.batch * 3, dtype=sample.dtype)   # branch-major rows
            return pointwise(sample, t, emb) + 0.01 * ids[:, None, None, None]
        m.unet.fn = fn
        return m

    m = by_view(stub_models(models, None))
    mv = edit_images(m, imgs, "make it blue", s, views=views)
    assert any(c.batch != sorted(c.batch) for c in m.unet.calls)      # the case this is about happened
    per_view = edit_images(by_view(stub_models(models, None)), imgs, "make it blue", replace(s, multiview=False))
    torch.testing.assert_close(mv.latents, per_view.latents, atol=1e-6, rtol=0)


def test_multiview_edit_with_the_real_unet_across_timesteps(models):
    """The processors inside a real (tiny) UNet: key views per timestep and, as an option, linked
    across timesteps by the FLAME binding; both differ from per-view editing."""
    cams = ring_cameras(2)
    pts = torch.as_tensor(np.random.default_rng(2).uniform(-0.1, 0.1, (300, 3)), dtype=torch.float32)
    views = [View(c, t, pts + 0.02 * t) for t in (0, 1) for c in cams]
    imgs = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    s = IP2PSettings(steps=2, resolution=32, chunk_size=2, min_timestep=0, inpaint=False)
    per_view = edit_images(models, imgs, "make it blue", replace(s, multiview=False))
    for temporal in (False, True):
        out = edit_images(models, imgs, "make it blue", replace(s, temporal_keys=temporal), views=views)
        assert out.images.shape == imgs.shape and torch.isfinite(out.images).all()
        assert all(len(k) == (1 if temporal else 2) for k in out.key_views)
        assert not torch.allclose(per_view.images, out.images)


@pytest.mark.parametrize("scope", ["blocks", "unet"])
def test_compiled_unet_edits_as_the_eager_unet_and_leaves_the_multiview_attention_eager(tiny_ip2p_dir, monkeypatch,
                                                                                        scope):
    """--compile-unet: the UNet goes through torch.compile (scope "blocks": the residual, sampling and
    feed-forward blocks; "unet": all of it, broken around the self-attention layers), and the VAE's encoder and
    decoder whole; the self-attention layers
    (whose multi-view processors keep Python state per call) stay eager and still see every call; the
    multi-view edit is the eager one; the flag reaches the loader; turning it off runs eagerly again.
    (Backend aot_eager: the same tracing as inductor without its C++/Triton code generation, a minute on a CPU.)"""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from edit3dgs.cli.edit import add_ip2p_args, ip2p_options_from_args
    from edit3dgs.edit import make_editor

    import argparse

    p = argparse.ArgumentParser()
    add_ip2p_args(p)
    ed = make_editor("ip2p", **ip2p_options_from_args(p.parse_args(["--model", str(tiny_ip2p_dir), "--compile-unet"])))
    assert ed.memory["compile_unet"] is True and not make_editor("ip2p").memory["compile_unet"]

    monkeypatch.setattr(ip2p, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(ip2p, "COMPILE_SCOPE", scope)
    cams = ring_cameras(6)
    pts = torch.as_tensor(np.random.default_rng(2).uniform(-0.1, 0.1, (300, 3)), dtype=torch.float32)
    views = [View(c, 0, pts) for c in cams]
    imgs = torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    s = IP2PSettings(steps=3, resolution=32, chunk_size=3, min_timestep=0, inpaint=False, batch_size=4)
    torch._dynamo.reset()
    counters.clear()
    m = load_ip2p(str(tiny_ip2p_dir), device="cpu")
    try:
        assert not m.compiled
        eager = edit_images(m, imgs, "make it blue", s, views=views)
        plans = []
        plan = m.mv.plan
        monkeypatch.setattr(m.mv, "plan", lambda *a, **k: plans.append(a[1:3]) or plan(*a, **k))
        m = load_ip2p(str(tiny_ip2p_dir), device="cpu", compile_unet=True)
        compiled = {type(x).__name__ for x in m.unet.modules() if getattr(x, "_compiled_call_impl", None) is not None}
        if scope == "blocks":
            assert compiled == {"ResnetBlock2D", "Downsample2D", "Upsample2D", "FeedForward"} & {
                type(x).__name__ for x in m.unet.modules()} and "ResnetBlock2D" in compiled
        else:
            assert compiled == {"UNet2DConditionModel"}
        vae = {type(x).__name__ for x in m.vae.modules() if getattr(x, "_compiled_call_impl", None) is not None}
        assert vae == {"Encoder", "Decoder"}, vae     # the VAE's encoder and decoder, in either scope
        before = counters["stats"]["unique_graphs"]
        out = edit_images(m, imgs, "make it blue", s, views=views)
        assert counters["stats"]["unique_graphs"] > before
        # the only graph breaks: around the self-attention layers kept eager
        assert all("torch.compiler.disable" in why for why in counters["graph_break"]), list(counters["graph_break"])
        assert bool(counters["graph_break"]) == (scope == "unet")
        assert plans, "the multi-view processors ran (eagerly) inside the compiled UNet"
        assert out.key_views == eager.key_views
        torch.testing.assert_close(out.images, eager.images, atol=1e-5, rtol=0)
        graphs = counters["stats"]["unique_graphs"]
        m = load_ip2p(str(tiny_ip2p_dir), device="cpu")     # off again: eager, nothing compiled any more
        assert not m.compiled and not any(getattr(x, "_compiled_call_impl", None)
                                          for x in (*m.unet.modules(), *m.vae.modules()))
        assert not any("forward" in x.__dict__ for x in m.unet.modules())
        torch.testing.assert_close(edit_images(m, imgs, "make it blue", s, views=views).images, eager.images,
                                   atol=0, rtol=0)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        ip2p.set_compiled(m, False)
        torch._dynamo.reset()


def test_compile_unet_without_a_cuda_device_stays_eager_and_says_so(tiny_ip2p_dir, capsys):
    """Inductor needs CUDA with Triton here: on a CPU the preference or flag leaves the UNet eager with one note,
    never an inductor traceback in the middle of an edit; the note comes once per process, not every job."""
    ip2p._EAGER_NOTED.clear()
    m = load_ip2p(str(tiny_ip2p_dir), device="cpu", compile_unet=True)
    try:
        assert not m.compiled and not any(getattr(x, "_compiled_call_impl", None) for x in m.unet.modules())
        assert "stay eager" in capsys.readouterr().err
        load_ip2p(str(tiny_ip2p_dir), device="cpu", compile_unet=True)
        assert "stay eager" not in capsys.readouterr().err
    finally:
        ip2p.set_compiled(m, False)


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


def test_binding_correspondences_respect_visibility():
    """A Gaussian hidden behind the rendered surface, or where the render is transparent, links no
    tokens, and the multi-view context uses the views' renders for it. Catches: the depth or alpha
    test skipped, the views' depth/alpha not passed on."""
    cam = Camera(0, 32, 32, 40.0, 40.0, 15.0, 17.0, look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3)))
    xs = np.linspace(-0.1, 0.1, 14)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    front, back = np.c_[grid, np.full(len(grid), 0.05)], np.c_[grid, np.full(len(grid), -0.05)]
    pts = torch.as_tensor(np.r_[front, back], dtype=torch.float32)
    nf = len(front)
    depth = torch.full((32, 32), 0.95)                     # the render sees the front layer (z = 0.05) everywhere
    alpha = torch.ones(32, 32)
    tok = corr.gaussian_tokens(pts, cam, 8, 8, depth, alpha, depth_tol=0.01)
    assert (tok[:nf] >= 0).all() and (tok[nf:] == -1).all()
    alpha[:, :16] = 0.0                                    # the left half of the render is transparent
    tok = corr.gaussian_tokens(pts, cam, 8, 8, depth, alpha, depth_tol=0.01)
    u = cam.project(front)[0][:, 0]
    assert (tok[:nf][torch.as_tensor(u < 15.5)] == -1).all() and (tok[:nf][torch.as_tensor(u > 16.5)] >= 0).all()

    ctx = MultiViewContext()
    moved = pts + torch.tensor([0.01, 0.0, 0.0])
    ctx.begin([View(cam, 0, pts), View(cam, 1, moved, depth + 0.0, alpha)], (8, 8))
    with_render = ctx.candidates(0, 1, 8, 8, "cpu")
    ctx.begin([View(cam, 0, pts), View(cam, 1, moved)], (8, 8))
    without = ctx.candidates(0, 1, 8, 8, "cpu")
    ctx.end()
    assert with_render.sum() < without.sum() and not (with_render & ~without).any()


def test_views_are_ordered_by_angle_and_chunked():
    cams = ring_cameras(12)
    order = [5, 0, 11, 3, 8, 1, 10, 2, 9, 4, 7, 6]
    views = [View(cams[i], t) for t in (0, 3) for i in order]
    groups = plan_groups(views, chunk_size=5)                       # default: one group per timestep
    assert len(groups) == 2 and all(len(g.members) == 12 and [len(c) for c in g.chunks] == [4, 4, 4] for g in groups)
    for g in groups:
        flat = [views[i].camera.index for c in g.chunks for i in c]
        assert flat == sorted(flat, reverse=flat[0] > flat[-1])
    (g,) = plan_groups(views, chunk_size=5, temporal_keys=True)
    assert len(g.members) == 24 and all(views[i].timestep == 0 for c in g.chunks for i in c)


# -- inpainting -----------------------------------------------------------------------------

def test_inpainting_reinjects_noised_originals_inside_the_mask_only(models):
    """Inside the mask, from the chosen step on, the latents after every step are the scaled
    ``encode().mode()`` of the original noised to the next step's level with one fixed noise, and
    the clean originals at the end; outside the mask, and before that step, nothing differs from an
    edit without inpainting. Catches: unscaled or sampled originals, the current instead of the
    next noise level, fresh noise per step, re-injection only at the end, a mask applied outside."""
    imgs = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:16, 10:20] = 1.0
    start, steps = 2, 6
    s = IP2PSettings(steps=steps, resolution=32, multiview=False, inpaint_start=start, inpaint_dilate=0)
    m1, m0 = stub_models(models, pointwise), stub_models(models, pointwise)
    out = edit_images(m1, imgs, "make it blue", s, masks=masks)
    ref = edit_images(m0, imgs, "make it blue", replace(s, inpaint=False), masks=masks)
    x0 = vae_mode(models, imgs) * models.vae.config.scaling_factor
    inside = (F.adaptive_max_pool2d(masks[:, None], (16, 16)) > 0.5).expand(-1, 4, -1, -1)
    assert torch.equal(out.masks.expand_as(inside) > 0.5, inside) and 0 < inside.float().mean() < 0.5
    torch.testing.assert_close(out.original_latents, x0, atol=1e-5, rtol=1e-5)

    lat = [r[2] for r in m1.scheduler.record] + [out.latents]     # latents entering each step, then the result
    lat0 = [r[2] for r in m0.scheduler.record] + [ref.latents]
    for i in range(start + 1):
        assert torch.equal(lat[i], lat0[i])
    for a, b in zip(lat, lat0):
        assert torch.equal(a[~inside], b[~inside])
    ts = [r[0] for r in m1.scheduler.record]
    ac = m1.scheduler.alphas_cumprod
    implied = [((lat[i + 1] - ac[ts[i + 1]].sqrt() * x0) / (1 - ac[ts[i + 1]]).sqrt())[inside] for i in range(start, steps - 1)]
    assert len(implied) >= 3
    for noise in implied[1:]:
        torch.testing.assert_close(noise, implied[0], atol=1e-4, rtol=1e-4)
    assert 0.7 < float(implied[0].std()) < 1.3
    torch.testing.assert_close(out.latents[inside], x0[inside], atol=1e-5, rtol=1e-5)
    assert (out.latents[~inside] - x0[~inside]).abs().mean() > 1e-2


def test_editor_conditions_every_round_on_a_copy_of_the_first_renders(models, monkeypatch):
    """Later rounds are conditioned on the first round's renders of each (camera, timestep), kept as a copy:
    a caller that renders the next round into the same tensor does not change them; a new view joins with
    its own first render. Catches originals kept as views of the caller's tensor, or replaced each round."""
    from edit3dgs.edit.ip2p import InstructPix2PixEditor

    cams = ring_cameras(3)
    ed = InstructPix2PixEditor(steps=2, resolution=32, inpaint=False, multiview=False)
    stub = stub_models(models, pointwise)
    monkeypatch.setattr(ed, "models", lambda: stub)
    conds = []
    real = ip2p.edit_images
    monkeypatch.setattr(ip2p, "edit_images", lambda m, images, *a, **k: conds.append(images.clone()) or real(m, images, *a, **k))
    buf = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    first = buf.clone()
    ed.edit(EditRequest(buf, cams[:2], [0, 0], "make it blue"))
    buf.fill_(0.25)                                   # the next round rendered into the same tensor
    ed.edit(EditRequest(buf, cams[:2], [0, 0], "make it blue"))
    third = torch.full((2, 32, 32, 3), 0.75)
    ed.edit(EditRequest(third, [cams[0], cams[2]], [0, 0], "make it blue"))
    assert torch.equal(conds[0], first) and torch.equal(conds[1], first)
    assert torch.equal(conds[2][0], first[0]) and torch.equal(conds[2][1], third[1])


def test_editor_inpaints_with_its_masks_minus_the_parts_the_instruction_targets(models, monkeypatch):
    """The editor's masks are the union of its inpainting regions, without the eyes for an eye edit and
    without the mouth for a lip edit, and the edit really re-injects inside them; the views carry the
    renders' depth and alpha for the FLAME-binding correspondences. Catches: masks not passed to the
    edit, the wrong regions, re-injecting the eyes of "green eyes" or the lips of "red lips", views
    without depth/alpha."""
    from edit3dgs.edit.ip2p import InstructPix2PixEditor

    cams = ring_cameras(2)
    imgs = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(5))

    def box(y0, y1, x0, x1):
        m = torch.zeros(2, 32, 32)
        m[:, y0:y1, x0:x1] = 1.0
        return m

    rmasks = {"eyes": box(6, 10, 4, 12), "eye_region": box(4, 12, 2, 14), "lips": box(22, 26, 10, 22)}
    depths, alphas = torch.full((2, 32, 32), 1.0), torch.ones(2, 32, 32)
    ed = InstructPix2PixEditor(steps=3, resolution=32, inpaint_dilate=0, inpaint_start=0)
    stub = stub_models(models, pointwise)
    monkeypatch.setattr(ed, "models", lambda: stub)
    seen = []
    real = ip2p.edit_images

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((kwargs, out))
        return out

    monkeypatch.setattr(ip2p, "edit_images", spy)
    cases = [("make it blue", {"eyes", "eye_region", "lips"}), ("give her green eyes", {"lips"}),
             ("red lips", {"eyes", "eye_region"}), ("whiter teeth and blue eyes", set())]
    for instruction, parts in cases:
        assert set(ed.regions_for(instruction)) == parts
        req = EditRequest(imgs, cams, [0, 0], instruction, region_masks={k: rmasks[k] for k in parts},
                          depths=depths, alphas=alphas, gaussian_means={0: torch.zeros(5, 3)})
        ed.edit(req)
        kwargs, out = seen[-1]
        if not parts:
            assert kwargs["masks"] is None
            continue
        expect = torch.stack([rmasks[p] for p in parts]).amax(0)
        assert torch.equal(kwargs["masks"], expect)
        inside = (F.adaptive_max_pool2d(expect[:, None], (16, 16)) > 0.5).expand(-1, 4, -1, -1)
        torch.testing.assert_close(out.latents[inside], out.original_latents[inside], atol=1e-5, rtol=1e-5)
        assert all(v.depth is not None and v.alpha is not None and v.means is not None for v in kwargs["views"])


# -- in the edit loop ---------------------------------------------------------------------------

def test_edit_command_with_a_model_whose_scheduler_config_lacks_the_ddim_keys(tiny_ip2p_dir, tmp_path, cli):
    """``edit3dgs edit --editor ip2p`` on a model folder with timbrooks' Euler scheduler config
    denoises at DDIM's timesteps (1000/steps apart, offset 1) and writes an edited avatar.
    Catches: timesteps without the offset, a missing scheduler override."""
    from edit3dgs.builtin import make_avatar

    avatar = make_avatar(tmp_path / "avatar", identity=0, frames=4, gaussians_per_face=1, sh_degree=0)
    folder = euler_config_folder(tiny_ip2p_dir, tmp_path / "euler-ip2p")
    m = load_ip2p(str(folder), device="cpu")
    seen = []
    hook = m.unet.register_forward_pre_hook(lambda mod, args: seen.append(int(args[1])))
    out = tmp_path / "edited"
    try:
        code, _, err = cli("edit", "--avatar", avatar, "--editor", "ip2p", "--model", folder,
                           "--prompt", "make him look older", "--cameras", "7,8", "--timesteps", "0", "--scale", 0.05,
                           "--iters-per-batch", 1, "--steps", 2, "--resolution", 32, "--device", "cpu",
                           "--batch-size", 2, "--key-neighbours", 1, "--out", out)
    finally:
        hook.remove()
        ip2p.clear_cache()
    assert code == 0, err
    assert sorted(set(seen), reverse=True) == [501, 1]
    rec = json.loads((out / "edit.json").read_text())
    assert rec["editor"] == "ip2p" and set(rec["regions_rendered"]) == {"eye_region", "eyes", "lips"}
    # the choices (only the flags given) and what the editor ran with (IP2PSettings' defaults for the rest)
    assert rec["settings"]["editor_options"] == {"model": str(folder), "steps": 2, "resolution": 32, "batch_size": 2,
                                                 "key_neighbours": 1, "device": "cpu"}
    eff = rec["editor_settings"]
    assert eff["multiview"] and eff["inpaint"] and eff["temporal_keys"] is False
    assert eff["batch_size"] == 2 and eff["key_neighbours"] == 1 and eff["steps"] == 2
    assert (out / "point_cloud.ply").is_file() and (out / "avatar.json").is_file()


def test_editor_options_and_errors(tiny_ip2p_dir):
    import argparse

    from edit3dgs.edit import make_editor
    from edit3dgs.cli.edit import add_ip2p_args, ip2p_options_from_args as options_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto")
    add_ip2p_args(p)
    a = p.parse_args(["--model", str(tiny_ip2p_dir), "--no-multiview", "--inpaint-regions", "eyes,lips",
                      "--inpaint-start", "3", "--mask-source", "detector", "--reedit-strength", "0.7",
                      "--temporal-keys", "--batch-size", "3", "--key-neighbours", "1", "--chunk-size", "4"])
    o = options_from_args(a)
    assert o["multiview"] is False and o["inpaint_regions"] == ["eyes", "lips"] and o["inpaint_start"] == 3
    ed = make_editor("ip2p", **o)
    assert ed.regions_for("make it blue") == [] and ed.reedit_strength == 0.7   # detector masks: none rendered
    st = ed.settings
    assert (st.temporal_keys, st.batch_size, st.key_neighbours, st.chunk_size) == (True, 3, 1, 4)
    d = options_from_args(p.parse_args([]))
    assert d == {}, "flags left out are not options: the editor's defaults (IP2PSettings) apply"
    assert make_editor("ip2p", **d).settings.temporal_keys is False
    assert make_editor("ip2p", temporal=True).settings.temporal_keys is True          # the old keyword still works
    for bad in (dict(reedit_strength=1.5), dict(mask_source="sam3"), dict(batch_size=0), dict(key_neighbours=3),
                dict(chunk_size=0)):
        with pytest.raises(Edit3DGSError):
            make_editor("ip2p", **bad)
    with pytest.raises(Edit3DGSError):
        make_editor("ip2p").regions_for("  ")


def test_loading_answers_a_cancel_between_components_and_caches_nothing(tiny_ip2p_dir, monkeypatch):
    """A cancel while the model loads (seconds per component from a slow disk) ends the load at the next
    component, as a cancel (not a 'no loadable weights' error), and leaves nothing half-loaded in the cache."""
    from edit3dgs import cancel
    from edit3dgs.errors import CancelledError

    monkeypatch.setattr(ip2p, "_MODELS", {})
    calls = []
    with cancel.watching(lambda: calls.append(1) or len(calls) >= 2):   # cancelled after the text encoder
        with pytest.raises(CancelledError):
            load_ip2p(str(tiny_ip2p_dir), device="cpu")
    assert ip2p._MODELS == {} and len(calls) == 2
    assert load_ip2p(str(tiny_ip2p_dir), device="cpu").unet is not None


def test_vae_encode_and_decode_answer_a_cancel(models):
    """A cancel reaches the VAE between chunks (a full-size VAE takes seconds per chunk on a CPU)."""
    from edit3dgs import cancel
    from edit3dgs.edit.ip2p import decode_latents, encode_images
    from edit3dgs.errors import CancelledError

    imgs = torch.rand(8, 32, 32, 3)
    calls = []

    def stop_after_one():   # the second chunk is refused
        calls.append(1)
        return len(calls) > 1

    for fn, x in ((encode_images, imgs), (decode_latents, encode_images(models, imgs))):
        calls.clear()
        with cancel.watching(stop_after_one), pytest.raises(CancelledError):
            fn(models, x, chunk=4)
        assert len(calls) == 2


def test_compiled_vae_sees_one_batch_shape_whatever_the_number_of_views(models, monkeypatch):
    """With the VAE compiled (static shapes), 6 views go through it as two batches of 4, the second padded, so
    it compiles once rather than once per remainder; the padding changes no real view's latents or pixels.
    Eager, the pieces are as they come."""
    from edit3dgs.edit.ip2p import decode_latents, encode_images

    imgs = torch.rand(6, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    eager_lat = encode_images(models, imgs)
    eager_img = decode_latents(models, eager_lat)
    seen = []
    enc, dec = models.vae.encode, models.vae.decode
    monkeypatch.setattr(models.vae, "encode", lambda x, *a, **k: seen.append(("enc", x.shape[0])) or enc(x, *a, **k))
    monkeypatch.setattr(models.vae, "decode", lambda z, *a, **k: seen.append(("dec", z.shape[0])) or dec(z, *a, **k))
    encode_images(models, imgs), decode_latents(models, eager_lat)
    assert seen == [("enc", 4), ("enc", 2), ("dec", 4), ("dec", 2)]
    seen.clear()
    monkeypatch.setattr(models, "compiled", "unet")
    lat = encode_images(models, imgs)
    img = decode_latents(models, lat)
    assert seen == [("enc", 4), ("enc", 4), ("dec", 4), ("dec", 4)]
    assert lat.shape == eager_lat.shape and img.shape == eager_img.shape
    torch.testing.assert_close(lat, eager_lat, atol=1e-5, rtol=0)
    torch.testing.assert_close(img, eager_img, atol=1e-5, rtol=0)


def test_compiled_models_run_channels_last_and_eager_ones_do_not(models, monkeypatch):
    """On CUDA, the UNet's and VAE's convolution weights are channels-last while compiled (inductor keeps NHWC
    through GroupNorm: faster there) and back to the contiguous layout when eager again (faster eagerly, where
    GroupNorm converts back and forth). CPU models are left as they are."""
    def layouts():
        return {name: getattr(m, name).weight.is_contiguous(memory_format=torch.channels_last)
                for m, name in ((models.unet, "conv_in"), (models.vae.decoder, "conv_out"))}

    assert not any(layouts().values())
    monkeypatch.setattr(models, "compiled", "unet")
    ip2p.tune(models)                       # a CPU: nothing changes
    assert not any(layouts().values())
    monkeypatch.setattr(models, "device", torch.device("cuda"))
    try:
        ip2p.tune(models)
        assert all(layouts().values())
        monkeypatch.setattr(models, "compiled", False)
        ip2p.tune(models)
        assert not any(layouts().values())
    finally:
        models.unet.to(memory_format=torch.contiguous_format)
        models.vae.to(memory_format=torch.contiguous_format)


def test_the_first_compiled_edit_at_a_size_says_it_compiles(models, monkeypatch):
    """Compiled, an edit at a size (or views per call) not edited before first reports that it compiles, as an
    "edit" stage (minutes pass before its first step); a second edit at that size does not, another size does
    again; eager edits never do. The add-on's progress bar counts it as the edit stage and shows its words, and
    leaves its minutes out of the stage shares the next edit's estimate uses."""
    import importlib.util
    from pathlib import Path

    imgs = torch.rand(2, 32, 32, 3)
    s = IP2PSettings(steps=2, resolution=32, inpaint=False, multiview=False)

    def stages(images, settings=s):
        got = []
        edit_images(models, images, "make it blue", settings, progress=lambda st, d, t: got.append(st))
        return [g for g in got if g == ip2p.COMPILE_STAGE]

    assert stages(imgs) == []                       # eager
    monkeypatch.setattr(models, "compiled", "unet")
    monkeypatch.setattr(models, "compiled_for", set())
    assert stages(imgs) == [ip2p.COMPILE_STAGE]
    assert stages(imgs) == []
    assert stages(imgs, replace(s, resolution=48)) == [ip2p.COMPILE_STAGE]    # a new latent size
    path = Path(__file__).resolve().parents[1] / "edit3dgs_addon" / "overall.py"
    spec = importlib.util.spec_from_file_location("overall_for_test", path)
    overall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overall)
    bar = overall.Overall(editor="ip2p", now=0.0)
    bar.update("render 1/1", 1, 1, now=1.0)
    bar.update(ip2p.COMPILE_STAGE, 0, 20, now=2.0)
    assert bar.kind == "edit" and bar.text(now=3.0).startswith(ip2p.COMPILE_STAGE)
    # The compile's minutes are paid once: the next edit's stage shares are those of the same job without them.
    def shares(compile_s, end_in_compile=False):
        b = overall.Overall(editor="ip2p", now=0.0)
        b.update("render", 4, 4, now=1.0)
        b.update(ip2p.COMPILE_STAGE, 0, 20, now=1.0)
        if end_in_compile:
            return b.measured_shares(now=1.0 + compile_s)
        for d in range(1, 21):
            b.update("edit", d, 20, now=1.0 + compile_s + 0.5 * d)
        b.update("refit", 50, 50, now=21.0 + compile_s)
        return b.measured_shares(now=22.0 + compile_s)

    plain = shares(0.0)
    for k, v in shares(120.0).items():
        assert abs(v - plain[k]) < 1e-9, (k, v, plain[k])
    assert shares(120.0, end_in_compile=True) is None     # no refit yet: nothing to learn from
