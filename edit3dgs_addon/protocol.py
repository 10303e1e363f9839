# Copied from edit3dgs.protocol (backend/edit3dgs/protocol.py, the whole file): Blender cannot import the
# backend. tests/test_protocol.py fails when the two differ; change the backend's and copy it here.
"""The protocol between Blender and ``edit3dgs serve``: its version, every message and job kind, the framing.

Framing (the shape of Blender's extension manager): every message is a UTF-8
JSON array ``[kind, payload]`` followed by one NUL byte; requests go to the
backend's stdin, replies come from its stdout. Files (rig npz, avatar versions,
masks) go to the job folder named in the request; messages only carry paths.

The Blender side cannot import the backend (no torch there), so it keeps this
file as a copy (edit3dgs_addon/protocol.py, marked "Copied from"); a test fails
when the two differ. Standard library only.
"""

from __future__ import annotations

import json
import os

# Raised whenever a message, a job kind or an argument changes meaning: the add-on refuses a backend
# that says another number in "ready" (they come from different versions of Edit3DGS).
PROTOCOL = 1

# Requests, Blender -> backend: kind -> payload and meaning.
REQUESTS = {
    "job": "{id, kind, args}: start a job (queued; one runs at a time)",
    "cancel": "{id}: stop a job; answered 'cancelled' within 2 s, and a cancelled job leaves nothing at its outputs",
    "ping": "{}: answered 'pong'",
    "shutdown": "{}: cancel every job, let the running one finish, exit 0 (so does EOF on stdin)",
}

# Replies, backend -> Blender: kind -> payload and meaning.
REPLIES = {
    "ready": "{protocol, pid, version}: once, at start; the add-on checks protocol == PROTOCOL",
    "pong": "{}: the answer to 'ping'",
    "progress": "{id, stage, done, total}: at most about 20 a second per stage",
    "done": "{id, result} (+ cancel: why, when a cancel came after the job's outputs were in place: they are complete)",
    "error": "{id, message, kind}: kind 'input' (the request's fault) or 'internal'; 'unknown_id': a cancel of an id "
             "neither queued nor running; 'duplicate_id': a job whose id is queued or running (that job goes on); "
             "id null: a frame that is not a request",
    "cancelled": "{id}: the job stopped and left nothing at its outputs",
}

# Job kinds: arguments -> result.
JOB_KINDS = {
    "export_rig": "avatar, out [, gaussians_only] -> {npz, n_gaussians, topology}",
    "world_positions": "avatar, params {expr, rotation, ...}, out -> {npy}",
    "edit": "avatar, out_dir, settings {the EditSettings fields the artist set: EditSettings.from_dict} [, npz] "
            "-> {avatar, npz, cameras (how the camera file was read: its cy convention and the camera model)}",
    "region_masks": "avatar, camera {c2w, fx, fy, cx, cy, w, h}, regions (up to 3: one per channel), out [, timestep] "
                    "-> {png, regions}",
    "render_shot": "avatar, cameras (transforms JSON, one camera per frame), flame_params (npz, one timestep per "
                   "frame), work_dir, outputs (one PNG path per frame) -> {files, device}",
    "sleep": "seconds -> {} (a cancellable no-op, for tests of the bridge)",
}

SEP = b"\0"
# The largest frame read (bytes before the NUL): messages carry paths and small settings only.
MAX_FRAME = int(os.environ.get("EDIT3DGS_MAX_FRAME", 16 << 20))


def encode(kind: str, payload: dict) -> bytes:
    return json.dumps([kind, payload], separators=(",", ":")).encode("utf-8") + SEP


class FrameReader:
    """Splits a byte stream into NUL-terminated frames, scanning each byte once.

    A frame longer than ``limit`` is skipped up to its NUL and reported as
    ``(None, size)`` instead of being buffered (memory stays bounded).
    """

    def __init__(self, limit: int = MAX_FRAME):
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False

    def feed(self, chunk: bytes) -> list:
        out = []
        start = 0
        while True:
            i = chunk.find(SEP, start)
            piece = chunk[start:] if i < 0 else chunk[start:i]
            if not self._skipping and self._size + len(piece) > self.limit:
                self._parts, self._skipping = [], True
            self._size += len(piece)
            if not self._skipping and piece:
                self._parts.append(piece)
            if i < 0:
                return out
            if self._skipping:
                out.append((None, self._size))
            else:
                out.append((b"".join(self._parts), self._size))
            self._parts, self._size, self._skipping = [], 0, False
            start = i + 1

    @property
    def pending(self) -> int:
        """Bytes of the frame not yet complete."""
        return self._size


class Decoder:
    """Feed bytes as they arrive; get back the complete messages (kind, payload). A frame that is not a
    ``[kind, payload]`` array, or is longer than ``limit``, comes back as ``("garbage", {"text": ...})``."""

    def __init__(self, limit: int = MAX_FRAME):
        self._frames = FrameReader(limit)

    def feed(self, data: bytes) -> list:
        out = []
        for raw, size in self._frames.feed(data):
            if raw is None:
                out.append(("garbage", {"text": f"a message of {size} bytes, more than {self._frames.limit}"}))
            elif raw.strip():
                out.append(decode(raw))
        return out

    @property
    def pending(self) -> int:
        return self._frames.pending


def decode(raw: bytes) -> tuple[str, dict]:
    """One frame -> (kind, payload), or ("garbage", {"text": the frame's start}) when it is not a message."""
    try:
        msg = json.loads(raw.decode("utf-8"))
    except (ValueError, TypeError, RecursionError):
        msg = None
    if not isinstance(msg, list) or len(msg) != 2:
        return "garbage", {"text": raw[:200].decode("utf-8", "replace")}
    kind, payload = msg
    return str(kind), payload if isinstance(payload, dict) else {"value": payload}
