"""Issue 17 over the protocol, driving `edit3dgs serve` as a subprocess: no job writes onto, into or over
its input, `overwrite` never replaces a folder this project did not write, and a cancel at any stage of
an edit, beside CPU-bound neighbours, ends the job "cancelled" with nothing at its outputs.

The time bound here is generous (a loaded CI machine must not make it flake); the 2 s figure and its
distribution are measured by benchmarks/cancel_bench.py (benchmarks/results/cancel_cpu.txt).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_errors import tiny_avatar  # noqa: F401  (fixture)
from test_server import Serve

CANCEL_BOUND_S = 10.0  # the test's bound; the promise (2 s) is the benchmark's to show


def tree_hash(folder: Path) -> dict:
    """Every path under ``folder`` -> the sha256 of its bytes (None for folders)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _serve() -> Serve:
    s = Serve()
    assert s.recv(60)[0] == "ready"
    return s


def _close(s: Serve) -> None:
    s.close(30)


@pytest.fixture(scope="module")
def busy_server():
    """`edit3dgs serve` beside one CPU-bound process per core (started here, killed after)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    s = _serve()
    try:
        yield s
    finally:
        _close(s)
        for p in busy:
            p.kill()
            p.wait()


# The edit the cancels interrupt: small, so that each job reaches its stage in a few seconds.
SMALL = {"prompt": "make the hair blue", "num_timesteps": 2, "cameras": [0, 4], "scale": 0.125, "iters_per_batch": 1}


@pytest.mark.parametrize("stage", ["render", "edit", "refit", "save", "export"])
def test_cancel_at_each_stage_beside_busy_neighbours(busy_server, builtin_avatar_dir, tmp_path, stage):
    srv = busy_server
    before = tree_hash(builtin_avatar_dir)
    out_dir, npz = tmp_path / "job" / "avatar", tmp_path / "job" / "gaussians.npz"
    (tmp_path / "job").mkdir()
    jid = f"cancel-{stage}"
    srv.send("job", {"id": jid, "kind": "edit", "args": {"avatar": str(builtin_avatar_dir), "out_dir": str(out_dir),
                                                         "npz": str(npz), "settings": SMALL}})
    sent, last = None, None
    while True:
        k, p = srv.recv(300)
        if p.get("id") != jid:
            continue
        if k == "progress":
            last = (p["stage"], p["done"], p["total"])
            # the first message of the stage (for the edit, the first image: more follow)
            if sent is None and p["stage"] == stage and p["done"] < p["total"]:
                srv.send("cancel", {"id": jid})
                sent = time.monotonic()
            continue
        took = time.monotonic() - sent if sent is not None else None
        break
    assert sent is not None, f"the job ended '{k}' ({p}) before any progress of its '{stage}' stage"
    assert k == "cancelled", f"cancel at {stage}: expected the reply 'cancelled', found '{k}': {p}"
    assert took < CANCEL_BOUND_S, f"cancel at {stage}: expected the reply within {CANCEL_BOUND_S} s, found {took:.2f} s"
    # it stopped in the stage it was cancelled in, not at a later check (the region editor's edit of four
    # images takes about a millisecond, less than a cancel's round trip: there, the refit's first check)
    allowed = {stage} | ({"refit"} if stage == "edit" else set())
    assert last[0] in allowed and (last[0] == stage or last[1] <= 1), \
        f"cancel at {stage}: expected no progress of a later stage, found {last}"
    # nothing at either output, no temporary left beside them, the input's bytes unchanged
    left = sorted(os.listdir(tmp_path / "job"))
    assert left == [], f"cancel at {stage}: expected nothing in {tmp_path / 'job'}, found {left}"
    assert tree_hash(builtin_avatar_dir) == before, f"cancel at {stage}: the input avatar {builtin_avatar_dir} changed"
    srv.send("ping", {})  # and the server carries on
    assert srv.until({"pong"}, timeout=60)[0] == "pong"


@pytest.fixture(scope="module")
def quiet_server():
    s = _serve()
    yield s
    _close(s)


def _writing_jobs(avatar: Path, tmp: Path) -> list[tuple[str, str, dict, object]]:
    """(label, job kind, args, where the output goes) for every job kind that writes and every output it has."""
    cams, motion = tmp / "shot_cams.json", tmp / "shot_motion.npz"
    base = {
        "export_rig": {"avatar": str(avatar)},
        "world_positions": {"avatar": str(avatar), "params": {}},
        "edit": {"avatar": str(avatar), "settings": {"prompt": "make the hair blue", "overwrite": True}},
        "region_masks": {"avatar": str(avatar), "camera": {"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]],
                                                           "fx": 50, "fy": 50, "cx": 32, "cy": 32, "w": 64, "h": 64},
                         "regions": ["hair"]},
        "render_shot": {"avatar": str(avatar), "cameras": str(cams), "flame_params": str(motion)},
    }
    outputs = [("export_rig", "out"), ("world_positions", "out"), ("edit", "out_dir"), ("edit", "npz"),
               ("region_masks", "out"), ("render_shot", "outputs"), ("render_shot", "work_dir")]
    return [(f"{kind}.{key}", kind, base[kind], key) for kind, key in outputs]


@pytest.mark.parametrize("case", ["equal", "inside", "parent", "dotdot", "symlink"])
def test_no_job_writes_onto_into_or_over_its_input(quiet_server, tiny_avatar, tmp_path, case):  # noqa: F811
    """Issue 17, item 1, for every job kind that writes and every output path it takes."""
    srv = quiet_server
    (tmp_path / "link").symlink_to(tiny_avatar, target_is_directory=True)
    (tmp_path / "x").mkdir()
    target = {"equal": tiny_avatar, "inside": tiny_avatar / "out", "parent": tmp_path,
              "dotdot": tmp_path / "x" / ".." / tiny_avatar.name / "out", "symlink": tmp_path / "link" / "out"}[case]
    before = tree_hash(tmp_path)
    for label, kind, args, key in _writing_jobs(tiny_avatar, tmp_path):
        if case == "parent" and key == "work_dir":
            continue  # a shot writes only work_dir/frames: the avatar's parent as work_dir is no parent of the output
        jid = f"{case}-{label}"
        args = {**args, key: [str(target)] if key == "outputs" else str(target)}
        if key == "npz":
            args["out_dir"] = str(tmp_path / "elsewhere" / "v1")
        if kind == "render_shot":
            args.setdefault("outputs", [str(tmp_path / "elsewhere" / "f.png")])
            args.setdefault("work_dir", str(tmp_path / "elsewhere" / "work"))
        srv.send("job", {"id": jid, "kind": kind, "args": args})
        k, p = srv.until({"done", "error", "cancelled"}, jid, timeout=120)
        assert k == "error" and p["kind"] == "input", f"{label} -> {target}: expected a refusal, found '{k}': {p}"
        assert "outside every input" in p["message"] and f"job argument '{key}'" in p["message"], \
            f"{label} -> {target}: expected the one-line error naming the argument and the input, found {p['message']!r}"
        assert "\n" not in p["message"]
        assert tree_hash(tmp_path) == before, f"{label} -> {target}: the files under {tmp_path} changed"


def test_overwrite_never_replaces_a_folder_this_project_did_not_write(quiet_server, builtin_avatar_dir, tmp_path):
    """Issue 17, item 2: an edit with overwrite on, onto a folder of someone else's files, is refused before it
    runs, and the folder is as it was."""
    srv = quiet_server
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"irreplaceable")
    before, avatar_before = tree_hash(tmp_path), tree_hash(builtin_avatar_dir)
    srv.send("job", {"id": "ow", "kind": "edit", "args": {"avatar": str(builtin_avatar_dir), "out_dir": str(photos),
                                                          "settings": {"prompt": "make the hair blue", "overwrite": True}}})
    stages = []
    while True:
        k, p = srv.recv(300)
        if p.get("id") == "ow" and k == "progress":
            stages.append(p["stage"])
        elif p.get("id") == "ow":
            break
    assert k == "error" and p["kind"] == "input" and "a folder this program wrote" in p["message"] \
        and str(photos) in p["message"], f"expected the refusal naming {photos}, found '{k}': {p}"
    assert stages == [], f"expected the refusal before any work, found progress of {sorted(set(stages))}"
    assert tree_hash(tmp_path) == before and tree_hash(builtin_avatar_dir) == avatar_before
