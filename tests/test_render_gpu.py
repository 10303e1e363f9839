"""Parity of the two renderer backends: gsplat (CUDA) vs the pure-torch fallback.

Skipped without CUDA and gsplat. The scene comes from the ``head_gaussians``
fixture (a synthetic head-like cloud for now; swap in the built-in avatar
by redefining that fixture, e.g. in a conftest).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("gsplat")

from edit3dgs.render import RGB2SH, rasterize  # noqa: E402

WIDTH, HEIGHT = 550, 802


@pytest.fixture(scope="module")
def head_gaussians() -> dict:
    """World-space Gaussians of a head (metres, face towards +z), on CUDA:
    ``means, quats, scales, opacities, colors (N,16,3), sh_degree=3``.

    ~20k random blobs on an ellipsoid shell of a head's size, opacities mostly
    high, SH degree 3 with a skin-like DC term."""
    n = 20_000
    g = torch.Generator().manual_seed(0)
    semi_axes = torch.tensor([0.08, 0.11, 0.095])
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * semi_axes * (1.0 + 0.02 * torch.randn(n, 1, generator=g))
    spacing = math.sqrt(4 * math.pi * 0.095**2 / n)
    sh = 0.05 * torch.randn(n, 16, 3, generator=g)
    sh[:, 0] = RGB2SH(torch.tensor([0.8, 0.6, 0.5]) + 0.15 * torch.randn(n, 3, generator=g))
    scene = dict(
        means=means,
        quats=F.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=spacing * 0.5 * torch.exp(0.35 * torch.randn(n, 3, generator=g)),
        opacities=torch.sigmoid(1.5 + 1.5 * torch.randn(n, generator=g)),
        colors=sh,
    )
    scene = {k: v.cuda() for k, v in scene.items()}
    scene["sh_degree"] = 3
    return scene


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    """World-to-camera (OpenCV axes) from ``eye`` towards the origin, y up."""
    f = F.normalize(-eye, dim=0)
    r = F.normalize(torch.linalg.cross(f, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    R = torch.stack([r, torch.linalg.cross(f, r), f])
    view = torch.eye(4)
    view[:3, :3] = R
    view[:3, 3] = -R @ eye
    return view


@pytest.fixture(scope="module")
def cameras():
    """Five cameras 1 m from the head, from its right to its left, slightly
    above and below; off-centre principal points."""
    views, Ks = [], []
    for i, yaw in enumerate((-50.0, -20.0, 0.0, 25.0, 55.0)):
        pitch = math.radians((-10.0, 5.0, 0.0, 12.0, -5.0)[i])
        yaw = math.radians(yaw)
        eye = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        views.append(_look_at(eye))
        f = 2400.0 + 100.0 * i
        Ks.append(torch.tensor([[f, 0.0, WIDTH / 2 + 7.0 * i], [0.0, f, HEIGHT / 2 - 5.0 * i], [0.0, 0.0, 1.0]]))
    return torch.stack(views).cuda(), torch.stack(Ks).cuda()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _render(scene, viewmats, Ks, backend, background=None):
    s = dict(scene)
    sh_degree = s.pop("sh_degree")
    return rasterize(
        **s, viewmats=viewmats, Ks=Ks, width=WIDTH, height=HEIGHT,
        sh_degree=sh_degree, background=background, backend=backend,
    )


def test_auto_picks_gsplat_on_cuda(head_gaussians, cameras):
    out = _render(head_gaussians, cameras[0][:1], cameras[1][:1], "auto")
    assert out.backend == "gsplat"


def test_gsplat_and_torch_agree(head_gaussians, cameras):
    viewmats, Ks = cameras
    bg = torch.rand(len(viewmats), 3, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        ref = _render(head_gaussians, viewmats, Ks, "gsplat", bg)
        out = _render(head_gaussians, viewmats, Ks, "torch", bg)
    assert out.backend == "torch" and ref.backend == "gsplat"
    assert out.rgb.shape == ref.rgb.shape == (len(viewmats), HEIGHT, WIDTH, 3)
    assert ref.alpha.mean() > 0.2  # the head fills a good part of every image
    for c in range(len(viewmats)):
        psnr_rgb, psnr_alpha = _psnr(out.rgb[c], ref.rgb[c]), _psnr(out.alpha[c], ref.alpha[c])
        print(f"camera {c}: PSNR rgb {psnr_rgb:.1f} dB, alpha {psnr_alpha:.1f} dB")
        assert psnr_rgb >= 40.0 and psnr_alpha >= 40.0, (c, psnr_rgb, psnr_alpha)
    # expected depth agrees where the head is opaque (metres; the head is ~1 m away)
    solid = (ref.alpha > 0.5) & (out.alpha > 0.5)
    assert (out.depth[solid] - ref.depth[solid]).abs().mean() < 1e-3
    assert (out.depth[out.alpha == 0] == 0).all() and (ref.depth[ref.alpha == 0] == 0).all()


def test_gradients_agree(head_gaussians, cameras):
    viewmats, Ks = cameras
    sh_degree = head_gaussians["sh_degree"]
    base = {k: v for k, v in head_gaussians.items() if k != "sh_degree"}
    target = torch.rand(len(viewmats), HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(2)).cuda()
    grads = {}
    for backend in ("gsplat", "torch"):
        params = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        out = rasterize(**params, viewmats=viewmats, Ks=Ks, width=WIDTH, height=HEIGHT, sh_degree=sh_degree, backend=backend)
        loss = ((out.rgb - target) ** 2).mean() + out.alpha.mean()
        loss.backward()
        grads[backend] = {k: p.grad.flatten() for k, p in params.items()}
    for k in base:
        cos = F.cosine_similarity(grads["gsplat"][k], grads["torch"][k], dim=0).item()
        print(f"gradient {k}: cosine gsplat vs torch {cos:.5f}")
        assert cos > 0.99, (k, cos)


def test_gsplat_and_fallback_agree_on_the_builtin_avatar(tmp_path):
    """The issue's check: the built-in avatar posed mid-sequence, all 16 rig cameras at 550x802."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import camera_rig, stack

    b = open_avatar(make_avatar(tmp_path / "avatar", frames=8, gaussians_per_face=3), device="cuda")
    g = b.world(b.pose(timesteps=[5])[0])
    vm, K, w, h = stack(camera_rig(), "cuda")
    bg = torch.ones(3, device="cuda")
    out = {be: rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=3, background=bg,
                         backend=be) for be in ("gsplat", "torch")}
    psnrs = [_psnr(out["gsplat"].rgb[i], out["torch"].rgb[i]) for i in range(16)]
    print(f"builtin avatar gsplat vs fallback PSNR per camera: min {min(psnrs):.1f} dB, mean {sum(psnrs) / 16:.1f} dB")
    assert min(psnrs) >= 40.0


def test_graph_replayed_posing_equals_the_eager_path(tmp_path):
    """WorldPoser's CUDA-graph replay gives the eager posing's world Gaussians, also when the replay
    gets new FLAME parameters (the inputs are copied into the graph's buffers)."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.posing import WorldPoser

    b = open_avatar(make_avatar(tmp_path / "a", frames=6), device="cuda")
    graphed, eager = WorldPoser(b, graphs=True), WorldPoser(b, graphs=False)
    for ts in ([0], [3], [1, 2, 4], [5, 0, 2]):   # the second call of each length is a replay
        p = b.params.select(ts)
        got = [(g.means.clone(), g.quats.clone(), g.scales.clone()) for g in graphed.pose_and_place(p)]
        want = eager.pose_and_place(p)
        for (m, q, s), w in zip(got, want):
            assert torch.allclose(m, w.means, atol=1e-6) and torch.allclose(q, w.quats, atol=1e-6)
            assert torch.allclose(s, w.scales, rtol=1e-6)
    assert graphed.graphs, graphed.graph_error
    assert len(graphed._graphs) == 2, "captured once per number of timesteps"


def test_compiled_and_replayed_posing_equals_the_eager_path(tmp_path):
    """--compile-posing: inductor's fused kernels, captured in the CUDA graph, give the eager world Gaussians."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.posing import WorldPoser

    b = open_avatar(make_avatar(tmp_path / "a", frames=6), device="cuda")
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled, eager = WorldPoser(b, compile=True), WorldPoser(b, graphs=False)
    for ts in ([0], [3], [1, 2, 4]):
        p = b.params.select(ts)
        got = [(g.means.clone(), g.quats.clone(), g.scales.clone()) for g in compiled.pose_and_place(p)]
        for (m, q, s), w in zip(got, eager.pose_and_place(p)):
            torch.testing.assert_close(m, w.means, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q, w.quats, atol=5e-5, rtol=1e-5)
            torch.testing.assert_close(s, w.scales, atol=1e-6, rtol=1e-5)
    assert compiled.graphs, compiled.graph_error
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"], "compiled once per length"


def _pose_pipelined_under_load(poser, seq, starts, length):
    """posed_chunks over ``seq`` as a busy caller: per timestep a rasterization of 16 views and a chain of big
    matmuls, then clones of the Gaussians, all enqueued on the current stream before resuming the generator,
    so the clones read a chunk's buffers long after the next chunk's posing was launched."""
    from edit3dgs.cameras import camera_rig, stack

    vm, K, w, h = stack(camera_rig(), "cuda")
    bg = torch.ones(3, device="cuda")
    big = torch.randn(4096, 4096, device="cuda") / 64
    got = {}
    for start, gs in poser.posed_chunks(seq, starts, length):
        got[start] = []
        for g in gs:
            rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, vm, K, w, h, sh_degree=g.sh_degree, background=bg)
            x = big
            for _ in range(4):
                x = x @ big
            got[start].append((g.means.clone(), g.quats.clone(), g.scales.clone()))
    torch.cuda.synchronize()
    return got


@pytest.mark.parametrize("length", [1, 2])
def test_pipelined_posing_equals_sequential_posing_under_load(tmp_path, length):
    """posed_chunks (the render command's posing: the next chunk replayed on a side stream into the other of
    two graphs) gives pose_and_place's Gaussians bit for bit over six chunks, while the caller keeps the GPU
    busy on each chunk before resuming: chunk i + 2's posing does not overwrite buffers still being read."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.posing import WorldPoser

    b = open_avatar(make_avatar(tmp_path / "a", frames=4), device="cuda")
    ts = [0, 3, 5, 7, 9, 11, 2, 13, 6, 1, 4, 8][:6 * length]
    starts = range(0, len(ts), length)
    poser, sequential = WorldPoser(b), WorldPoser(b)
    seq = poser.upload(b.params.select(ts))
    want = {s: [(g.means.clone(), g.quats.clone(), g.scales.clone())
                for g in sequential.pose_and_place(sequential.timesteps_of(seq, s, s + length))] for s in starts}
    got = _pose_pipelined_under_load(poser, seq, starts, length)
    assert list(got) == list(starts)
    for s in starts:
        for g, w in zip(got[s], want[s]):
            for x, y in zip(g, w):
                torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert poser.graphs, poser.graph_error
    (pair,) = poser._graph_pairs.values()
    assert pair[0][1] is not pair[1][1] and pair[0][2][0].means.data_ptr() != pair[1][2][0].means.data_ptr()
    assert not poser._graphs, "pose_and_place's graph is not used"


def test_compiled_pipelined_posing_equals_the_eager_path(tmp_path):
    """--compile-posing with pipelined posing: both graphs replay inductor's kernels, compiled once, and give
    the eager world Gaussians under a busy caller."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.posing import WorldPoser

    b = open_avatar(make_avatar(tmp_path / "a", frames=4), device="cuda")
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ts = [0, 3, 5, 7, 9, 11]
    compiled, eager = WorldPoser(b, compile=True), WorldPoser(b, graphs=False)
    got = _pose_pipelined_under_load(compiled, compiled.upload(b.params.select(ts)), range(len(ts)), 1)
    for s, t in enumerate(ts):
        (m, q, sc), w = got[s][0], eager(b.params.select([t]))
        torch.testing.assert_close(m, w.means, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q, w.quats, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(sc, w.scales, atol=1e-6, rtol=1e-5)
    assert compiled.graphs, compiled.graph_error
    assert len(next(iter(compiled._graph_pairs.values()))) == 2
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], "compiled once for both graphs"


def test_refit_on_cuda_matches_the_cpu(tmp_path):
    """The refit's placement (bound frames, frozen rows placed once) gives the same fit on CUDA as on the CPU."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import load_cameras, stack
    from edit3dgs.fit import RefitConfig, TargetBatch, refit

    folder = make_avatar(tmp_path / "a", frames=2)
    res = {}
    for dev in ("cpu", "cuda"):
        b = open_avatar(folder, device=dev)
        cams = [c.scaled(0.25) for c in load_cameras(folder / "cameras.json")][:4]
        verts = b.pose(timesteps=[0], device=dev)
        wg = b.world(verts[0])
        target = rasterize(wg.means, wg.quats, wg.scales, wg.opacities, wg.sh, *stack(cams, dev), sh_degree=wg.sh_degree,
                           background=torch.ones(3, device=dev)).rgb.clamp(0, 1) * 0.8
        trainable = torch.zeros(b.gaussians.num_gaussians, dtype=torch.bool)
        trainable[::3] = True
        r = refit(b.gaussians, b.head.faces, [TargetBatch(0, verts[0], cams, target)], RefitConfig(iters=20),
                  trainable=trainable.to(dev))
        res[dev] = r
    assert abs(res["cpu"].losses[-1] - res["cuda"].losses[-1]) < 0.02 * res["cpu"].losses[0]
    assert res["cuda"].losses[-1] < 0.9 * res["cuda"].losses[0]   # and the CUDA refit does fit (CPU: 0.84)


def test_posing_stays_eager_when_capture_fails(tmp_path, monkeypatch):
    """A posing that cannot be captured falls back to the eager path (same values) and says why."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.posing import WorldPoser

    b = open_avatar(make_avatar(tmp_path / "a", frames=2), device="cuda")
    poser = WorldPoser(b)

    def broken(p):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(poser, "_capture", broken)
    got = poser(b.params.select([1]))
    want = WorldPoser(b, graphs=False)(b.params.select([1]))
    assert not poser.graphs and "capturing" in poser.graph_error
    assert torch.equal(got.means, want.means)

