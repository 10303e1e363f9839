"""``edit3dgs serve``: the long-lived backend the Blender extension talks to (``edit3dgs.server``)."""

from __future__ import annotations

import os
import sys


def add_serve_args(s) -> None:
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, mps")


def cmd_serve(a) -> int:
    from ..server import Channel, Server

    # The protocol owns the real stdout; everything printed elsewhere goes to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    server = Server(Channel(proto), device=a.device, threads=getattr(a, "threads", None))
    return server.serve(stdin)
