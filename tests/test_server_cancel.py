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
    if s.p.poll() is None:
        s.send("shutdown", {})
        try:
            s.p.wait(30)
        except subprocess.TimeoutExpired:
            s.p.kill()
            s.p.wait()


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
