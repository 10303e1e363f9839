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
