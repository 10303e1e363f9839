"""CPU threads: the backend leaves cores other processes keep busy and its idle threads sleep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edit3dgs import threads
from edit3dgs.errors import Edit3DGSError

BACKEND = Path(__file__).resolve().parents[1] / "backend"


def test_auto_leaves_the_cores_other_processes_keep_busy(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    for busy, want in ((0.0, 8), (0.4, 8), (2.6, 5), (7.9, 1), (12.0, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda b=busy: b)
        assert threads.resolve("auto") == want
        assert threads.resolve(None) == want


def test_explicit_counts_and_the_environment(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.resolve("3") == 3 and threads.resolve(1) == 1
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.resolve(None) == 2
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(Edit3DGSError, match="^--threads: .*whole number of threads"):
            threads.resolve(bad)
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(Edit3DGSError, match=f"^{threads.ENV}: "):
        threads.resolve(None)


def test_busy_cores_sees_a_cpu_bound_neighbour():
    if threads._cpu_times() is None:
        pytest.skip("no /proc/stat on this system: auto falls back to all cores")
    before = threads.busy_cores(0.5)
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        during = threads.busy_cores(0.5)
        # One more core busy (unless the machine was already saturated before the neighbour came).
        assert during > before + 0.6 or before > threads.available_cores() - 1, (before, during)
        assert 0 <= during <= threads.available_cores() + 1e-6
    finally:
        proc.kill()
        proc.wait()


def test_cli_sets_the_thread_count_of_its_process(tmp_path):
    """``edit3dgs --threads 1 ...``: PyTorch runs one intra-op thread; ``EDIT3DGS_THREADS`` does the
    same for a command without the flag (what the Blender preference sets for the backend)."""
    code = ("import os, sys; from edit3dgs import cli; "
            "rc = cli.main(sys.argv[1:]); import torch; print(rc, torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != threads.ENV}
    env["PYTHONPATH"] = str(BACKEND)
    args = ["make-avatar", "--frames", "2", "--gaussians-per-face", "1", "--out"]
    r = subprocess.run([sys.executable, "-c", code, "--threads", "1", *args, str(tmp_path / "a")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["0", "1"], r.stderr
    if (os.cpu_count() or 1) > 1:
        env[threads.ENV] = "2"
        r = subprocess.run([sys.executable, "-c", code, *args, str(tmp_path / "b")], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stdout.split()[-2:] == ["0", "2"], r.stderr


def test_apply_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert threads.apply(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
