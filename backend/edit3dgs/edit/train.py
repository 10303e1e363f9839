"""Training a small Instruct-Pix2Pix for the built-in head (``edit3dgs train-editor``).

The model has exactly the Instruct-Pix2Pix architecture (formats.md §6b): an
``AutoencoderKL``, a ``UNet2DConditionModel`` whose first convolution takes 8
channels (noisy latent + the unscaled ``encode().mode()`` latent of the
conditioning image), a ``CLIPTextModel`` with its tokenizer and a DDIM
scheduler, saved in the diffusers folder layout with safetensors, so
``load_ip2p`` opens it exactly as it opens ``timbrooks/instruct-pix2pix``.

Training, read top down (``train_editor``):

1. the data: ``editor_data.EditorDataset`` renders (original, instruction,
   exactly edited) triples of the built-in head on the fly;
2. the VAE alone (reconstruction L1 + MSE + a small KL), then frozen; its latent
   scaling factor is set to 1 / std of the latents, as Stable Diffusion's is;
3. the UNet and the text encoder together with the Instruct-Pix2Pix objective:
   MSE, conditioning dropout (``conditioning_dropout``),
   an EMA of the weights (what is saved). ``edit_weight`` weighs the latent
   pixels the edit changes (a few percent of each image: without it the loss
   is almost all "copy the input", and the first model trained here did just
   that). The UNet predicts v (``prediction="v_prediction"``, Stable Diffusion
   2's parameterisation; Instruct-Pix2Pix predicts epsilon, still available):
   two H200 runs with the same VAE and weights, epsilon for 4,210 steps and v
   for 3,464, gave 25 dB and 33.5 dB outside the edit on the held-out camera
   (the epsilon model returned a blurred average head). Min-SNR-gamma
   (``snr_gamma``) is available but off by default: it weights the predicted
   image by min(SNR, gamma), almost nothing at the noisy steps where an edit's
   colour is decided, and a gamma-5 run beside a plain one on the same GPU
   reached 16.3 against 17.3 dB inside the hair of "make the hair blue".
   The choice of prediction is saved in the scheduler config, which every
   sampler follows.

   What made colours possible at all was the VAE (phase 2): trained on whole
   images, the first one decoded a blue-hair target back to brown (11 dB
   inside the hair) because recoloured regions are a few percent of the
   pixels; its loss now weighs the pixels an edit changed ``1 + edit_weight``
   (``vae_pixel_weights``) and it trains from the same rendered bank as the
   UNet. Its ceiling on held-out edits is measured and written to the card;
4. the folder: the model in diffusers layout, a model card, the training
   manifest, the loss log and its curve, sample edits on the held-out camera.

``--resume`` continues from ``DIR/checkpoints/last.pt`` (weights, optimiser,
step, data-sampler state).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Edit3DGSError

MODEL_JSON = "edit3dgs_model.json"  # native resolution and recommended settings, read by load_ip2p


@dataclass
class Architecture:
    """Sizes of the model (``small``: the shipped one; ``tiny``: tests)."""

    vae_channels: tuple = (32, 64, 128)
    vae_groups: int = 16
    unet_channels: tuple = (32, 64, 128)
    unet_down: tuple = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    unet_heads: tuple = (1, 2, 4)
    unet_groups: int = 16
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_tokens: int = 32


ARCHITECTURES = {
    "small": Architecture(),
    "tiny": Architecture(vae_channels=(16, 16), vae_groups=8, unet_channels=(16, 32),
                         unet_down=("DownBlock2D", "CrossAttnDownBlock2D"), unet_heads=(1, 2), unet_groups=8,
                         text_hidden=32, text_layers=1, text_heads=2, max_tokens=16),
}


@dataclass
class TrainConfig:
    """One training run. ``steps``/``vae_steps``: optimiser steps of each phase; ``minutes``: a wall-clock
    budget for the UNet phase (it stops early and saves when it runs out)."""

    out: str
    steps: int = 6000
    vae_steps: int = 1500
    arch: str = "small"
    groups: int = 4                  # identity-timestep groups per batch
    views: int = 8                   # cameras per group (one rasterizer call)
    edits: int = 4                   # instructions per group
    lr: float = 6e-4
    vae_lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.998
    bank: int = 200                  # batches rendered once for both phases (0: render every step)
    conditioning_dropout: float = 0.05
    prediction: str = "v_prediction"  # or "epsilon" (Instruct-Pix2Pix's); saved in the scheduler config
    init_vae: str | None = None      # a model folder whose trained VAE to reuse (skips the VAE phase)
    init_model: str | None = None    # a model folder to continue training from (all of it; skips the VAE phase)
    snr_gamma: float | None = None   # Min-SNR-gamma loss weighting (Hang et al. 2023); None: plain MSE
    edit_weight: float = 4.0         # extra loss weight on latent pixels the edit changes (0: none)
    kl_weight: float = 1e-6
    random_identities: int = 14
    frames: int = 24
    size: tuple = (160, 112)
    seed: int = 0
    device: str = "auto"
    minutes: float | None = None
    pause_minutes: float | None = None   # stop this run after this many UNet minutes (resume later); the
                                         # learning-rate schedule still follows ``minutes``/``steps``
    checkpoint_every: int = 500
    log_every: int = 25
    samples: bool = True
    reference_views: int | None = None   # cameras that measure each identity's colours (None: the 15 of the rig)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

def build_models(arch: Architecture, tokenizer_dir: Path, words, seed: int = 0):
    """Fresh (tokenizer, text encoder, VAE, UNet) of the Instruct-Pix2Pix architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    tok = clip_tokenizer(tokenizer_dir, words, max_length=arch.max_tokens)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
                                      num_attention_heads=arch.text_heads, num_hidden_layers=arch.text_layers,
                                      vocab_size=len(tok), max_position_embeddings=arch.max_tokens,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=arch.text_hidden))
    n = len(arch.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(arch.vae_channels),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=arch.vae_groups,
                        sample_size=max(160, 32), mid_block_add_attention=False)
    up = tuple(reversed([t.replace("Down", "Up") for t in arch.unet_down]))
    unet = UNet2DConditionModel(sample_size=40, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=tuple(arch.unet_channels), down_block_types=tuple(arch.unet_down),
                                up_block_types=up, cross_attention_dim=arch.text_hidden,
                                attention_head_dim=tuple(arch.unet_heads), norm_num_groups=arch.unet_groups)
    return tok, te, vae, unet


PREDICTIONS = ("v_prediction", "epsilon")


def noise_scheduler(prediction: str = "v_prediction"):
    """The training schedule (Stable Diffusion's scaled-linear betas, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, prediction_type=prediction)


def inference_scheduler(prediction: str = "v_prediction"):
    """The DDIM config saved with the model; its ``prediction_type`` tells every sampler (ours,
    diffusers' Instruct-Pix2Pix pipeline) what the UNet predicts."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction)


def conditioning_dropout_masks(n: int, prob: float, generator: torch.Generator | None = None,
                               device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) bool (n,): one uniform draw p per sample; the text is dropped when
    p < 2 prob, the image when prob <= p < 3 prob (diffusers' train_instruct_pix2pix: ``prob`` text
    only, ``prob`` both, ``prob`` image only)."""
    p = torch.rand(n, generator=generator).to(device)
    return p < 2 * prob, (p >= prob) & (p < 3 * prob)


EDIT_THRESHOLD = 0.02   # a pixel the exact edit changes by more than this (any channel) is "edited"


def changed_pixels(original: torch.Tensor, edited: torch.Tensor, threshold: float = EDIT_THRESHOLD) -> torch.Tensor:
    """(B,H,W) float: 1 where any channel of ``edited`` (B,H,W,3) differs from ``original`` by more than ``threshold``."""
    return ((edited - original).abs().amax(-1) > threshold).float()


def edit_mask(original: torch.Tensor, edited: torch.Tensor, latent_hw, threshold: float = EDIT_THRESHOLD) -> torch.Tensor:
    """(B,1,h,w) float: 1 where any pixel of the latent pixel's image patch changes by more than
    ``threshold`` between ``original`` and ``edited`` (B,H,W,3)."""
    return F.adaptive_max_pool2d(changed_pixels(original, edited, threshold)[:, None], tuple(int(v) for v in latent_hw))


def vae_pixel_weights(original: torch.Tensor, target: torch.Tensor, edit_weight: float) -> torch.Tensor:
    """(B,1,H,W) reconstruction-loss weights of the images ``target`` (B,H,W,3): ``1 + edit_weight``
    on pixels that differ from ``original`` by more than ``EDIT_THRESHOLD``, 1 elsewhere."""
    return (1 + edit_weight * changed_pixels(original, target))[:, None]


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, alpha_bar: torch.Tensor, edit: torch.Tensor,
                  snr_gamma: float | None, edit_weight: float, prediction: str = "epsilon") -> torch.Tensor:
    """The MSE of the UNet's prediction (epsilon or v), weighted per sample by Min-SNR-gamma
    (``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v; None: 1) and per
    latent pixel by ``1 + edit_weight * edit`` (``edit``: (B,1,h,w) in [0,1])."""
    se = (pred - target) ** 2
    if edit_weight:
        se = se * (1 + edit_weight * edit.float())
    per = se.mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        snr = alpha_bar / (1 - alpha_bar)
        per = per * snr.clamp(max=snr_gamma) / (snr + 1 if prediction == "v_prediction" else snr)
    return per.mean()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

class _Log:
    def __init__(self, path: Path, resume: bool):
        self.path = path
        if not resume or not path.exists():
            path.write_text("phase,step,loss,lr,seconds\n")

    def __call__(self, phase: str, step: int, loss: float, lr: float, seconds: float):
        with self.path.open("a") as f:
            f.write(f"{phase},{step},{loss:.6f},{lr:.3g},{seconds:.1f}\n")


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).contiguous() * 2 - 1


def _lr(step: int, total: int, base: float, warmup: int, done: float | None = None) -> float:
    """Linear warm-up, then cosine decay to a tenth; ``done`` (0..1) overrides the step fraction
    (a run with a time budget decays over its budget)."""
    if step < warmup:
        return base * (step + 1) / warmup
    q = (step - warmup) / max(1, total - warmup) if done is None else max(done, step / max(1, total))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, q))))


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        e = [p for p in ema.parameters()]
        m = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(e, m, 1 - decay)


def train_editor(cfg: TrainConfig, resume: bool = False, progress: Callable | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Train and write the model folder ``cfg.out`` (see the module docstring). Returns the folder."""
    from tqdm import tqdm  # progress bars: maintained, prints to stderr

    from .. import headmodel
    from ..editor_data import EditorDataset, make_identities, vocabulary_words
    from ..flame import FlameHead, load_flame_model
    from ..device import pick_device

    if cfg.prediction not in PREDICTIONS:
        raise Edit3DGSError("--prediction", f"one of {', '.join(PREDICTIONS)}", repr(cfg.prediction))
    if cfg.init_model:
        cfg.init_vae = cfg.init_vae or cfg.init_model
        for sub, name in (("unet", "config.json"), ("text_encoder", "config.json"), ("vae", "config.json"),
                          ("tokenizer", "tokenizer_config.json"), ("scheduler", "scheduler_config.json")):
            if not (Path(cfg.init_model) / sub / name).is_file():
                raise Edit3DGSError(Path(cfg.init_model) / sub, "a model folder written by train-editor (--init-model)",
                                    f"no {sub}/{name}")
    if cfg.init_vae and not (Path(cfg.init_vae) / "vae" / "config.json").is_file():
        raise Edit3DGSError(Path(cfg.init_vae) / "vae", "a trained model folder's VAE (--init-vae)", "no vae/config.json")
    if cfg.init_model:   # continuing a model: it must keep predicting what it predicts
        sched_cfg = Path(cfg.init_model) / "scheduler" / "scheduler_config.json"
        try:
            pred = json.loads(sched_cfg.read_text()).get("prediction_type", "epsilon")
        except (OSError, ValueError) as exc:
            raise Edit3DGSError(sched_cfg, "a scheduler config (JSON)", str(exc)) from None
        if pred != cfg.prediction:
            raise Edit3DGSError(sched_cfg, f"a model predicting {cfg.prediction} (--prediction)",
                                f"prediction_type {pred!r}: pass --prediction {pred} to continue it")
    if cfg.arch not in ARCHITECTURES:
        raise Edit3DGSError("--arch", f"one of {', '.join(ARCHITECTURES)}", repr(cfg.arch))
    if cfg.steps < 1 or cfg.vae_steps < 0:
        raise Edit3DGSError("--steps", "a positive number of steps", f"{cfg.steps} (vae {cfg.vae_steps})")
    arch = ARCHITECTURES[cfg.arch]
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    ckpt_path = ckpt_dir / "last.pt"
    if resume and not ckpt_path.is_file():
        raise Edit3DGSError(ckpt_path, "a checkpoint to resume from (--resume)", "no such file")
    if not resume and out.exists() and any(out.iterdir()):
        raise Edit3DGSError(out, "an empty or new folder (or --resume to continue a run there)", "a folder with files")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(cfg.device)
    t_start = time.perf_counter()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 1. Data: the built-in head model and the training identities.
    log(f"[train-editor] building {2 + cfg.random_identities} training identities on {dev}")
    head_dir = ckpt_dir / "head_model"
    head_dir.mkdir(parents=True, exist_ok=True)
    head = FlameHead(load_flame_model(*headmodel.write_head_model(head_dir, seed=0)))
    identities = make_identities(head, cfg.random_identities, cfg.frames, seed=cfg.seed, device=dev,
                                 reference_views=cfg.reference_views)
    data = EditorDataset(identities, size=cfg.size, seed=cfg.seed)
    t_data = time.perf_counter() - t_start

    tok, te, vae, unet = build_models(arch, ckpt_dir / "tokenizer_src", vocabulary_words(), cfg.seed)
    te, vae, unet = te.to(dev), vae.to(dev), unet.to(dev)
    if cfg.init_vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(cfg.init_vae) / "vae", torch_dtype=torch.float32).to(dev)
    if cfg.init_model:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        src = Path(cfg.init_model)
        unet = UNet2DConditionModel.from_pretrained(src / "unet", torch_dtype=torch.float32).to(dev)
        te = CLIPTextModel.from_pretrained(src / "text_encoder", torch_dtype=torch.float32).to(dev)
        tok = CLIPTokenizer.from_pretrained(src / "tokenizer")   # the one its text encoder learned
        arch = replace(arch, max_tokens=int(tok.model_max_length))
    sched = noise_scheduler(cfg.prediction)
    alphas = sched.alphas_cumprod.to(dev)
    empty_ids = tok([""], padding="max_length", max_length=arch.max_tokens, return_tensors="pt").input_ids.to(dev)
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else dict(device_type="cpu", enabled=False)
    state = {"phase": "vae", "step": 0, "scaling_factor": None, "seconds": {"data": round(t_data, 1)}}
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    if resume:
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        # The objective, the model and the data must be what the run started with; --steps and
        # --minutes may grow (the learning-rate schedule then follows the new totals).
        fixed = ("vae_steps", "lr", "vae_lr", "warmup", "arch", "prediction", "snr_gamma",
                 "edit_weight", "groups", "views", "edits", "init_vae", "init_model", "random_identities", "seed")
        was = ck.get("config", {})
        diff = [f"--{k.replace('_', '-')} {was[k]!r} (now {getattr(cfg, k)!r})" for k in fixed
                if k in was and was[k] != getattr(cfg, k)]
        if diff:
            raise Edit3DGSError(ckpt_path, "--resume with the options the run started with", "; ".join(diff))
        for m, k in ((vae, "vae"), (unet, "unet"), (te, "te"), (ema_unet, "ema_unet"), (ema_te, "ema_te"),
                     (opt_vae, "opt_vae"), (opt, "opt")):
            m.load_state_dict(ck[k])
        state = ck["state"]
        data.rng.setstate(ck["data_rng"])
        data.log = ck["data_log"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"[train-editor] resumed at {state['phase']} step {state['step']}")
    losses = _Log(out / "loss_log.csv", resume)

    def save_checkpoint():
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"vae": vae.state_dict(), "unet": unet.state_dict(), "te": te.state_dict(),
                    "ema_unet": ema_unet.state_dict(), "ema_te": ema_te.state_dict(),
                    "opt_vae": opt_vae.state_dict(), "opt": opt.state_dict(), "state": state,
                    "data_rng": data.rng.getstate(), "data_log": data.log, "torch_rng": torch.get_rng_state(),
                    "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    def finish_step(phase: str, bar, loss: torch.Tensor, lr: float, total: int) -> None:
        """After one optimiser step of either phase: count it, move the bar, log the loss."""
        state["step"] += 1
        bar.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == total:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            losses(phase, state["step"], loss.item(), lr, time.perf_counter() - t_start)

    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def measure_vae(what: str) -> None:
        """The VAE's reconstruction on held-out-camera renders and inside held-out edits, into the state and the log."""
        state["vae_psnr_held_out"] = _vae_psnr(vae, identities, cfg, dev)
        state["vae_psnr_held_out_edits"] = _vae_psnr_edits(vae, identities[0], cfg, dev)
        log(f"[train-editor] {what}: scaling factor {state['scaling_factor']:.4f}, "
            f"reconstruction PSNR on held-out-camera renders {state['vae_psnr_held_out']:.2f} dB, "
            f"inside the regions of held-out-camera edits {_fmt_psnrs(state['vae_psnr_held_out_edits'])}")

    # 2. The VAE (or one trained before, --init-vae).
    if state["phase"] == "vae" and cfg.init_vae:
        sf0 = float(vae.config.scaling_factor)
        state.update(phase="unet", step=0, scaling_factor=sf0, vae_from=_vae_origin(Path(cfg.init_vae)))
        if cfg.init_model:
            state["model_from"] = _model_origin(Path(cfg.init_model))
        measure_vae(f"VAE from {cfg.init_vae}")
    # The bank: ``cfg.bank`` data batches rendered once (rendering every step would leave the GPU
    # waiting on the rasterizer for models this small); both phases draw from it.
    bank = None
    if cfg.bank > 0 and (state["phase"] == "vae" or state["step"] < cfg.steps):
        t_bank = time.perf_counter()
        now = data.rng.getstate()
        if "bank_rng" in state:     # resumed: the same bank as the run began with
            data.rng.setstate(state["bank_rng"])
        else:
            state["bank_rng"] = now
        log_before = copy.deepcopy(data.log) if resume else None
        bank = render_bank(data, cfg, dev)
        if resume:
            data.rng.setstate(now)
            data.log = log_before
        state["seconds"]["bank"] = round(time.perf_counter() - t_bank, 1)
        state["bank_pairs"] = len(bank["prompts"])
        log(f"[train-editor] bank of {state['bank_pairs']} rendered pairs in {state['seconds']['bank']} s")

    def vae_batch() -> tuple[torch.Tensor, torch.Tensor]:
        """Images (NCHW in [-1, 1]) for one VAE step, half originals, half edits, and each pixel's
        loss weight: ``1 + edit_weight`` where the edit changed it (a recoloured lip is a few
        hundred pixels of an image; unweighted, a VAE trained on these images returns the lips
        and the hair in the colours it saw most)."""
        n = cfg.groups * cfg.views
        if bank is not None:
            i, j = (torch.randint(0, len(bank["prompts"]), (n,), device=dev) for _ in range(2))
            o, e, eo = bank["original"][i].float(), bank["edited"][j].float(), bank["original"][j].float()
        else:
            b = data.batch(cfg.groups, cfg.views, 1)
            o, e = b["original"].to(dev), b["edited"].to(dev)
            eo = o
        return _to_nchw(torch.cat([o, e])), vae_pixel_weights(torch.cat([o, eo]), torch.cat([o, e]), cfg.edit_weight)

    if state["phase"] == "vae":
        t0 = time.perf_counter()
        vae.train()
        bar = tqdm(total=cfg.vae_steps, initial=state["step"], desc="vae", unit="step", dynamic_ncols=True)
        while state["step"] < cfg.vae_steps:
            x, w = vae_batch()
            lr = _lr(state["step"], cfg.vae_steps, cfg.vae_lr, cfg.warmup)
            for g_ in opt_vae.param_groups:
                g_["lr"] = lr
            with torch.autocast(**amp):
                post = vae.encode(x).latent_dist
                rec = vae.decode(post.sample()).sample
            err = rec.float() - x
            loss = (w * (err.abs() + err ** 2)).mean() + cfg.kl_weight * post.kl().mean()
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt_vae.step()
            finish_step("vae", bar, loss, lr, cfg.vae_steps)
            if state["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
            if progress:
                progress("vae", state["step"], cfg.vae_steps)
        bar.close()
        vae.eval()
        # Latent scaling so the diffusion sees unit variance (Stable Diffusion's 0.18215 is this for its VAE).
        with torch.no_grad():
            zs = [vae.encode(vae_batch()[0][cfg.groups * cfg.views:]).latent_dist.mode() for _ in range(4)]
        state.update(phase="unet", step=0, scaling_factor=float(1.0 / torch.cat(zs).float().std()))
        state["seconds"]["vae"] = round(time.perf_counter() - t0, 1)
        measure_vae("VAE done")
        save_checkpoint()
    vae.requires_grad_(False).eval()
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    sf = state["scaling_factor"]

    def encode_batch(b: dict):
        """A data batch -> (conditioning latents (unscaled), target latents (scaled), token ids, edit mask
        (B,1,h,w): latent pixels whose image patch the edit changes)."""
        o, e = b["original"].to(dev).float(), b["edited"].to(dev).float()
        cond = vae.encode(_to_nchw(o)).latent_dist.mode()
        target = vae.encode(_to_nchw(e)).latent_dist.mode() * sf
        ids = tok(list(b["prompts"]), padding="max_length", max_length=arch.max_tokens, truncation=True,
                  return_tensors="pt").input_ids.to(dev)
        return cond, target, ids, edit_mask(o, e, target.shape[-2:], EDIT_THRESHOLD)

    # 3. The UNet and the text encoder, on the bank encoded once by the frozen VAE.
    ebank = None
    if bank is not None and state["step"] < cfg.steps:
        t_enc = time.perf_counter()
        conds, targets, toks, masks = [], [], [], []
        chunk = cfg.groups * cfg.views * cfg.edits
        with torch.no_grad():
            for s0 in range(0, len(bank["prompts"]), chunk):
                c, tg, ids, m = encode_batch({k: v[s0:s0 + chunk] for k, v in bank.items()})
                conds.append(c.half()), targets.append(tg.half()), toks.append(ids), masks.append(m.bool())
        ebank = (torch.cat(conds), torch.cat(targets), torch.cat(toks), torch.cat(masks))
        del bank
        state["seconds"]["bank_encode"] = round(time.perf_counter() - t_enc, 1)
    t0 = time.perf_counter()
    budget = None if cfg.minutes is None else cfg.minutes * 60
    pause = None if cfg.pause_minutes is None else cfg.pause_minutes * 60
    unet.train()
    te.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="unet", unit="step", dynamic_ncols=True)
    run_seconds = state["seconds"].get("unet", 0.0)
    stopped_early = paused = False
    while state["step"] < cfg.steps:
        if budget is not None and run_seconds + (time.perf_counter() - t0) > budget:
            stopped_early = True
            break
        if pause is not None and time.perf_counter() - t0 > pause:
            paused = True
            break
        if ebank is not None:
            pick = torch.randint(0, ebank[0].shape[0], (cfg.groups * cfg.views * cfg.edits,), device=dev)
            cond, target, ids, emask = ebank[0][pick].float(), ebank[1][pick].float(), ebank[2][pick], ebank[3][pick]
        else:
            with torch.no_grad():
                cond, target, ids, emask = encode_batch(data.batch(cfg.groups, cfg.views, cfg.edits))
        n = target.shape[0]
        noise = torch.randn_like(target)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), device=dev)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * target + (1 - a).sqrt() * noise
        drop_text, drop_image = conditioning_dropout_masks(n, cfg.conditioning_dropout, gen, dev)
        ids = torch.where(drop_text[:, None], empty_ids.expand(n, -1), ids)
        cond = cond * (~drop_image).float().view(-1, 1, 1, 1)
        done = None if budget is None else (run_seconds + time.perf_counter() - t0) / budget
        lr = _lr(state["step"], cfg.steps, cfg.lr, cfg.warmup, done)
        for g_ in opt.param_groups:
            g_["lr"] = lr
        with torch.autocast(**amp):
            emb = te(ids)[0]
            pred = unet(torch.cat([noisy, cond], 1), t, encoder_hidden_states=emb).sample
        goal = noise if cfg.prediction == "epsilon" else sched.get_velocity(target, noise, t)
        loss = weighted_loss(pred.float(), goal, alphas[t], emask, cfg.snr_gamma, cfg.edit_weight, cfg.prediction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _ema_update(ema_unet, unet, cfg.ema if state["step"] > cfg.warmup else 0.0)
        _ema_update(ema_te, te, cfg.ema if state["step"] > cfg.warmup else 0.0)
        finish_step("unet", bar, loss, lr, cfg.steps)
        if state["step"] % cfg.checkpoint_every == 0:
            state["seconds"]["unet"] = round(run_seconds + time.perf_counter() - t0, 1)
            save_checkpoint()
        if progress:
            progress("unet", state["step"], cfg.steps)
    bar.close()
    state["seconds"]["unet"] = round(run_seconds + time.perf_counter() - t0, 1)
    state["stopped_early"] = stopped_early
    state["paused"] = paused
    save_checkpoint()
    if paused:
        log(f"[train-editor] paused at step {state['step']} (continue with --resume)")

    # 4. The model folder.
    save_model(out, tok, ema_te, vae, ema_unet, cfg, state, data.manifest(), dev)
    if cfg.samples:
        write_samples(out, identities[0], cfg, dev)
    plot_losses(out / "loss_log.csv", out / "loss_curve.png")
    write_model_card(out, cfg, state, data.manifest())
    log(f"[train-editor] model written to {out} ({time.perf_counter() - t_start:.0f} s)")
    return out


@torch.no_grad()
def render_bank(data, cfg: TrainConfig, dev) -> dict:
    """``cfg.bank`` data batches rendered once: ``original``/``edited`` (N,H,W,3) fp16 on ``dev``, ``prompts``."""
    from tqdm import tqdm

    orig, edited, prompts = [], [], []
    for _ in tqdm(range(cfg.bank), desc="bank", unit="batch", dynamic_ncols=True):
        b = data.batch(cfg.groups, cfg.views, cfg.edits)
        orig.append(b["original"].to(dev, torch.float16)), edited.append(b["edited"].to(dev, torch.float16))
        prompts += b["prompts"]
    return {"original": torch.cat(orig), "edited": torch.cat(edited), "prompts": prompts}


VAE_PROBE_EDITS = ("make the hair blue", "give her red lips", "green eyes", "make him look older")


@torch.no_grad()
def _vae_psnr_edits(vae, ident, cfg: TrainConfig, dev) -> dict:
    """Reconstruction PSNR of the VAE inside the edited region of camera-8 renders of exact edits:
    the ceiling of what any editor decoding through this VAE can reach there."""
    from ..metrics import finite, psnr

    view = HeldOutView(ident, cfg.size)
    out = {}
    for p in VAE_PROBE_EDITS:
        orig, gt = view.original, view.edited(p)
        inside = changed_pixels(orig, gt)
        rec = vae.decode(vae.encode(_to_nchw(gt.to(dev))).latent_dist.mode()).sample
        rec = ((rec.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
        out[p] = finite(round(float(psnr(rec, gt.to(dev), inside.to(dev))), 2))
    return out


class HeldOutView:
    """One identity on camera 8 (never trained on) at a fixed training-sequence timestep: its render
    and the renders of its exact edits (what the samples and the VAE's ceiling are measured on)."""

    def __init__(self, ident, size):
        from ..cameras import HELD_OUT_CAMERA, camera_rig
        from ..editor_data import EditorDataset

        self.ident = ident
        self.cam = [c.scaled(0.2) for c in camera_rig() if c.index == HELD_OUT_CAMERA]
        self.ds = EditorDataset([ident], size=size)
        self.verts = ident.bundle.pose(ident.params, [ident.params.num_timesteps // 3])[0]
        self.original = self.ds._render(ident.bundle, ident.bundle.gaussians, self.verts, self.cam)

    def edited(self, prompt: str) -> torch.Tensor:
        from ..editor_data import ground_truth_gaussians

        b = self.ident.bundle
        return self.ds._render(b, ground_truth_gaussians(b, b.gaussians, prompt, self.ident.references), self.verts, self.cam)


def _fmt_psnrs(d: dict) -> str:
    return ", ".join(f'"{k}" {v} dB' for k, v in d.items())


def _vae_origin(folder: Path) -> dict:
    """Where a reused VAE was trained (from its folder's training manifest, when it has one)."""
    out = {"folder": str(folder)}
    try:
        m = json.loads((folder / "training_manifest.json").read_text())
        out.update(steps=m["config"]["vae_steps"], kl_weight=m["config"]["kl_weight"],
                   seconds=m["state"]["seconds"].get("vae"), hardware=m.get("hardware"))
        # VAEs trained since the pixel weights record their ceiling on edits
        out["edit_weight"] = m["config"]["edit_weight"] if "vae_psnr_held_out_edits" in m["state"] else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def _model_origin(folder: Path) -> dict:
    """The run a continued model (--init-model) comes from: its configuration, UNet steps and time."""
    out = {"folder": str(folder)}
    try:
        m = json.loads((folder / "training_manifest.json").read_text())
        out.update(config=m["config"], steps=int(m["steps_done"]), unet_seconds=m["state"]["seconds"].get("unet"),
                   vae_seconds=m["state"]["seconds"].get("vae"), hardware=m.get("hardware"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def _vae_psnr(vae, identities, cfg: TrainConfig, dev) -> float:
    """Reconstruction PSNR of the VAE on camera-8 renders (never trained on) of the first identity."""
    from ..cameras import HELD_OUT_CAMERA, camera_rig
    from ..editor_data import EditorDataset
    from ..metrics import psnr

    ident = identities[0]
    cam = [c.scaled(0.2) for c in camera_rig() if c.index == HELD_OUT_CAMERA]
    ds = EditorDataset([ident], size=cfg.size)
    ts = np.linspace(0, ident.params.num_timesteps - 1, 8).round().astype(int)
    with torch.no_grad():
        imgs = torch.cat([ds._render(ident.bundle, ident.bundle.gaussians, ident.bundle.pose(ident.params, [int(t)])[0], cam)
                          for t in ts])
        rec = vae.decode(vae.encode(_to_nchw(imgs)).latent_dist.mode()).sample
        rec = ((rec.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return float(psnr(rec, imgs))


def save_model(out: Path, tok, te, vae, unet, cfg: TrainConfig, state: dict, manifest: dict, dev) -> None:
    """The diffusers folder layout (fp16 safetensors: half the size; loaders cast to their dtype)."""
    import diffusers

    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(out / name, ignore_errors=True)
    half = lambda m: copy.deepcopy(m).to("cpu", torch.float16)  # noqa: E731
    half(unet).save_pretrained(out / "unet", safe_serialization=True)
    half(vae).save_pretrained(out / "vae", safe_serialization=True)
    half(te).save_pretrained(out / "text_encoder", safe_serialization=True)
    for sub in ("unet", "vae", "text_encoder"):   # no local paths of the machine that trained it
        cfg_path = out / sub / "config.json"
        conf = json.loads(cfg_path.read_text())
        if conf.pop("_name_or_path", None) is not None:
            cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(out / "tokenizer")
    inference_scheduler(cfg.prediction).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    (out / MODEL_JSON).write_text(json.dumps({
        "name": "edit3dgs-builtin-ip2p", "resolution": int(min(cfg.size)), "size_hw": list(cfg.size),
        "recommended": {"steps": 20, "guidance_text": 7.5, "guidance_image": 1.5},
        "knows": "the built-in head only (not real faces)"}, indent=1))
    (out / "training_manifest.json").write_text(json.dumps({
        "config": asdict(cfg), "state": {k: v for k, v in state.items() if k not in ("step", "bank_rng")},
        "steps_done": state["step"], "hardware": _hardware(dev), **manifest}, indent=1, default=str))


def _hardware(dev) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


def write_samples(out: Path, ident, cfg: TrainConfig, dev, prompts=None) -> Path:
    """Edits of held-out-camera renders by the saved model (per view, the real editing path):
    rows original / edited / ground truth, one column per prompt."""
    from ..report import grid, label_rows, save_image
    from .ip2p import IP2PSettings, clear_cache, edit_images, load_ip2p

    prompts = prompts or ["make the hair blue", "give her red lips", "green eyes", "make him look older",
                          "make the hair pink", "blue lips"]
    view = HeldOutView(ident, cfg.size)
    orig = view.original
    clear_cache()
    models = load_ip2p(str(out), device=dev)
    cols = [[], [], []]
    scores = {}
    for i, p in enumerate(prompts):
        gt = view.edited(p)
        e = edit_images(models, orig, p, IP2PSettings(seed=i, multiview=False, inpaint=False)).images.to(gt.device)
        for row, img in zip(cols, (orig, e, gt)):
            row.append(img[0].float().cpu().numpy())
        scores[p] = sample_scores(orig, e, gt)
    clear_cache()
    path = out / "samples.png"
    save_image(path, label_rows(grid(cols), ["original", "edited", "ground truth"]))
    lines = ["columns: " + " | ".join(prompts) + " (held-out combinations: pink hair, blue lips)",
             "held-out camera, one view, no multi-view or inpainting; PSNR dB against the exact edit "
             "(whole image / inside the edited region; the unedited render inside the region) and against the "
             "original outside the region:"]
    f = lambda x: f"{x:.2f}" if isinstance(x, (int, float)) else str(x)  # noqa: E731
    lines += [f"  {p}: {f(v['psnr_vs_gt'])} / {f(v['psnr_inside_vs_gt'])} (unedited {f(v['unedited_inside_vs_gt'])}); "
              f"outside {f(v['psnr_outside_vs_original'])}" for p, v in scores.items()]
    (out / "samples.txt").write_text("\n".join(lines) + "\n")
    (out / "samples.json").write_text(json.dumps(scores, indent=1))
    return path


def sample_scores(orig: torch.Tensor, edited: torch.Tensor, gt: torch.Tensor, threshold: float = EDIT_THRESHOLD) -> dict:
    """PSNRs of one edit against its exact ground truth: whole image, inside the region the exact edit
    changes (and the unedited image there, the baseline), and outside it against the original."""
    from ..metrics import finite, psnr

    inside = changed_pixels(orig, gt, threshold)
    r = lambda x: finite(round(float(x), 2))  # noqa: E731 - NaN (no region) / inf are not JSON numbers
    return {"psnr_vs_gt": r(psnr(edited, gt)), "psnr_inside_vs_gt": r(psnr(edited, gt, inside)),
            "unedited_inside_vs_gt": r(psnr(orig, gt, inside)), "psnr_outside_vs_original": r(psnr(edited, orig, 1 - inside))}


def plot_losses(csv: Path, png: Path) -> None:
    """The loss log as a PNG (one panel per phase, log-scale loss), drawn with Pillow."""
    from PIL import Image, ImageDraw

    rows = [ln.split(",") for ln in csv.read_text().splitlines()[1:] if ln.strip()]
    phases = [p for p in ("vae", "unet") if any(r[0] == p for r in rows)]
    W, H, pad = 420, 260, 40
    img = Image.new("RGB", (W * max(1, len(phases)), H), "white")
    d = ImageDraw.Draw(img)
    for k, ph in enumerate(phases):
        pts = [(int(r[1]), float(r[2])) for r in rows if r[0] == ph and float(r[2]) > 0]
        if len(pts) < 2:
            continue
        xs, ys = [p[0] for p in pts], [math.log10(p[1]) for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys) + 1e-9
        ox = k * W
        d.rectangle([ox + pad, 10, ox + W - 10, H - pad], outline="black")
        line = [(ox + pad + (x - x0) / max(1, x1 - x0) * (W - pad - 10), H - pad - (y - y0) / (y1 - y0) * (H - pad - 10))
                for x, y in zip(xs, ys)]
        d.line(line, fill=(30, 80, 200), width=2)
        d.text((ox + pad + 4, 14), f"{ph}: loss {pts[0][1]:.3g} -> {pts[-1][1]:.3g} (log scale)", fill="black")
        d.text((ox + pad, H - pad + 6), f"step {x0}", fill="black")
        d.text((ox + W - 90, H - pad + 6), f"step {x1}", fill="black")
    img.save(png)


def reproduce_command(cfg: TrainConfig, out: str = "DIR") -> str:
    """The ``train-editor`` command line of ``cfg``: every option that differs from its default."""
    flags = {"steps": "--steps", "vae_steps": "--vae-steps", "minutes": "--minutes", "arch": "--arch",
             "random_identities": "--random-identities", "groups": "--groups", "views": "--views", "edits": "--edits",
             "bank": "--bank", "lr": "--lr", "warmup": "--warmup", "prediction": "--prediction",
             "snr_gamma": "--snr-gamma", "edit_weight": "--edit-weight", "init_vae": "--init-vae",
             "init_model": "--init-model", "seed": "--seed"}
    default = TrainConfig(out="")
    parts = ["edit3dgs train-editor", "--out", out]
    for k, flag in flags.items():
        v = getattr(cfg, k)
        if v != getattr(default, k):
            parts += [flag, "0" if v is None and k == "snr_gamma" else f"{v:g}" if isinstance(v, float) else str(v)]
    return " ".join(parts + ["--device", "cuda" if "cuda" in str(cfg.device) or cfg.device == "auto" else str(cfg.device)])


def _card_reproduce(cfg: TrainConfig, state: dict, hardware: str) -> str:
    first = state.get("model_from") or {}
    if cfg.init_model and first.get("config"):
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        fc = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in first["config"].items() if k in known})
        return (f"Two runs (the second continues the first one's model, VAE included; {hardware}):\n"
                f"`{reproduce_command(fc, 'FIRST')}`, then\n"
                f"`{reproduce_command(replace(cfg, init_vae=None, init_model='FIRST'))}`")
    src = state.get("vae_from") or {}
    if cfg.init_vae and src.get("steps") is not None and not cfg.init_model:
        first = TrainConfig(out="", vae_steps=int(src["steps"]), random_identities=cfg.random_identities, seed=cfg.seed)
        return (f"Two runs (the second reuses the first one's VAE; {hardware}):\n"
                f"`{reproduce_command(first, 'FIRST')}` (its VAE phase is what is reused), then\n"
                f"`{reproduce_command(replace(cfg, init_vae='FIRST'))}`")
    return f"`{reproduce_command(cfg)}` ({hardware})"


def _card_status(out: Path) -> str:
    """What the sample edits show: per prompt, toward the exact edit inside its region or not."""
    try:
        scores = json.loads((out / "samples.json").read_text())
    except (OSError, ValueError):
        return ""
    rows = []
    for p, v in scores.items():
        gain = v["psnr_inside_vs_gt"] - v["unedited_inside_vs_gt"] if all(
            isinstance(v.get(k), (int, float)) for k in ("psnr_inside_vs_gt", "unedited_inside_vs_gt")) else None
        if gain is None:
            verdict = "not measured (no changed region)"
        elif gain >= 3:
            verdict = f"edits toward the truth (+{gain:.1f} dB inside the region)"
        elif gain > -1:
            verdict = f"**does not edit** ({gain:+.1f} dB inside the region)"
        else:
            verdict = f"**makes the region worse** ({gain:+.1f} dB inside it)"
        rows.append(f"- \"{p}\": {verdict}; outside the region {v['psnr_outside_vs_original']} dB from the original.")
    rows.append("- A PSNR gain is not the right colour (a lighter hair scores for \"pink\"): look at `samples.png`.")
    return "## Status (from the sample edits: what the model has learned)\n" + "\n".join(rows) + "\n"


def write_model_card(out: Path, cfg: TrainConfig, state: dict, manifest: dict) -> None:
    m = json.loads((out / "training_manifest.json").read_text())
    held = ", ".join(manifest["instructions"]["held_out_combinations"])
    n_ids = len(manifest["identities"])
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
             for p in out.iterdir() if p.is_dir() and p.name != "checkpoints"}
    src = state.get("vae_from")
    if src:
        weighted = (f", weighted 1 + {src['edit_weight']:g} on pixels an edit changed,"
                    if src.get("edit_weight") is not None else "")
        vae_line = (f"{src.get('steps', '?')} steps (L1 + MSE{weighted} + {src.get('kl_weight', cfg.kl_weight):g} KL) "
                    f"in an earlier run of this command, reused")
        vae_seconds = src.get("seconds", "?")
    else:
        vae_line = (f"{cfg.vae_steps} steps (L1 + MSE, weighted 1 + {cfg.edit_weight:g} on pixels an edit changed, "
                    f"+ {cfg.kl_weight:g} KL) on the bank's originals and edits")
        vae_seconds = state["seconds"].get("vae", 0)
    edits = state.get("vae_psnr_held_out_edits") or {}
    vae_edits = (f"; inside the edited region of held-out-camera exact edits (the ceiling of any edit decoded "
                 f"through it): {_fmt_psnrs(edits)}") if edits else ""
    first = state.get("model_from") or {}
    unet_seconds = state["seconds"].get("unet", 0)
    if first.get("steps") is not None:
        unet_line = (f"{first['steps'] + m['steps_done']} steps ({first['steps']} in an earlier run, continued here "
                     f"for {m['steps_done']} with a fresh optimiser)")
        unet_seconds = f"{first.get('unet_seconds')} + {unet_seconds}"
    else:
        unet_line = f"{m['steps_done']} steps"
    snr = f"Min-SNR-gamma {cfg.snr_gamma:g}" if cfg.snr_gamma else "none (plain MSE, Min-SNR off)"
    status, reproduce = _card_status(out), _card_reproduce(cfg, state, m.get("hardware", ""))
    samples = ""
    if (out / "samples.txt").is_file():
        samples = "\n## Sample edits on the held-out camera (`samples.png`)\n```\n" + (out / "samples.txt").read_text() + "```\n"
    card = f"""---
license: gpl-3.0-or-later
library_name: diffusers
pipeline_tag: image-to-image
---
# edit3dgs-builtin-ip2p: a small Instruct-Pix2Pix for Edit3DGS's built-in head

A model with exactly the Instruct-Pix2Pix architecture (8-channel `UNet2DConditionModel`,
`AutoencoderKL`, `CLIPTextModel` + `CLIPTokenizer`, DDIM scheduler) trained from scratch by
`edit3dgs train-editor` on renders of the **built-in head** only. It lets the paper's method
(multi-view batch editing, expression-preserving inpainting, refit) run offline end to end
and be measured against exact ground truth. `--model builtin` selects it.

## Limits
- It knows the built-in procedural head and its renders (white background, the rig's framing),
  not real faces or photographs: on anything else its edits are meaningless.
- It knows appearance edits only: a colour on the hair, lips, eyes or skin, "look older",
  "paler skin". Native size {cfg.size[1]}x{cfg.size[0]} (W x H); eyes are a few pixels wide there.
- Text understanding is limited to the training phrasings (below); unknown words fall back
  to characters and are effectively ignored.

## Data (training_manifest.json has everything)
- {n_ids} identities: the 2 built-in ones and {n_ids - 2} drawn from the head model's identity space
  (shape directions, skin/hair/iris/lip colours); Gaussians per face and SH degree varied.
- Motion: the training sequences only ({', '.join(manifest['sequences']['kinds'])}); never
  {' or '.join(manifest['sequences']['never'])}.
- Cameras: the rig's training cameras {manifest['cameras']['rig_indices']} (never camera 8) and
  {manifest['cameras']['jittered']['count']} jittered cameras around the rig, each at least
  {manifest['cameras']['jittered']['min_angle_to_held_out_deg_allowed']} degrees from camera 8's view
  (closest drawn: {manifest['cameras']['jittered']['min_angle_to_held_out_deg_drawn']} degrees).
- Targets: exact edits (the region's Gaussians recoloured by the region editor's colour map, rendered).
- Vocabulary: colours {{{', '.join(sorted({k.split(':')[1] for k in manifest['instructions']['vocabulary'] if ':' in k}))}}}
  x regions {{hair, lips, eyes, skin}}, "look older", "paler skin"; each in several phrasings.
- **Held out** (colours seen on other regions, never on this one): {held}.

## Training
- VAE: {vae_line}, then frozen; latent scaling factor
  {state.get('scaling_factor', float('nan')):.4f}; reconstruction PSNR on held-out-camera renders
  {state.get('vae_psnr_held_out', float('nan')):.2f} dB{vae_edits}.
- UNet + text encoder: {unet_line} of the Instruct-Pix2Pix objective ({cfg.prediction}, MSE),
  loss weights: {snr}; edit-region weight {cfg.edit_weight},
  batch {cfg.groups * cfg.views * cfg.edits}, AdamW lr {cfg.lr:g} (warm-up, cosine), conditioning dropout
  {cfg.conditioning_dropout} (text {cfg.conditioning_dropout:g}, both {cfg.conditioning_dropout:g},
  image {cfg.conditioning_dropout:g}), EMA {cfg.ema} (the saved weights), seed {cfg.seed}.
- Time: data set-up {state['seconds'].get('data', 0)} s, VAE {vae_seconds} s,
  UNet {unet_seconds} s on {m['hardware']}.
- Sizes: {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sorted(sizes.items()))} (fp16 safetensors).
- Loss curve: `loss_curve.png` (log: `loss_log.csv`); sample edits on the held-out camera: `samples.png`.
{samples}
{status}
## Reproduce
{reproduce}
"""
    (out / "README.md").write_text(card)
