"""Bad input: one line naming the file and the problem, a non-zero exit, no partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_flame_dict, write_pickle
from test_formats import random_avatar

from edit3dgs.cameras import camera_rig, save_cameras
from edit3dgs.flame_params import FlameParams


@pytest.fixture()
def tiny_avatar(tmp_path):
    """A complete avatar folder on a tiny random head model (60 faces)."""
    d = tmp_path / "avatar"
    d.mkdir()
    write_pickle(d / "head_model.pkl", tiny_flame_dict())
    random_avatar(N=30, F=60).save_ply(d / "point_cloud.ply")
    FlameParams.neutral(3).save(d / "flame_param.npz")
    (d / "avatar.json").write_text(json.dumps({"head_model": "head_model.pkl"}))
    save_cameras(tmp_path / "cams.json", camera_rig(40, 60)[:2])
    return d


def one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_good_avatar_renders_and_exports(tiny_avatar, cli, tmp_path):
    code, out, err = cli("render", "--avatar", tiny_avatar, "--cameras", tmp_path / "cams.json", "--out", tmp_path / "r",
                         "--timesteps", "0,2")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name != ".edit3dgs") == ["00000_00.png", "00000_01.png", "00002_00.png", "00002_01.png"]
    code, out, err = cli("export", "--avatar", tiny_avatar, "--timestep", "1", "--out", tmp_path / "w.ply")
    assert code == 0, err and (tmp_path / "w.ply").is_file()


def _assert_export_fails(cli, tmp_path, avatar, *needles, extra=()):
    out = tmp_path / "out.ply"
    code, _, err = cli("export", "--avatar", avatar, "--out", out, *extra)
    assert code == 2
    one_line_error(err, *needles)
    assert not out.exists() and not list(tmp_path.glob(".out.ply*"))


def test_missing_ply(tiny_avatar, cli, tmp_path):
    (tiny_avatar / "point_cloud.ply").unlink()
    _assert_export_fails(cli, tmp_path, tiny_avatar, str(tiny_avatar), "point_cloud.ply")


def test_truncated_ply(tiny_avatar, cli, tmp_path):
    p = tiny_avatar / "point_cloud.ply"
    p.write_bytes(p.read_bytes()[:-50])
    _assert_export_fails(cli, tmp_path, tiny_avatar, "point_cloud.ply", "expected a complete PLY")


def test_ply_without_binding(tiny_avatar, cli, tmp_path):
    from plyfile import PlyData, PlyElement

    p = tiny_avatar / "point_cloud.ply"
    data = PlyData.read(str(p))["vertex"].data
    names = [n for n in data.dtype.names if n != "binding_0"]
    from numpy.lib.recfunctions import repack_fields

    PlyData([PlyElement.describe(repack_fields(data[names]), "vertex")]).write(str(p))
    _assert_export_fails(cli, tmp_path, tiny_avatar, "point_cloud.ply", "binding_0", "static 3DGS")


def test_binding_outside_face_count(tiny_avatar, cli, tmp_path):
    a = random_avatar(N=30, F=60)
    a.binding[3] = 60
    a.save_ply(tiny_avatar / "point_cloud.ply")
    _assert_export_fails(cli, tmp_path, tiny_avatar, "point_cloud.ply", "face count 60", "binding 60")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_attributes(tiny_avatar, cli, tmp_path, bad):
    a = random_avatar(N=30, F=60)
    a.scaling[5, 1] = bad
    a.save_ply(tiny_avatar / "point_cloud.ply")
    _assert_export_fails(cli, tmp_path, tiny_avatar, "point_cloud.ply", "finite values in 'scale_1'")


def test_npz_missing_key(tiny_avatar, cli, tmp_path):
    d = FlameParams.neutral(3).as_dict()
    del d["jaw_pose"]
    np.savez(tiny_avatar / "flame_param.npz", **d)
    _assert_export_fails(cli, tmp_path, tiny_avatar, "flame_param.npz", "no jaw_pose")


def test_npz_wrong_shape(tiny_avatar, cli, tmp_path):
    d = FlameParams.neutral(3).as_dict()
    d["eyes_pose"] = np.zeros((3, 3), np.float32)
    np.savez(tiny_avatar / "flame_param.npz", **d)
    _assert_export_fails(cli, tmp_path, tiny_avatar, "flame_param.npz", "eyes_pose of shape (3,6)", "(3, 3)")


def test_pickle_with_objects(tiny_avatar, cli, tmp_path):
    import collections

    evil = write_pickle(tmp_path / "evil_flame.pkl", {"v_template": collections.Counter("ab")})
    _assert_export_fails(cli, tmp_path, tiny_avatar, "evil_flame.pkl", "numpy/scipy arrays only", extra=("--flame", evil))


def test_camera_json_non_rigid(tiny_avatar, cli, tmp_path):
    cams = json.loads((tmp_path / "cams.json").read_text())
    m = np.asarray(cams["frames"][1]["transform_matrix"])
    m[:3, :3] *= 1.5  # scaled, not a rotation
    cams["frames"][1]["transform_matrix"] = m.tolist()
    (tmp_path / "bad.json").write_text(json.dumps(cams))
    out = tmp_path / "renders"
    code, _, err = cli("render", "--avatar", tiny_avatar, "--cameras", tmp_path / "bad.json", "--out", out)
    assert code == 2
    one_line_error(err, "bad.json", "rigid", "frames[1]")
    assert not out.exists() and not list(tmp_path.glob(".renders*"))


def test_debug_shows_traceback(tiny_avatar, tmp_path):
    from edit3dgs.cli import main
    from edit3dgs.errors import Edit3DGSError

    (tiny_avatar / "point_cloud.ply").unlink()
    with pytest.raises(Edit3DGSError):
        main(["--debug", "export", "--avatar", str(tiny_avatar), "--out", str(tmp_path / "x.ply")])


def test_cli_package_lists_every_command_and_has_no_hidden_cycles():
    """One parser lists every command; a command module imports only the shared ``common`` of the CLI
    (never the package's ``main`` or another command's module), so importing one never loads another."""
    import ast
    from pathlib import Path

    import edit3dgs.cli as cli_pkg

    sub = cli_pkg.build_parser()._subparsers._group_actions[0].choices
    assert sorted(sub) == sorted(["make-avatar", "render", "export", "capture", "demo", "edit", "eval", "train-editor",
                                  "serve"])
    folder = Path(cli_pkg.__file__).parent
    for path in folder.glob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module == "common", f"{path.name} imports from .{node.module or ''}"
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                names = [node.module] if node.module else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "cli" for n in names), f"{path.name} imports the CLI package"
