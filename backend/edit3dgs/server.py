"""``edit3dgs serve``: the long-lived backend that Blender talks to.

Wire format (the shape of Blender's extension manager): every message is a
UTF-8 JSON array ``[type, payload]`` followed by one NUL byte, on stdin
(requests) and stdout (replies). Nothing else is ever written to stdout:
stray prints and progress bars are sent to stderr, which the add-on keeps
in a log file. Files (rig npz, avatar versions, masks) go to the job folder
named in the request; messages only carry paths.

Requests
    ["job", {"id": str, "kind": str, "args": {...}}]   start a job (queued; one runs at a time)
    ["cancel", {"id": str}]                             ask a job to stop (the worker polls it)
    ["ping", {}]                                        -> ["pong", {}]
    ["shutdown", {}]                                    cancel, finish, exit 0
Replies
    ["ready", {"protocol": 1, "pid": int, "version": str}]      once, at start
    ["progress", {"id", "stage", "done", "total"}]
    ["done", {"id", "result": {...}}]
    ["error", {"id", "message": str, "kind": "input"|"internal"}]
    ["cancelled", {"id"}]

Job kinds (``args``)
    export_rig      avatar, out [, gaussians_only]        -> {"npz"}
    world_positions avatar, params {expr, rotation, ...}, out -> {"npy"}
    edit            avatar, out_dir, settings {EditSettings fields}, [regions] -> {"avatar", "npz"}
    region_masks    avatar, camera {c2w, fx, fy, cx, cy, w, h}, regions, out [, timestep] -> {"png"}
    render_shot     avatar, cameras (transforms JSON, one camera per frame), flame_params (npz, one
                    timestep per frame), work_dir, outputs (one PNG path per frame) -> {"files", "device"}
    sleep           seconds (a cancellable no-op, for tests of the bridge)

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

from .errors import CancelledError, Edit3DGSError

PROTOCOL = 1
SEP = b"\0"


def encode(kind: str, payload: dict) -> bytes:
    return json.dumps([kind, payload], separators=(",", ":")).encode("utf-8") + SEP


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
    def __init__(self, channel: Channel, device: str = "auto"):
        self.ch = channel
        self.device = device
        self.jobs: queue.Queue = queue.Queue()
        self.current: str | None = None
        self.cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._avatars: dict = {}
        self.worker = threading.Thread(target=self._work, name="edit3dgs-worker", daemon=True)

    # -- main thread: read requests ---------------------------------------------
    def serve(self, stdin) -> int:
        self.worker.start()
        self.ch.send("ready", {"protocol": PROTOCOL, "pid": os.getpid(), "version": _version()})
        buf = b""
        while True:
            chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            if not chunk:
                break  # Blender closed the pipe
            buf += chunk
            *msgs, buf = buf.split(SEP)
            for raw in msgs:
                if not raw.strip():
                    continue
                try:
                    kind, payload = json.loads(raw.decode("utf-8"))
                except (ValueError, TypeError):
                    self.ch.send("error", {"id": None, "message": f"bad message: {raw[:80]!r}", "kind": "internal"})
                    continue
                if kind == "shutdown":
                    return self._stop()
                self.handle(kind, payload or {})
        return self._stop()

    def handle(self, kind: str, payload: dict) -> None:
        if kind == "ping":
            self.ch.send("pong", {})
        elif kind == "job":
            self.jobs.put(payload)
        elif kind == "cancel":
            with self._lock:
                self.cancelled.add(payload.get("id"))
        else:
            self.ch.send("error", {"id": payload.get("id"), "message": f"unknown request '{kind}'", "kind": "internal"})

    def _stop(self) -> int:
        with self._lock:
            if self.current:
                self.cancelled.add(self.current)
        self.jobs.put(None)
        self.worker.join(timeout=5)
        return 0

    # -- worker thread: run jobs --------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            jid = job.get("id")
            with self._lock:
                if jid in self.cancelled:
                    self.ch.send("cancelled", {"id": jid})
                    continue
                self.current = jid
            try:
                fn = getattr(self, "job_" + str(job.get("kind")), None)
                if fn is None:
                    raise Edit3DGSError(None, "a job kind among export_rig, world_positions, edit, region_masks, render_shot, sleep",
                                        repr(job.get("kind")))
                result = fn(jid, job.get("args") or {})
                self.ch.send("done", {"id": jid, "result": result})
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
                sys.stderr.flush()

    def should_stop(self, jid: str):
        return lambda: jid in self.cancelled

    def progress(self, jid: str):
        last = [0.0]

        def cb(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] > 0.05 or done >= total:  # at most ~20 messages a second
                last[0] = now
                self.ch.send("progress", {"id": jid, "stage": str(stage), "done": int(done), "total": int(total)})
            if jid in self.cancelled:
                raise CancelledError()
        return cb

    def avatar(self, folder):
        from .bundle import open_avatar
        from .views import pick_device

        folder = Path(folder)
        stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*")) if p.is_file()) if folder.is_dir() else ()
        key = (str(folder.resolve()), stamp)
        if key not in self._avatars:
            self._avatars.clear()  # one avatar at a time keeps memory flat
            self._avatars[key] = open_avatar(folder, device=pick_device(self.device))
        return self._avatars[key]

    # -- jobs ------------------------------------------------------------------------
    def job_sleep(self, jid, args):
        t_end = time.monotonic() + float(args.get("seconds", 1.0))
        cb = self.progress(jid)
        while time.monotonic() < t_end:
            cb("sleep", 0, 1)
            time.sleep(0.02)
        return {}

    def job_export_rig(self, jid, args):
        from .rig_export import export_rig

        self.progress(jid)("load", 0, 1)
        b = self.avatar(args["avatar"])
        out = export_rig(b, args["out"], gaussians_only=bool(args.get("gaussians_only")))
        return {"npz": str(out), "n_gaussians": b.gaussians.num_gaussians, "topology": b.topology}

    def job_world_positions(self, jid, args):
        import numpy as np

        from .rig_export import world_positions

        b = self.avatar(args["avatar"])
        pos = world_positions(b, args.get("params") or {})
        np.save(args["out"], pos)
        return {"npy": str(args["out"])}

    def job_edit(self, jid, args):
        import dataclasses

        from .loop import EditSession, EditSettings
        from .rig_export import export_rig

        b = self.avatar(args["avatar"])
        wanted = dict(args.get("settings") or {})
        names = {f.name for f in dataclasses.fields(EditSettings)}
        unknown = sorted(set(wanted) - names)
        if unknown:
            print(f"edit3dgs serve: ignoring settings this backend does not know: {unknown}", file=sys.stderr)
        settings = EditSettings(**{k: v for k, v in wanted.items() if k in names})
        session = EditSession(b, settings, progress=self.progress(jid), should_stop=self.should_stop(jid))
        out_dir = Path(args["out_dir"])
        version = Path(session.run(out_dir))
        if jid in self.cancelled:
            raise CancelledError()
        self.progress(jid)("export", 0, 1)
        from .bundle import open_avatar

        nb = open_avatar(version, device="cpu")
        npz = export_rig(nb, Path(args.get("npz") or (out_dir / "gaussians.npz")), gaussians_only=True)
        return {"avatar": str(version), "npz": str(npz)}

    def job_region_masks(self, jid, args):
        import numpy as np
        import torch

        from .cameras import Camera
        from .render import rasterize
        from .views import save_png

        b = self.avatar(args["avatar"])
        c = args["camera"]
        cam = Camera(0, int(c["w"]), int(c["h"]), float(c["fx"]), float(c["fy"]), float(c["cx"]), float(c["cy"]),
                     np.asarray(c["c2w"], np.float64))
        regions = list(args.get("regions") or [])[:3]
        t = int(args.get("timestep", 0))
        verts = b.pose(None, [t])
        g = b.world(verts[0])
        dev = g.means.device
        colors = torch.zeros(g.means.shape[0], 3, device=dev)
        for i, r in enumerate(regions):
            colors[b.gaussian_mask([r]).to(dev), i] = 1.0
        vm = torch.as_tensor(cam.viewmat, dtype=torch.float32, device=dev)[None]
        K = torch.as_tensor(cam.K, dtype=torch.float32, device=dev)[None]
        with torch.no_grad():
            res = rasterize(g.means, g.quats, g.scales, g.opacities, colors, vm, K, cam.width, cam.height)
        save_png(args["out"], res.rgb[0].cpu())
        return {"png": str(args["out"]), "regions": regions}

    def job_render_shot(self, jid, args):
        from .shot import deliver, load_shot, render_shot

        cb = self.progress(jid)
        cb("load", 0, 1)
        b = self.avatar(args["avatar"])
        cams, params = load_shot(args["cameras"], args["flame_params"], b)
        outputs = list(args.get("outputs") or [])
        if len(outputs) != len(cams):
            raise Edit3DGSError(args["cameras"], f"{len(cams)} output paths (one per frame)", f"{len(outputs)}")
        files = render_shot(b, cams, params, Path(args["work_dir"]) / "frames", progress=cb)
        # Only a finished shot reaches the output folder (a cancel or a failure leaves it as it was).
        return {"files": deliver(files, outputs), "device": str(b.gaussians.device)}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edit3dgs")
    except Exception:
        return "0"


def cmd_serve(a) -> int:
    # The protocol owns the real stdout; everything printed elsewhere goes to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    server = Server(Channel(proto), device=a.device)
    return server.serve(stdin)


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="talk to Blender: NUL-delimited JSON jobs on stdin/stdout")
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, mps")
    s.set_defaults(func=cmd_serve)
