"""The protocol table (edit3dgs.protocol) is the one the server runs and the one the Blender side reads."""

from __future__ import annotations

from pathlib import Path

from edit3dgs import protocol
from edit3dgs.server import Server

REPO = Path(__file__).resolve().parents[1]
COPY = REPO / "edit3dgs_addon" / "protocol.py"


def test_blender_copy_of_the_protocol_is_the_backends():
    """edit3dgs_addon/protocol.py is the backend's module, whole, under its 'Copied from' mark."""
    copy = COPY.read_text()
    mark = [line for line in copy.splitlines(keepends=True)[:5] if line.startswith("#")]
    assert mark and mark[0].startswith("# Copied from edit3dgs.protocol"), "the copy lost its mark"
    assert copy[len("".join(mark)):] == Path(protocol.__file__).read_text(), \
        "edit3dgs_addon/protocol.py differs from backend/edit3dgs/protocol.py: copy the backend's file over it"


def test_the_server_runs_every_job_kind_of_the_table_and_no_other():
    jobs = {name[len("job_"):] for name in dir(Server) if name.startswith("job_")}
    assert jobs == set(protocol.JOB_KINDS)
    assert all(isinstance(v, str) and v for table in (protocol.REQUESTS, protocol.REPLIES, protocol.JOB_KINDS)
               for v in table.values())


def test_framing_across_chunks_and_limits():
    data = protocol.encode("progress", {"id": "a", "done": 1}) + protocol.encode("done", {"id": "a", "result": {}})
    dec = protocol.Decoder()
    got = []
    for i in range(0, len(data), 7):  # arbitrary chunk boundaries
        got += dec.feed(data[i:i + 7])
    assert got == [("progress", {"id": "a", "done": 1}), ("done", {"id": "a", "result": {}})] and dec.pending == 0
    assert dec.feed(b"not json\0") == [("garbage", {"text": "not json"})]
    small = protocol.Decoder(limit=16)
    assert small.feed(b"x" * 40 + b"\0" + protocol.encode("pong", {})) == [
        ("garbage", {"text": "a message of 40 bytes, more than 16"}), ("pong", {})]
