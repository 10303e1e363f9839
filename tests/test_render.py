"""edit3dgs.render: conventions of the rasterizer (torch backend, on CPU).

Every test builds its scene in code and runs in a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edit3dgs.render import C0, RGB2SH, SH2RGB, eval_sh, rasterize
from edit3dgs.render.torch_raster import ALPHA_MAX, ALPHA_MIN, T_MIN, project

W, H = 64, 48
FX, FY, CX, CY = 80.0, 90.0, 27.0, 21.0


def camera(C: int = 1, dtype=torch.float32):
    """Identity pose (camera at the origin looking down +z), off-centre principal point."""
    viewmats = torch.eye(4, dtype=dtype).expand(C, 4, 4).clone()
    K = torch.tensor([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return viewmats, K.expand(C, 3, 3).clone()


def gaussian(xyz, scale=0.01, opacity=0.99, rgb=(1.0, 0.5, 0.25), dtype=torch.float32):
    """One isotropic Gaussian at camera-space ``xyz``."""
    return dict(
        means=torch.tensor([xyz], dtype=dtype),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        scales=torch.full((1, 3), scale, dtype=dtype),
        opacities=torch.tensor([opacity], dtype=dtype),
        colors=torch.tensor([rgb], dtype=dtype),
    )


def random_scene(n: int, seed: int = 0, dtype=torch.float32, sh_degree=None):
    """``n`` Gaussians in front of ``camera()``, overlapping, mixed sizes."""
    g = torch.Generator().manual_seed(seed)
    z = 1.0 + torch.rand(n, generator=g, dtype=dtype)
    xy = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * torch.tensor([0.7, 0.5], dtype=dtype)
    scene = dict(
        means=torch.cat([xy * z[:, None], z[:, None]], dim=1),
        quats=F.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1),
        scales=0.01 + 0.06 * torch.rand(n, 3, generator=g, dtype=dtype),
        opacities=0.2 + 0.75 * torch.rand(n, generator=g, dtype=dtype),
    )
    if sh_degree is None:
        scene["colors"] = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        scene["colors"] = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
    return scene


def brute_force(scene, viewmats, Ks, width, height, background=None):
    """Reference compositor: every pixel against every Gaussian, one Gaussian at a time,
    with gsplat's rules written out literally (RGB colours only)."""
    proj = project(scene["means"], scene["quats"], scene["scales"], scene["opacities"], viewmats, Ks, width, height)
    C = viewmats.shape[0]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    rgb = torch.zeros(C, height, width, 3, dtype=scene["means"].dtype)
    alpha_out = torch.zeros(C, height, width, 1, dtype=rgb.dtype)
    depth = torch.zeros_like(alpha_out)
    for c in range(C):
        T = torch.ones(height, width, dtype=rgb.dtype)
        done = torch.zeros(height, width, dtype=torch.bool)
        ids = proj.visible[c].nonzero().squeeze(1)
        ids = ids[torch.argsort(proj.depths[c, ids])]
        for i in ids.tolist():
            (mx, my), (a, b, cc) = proj.means2d[c, i], proj.conics[c, i]
            dx, dy = xs - mx, ys - my
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp(scene["opacities"][i] * torch.exp(-sigma), max=ALPHA_MAX)
            use = ~done & (sigma >= 0) & (alpha >= ALPHA_MIN)
            next_T = T * (1 - alpha)
            stop = use & (next_T <= T_MIN)
            done |= stop
            use &= ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            rgb[c] += w[..., None] * scene["colors"][i]
            alpha_out[c, ..., 0] += w
            depth[c, ..., 0] += w * proj.depths[c, i]
            T = torch.where(use, next_T, T)
        if background is not None:
            rgb[c] += (1 - alpha_out[c]) * background
    depth = depth / alpha_out.clamp_min(1e-10)
    return rgb, alpha_out, depth


def test_gaussian_lands_where_K_says():
    # Camera-space point (X, Y, Z) -> pixel (fx X/Z + cx, fy Y/Z + cy); pixel
    # (row i, col j) has its centre at (j + 0.5, i + 0.5); y points down.
    X, Y, Z = 0.1, 0.05, 2.0
    u, v = FX * X / Z + CX, FY * Y / Z + CY  # (31, 23.25)
    viewmats, Ks = camera()
    out = rasterize(**gaussian((X, Y, Z), scale=0.004), viewmats=viewmats, Ks=Ks, width=W, height=H)
    assert out.backend == "torch"
    a = out.alpha[0, ..., 0]
    row, col = divmod(int(torch.argmax(a)), W)
    assert (col, row) == (int(u), int(v))
    # sub-pixel: the alpha-weighted centroid of the blob is the projected point
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    assert float((a * xs).sum() / a.sum()) == pytest.approx(u, abs=0.05)
    assert float((a * ys).sum() / a.sum()) == pytest.approx(v, abs=0.05)
    # moving the point down in camera space moves it down the image
    out2 = rasterize(**gaussian((X, Y + 0.1, Z), scale=0.004), viewmats=viewmats, Ks=Ks, width=W, height=H)
    row2, _ = divmod(int(torch.argmax(out2.alpha[0, ..., 0])), W)
    assert row2 > row


def test_opaque_gaussian_colour_alpha_depth():
    viewmats, Ks = camera()
    rgb = (0.9, 0.2, 0.4)
    # placed on the centre of pixel (row 21, col 27): u = 27.5, v = 21.5
    xyz = (0.5 / FX * 1.5, 0.5 / FY * 1.5, 1.5)
    out = rasterize(**gaussian(xyz, scale=0.05, opacity=1.0, rgb=rgb), viewmats=viewmats, Ks=Ks, width=W, height=H)
    centre = (int(CY), int(CX))
    assert out.alpha[0, *centre, 0].item() == pytest.approx(ALPHA_MAX, abs=1e-3)
    assert out.rgb[0, *centre].tolist() == pytest.approx([c * ALPHA_MAX for c in rgb], abs=2e-3)
    assert out.depth[0, *centre, 0].item() == pytest.approx(1.5, abs=1e-5)
    # expected depth is the Gaussian's z wherever it contributes, 0 elsewhere
    hit = out.alpha[0, ..., 0] > 0
    assert not hit.all() and hit.any()
    assert torch.allclose(out.depth[0][hit], torch.tensor(1.5))
    assert (out.depth[0][~hit] == 0).all() and (out.rgb[0][~hit] == 0).all()
    # alpha below 1/255 is skipped: the footprint ends at o exp(-q/2) = 1/255
    assert out.alpha[0][hit].min().item() >= ALPHA_MIN - 1e-6


def test_matches_brute_force_compositor():
    scene = random_scene(60, seed=1)
    viewmats, Ks = camera(2)
    viewmats[1, 0, 3] = 0.05  # second camera shifted
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, tile_size=16)
    ref_rgb, ref_alpha, ref_depth = brute_force(scene, viewmats, Ks, W, H, background=bg)
    assert torch.allclose(out.rgb, ref_rgb, atol=2e-5)
    assert torch.allclose(out.alpha, ref_alpha, atol=2e-5)
    assert torch.allclose(out.depth, ref_depth, atol=1e-4)
    # the tile size changes nothing but speed
    out8 = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg, tile_size=8)
    assert torch.allclose(out8.rgb, out.rgb, atol=2e-5)


def test_early_stop_at_transmittance_floor():
    # Six layers of opacity 0.95 on one pixel centre: T = 0.05, 0.0025, 1.25e-4,
    # then the fourth would bring it to 6.25e-6 <= 1e-4, so it and all behind are dropped.
    n = 6
    z = 1.0 + 0.1 * torch.arange(n, dtype=torch.float32)
    scene = dict(
        means=torch.stack([0.5 / FX * z, 0.5 / FY * z, z], dim=1),
        quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(),
        scales=torch.full((n, 3), 0.2),
        opacities=torch.full((n,), 0.95),
        colors=torch.eye(3)[torch.arange(n) % 3],
    )
    viewmats, Ks = camera()
    out = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H)
    ref = brute_force(scene, viewmats, Ks, W, H)
    assert torch.allclose(out.rgb, ref[0], atol=1e-5)
    centre = out.rgb[0, int(CY), int(CX)]
    assert centre.tolist() == pytest.approx([0.95, 0.95 * 0.05, 0.95 * 0.0025], rel=1e-4)
    assert out.alpha[0, int(CY), int(CX), 0].item() == pytest.approx(1 - 1.25e-4, abs=1e-6)


def test_background_compositing():
    viewmats, Ks = camera(2)
    scene = gaussian((0.0, 0.0, 1.0), scale=0.02, opacity=0.5, rgb=(1.0, 0.0, 0.0))
    black = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H)
    bg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg)
    assert torch.allclose(out.rgb, black.rgb + (1 - black.alpha) * bg[:, None, None, :], atol=1e-6)
    assert torch.allclose(out.alpha, black.alpha) and torch.allclose(out.depth, black.depth)
    assert out.rgb[1, 0, 0].tolist() == [0.0, 1.0, 0.0]  # empty pixel shows the background
    one = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H, background=torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(one.rgb[0], out.rgb[0])


def test_sh_basics():
    rgb = torch.tensor([[0.2, 0.5, 0.9]])
    assert C0 == 0.28209479177387814
    assert torch.allclose(SH2RGB(RGB2SH(rgb)), rgb)
    sh = torch.zeros(1, 16, 3)
    sh[:, 0] = RGB2SH(rgb)
    dirs = torch.randn(5, 3)
    for d in range(4):
        assert torch.allclose(eval_sh(d, sh.expand(5, 16, 3), dirs) + 0.5, rgb.expand(5, 3), atol=1e-5)
    # first band: -C1 y, +C1 z, -C1 x (3DGS/gsplat sign convention)
    sh1 = torch.zeros(3, 4, 1)
    sh1[0, 1] = sh1[1, 2] = sh1[2, 3] = 1.0
    val = eval_sh(1, sh1, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(val[:, 0], torch.full((3,), 0.4886025119029199) * torch.tensor([-1.0, 1.0, -1.0]))


def test_sh_view_dependence():
    # Same Gaussian seen from two cameras: degree 0 ignores the view, degree 3 does not.
    g = torch.Generator().manual_seed(0)
    sh = 0.5 * torch.randn(1, 16, 3, generator=g)
    sh[:, 0] = RGB2SH(torch.tensor([0.5, 0.5, 0.5]))
    base = gaussian((0.0, 0.0, 0.0), scale=0.03, opacity=0.9)
    base["colors"] = sh
    viewmats = torch.eye(4).expand(2, 4, 4).clone()
    viewmats[:, 2, 3] = 1.0  # camera 0 at z = -1 looking along +z
    ang = math.radians(60)
    R = torch.tensor([[math.cos(ang), 0, -math.sin(ang)], [0, 1, 0], [math.sin(ang), 0, math.cos(ang)]])
    viewmats[1, :3, :3] = R  # camera 1 orbits the point, still 1 m away
    _, Ks = camera(2)
    px = (int(CY), int(CX))
    out0 = rasterize(**base, viewmats=viewmats, Ks=Ks, width=W, height=H, sh_degree=0)
    out3 = rasterize(**base, viewmats=viewmats, Ks=Ks, width=W, height=H, sh_degree=3)
    assert torch.allclose(out0.rgb[0][px], out0.rgb[1][px], atol=1e-4)
    assert (out3.rgb[0][px] - out3.rgb[1][px]).abs().max() > 0.05
    # and the colour equals clamp(eval_sh(dir from the camera centre) + 0.5, 0) * alpha
    for c in range(2):
        centre = -(viewmats[c, :3, :3].T @ viewmats[c, :3, 3])
        expect = torch.clamp_min(eval_sh(3, sh, base["means"] - centre) + 0.5, 0)[0]
        assert torch.allclose(out3.rgb[c][px], expect * out3.alpha[c][px], atol=1e-4)


def test_batch_of_cameras_equals_one_at_a_time():
    scene = random_scene(40, seed=3, sh_degree=2)
    viewmats, Ks = camera(3)
    viewmats[1, :3, 3] = torch.tensor([0.05, -0.02, 0.1])
    viewmats[2, :3, 3] = torch.tensor([-0.1, 0.03, 0.2])
    Ks[2, 0, 2] = 35.0
    batch = rasterize(**scene, viewmats=viewmats, Ks=Ks, width=W, height=H, sh_degree=2)
    assert batch.rgb.shape == (3, H, W, 3) and batch.alpha.shape == (3, H, W, 1) and batch.depth.shape == (3, H, W, 1)
    for c in range(3):
        single = rasterize(**scene, viewmats=viewmats[c : c + 1], Ks=Ks[c : c + 1], width=W, height=H, sh_degree=2)
        assert torch.allclose(single.rgb[0], batch.rgb[c], atol=1e-5)     # float32 compositing, batched order
        assert torch.allclose(single.depth[0], batch.depth[c], atol=1e-5)
    assert not torch.allclose(batch.rgb[0], batch.rgb[1])


def test_culling_near_far_and_offscreen():
    viewmats, Ks = camera()
    kw = dict(viewmats=viewmats, Ks=Ks, width=W, height=H)
    assert rasterize(**gaussian((0.0, 0.0, 0.005)), **kw).alpha.max() == 0  # before near
    assert rasterize(**gaussian((0.0, 0.0, -1.0)), **kw).alpha.max() == 0  # behind
    assert rasterize(**gaussian((0.0, 0.0, 3.0)), **kw, far=2.0).alpha.max() == 0  # beyond far
    assert rasterize(**gaussian((5.0, 0.0, 1.0)), **kw).alpha.max() == 0  # off-screen
    assert rasterize(**gaussian((0.0, 0.0, 1.0), opacity=0.003), **kw).alpha.max() == 0  # < 1/255
    assert rasterize(**gaussian((0.0, 0.0, 3.0)), **kw, far=4.0).alpha.max() > 0


def test_empty_view_shows_background_and_backpropagates():
    viewmats, Ks = camera()
    bg = torch.tensor([0.1, 0.2, 0.3])
    params = {k: v.requires_grad_(True) for k, v in gaussian((0.0, 0.0, -1.0)).items()}  # behind
    out = rasterize(**params, viewmats=viewmats, Ks=Ks, width=W, height=H, background=bg)
    assert torch.equal(out.rgb, bg.expand(1, H, W, 3)) and out.alpha.max() == 0 and out.depth.max() == 0
    out.rgb.sum().backward()  # a view that sees nothing must not break a training step
    assert all(p.grad is not None and (p.grad == 0).all() for p in params.values())
    none = rasterize(**{k: v[:0] for k, v in gaussian((0, 0, 1.0)).items()}, viewmats=viewmats, Ks=Ks, width=W, height=H)
    assert none.rgb.shape == (1, H, W, 3) and none.alpha.max() == 0


def _tiny_scene_float64():
    scene = random_scene(5, seed=7, dtype=torch.float64, sh_degree=1)
    scene["scales"] = scene["scales"] * 0.6 + 0.02
    scene["opacities"] = scene["opacities"].clamp(0.2, 0.8)  # away from the 0.999 clamp
    return scene


@pytest.mark.parametrize("name", ["means", "quats", "scales", "opacities", "colors"])
def test_gradients_match_finite_differences(name):
    scene = _tiny_scene_float64()
    viewmats, Ks = camera(2, dtype=torch.float64)
    viewmats[1, :3, 3] = torch.tensor([0.03, 0.01, 0.05], dtype=torch.float64)
    w, h = 24, 20
    Ks[:, 0, 2], Ks[:, 1, 2] = 12.3, 9.6
    Ks[:, 0, 0] = Ks[:, 1, 1] = 30.0
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    wr, wa, wd = (torch.rand(2, h, w, k, generator=g, dtype=torch.float64) for k in (3, 1, 1))

    def loss(params):
        out = rasterize(**params, viewmats=viewmats, Ks=Ks, width=w, height=h, sh_degree=1, background=bg, tile_size=8)
        return (out.rgb * wr).sum() + (out.alpha * wa).sum() + (out.depth * wd).sum()

    params = {k: v.clone().requires_grad_(k == name) for k, v in scene.items()}
    loss(params).backward()
    grad = params[name].grad
    assert grad is not None and grad.abs().sum() > 0

    x = scene[name]
    numeric = torch.zeros_like(x)
    eps = 1e-6
    for i in range(x.numel()):
        plus = {k: v.clone() for k, v in scene.items()}
        minus = {k: v.clone() for k, v in scene.items()}
        plus[name].view(-1)[i] += eps
        minus[name].view(-1)[i] -= eps
        with torch.no_grad():
            numeric.view(-1)[i] = (loss(plus) - loss(minus)) / (2 * eps)
    # pixels near the 1/255 footprint edge make the loss slightly discontinuous;
    # compare with a tolerance that a wrong derivation would never meet
    assert torch.allclose(grad, numeric, rtol=1e-3, atol=1e-3 * numeric.abs().max().item()), (grad, numeric)


def test_gradients_reach_every_gaussian_float32():
    scene = random_scene(30, seed=5)
    viewmats, Ks = camera()
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out = rasterize(**params, viewmats=viewmats, Ks=Ks, width=W, height=H)
    (out.rgb.sum() + out.depth.sum()).backward()
    for k, p in params.items():
        assert torch.isfinite(p.grad).all(), k
        assert (p.grad.reshape(30, -1).abs().sum(1) > 0).sum() >= 25, k


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(means=torch.zeros(3, 2)), "means must have shape"),
        (dict(quats=torch.zeros(2, 4)), "quats must have shape"),
        (dict(scales=torch.zeros(3)), "scales must have shape"),
        (dict(opacities=torch.zeros(3, 1)), "opacities must have shape"),
        (dict(colors=torch.zeros(3, 4)), "colors must have shape"),
        (dict(colors=torch.zeros(3, 3), sh_degree=1), "colors must have shape"),
        (dict(colors=torch.zeros(3, 3, 3), sh_degree=2), "needs 9"),
        (dict(sh_degree=4, colors=torch.zeros(3, 25, 3)), "sh_degree"),
        (dict(viewmats=torch.zeros(1, 3, 4)), "viewmats must have shape"),
        (dict(Ks=torch.zeros(2, 3, 3)), "Ks must have shape"),
        (dict(width=0), "width"),
        (dict(height=10.5), "height"),
        (dict(background=torch.zeros(4)), "background must have shape"),
        (dict(near=1.0, far=0.5), "near"),
        (dict(backend="vulkan"), "backend"),
        (dict(means=torch.zeros(3, 3, dtype=torch.int64)), "floating"),
    ],
)
def test_bad_shapes_raise(change, message):
    args = dict(
        means=torch.zeros(3, 3), quats=torch.zeros(3, 4), scales=torch.zeros(3, 3),
        opacities=torch.zeros(3), colors=torch.zeros(3, 3),
        viewmats=torch.eye(4)[None], Ks=torch.eye(3)[None], width=8, height=8,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        rasterize(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_gsplat_backend_needs_cuda():
    viewmats, Ks = camera()
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(**gaussian((0, 0, 1.0)), viewmats=viewmats, Ks=Ks, width=W, height=H, backend="gsplat")
