"""Instruct-Pix2Pix editing speed: multi-view batch editing vs independent per-view editing.

Full-size Instruct-Pix2Pix architecture (SD 1.5 UNet with 8 input channels, SD VAE,
CLIP ViT-L/14 text encoder) with random weights -- timing does not depend on their
values -- at 512x512, 20 DDIM steps, fp16 on CUDA. Edits 16 views of one timestep
both ways in one run and prints time, peak memory and the ratio.

    python benchmarks/ip2p_bench.py [--views 16] [--steps 20] [--size 512] [--episode] [--profile DIR]

Multi-view editing matches tokens once per self-attention layer and UNet call, on the
image-conditioned guidance branch (as DGE), and reuses the matches for all three branches;
key views are drawn per timestep (the default). ``--smoke`` swaps in a small architecture to
check on a CPU that the script runs (its numbers mean nothing).

``--episode`` also times a whole ip2p edit of the built-in avatar (16 cameras x 10
timesteps: render + edit + refit) through ``loop.EditSession``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BENCH_MODEL = "benchmark-random-ip2p"


def full_size_models(device, dtype, smoke: bool = False):
    """Random-weight Instruct-Pix2Pix components of the real sizes (``smoke``: small ones), registered
    in the loader's cache."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_models import tiny_clip_tokenizer

    with torch.device(device):
        if smoke:
            return _smoke_models(device, dtype)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
        tok = tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
        tok.model_max_length = 77
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1))
    return _register(tok, te, vae, unet, device, dtype)


def _register(tok, te, vae, unet, device, dtype):
    """Models in eval mode on ``device``, with Stable Diffusion's DDIM, registered in the editor's model
    cache under BENCH_MODEL (so ``edit_images`` finds them); returns (models, UNet parameter count)."""
    from diffusers import DDIMScheduler

    from edit3dgs.edit import ip2p
    from edit3dgs.edit.mv_attention import install

    for m in (unet, vae, te):
        m.to(device, dtype).eval().requires_grad_(False)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    models = ip2p.tune(ip2p.IP2PModels(tok, te, vae, unet, sched, torch.device(device), dtype, install(unet), BENCH_MODEL))
    ip2p._MODELS[(BENCH_MODEL, str(torch.device(device)), str(dtype), False)] = models
    return models, sum(p.numel() for p in unet.parameters())


def _smoke_models(device, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from tiny_models import tiny_clip_text_config, tiny_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=32)
    tok = tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    te = CLIPTextModel(tiny_clip_text_config(len(tok)))
    return _register(tok, te, vae, unet, device, dtype)


def rig_views(n: int, size: int, height: int | None = None):
    from edit3dgs.cameras import camera_rig
    from edit3dgs.edit.mv_attention import View

    import numpy as np

    az = list(np.linspace(-75, 75, n))
    cams = camera_rig(size, height or size, azimuths=az, elevations=[5.0] * n)
    return [View(c, 0) for c in cams]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return out, dt, peak


def bench_views(models, views: int, steps: int, size: int, batch: int) -> dict:
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images

    dev = models.device
    imgs = torch.rand(views, size, size, 3, device=dev)
    vs = rig_views(views, size)
    base = dict(steps=steps, resolution=size, batch_size=batch, inpaint=False)
    run = {
        "per_view": lambda: edit_images(models, imgs, "make him look older", IP2PSettings(multiview=False, **base)),
        "multiview": lambda: edit_images(models, imgs, "make him look older", IP2PSettings(multiview=True, **base), views=vs),
    }
    # Warm-up (kernels, allocator) with 2 steps each.
    for k in run:
        edit_images(models, imgs, "warm up", IP2PSettings(**{**base, "steps": 2}, multiview=(k == "multiview")),
                    views=vs if k == "multiview" else None)
    res = {}
    for k, fn in run.items():
        _, dt, peak = timed(fn, dev)
        res[k] = {"seconds": round(dt, 3), "peak_gib": round(peak, 2)}
    res["ratio_multiview_over_per_view"] = round(res["multiview"]["seconds"] / res["per_view"]["seconds"], 3)
    return res


def profile_multiview(models, views: int, size: int, batch: int, out_dir: Path, steps: int = 4, height: int | None = None) -> dict:
    """torch.profiler over a short multi-view edit (and a per-view one); tables written to ``out_dir``."""
    from torch.profiler import ProfilerActivity, profile

    from edit3dgs.edit.ip2p import IP2PSettings, edit_images

    dev = models.device
    imgs = torch.rand(views, height or size, size, 3, device=dev)
    vs = rig_views(views, size, height)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for name, mv in (("multiview", True), ("per_view", False)):
        s = IP2PSettings(steps=steps, resolution=size, batch_size=batch, inpaint=False, multiview=mv)
        edit_images(models, imgs, "warm up", s, views=vs if mv else None)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            edit_images(models, imgs, "profile", s, views=vs if mv else None)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - t0) * 1e3
        ka = prof.key_averages()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        (out_dir / f"profile_{name}.txt").write_text(
            ka.table(sort_by=sort, row_limit=40, max_name_column_width=70) + "\n\n" +
            ka.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
        top = sorted(ka, key=lambda e: getattr(e, "self_device_time_total", 0) or 0, reverse=True)[:6]
        res[name] = [(e.key[:40], round((getattr(e, "self_device_time_total", 0) or 0) / 1e3, 1)) for e in top]
        res[name + "_kernels_ms"] = kernel_categories(prof)
        # kernel time against the profiled edit's wall time: how much of it the GPU had nothing to run
        # (kernels of several streams may overlap, so a ratio above 1 can happen)
        res[name + "_wall_ms"] = round(wall_ms, 1)
        res[name + "_kernel_over_wall"] = round(res[name + "_kernels_ms"]["total"] / wall_ms, 3)
    return res


KERNEL_CATEGORIES = (   # (category, substrings of a CUDA kernel's name), first match wins
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("triton (compiled)", ("triton",)),
    ("conv", ("conv", "nhwckrsc", "implicit_gemm", "nchwToNhwc", "nhwcToNchw")),
    ("gemm", ("gemm", "xmma", "cutlass", "sm90", "ampere")),
    ("argmax/reduce", ("argmax", "reduce", "Reduce")),
    ("norm", ("norm", "Moments")),
    ("copy/index", ("copy", "Copy", "index", "gather", "scatter", "cat")),
    ("elementwise", ("elementwise",)),
)


def kernel_categories(prof) -> dict:
    """CUDA kernel time (ms) of a profile by category (names matched by KERNEL_CATEGORIES)."""
    out: dict[str, float] = {}
    for e in prof.events():
        if getattr(e, "device_type", None) is None or str(e.device_type) != "DeviceType.CUDA":
            continue
        cat = next((c for c, keys in KERNEL_CATEGORIES if any(k in e.name for k in keys)), "other")
        out[cat] = out.get(cat, 0.0) + (getattr(e, "device_time_total", 0.0) or 0.0) / 1e3
    out = {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
    out["total"] = round(sum(out.values()), 1)
    return out


def unet_tflop(models, h: int, w: int) -> float:
    """TFLOP of one UNet pass (one sample, one guidance branch) at latent size (h, w) (FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    dev, dt = models.device, models.dtype
    x = torch.zeros(1, 8, h, w, device=dev, dtype=dt)
    e = torch.zeros(1, models.tokenizer.model_max_length, models.text_encoder.config.hidden_size, device=dev, dtype=dt)
    models.mv.mode = "off"
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        models.unet(x, torch.tensor([500], device=dev), encoder_hidden_states=e)
    return fc.get_total_flops() / 1e12


# Speed variants: what each changes from the shipped settings (issue 16's measurements).
VARIANTS = {
    "shipped": {},
    "before": {"batch_size": 8, "channels_last": False, "cudnn_benchmark": False, "sdpa_order": ()},
    "batch8": {"batch_size": 8},
    "batch24": {"batch_size": 24},
    "channels_last": {"channels_last": True},
    "no_cudnn_benchmark": {"cudnn_benchmark": False},
    "sdpa_default": {"sdpa_order": ()},
    "sdpa_flash": {"sdpa_order": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")},
    # --compile-unet: the UNet's blocks without multi-view attention through torch.compile
    # (each names its scope: the default changed from "blocks" to "unet" after the first measurement)
    "compiled_unet": {"compile": True, "scope": "unet"},
    "compiled_blocks": {"compile": True, "scope": "blocks"},
    "compiled_dynamic": {"compile": True, "scope": "blocks", "dynamic": None},
    # (channels-last: since session 7 compiled models are channels-last by default, COMPILED_CHANNELS_LAST;
    # these two name it, compiled_unet_nchw turns it off)
    "compiled_channels_last": {"compile": True, "scope": "blocks", "compiled_channels_last": True},
    # where the compiled multi-view edit's time goes (same compiled graphs as compiled_unet at one batch size):
    # without multi-view editing at all, and without the key views' extended attention
    "compiled_unet_per_view": {"compile": True, "scope": "unet", "multiview": False},
    "compiled_unet_no_extended": {"compile": True, "scope": "unet", "extended_attention": False},
    "compiled_unet_batch16": {"compile": True, "scope": "unet", "batch_size": 16},
    "compiled_unet_batch16_per_view": {"compile": True, "scope": "unet", "batch_size": 16, "multiview": False},
    "compiled_unet_channels_last": {"compile": True, "scope": "unet", "compiled_channels_last": True},
    "compiled_unet_nchw": {"compile": True, "scope": "unet", "compiled_channels_last": False},
    # the multi-view matching's tail (band test, masked argmax, blend) eager, as before session 9
    "compiled_unet_unfused": {"compile": True, "scope": "unet", "fused_matching": False},
    # inductor settings (as in diffusers' "accelerate inference" guide for SD: 1x1 convolutions as matrix
    # products, Triton kernels' block sizes tuned by coordinate descent)
    "compiled_unet_1x1mm": {"compile": True, "scope": "unet", "inductor": {"conv_1x1_as_mm": True}},
    "compiled_unet_tuned": {"compile": True, "scope": "unet", "inductor": {"coordinate_descent_tuning": True}},
    "compiled_unet_tuned_1x1mm": {"compile": True, "scope": "unet",
                                  "inductor": {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True}},
}


def bench_variants(models, names: list[str], views: int, steps: int, hw: tuple[int, int], batch: int) -> dict:
    """Multi-view edits of ``views`` images of size ``hw`` under each variant, in one process."""
    from edit3dgs.edit import ip2p
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images

    dev = models.device
    imgs = torch.rand(views, *hw, 3, device=dev)
    vs = rig_views(views, hw[1], hw[0])
    lh, lw = (x // models.vae_scale_factor for x in ip2p.diffusion_size(*hw, min(hw), models.size_multiple))
    tflop = unet_tflop(models, lh, lw)
    keep = (ip2p.CUDA_CHANNELS_LAST, ip2p.CUDA_CUDNN_BENCHMARK, ip2p.CUDA_SDPA_ORDER, ip2p.COMPILE_DYNAMIC, ip2p.COMPILE_SCOPE,
            ip2p.COMPILED_CHANNELS_LAST, ip2p.COMPILE_OPTIONS, ip2p.COMPILED_FUSED_MATCHING)
    res = {"latent": [lh, lw], "unet_tflop_per_pass": round(tflop, 3), "passes": views * steps * 3}
    last_compiled = None
    for name in names:
        v = VARIANTS[name]
        ip2p.CUDA_CHANNELS_LAST = v.get("channels_last", keep[0])
        ip2p.CUDA_CUDNN_BENCHMARK = v.get("cudnn_benchmark", keep[1])
        ip2p.CUDA_SDPA_ORDER = v.get("sdpa_order", keep[2])
        ip2p.COMPILE_DYNAMIC = v.get("dynamic", keep[3])
        ip2p.COMPILED_CHANNELS_LAST = v.get("compiled_channels_last", keep[5])
        ip2p.COMPILE_OPTIONS = v.get("inductor", keep[6])
        ip2p.COMPILED_FUSED_MATCHING = v.get("fused_matching", keep[7])
        ip2p.tune(models)
        ip2p.set_compiled(models, False)
        ip2p.COMPILE_SCOPE = v.get("scope", keep[4])
        from torch._dynamo.utils import counters

        counters.clear()            # per variant
        if v.get("compile"):
            layout = (ip2p.COMPILE_SCOPE, ip2p.COMPILE_DYNAMIC, ip2p.COMPILED_CHANNELS_LAST,   # what compiled code sees
                      json.dumps(ip2p.COMPILE_OPTIONS, sort_keys=True))
            if layout != last_compiled:
                torch._dynamo.reset()   # a new compile setting compiles from scratch (inductor's disk cache aside)
            last_compiled = layout
            ip2p.set_compiled(models, True)
        st = IP2PSettings(steps=steps, batch_size=v.get("batch_size", batch), multiview=v.get("multiview", True),
                          extended_attention=v.get("extended_attention", True), inpaint=False, resolution=min(hw))
        _, warm, _ = timed(lambda: edit_images(models, imgs, "warm up", IP2PSettings(**{**st.__dict__, "steps": 2}),
                                               views=vs if st.multiview else None), dev)
        graphs = counters["stats"]["unique_graphs"]
        _, dt, peak = timed(lambda: edit_images(models, imgs, "make him look older", st, views=vs if st.multiview else None), dev)
        res[name] = {"seconds": round(dt, 3), "tflop_per_s": round(tflop * res["passes"] / dt, 1), "peak_gib": round(peak, 2),
                     "warm_up_s": round(warm, 1), "compiled_graphs": graphs,
                     "graphs_compiled_while_timed": counters["stats"]["unique_graphs"] - graphs}
        print(name, json.dumps(res[name]), flush=True)
    (ip2p.CUDA_CHANNELS_LAST, ip2p.CUDA_CUDNN_BENCHMARK, ip2p.CUDA_SDPA_ORDER, ip2p.COMPILE_DYNAMIC, ip2p.COMPILE_SCOPE,
     ip2p.COMPILED_CHANNELS_LAST, ip2p.COMPILE_OPTIONS, ip2p.COMPILED_FUSED_MATCHING) = keep
    ip2p.tune(models)
    ip2p.set_compiled(models, False)
    return res


def warm_episode_shapes(models, steps: int) -> None:
    """A 2-step multi-view edit of 16 views at the episode's image size and batch: the compiled blocks'
    shapes (the episode's renders are 550x802 -> 512x768 for the diffusion)."""
    from edit3dgs.edit.ip2p import IP2PSettings, edit_images

    imgs = torch.rand(16, 802, 550, 3, device=models.device)
    edit_images(models, imgs, "warm up", IP2PSettings(steps=2, inpaint=False), views=rig_views(16, 550, 802))
    if models.device.type == "cuda":
        torch.cuda.synchronize()


def bench_episode(device, steps: int, compile_unet: bool = False) -> dict:
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.loop import EditSession, EditSettings

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    make_avatar(tmp / "ada", identity=0, frames=24)
    t_make = time.perf_counter() - t0
    b = open_avatar(tmp / "ada", device=device)
    s = EditSettings(prompt="make him look older", editor="ip2p", cameras=list(range(16)), num_timesteps=10,
                     device=str(device), editor_options={"model": BENCH_MODEL, "device": str(device), "steps": steps,
                                                     "compile_unet": compile_unet})
    sess = EditSession(b, s)
    # Warm the rasteriser first (gsplat compiles its CUDA extension at first use, ~90 s, once per machine).
    from edit3dgs.render_avatar import render_frames

    t0 = time.perf_counter()
    cams, ts, _ = sess.edit_set()
    next(render_frames(b, b.pose(timesteps=ts[:1], device=device), cams[:1], (1.0, 1.0, 1.0)))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    inner = _time_editor_parts(torch.device(device))
    try:
        _, dt, peak = timed(lambda: sess.run(tmp / "edited"), torch.device(device))
    finally:
        inner = inner()
    return {"seconds": round(dt, 2), "peak_gib": round(peak, 2), "stages_s": sess.timings, "editor_parts_s": inner,
            "make_avatar_s": round(t_make, 2), "renderer_warmup_s": round(t_warm, 2)}


def _time_editor_parts(device):
    """Wall time inside ``edit_images`` and its VAE encode/decode (synchronised), accumulated until the
    returned function is called (which restores the originals and returns the seconds)."""
    from edit3dgs.edit import ip2p

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent = {"edit_images": 0.0, "encode_images": 0.0, "decode_latents": 0.0}
    saved = {name: getattr(ip2p, name) for name in spent}

    def timed_fn(name):
        fn = saved[name]

        def run(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                spent[name] += time.perf_counter() - t0
        return run

    for name in spent:
        setattr(ip2p, name, timed_fn(name))

    def done():
        for name, fn in saved.items():
            setattr(ip2p, name, fn)
        return {k: round(v, 2) for k, v in spent.items()}
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16, help="views per UNet call")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--episode", action="store_true", help="also time a whole ip2p edit (16 cameras x 10 timesteps)")
    ap.add_argument("--compile-scope", choices=("blocks", "unet", "best"), default=None,
                    help="what --compile-unet compiles; best: the faster of the compiled_blocks and compiled_unet variants "
                         "timed by --variants in this run")
    ap.add_argument("--compile-unet", choices=("off", "on", "both"), default="off",
                    help="the episode (and the per-view/multi-view timing) with the UNet's blocks compiled; "
                         "both: eager, then compiled, in this process (compiled after a warm-up edit at the same shapes)")
    ap.add_argument("--episode-fused", choices=("on", "off", "both"), default="on",
                    help="compiled episodes with the multi-view matching's tail fused (ip2p.COMPILED_FUSED_MATCHING), "
                         "without, or both (without first: the baseline in the same run)")
    ap.add_argument("--episode-repeats", type=int, default=1, help="run each episode this many times (machine noise)")
    ap.add_argument("--skip-views", action="store_true")
    ap.add_argument("--profile", type=Path, default=None, help="also profile a short edit; tables written to this folder")
    ap.add_argument("--profile-compiled", action="store_true", help="profile with the UNet compiled (--compile-scope)")
    ap.add_argument("--smoke", action="store_true", help="a small architecture: checks that the script runs (CPU)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated speed variants of a multi-view edit at --height x --width: {', '.join(VARIANTS)}")
    ap.add_argument("--height", type=int, default=768, help="image height for --variants (the episode's 802 rounds to 768)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--episode-options", choices=("shipped", "best"), default="shipped",
                    help="inductor settings of the compiled episode: the shipped ones (ip2p.COMPILE_OPTIONS), or those of "
                         "the fastest compiled variant timed by --variants in this run")
    a = ap.parse_args()
    if a.episode_options == "best" and not (a.variants and a.episode):
        ap.error("--episode-options best needs --episode and --variants (it takes the fastest variant's settings)")
    dev = torch.device(a.device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    models, n = full_size_models(dev, dtype, smoke=a.smoke)
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "dtype": str(dtype),
              "unet_params_M": round(n / 1e6, 1), "build_s": round(time.perf_counter() - t0, 1),
              "views": a.views, "steps": a.steps, "size": a.size, "torch": torch.__version__}
    print(json.dumps(report), flush=True)
    from edit3dgs.edit import ip2p

    modes = {"off": [False], "on": [True], "both": [False, True]}[a.compile_unet]
    if a.compile_scope and a.compile_scope != "best":
        ip2p.COMPILE_SCOPE = a.compile_scope
    if a.variants:
        report["variants"] = bench_variants(models, a.variants.split(","), a.views, a.steps, (a.height, a.width), a.batch)
        timed_scopes = {sc: report["variants"][f"compiled_{sc}"]["seconds"] for sc in ("blocks", "unet")
                        if f"compiled_{sc}" in report["variants"]}
        if a.compile_scope == "best" and timed_scopes:
            ip2p.COMPILE_SCOPE = min(timed_scopes, key=timed_scopes.get)
        if a.episode_options == "best":
            # among compiled_unet and the variants that differ from it by their inductor settings alone
            base = VARIANTS["compiled_unet"]
            like = [name for name in report["variants"] if name in VARIANTS
                    and {k: v for k, v in VARIANTS[name].items() if k != "inductor"} == base]
            fastest = min(like, key=lambda name: report["variants"][name]["seconds"], default=None)
            if fastest is not None:
                ip2p.COMPILE_OPTIONS = VARIANTS[fastest].get("inductor")
                report["episode_compile_options_from"] = fastest
                last = [name for name in a.variants.split(",") if VARIANTS[name].get("compile")][-1]
                if VARIANTS[last].get("inductor") != ip2p.COMPILE_OPTIONS:
                    torch._dynamo.reset()   # dynamo's cached graphs were compiled with the last variant's settings
    report["compile_scope"] = ip2p.COMPILE_SCOPE
    report["compile_options"] = ip2p.COMPILE_OPTIONS
    print("compile scope", ip2p.COMPILE_SCOPE, "options", ip2p.COMPILE_OPTIONS, report.get("episode_compile_options_from"),
          flush=True)
    if not a.skip_views:
        for on in modes:
            ip2p.set_compiled(models, on)
            key = "edit_16_views" + ("_compiled" if on else "")
            report[key] = bench_views(models, a.views, a.steps, a.size, a.batch)
            print(key, json.dumps(report[key]), flush=True)
        ip2p.set_compiled(models, False)
    if a.profile is not None:
        try:
            ip2p.set_compiled(models, a.profile_compiled)
            report["profile_top_ms"] = profile_multiview(models, a.views, a.width, a.batch, a.profile, height=a.height)
        except Exception as exc:  # the timings above and the episode below still count
            report["profile_top_ms"] = f"profiling failed: {exc!r}"
        print(json.dumps(report["profile_top_ms"]), flush=True)
    if a.episode:
        fused = {"on": [True], "off": [False], "both": [False, True]}[a.episode_fused]
        for on, fuse in [(on, f) for on in modes for f in (fused if on else [True])]:
            ip2p.COMPILED_FUSED_MATCHING = fuse
            key = "episode" + ("_compiled" if on else "") + ("" if fuse or not on else "_unfused")
            # Warm up at the episode's shapes first (16 views of its size, its batch), eager too: cuDNN's autotuner
            # times every new convolution shape once (seconds at the VAE's full resolution), compiled: the compile.
            ip2p.set_compiled(models, on)
            t0 = time.perf_counter()
            warm_episode_shapes(models, a.steps)
            report[key + "_warm_up_s"] = round(time.perf_counter() - t0, 1)
            for r in range(max(1, a.episode_repeats)):
                rkey = key + (f"_{r + 1}" if a.episode_repeats > 1 else "")
                report[rkey] = bench_episode(dev, a.steps, compile_unet=on)
                print(rkey, json.dumps(report[rkey]), flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
