"""Cancel, a killed backend, a hung backend, a corrupt avatar, a missing interpreter:
each leaves Blender responsive, the scene unchanged and a clear report."""

from __future__ import annotations

import os
import shutil
import signal
import time

import bpy
import numpy as np
import pytest

from conftest import configure_edit, import_avatar, pump, runtime_mod


def snapshot(prev):
    a = np.empty(len(prev.data.vertices) * 4, np.float32)
    prev.data.attributes["gs_color"].data.foreach_get("color", a)
    return a, len(prev.edit3dgs.versions), prev.edit3dgs.applied, sorted(o.name for o in bpy.data.objects)


def start_edit(ext, iters=200):
    configure_edit(prompt="make the hair blue", iters_per_batch=iters)
    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
    job = runtime_mod().state.edit_job
    # wait until the backend is really working on it
    pump(ext, lambda: job.stage != "" or job.finished, timeout=300)
    assert not job.finished, job.error
    return job


@pytest.mark.parametrize("stage", ["render", "refit"])
def test_cancel_mid_edit(scene, ext, avatar_dir, stage):
    """Cancel during the render and during the refit: the job ends within 2 s, the backend stays alive, and the
    next edit runs on the same backend (no restart, no reloading)."""
    prev = import_avatar(avatar_dir)["preview"]
    before = snapshot(prev)
    over = {"iters_per_batch": 200}
    if stage == "render":  # a render long enough to be caught in: every camera, 8 frames, full resolution
        over.update(use_all_cameras=True, num_timesteps=8, scale=1.0)
    configure_edit(prompt="make the hair blue", **over)
    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
    job = runtime_mod().state.edit_job
    pump(ext, lambda: job.finished or (job.stage.startswith(stage) and job.done >= 1 and job.done < job.total),
         timeout=300, step=0.02)
    assert not job.finished, job.error
    backend = runtime_mod().state.backend
    pid = backend.proc.pid
    t0 = time.monotonic()
    assert bpy.ops.edit3dgs.cancel_edit() == {"FINISHED"}
    pump(ext, lambda: job.finished, timeout=10, step=0.02)
    took = time.monotonic() - t0
    assert took < 2.0, f"cancel during {stage} took {took:.2f} s"
    assert job.state == "cancelled"
    s = scene.edit3dgs
    assert s.status == "CANCELLED" and "cancelled" in s.report.lower() and not s.running
    after = snapshot(prev)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]
    # the backend answered the cancel: still the same process, and it runs the next edit
    assert runtime_mod().state.backend is backend and backend.proc.poll() is None and backend.proc.pid == pid
    configure_edit(prompt="make the hair blue")
    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
    pump(ext, lambda: not s.running, timeout=300)
    assert s.status == "DONE", s.report
    assert backend.proc.pid == pid and backend.proc.poll() is None


def test_killed_backend_mid_edit(scene, ext, avatar_dir):
    prev = import_avatar(avatar_dir)["preview"]
    before = snapshot(prev)
    job = start_edit(ext)
    os.kill(runtime_mod().state.backend.proc.pid, signal.SIGKILL)
    longest = pump(ext, lambda: job.finished, timeout=10)
    assert longest < 0.25
    s = scene.edit3dgs
    assert job.state == "failed" and s.status == "FAILED"
    assert "backend stopped unexpectedly" in s.report and "backend.log" in s.report, s.report
    after = snapshot(prev)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]
    assert runtime_mod().log_path().is_file()
    assert bpy.ops.edit3dgs.open_log(which="backend") == {"FINISHED"}
    assert "backend.log" in bpy.data.texts
    # the next job starts a fresh backend
    import_avatar(avatar_dir)


def test_hung_backend(scene, ext, avatar_dir):
    prev = import_avatar(avatar_dir)["preview"]
    before = snapshot(prev)
    prefs = bpy.context.preferences.addons[ext.__name__].preferences
    try:
        job = start_edit(ext)
        prefs.hang_timeout = 5.0  # after the start: loading may legitimately be silent for a while
        pid = runtime_mod().state.backend.proc.pid
        os.kill(pid, signal.SIGSTOP)  # alive but silent
        runtime_mod().backend()  # picks up the new timeout
        pump(ext, lambda: job.finished, timeout=30)
    finally:
        prefs.hang_timeout = 600.0
    s = scene.edit3dgs
    assert job.state == "failed" and "said nothing for 5 s" in s.report, s.report
    after = snapshot(prev)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]


def test_corrupt_avatar_folder(scene, ext, avatar_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(avatar_dir, bad)
    ply = bad / "point_cloud.ply"
    ply.write_bytes(ply.read_bytes()[:5000])
    names = sorted(o.name for o in bpy.data.objects)
    with pytest.raises(RuntimeError, match=r"Import failed: .*point_cloud\.ply.*expected"):
        bpy.ops.edit3dgs.import_avatar(directory=str(bad))
    assert sorted(o.name for o in bpy.data.objects) == names
    assert "point_cloud.ply" in scene.edit3dgs.report
    with pytest.raises(RuntimeError, match="expected an avatar folder, found no such folder"):
        bpy.ops.edit3dgs.import_avatar(directory=str(tmp_path / "nope"))
    (bad / "point_cloud.ply").unlink()
    with pytest.raises(RuntimeError, match="no point_cloud.ply"):
        bpy.ops.edit3dgs.import_avatar(directory=str(bad))
    assert sorted(o.name for o in bpy.data.objects) == names


def test_missing_interpreter(scene, ext, avatar_dir, monkeypatch):
    prev = import_avatar(avatar_dir)["preview"]
    before = snapshot(prev)
    monkeypatch.setenv("EDIT3DGS_BACKEND_PYTHON", "/nonexistent/python3")
    with pytest.raises(RuntimeError, match="backend Python not found: /nonexistent/python3"):
        bpy.ops.edit3dgs.import_avatar(directory=str(avatar_dir))
    configure_edit(prompt="make the hair blue")
    with pytest.raises(RuntimeError, match="backend Python not found"):
        bpy.ops.edit3dgs.run_edit()
    assert "Set Up Backend" in scene.edit3dgs.report
    after = snapshot(prev)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]
