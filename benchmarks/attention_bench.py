"""Self-attention kernels at the Instruct-Pix2Pix UNet's shapes (issue 16): which SDPA backend, memory
layout and head size run the editor's attention fastest on this GPU.

The UNet's top level (latent 96x64 for a 768x512 image: 6,144 tokens a view, 8 heads of 40) holds most
of its attention work; the key views' extended attention joins 4 views (24,576 tokens). Each case is
timed with CUDA events (median of ``--reps`` after warm-up) for every backend that takes it, and printed
with its TFLOP/s (4 B H N^2 d) and its ratio against the shipped order (``ip2p.CUDA_SDPA_ORDER``)
measured in the same run.

    python benchmarks/attention_bench.py [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

# (name, batch, heads, tokens, head size): 8 views x 3 guidance branches per UNet call
CASES = (
    ("top level, per view", 24, 8, 6144, 40),
    ("top level, key views joined", 3, 8, 24576, 40),
    ("level 1, per view", 24, 8, 1536, 80),
    ("level 2, per view", 24, 8, 384, 160),
)


def time_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def inputs(b: int, h: int, n: int, d: int, layout: str, pad_to: int | None = None):
    """q, k, v (B, H, N, d) as the processors make them: 'tokens' = views of (B, N, H*d) projections
    (heads interleaved, as ``mv_attention._heads`` gives), 'heads' = contiguous (B, H, N, d)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for _ in range(3):
        x = torch.randn(b, n, h * d, device="cuda", dtype=torch.float16, generator=g).view(b, n, h, d)
        if pad_to:              # padded where the projections would write them: the layout stays the processors'
            x = F.pad(x, (0, pad_to - d))
        x = x.transpose(1, 2)
        if layout == "heads":
            x = x.contiguous()
        out.append(x)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only-missing", action="store_true", help="only the missing-token cases")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("attention_bench: needs a CUDA device", file=sys.stderr)
        return 2
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from edit3dgs.edit import ip2p

    shipped = [getattr(SDPBackend, n) for n in ip2p.CUDA_SDPA_ORDER]
    backends = {"shipped": (shipped, True), "cudnn": ([SDPBackend.CUDNN_ATTENTION], False),
                "flash": ([SDPBackend.FLASH_ATTENTION], False), "efficient": ([SDPBackend.EFFICIENT_ATTENTION], False)}
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "cudnn": torch.backends.cudnn.version()}), flush=True)
    rows = []
    for name, b, h, n, d in () if a.only_missing else CASES:
        flop = 4 * b * h * n * n * d
        base = None
        for layout in ("tokens", "heads"):
            for pad in (None, 64) if d < 64 else (None,):
                q, k, v = inputs(b, h, n, d, layout, pad)
                for bk, (order, prio) in backends.items():
                    try:
                        with sdpa_kernel(order, set_priority=prio) if prio else sdpa_kernel(order):
                            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), a.reps)
                    except RuntimeError as exc:
                        ms, err = None, str(exc).splitlines()[0][:80]
                    row = {"case": name, "layout": layout, "head": pad or d, "backend": bk}
                    if ms is None:
                        row["error"] = err
                    else:
                        if base is None:
                            base = ms      # the shipped order, the processors' layout, real head size
                        row.update(ms=round(ms, 3), tflop_per_s=round(flop / ms / 1e9, 1), vs_shipped=round(base / ms, 3))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                del q, k, v
        # FlexAttention (Triton, compiled): any head size, its own tiling
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention)
            q, k, v = inputs(b, h, n, d, "heads")
            ms = time_ms(lambda: flex(q, k, v), a.reps)
            row = {"case": name, "layout": "heads", "head": d, "backend": "flex", "ms": round(ms, 3),
                   "tflop_per_s": round(flop / ms / 1e9, 1)}
            if base is not None:
                row["vs_shipped"] = round(base / ms, 3)
        except Exception as exc:   # a measurement that cannot run is reported, the others still count
            row = {"case": name, "backend": "flex", "error": repr(exc)[:120]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The tokens of other views with no candidate keep their own attention: m of them a view (m varies with the
    # views) attend to all 6,144 of that view. Which backends take unequal query and key lengths, and at what m.
    for m in (700, 704, 768):
        b, h, n, d = 24, 8, 6144, 40
        flop = 4 * b * h * m * n * d
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, m, h * d, device="cuda", dtype=torch.float16, generator=g).view(b, m, h, d).transpose(1, 2)
        k, v = (torch.randn(b, n, h * d, device="cuda", dtype=torch.float16, generator=g).view(b, n, h, d).transpose(1, 2)
                for _ in range(2))
        base = None
        for bk, (order, prio) in backends.items():
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel(order, set_priority=True) if prio else sdpa_kernel(order):
                        ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), a.reps)
                except RuntimeError:
                    ms = None
            row = {"case": f"missing tokens, {m} of {n}", "backend": bk}
            if ms is None:
                row["error"] = " | ".join(str(w.message).splitlines()[0][:160] for w in caught)[:600]
            else:
                base = base or ms
                row.update(ms=round(ms, 3), tflop_per_s=round(flop / ms / 1e9, 1), vs_shipped=round(base / ms, 3))
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
