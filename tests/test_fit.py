"""Refit: local edits leave other Gaussians bit-identical, fitting reaches a recolour, densification keeps bindings valid."""

from __future__ import annotations

import pytest
import torch

from edit3dgs.bundle import open_avatar
from edit3dgs.cameras import load_cameras
from edit3dgs.edit.region import Step, colour_map, recolour_gaussians
from edit3dgs.errors import Edit3DGSError
from edit3dgs.fit import BindingDensify, RefitConfig, TargetBatch, TrainState, refit
from edit3dgs.metrics import psnr
from edit3dgs.render_avatar import render_frames


@pytest.fixture(scope="module")
def small_avatar(tmp_path_factory):
    from edit3dgs.builtin import make_avatar

    out = tmp_path_factory.mktemp("fit") / "avatar"
    make_avatar(out, identity=0, frames=6, gaussians_per_face=1, sh_degree=1)
    return out


def _targets(bundle, gaussians, ts=(0, 3), cams=(4, 8, 12), scale=0.12):
    cs = [c.scaled(scale) for c in load_cameras(bundle.folder / "cameras.json") if c.index in cams]
    verts = bundle.pose(timesteps=list(ts))
    out = []
    with torch.no_grad():
        for i, t in enumerate(ts):
            r = next(render_frames(bundle, verts[i:i + 1], cs, gaussians=gaussians))
            out.append(TargetBatch(t, verts[i], cs, r.rgb))
    return out


def _blue(bundle):
    return colour_map(Step("hair", "tint", (0.12, 0.26, 0.78), "blue"), torch.tensor([0.3, 0.19, 0.11]).numpy(), None)


def test_refit_moves_towards_recoloured_target(small_avatar):
    b = open_avatar(small_avatar)
    gt = recolour_gaussians(b.gaussians, b.gaussian_mask(["hair"]), _blue(b))
    batches = _targets(b, gt)
    before = _targets(b, b.gaussians)
    p0 = psnr(torch.cat([x.images for x in before]), torch.cat([x.images for x in batches]))
    res = refit(b.gaussians, b.head.faces, batches, RefitConfig(iters=30))
    after = _targets(b, res.gaussians)
    p1 = psnr(torch.cat([x.images for x in after]), torch.cat([x.images for x in batches]))
    assert p1 > p0 + 5, (p0, p1)
    assert res.iters == 30 and res.losses[-1] < res.losses[0]
    # the input avatar is not modified
    assert torch.equal(b.gaussians.features_dc, open_avatar(small_avatar).gaussians.features_dc)


def test_local_refit_leaves_other_gaussians_bit_identical(small_avatar):
    b = open_avatar(small_avatar)
    gt = recolour_gaussians(b.gaussians, b.gaussian_mask(["hair"]), _blue(b))
    hair = b.gaussian_mask(["hair"])
    res = refit(b.gaussians, b.head.faces, _targets(b, gt), RefitConfig(iters=6), trainable=hair)
    g, g0 = res.gaussians, b.gaussians
    assert g.num_gaussians == g0.num_gaussians
    assert torch.equal(g.binding, g0.binding)
    for name in g0.PARAM_NAMES:
        assert torch.equal(getattr(g, name)[~hair], getattr(g0, name)[~hair]), name
    assert not torch.equal(g.features_dc[hair], g0.features_dc[hair])


def test_fixed_stop_is_ten_iterations_per_batch(small_avatar):
    """The seed's option: exactly 10 x n iterations."""
    b = open_avatar(small_avatar)
    batches = _targets(b, b.gaussians, ts=(0, 2, 4), cams=(8,), scale=0.08)
    calls = []
    res = refit(b.gaussians, b.head.faces, batches, RefitConfig(stop="fixed"), progress=lambda s, d, n: calls.append((d, n)))
    assert res.iters == 30 and calls[-1] == (30, 30)


def test_converged_stop_ends_when_the_loss_stops_improving(small_avatar):
    """The default stops at a plateau (the target is the avatar itself: nothing to fit) before
    its cap of max_iters_per_batch x n, at the end of a window, and the progress bar still ends full."""
    b = open_avatar(small_avatar)
    batches = _targets(b, b.gaussians, ts=(0, 2, 4), cams=(8,), scale=0.08)
    calls = []
    cfg = RefitConfig(appearance_only=True, window=5)
    res = refit(b.gaussians, b.head.faces, batches, cfg, progress=lambda s, d, n: calls.append((d, n)))
    cap = cfg.max_iters_per_batch * 3
    assert res.iters < cap and res.iters % 5 == 0, res.iters
    assert calls[-1] == (res.iters, res.iters) and calls[0] == (1, cap)


def test_learning_rate_groups():
    cfg = RefitConfig(lrs="gaussian_avatars")
    assert cfg.group_lrs()["rotation"] == 1e-3 and cfg.group_lrs()["xyz"] == 5e-3
    assert RefitConfig(lr=0.02, lrs={"opacity": 0.05}).group_lrs() == {
        "xyz": 0.02, "features_dc": 0.02, "features_rest": 0.02, "opacity": 0.05, "scaling": 0.02, "rotation": 0.02}
    with pytest.raises(Edit3DGSError, match="colour"):
        RefitConfig(lrs={"colour": 1.0}).group_lrs()
    assert set(RefitConfig().group_lrs().values()) != {RefitConfig().lr}  # per-group rates by default
    assert set(RefitConfig(lrs="seed").group_lrs().values()) == {1e-2}
    for bad, word in ((dict(lrs="fast"), "preset"), (dict(sh_rest="keep"), "sh_rest"), (dict(stop="never"), "stop"),
                      (dict(window=0), "window"), (dict(lr_drop=2.0), "lr_drop")):
        with pytest.raises(Edit3DGSError, match=word):
            RefitConfig(**bad).check()


def test_appearance_only_keeps_geometry_and_few_views_keep_sh_rest(small_avatar):
    """A colour edit refit appearance-only leaves position, scale, rotation, opacity bit-identical;
    with few cameras (here 3 < 8) the view-dependent SH is held, with many it is free."""
    b = open_avatar(small_avatar)
    gt = recolour_gaussians(b.gaussians, b.gaussian_mask(["hair"]), _blue(b))
    res = refit(b.gaussians, b.head.faces, _targets(b, gt, ts=(0,)), RefitConfig(iters=4, appearance_only=True))
    g, g0 = res.gaussians, b.gaussians
    for name in ("xyz", "scaling", "rotation", "opacity", "features_rest"):
        assert torch.equal(getattr(g, name), getattr(g0, name)), name
    assert not torch.equal(g.features_dc, g0.features_dc)
    assert res.frozen == ["features_rest", "opacity", "rotation", "scaling", "xyz"]
    assert RefitConfig(appearance_only=True).frozen_groups(16) == {"xyz", "scaling", "rotation", "opacity"}
    assert RefitConfig(sh_rest="hold").frozen_groups(16) == {"features_rest"}
    assert RefitConfig().frozen_groups(16) == set() and RefitConfig.seed_recipe().frozen_groups(4) == set()




def test_densify_clones_inherit_binding_and_faces_keep_a_gaussian(small_avatar):
    b = open_avatar(small_avatar)
    g0 = b.gaussians
    F = b.head.n_faces
    hair = b.gaussian_mask(["hair"])
    state = TrainState(g0, hair)
    opt = torch.optim.Adam([{"params": [state.params[k]], "lr": 1e-2, "name": k} for k in state.params], eps=1e-15)
    # one optimiser step so that Adam has state to carry over
    loss = sum(p.square().sum() for p in state.params.values())
    loss.backward()
    opt.step()
    M = state.num_trainable
    strat = BindingDensify(grad_threshold=-1.0, prune_opacity=2.0, max_new_fraction=0.25)  # clone many, prune all
    strat.grad_accum = torch.rand(M)
    strat.count = torch.ones(M)
    info = strat.refine(state, opt, F)
    assert info["cloned"] == int(0.25 * M)
    # every face of the trainable set keeps exactly one Gaussian (its most opaque), none of the others lost
    faces_before = set(g0.binding[hair].tolist())
    assert set(state.binding.tolist()) == faces_before
    assert torch.bincount(state.binding, minlength=F).max() == 1
    for k, p in state.params.items():
        assert p.shape[0] == state.num_trainable
        assert opt.state[p]["exp_avg"].shape == p.shape, k
    out = state.result()
    in_hair = torch.zeros(F, dtype=torch.bool)
    in_hair[g0.binding[hair]] = True
    assert torch.equal(out.binding[~in_hair[out.binding]], g0.binding[~hair])  # frozen rows kept, in order
    assert torch.equal(out.features_dc[~in_hair[out.binding]], g0.features_dc[~hair])
    assert torch.bincount(out.binding, minlength=F).min() >= 1  # no face lost its last Gaussian


def test_refit_with_densification_keeps_bindings_valid(small_avatar):
    b = open_avatar(small_avatar)
    gt = recolour_gaussians(b.gaussians, b.gaussian_mask(["hair"]), _blue(b))
    strat = BindingDensify(grad_threshold=0.0, every=3, start=2, max_new_fraction=0.05)
    res = refit(b.gaussians, b.head.faces, _targets(b, gt), RefitConfig(iters=8), strategy=strat)
    g = res.gaussians
    assert g.num_gaussians > b.gaussians.num_gaussians
    assert res.densify_log and res.densify_log[0]["cloned"] > 0
    assert int(g.binding.min()) >= 0 and int(g.binding.max()) < b.head.n_faces
    assert torch.bincount(g.binding, minlength=b.head.n_faces).min() >= 1
    # clones are appended and inherit a binding of an existing Gaussian
    new = g.binding[b.gaussians.num_gaussians:]
    assert set(new.tolist()) <= set(b.gaussians.binding.tolist())


def test_refit_placement_equals_the_binding_transform_of_the_full_avatar(small_avatar):
    """TrainState.world (frames gathered once per batch and binding, frozen rows placed once) gives what
    placing ``full()`` gives — values and gradients — before and after densification changes the rows."""
    import torch.nn.functional as F

    from edit3dgs.avatar import posed_frames

    b = open_avatar(small_avatar)
    g = b.gaussians.clone()
    g.rotation = torch.randn_like(g.rotation)          # unnormalised local rotations, as during a fit
    trainable = torch.zeros(g.num_gaussians, dtype=torch.bool)
    trainable[::3] = True
    state = TrainState(g, trainable)
    opt = torch.optim.Adam([{"params": [state.params[k]], "name": k} for k in state.params])
    frames = [posed_frames(v, b.head.faces) for v in b.pose(timesteps=[0, 4])]

    def check(key):
        got, want = state.world(key, frames[key]), state.full().to_world_from_frames(frames[key])
        torch.testing.assert_close(got.means, want.means, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(F.normalize(got.quats, dim=-1), want.quats, atol=1e-6, rtol=1e-5)
        for a, w in ((got.scales, want.scales), (got.opacities, want.opacities), (got.sh, want.sh)):
            torch.testing.assert_close(a, w)
        grads = []
        for w in (got, want):
            loss = (w.means.sin().sum() + F.normalize(w.quats, dim=-1)[:, 1].sum() + w.scales.sum() + w.opacities.sum()
                    + w.sh.square().sum())
            grads.append(torch.autograd.grad(loss, [state.params[k] for k in ("xyz", "rotation", "scaling", "opacity",
                                                                               "features_dc")]))
        for a, w in zip(*grads):
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-4)

    check(0), check(1), check(0)                        # a second call per batch uses the cached frames
    rows = torch.arange(0, state.num_trainable, 5)
    state.replace(opt, keep=torch.rand(state.num_trainable, generator=torch.Generator().manual_seed(0)) > 0.2,
                  append_from=rows)                     # densify: prune some rows, clone others
    check(0), check(1)
