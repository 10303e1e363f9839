"""``edit3dgs train-editor``: train the small Instruct-Pix2Pix for the built-in head (``--model builtin``)."""

from __future__ import annotations

import sys


def check_train_ranges(a) -> None:
    """The numeric options of ``train-editor``, before anything is built: whole counts, finite rates and times."""
    import math

    from ..errors import Edit3DGSError
    from ..validate import positive, whole

    for opt, lo in (("steps", 0), ("vae_steps", 0), ("views", 1), ("edits", 1), ("warmup", 0), ("groups", 1),
                    ("bank", 0), ("checkpoint_every", 1), ("random_identities", 0), ("seed", 0)):
        whole(getattr(a, opt), "--" + opt.replace("_", "-"), "a count", lo, 2**31 - 1)
    positive(a.lr, "--lr", "a learning rate")
    for opt in ("minutes", "pause_minutes"):
        if getattr(a, opt) is not None:
            positive(getattr(a, opt), "--" + opt.replace("_", "-"), "minutes")
    for opt in ("snr_gamma", "edit_weight"):  # 0 turns them off
        v = getattr(a, opt)
        if not (v == 0 or (math.isfinite(v) and v > 0)):
            raise Edit3DGSError("--" + opt.replace("_", "-"), "a finite positive weight, or 0 (off)", repr(v))


def cmd_train_editor(a) -> int:
    from ..edit.train import TrainConfig, train_editor

    check_train_ranges(a)
    cfg = TrainConfig(out=a.out, steps=a.steps, vae_steps=a.vae_steps, arch=a.arch, seed=a.seed, device=a.device,
                      minutes=a.minutes, random_identities=a.random_identities, checkpoint_every=a.checkpoint_every,
                      groups=a.groups, samples=not a.no_samples, bank=a.bank, lr=a.lr,
                      snr_gamma=None if a.snr_gamma <= 0 else a.snr_gamma, edit_weight=a.edit_weight,
                      pause_minutes=a.pause_minutes, prediction=a.prediction, init_vae=a.init_vae,
                      init_model=a.init_model, views=a.views, edits=a.edits, warmup=a.warmup)
    out = train_editor(cfg, resume=a.resume, log=lambda s: print(s, file=sys.stderr))
    print(f"model written to {out} (use it with --model {out}; model card: {out}/README.md)")
    return 0


def add_train_editor_args(s) -> None:
    s.add_argument("--out", required=True, help="model folder to write (diffusers layout, model card, loss log)")
    s.add_argument("--steps", type=int, default=6000, help="UNet + text-encoder steps")
    s.add_argument("--vae-steps", type=int, default=1500, help="VAE steps (trained first, then frozen)")
    s.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the UNet phase (stops and saves)")
    s.add_argument("--pause-minutes", type=float, default=None,
                   help="stop this run after this many UNet minutes and save (continue with --resume); "
                        "the learning-rate schedule still follows --minutes")
    s.add_argument("--prediction", default="v_prediction", choices=("v_prediction", "epsilon"),
                   help="what the UNet predicts (saved in the scheduler config; samplers follow it)")
    s.add_argument("--init-vae", default=None, metavar="MODEL_DIR",
                   help="reuse the trained VAE of a model folder (skips the VAE phase)")
    s.add_argument("--init-model", default=None, metavar="MODEL_DIR",
                   help="continue training a model folder written by train-editor (fresh optimiser)")
    s.add_argument("--views", type=int, default=8, help="cameras per group")
    s.add_argument("--edits", type=int, default=4, help="instructions per group")
    s.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    s.add_argument("--lr", type=float, default=6e-4, help="UNet + text-encoder learning rate")
    s.add_argument("--snr-gamma", type=float, default=0.0, help="Min-SNR-gamma loss weighting (default 0: plain MSE)")
    s.add_argument("--edit-weight", type=float, default=4.0,
                   help="extra loss weight on latent pixels the edit changes (0: none)")
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--arch", default="small", choices=("small", "tiny"), help="model size (tiny: for tests)")
    s.add_argument("--random-identities", type=int, default=14, help="random heads besides the two built-in ones")
    s.add_argument("--groups", type=int, default=4, help="identity-timestep groups per batch (x8 views x4 edits)")
    s.add_argument("--bank", type=int, default=200, help="batches rendered once, for the VAE and the UNet phases (0: render every step)")
    s.add_argument("--checkpoint-every", type=int, default=500)
    s.add_argument("--no-samples", action="store_true", help="skip the sample-edits figure")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
