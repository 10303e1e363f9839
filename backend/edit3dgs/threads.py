"""CPU threads of the backend: as many as the cores other processes leave free.

PyTorch's CPU kernels run on an OpenMP pool (GNU libgomp in the pip builds).
Every parallel op ends at a barrier, and idle pool threads spin for a while
before sleeping, so with as many threads as cores and one core taken by a
neighbour (Blender, always, beside the backend) each of the many small ops
waits for a descheduled thread: ``edit3dgs edit`` of the built-in avatar took
3.7x longer beside one busy process (benchmarks/cpu_load_bench.py, 2 cores).

So the thread count is the cores this process may use minus those other
processes keep busy, measured when a command starts (``auto``; ``edit3dgs
serve`` measures again before every job, since Blender's load changes), or
what the user asks for (``--threads N``, ``EDIT3DGS_THREADS``, which the
Blender preference "CPU Threads" sets for the backend). Idle threads keep
libgomp's default waiting: making them sleep (``OMP_WAIT_POLICY=PASSIVE``)
was measured too, and on 2 cores it made two threads no faster than one
(53.5 vs 52.5 s alone) while the default is 1.5x faster when nothing else runs.
"""

from __future__ import annotations

import os
import time

ENV = "EDIT3DGS_THREADS"
_applied: dict = {}


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cpu_times() -> dict[int, tuple[float, float]] | None:
    """Per CPU, (busy, total) jiffies from /proc/stat: the first 8 fields (user .. steal; guest time
    is already inside user and nice), idle = idle + iowait. None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
    except OSError:
        return None
    out = {}
    for parts in lines:
        vals = [float(v) for v in parts[1:9]]
        if len(vals) < 4:
            continue
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        out[int(parts[0][3:])] = (sum(vals) - idle, sum(vals))
    return out or None


def busy_cores(window: float = 0.2) -> float:
    """Cores this process may use that other processes keep busy, averaged over ``window`` seconds
    (this process sleeps meanwhile); 0 where the system does not say."""
    a = _cpu_times()
    if a is None:
        return 0.0
    time.sleep(window)
    b = _cpu_times()
    if b is None:
        return 0.0
    allowed = _allowed_cpus() or set(a)
    busy = 0.0
    for cpu in allowed & set(a) & set(b):
        dt = b[cpu][1] - a[cpu][1]
        if dt > 0:
            busy += min(1.0, max(0.0, (b[cpu][0] - a[cpu][0]) / dt))
    return busy


def resolve(spec: str | int | None = None) -> int:
    """The intra-op thread count for ``spec``: an integer >= 1, or ``auto``/None (the default, also
    from ``EDIT3DGS_THREADS``): the cores available minus those other processes keep busy, at least 1."""
    from .errors import Edit3DGSError

    source = "--threads"
    if spec is None:
        spec, source = os.environ.get(ENV, "auto"), ENV
    text = str(spec).strip().lower()
    if text in ("", "auto"):
        return max(1, available_cores() - int(round(busy_cores())))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise Edit3DGSError(source, "'auto' or a whole number of threads >= 1", repr(spec))
    return n


def apply(spec: str | int | None = None, remeasure: bool = False) -> int:
    """Set PyTorch's intra-op threads from ``spec`` (see ``resolve``); returns the count. ``auto`` is
    measured once per process unless ``remeasure`` (the server, before each job)."""
    import torch

    key = str(os.environ.get(ENV, "auto") if spec is None else spec).strip().lower()
    if key not in _applied or (remeasure and key in ("", "auto")):
        _applied[key] = resolve(spec)
    n = _applied[key]
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
