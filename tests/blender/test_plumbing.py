"""The bpy-free parts of the add-on: wire format, bridge (with the real backend), job arguments, installer, maths."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from edit3dgs_addon import bridge, installer, jobargs, protocol, rigfile


def make_backend(backend_py, tmp_path, **kw):
    return bridge.Backend(backend_py, tmp_path / "log" / "backend.log", **kw)


def test_bridge_job_progress_and_cancel_within_2s(backend_py, tmp_path):
    b = make_backend(backend_py, tmp_path)
    try:
        done = []
        job = b.submit("sleep", {"seconds": 0.3}, on_finish=done.append)
        b.wait(job, 60)
        assert job.state == "done" and done == [job] and b.ready
        job = b.submit("sleep", {"seconds": 30})
        b.wait  # noqa
        while job.stage == "" and not job.finished:
            b.poll()
            time.sleep(0.02)
        t0 = time.monotonic()
        b.cancel(job)
        while not job.finished:
            b.poll()
            time.sleep(0.01)
        assert job.state == "cancelled" and time.monotonic() - t0 < 2.0
        assert b.alive  # a cooperative cancel keeps the backend (and its models)
    finally:
        b.shutdown()
    assert not b.alive


def test_bridge_errors_are_reported(backend_py, tmp_path):
    b = make_backend(backend_py, tmp_path)
    try:
        job = b.wait(b.submit("export_rig", {"avatar": str(tmp_path / "missing"), "out": str(tmp_path / "x.npz")}), 60)
        assert job.state == "failed" and "expected an avatar folder, found no such folder" in job.error
        job = b.wait(b.submit("no_such_kind", {}), 30)
        assert job.state == "failed" and "job kind" in job.error
    finally:
        b.shutdown()


def test_bridge_missing_interpreter(tmp_path, monkeypatch):
    monkeypatch.delenv("EDIT3DGS_BACKEND_PYTHON", raising=False)
    with pytest.raises(bridge.BridgeError, match="backend Python not found"):
        make_backend("/nope/python", tmp_path).submit("sleep", {})
    with pytest.raises(bridge.BridgeError, match="no backend Python set"):
        make_backend("", tmp_path).submit("sleep", {})


def test_bridge_interpreter_without_backend(tmp_path, monkeypatch):
    """A Python without edit3dgs: the process exits at once; the report quotes the log."""
    monkeypatch.delenv("EDIT3DGS_BACKEND_PYTHON", raising=False)
    b = make_backend(sys.executable, tmp_path)
    job = b.wait(b.submit("sleep", {}), 30)
    assert job.state == "failed"
    assert "stopped unexpectedly" in job.error and "edit3dgs" in job.error


def test_edit_settings_mapping():
    ui = dict(prompt=" make the hair blue ", editor="ip2p", steps=12, guidance_text=6.0, guidance_image=1.2, rounds=2,
              iters_per_batch=10, views_per_iter=2, scale=0.5, seed=3, timesteps="0-8:4", num_timesteps=4,
              use_frame_range=False, preserve_eyes=True, preserve_mouth=False, mask_source="DETECTOR",
              mask_text="eyes, teeth", mask_dilation=2, mask_strength=0.8, local_regions="hair, ears", cameras=[0, 4],
              temporal_keys=True)
    s = jobargs.edit_settings(ui, {"device": "cpu", "editor_model": "/models/ip2p"})
    assert s["prompt"] == "make the hair blue" and s["timesteps"] == "0-8:4" and s["regions"] == ["hair", "ears"]
    assert s["iters_per_batch"] == 10 and s["cameras"] == [0, 4] and s["rounds"] == 2 and s["views_per_iter"] == 2
    o = s["editor_options"]
    assert o["steps"] == 12 and o["inpaint_regions"] == ["eye_region", "eyes"] and o["mask_source"] == "detector"
    assert o["detector_queries"] == ["eyes", "teeth"] and o["model"] == "/models/ip2p" and o["temporal_keys"] is True
    assert jobargs.edit_settings({**ui, "temporal_keys": False}, {})["editor_options"]["temporal_keys"] is False
    # what the artist did not set is not sent: the backend decides it, as for `edit3dgs edit`
    assert jobargs.edit_settings({"prompt": "make the hair blue"}, {"device": "auto"}) == {"prompt": "make the hair blue"}
    assert "seed" not in o  # the loop seeds each round (--seed + round), as on the command line
    assert jobargs.parse_names({"lips", "eyes"}) == ["eyes", "lips"] and jobargs.parse_names(set()) is None
    assert jobargs.edit_settings({**ui, "ip2p_model": "builtin"}, {"editor_model": "/models/ip2p"})["editor_options"]["model"] == "builtin"
    assert jobargs.edit_settings({**ui, "ip2p_model": "custom"}, {"editor_model": "/m"})["editor_options"]["model"] == "/m"
    # every name is a field of the backend's EditSettings (read from its source: no torch here)
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "backend" / "edit3dgs" / "loop.py"
    cls = next(n for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ClassDef) and n.name == "EditSettings")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert set(s) <= fields, set(s) - fields


def test_installer_steps(tmp_path):
    def pip_calls(cmds):
        return [argv for _, argv in cmds if argv[1:4] == ["-m", "pip", "install"]]

    def torch_call(cmds):
        return next(argv for argv in pip_calls(cmds) if installer.TORCH in argv)

    cmds = installer.setup_commands("/usr/bin/python3", tmp_path / "venv", tmp_path / "backend", gpu=False,
                                    system="Linux")
    labels = [c[0] for c in cmds]
    assert labels.index("install torch (CPU)") < labels.index("install backend")
    # the right PyTorch build with the index it needs
    assert torch_call(cmds)[-2:] == ["--index-url", installer.TORCH_CPU_INDEX]
    for system in ("Linux", "Windows"):
        gpu = installer.setup_commands("py", tmp_path, tmp_path, gpu=True, system=system)
        assert torch_call(gpu)[-2:] == ["--index-url", installer.TORCH_CUDA_INDEX], system
    assert torch_call(installer.setup_commands("py", tmp_path, tmp_path, gpu=False, system="Windows"))[-1] == \
        installer.TORCH_CPU_INDEX
    assert "--index-url" not in torch_call(installer.setup_commands("py", tmp_path, tmp_path, gpu=False, system="Darwin"))
    # the diffusion extras only when asked for (the Instruct-Pix2Pix editor)
    assert pip_calls(cmds)[-1][-1] == str(tmp_path / "backend")
    ip2p = installer.setup_commands("py", tmp_path, tmp_path / "backend", extras="diffusion", gpu=False)
    assert pip_calls(ip2p)[-1][-1] == f"{tmp_path / 'backend'}[diffusion]"
    # a wheels folder: every install from it, nothing from an index
    offline = installer.setup_commands("py", tmp_path, tmp_path / "backend", gpu=True, wheels=tmp_path / "wheels",
                                       system="Linux")
    for argv in pip_calls(offline):
        assert "--no-index" in argv and argv[argv.index("--find-links") + 1] == str(tmp_path / "wheels"), argv
        assert "--index-url" not in argv and "--upgrade" not in argv, argv
    ok = installer.StepRunner([("a", [sys.executable, "-c", "print('hi')"]), ("b", [sys.executable, "-c", "pass"])],
                              tmp_path / "setup.log")
    while ok.poll()[0] == "running":
        time.sleep(0.02)
    assert ok.state == "done" and ok.factor == 1.0 and "hi" in (tmp_path / "setup.log").read_text()
    bad = installer.StepRunner([("a", [sys.executable, "-c", "pass"]), ("boom", [sys.executable, "-c", "raise SystemExit(3)"])],
                               tmp_path / "setup2.log")
    while bad.poll()[0] == "running":
        time.sleep(0.02)
    assert bad.state == "failed" and "boom failed (exit status 3)" in bad.error
    assert bad.factor == 0.5, "a failed setup is not a full bar"
    slow = installer.StepRunner([("sleep", [sys.executable, "-c", "import time; time.sleep(60)"])], tmp_path / "s3.log")
    t0 = time.monotonic()
    slow.cancel()
    assert time.monotonic() - t0 < 2.5 and slow.state == "cancelled" and slow.proc.poll() is not None
    assert slow.factor < 1.0


def test_stage_backend_copies_source(tmp_path):
    src = tmp_path / "ext" / "backend"
    (src / "edit3dgs").mkdir(parents=True)
    (src / "pyproject.toml").write_text("[project]\nname='x'\n")
    (src / "edit3dgs" / "__init__.py").write_text("")
    out = installer.stage_backend(src, tmp_path / "user" / "backend_src")
    assert (out / "pyproject.toml").is_file() and (out.parent / "README.md").is_file()


def test_camera_intrinsics_as_blender():
    c = rigfile.blender_camera(fx=1000, fy=1000, cx=300, cy=200, w=640, h=480)
    assert c["sensor_fit"] == "HORIZONTAL" and abs(c["lens"] - 1000 * 36 / 640) < 1e-9
    assert abs(c["shift_x"] - (-(300 - 320) / 640)) < 1e-12 and abs(c["shift_y"] - ((200 - 240) / 640)) < 1e-12
    v = rigfile.blender_camera(fx=2000, fy=2000, cx=275, cy=401, w=550, h=802)
    assert v["sensor_fit"] == "VERTICAL" and abs(v["lens"] - 2000 * 36 / 802) < 1e-9


def test_driver_expressions():
    # (R - I) from a quaternion, as the pose-corrective drivers compute it
    rng = np.random.default_rng(0)
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    from mathutils import Quaternion

    R = np.array(Quaternion((w, x, y, z)).to_matrix())
    for r in range(3):
        for c in range(3):
            val = eval(rigfile.pose_feature_expression(r, c), {}, dict(w=w, x=x, y=y, z=z))
            assert abs(val - (R[r, c] - (r == c))) < 1e-6
    coefs = rng.normal(size=100) * 1e-3
    vals = rng.normal(size=100)
    parts = rigfile.linear_expressions(coefs, [f"e{i}" for i in range(100)])
    assert all(len(e) <= 256 for e, _ in parts) and len(parts) > 1
    total = sum(eval(e, {}, {f"e{i}": vals[i] for i in range(100)}) for e, _ in parts)
    assert abs(total - coefs @ vals) < 1e-9


def test_unique_weight_groups():
    w = np.array([0.0, 0.5, 0.25, 0.5, 1.0], np.float32)
    groups = dict(rigfile.unique_weight_groups(w))
    assert groups == {0.25: [2], 0.5: [1, 3], 1.0: [4]}


FAKE_BACKENDS = {
    # says ready, then closes its output and keeps running (the 19 s freeze of the red-team report)
    "closes_output": "os.write(1, READY); os.close(1); time.sleep(60)",
    # says ready, then neither reads nor answers: the requests fill the pipe
    "stops_reading": "os.write(1, READY); time.sleep(60)",
    # a backend of another Edit3DGS version: its protocol number differs
    "other_protocol": "os.write(1, READY.replace(b':1', b':99')); time.sleep(60)",
}


def _fake_backend(tmp_path, name):
    body = FAKE_BACKENDS[name]
    script = tmp_path / f"fake_{name}.py"
    script.write_text("import os, time\nREADY = b'[\"ready\",{\"protocol\":1}]\\0'\n" + body + "\n")
    exe = tmp_path / f"fake_{name}"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")  # called as `exe -m edit3dgs.cli serve ...`
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize("name", sorted(set(FAKE_BACKENDS) - {"other_protocol"}))
def test_bridge_never_blocks_on_a_backend_that_stops_talking(tmp_path, monkeypatch, name):
    """Every call the main thread makes returns within 50 ms; the stuck backend is reported and ended from polls."""
    monkeypatch.delenv("EDIT3DGS_BACKEND_PYTHON", raising=False)
    b = make_backend(_fake_backend(tmp_path, name), tmp_path, cancel_timeout=1.0)
    longest = [0.0, ""]

    def timed(label, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        dt = time.perf_counter() - t
        if dt > longest[0]:
            longest[:] = [dt, label]
        return r

    job = timed("submit", b.submit, "sleep", {"seconds": 1})
    pid = b.proc.pid
    # 4 MB of requests: far more than a pipe holds, so a blocking write would hang here
    extra = [timed("submit", b.submit, "sleep", {"seconds": 1, "pad": "x" * 100_000}) for _ in range(40)]
    end = time.monotonic() + 15
    while not job.finished and time.monotonic() < end:
        timed("poll", b.poll)
        if name == "stops_reading" and job.cancel_requested is None and time.monotonic() - job.started > 0.3:
            timed("cancel", b.cancel, job)
        time.sleep(0.01)
    timed("shutdown", b.shutdown)
    assert longest[0] < 0.05, f"{longest[1]} blocked the main loop for {longest[0] * 1000:.0f} ms"
    assert job.finished and job.state in ("failed", "cancelled"), job.state
    if name == "closes_output":
        assert "closed its output but kept running" in job.error, job.error
    else:
        assert "did not stop" in b.exit_reason, (b.exit_reason, job.error)
    assert all(j.finished for j in extra)
    # the process is ended (it was sent SIGKILL; reaped here if the bridge has not yet)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        b.poll()
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
        except ChildProcessError:
            break  # already reaped by the bridge
        time.sleep(0.02)
    else:
        raise AssertionError("the stuck backend was not ended")


def test_progress_text_has_the_stage_and_a_time_estimate():
    job = bridge.Job("j", "edit", {})
    assert job.progress_text() == "starting"
    job.stage, job.done, job.total, job.stage_started = "refit", 10, 40, 100.0
    assert job.progress_text(now=101.0) == "refit 10/40"  # too early to tell
    assert job.progress_text(now=110.0) == "refit 10/40, about 30 s left"
    job.done = 1
    assert job.progress_text(now=110.0) == "refit 1/40, about 6 min left"


def test_one_overall_bar_across_stages_and_rounds():
    from edit3dgs_addon.overall import Overall

    # re-editing every round (reedit_each_round): render, edit, refit per round
    ov = Overall(rounds=2, editor="region", now=0.0, reedit=True)
    assert ov.fraction == 0.0 and ov.text() == "starting"
    seen, t = [], 0.0
    for r in range(2):
        for stage, total in (("render", 4), ("edit", 8), (f"refit {r + 1}/2", 50)):
            for d in range(1, total + 1):
                t += 0.1
                ov.update(stage, d, total, now=t)
                seen.append(ov.fraction)
    ov.update("save", 0, 1, now=t + 0.1)
    seen.append(ov.fraction)
    assert all(b >= a for a, b in zip(seen, seen[1:])), "the bar went back"
    assert abs(seen[61] - 0.475) < 1e-9 and 0.9 < seen[-1] < 1.0  # half of all rounds after round 1; save at the end
    assert ov.round == 1
    # the backend's default (the panel's): render and edit once, then one refit per round
    ov = Overall(rounds=2, editor="region", now=0.0)
    seen = []
    for stage, total in (("render", 4), ("edit", 8), ("refit 1/2", 50), ("refit 2/2", 50)):
        for d in range(1, total + 1):
            ov.update(stage, d, total, now=1.0)
            seen.append(ov.fraction)
    assert all(b >= a for a, b in zip(seen, seen[1:])), "the bar went back"
    end_round1, end_round2 = seen[4 + 8 + 50 - 1], seen[-1]
    assert end_round2 - end_round1 > 0.3, "the second refit moves the bar"
    assert abs(end_round2 - 0.95) < 1e-9 and ov.round == 1   # all but the save
    # the stage, its count, where the whole job is, and the time left for the whole job
    ov2 = Overall(rounds=1, editor="region", now=0.0)
    ov2.update("render", 4, 4, now=1.0)
    ov2.update("edit", 8, 8, now=1.5)
    ov2.update("refit", 1, 60, now=2.0)
    ov2.update("refit", 30, 60, now=10.0)
    f = ov2.fraction
    assert abs(f - (0.95 * (0.15 + 0.05) / 0.95 + 0.75 * 0.5)) < 1e-6, f
    assert ov2.text(now=10.0) == f"refit 30/60 · {round(100 * f)} %, about {round(10.0 / f * (1 - f))} s left"
    # the next edit's shares are this one's measured times
    shares = ov2.measured_shares(now=20.0)
    assert abs(sum(shares.values()) - 1) < 1e-9 and shares["refit"] > shares["render"] > shares["edit"]


def test_cpu_threads_preference_reaches_the_backend(ext):
    """Preferences > CPU Threads: the backend (re)starts with that many threads (EDIT3DGS_THREADS);
    0 means Auto (the backend measures the cores other programs leave free before each job)."""
    import bpy
    from conftest import runtime_mod

    rt = runtime_mod()
    prefs = bpy.context.preferences.addons[ext.__name__].preferences

    def backend_env():
        import time

        b = rt.backend()
        b.start()
        # Right after the fork, before the exec, /proc shows the parent's environment: wait for the exec.
        deadline = time.monotonic() + 10
        while True:
            raw = open(f"/proc/{b.proc.pid}/environ", "rb").read().split(b"\0")
            env = dict(x.decode().split("=", 1) for x in raw if b"=" in x)
            if "EDIT3DGS_THREADS" in env or time.monotonic() > deadline:
                return b, env
            time.sleep(0.05)

    try:
        prefs.cpu_threads = 1
        b1, env = backend_env()
        assert env["EDIT3DGS_THREADS"] == "1"
        prefs.cpu_threads = 0
        b2, env = backend_env()
        assert b2 is not b1 and env["EDIT3DGS_THREADS"] == "auto"
    finally:
        prefs.cpu_threads = 0


def test_bridge_refuses_a_backend_of_another_protocol_version(tmp_path, monkeypatch):
    """At start-up the add-on reads the backend's protocol version: another number ends that backend and
    every job says why, in words the artist can act on."""
    monkeypatch.delenv("EDIT3DGS_BACKEND_PYTHON", raising=False)
    b = make_backend(_fake_backend(tmp_path, "other_protocol"), tmp_path)
    job = b.wait(b.submit("sleep", {"seconds": 1}), 15)
    assert job.state == "failed" and not b.ready and not b.alive
    assert f"protocol version 99 and this add-on version {protocol.PROTOCOL}" in job.error, job.error
    assert "Set Up Backend" in job.error
