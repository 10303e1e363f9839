"""The backend process seen from Blender (no bpy): spawn, send jobs, poll replies, cancel, kill.

Shape of Blender's extension manager (bl_extension_utils): a subprocess that
speaks NUL-delimited JSON, a reader thread that only queues what arrives, and
a ``poll()`` the main thread calls from a timer. Nothing the main thread calls
blocks on the backend: ``poll()`` drains a queue and reaps the process without
waiting, writes go to a non-blocking pipe (what does not fit is kept and sent
from later polls), ``kill()`` sends SIGKILL and does not wait, ``shutdown()``
waits at most ``shutdown_ms`` milliseconds. A job that does not answer a
cancel within ``cancel_timeout`` seconds, or says nothing for ``hang_timeout``
seconds, and a backend that closes its output but keeps running, get the
process killed and a clear report.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .messages import artist_words
from .protocol import PROTOCOL, Decoder, encode

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class BridgeError(Exception):
    """The backend cannot be used (missing interpreter, process gone); the message is for the artist."""


@dataclass
class Job:
    id: str
    kind: str
    args: dict
    state: str = QUEUED
    stage: str = ""
    done: int = 0
    total: int = 0
    result: dict = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)
    cancel_requested: float | None = None
    on_finish: Callable | None = None  # called once, on the main thread, with the job
    stage_started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    @property
    def factor(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def seconds_left(self, now: float | None = None) -> float | None:
        """This stage's time left at its pace so far (None: too early to tell)."""
        elapsed = (time.monotonic() if now is None else now) - self.stage_started
        if not self.total or self.done <= 0 or elapsed < 2.0 or self.done >= self.total:
            return None
        return elapsed / self.done * (self.total - self.done)

    def progress_text(self, now: float | None = None) -> str:
        """'refit 120/320, about 40 s left': the stage, its count and an estimate (for the panel's bar)."""
        if not self.total:
            return self.stage or "starting"
        text = f"{self.stage} {self.done}/{self.total}"
        left = self.seconds_left(now)
        if left is not None:
            text += f", about {round(left)} s left" if left < 90 else f", about {round(left / 60)} min left"
        return text


def resolve_python(configured: str) -> str:
    """The backend interpreter: $EDIT3DGS_BACKEND_PYTHON, else the preference; checked to exist."""
    path = os.environ.get("EDIT3DGS_BACKEND_PYTHON") or configured
    if not path:
        raise BridgeError("no backend Python set: press 'Set Up Backend' in the add-on preferences "
                          "(or set EDIT3DGS_BACKEND_PYTHON)")
    found = shutil.which(path) if os.sep not in path else path
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise BridgeError(f"backend Python not found: {path} (expected an executable interpreter with "
                          f"edit3dgs installed; press 'Set Up Backend' in the add-on preferences)")
    return found


def protocol_mismatch(ready: dict) -> str:
    """What the artist reads when the backend speaks another protocol version than this add-on."""
    return (f"the backend (edit3dgs {ready.get('version', '?')}) speaks protocol version {ready.get('protocol')!r} "
            f"and this add-on version {PROTOCOL}: they come from different versions of Edit3DGS; press "
            f"'Set Up Backend' in the add-on preferences to install the backend that ships with this add-on")


class Backend:
    """One long-lived ``python -m edit3dgs.cli serve`` (models stay loaded between jobs)."""

    def __init__(self, python: str, log_path: os.PathLike | str, device: str = "auto", env: dict | None = None,
                 cancel_timeout: float = 2.0, hang_timeout: float = 600.0, shutdown_ms: int = 300):
        self.python = python
        self.log_path = Path(log_path)
        self.device = device
        self.env = env
        self.cancel_timeout = cancel_timeout
        self.hang_timeout = hang_timeout
        self.shutdown_ms = shutdown_ms
        self.eof_grace = 1.0
        self._eof_at: float | None = None
        self._out = bytearray()  # requests not yet taken by the pipe
        self._dying: list[subprocess.Popen] = []  # killed, not yet reaped (reaped by poll, never waited on)
        self.proc: subprocess.Popen | None = None
        self.jobs: dict[str, Job] = {}
        self.ready = False
        self.exit_reason = ""
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._reader: threading.Thread | None = None

    # -- process ------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        python = resolve_python(self.python)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n--- edit3dgs serve ({python}) {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)  # Blender's own paths must not leak into the backend
        env.pop("PYTHONHOME", None)
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "edit3dgs.cli", "serve", "--device", self.device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, bufsize=0,
                start_new_session=True)
        except OSError as exc:
            raise BridgeError(f"could not start the backend ({python}): {exc}") from None
        finally:
            log.close()
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._out = bytearray()
        self._eof_at = None
        self.ready = False
        self.exit_reason = ""
        self._queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc, self._queue), daemon=True,
                                        name="edit3dgs-bridge-reader")
        self._reader.start()

    @staticmethod
    def _read(proc: subprocess.Popen, q: queue.Queue) -> None:
        # Only reads and queues: never touches Blender data (not thread-safe).
        dec = Decoder()
        fd = proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            for msg in dec.feed(data):
                q.put(msg)
        q.put(("__exit__", {}))

    def kill(self, reason: str = "stopped") -> None:
        """SIGKILL the process (no waiting: ``poll()`` reaps it later) and fail its unfinished jobs."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None  # a later submit starts a fresh process at once
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
            self._dying.append(proc)
        try:
            proc.stdin.close()
        except OSError:
            pass
        self._out.clear()
        self._eof_at = None
        self.exit_reason = self.exit_reason or reason
        self._fail_all(reason)

    def shutdown(self, timeout_ms: int | None = None) -> None:
        """Ask the backend to exit, give it ``timeout_ms`` (default ``shutdown_ms``), then kill it."""
        budget = (self.shutdown_ms if timeout_ms is None else timeout_ms) / 1000.0
        if self.alive:
            try:
                self._write("shutdown", {})
            except OSError:
                pass
            end = time.monotonic() + budget
            while self.proc.poll() is None and time.monotonic() < end:
                self._flush()
                time.sleep(0.005)
        self.kill("the backend was shut down")
        self._reap()

    def _write(self, kind: str, payload: dict) -> None:
        """Queue a request and send what the pipe takes now (never blocks; the rest goes out from ``poll``)."""
        if self.proc is None or self.proc.poll() is not None:
            raise BrokenPipeError("the backend process is not running")
        self._out += encode(kind, payload)
        self._flush()

    def _flush(self) -> None:
        if not self._out or self.proc is None:
            return
        try:
            n = os.write(self.proc.stdin.fileno(), bytes(self._out[:1 << 16]))
        except BlockingIOError:
            return  # the backend is not reading now; try again at the next poll
        except (OSError, ValueError):
            self._out.clear()  # the pipe is gone; the reader sees EOF and poll() reports it
            return
        del self._out[:n]

    def _reap(self) -> None:
        self._dying = [p for p in self._dying if p.poll() is None]

    # -- jobs ---------------------------------------------------------------------
    def submit(self, kind: str, args: dict, on_finish: Callable | None = None) -> Job:
        self.start()
        job = Job(f"{kind}-{next(self._ids)}-{os.getpid()}", kind, args, on_finish=on_finish)
        self.jobs[job.id] = job
        try:
            self._write("job", {"id": job.id, "kind": kind, "args": args})
        except OSError as exc:
            self._finish(job, FAILED, f"the backend is not reachable ({exc}); see the log {self.log_path}")
        return job

    def cancel(self, job: Job) -> None:
        if job.finished or job.cancel_requested is not None:
            return
        job.cancel_requested = time.monotonic()
        try:
            self._write("cancel", {"id": job.id})
        except OSError:
            pass

    @property
    def busy(self) -> bool:
        return any(not j.finished for j in self.jobs.values())

    def poll(self) -> list[Job]:
        """Handle what arrived; returns the jobs that finished now (their on_finish already called)."""
        finished: list[Job] = []
        self._finished_now = finished
        self._flush()
        self._reap()
        while True:
            try:
                kind, p = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "__exit__":
                self._eof_at = time.monotonic()
                continue
            if kind == "ready":
                if p.get("protocol") != PROTOCOL:  # another version of Edit3DGS: its jobs would be misread
                    self.exit_reason = protocol_mismatch(p)
                    self.kill(self.exit_reason)
                    break
                self.ready = True
                continue
            jid = p.get("id")
            if not isinstance(jid, str) or p.get("kind") in ("unknown_id", "duplicate_id"):
                continue  # not about one of our jobs (a late cancel's answer, garbage)
            job = self.jobs.get(jid)
            if job is None:
                continue
            job.last_heard = time.monotonic()
            if kind == "progress":
                stage = p.get("stage", "")
                if stage != job.stage or p.get("done", 0) < job.done:
                    job.stage_started = time.monotonic()  # a new stage (or its restart): a new estimate
                job.state, job.stage, job.done, job.total = RUNNING, stage, p.get("done", 0), p.get("total", 0)
            elif kind == "done":
                job.result = p.get("result") or {}
                self._finish(job, DONE)
            elif kind == "cancelled":
                self._finish(job, CANCELLED, "cancelled")
            elif kind == "error":
                self._finish(job, FAILED, p.get("message", "unknown error"))
        if self._eof_at is not None:
            self._output_closed()
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.finished:
                continue
            if job.cancel_requested is not None and now - job.cancel_requested > self.cancel_timeout:
                # The backend did not stop in time: end it (models reload on the next job).
                self.exit_reason = "the backend did not stop within %.0f s and was ended" % self.cancel_timeout
                self.kill(self.exit_reason)
                self._finish(job, CANCELLED, "cancelled (the backend was ended)")
            elif now - job.last_heard > self.hang_timeout and self._is_head(job):
                self.exit_reason = f"the backend said nothing for {self.hang_timeout:.0f} s and was ended"
                self.kill(self.exit_reason)
        return finished

    def _output_closed(self) -> None:
        """The reader saw EOF: report the exit, or end a backend that stopped talking but still runs.

        A process that is exiting closes its output a moment before its exit status can be read, so
        it gets ``eof_grace`` seconds (checked at each poll, never waited on) before it is ended.
        """
        code = self.proc.poll() if self.proc is not None else None
        if self.proc is not None and code is None:
            if time.monotonic() - self._eof_at < self.eof_grace:
                return
            self._eof_at = None
            why = self.exit_reason or "the backend closed its output but kept running, and was ended"
            self.exit_reason = why
            self.kill(f"{why}; {self.log_tail_hint()}")
            return
        self._eof_at = None
        why = self.exit_reason or f"the backend stopped unexpectedly (exit status {code})"
        self.exit_reason = why
        self._fail_all(f"{why}; {self.log_tail_hint()}")

    def _is_head(self, job: Job) -> bool:
        # Only the job the backend is working on can hang; queued ones wait their turn.
        live = [j for j in self.jobs.values() if not j.finished]
        return bool(live) and live[0] is job

    def _fail_all(self, reason: str) -> None:
        for job in list(self.jobs.values()):
            if not job.finished:
                if job.cancel_requested is not None:
                    self._finish(job, CANCELLED, "cancelled (the backend was ended)")
                else:
                    self._finish(job, FAILED, reason)

    def _finish(self, job: Job, state: str, error: str = "") -> None:
        if job.finished:
            return
        # Shown in Blender: in the panel's words (the backend's own words stay in its log).
        job.state, job.error = state, artist_words(error)
        self.jobs.pop(job.id, None)
        getattr(self, "_finished_now", []).append(job)
        if job.on_finish is not None:
            job.on_finish(job)

    def log_tail_hint(self) -> str:
        tail = self.log_tail(3)
        return f"last lines of {self.log_path}: {tail}" if tail else f"see the log {self.log_path}"

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-n:] if line.strip() and not line.startswith("---"))

    def wait(self, job: Job, timeout: float, step: float = 0.02, pump: Callable | None = None) -> Job:
        """Scripts and background mode only: poll until ``job`` finishes (the UI uses timers)."""
        end = time.monotonic() + timeout
        while not job.finished and time.monotonic() < end:
            (pump or self.poll)()
            if not job.finished:
                time.sleep(step)
        if not job.finished:
            self.cancel(job)
            t = time.monotonic() + self.cancel_timeout + 0.5
            while not job.finished and time.monotonic() < t:
                (pump or self.poll)()
                time.sleep(step)
        return job
