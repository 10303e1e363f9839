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
        self._parts: list = []  # the incomplete message, in pieces (each byte is scanned once)
        self._pending = 0

    def feed(self, data: bytes) -> list:
        out = []
        start = 0
        while True:
            i = data.find(SEP, start)
            if i < 0:
                if start < len(data):
                    self._parts.append(data[start:])
                    self._pending += len(data) - start
                return out
            raw = b"".join(self._parts) + data[start:i]
            self._parts, self._pending, start = [], 0, i + 1
            if raw.strip():
                out.append(self._parse(raw))

    @staticmethod
    def _parse(raw: bytes):
        try:
            msg = json.loads(raw.decode("utf-8"))
        except (ValueError, TypeError, RecursionError):
            msg = None
        if not isinstance(msg, list) or len(msg) != 2:
            return "garbage", {"text": raw[:200].decode("utf-8", "replace")}
        kind, payload = msg
        return str(kind), payload if isinstance(payload, dict) else {"value": payload}

    @property
    def pending(self) -> int:
        return self._pending
