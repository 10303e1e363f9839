"""``edit3dgs serve``: the long-lived backend that Blender talks to.

The protocol (its version, every message and job kind, the framing) is the
table in ``edit3dgs.protocol``. Nothing but protocol messages is ever written
to stdout: stray prints and progress bars are sent to stderr, which the add-on
keeps in a log file.

Every frame is answered: one that is not a ``[kind, payload]`` array with a
known ``str`` kind and a ``dict`` payload (``str`` ids for jobs and cancels),
or that is longer than ``MAX_FRAME`` bytes, gets ``["error", {"id": null or
its id, ...}]`` and the server carries on. No job's failure stops the worker.
EOF on stdin cancels every job, waits for the running one, and exits 0.

Avatars stay loaded between jobs (keyed by folder and modification time), and
so do the editor's models inside the edit loop.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

from . import cancel
from .errors import CancelledError, Edit3DGSError
from .protocol import JOB_KINDS, PROTOCOL, REQUESTS, FrameReader, encode

EOF_JOIN_S = 30.0  # on EOF, how long a running job gets to notice its cancel before the process ends anyway


class BadRequest(Exception):
    """A frame that is not a well-formed request; ``jid`` is its id when one could be read."""

    def __init__(self, message: str, jid: str | None = None):
        super().__init__(message)
        self.jid = jid


def parse_request(raw: bytes) -> tuple[str, dict]:
    """One frame -> (kind, payload), or BadRequest saying what is wrong with it."""
    try:
        msg = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BadRequest("bad message: JSON nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"bad message (not JSON: {exc}): {raw[:80]!r}") from None
    if not isinstance(msg, list) or len(msg) != 2:
        raise BadRequest(f"bad message: expected a JSON array [kind, payload], found {_describe(msg)}")
    kind, payload = msg
    jid = payload.get("id") if isinstance(payload, dict) and isinstance(payload.get("id"), str) else None
    if not isinstance(kind, str) or kind not in REQUESTS:
        raise BadRequest(f"bad message: expected a kind among {', '.join(REQUESTS)}, found {_describe(kind)}", jid)
    if not isinstance(payload, dict):
        raise BadRequest(f"bad message: expected a JSON object as the payload of '{kind}', found {_describe(payload)}")
    if kind in ("job", "cancel"):
        if not isinstance(payload.get("id"), str) or not payload["id"]:
            raise BadRequest(f"bad message: expected a non-empty string 'id' in '{kind}', found {_describe(payload.get('id'))}")
    if kind == "job":
        if not isinstance(payload.get("kind"), str):
            raise BadRequest(f"bad job: expected a string 'kind' among {', '.join(JOB_KINDS)}, found {_describe(payload.get('kind'))}", jid)
        if not isinstance(payload.get("args", {}), dict):
            raise BadRequest(f"bad job: expected a JSON object as 'args', found {_describe(payload.get('args'))}", jid)
    return kind, payload


def _describe(x) -> str:
    text = json.dumps(x)[:60] if isinstance(x, (str, int, float, bool, type(None))) else type(x).__name__
    return {"list": "a JSON array", "dict": "a JSON object"}.get(text, text)


class Channel:
    """Writes messages to the protocol stream (thread-safe)."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, kind: str, payload: dict) -> None:
        data = encode(kind, payload)
        with self._lock:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # Blender went away; the reader sees EOF and ends us


class Server:
    def __init__(self, channel: Channel, device: str = "auto", threads: str | None = None):
        self.ch = channel
        self.device = device
        self.threads = threads   # --threads of the serve command (None: EDIT3DGS_THREADS or auto)
        self.jobs: queue.Queue = queue.Queue()
        self.current: str | None = None
        self.pending: set[str] = set()  # ids queued or running (a cancel of any other id is answered at once)
        self.cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._avatars: dict = {}
        self.worker = threading.Thread(target=self._work, name="edit3dgs-worker", daemon=True)

    # -- main thread: read requests ---------------------------------------------
    def serve(self, stdin) -> int:
        self.worker.start()
        self.ch.send("ready", {"protocol": PROTOCOL, "pid": os.getpid(), "version": _version()})
        frames = FrameReader()
        while True:
            try:
                chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                return self._stop()  # Blender closed the pipe
            for raw, size in frames.feed(chunk):
                if raw is None:
                    self._reply_error(None, f"bad message: {size} bytes, more than the limit of {frames.limit} bytes")
                    continue
                if not raw.strip():
                    continue
                try:
                    kind, payload = parse_request(raw)
                    if kind == "shutdown":
                        return self._stop()
                    self.handle(kind, payload)
                except BadRequest as exc:
                    self._reply_error(exc.jid, str(exc))
                except Exception as exc:  # never let one message end the server
                    traceback.print_exc(file=sys.stderr)
                    self._reply_error(None, f"internal error handling a message: {type(exc).__name__}: {exc}", "internal")

    def _reply_error(self, jid, message: str, kind: str = "input") -> None:
        self.ch.send("error", {"id": jid, "message": message, "kind": kind})

    def handle(self, kind: str, payload: dict) -> None:
        if kind == "ping":
            self.ch.send("pong", {})
        elif kind == "job":
            jid = payload["id"]
            with self._lock:
                duplicate = jid in self.pending
                self.pending.add(jid)
            if duplicate:  # answered with its own kind: the job already holding the id is not affected
                self.ch.send("error", {"id": jid, "message": f"bad job: id '{jid[:80]}' is already queued or running",
                                       "kind": "duplicate_id"})
                return
            self.jobs.put(payload)
        elif kind == "cancel":
            jid = payload["id"]
            with self._lock:
                known = jid in self.pending
                if known:
                    self.cancelled.add(jid)
            if not known:
                self.ch.send("error", {"id": jid, "message": f"cancel: no queued or running job with id '{jid[:80]}'",
                                       "kind": "unknown_id"})
        else:  # parse_request only lets the kinds above through
            raise BadRequest(f"unknown request '{kind}'")

    def _stop(self) -> int:
        with self._lock:
            self.cancelled |= self.pending  # queued jobs are answered 'cancelled' without running
        self.jobs.put(None)
        self.worker.join(timeout=EOF_JOIN_S)
        if self.worker.is_alive():
            # A job that ignores its cancel: end now rather than let the interpreter abort under it.
            print(f"edit3dgs serve: job {self.current} did not stop within {EOF_JOIN_S:.0f} s; exiting", file=sys.stderr)
            sys.stderr.flush()
            os._exit(0)
        return 0

    # -- worker thread: run jobs --------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                from . import threads

                threads.apply(self.threads, remeasure=True)   # Blender's load changes between jobs
                self._run(job)
            except BaseException:  # noqa: BLE001 - the worker must outlive any job
                traceback.print_exc(file=sys.stderr)

    def _run(self, job: dict) -> None:
        jid = job["id"]
        with self._lock:
            if jid in self.cancelled:
                self.pending.discard(jid)
                self.cancelled.discard(jid)
                self.ch.send("cancelled", {"id": jid})
                return
            self.current = jid
        try:
            kind = job.get("kind")
            fn = getattr(self, "job_" + kind, None) if kind in JOB_KINDS else None
            if fn is None:
                raise Edit3DGSError(None, f"a job kind among {', '.join(JOB_KINDS)}", repr(kind)[:80])
            args = job.get("args") or {}
            _check_job_paths(args)
            with cancel.watching(self.should_stop(jid)):  # cancel points inside long loops (render, refit, save)
                result = fn(jid, args)
            reply = {"id": jid, "result": result}
            if jid in self.cancelled:  # the result was in place before the cancel could stop the job
                reply["cancel"] = "arrived after the result was written"
            self.ch.send("done", reply)
        except CancelledError:
            self.ch.send("cancelled", {"id": jid})
        except Edit3DGSError as exc:
            self.ch.send("error", {"id": jid, "message": str(exc), "kind": "input"})
        except Exception as exc:  # report, keep serving
            traceback.print_exc(file=sys.stderr)
            self.ch.send("error", {"id": jid, "message": f"{type(exc).__name__}: {exc}", "kind": "internal"})
        finally:
            with self._lock:
                self.current = None
                self.cancelled.discard(jid)
                self.pending.discard(jid)
            sys.stderr.flush()

    def should_stop(self, jid: str):
        return lambda: jid in self.cancelled

    def progress(self, jid: str):
        last = [0.0, None]

        def cb(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.05 or done >= total or stage != last[1]:  # at most ~20 messages a second per stage
                last[0], last[1] = now, stage
                self.ch.send("progress", {"id": jid, "stage": str(stage), "done": int(done), "total": int(total)})
            if jid in self.cancelled:
                raise CancelledError()
        return cb

    def avatar(self, folder):
        from .bundle import open_avatar
        from .device import pick_device

        folder = Path(folder)
        stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*")) if p.is_file()) if folder.is_dir() else ()
        key = (str(folder.resolve()), stamp)
        if key not in self._avatars:
            self._avatars.clear()  # one avatar at a time keeps memory flat
            self._avatars[key] = open_avatar(folder, device=pick_device(self.device))
        return self._avatars[key]

    # -- jobs ------------------------------------------------------------------------
    def job_sleep(self, jid, args):
        secs = args.get("seconds", 1.0)
        if isinstance(secs, bool) or not isinstance(secs, (int, float)):
            raise Edit3DGSError("job argument 'seconds'", "a number", _describe(secs))
        t_end = time.monotonic() + float(secs)
        cb = self.progress(jid)
        while time.monotonic() < t_end:
            cb("sleep", 0, 1)
            time.sleep(0.02)
        return {}

    def job_export_rig(self, jid, args):
        from .rig_export import export_rig

        self.progress(jid)("load", 0, 1)
        b = self.avatar(_need(args, "avatar"))
        out = export_rig(b, _need(args, "out"), gaussians_only=bool(args.get("gaussians_only")))
        return {"npz": str(out), "n_gaussians": b.gaussians.num_gaussians, "topology": b.topology}

    def job_world_positions(self, jid, args):
        import numpy as np

        from .rig_export import world_positions

        from .fsutil import atomic_path

        b = self.avatar(_need(args, "avatar"))
        pos = world_positions(b, args.get("params") or {})
        out = _need(args, "out")
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:  # exactly 'out' (np.save of a path would add .npy)
            np.save(fh, pos)
        return {"npy": out}

    def job_edit(self, jid, args):
        from contextlib import ExitStack
        from dataclasses import replace

        from .bundle import open_avatar
        from .fsutil import atomic_path
        from .loop import EditSession, EditSettings
        from .rig_export import export_rig

        # Only what the artist chose comes in; EditSettings decides the rest (the CLI's defaults, the same code).
        settings = EditSettings.from_dict(_need(args, "settings", dict))
        out_dir = Path(_need(args, "out_dir"))
        npz = Path(args.get("npz") or (out_dir / "gaussians.npz"))
        o, n = Path(os.path.abspath(out_dir)), Path(os.path.abspath(npz))
        if n == o:
            raise Edit3DGSError(f"job argument 'npz' {npz}", "a file path other than 'out_dir'", "the same path")
        b = self.avatar(_need(args, "avatar"))
        cancel.check()
        said: list[str] = []  # the camera file's convention and camera model, as `edit3dgs edit` says them

        def report(line: str) -> None:
            said.append(line)
            print(f"edit3dgs serve: job {jid}: {line}", file=sys.stderr)

        session = EditSession(b, settings, progress=self.progress(jid), should_stop=self.should_stop(jid), report=report)
        # Both outputs are written to temporaries and renamed after the job's last cancel check: a
        # cancel before it leaves nothing at either path, one after it finds the job done.
        with ExitStack() as stack:
            npz_tmp = None if n.is_relative_to(o) else stack.enter_context(atomic_path(npz))

            def export(tmp: Path) -> None:  # the rig of the complete avatar, as Blender loads it
                self.progress(jid)("export", 0, 1)
                nb = replace(open_avatar(tmp, device="cpu"), folder=out_dir)
                export_rig(nb, tmp / n.relative_to(o) if npz_tmp is None else npz_tmp, gaussians_only=True)

            version = Path(session.run(out_dir, before_commit=export))
        return {"avatar": str(version), "npz": str(npz), "cameras": said}

    def job_region_masks(self, jid, args):
        import torch

        from .cameras import camera_from_job
        from .masks import render_region_masks
        from .images import save_png

        b = self.avatar(_need(args, "avatar"))
        c = _need(args, "camera", dict)
        cam = camera_from_job(c)
        regions = args.get("regions") or []
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise Edit3DGSError("job argument 'regions'", "a list of region names", _describe(regions))
        regions = regions[:3]
        t = args.get("timestep", 0)
        if isinstance(t, bool) or not isinstance(t, int):
            raise Edit3DGSError("job argument 'timestep'", "a whole number", _describe(t))
        b.params.select([t], what=f"job argument 'timestep' ({b.folder / 'flame_param.npz'})")
        masks = render_region_masks(b, b.pose(None, [t]), [cam], regions)
        black = torch.zeros(cam.height, cam.width)
        image = torch.stack([masks[r][0].cpu() for r in regions] + [black] * (3 - len(regions)), -1)  # region i: channel i
        from .fsutil import atomic_path

        with atomic_path(_need(args, "out")) as tmp:
            save_png(tmp, image)
        return {"png": str(_need(args, "out")), "regions": regions}

    def job_render_shot(self, jid, args):
        from .shot import deliver, load_shot, render_shot

        cb = self.progress(jid)
        cb("load", 0, 1)
        b = self.avatar(_need(args, "avatar"))
        cams, params = load_shot(_need(args, "cameras"), _need(args, "flame_params"), b)
        outputs = list(args.get("outputs") or [])
        if len(outputs) != len(cams):
            raise Edit3DGSError(_need(args, "cameras"), f"{len(cams)} output paths (one per frame)", f"{len(outputs)}")
        files = render_shot(b, cams, params, Path(_need(args, "work_dir")) / "frames", progress=cb)
        # Only a finished shot reaches the output folder (a cancel or a failure leaves it as it was).
        return {"files": deliver(files, outputs), "device": str(b.gaussians.device)}


JOB_INPUTS = ("avatar", "cameras", "flame_params")
JOB_OUTPUTS = ("out", "out_dir", "npz", "work_dir", "outputs")


def _check_job_paths(args: dict) -> None:
    """Every job kind: no output is an input, inside one, or a folder holding one (fsutil.check_output)."""
    from .fsutil import check_output, check_output_path

    inputs = {f"'{k}'": args.get(k) for k in JOB_INPUTS}
    for k in JOB_OUTPUTS:
        v = args.get(k)
        for p in v if isinstance(v, list) else [v]:
            if isinstance(p, str) and p:
                check_output_path(p, f"job argument '{k}'")
                # A shot's work_dir is the client's scratch folder (it puts the shot's cameras and motion
                # there); the job writes only its frames/ subfolder, so that is the output checked.
                check_output(os.path.join(p, "frames") if k == "work_dir" else p, inputs, f"job argument '{k}'")


def _need(args: dict, name: str, typ=str):
    """A required job argument of the given type, or the one-line error naming it."""
    v = args.get(name)
    if not isinstance(v, typ) or (typ is str and not v):
        what = {str: "a non-empty string", dict: "a JSON object"}.get(typ, typ.__name__)
        raise Edit3DGSError(f"job argument '{name}'", what, "nothing" if v is None else _describe(v))
    return v


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edit3dgs")
    except Exception:
        return "0"

