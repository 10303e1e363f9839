"""Cancel latency of ``edit3dgs serve`` at each stage of an edit, quiet and beside busy neighbours
(issue 17, item 3: the end message within 2 s whatever the machine's load).

    python benchmarks/cancel_bench.py [--repeat 5] [--stages render,edit,refit,save] [--neighbours N]

It drives ``edit3dgs serve --device cpu`` as a subprocess, exactly as the Blender bridge does, with
the built-in avatar as Blender imports it (``edit3dgs make-avatar``'s defaults) and the edit the panel
starts by default (the region editor, the avatar's 15 cameras, the CPU's render scale) on 3 timesteps
(8 by default: more of the same loops before the later stages begin; the save trials fit 1 iteration
per timestep to reach the save sooner).
For each stage it starts an edit job, waits for the job's first progress message of that stage, waits
a further random 0-0.4 s (so the cancel lands anywhere in the stage's loop), sends ``cancel`` and times
the reply that ends the job. Every trial also checks what the job left: the reply must be
``cancelled``, the job's outputs (``out_dir``, ``npz``) must not exist, no temporary sibling may be
left beside them, and the input avatar's bytes must be unchanged.

Conditions: ``quiet`` (nothing started by the benchmark) and ``neighbour`` (one CPU-bound Python
loop per core, ``python -c 'while True: pass'``, started before the trials and killed after them).
Prints min / median / max per stage and condition, the ratio of the medians, and a JSON line.
Anything else running on the machine is a further neighbour: say what was running beside the results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from edit3dgs.protocol import SEP, encode  # noqa: E402

STAGES = ("render", "edit", "refit", "save")


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class Serve:
    def __init__(self, env: dict):
        self.p = subprocess.Popen([sys.executable, "-m", "edit3dgs.cli", "serve", "--device", "cpu"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  bufsize=0, env=env)
        self.buf = b""

    def send(self, kind, payload):
        self.p.stdin.write(encode(kind, payload))
        self.p.stdin.flush()

    def recv(self, timeout):
        end = time.monotonic() + timeout
        while SEP not in self.buf:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, end - time.monotonic()))
            if not r:
                raise TimeoutError(f"no reply within {timeout} s")
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("the server ended")
            self.buf += chunk
        raw, self.buf = self.buf.split(SEP, 1)
        return json.loads(raw)

    def close(self):
        if self.p.poll() is None:
            self.send("shutdown", {})
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def job_settings(stage: str) -> dict:
    # The panel's default edit but 3 timesteps instead of 8: the same loops (15 views a render step at the
    # CPU's scale), fewer of them before the later stages begin.
    s = {"prompt": "make the hair blue", "num_timesteps": 3}
    if stage == "save":
        s["iters_per_batch"] = 1  # reach the save quickly; the save itself is the same
    return s


def trial(srv: Serve, avatar: Path, work: Path, stage: str, n: int, rng: random.Random) -> dict:
    jd = work / f"{stage}-{n}"
    jd.mkdir()
    out_dir, npz = jd / "avatar", jd / "gaussians.npz"
    jid = f"{stage}-{n}"
    srv.send("job", {"id": jid, "kind": "edit", "args": {"avatar": str(avatar), "out_dir": str(out_dir), "npz": str(npz),
                                                         "settings": job_settings(stage)}})
    sent = None
    delay = rng.uniform(0.0, 0.4) if stage != "save" else 0.0  # a save lasts less than the delay on small avatars
    seen_at, last, at = None, None, None
    while True:
        wait = 600 if seen_at is None or sent is not None else max(0.0, seen_at + delay - time.monotonic())
        try:
            kind, p = srv.recv(wait)
        except TimeoutError:
            if seen_at is None or sent is not None:
                raise
            kind, p = None, {}
        if p.get("id") == jid and kind == "progress":
            last = f"{p.get('stage')} {p.get('done')}/{p.get('total')}"
            if seen_at is None and str(p["stage"]).split(" ")[0] == stage:
                seen_at = time.monotonic()
        if seen_at is not None and sent is None and time.monotonic() - seen_at >= delay:
            srv.send("cancel", {"id": jid})
            sent, at = time.monotonic(), last
        if p.get("id") == jid and kind in ("done", "cancelled", "error"):
            end = time.monotonic()
            left = sorted(e.name for e in jd.iterdir())
            return {"stage": stage, "reply": kind, "seconds": None if sent is None else round(end - sent, 4),
                    "at": at, "left": left, "message": p.get("message") if kind == "error" else None}


def neighbours(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="trials per stage and condition")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--neighbours", type=int, default=os.cpu_count() or 1, help="busy loops in the 'neighbour' condition")
    ap.add_argument("--conditions", default="quiet,neighbour")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    stages = [s for s in a.stages.split(",") if s]
    conditions = [c for c in a.conditions.split(",") if c]
    rng = random.Random(a.seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "backend")}
    results = {c: {s: [] for s in stages} for c in conditions}
    bad = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        from edit3dgs.builtin import make_avatar

        avatar = make_avatar(d / "avatar")  # what `edit3dgs make-avatar` writes, Blender's default import
        before = tree_hash(avatar)
        for cond in conditions:
            busy = neighbours(a.neighbours) if cond == "neighbour" else []
            srv = Serve(env)
            try:
                assert srv.recv(120)[0] == "ready"
                for s in stages:
                    for n in range(a.repeat):
                        work = d / cond
                        work.mkdir(exist_ok=True)
                        r = trial(srv, avatar, work, s, n, rng)
                        results[cond][s].append(r)
                        ok = r["reply"] == "cancelled" and r["left"] == []
                        if not ok:
                            bad.append({**r, "condition": cond})
                        print(f"{cond:9s} {s:6s} #{n}  {r['reply']:9s} {r['seconds']} s  at {r['at']}"
                              + ("" if ok else f"  LEFT {r['left']} {r['message'] or ''}"), file=sys.stderr, flush=True)
            finally:
                srv.close()
                for p in busy:
                    p.kill()
                    p.wait()
        changed = tree_hash(avatar) != before
    load = os.getloadavg()
    print(f"# {os.cpu_count()} cores; load average at the end {load[0]:.2f}; neighbours: {a.neighbours} busy loop(s); "
          f"{a.repeat} trials per cell; seconds from sending cancel to the job's end message")
    print(f"{'stage':7s} " + "   ".join(f"{c + ' min/median/max':>28s}" for c in conditions)
          + ("   ratio of medians" if len(conditions) == 2 else ""))
    summary = {}
    for s in stages:
        cells, meds = [], []
        for c in conditions:
            xs = [r["seconds"] for r in results[c][s] if r["seconds"] is not None]
            if xs:
                cells.append(f"{min(xs):8.2f} {statistics.median(xs):8.2f} {max(xs):8.2f} s")
                meds.append(statistics.median(xs))
                summary.setdefault(s, {})[c] = {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "all": xs}
            else:
                cells.append(f"{'(stage not reached)':>28s}")
        ratio = f"   {meds[1] / meds[0]:.2f}" if len(meds) == 2 and meds[0] > 0 else ""
        print(f"{s:7s} " + "   ".join(f"{x:>28s}" for x in cells) + ratio)
    worst = max((x for v in summary.values() for c in v.values() for x in c["all"]), default=None)
    print(f"worst {worst} s; every trial ended 'cancelled' with nothing at the destination: {not bad}; "
          f"input avatar unchanged: {not changed}")
    print(json.dumps({"summary": summary, "failures": bad, "input_changed": changed}))
    return 0 if not bad and not changed else 1


if __name__ == "__main__":
    sys.exit(main())
