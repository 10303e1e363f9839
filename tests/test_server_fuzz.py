"""`edit3dgs serve` survives any frame: each malformed one is answered, and jobs still run afterwards."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from edit3dgs.protocol import SEP, FrameReader, encode
from test_server import Serve


def _serve(env=None):
    s = Serve.__new__(Serve)
    s.p = subprocess.Popen([sys.executable, "-m", "edit3dgs.cli", "serve", "--device", "cpu"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                           env={**os.environ, **(env or {})})
    s.buf = b""
    assert s.recv(60)[0] == "ready"
    return s


@pytest.fixture()
def srv():
    s = _serve()
    yield s
    if s.p.poll() is None:
        s.p.kill()
        s.p.wait(10)


def _junk(rng, depth=0):
    pick = rng.randrange(8 if depth < 3 else 5)
    return [lambda: None, lambda: rng.random() > 0.5, lambda: rng.randint(-10**6, 10**6), lambda: rng.random() * 1e9,
            lambda: "".join(rng.choice("ab\u00e9\u2603 x\"\\") for _ in range(rng.randrange(6))),
            lambda: [_junk(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {str(rng.randrange(9)): _junk(rng, depth + 1) for _ in range(rng.randrange(4))},
            lambda: {"id": _junk(rng, depth + 1)}][pick]()


def malformed_frames(n=100, seed=0):
    """Shape classes from the red-team report, ``n`` random frames each (raw bytes, without the NUL)."""
    rng = random.Random(seed)
    j = lambda x: json.dumps(x).encode()  # noqa: E731
    not_list = lambda: j({"kind": "ping", str(rng.random()): _junk(rng)})  # noqa: E731
    classes = {
        "object instead of a pair": lambda: not_list(),
        "bare scalar": lambda: j(rng.choice([_junk(rng, 3), "ping", "job", 7, None, True])),
        "cancel with a non-object payload": lambda: j(["cancel", rng.choice(["x", 1, None, [1], True, 2.5])]),
        "cancel with a non-string id": lambda: j(["cancel", {"id": rng.choice([[1], {}, 5, None, 1.5, False, ""])}]),
        "unknown kind, any payload": lambda: j([rng.choice(["nope", "", "JOB", "pong", 3, None, ["job"]]), _junk(rng)]),
        "deep nesting": lambda: b"[" * rng.randrange(2000, 100_001) + b"]" * rng.randrange(0, 3),
        "job with a non-object payload": lambda: j(["job", rng.choice(["x", [1, 2], 5, None, [], True])]),
        "job with a non-string id": lambda: j(["job", {"id": rng.choice([[1], {"a": 1}, 3, None, ""]), "kind": "sleep", "args": {}}]),
        "job with bad kind or args": lambda: j(["job", {"id": f"j{rng.random()}", "kind": rng.choice([None, 1, ["sleep"]]), "args": {}}])
        if rng.random() < 0.5 else j(["job", {"id": f"j{rng.random()}", "kind": "sleep", "args": rng.choice([[1], "x", 3])}]),
        "wrong length": lambda: j(rng.choice([[], ["ping"], ["ping", {}, {}], ["job", {}, 1, 2]])),
        "not JSON": lambda: rng.choice([b"{not json", b"\xff\xfe\x00"[:2], b"[\"ping\", {}", b"nan", b"[1,]", bytes(rng.randrange(1, 256) for _ in range(20)).replace(b"\0", b"")]),
    }
    return {name: [make() for _ in range(n)] for name, make in classes.items()}


def _replies_until_pong(s, timeout=60):
    out = []
    while True:
        k, p = s.recv(timeout)
        if k == "pong":
            return out
        out.append((k, p))


def test_fuzz_every_malformed_frame_answered_and_jobs_still_run(srv):
    frames = malformed_frames()
    total = 0
    t0 = time.monotonic()
    for name, batch in frames.items():
        for raw in batch:
            srv.p.stdin.write(raw + SEP)
        srv.send("ping", {})
        replies = _replies_until_pong(srv)
        # exactly one error per frame (blank frames aside), each one line of text
        assert len(replies) == len([r for r in batch if r.strip()]), (name, replies[:3])
        assert all(k == "error" and isinstance(p["message"], str) and "\n" not in p["message"] for k, p in replies), name
        assert srv.p.poll() is None, f"the server died on: {name}"
        total += len(batch)
    assert total >= 1000 and time.monotonic() - t0 < 60
    # the worker is alive: a job runs to the end
    srv.send("job", {"id": "after", "kind": "sleep", "args": {"seconds": 0.05}})
    assert srv.until({"done", "error", "cancelled"}, "after", timeout=30)[0] == "done"


def test_cancel_unknown_id_is_answered_and_does_not_poison_the_id(srv):
    srv.send("cancel", {"id": "later"})
    k, p = srv.recv(10)
    assert k == "error" and p["id"] == "later" and p["kind"] == "unknown_id"
    srv.send("job", {"id": "later", "kind": "sleep", "args": {"seconds": 0.05}})
    assert srv.until({"done", "cancelled", "error"}, "later", timeout=30)[0] == "done"
    # the same id twice while the first runs: the second is refused, the first still finishes
    srv.send("job", {"id": "twice", "kind": "sleep", "args": {"seconds": 0.5}})
    srv.send("job", {"id": "twice", "kind": "sleep", "args": {"seconds": 0.5}})
    k, p = srv.until({"done", "cancelled", "error"}, "twice", timeout=30)
    assert k == "error" and p["kind"] == "duplicate_id" and "already queued or running" in p["message"]
    assert srv.until({"done", "cancelled", "error"}, "twice", timeout=30)[0] == "done"
    # bad job arguments are the job's input error, and the worker carries on
    srv.send("job", {"id": "bad", "kind": "sleep", "args": {"seconds": "x"}})
    k, p = srv.until({"done", "cancelled", "error"}, "bad", timeout=30)
    assert k == "error" and p["kind"] == "input" and "'seconds'" in p["message"]
    srv.send("job", {"id": "noavatar", "kind": "export_rig", "args": {}})
    k, p = srv.until({"done", "cancelled", "error"}, "noavatar", timeout=60)
    assert k == "error" and p["kind"] == "input" and "'avatar'" in p["message"]
    # one output-path policy for every job kind: an output inside an input is the job's input error
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        srv.send("job", {"id": "inside", "kind": "export_rig", "args": {"avatar": d, "out": os.path.join(d, "rig.npz")}})
        k, p = srv.until({"done", "cancelled", "error"}, "inside", timeout=60)
        assert k == "error" and p["kind"] == "input" and "outside every input" in p["message"], p
        assert os.listdir(d) == []
    srv.send("job", {"id": "ok", "kind": "sleep", "args": {"seconds": 0.01}})
    assert srv.until({"done", "cancelled", "error"}, "ok", timeout=30)[0] == "done"


def test_oversize_frame_refused_and_pings_answered_meanwhile():
    s = _serve({"EDIT3DGS_MAX_FRAME": str(1 << 20)})
    try:
        big = b'["ping",{"x":"' + b"a" * (8 << 20)
        t0 = time.monotonic()
        for i in range(0, len(big), 1 << 20):
            s.p.stdin.write(big[i:i + (1 << 20)])
        s.p.stdin.write(b'"}]' + SEP)
        s.send("ping", {})
        k, p = s.recv(30)
        assert k == "error" and "more than the limit" in p["message"]
        assert s.recv(30)[0] == "pong" and time.monotonic() - t0 < 10
    finally:
        s.p.kill()
        s.p.wait(10)


def test_frame_reader_scans_incrementally():
    r = FrameReader(limit=10)
    assert r.feed(b"abc") == [] and r.feed(b"de\0f") == [(b"abcde", 5)]
    assert r.feed(b"0123456789X") == [] and r.feed(b"YZ\0ok\0") == [(None, 14), (b"ok", 2)]
    # a 64 MB frame fed in 64 KiB chunks is split in well under a second (no rescans of the buffer)
    r = FrameReader(limit=128 << 20)
    chunk = b"x" * 65536
    t0 = time.perf_counter()
    for _ in range(1024):
        assert r.feed(chunk) == []
    got = r.feed(b"\0")
    assert got[0][1] == 64 << 20 and time.perf_counter() - t0 < 2.0


def test_eof_during_a_job_cancels_it_and_exits_0(srv):
    srv.send("job", {"id": "long", "kind": "sleep", "args": {"seconds": 60}})
    srv.send("job", {"id": "queued", "kind": "sleep", "args": {"seconds": 60}})
    srv.until({"progress"}, "long", timeout=30)
    t0 = time.monotonic()
    srv.p.stdin.close()
    assert srv.p.wait(10) == 0 and time.monotonic() - t0 < 5
