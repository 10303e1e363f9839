"""The CPU path beside a busy neighbour: one workload alone and beside a CPU-bound process, per
thread setting, in one run (issue "Speed on any machine", item 2).

    python benchmarks/cpu_load_bench.py [--workload edit|demo] [--configs before,passive,auto] [--repeat 1]

Workloads (subprocesses of the real CLI): ``edit`` is ``edit3dgs edit`` of the built-in avatar with
the region editor (render + edit + refit, 2 timesteps); ``demo`` is ``edit3dgs demo`` (what ``make demo``
runs). Thread settings: ``before`` = PyTorch's defaults as they were (as many threads as cores, idle
threads spinning for a while: ``OMP_WAIT_POLICY`` left to libgomp); ``passive`` = the same threads,
idle ones asleep (``OMP_WAIT_POLICY=PASSIVE``); ``auto`` = this project's default (the cores others
leave free, measured at start); ``1``/``2`` = that many threads, asleep when idle. The neighbour is one Python busy loop. Prints the
seconds alone and beside the neighbour and their ratio per setting; the last line is JSON.
Run it on a quiet machine (anything else running is a second neighbour).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "before": {"OMP_WAIT_POLICY": "", "EDIT3DGS_THREADS": str(os.cpu_count() or 1)},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "EDIT3DGS_THREADS": str(os.cpu_count() or 1)},
    "auto": {"OMP_WAIT_POLICY": "", "EDIT3DGS_THREADS": "auto"},
    "1": {"OMP_WAIT_POLICY": "PASSIVE", "EDIT3DGS_THREADS": "1"},
    "2": {"OMP_WAIT_POLICY": "PASSIVE", "EDIT3DGS_THREADS": "2"},
}


def cli(*args) -> list[str]:
    return [sys.executable, "-c", "import sys; from edit3dgs.cli import main; sys.exit(main())", *args]


def run(cmd: list[str], env_extra: dict) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "backend")}
    env.pop("OMP_WAIT_POLICY", None)
    env.update(env_extra)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"workload failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="edit", choices=("edit", "demo"))
    ap.add_argument("--configs", default="before,passive,auto")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (the minimum is reported)")
    a = ap.parse_args()
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if c not in SETTINGS:
            raise SystemExit(f"--configs: expected names from {', '.join(SETTINGS)}, found {c!r}")
    tmp = Path(tempfile.mkdtemp(prefix="cpu_load_bench_"))
    avatar = tmp / "avatar"
    run(cli("make-avatar", "--out", str(avatar), "--gaussians-per-face", "1"), {})
    if a.workload == "edit":
        def workload(k):
            return cli("edit", "--avatar", str(avatar), "--prompt", "make the hair blue", "--regions", "hair",
                       "--timesteps", "0,40", "--out", str(tmp / f"edited_{k}"), "--overwrite", "--device", "cpu")
    else:
        def workload(k):
            return cli("demo", "--out", str(tmp / f"demo_{k}"), "--overwrite", "--device", "cpu")

    rows = {}
    k = 0
    for c in configs:
        cell = {}
        for neighbour in (False, True):
            times = []
            for _ in range(a.repeat):
                k += 1
                proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
                try:
                    time.sleep(0.5 if neighbour else 0.0)
                    times.append(run(workload(k), SETTINGS[c]))
                finally:
                    if proc:
                        proc.kill()
                        proc.wait()
            cell["neighbour" if neighbour else "alone"] = round(min(times), 2)
        cell["ratio"] = round(cell["neighbour"] / cell["alone"], 2)
        rows[c] = cell
        print(f"{c:<8} alone {cell['alone']:7.1f} s   beside a busy neighbour {cell['neighbour']:7.1f} s   "
              f"ratio {cell['ratio']:.2f}", flush=True)
    base = rows.get("before")
    if base:
        for c, r in rows.items():
            if c != "before":
                print(f"{c:<8} vs before: alone {base['alone'] / r['alone']:.2f}x, beside the neighbour "
                      f"{base['neighbour'] / r['neighbour']:.2f}x faster")
    print(json.dumps({"workload": a.workload, "cores": os.cpu_count(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
