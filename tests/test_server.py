"""`edit3dgs serve`: the protocol Blender speaks, over a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from edit3dgs.protocol import SEP, encode


class Serve:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-m", "edit3dgs.cli", "serve", "--device", "cpu"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.buf = b""

    def send(self, kind, payload):
        self.p.stdin.write(encode(kind, payload))
        self.p.stdin.flush()

    def recv(self, timeout=120):
        import select

        end = time.monotonic() + timeout
        while SEP not in self.buf:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, end - time.monotonic()))
            if not r:
                raise TimeoutError
            chunk = self.p.stdout.read1(65536) if hasattr(self.p.stdout, "read1") else self.p.stdout.read(65536)
            if not chunk:
                raise EOFError(self.p.stderr.read().decode())
            self.buf += chunk
        raw, self.buf = self.buf.split(SEP, 1)
        return json.loads(raw)

    def close(self, timeout=30):
        """Shut the server down (killed if it does not end within ``timeout`` s)."""
        if self.p.poll() is None:
            self.send("shutdown", {})
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def until(self, kinds, jid=None, timeout=120):
        while True:
            k, p = self.recv(timeout)
            if k in kinds and (jid is None or p.get("id") == jid):
                return k, p


@pytest.fixture()
def serve():
    s = Serve()
    assert s.recv()[0] == "ready"
    yield s
    s.close(10)


def test_export_rig_and_world_positions(serve, builtin_avatar_dir, tmp_path):
    serve.send("job", {"id": "r", "kind": "export_rig", "args": {"avatar": str(builtin_avatar_dir), "out": str(tmp_path / "rig.npz")}})
    k, p = serve.until({"done", "error"}, "r")
    assert k == "done", p
    d = np.load(p["result"]["npz"], allow_pickle=False)
    from edit3dgs.bundle import open_avatar

    b = open_avatar(builtin_avatar_dir)
    n, F = b.gaussians.num_gaussians, b.head.n_faces
    assert d["gs_binding"].shape == (n,) and d["rig_faces"].shape == (F, 3)
    assert d["expr_deltas"].shape[0] == b.head.n_expr and d["pose_deltas"].shape[0] == 36
    assert np.allclose(d["weights"].sum(1), 1, atol=1e-4)
    assert set(d["region_names"]) >= {"hair", "eyes", "lips"}
    # colour is the SH DC term
    rgb = np.clip(b.gaussians.features_dc[:, 0].numpy() * 0.28209479177387814 + 0.5, 0, 1)
    assert np.abs(d["gs_color"] - rgb).max() < 1e-6
    # and the higher SH bands, so Blender's preview shows the colour a camera sees (half floats)
    rest = b.gaussians.features_rest.numpy()
    assert d["gs_sh_rest"].shape == rest.shape and np.abs(d["gs_sh_rest"] - rest).max() < 2e-3 * (1 + np.abs(rest).max())
    # rest vertices are the neutral posed head (translation 0, no expression)
    from edit3dgs.rig_export import world_positions

    params = {"jaw_pose": [0.2, 0, 0], "expr": [0.5] + [0] * 99}
    serve.send("job", {"id": "w", "kind": "world_positions", "args": {"avatar": str(builtin_avatar_dir), "params": params,
                                                                     "out": str(tmp_path / "w.npy")}})
    k, p = serve.until({"done", "error"}, "w")
    assert k == "done", p
    assert np.abs(np.load(tmp_path / "w.npy") - world_positions(b, params)).max() < 1e-6


def test_errors_cancel_and_garbage(serve, tmp_path):
    serve.send("job", {"id": "a", "kind": "export_rig", "args": {"avatar": str(tmp_path / "none"), "out": str(tmp_path / "x.npz")}})
    k, p = serve.until({"done", "error"}, "a")
    assert k == "error" and p["kind"] == "input" and "no such folder" in p["message"]
    serve.p.stdin.write(b"{not json" + SEP)
    k, p = serve.recv()
    assert k == "error" and "bad message" in p["message"]
    serve.send("job", {"id": "s", "kind": "sleep", "args": {"seconds": 60}})
    serve.until({"progress"}, "s")
    t0 = time.monotonic()
    serve.send("cancel", {"id": "s"})
    k, _ = serve.until({"cancelled", "done", "error"}, "s")
    assert k == "cancelled" and time.monotonic() - t0 < 2
    serve.send("ping", {})
    assert serve.until({"pong"})[0] == "pong"


def test_shutdown_after_job(serve):
    serve.send("job", {"id": "s", "kind": "sleep", "args": {"seconds": 0.1}})
    k, _ = serve.until({"done"}, "s")
    assert k == "done"
    serve.send("shutdown", {})
    assert serve.p.wait(10) == 0


def test_eof_ends_server(serve):
    serve.p.stdin.close()
    assert serve.p.wait(10) == 0
