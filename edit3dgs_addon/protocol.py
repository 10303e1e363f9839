"""The wire format between Blender and ``edit3dgs serve`` (no bpy; mirrors backend/edit3dgs/server.py).

Each message is UTF-8 JSON ``[type, payload]`` followed by a NUL byte, the
framing Blender's extension manager uses with its own subprocess.
"""

from __future__ import annotations

import json

SEP = b"\0"
PROTOCOL = 1


def encode(kind: str, payload: dict) -> bytes:
    return json.dumps([kind, payload], separators=(",", ":")).encode("utf-8") + SEP


class Decoder:
    """Feed bytes as they arrive; get back the complete messages (type, payload)."""

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> list:
        self._buf += data
        *complete, self._buf = self._buf.split(SEP)
        out = []
        for raw in complete:
            if not raw.strip():
                continue
            try:
                kind, payload = json.loads(raw.decode("utf-8"))
            except (ValueError, TypeError):
                kind, payload = "garbage", {"text": raw[:200].decode("utf-8", "replace")}
            out.append((str(kind), payload if isinstance(payload, dict) else {"value": payload}))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
