"""Hardening: metadata cannot point outside the avatar, saves are whole, crashes leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_cli_errors import one_line_error, tiny_avatar  # noqa: F401  (fixture)

from edit3dgs.errors import Edit3DGSError


def tree(root):
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("how", ["dotdot", "nested_dotdot", "absolute", "symlink"])
def test_head_model_outside_the_avatar_is_refused(tiny_avatar, cli, tmp_path, how):  # noqa: F811
    precious = tmp_path / "precious.txt"
    shutil.copy2(tiny_avatar / "head_model.pkl", precious)  # a loadable pickle: only the path is wrong
    value = {"dotdot": "../precious.txt", "nested_dotdot": "sub/../../precious.txt", "absolute": str(precious),
             "symlink": "link.pkl"}[how]
    if how == "symlink":
        (tiny_avatar / "link.pkl").symlink_to(precious)
    (tiny_avatar / "avatar.json").write_text(json.dumps({"head_model": value}))
    before = tree(tmp_path)
    code, _, err = cli("export", "--avatar", tiny_avatar, "--out", tmp_path / "out" / "t.ply")
    assert code == 2
    one_line_error(err, "avatar.json", "'head_model'", "inside the avatar folder")
    assert tree(tmp_path) == before  # nothing written anywhere


def test_save_refuses_metadata_leading_outside(tiny_avatar, tmp_path):  # noqa: F811
    from edit3dgs.bundle import open_avatar

    b = open_avatar(tiny_avatar)
    (tmp_path / "precious.txt").write_text("keep me")
    b.meta["head_model"] = "../precious.txt"  # changed after opening: save checks again
    before = tree(tmp_path)
    with pytest.raises(Edit3DGSError, match="'head_model' as a file name inside the avatar folder"):
        b.save(tmp_path / "out")
    assert (tmp_path / "precious.txt").read_text() == "keep me" and tree(tmp_path) == before


def test_save_fails_whole_when_a_source_file_is_gone(tiny_avatar, tmp_path):  # noqa: F811
    from edit3dgs.bundle import open_avatar

    b = open_avatar(tiny_avatar)
    (tiny_avatar / "head_model.pkl").unlink()  # the avatar deleted mid-edit
    with pytest.raises(Edit3DGSError, match=r"head_model\.pkl: expected the file avatar.json names as 'head_model'"):
        b.save(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # with the file back, the saved avatar has everything it needs and opens
    from conftest import tiny_flame_dict, write_pickle

    write_pickle(tiny_avatar / "head_model.pkl", tiny_flame_dict())
    out = b.save(tmp_path / "out")
    assert open_avatar(out).gaussians.num_gaussians == b.gaussians.num_gaussians


# -- crashes leave nothing behind ------------------------------------------------------------------------------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from edit3dgs.fsutil import MARKER, atomic_dir, clean_stale  # noqa: E402


def _make_avatar(out, *extra):
    return [sys.executable, "-m", "edit3dgs.cli", "make-avatar", "--out", str(out), "--frames", "4",
            "--gaussians-per-face", "1", *extra]


def _kill_when_part_appears(cmd, parent, timeout=120):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + timeout
    while time.monotonic() < end and p.poll() is None:
        parts = [e for e in parent.glob(".out.*.part") if e.is_dir() and any(e.glob("*.pkl"))]
        if parts:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return parts
        time.sleep(0.005)
    p.kill()
    raise AssertionError(f"no .part folder seen: {p.stderr.read().decode()[-500:]}")


def test_sigkill_at_save_then_fresh_run_leaves_no_part_or_old(tmp_path):
    out = tmp_path / "out"
    parts = _kill_when_part_appears(_make_avatar(out), tmp_path)
    assert parts and not out.exists()  # the crash left litter, as a crash does
    res = subprocess.run(_make_avatar(out), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(e.name for e in tmp_path.iterdir()) == ["out"]
    # again over an existing result with overwrite (a light writer: same atomic_dir, no torch start-up)
    before = tree(out)
    _kill_when_part_appears([sys.executable, "-c", SLOW_WRITER, str(out)], tmp_path)
    assert tree(out) == before  # the previous result survives the kill
    subprocess.run([sys.executable, "-c", SLOW_WRITER, str(out), "0"], check=True)
    assert sorted(e.name for e in tmp_path.iterdir()) == ["out"] and tree(out) != before


SLOW_WRITER = r"""
import sys, time
from edit3dgs import fsutil
with fsutil.atomic_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "head.pkl").write_bytes(b"x" * 1000)
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 60)
"""


SWAP_CRASH = r"""
import os, signal, sys
from edit3dgs import fsutil
real, calls = os.replace, []
def replace(a, b):
    calls.append(1)
    real(a, b)
    if len(calls) == 1:  # the previous result is moved aside; die before the new one is moved in
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with fsutil.atomic_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "result.txt").write_text("new")
"""


def _write(out, text):
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "result.txt").write_text(text)


def test_sigkill_between_the_renames_of_overwrite_keeps_the_previous_result(tmp_path):
    out = tmp_path / "out"
    _write(out, "previous")
    r = subprocess.run([sys.executable, "-c", SWAP_CRASH, str(out)])
    assert r.returncode == -signal.SIGKILL
    assert not out.exists() and [e.suffix for e in tmp_path.iterdir()].count(".old") == 1  # mid-swap state
    done = clean_stale(out)  # what the next run does first
    assert (out / "result.txt").read_text() == "previous", done
    assert sorted(e.name for e in tmp_path.iterdir()) == ["out"]


def test_interrupted_overwrite_restores_and_says_so(tmp_path, monkeypatch, cli):
    out = tmp_path / "out"
    _write(out, "previous")
    real, calls = os.replace, []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between the two renames
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _write(out, "new")
    monkeypatch.setattr(os, "replace", real)
    assert (out / "result.txt").read_text() == "previous"
    assert sorted(e.name for e in tmp_path.iterdir()) == ["out"]
    # the command line's message says what is on disk
    from edit3dgs.cli import avatar as cli_mod

    monkeypatch.setattr(cli_mod, "cmd_make_avatar", lambda a: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, _, err = cli("make-avatar", "--out", out, "--overwrite")
    assert code == 130 and f"{out} is as it was before this run" in err, err
    code, _, err = cli("make-avatar", "--out", tmp_path / "none")
    assert code == 130 and f"nothing was written to {tmp_path / 'none'}" in err, err


def test_only_this_projects_leftovers_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    mine = tmp_path / f".out.edit3dgs-{dead}-abcd.part"
    mine.mkdir()
    (mine / MARKER).write_text("{}")
    unmarked = tmp_path / f".out.edit3dgs-{dead}-beef.part"  # our name, but no marker inside
    unmarked.mkdir()
    live = tmp_path / f".out.edit3dgs-{os.getppid()}-cafe.part"  # a running process's
    live.mkdir()
    (live / MARKER).write_text("{}")
    other = tmp_path / ".out.1234.part"  # someone else's naming
    other.mkdir()
    stale_file = tmp_path / f".out.edit3dgs-{dead}-0123.part"
    stale_file.write_text("half")
    _write(out, "x")
    assert not mine.exists() and not stale_file.exists()
    assert unmarked.exists() and live.exists() and other.exists()


def test_overwrite_only_replaces_a_folder_this_project_wrote(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_text("irreplaceable")
    with pytest.raises(Edit3DGSError, match="a folder this program wrote"):
        _write(out, "x")
    assert (out / "holiday.jpg").read_text() == "irreplaceable" and sorted(os.listdir(out)) == ["holiday.jpg"]
    assert sorted(e.name for e in tmp_path.iterdir()) == ["photos"]


# -- the safe unpickler: every pickle numpy writes, bounded work ---------------------------------------------------------

import pickle  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402


def _flame_like():
    import scipy.sparse as sp
    from conftest import tiny_flame_dict

    d = tiny_flame_dict()
    d["J_regressor"] = sp.csc_matrix(d["J_regressor"])  # FLAME stores it sparse
    d["posedirs"] = np.asfortranarray(d["posedirs"])
    d["weights_T"] = d["weights"].T  # a non-contiguous view
    d["scale"] = np.float64(1.0)
    return d


def _same(a, b):
    if hasattr(a, "toarray"):
        a, b = a.toarray(), b.toarray()
    return type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


def test_pickles_of_every_protocol_load_identically(tmp_path):
    from edit3dgs.flame import load_flame_model, safe_load_pickle

    d = _flame_like()
    loaded = {}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps(d, protocol=proto))
        loaded[proto] = safe_load_pickle(path)
    for proto, got in loaded.items():
        assert set(got) == set(d) and all(_same(got[k], d[k]) for k in d), proto
        assert all(_same(got[k], loaded[0][k]) for k in d), proto
    m5 = load_flame_model(tmp_path / "p5.pkl")
    m0 = load_flame_model(tmp_path / "p0.pkl")
    assert np.array_equal(m5.shapedirs, m0.shapedirs) and np.array_equal(m5.J_regressor, m0.J_regressor)


def _nested_shared(levels):
    a = []
    for _ in range(levels):
        a = [a, a, a, a]  # 4**levels entries once expanded, a few bytes each in the pickle (memo references)
    return a


def _deep(n):
    # EMPTY_DICT, key, n EMPTY_LISTs, n-1 APPENDs (each list into the one below), SETITEM, STOP
    key = b"\x8c\x0av_template"
    return b"\x80\x04}" + key + b"]" * n + b"a" * (n - 1) + b"s."


@pytest.mark.parametrize("bomb", ["memo", "deep", "bytes_n", "sparse_shape", "array_refs"])
def test_pickle_bombs_refused_within_a_second(tmp_path, bomb):
    from edit3dgs.flame import load_flame_model

    d = _flame_like()
    if bomb == "memo":
        d["v_template"] = _nested_shared(30)
        data = pickle.dumps(d, protocol=4)
    elif bomb == "deep":
        data = _deep(100_000)
    elif bomb == "bytes_n":  # builtins.bytes(2**31): 2 GB asked for by 30 bytes
        data = b"\x80\x02cbuiltins\nbytes\nJ" + struct.pack("<i", 2**31 - 1) + b"\x85R."
    elif bomb == "sparse_shape":
        import scipy.sparse as sp

        d["J_regressor"] = sp.csc_matrix((10**9, 5), dtype=np.float32)  # 5e9 elements when densified
        data = pickle.dumps(d, protocol=2)
    else:
        big = np.zeros(500_000, np.float32)
        d["shapedirs"] = [big] * 1000  # one array, referenced 1000 times
        data = pickle.dumps(d, protocol=4)
    assert len(data) < 3_000_000
    path = tmp_path / "bomb.pkl"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(Edit3DGSError) as exc:
        load_flame_model(path)
    took = time.perf_counter() - t0
    msg = str(exc.value)
    why = {"memo": "container entries", "deep": "nested at most 64 deep", "bytes_n": "bytes() of int",
           "sparse_shape": "elements in all", "array_refs": "elements in all"}[bomb]
    assert "bomb.pkl: expected" in msg and why in msg and "\n" not in msg and took < 1.0, (took, msg)


# -- ranges and indices are validated, not reinterpreted ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["10-0", ",", "", "2-2", "0-3:0", "0-3:-1", "-1", "1,,2", "0-2,x", "1:2"])
def test_bad_timestep_lists_are_refused(tiny_avatar, cli, tmp_path, text):  # noqa: F811
    from edit3dgs.cameras import camera_rig, save_cameras

    save_cameras(tmp_path / "cams.json", camera_rig(40, 60)[:1])
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", tmp_path / "cams.json", "--out", tmp_path / "r",
                       "--timesteps", text)
    assert code == 2
    one_line_error(err, "--timesteps", "expected a list like")
    assert not (tmp_path / "r").exists()


def test_timesteps_outside_the_sequence_name_option_and_file(tiny_avatar, cli, tmp_path):  # noqa: F811
    from edit3dgs.cameras import camera_rig, save_cameras

    save_cameras(tmp_path / "cams.json", camera_rig(40, 60)[:1])
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", tmp_path / "cams.json", "--out", tmp_path / "r",
                       "--timesteps", "0,5")
    assert code == 2
    one_line_error(err, "--timesteps", "flame_param.npz: 3 timesteps", "expected timesteps in [0,3)", "found 5")
    for t in ("-1", "3"):  # -1 used to export timestep 2 while printing -1
        code, out, err = cli("export", "--avatar", tiny_avatar, "--timestep", t, "--out", tmp_path / "t.ply")
        assert code == 2 and not (tmp_path / "t.ply").exists()
        one_line_error(err, "--timestep", "flame_param.npz: 3 timesteps", f"found {t}")
    from edit3dgs.flame_params import FlameParams

    with pytest.raises(Edit3DGSError, match=r"found -1"):
        FlameParams.neutral(3).select([-1])


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_with_more_data_than_its_header_counts_is_refused(tiny_avatar, cli, tmp_path, fmt):  # noqa: F811
    from plyfile import PlyData

    import io

    ply = tiny_avatar / "point_cloud.ply"
    data = PlyData.read(io.BytesIO(ply.read_bytes()))
    data.text = fmt == "ascii"
    data.write(str(ply))
    raw = ply.read_bytes()
    n = len(data["vertex"].data)
    raw = raw.replace(f"element vertex {n}\n".encode(), f"element vertex {n - 10}\n".encode(), 1)
    ply.write_bytes(raw)
    code, _, err = cli("export", "--avatar", tiny_avatar, "--out", tmp_path / "t.ply")
    assert code == 2 and not (tmp_path / "t.ply").exists()
    one_line_error(err, "point_cloud.ply", f"'element vertex {n - 10}'", "bytes more")


# -- renders are batched: memory bounded by a setting, not by cameras x Gaussians ------------------------------------


def test_render_passes_are_bounded_by_the_setting_and_give_the_same_images(monkeypatch):
    import torch

    from edit3dgs import render
    from edit3dgs.cameras import camera_rig, stack
    from edit3dgs.render import torch_raster

    torch.manual_seed(0)
    N = 2000
    means = torch.randn(N, 3) * 0.05
    quats = torch.nn.functional.normalize(torch.randn(N, 4), dim=-1)
    scales = torch.rand(N, 3) * 0.01 + 0.002
    opac = torch.rand(N) * 0.8 + 0.1
    sh = torch.randn(N, 16, 3) * 0.2
    vm, K, w, h = stack([c.scaled(0.04) for c in camera_rig()[:6]], "cpu")  # 6 cameras
    full = render.rasterize(means, quats, scales, opac, sh, vm, K, w, h, sh_degree=3)

    seen, real = [], torch_raster.rasterize_torch

    def spy(means, *a, **k):
        seen.append(a[4].shape[0] * means.shape[0])  # cameras x Gaussians of this pass
        return real(means, *a, **k)

    monkeypatch.setattr(render, "rasterize_torch", spy)
    for limit in (N // 2, 4 * N - 1, 10 ** 9):
        monkeypatch.setattr(render, "MAX_PAIRS", limit)
        seen.clear()
        res = render.rasterize(means, quats, scales, opac, sh, vm, K, w, h, sh_degree=3)
        assert max(seen) <= max(limit, N) and sum(seen) == 6 * N, (limit, seen)  # one camera at least
        assert len(seen) == -(-6 // max(1, limit // N))
        for x, y in ((res.rgb, full.rgb), (res.alpha, full.alpha), (res.depth, full.depth)):
            assert (x - y).abs().max() < 1e-4, (limit, float((x - y).abs().max()))
    # the CPU rasterizer also caps cameras per pass (its first cancel point comes after a pass's
    # projection and binning), with the same images
    monkeypatch.setattr(render, "MAX_PAIRS", 10 ** 9)
    monkeypatch.setattr(render, "TORCH_CAMERAS_PER_PASS", 4)
    seen.clear()
    res = render.rasterize(means, quats, scales, opac, sh, vm, K, w, h, sh_degree=3)
    assert seen == [4 * N, 2 * N]
    assert (res.rgb - full.rgb).abs().max() < 1e-4
    # gradients flow through the passes
    means.requires_grad_(True)
    monkeypatch.setattr(render, "MAX_PAIRS", 3 * N)
    render.rasterize(means, quats, scales, opac, sh, vm, K, w, h, sh_degree=3).rgb.sum().backward()
    assert means.grad is not None and torch.isfinite(means.grad).all() and means.grad.abs().sum() > 0


# -- one output-path policy (issue 17): never an input, inside one, or a folder holding one ---------------------------


@pytest.mark.parametrize("case", ["equal", "inside", "dotdot", "symlink", "parent", "export_over_input"])
def test_outputs_never_touch_inputs(tiny_avatar, cli, tmp_path, case):  # noqa: F811
    from edit3dgs.cameras import camera_rig, save_cameras

    save_cameras(tmp_path / "cams.json", camera_rig(40, 60)[:1])
    (tmp_path / "link").symlink_to(tiny_avatar)
    out = {"equal": tiny_avatar, "inside": tiny_avatar / "renders", "dotdot": tmp_path / "x" / ".." / "avatar" / "r",
           "symlink": tmp_path / "link" / "r", "parent": tmp_path, "export_over_input": tiny_avatar / "point_cloud.ply"}[case]
    before = tree(tmp_path)
    if case == "export_over_input":
        code, _, err = cli("export", "--avatar", tiny_avatar, "--out", out)
    else:
        code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", tmp_path / "cams.json", "--out", out,
                           "--timesteps", "0", "--overwrite")
    assert code == 2
    one_line_error(err, "--out", "expected an output path outside every input", "--avatar")
    assert tree(tmp_path) == before


def test_job_outputs_never_touch_inputs(tiny_avatar, tmp_path):  # noqa: F811
    from edit3dgs.bundle import open_avatar
    from edit3dgs.server import _check_job_paths

    with pytest.raises(Edit3DGSError, match=r"job argument 'out'.*inside the input 'avatar'"):
        _check_job_paths({"avatar": str(tiny_avatar), "out": str(tiny_avatar / "rig.npz")})
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(Edit3DGSError, match=r"job argument 'outputs'.*the input 'cameras' itself"):
        _check_job_paths({"cameras": str(tmp_path / "c.json"), "outputs": [str(tmp_path / "f1.png"), str(tmp_path / "c.json")]})
    _check_job_paths({"avatar": str(tiny_avatar), "out": str(tmp_path / "rig.npz")})  # beside it is fine
    b = open_avatar(tiny_avatar)
    with pytest.raises(Edit3DGSError, match="a folder that contains the input avatar"):
        b.save(tmp_path, overwrite=True)
    assert (tiny_avatar / "point_cloud.ply").is_file()
