"""EditSession / `edit3dgs edit`: local edits, cancellation leaves nothing, clear one-line errors, edit.json."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edit3dgs.avatar import GaussianAvatar
from edit3dgs.bundle import open_avatar
from edit3dgs.cameras import camera_rig, look_at, save_cameras
from edit3dgs.errors import CancelledError
from edit3dgs.loop import EditSession, EditSettings

REPO = Path(__file__).resolve().parents[1]
FAST = dict(scale=0.1, timesteps=[0, 3], cameras=[4, 12], iters_per_batch=3)


@pytest.fixture(scope="module")
def small_avatar(tmp_path_factory):
    from edit3dgs.builtin import make_avatar

    out = tmp_path_factory.mktemp("loop") / "avatar"
    make_avatar(out, identity=0, frames=6, gaussians_per_face=1, sh_degree=1)
    return out


def tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_local_edit_keeps_other_gaussians_bit_identical(small_avatar, tmp_path):
    b = open_avatar(small_avatar)
    out = EditSession(b, EditSettings(prompt="make the hair blue", regions=["hair"], **FAST)).run(tmp_path / "ed")
    g0 = GaussianAvatar.load_ply(small_avatar / "point_cloud.ply")
    g1 = GaussianAvatar.load_ply(out / "point_cloud.ply")
    hair = b.gaussian_mask(["hair"])
    assert torch.equal(g0.binding, g1.binding)
    for name in g0.PARAM_NAMES:
        assert torch.equal(getattr(g0, name)[~hair], getattr(g1, name)[~hair]), name
    assert not torch.equal(g0.features_dc[hair], g1.features_dc[hair])
    rec = json.loads((out / "edit.json").read_text())
    assert rec["instruction"] == "make the hair blue" and rec["editor"] == "region"
    assert rec["settings"]["regions"] == ["hair"] and rec["seeds"] == [0]
    assert rec["edit_set"] == {"cameras": [4, 12], "timesteps": [0, 3], "resolution": [55, 80]}
    assert {"render", "edit", "refit", "save"} <= set(rec["timings_s"])
    assert rec["metrics"]["iterations"] == 6 and rec["colour_maps"][0]["region"] == "hair"
    # the new folder is a complete avatar of its own
    again = open_avatar(out)
    assert again.gaussians.num_gaussians == b.gaussians.num_gaussians
    assert json.loads((out / "avatar.json").read_text())["edit"]["instruction"] == "make the hair blue"


def test_default_edit_set_and_rounds(small_avatar, tmp_path):
    b = open_avatar(small_avatar)
    s = EditSettings(prompt="give her red lips", scale=0.08, num_timesteps=3, rounds=2, reedit_each_round=True,
                     iters_per_batch=1, views_per_iter=2)
    stages = []
    sess = EditSession(b, s, progress=lambda st, d, n: stages.append(st))
    out = sess.run(tmp_path / "ed")
    rec = json.loads((out / "edit.json").read_text())
    assert rec["edit_set"]["cameras"] == [i for i in range(16) if i != 8]   # training cameras, held-out 8 excluded
    assert rec["edit_set"]["timesteps"] == [0, 12, 23]                      # a spread over 24 timesteps
    assert rec["seeds"] == [0, 1] and rec["metrics"]["iterations"] == 6
    assert "refit 1/2" in stages and "refit 2/2" in stages and "render" in stages and "edit" in stages


@pytest.mark.parametrize("when", [1, 5, 12])  # during render, edit, refit
def test_cancel_leaves_input_untouched_and_no_output(small_avatar, tmp_path, when):
    before = tree_hash(small_avatar)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= when

    b = open_avatar(small_avatar)
    with pytest.raises(CancelledError):
        EditSession(b, EditSettings(prompt="make the hair blue", **FAST), should_stop=should_stop).run(tmp_path / "ed")
    assert calls["n"] == when
    assert not (tmp_path / "ed").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    assert tree_hash(small_avatar) == before


def test_keyboard_interrupt_during_refit(small_avatar, tmp_path):
    def progress(stage, done, total):
        if stage == "refit" and done == 2:
            raise KeyboardInterrupt

    b = open_avatar(small_avatar)
    with pytest.raises(KeyboardInterrupt):
        EditSession(b, EditSettings(prompt="make the hair blue", **FAST), progress=progress).run(tmp_path / "ed")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_of_edit_command_leaves_nothing(small_avatar, tmp_path):
    before = tree_hash(small_avatar)
    out = tmp_path / "ed"
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edit3dgs.cli", "edit", "--avatar", str(small_avatar),
                                 "--prompt", "make the hair blue", "--scale", "0.1", "--cameras", "4,12",
                                 "--timesteps", "0,3", "--iters-per-batch", "100000", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=fh, env=env)
        try:
            deadline = time.time() + 300  # generous: shared CI machines can be slow
            while time.time() < deadline and b"refit" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            assert b"refit" in log.read_bytes(), "the refit never started"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt"]
    assert tree_hash(small_avatar) == before


def test_unknown_instruction_one_line(small_avatar, tmp_path, cli):
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "add a pirate hat", "--out", tmp_path / "ed")
    assert code == 2
    one_line_error(err, "--editor ip2p", "pirate hat")
    assert not (tmp_path / "ed").exists()


def test_empty_edit_set_one_line(small_avatar, tmp_path, cli):
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "make the hair blue", "--timesteps", ",",
                         "--out", tmp_path / "ed")
    assert code == 2
    one_line_error(err, "--timesteps", "found ',' (an empty item)")  # refused, never read as "all timesteps"
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "make the hair blue", "--timesteps", "0,99",
                         "--out", tmp_path / "ed")
    assert code == 2
    one_line_error(err, "--timesteps", "[99]")
    assert not (tmp_path / "ed").exists()


def test_cameras_that_see_nothing_one_line(small_avatar, tmp_path, cli):
    rig = camera_rig(110, 160)
    away = rig[3]
    away.c2w = look_at(away.center, away.center * 2)  # looks away from the head
    save_cameras(tmp_path / "cams.json", [rig[5], away])
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "make the hair blue",
                         "--cameras", tmp_path / "cams.json", "--timesteps", "0", "--out", tmp_path / "ed")
    assert code == 2
    one_line_error(err, "cams.json", "camera(s) [3] see nothing")
    assert not (tmp_path / "ed").exists()


def test_edit_command_writes_avatar(small_avatar, tmp_path, cli):
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "green eyes", "--scale", "0.1", "--cameras", "7,9",
                         "--timesteps", "0", "--iters-per-batch", "2", "--out", tmp_path / "ed")
    assert code == 0, err
    assert "refit" in err and "edited avatar written" in out
    assert (tmp_path / "ed" / "point_cloud.ply").is_file() and (tmp_path / "ed" / "edit.json").is_file()
    # never over an existing result without --overwrite
    code, out, err = cli("edit", "--avatar", small_avatar, "--prompt", "green eyes", "--out", tmp_path / "ed")
    assert code == 2
    one_line_error(err, "folder with files in it")


def test_editor_hooks_reach_the_loop(small_avatar, tmp_path, monkeypatch):
    """The loop asks an editor through Editor's hooks only: a stand-in that keeps the renders and asks
    for region colours, appearance-only refits and a record gets each, and the defaults ask for nothing."""
    from edit3dgs import edit as edit_mod
    from edit3dgs.edit import Editor

    seen = {}

    class Keep(Editor):
        name = "keep"

        def regions_for(self, instruction):
            return ["hair"]

        def set_background(self, background):
            seen["background"] = background

        def edit(self, request, progress=None):
            seen["colours"] = sorted(request.region_colours)
            return request.images

        def record(self):
            return {"kept": True}

    class Asks(Keep):
        appearance_only = True
        uses_region_colours = True

    b = open_avatar(small_avatar)
    for cls, out in ((Keep, tmp_path / "plain"), (Asks, tmp_path / "asks")):
        monkeypatch.setattr(edit_mod, "make_editor", lambda name, **o: cls())
        saved = EditSession(b, EditSettings(prompt="keep it", **{**FAST, "iters_per_batch": 1})).run(out)
        rec = json.loads((saved / "edit.json").read_text())
        assert rec["editor"] == "keep" and rec["kept"] is True and "colour_maps" not in rec
        assert seen["background"] == tuple(b.meta.get("background", (1.0, 1.0, 1.0)))
        assert seen["colours"] == (["hair"] if cls is Asks else [])
        assert rec["metrics"]["appearance_only"] is (cls is Asks)
