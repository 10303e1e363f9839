"""Instruct-Pix2Pix editing with multi-view batch editing and expression-preserving inpainting.

Read top to bottom as the method:

1. ``load_ip2p``: the Instruct-Pix2Pix components (tokenizer, CLIP text encoder,
   VAE, 8-channel UNet, DDIM scheduler) from a model id or a local folder,
   safetensors only, kept loaded across edits in one process.
2. ``edit_images``: our denoising loop, like diffusers'
   ``StableDiffusionInstructPix2PixPipeline.__call__`` (encode prompt, encode
   image, denoise with 3-way guidance, decode) plus the two extensions of the
   paper: multi-view batch editing (``mv_attention``: per timestep and step, one
   random key view per chunk of views ordered by angle; key views with extended
   self-attention, feature injection into the other views along epipolar lines,
   matched once per layer on the image-conditioned branch as DGE does; as an option,
   ``temporal_keys``, one timestep's key views for all, linked by the FLAME binding)
   and expression-preserving inpainting (``inpaint``: original latents re-injected
   in the eye/mouth masks, minus the parts the instruction targets).
3. ``InstructPix2PixEditor``: the ``Editor`` the edit loop calls each round,
   optionally re-editing the current renders at a chosen noise strength
   (Instruct-NeRF2NeRF's iterative dataset update).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, get_args, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CancelledError, Edit3DGSError
from .base import EditRequest, Editor, Progress, no_progress
from .inpaint import latent_masks, reinject
from .mv_attention import MultiViewAttnProcessor, MultiViewContext, View, _to_device, install

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
# ``--model builtin``: the small Instruct-Pix2Pix trained on the built-in head (``edit3dgs train-editor``).
BUILTIN_MODEL = "builtin"
BUILTIN_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "builtin_ip2p"
MODEL_JSON = "edit3dgs_model.json"  # a model folder's native resolution (written by train-editor)
DEFAULT_INPAINT_REGIONS = ("eye_region", "eyes", "lips")
DOWNLOAD_HINT = ("Instruct-Pix2Pix weights in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/ "
                 "with .safetensors); download them once, e.g. `hf download timbrooks/instruct-pix2pix "
                 "--exclude '*.bin' '*.ckpt' --local-dir ip2p`, and pass the folder with --model")


# ---------------------------------------------------------------------------
# 1. Loading
# ---------------------------------------------------------------------------

@dataclass
class IP2PModels:
    """Loaded Instruct-Pix2Pix components on ``device`` in ``dtype`` (``offload``: kept on the
    CPU and moved to the device one component at a time)."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    mv: MultiViewContext
    source: str
    offload: bool = False
    resolution: int = 512               # native short side (edit3dgs_model.json; 512 for Stable Diffusion 1.5)
    compiled: str | bool = False        # the scope compiled with torch.compile (``set_compiled``), or False
    compiled_for: set = field(default_factory=set)   # (latent h, w, views per call, multi-view) edited since

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides are multiples of this so every UNet level has whole tokens."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @contextmanager
    def use(self, module: torch.nn.Module):
        """``module`` on the device for the duration (model CPU offload)."""
        if self.offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


_MODELS: dict[tuple, IP2PModels] = {}

# CUDA speed settings (issue 16; measured with benchmarks/ip2p_bench.py --variants, H200, 16 views
# at 768x512, results in benchmarks/results/): cuDNN's autotuner and scaled-dot-product attention
# tried in this order (cuDNN's fused attention first where it takes the shapes). Channels-last
# layout measured slower (GroupNorm converts back and forth), so it is off.
CUDA_CHANNELS_LAST = False
# Compiled (``set_compiled``), channels-last is faster: inductor keeps the NHWC layout through its own
# GroupNorm kernels, and cuDNN's layout conversions around each convolution go (H200, 16 views at 768x512:
# 4.42 s against 4.65 s, benchmarks/results/ip2p_channels_last_h200.txt).
COMPILED_CHANNELS_LAST = True
CUDA_CUDNN_BENCHMARK = True
CUDA_SDPA_ORDER = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def tune(models: "IP2PModels") -> "IP2PModels":
    """Apply the CUDA memory-layout setting (eager or compiled) to loaded models (no effect on a CPU)."""
    if models.device.type == "cuda" and not models.offload:
        last = COMPILED_CHANNELS_LAST if models.compiled else CUDA_CHANNELS_LAST
        fmt = torch.channels_last if last else torch.contiguous_format
        models.unet.to(memory_format=fmt)
        models.vae.to(memory_format=fmt)
    return models


# ``set_compiled`` (opt-in: ``--compile-unet``): torch.compile of the UNet's blocks that hold no multi-view
# attention -- its residual blocks, down/up-samplers and feed-forward layers, where the time outside the
# matrix products goes (GroupNorm, SiLU, GEGLU, adds and layout conversions: about half of a step on an
# H200, benchmarks/results/ip2p_speed_h200.txt). The self-attention layers stay eager: their multi-view
# processors keep per-call Python state (key views, match plans) that a compiled graph would have to
# guard on and recompile for. Each block is compiled once per input shape (static shapes, so one edit's
# few shapes); inductor keeps the compiled code on disk, so later processes start faster.
COMPILED_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D", "FeedForward")
COMPILE_BACKEND = "inductor"
COMPILE_DYNAMIC: bool | None = False
# Inductor settings for the compiled UNet and VAE (``torch.compile(options=...)``; None: inductor's defaults).
COMPILE_OPTIONS: dict | None = None
COMPILE_RECOMPILE_LIMIT = 256         # distinct (graph, shape) pairs: a few dozen per image size and batch
# "blocks": the blocks above, each compiled on its own. "unet": the whole UNet, with the multi-view
# self-attention layers excluded (torch.compiler.disable): the graph breaks around them, so everything
# between two of them is one graph (cross-attention, norms and projections fuse too). Measured on an H200
# (benchmarks/results/episode_compile_h200.txt, 16 views at 768x512, 20 steps): eager 195 TFLOP/s, "blocks"
# 230 (1.18x), "unet" 250 (1.28x; its first compile about 80 s, against about 30 s for "blocks"). With the VAE
# compiled too (session 7, benchmarks/results/episode_vae_compile_h200.txt): "unet" 268 (1.35x); channels-last as
# well 281 (1.41x), first compile 1.5-2 min (ip2p_channels_last_h200.txt).
COMPILE_SCOPE = "unet"
# The VAE's encoder and decoder are compiled too: at 768x512 they are about a tenth of an edit of 16 views
# (20 steps) on an H200, mostly GroupNorm + SiLU on full-resolution feature maps, which inductor fuses.
COMPILED_VAE_PARTS = ("encoder", "decoder")
# What the progress says while the first compiled edit at a new size compiles (minutes with nothing else to
# report); its first word keeps it an "edit" stage for progress bars that group stages.
COMPILE_STAGE = "edit (compiling the diffusion model, once per image size: 1-2 min)"
# Compiled, the multi-view matching's memory-bound tail (band test, masked argmax, blend) runs through
# torch.compile'd functions too (mv_attention, ``MultiViewContext.fused``).
COMPILED_FUSED_MATCHING = True


def set_compiled(models: "IP2PModels", on: bool = True) -> "IP2PModels":
    """Run the UNet (``COMPILE_SCOPE``) and the VAE's encoder and decoder through ``torch.compile``, channels-last
    (``COMPILED_CHANNELS_LAST``) (``on``), or eagerly again (``on=False``; compiled code stays cached for the
    process). Results are the eager ones up to float rounding (tests/test_ip2p.py, tests/test_render_gpu.py).
    Each new image size or number of views per UNet call compiles first (about 1.5-2 min for the full-size
    UNet and VAE on an H200, less with inductor's disk cache warm); later calls run at once. The VAE works in
    chunks of ``VAE_CHUNK`` images, the last one padded when compiled, so it compiles once per image size.
    Inductor needs a CUDA device with Triton here: elsewhere the UNet and VAE stay eager, with a note on stderr."""
    want = COMPILE_SCOPE if on else False
    if want == models.compiled:
        return models
    unet = models.unet
    for m in (*unet.modules(), *models.vae.modules()):   # undo what an earlier call did (only that)
        m._compiled_call_impl = None
        if getattr(m, "_edit3dgs_eager", False):
            del m.forward, m._edit3dgs_eager
    models.compiled = False
    models.compiled_for.clear()
    if not on:
        return tune(models)
    if COMPILE_BACKEND == "inductor" and not _inductor_ok(models.device):
        if models.device not in _EAGER_NOTED:   # once per device and process, not every edit job
            import sys

            _EAGER_NOTED.add(models.device)
            print(f"--compile-unet: the UNet and VAE stay eager (torch.compile's inductor needs a CUDA device with Triton "
                  f"and a C compiler; this is {models.device})", file=sys.stderr)
        return tune(models)
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if getattr(torch._dynamo.config, name, COMPILE_RECOMPILE_LIMIT) < COMPILE_RECOMPILE_LIMIT:
            setattr(torch._dynamo.config, name, COMPILE_RECOMPILE_LIMIT)
    opts = dict(backend=COMPILE_BACKEND, dynamic=COMPILE_DYNAMIC)
    if COMPILE_OPTIONS and COMPILE_BACKEND == "inductor":
        opts["options"] = dict(COMPILE_OPTIONS)
    if COMPILE_SCOPE == "unet":
        for m in unet.modules():
            if isinstance(getattr(m, "processor", None), MultiViewAttnProcessor):
                m.forward = torch.compiler.disable(m.forward)   # eager, with its per-call state
                m._edit3dgs_eager = True
        unet.compile(**opts)
    else:
        for m in unet.modules():
            if type(m).__name__ in COMPILED_BLOCKS:
                m.compile(**opts)
    for name in COMPILED_VAE_PARTS:     # no multi-view state there: whole, in either scope
        getattr(models.vae, name).compile(**opts)
    models.compiled = COMPILE_SCOPE
    return tune(models)


_EAGER_NOTED: set = set()


def _inductor_ok(device: torch.device) -> bool:
    import os
    import shutil

    if device.type != "cuda" or not (os.environ.get("CC") or any(map(shutil.which, ("cc", "gcc", "clang")))):
        return False    # Triton builds its launchers with the system's C compiler
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


@contextmanager
def speed_settings(device: torch.device):
    """cuDNN autotuning and the attention kernels' order for the duration of an edit on CUDA."""
    if device.type != "cuda":
        yield
        return
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, n) for n in CUDA_SDPA_ORDER if hasattr(SDPBackend, n)]
    try:
        attention = sdpa_kernel(order, set_priority=True) if order else nullcontext()
    except TypeError:       # PyTorch < 2.6: no priorities, keep its own order
        attention = nullcontext()
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = CUDA_CUDNN_BENCHMARK
    try:
        with attention:
            yield
    finally:
        torch.backends.cudnn.benchmark = old


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    from ..device import pick_device

    try:
        return pick_device(str(device))
    except RuntimeError:
        raise Edit3DGSError("--device", "auto, cpu, cuda, cuda:N or mps", repr(str(device))) from None


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp16 on CUDA, fp32 on CPU and MPS unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise Edit3DGSError("--dtype", "auto, fp16, bf16 or fp32", repr(dtype))
    return table[dtype]


def _missing(model: str, exc: BaseException) -> Edit3DGSError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = (lines[0] if lines else type(exc).__name__)
    if len(found) > 160:
        found = found[:157] + "..."
    return Edit3DGSError(model, DOWNLOAD_HINT, f"no loadable weights ({found})")


def ddim_scheduler(src: str):
    """The DDIM scheduler of a model folder, with what Instruct-Pix2Pix/Stable Diffusion sampling
    needs whatever the folder's config says: no clipping of the predicted x0 (latents are not in
    [-1, 1]) and the last step towards alpha_bar of the first training timestep rather than 1
    (``clip_sample=False, set_alpha_to_one=False``, as in Stable Diffusion's scheduler configs);
    ``steps_offset=1`` (timesteps 951, 901, ..., 1 for 20 steps) when the config does not say.
    timbrooks/instruct-pix2pix ships an Euler scheduler config, without the DDIM keys, whose
    defaults would clip x0 and end at alpha_bar = 1."""
    from diffusers import DDIMScheduler

    config = DDIMScheduler.load_config(src, subfolder="scheduler")
    extra = {} if "steps_offset" in config else {"steps_offset": 1}
    return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False, **extra)


def load_ip2p(model: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype=None,
              attention_slicing: bool = False, vae_tiling: bool = False, cpu_offload: bool = False,
              compile_unet: bool = False) -> IP2PModels:
    """Instruct-Pix2Pix components from a model id (Hugging Face cache) or a local diffusers folder.

    Safetensors only. Loaded models are cached per (model, device, dtype, offload) for the
    process, so later edits start at once. Memory options: ``attention_slicing`` (one batch
    entry per attention call), ``vae_tiling`` (VAE in tiles), ``cpu_offload`` (each component
    on the device only while it runs). Speed: ``compile_unet`` (``set_compiled``).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    offload = bool(cpu_offload) and dev.type != "cpu"
    model = str(model)
    if model == BUILTIN_MODEL:
        if not (BUILTIN_MODEL_DIR / "model_index.json").is_file():
            raise Edit3DGSError(BUILTIN_MODEL_DIR, "the built-in editor model (edit3dgs train-editor writes one)",
                                "no model_index.json")
        model = str(BUILTIN_MODEL_DIR)
    local = Path(model).expanduser()
    looks_local = local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local and not local.is_dir():
        raise Edit3DGSError(model, DOWNLOAD_HINT, "no such folder")
    src = str(local.resolve()) if looks_local else model
    key = (src, str(dev), str(dt), offload)
    if key not in _MODELS:
        try:
            from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise Edit3DGSError("--editor ip2p", "diffusers and transformers (pip install 'edit3dgs[diffusion]')",
                                f"not installed ({exc.name})") from None
        from .. import cancel

        try:   # a cancel is answered between the components (seconds each from a slow disk)
            tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
            cancel.check()
            # Loaded in the stored precision, then cast: transformers renamed ``torch_dtype`` to
            # ``dtype`` (4.56) and 4.45 rejects ``dtype``; ``.to`` works across the supported range.
            text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=True).to(dt)
            cancel.check()
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae", use_safetensors=True, torch_dtype=dt)
            cancel.check()
            unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", use_safetensors=True, torch_dtype=dt)
            cancel.check()
            scheduler = ddim_scheduler(src)
        except CancelledError:
            raise
        except Exception as exc:   # any failure to load is the user's folder or cache: one line, no traceback
            raise _missing(model, exc) from None
        if unet.config.in_channels != 8:
            raise Edit3DGSError(model, "an Instruct-Pix2Pix UNet (8 input channels)", f"{unet.config.in_channels} input channels")
        for m in (text_encoder, vae, unet):
            m.requires_grad_(False).eval()
            m.to("cpu" if offload else dev)
        ctx = install(unet)
        native = 512
        if looks_local and (local / MODEL_JSON).is_file():
            try:
                native = int(json.loads((local / MODEL_JSON).read_text())["resolution"])
            except (ValueError, KeyError, TypeError) as exc:
                raise Edit3DGSError(local / MODEL_JSON, "JSON with an integer 'resolution'", str(exc)) from None
        _MODELS[key] = tune(IP2PModels(tokenizer, text_encoder, vae, unet, scheduler, dev, dt, ctx, src, offload, native))
    m = _MODELS[key]
    m.mv.slice_size = 1 if attention_slicing else None
    if vae_tiling:
        m.vae.enable_tiling()
    else:
        m.vae.disable_tiling()
    return set_compiled(m, compile_unet)


def clear_cache() -> None:
    """Forget loaded models (frees their memory once nothing else holds them)."""
    _MODELS.clear()


# ---------------------------------------------------------------------------
# 2. The denoising loop
# ---------------------------------------------------------------------------

@dataclass
class IP2PSettings:
    """Knobs of one edit. Guidance as in Instruct-Pix2Pix: eps = eps_none + s_T (eps_text - eps_img)
    + s_I (eps_img - eps_none). ``resolution``: short side, in pixels, of the images the diffusion sees."""

    steps: int = 20
    guidance_text: float = 7.5
    guidance_image: float = 1.5
    seed: int = 0
    resolution: int | None = None       # None: the model's native size (512 for Instruct-Pix2Pix)
    batch_size: int = 8                 # views per UNet call (each ×3 guidance branches)
    # multi-view batch editing (formats.md §4)
    multiview: bool = True
    chunk_size: int = 5
    key_neighbours: int = 2             # key views blended into each other view (1 or 2)
    extended_attention: bool = True
    min_timestep: int = 100             # plain attention below this diffusion timestep
    band: float = 1.0                   # epipolar band half-width, in tokens
    # False (default, as the seed and DGE): key views drawn per timestep among its own views.
    # True: one timestep's key views serve all timesteps, linked through the FLAME binding.
    temporal_keys: bool = False
    depth_tol: float = 0.01             # metres: visibility test of the FLAME correspondences
    # expression-preserving inpainting (formats.md §5)
    inpaint: bool = True
    inpaint_strength: float = 1.0
    inpaint_start: int | None = None    # first step (0-based) of re-injection; None: half of the steps
    inpaint_dilate: int = 1             # latent cells
    temporal: bool | None = None        # deprecated alias of ``temporal_keys``

    def __post_init__(self):
        if self.temporal is not None:
            self.temporal_keys, self.temporal = bool(self.temporal), None
        for name, kind in self.field_types().items():   # JSON and Blender numbers as the field's type
            if getattr(self, name) is not None:
                setattr(self, name, kind(getattr(self, name)))
        for name, ok, expected in (("steps", self.steps >= 1, "at least 1 denoising step"),
                                   ("inpaint_strength", 0 <= self.inpaint_strength <= 1, "a value in [0, 1]"),
                                   ("batch_size", self.batch_size >= 1, "at least 1 view per UNet call"),
                                   ("chunk_size", self.chunk_size >= 1, "at least 1 view per chunk"),
                                   ("key_neighbours", self.key_neighbours in (1, 2),
                                    "1 or 2 key views blended into each other view")):
            if not ok:   # named by its flag, as the editor's other options
                raise Edit3DGSError("--" + name.replace("_", "-"), expected, repr(getattr(self, name)))

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's value type (``int | None``: int)."""
        return {name: (get_args(t) or (t,))[0] for name, t in get_type_hints(cls).items()}


@dataclass
class EditOutput:
    images: torch.Tensor                # (B,H,W,3) float in [0,1], input size
    latents: torch.Tensor               # (B,4,h,w) final latents (scaled, as denoised)
    original_latents: torch.Tensor      # (B,4,h,w) originals' latents (scaled)
    masks: torch.Tensor | None          # (B,1,h,w) inpainting masks at latent resolution
    key_views: list = field(default_factory=list)   # per step: the key views drawn


def diffusion_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(H', W') with the short side near ``resolution`` and both multiples of ``multiple``."""
    s = resolution / min(height, width)
    return (max(multiple, round(height * s / multiple) * multiple), max(multiple, round(width * s / multiple) * multiple))


def camera_azimuth(cam) -> float:
    """Azimuth of the viewing direction around the vertical axis (radians)."""
    f = cam.forward
    return math.atan2(-f[0], -f[2])


def view_angle(a, b) -> float:
    fa, fb = a.forward / np.linalg.norm(a.forward), b.forward / np.linalg.norm(b.forward)
    return float(np.arccos(np.clip(fa @ fb, -1.0, 1.0)))


@dataclass
class ViewGroup:
    """Views sharing key views: ``chunks`` partition the reference views (one timestep, ordered
    by camera azimuth); one key view per chunk is drawn every step. ``members``: all views."""

    chunks: list[list[int]]
    members: list[int]


def plan_groups(views: Sequence[View], chunk_size: int = 5, temporal_keys: bool = False, *,
                temporal: bool | None = None) -> list[ViewGroup]:
    """Group views for multi-view batch editing.

    Views of one timestep are ordered by camera azimuth and chunked. By default each timestep
    is its own group, with its own key views (the seed's and DGE's batch editing; epipolar
    geometry holds only within a timestep). With ``temporal_keys`` all timesteps share the key
    views of one reference timestep (the one with most views) and the other timesteps are
    linked to them through the FLAME binding. (``temporal``: deprecated alias.)
    """
    if temporal is not None:
        temporal_keys = bool(temporal)
    by_t: dict[int, list[int]] = {}
    for i, v in enumerate(views):
        by_t.setdefault(int(v.timestep), []).append(i)

    def chunks_of(ids):
        ids = sorted(ids, key=lambda i: camera_azimuth(views[i].camera))
        n = max(1, math.ceil(len(ids) / chunk_size))
        return [list(c) for c in np.array_split(np.array(ids), n) if len(c)]

    if temporal_keys:
        ref = max(by_t, key=lambda t: len(by_t[t]))
        return [ViewGroup([[int(i) for i in c] for c in chunks_of(by_t[ref])], list(range(len(views))))]
    return [ViewGroup([[int(i) for i in c] for c in chunks_of(ids)], ids) for ids in by_t.values()]


def nearest_keys(views: Sequence[View], i: int, keys: Sequence[int], k: int) -> list[tuple[int, float]]:
    """The ``k`` key views nearest to view i in viewing direction, with blend weights summing to 1."""
    d = sorted((view_angle(views[i].camera, views[j].camera), j) for j in keys)[:max(1, k)]
    if len(d) == 1 or d[0][0] < 1e-6:
        return [(d[0][1], 1.0)]
    inv = [1.0 / a for a, _ in d]
    return [(j, w / sum(inv)) for (_, j), w in zip(d, inv)]


def encode_prompt(models: IP2PModels, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings (1,L,D) of the instruction and of the empty prompt."""
    tok = models.tokenizer([prompt, ""], padding="max_length", max_length=models.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
    with models.use(models.text_encoder) as te:
        emb = te(tok.input_ids.to(models.device))[0].to(models.dtype)
    return emb[:1], emb[1:]


VAE_CHUNK = 4   # images per VAE call


def _vae_pieces(models: IP2PModels, x: torch.Tensor, chunk: int):
    """``(piece, n)``: ``x`` (B,...) in pieces of ``chunk`` items, ``n`` of them real. With the VAE compiled
    (static shapes), a short piece is padded by repeating its last item, so every call has one shape: one
    compile, whatever the number of views."""
    for s in range(0, x.shape[0], chunk):
        piece = x[s:s + chunk]
        n = piece.shape[0]
        if models.compiled and n < chunk:
            piece = torch.cat([piece, piece[-1:].expand(chunk - n, *piece.shape[1:])])
        yield piece, n


def encode_images(models: IP2PModels, images: torch.Tensor, chunk: int = VAE_CHUNK) -> torch.Tensor:
    """Images (B,H,W,3) in [0,1] -> VAE latents (B,4,h,w), ``.mode()``, not scaled."""
    from ..cancel import check

    out = []
    with models.use(models.vae) as vae:
        for piece, n in _vae_pieces(models, images, chunk):
            check()   # a cancel point per chunk (seconds each on a CPU at full size)
            x = piece.permute(0, 3, 1, 2).to(models.device, models.dtype) * 2 - 1
            out.append(vae.encode(x).latent_dist.mode()[:n])
    return torch.cat(out)


def decode_latents(models: IP2PModels, latents: torch.Tensor, chunk: int = VAE_CHUNK) -> torch.Tensor:
    """Scaled latents (B,4,h,w) -> images (B,H,W,3) float32 in [0,1]."""
    out = []
    sf = models.vae.config.scaling_factor
    from ..cancel import check

    with models.use(models.vae) as vae:
        for piece, n in _vae_pieces(models, latents, chunk):
            check()
            x = vae.decode((piece / sf).to(models.dtype)).sample[:n]
            out.append(((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out)


def _rows(ids: list[int], device) -> slice | torch.Tensor:
    """Rows ``ids`` of a batch: a slice when they are consecutive (no copy), else a long index on ``device``
    copied from pinned memory (no host sync, where indexing by a list would wait for the GPU)."""
    if not ids:
        return slice(0, 0)
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return slice(ids[0], ids[0] + len(ids))
    return _to_device(ids, torch.long, device)


def _take(x: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _put(dst: torch.Tensor, rows: slice | torch.Tensor, value: torch.Tensor) -> None:
    if isinstance(rows, slice):
        dst[rows] = value
    else:
        dst.index_copy_(0, rows, value)


def _resize(images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B,H,W,C) -> (B,h,w,C), antialiased bilinear."""
    if tuple(images.shape[1:3]) == tuple(hw):
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1)


def edit_images(models: IP2PModels, images: torch.Tensor, instruction: str, settings: IP2PSettings | None = None, *,
                views: Sequence[View] | None = None, masks: torch.Tensor | None = None,
                init_images: torch.Tensor | None = None, strength: float = 1.0,
                progress: Progress = no_progress, should_stop=lambda: False) -> EditOutput:
    """Edit ``images`` (B,H,W,3) in [0,1] by ``instruction`` (see ``_edit_images``), with the CUDA
    speed settings (``speed_settings``)."""
    with torch.no_grad(), speed_settings(models.device):
        return _edit_images(models, images, instruction, settings, views=views, masks=masks, init_images=init_images,
                            strength=strength, progress=progress, should_stop=should_stop)


def _edit_images(models: IP2PModels, images: torch.Tensor, instruction: str, settings: IP2PSettings | None = None, *,
                 views: Sequence[View] | None = None, masks: torch.Tensor | None = None,
                 init_images: torch.Tensor | None = None, strength: float = 1.0,
                 progress: Progress = no_progress, should_stop=lambda: False) -> EditOutput:
    """Edit ``images`` (B,H,W,3) in [0,1] by ``instruction``.

    views: cameras/timesteps (and FLAME binding data) of the images; needed for multi-view
        batch editing (without them every view is edited on its own);
    masks: (B,H,W) soft eye/mouth masks for inpainting (None: no inpainting);
    init_images / strength: start from ``init_images`` noised to ``strength`` (in (0,1]) instead
        of pure noise, still conditioned on ``images`` (iterative dataset update).
    """
    s = settings or IP2PSettings()
    B, H, W, _ = images.shape
    dev, dt = models.device, models.dtype
    # The images on the model's device from here (their resizing is GPU work where there is one); the
    # edit comes back where they were.
    out_device = images.device
    images = images.to(dev)
    init_images = None if init_images is None else init_images.to(dev)
    sched, ctx = models.scheduler, models.mv
    hw = diffusion_size(H, W, s.resolution or models.resolution, models.size_multiple)
    cpu_gen = torch.Generator().manual_seed(int(s.seed))

    # Encode the instruction: guidance branches [text+image, image only, none].
    emb_text, emb_none = encode_prompt(models, instruction)

    # Encode the conditioning images: VAE mode, unscaled, concatenated to the noisy latents.
    image_latents = encode_images(models, _resize(images, hw))
    sf = models.vae.config.scaling_factor
    original_latents = image_latents.float() * sf
    lh, lw = image_latents.shape[-2:]

    # Prepare the schedule and the starting latents.
    sched.set_timesteps(s.steps, device=dev)
    timesteps = sched.timesteps
    noise = torch.randn((B, 4, lh, lw), generator=cpu_gen).to(dev)
    if init_images is not None and strength < 1.0:
        start = min(s.steps - 1, s.steps - max(1, int(round(s.steps * strength))))
        timesteps = timesteps[start:]
        init = encode_images(models, _resize(init_images, hw)).float() * sf
        latents = sched.add_noise(init, noise, timesteps[:1].expand(B))
    else:
        latents = noise * sched.init_noise_sigma
    latents = latents.float()

    # Inpainting: eye/mouth masks at latent resolution, fixed noise for the originals.
    lmask = None
    if s.inpaint and masks is not None and s.inpaint_strength > 0:
        lmask = latent_masks(masks.to(dev), (lh, lw), s.inpaint_dilate)
        inpaint_noise = torch.randn((B, 4, lh, lw), generator=cpu_gen).to(dev)
        inpaint_start = (s.steps // 2 if s.inpaint_start is None else int(s.inpaint_start)) - (s.steps - len(timesteps))

    multiview = s.multiview and views is not None and B > 1
    groups = plan_groups(views, s.chunk_size, s.temporal_keys) if multiview else []
    all_views = list(range(B))
    zeros = torch.zeros_like(image_latents[:1])

    def guided_eps(ids: list[int], t, eps: torch.Tensor) -> None:
        """3-way classifier-free guidance for views ``ids`` (one UNet call, branch-major batch), written
        into their rows of ``eps``. No host syncs: the rows are a slice or an index copied without one."""
        if should_stop():  # a step of many views is several UNet calls: seconds on a CPU
            raise CancelledError()
        n = len(ids)
        ctx.batch = list(ids)
        rows = _rows(ids, dev)
        x = sched.scale_model_input(_take(latents, rows), t).to(dt)
        cond = _take(image_latents, rows)
        inp = torch.cat([torch.cat([x, cond], 1), torch.cat([x, cond], 1), torch.cat([x, zeros.expand(n, -1, -1, -1)], 1)])
        emb = torch.cat([emb_text.expand(n, -1, -1), emb_none.expand(n, -1, -1), emb_none.expand(n, -1, -1)])
        e = unet(inp, t, encoder_hidden_states=emb).sample.float()
        e_text, e_image, e_none = e.chunk(3)
        _put(eps, rows, e_none + s.guidance_text * (e_text - e_image) + s.guidance_image * (e_image - e_none))

    # Compiled, the first edit at a new size (or number of views per call) compiles before its first step.
    shape_key = (lh, lw, min(B, s.batch_size), multiview)
    if models.compiled and shape_key not in models.compiled_for:
        progress(COMPILE_STAGE, 0, len(timesteps))
    key_log = []
    ctx.begin(views or [], (lh, lw))
    ctx.extended, ctx.band, ctx.depth_tol = s.extended_attention, s.band, s.depth_tol
    ctx.fused = COMPILE_BACKEND if models.compiled and COMPILED_FUSED_MATCHING else None
    try:
        # The timesteps as Python numbers, read once: the loop's tests and the scheduler's step use them
        # (a device tensor there is a host sync per step); the UNet gets the device tensor.
        t_host = [int(x) for x in timesteps.tolist()]
        with models.use(models.unet) as unet:
            for step, (t, t_int) in enumerate(zip(timesteps, t_host)):
                if should_stop():
                    raise CancelledError()
                eps = torch.empty_like(latents)
                if multiview and t_int >= s.min_timestep:
                    step_keys = []
                    for g in groups:
                        keys = [c[int(torch.randint(len(c), (1,), generator=cpu_gen))] for c in g.chunks]
                        others = [i for i in g.members if i not in keys]
                        ctx.set_keys(keys, {i: nearest_keys(views, i, keys, s.key_neighbours) for i in others})
                        # Key views: extended self-attention across all of them; other views: the key
                        # views' outputs at matched tokens. The first UNet call holds the key views and
                        # as many others as fit in the batch ("mixed": key views first in every layer).
                        first = others[:max(0, s.batch_size - len(keys))]
                        ctx.mode, ctx.n_keys = ("mixed" if first else "key"), len(keys)
                        guided_eps(keys + first, t, eps)
                        ctx.mode = "inject"
                        for c in range(len(first), len(others), s.batch_size):
                            guided_eps(others[c:c + s.batch_size], t, eps)
                        step_keys += keys
                    key_log.append(step_keys)
                else:
                    ctx.mode = "off"
                    for c in range(0, B, s.batch_size):
                        guided_eps(all_views[c:c + s.batch_size], t, eps)
                latents = sched.step(eps, t_int, latents).prev_sample.float()   # DDIM takes the host number
                if lmask is not None and step >= inpaint_start:
                    t_next = timesteps[step + 1] if step + 1 < len(timesteps) else None
                    latents = reinject(latents, original_latents, inpaint_noise, lmask, sched, t_next, s.inpaint_strength)
                progress("edit", step + 1, len(timesteps))
    finally:
        ctx.end()
    if models.compiled:
        models.compiled_for.add(shape_key)

    edited = _resize(decode_latents(models, latents), (H, W)).clamp(0, 1)
    return EditOutput(edited.to(out_device), latents, original_latents, lmask, key_log)


# ---------------------------------------------------------------------------
# 3. The editor of the edit loop
# ---------------------------------------------------------------------------

# Inpainting re-injects the original eyes and mouth so the source expression survives an edit of
# the rest of the head. An instruction that targets the eyes or the mouth itself ("green eyes",
# "red lips") would be undone by that, so those parts are left out of the masks of such an edit.
TARGET_WORDS = {
    "eyes": {"eye", "eyes", "eyed", "iris", "irises", "pupil", "pupils", "eyelid", "eyelids", "eyelash", "eyelashes",
             "lashes", "eyeliner", "eyeshadow", "mascara"},
    "mouth": {"lip", "lips", "lipstick", "lipsticked", "mouth", "teeth", "tooth", "toothed"},
}


def targeted_parts(instruction: str) -> set[str]:
    """The parts ("eyes", "mouth") an instruction names (word match, e.g. 'give her green eyes')."""
    import re

    words = set(re.findall(r"[a-z]+", (instruction or "").lower()))
    return {part for part, vocab in TARGET_WORDS.items() if words & vocab}


def _part_of_region(name: str) -> str | None:
    from ..flame import canonical_region

    r = canonical_region(name)
    if r in ("eyes", "eye_region"):
        return "eyes"
    if r in ("lips", "teeth"):
        return "mouth"
    return None


def _part_of_query(query: str) -> str | None:
    q = query.lower()
    if "eye" in q or "iris" in q or "pupil" in q:
        return "eyes"
    if any(w in q for w in ("mouth", "lip", "teeth", "tooth")):
        return "mouth"
    return None


def inpaint_regions_for(instruction: str, regions: Sequence[str]) -> list[str]:
    """``regions`` minus those of the parts the instruction targets (see ``TARGET_WORDS``)."""
    hit = targeted_parts(instruction)
    return [r for r in regions if _part_of_region(r) not in hit]


def detector_queries_for(instruction: str, queries: Sequence[str]) -> list[str]:
    """Detector text queries minus those naming the parts the instruction targets."""
    hit = targeted_parts(instruction)
    return [q for q in queries if _part_of_query(q) not in hit]


class InstructPix2PixEditor(Editor):
    """Instruct-Pix2Pix behind the ``Editor`` interface (``edit3dgs edit --editor ip2p``).

    The first time a view (camera, timestep) is seen its render is kept as the original: it
    conditions every later edit of that view and supplies the expression for inpainting. The
    inpainting masks leave out the parts the instruction targets ("green eyes" keeps the eyes
    out, "red lips" the mouth; ``inpaint_regions_for``), so a local edit there is not undone. With
    ``reedit_strength`` (0 < s < 1) later rounds re-edit the current render noised to that
    strength (Instruct-NeRF2NeRF's iterative dataset update) instead of editing from noise.
    """

    name = "ip2p"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype=None,
                 inpaint_regions: Sequence[str] = DEFAULT_INPAINT_REGIONS, mask_source: str = "flame",
                 detector_model: str | None = None, sam_model: str | None = None,
                 detector_queries: Sequence[str] | None = None, box_threshold: float = 0.3, text_threshold: float = 0.25,
                 reedit_strength: float | None = None, attention_slicing: bool = False, vae_tiling: bool = False,
                 cpu_offload: bool = False, compile_unet: bool = False, settings: IP2PSettings | None = None,
                 **options):
        """``options``: ``IP2PSettings`` fields, its defaults for the rest (the one table of them); a
        ``seed`` left out or None: the loop gives each round its own."""
        if mask_source not in ("flame", "detector"):
            raise Edit3DGSError("--mask-source", "flame or detector", repr(mask_source))
        if reedit_strength is not None and not 0 < float(reedit_strength) <= 1:
            raise Edit3DGSError("--reedit-strength", "a noise strength in (0, 1]", repr(reedit_strength))
        seed = options.pop("seed", None)
        self.model, self.device, self.dtype = model, device, dtype
        self.memory = dict(attention_slicing=attention_slicing, vae_tiling=vae_tiling, cpu_offload=cpu_offload,
                           compile_unet=bool(compile_unet))
        self.settings = replace(settings or IP2PSettings(), **options, **({} if seed is None else {"seed": seed}))
        self.fixed_seed = seed is not None
        self.inpaint_regions = list(inpaint_regions)
        self.mask_source = mask_source
        self.detector = dict(detector_model=detector_model, sam_model=sam_model, queries=detector_queries,
                             box_threshold=box_threshold, text_threshold=text_threshold)
        self.reedit_strength = None if reedit_strength is None else float(reedit_strength)
        self._originals: dict[tuple[int, int], torch.Tensor] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        self.rounds = 0

    def models(self) -> IP2PModels:
        return load_ip2p(self.model, self.device, self.dtype, **self.memory)

    def record(self) -> dict:
        from dataclasses import asdict

        return {"editor_settings": asdict(self.settings)}   # what the editor ran with

    def regions_for(self, instruction: str) -> list[str]:
        if not instruction or not instruction.strip():
            raise Edit3DGSError("--instruction", "a sentence describing the edit", "an empty instruction")
        if not (self.settings.inpaint and self.mask_source == "flame"):
            return []
        return inpaint_regions_for(instruction, self.inpaint_regions)

    def _mask_parts(self, instruction: str) -> tuple:
        """What the masks of an edit of ``instruction`` cover (the cache key of the masks)."""
        if self.mask_source == "flame":
            return ("flame",) + tuple(inpaint_regions_for(instruction, self.inpaint_regions))
        from ..masks import DEFAULT_QUERIES

        return ("detector",) + tuple(detector_queries_for(instruction, self.detector["queries"] or DEFAULT_QUERIES))

    def _region_mask(self, request: EditRequest, regions: Sequence[str]) -> torch.Tensor:
        from ..masks import combine_region_masks

        return combine_region_masks(request.region_masks, regions, request.images.shape[:3])

    def edit(self, request: EditRequest, progress: Progress = no_progress) -> torch.Tensor:
        models = self.models()  # load first: a missing model fails before any work
        # The originals (and masks) wait between rounds where the editor works: no round trip through host
        # memory for each edit (about 1 s of copies for 160 renders of 550x802 on an H200); on the host with
        # --cpu-offload, which saves device memory.
        keep = torch.device("cpu") if models.offload else models.device
        imgs = request.images.detach().float()
        keys = [(int(c.index), int(t)) for c, t in zip(request.cameras, request.timesteps)]
        seen = all(k in self._originals for k in keys)
        for k, img in zip(keys, imgs):
            if k not in self._originals:
                self._originals[k] = img.to(keep, copy=True)      # a copy: the caller may reuse its tensor
        cond = torch.stack([self._originals[k] for k in keys])

        masks = None
        parts = self._mask_parts(request.instruction)
        if self.settings.inpaint and len(parts) > 1:
            mkeys = [(k, parts) for k in keys]
            if not all(k in self._masks for k in mkeys):
                if self.mask_source == "flame":
                    new = self._region_mask(request, parts[1:])
                else:
                    from ..masks import detect_region_masks

                    new = detect_region_masks(cond, **{**self.detector, "queries": list(parts[1:])}, device=models.device)
                new = new.to(keep, torch.float32)
                for k, m in zip(mkeys, new):
                    self._masks.setdefault(k, m)
            masks = torch.stack([self._masks[k] for k in mkeys])

        def at(x, i):
            return None if x is None else x[i].detach().float()

        views = [View(c, int(t), request.gaussian_means.get(int(t)) if request.gaussian_means else None,
                      at(request.depths, i), at(request.alphas, i))
                 for i, (c, t) in enumerate(zip(request.cameras, request.timesteps))]
        settings = self.settings
        if not self.fixed_seed:   # the loop gives each round its own seed
            settings = replace(settings, seed=int(request.seed))
        reedit = self.reedit_strength is not None and seen and self.reedit_strength < 1
        out = edit_images(models, cond, request.instruction, settings, views=views, masks=masks,
                          init_images=imgs if reedit else None, strength=self.reedit_strength if reedit else 1.0,
                          progress=progress, should_stop=request.should_stop)
        self.rounds += 1
        return out.images.to(request.images.device)
