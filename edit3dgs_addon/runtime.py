"""The add-on's running state: the backend bridge, the jobs, and the timer that drains them.

Only the main thread touches Blender data: the bridge's reader thread queues
messages, ``drain()`` (a ``bpy.app.timers`` function; scripts and tests may
call it directly) handles them and runs each job's ``on_finish``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import bpy

from .bridge import Backend, BridgeError, Job

DRAIN_INTERVAL = 0.1


class _State:
    backend: Backend | None = None
    edit_job: Job | None = None
    edit_overall = None  # overall.Overall of the running edit: one bar across its stages
    stage_shares: dict = {}  # editor -> each stage's share of the last edit's time (the next estimate)
    setup = None  # installer.StepRunner while "Set Up Backend" runs
    last_setup = None
    setup_target: str = ""


state = _State()


def prefs():
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def user_dir() -> Path:
    return Path(bpy.utils.extension_path_user(__package__, create=True))


def cache_dir() -> Path:
    p = prefs()
    d = Path(bpy.path.abspath(p.cache_dir)) if p is not None and p.cache_dir else user_dir() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def log_path() -> Path:
    return user_dir() / "logs" / "backend.log"


def backend() -> Backend:
    """The long-lived backend (started on first use; restarted after a crash or kill)."""
    p = prefs()
    python = os.environ.get("EDIT3DGS_BACKEND_PYTHON") or (bpy.path.abspath(p.backend_python) if p else "")
    device = p.device if p is not None else "auto"
    hang = p.hang_timeout if p is not None else 600.0
    threads = str(p.cpu_threads) if p is not None and getattr(p, "cpu_threads", 0) > 0 else "auto"
    b = state.backend
    if b is None or b.python != python or b.device != device or getattr(b, "threads", "auto") != threads:
        if b is not None:
            b.shutdown()
        b = state.backend = Backend(python, log_path(), device=device, hang_timeout=hang)
        b.threads = threads
    b.hang_timeout = hang
    # Model downloads (Hugging Face) only with Blender's Online Access on; applies when the backend (re)starts.
    env = {**os.environ, "EDIT3DGS_THREADS": threads}
    if not bpy.app.online_access:
        env["HF_HUB_OFFLINE"] = "1"
    b.env = env
    return b


def job_folder(kind: str, key: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    h = hashlib.sha1(f"{key}{time.time_ns()}".encode()).hexdigest()[:8]
    d = cache_dir() / "jobs" / f"{stamp}-{kind}-{h}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def submit(kind: str, args: dict, on_finish=None) -> Job:
    job = backend().submit(kind, args, on_finish=on_finish)
    ensure_timer()
    return job


def drain():
    """Timer body: handle backend messages and setup progress; returns the next interval (None: stop)."""
    busy = False
    b = state.backend
    if b is not None:
        b.poll()
        busy = b.busy
        job = state.edit_job
        if job is not None:
            scene = bpy.context.scene
            s = getattr(scene, "edit3dgs", None)
            if s is not None and not job.finished:
                ov = state.edit_overall
                if ov is not None and job.stage:
                    ov.update(job.stage, job.done, job.total)
                    s.stage, s.progress = ov.text(), ov.fraction
                else:
                    s.stage, s.progress = job.progress_text(), job.factor
    if state.setup is not None:
        st, _, _ = state.setup.poll()
        if st == "running":
            busy = True
        else:
            _setup_finished()
    _redraw()
    return DRAIN_INTERVAL if busy else None


def ensure_timer():
    if not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=DRAIN_INTERVAL, persistent=True)


def _setup_finished():
    runner = state.setup
    if runner.state == "done" and state.setup_target:
        p = prefs()
        if p is not None:
            p.backend_python = state.setup_target
    state.setup_target = ""
    state.last_setup, state.setup = runner, None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def shutdown():
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)
    if state.backend is not None:
        state.backend.shutdown()
        state.backend = None
    if state.setup is not None:
        state.setup.cancel()
        state.setup = None
    state.edit_job = None
    state.edit_overall = None


__all__ = ["state", "backend", "submit", "drain", "BridgeError", "shutdown"]
