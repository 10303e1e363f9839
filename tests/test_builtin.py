"""The built-in avatar: identities, region appearance, sequences, rig, and commands without --flame."""

from __future__ import annotations

import json

import numpy as np
import torch
from plyfile import PlyData

from edit3dgs.avatar import WorldGaussians, ply_attribute_names
from edit3dgs.builtin import IDENTITIES, make_avatar
from edit3dgs.bundle import open_avatar
from edit3dgs.cameras import load_cameras
from edit3dgs.flame_params import FlameParams
from edit3dgs.render.sh import SH2RGB


def test_folder_records_everything_a_command_needs(builtin_avatar_dir):
    meta = json.loads((builtin_avatar_dir / "avatar.json").read_text())
    assert meta["kind"] == "builtin" and meta["held_out_camera"] == 8 and 8 not in meta["train_cameras"]
    for name in ("talk", "smile", "blink", "turn", "held_out", "other_identity"):
        assert (builtin_avatar_dir / "sequences" / f"{name}.npz").is_file()
    cams = load_cameras(builtin_avatar_dir / "cameras.json")
    assert len(cams) == 16
    b = open_avatar(builtin_avatar_dir)  # no --flame needed
    assert "builtin" in b.topology and b.params.num_timesteps == 4 * 8
    assert b.gaussians.num_gaussians == 2 * b.head.n_faces


def test_deterministic_for_a_seed(tmp_path):
    a = make_avatar(tmp_path / "a", frames=4, gaussians_per_face=1, sh_degree=0)
    b = make_avatar(tmp_path / "b", frames=4, gaussians_per_face=1, sh_degree=0)
    for name in ("point_cloud.ply", "flame_param.npz", "head_model.pkl", "sequences/held_out.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_identities_differ_in_shape_and_appearance(tmp_path, builtin_avatar_dir):
    other = make_avatar(tmp_path / "ben", identity=1, frames=4, gaussians_per_face=2, sh_degree=3)
    a, b = open_avatar(builtin_avatar_dir), open_avatar(other)
    assert not np.allclose(a.params.shape, b.params.shape)
    hair_a = SH2RGB(a.gaussians.features_dc[a.gaussian_mask(["hair"]), 0]).mean(0)
    hair_b = SH2RGB(b.gaussians.features_dc[b.gaussian_mask(["hair"]), 0]).mean(0)
    assert (hair_a - hair_b).abs().max() > 0.1
    # the other identity's motion in ada's folder carries ben's shape
    cross = FlameParams.load(builtin_avatar_dir / "sequences" / "other_identity.npz")
    np.testing.assert_allclose(cross.shape, b.params.shape)
    assert IDENTITIES[0].name != IDENTITIES[1].name


def test_region_appearance(builtin_avatar_dir):
    b = open_avatar(builtin_avatar_dir)
    rgb = SH2RGB(b.gaussians.features_dc[:, 0])
    eyes = rgb[b.gaussian_mask(["eyes"])]
    assert (eyes.mean(1) > 0.75).sum() > 10, "sclera"
    assert (eyes.mean(1) < 0.1).sum() > 3, "pupils"
    lips, skin = rgb[b.gaussian_mask(["lips"])].mean(0), rgb[b.gaussian_mask(["skin"])].mean(0)
    assert lips[0] - lips[2] > skin[0] - skin[2], "lips are redder than skin"
    teeth = rgb[b.gaussian_mask(["teeth"])]
    assert teeth.numel() and teeth.mean() > 0.55
    assert rgb[b.gaussian_mask(["hair"])].mean() < skin.mean() - 0.2, "dark hair"


def test_sequences_move_the_head(builtin_avatar_dir):
    b = open_avatar(builtin_avatar_dir)
    jaw = b.head.regions["lips"]
    verts = b.pose(timesteps=list(range(b.params.num_timesteps)))
    motion = (verts - verts[:1]).norm(dim=-1).amax(1)
    assert (motion > 2e-3).sum() > b.params.num_timesteps // 2
    held = FlameParams.load(builtin_avatar_dir / "sequences" / "held_out.npz")
    assert held.num_timesteps == 8 and np.abs(held.expr).sum() > 0 and len(jaw)


def test_export_writes_a_standard_world_space_ply(builtin_avatar_dir, cli, tmp_path):
    code, _, err = cli("export", "--avatar", builtin_avatar_dir, "--timestep", "5", "--out", tmp_path / "t5.ply")
    assert code == 0, err
    el = PlyData.read(str(tmp_path / "t5.ply"))["vertex"]
    assert [p.name for p in el.properties] == ply_attribute_names(3, with_binding=False)
    b = open_avatar(builtin_avatar_dir)
    g = b.world(b.pose(timesteps=[5])[0])
    xyz = np.stack([el.data["x"], el.data["y"], el.data["z"]], 1)
    np.testing.assert_allclose(xyz, g.means.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.exp(el.data["scale_0"]), g.scales[:, 0].numpy(), rtol=1e-5)


def test_render_command_on_builtin_avatar(builtin_avatar_dir, cli, tmp_path):
    code, _, err = cli("render", "--avatar", builtin_avatar_dir, "--cameras", builtin_avatar_dir / "cameras.json",
                       "--camera-ids", "8", "--timesteps", "0", "--scale", "0.1", "--out", tmp_path / "r")
    assert code == 0, err
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "r" / "00000_08.png")).astype(float) / 255
    h, w, _ = img.shape
    assert img[0, 0].min() > 0.99, "white background"
    assert img[h // 2, w // 2].max() < 0.98, "the head is in the middle"


def test_capture_command_writes_the_dataset_layout(builtin_avatar_dir, cli, tmp_path):
    from edit3dgs.dataset import load_capture

    code, _, err = cli("capture", "--avatar", builtin_avatar_dir, "--scale", "0.05", "--step", "8", "--out", tmp_path / "cap")
    assert code == 0, err
    tr, val, te = (load_capture(tmp_path / "cap", s) for s in ("train", "val", "test"))
    assert len(tr.cameras) == 15 and [c.index for c in val.cameras] == [8] and len(te.cameras) == 16
    assert tr.frames[0].image.is_file()
    assert torch.is_tensor(torch.as_tensor(tr.flame_params().expr))


def test_world_poser_matches_posing_then_binding(builtin_avatar_dir):
    from edit3dgs.render_avatar import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    one = b.params.select([3])
    g = WorldPoser(b)(one)
    ref = b.world(b.pose(timesteps=[3])[0])
    torch.testing.assert_close(g.means, ref.means)
    torch.testing.assert_close(g.quats, ref.quats)


def test_an_uploaded_sequence_poses_in_pieces_as_the_parameters_do(builtin_avatar_dir):
    """WorldPoser.upload + timesteps_of (the render command's one copy to the device, chunks as views of it) pose
    every timestep as selecting those FLAME parameters does; every per-frame field is cut (the per-frame offsets
    too), the static ones are shared."""
    from dataclasses import replace

    from edit3dgs.posing import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    ts = [0, 3, 4, 7, 9]
    rng = np.random.default_rng(0)
    params = replace(b.params, dynamic_offset=rng.normal(0, 1e-3, (b.params.num_timesteps, b.head.n_verts, 3))
                     .astype(np.float32))
    poser = WorldPoser(b)
    seq = poser.upload(params.select(ts))
    for start, stop in ((0, 2), (2, 5), (4, 5)):
        got = poser.pose_and_place(poser.timesteps_of(seq, start, stop))
        want = poser.pose_and_place(params.select(ts[start:stop]))
        assert len(got) == len(want) == stop - start
        for g, w in zip(got, want):
            torch.testing.assert_close(g.means, w.means, atol=0, rtol=0)
            torch.testing.assert_close(g.quats, w.quats, atol=0, rtol=0)
    piece = poser.timesteps_of(seq, 2, 5)   # every per-frame field cut, the rest (shape, static offset) shared
    for k, v in piece.items():
        assert (v.shape[0] == 3 and torch.equal(v, seq[k][2:5])) if seq[k].shape[0] == len(ts) else v is seq[k], k
    assert piece["dynamic_offset"].shape[0] == 3 and piece["shape"] is seq["shape"]


def test_render_in_chunks_with_a_padded_last_chunk_writes_the_one_chunk_images(builtin_avatar_dir, cli, tmp_path,
                                                                                monkeypatch):
    """`edit3dgs render` poses timesteps in chunks of an uploaded sequence, the last chunk padded to the others'
    length: the images are those of posing every timestep in one chunk, each under its own timestep's name."""
    from edit3dgs import render as render_mod
    from edit3dgs.bundle import open_avatar as open_b
    from edit3dgs.images import load_png as load_image

    n = open_b(builtin_avatar_dir).gaussians.num_gaussians
    args = ("render", "--avatar", builtin_avatar_dir, "--cameras", builtin_avatar_dir / "cameras.json",
            "--camera-ids", "0", "--timesteps", "0,3,5", "--scale", "0.25", "--device", "cpu")
    from edit3dgs.posing import WorldPoser

    assert cli(*args, "--out", tmp_path / "one")[0] == 0
    monkeypatch.setattr(render_mod, "MAX_PAIRS", 2 * n)     # chunks of two timesteps: [0, 3], [5 (+5)]
    lengths = []
    cut = WorldPoser.timesteps_of
    monkeypatch.setattr(WorldPoser, "timesteps_of",
                        staticmethod(lambda u, start, stop: lengths.append(len(cut(u, start, stop)["expr"]))
                                     or cut(u, start, stop)))
    assert cli(*args, "--out", tmp_path / "two")[0] == 0
    assert lengths == [2, 2], "every chunk as long as the first: one capture (one compile)"
    for t in (0, 3, 5):
        a, b = (load_image(tmp_path / d / f"{t:05d}_00.png") for d in ("one", "two"))
        assert np.abs(a - b).max() <= 1 / 255 and (np.abs(a - b) > 0).mean() < 1e-3, (t, np.abs(a - b).max())
    assert not np.array_equal(load_image(tmp_path / "one" / "00000_00.png"), load_image(tmp_path / "one" / "00005_00.png"))


def _padded_sequence(poser, params, ts, length):
    """``ts`` uploaded as `edit3dgs render` does: the last chunk padded with its last timestep."""
    return poser.upload(params.select(ts + ts[-1:] * (-len(ts) % length)))


def test_posed_chunks_are_pose_and_place_chunk_by_chunk(builtin_avatar_dir):
    """posed_chunks (the render command's posing) yields, chunk by chunk, pose_and_place's Gaussians of the
    same timesteps, the padded last chunk included; on the CPU it poses eagerly, in order."""
    from edit3dgs.posing import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    poser = WorldPoser(b)
    ts = [0, 3, 5, 7, 9, 11, 2]
    for length in (1, 3):
        seq = _padded_sequence(poser, b.params, ts, length)
        starts = range(0, len(ts), length)
        got = list(poser.posed_chunks(seq, starts, length))
        assert [s for s, _ in got] == list(starts)
        for start, gs in got:
            padded = [ts[min(t, len(ts) - 1)] for t in range(start, start + length)]
            want = poser.pose_and_place(b.params.select(padded))
            assert len(gs) == length
            for g, w in zip(gs, want):
                for x, y in ((g.means, w.means), (g.quats, w.quats), (g.scales, w.scales)):
                    torch.testing.assert_close(x, y, atol=0, rtol=0)


def _stand_in_cuda(monkeypatch, poser):
    """CUDA streams, events and graphs replaced by stand-ins that run at once on the CPU and log what was
    enqueued on which stream: ``("record" | "wait", stream, event)``, ``("replay", stream, graph)``. A graph's
    replay poses its static inputs into its own output buffers, as a captured graph does."""
    import contextlib

    log, current = [], []

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            log.append(("wait", self.name, other.record_event()))

        def record_event(self):
            event = object()
            log.append(("record", self.name, event))
            return event

        def wait_event(self, event):
            log.append(("wait", self.name, event))

    class Graph:
        def __init__(self, static, out):
            self.static, self.out = static, out

        def replay(self):
            log.append(("replay", current[-1].name, self))
            for o, n in zip(self.out, poser._eager(self.static)):
                for x, y in ((o.means, n.means), (o.quats, n.quats), (o.scales, n.scales)):
                    x.copy_(y)

    def capture(p):
        static = {k: v.clone() for k, v in p.items()}
        out = [WorldGaussians(g.means.clone(), g.quats.clone(), g.scales.clone(), g.opacities, g.sh, g.sh_degree)
               for g in poser._eager(static)]
        return static, Graph(static, out), out

    @contextlib.contextmanager
    def stream(s):
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    current.append(Stream("main"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None, priority=0: Stream())
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(poser, "_capture", capture)
    poser.graphs = True
    return log


def test_posed_chunks_double_buffering_waits_for_the_caller(builtin_avatar_dir, monkeypatch):
    """posed_chunks' pipelining, with stand-ins for CUDA streams and graphs: the chunks are replayed on a side
    stream into two graphs in turn; the caller gets a chunk after the main stream waited for its replay; a
    graph is replayed again (chunk i + 2) only after the side stream waited for the main stream's event
    recorded after the caller enqueued its work on chunk i; and the values are pose_and_place's."""
    from edit3dgs.posing import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    ts = [0, 3, 5, 7, 9, 11, 2]
    for length in (1, 2):
        poser = WorldPoser(b)
        want = {s: [g.means.clone() for g in poser.pose_and_place(b.params.select(
            [ts[min(t, len(ts) - 1)] for t in range(s, s + length)]))] for s in range(0, len(ts), length)}
        log = _stand_in_cuda(monkeypatch, poser)
        seq = _padded_sequence(poser, b.params, ts, length)
        for i, (start, gs) in enumerate(poser.posed_chunks(seq, range(0, len(ts), length), length)):
            log.append(("use", "main", i))     # the caller's work on the chunk, enqueued before resuming
            for g, w in zip(gs, want[start]):
                torch.testing.assert_close(g.means, w, atol=0, rtol=0)
        replays = [k for k, e in enumerate(log) if e[0] == "replay"]
        uses = [k for k, e in enumerate(log) if e[0] == "use"]
        assert len(replays) == len(uses) == len(want) >= 4
        graphs = [log[k][2] for k in replays]
        assert len(set(graphs)) == 2 and all(graphs[i] is graphs[i % 2] for i in range(len(graphs)))
        assert all(log[k][1] == "side" for k in replays)
        recorded = {id(e[2]): k for k, e in enumerate(log) if e[0] == "record"}

        def waited_after(k, stream, other, since):
            """Before log entry k, did `stream` wait for an event recorded on `other` after entry `since`?"""
            return any(e[0] == "wait" and e[1] == stream and recorded.get(id(e[2]), -1) > since
                       and log[recorded[id(e[2])]][1] == other for e in log[:k])

        for i, k in enumerate(uses):
            assert waited_after(k, "main", "side", replays[i]), f"chunk {i} used before its posing finished"
        for i, k in enumerate(replays[2:], 2):
            assert waited_after(k, "side", "main", uses[i - 2]), f"chunk {i} overwrote chunk {i - 2} in use"


def test_posed_chunks_stay_eager_when_capture_fails(builtin_avatar_dir, monkeypatch):
    """A posing that cannot be captured: posed_chunks poses eagerly (same values) and says why."""
    from edit3dgs.posing import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    poser = WorldPoser(b)
    _stand_in_cuda(monkeypatch, poser)

    def broken(p):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(poser, "_capture", broken)
    seq = poser.upload(b.params.select([1, 4, 6]))
    got = [gs[0].means for _, gs in poser.posed_chunks(seq, range(3), 1)]
    assert not poser.graphs and "capturing" in poser.graph_error
    for m, t in zip(got, [1, 4, 6]):
        torch.testing.assert_close(m, poser.pose_and_place(b.params.select([t]))[0].means, atol=0, rtol=0)


def test_compiled_posing_is_one_graph_with_the_eager_results(builtin_avatar_dir):
    """--compile-posing: FLAME posing + the binding transform trace into one torch.compile graph (no graph
    break: a break would leave the small kernels it exists to fuse) and give the eager world Gaussians.
    Backend aot_eager: inductor's tracing without its code generation (minutes on a CPU)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from edit3dgs.posing import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    seq = b.params.select([0, 4, 9])
    torch._dynamo.reset()
    counters.clear()
    try:
        out = WorldPoser(b, compile="aot_eager").pose_and_place(seq)
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    for o, r in zip(out, WorldPoser(b).pose_and_place(seq)):
        for x, y in ((o.means, r.means), (o.quats, r.quats), (o.scales, r.scales)):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_world_poser_sequence_matches_per_timestep(builtin_avatar_dir):
    from edit3dgs.render_avatar import WorldPoser

    b = open_avatar(builtin_avatar_dir)
    poser = WorldPoser(b)
    seq = b.params.select([0, 4, 9])
    placed = poser.place_sequence(poser.pose(seq))
    for i, t in enumerate([0, 4, 9]):
        ref = b.world(b.pose(timesteps=[t])[0])
        # Two float32 evaluation orders (batched vs one timestep): tolerances are float32 rounding
        # amplified by LBS and the matrix -> quaternion square root, not one CPU's exact bits
        # (an Intel Xeon differs by 4e-6 in the quaternions where this machine agrees to 1e-7).
        torch.testing.assert_close(placed[i].means, ref.means, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(placed[i].quats, ref.quats, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(placed[i].scales, ref.scales, atol=1e-6, rtol=1e-5)
