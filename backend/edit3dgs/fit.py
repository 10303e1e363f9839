"""Refit: optimise an avatar's local Gaussian parameters against edited images.

The seed paper's recipe: Adam (eps 1e-15) at lr 1e-2 for ``10 x n`` iterations
(n = number of timesteps/batches in the edit set), loss
``0.8 L1 + 0.2 (1 - SSIM)`` plus GaussianAvatars' local regularisers
``0.01 mean(relu(|xyz| - 1))`` and ``mean(relu(exp(scaling) - 0.6))``.

Because the Gaussians live in their parent faces' frames, fitting a few
timesteps changes every timestep: the edit reaches unseen expressions and
views through the FLAME binding.

Options
-------
* ``trainable`` (N,) bool: only those rows are optimised (a local edit). The
  trainable rows are gathered into their own leaf tensors; the others are
  never handed to the optimiser, so they come back bit-identical.
* ``strategy``: densification/pruning as an object plugged into the loop
  (gsplat style, ``BindingDensify``); clones inherit their parent's binding
  and pruning never removes a face's last Gaussian.

What the defaults do (measured in docs/refit.md; ``RefitConfig.seed_recipe()``
gives the seed's recipe back):

* per-group learning rates (``lrs="edit"``): the base colour fast, geometry
  at GaussianAvatars' rates; the seed's single rate is the preset ``"seed"``;
* ``appearance_only``: position, scale, rotation and opacity are frozen (not
  handed to the optimiser), so a colour edit cannot move or fade Gaussians;
* ``sh_rest``: the view-dependent SH coefficients are held at their original
  values when the edit set has few cameras ("auto"), or regularised towards
  them, so a view never seen cannot get a colour nobody fitted;
* ``stop="converged"``: iterate until the loss stops improving (checked once
  per window, the learning rates are halved at each plateau, stop after
  ``patience`` plateaus or ``max_iters_per_batch x n``); ``stop="fixed"`` is the
  seed's ``iters_per_batch x n``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .avatar import GaussianAvatar, PosedFrames, WorldGaussians, bind_frames, posed_frames
from .cameras import Camera, stack
from .errors import CancelledError

PARAMS = GaussianAvatar.PARAM_NAMES  # xyz, features_dc, features_rest, opacity, scaling, rotation

# GaussianAvatars' training rates (formats.md §1), a preset for ``RefitConfig.lrs``.
GAUSSIAN_AVATARS_LRS = {"xyz": 5e-3, "features_dc": 2.5e-3, "features_rest": 2.5e-3 / 20,
                        "opacity": 5e-2, "scaling": 1.7e-2, "rotation": 1e-3}
# The default: GaussianAvatars' geometry rates, the base colour fast enough to carry a whole
# recolouring in tens of iterations (Adam moves a parameter by about its rate per step, and a
# recolour changes f_dc by up to ~2), SH rest at GaussianAvatars' ratio (1/20 of the base colour).
EDIT_LRS = {"xyz": 5e-3, "features_dc": 5e-2, "features_rest": 5e-2 / 20,
            "opacity": 5e-2, "scaling": 1.7e-2, "rotation": 1e-3}
LR_PRESETS = {"edit": EDIT_LRS, "gaussian_avatars": GAUSSIAN_AVATARS_LRS, "seed": {}}
GEOMETRY = ("xyz", "opacity", "scaling", "rotation")
SH_REST_MODES = ("auto", "hold", "regularise", "free")
STOP_MODES = ("converged", "fixed")
FEW_VIEWS = 8  # an edit set with fewer distinct cameras than this has "few views" (sh_rest="auto" holds SH rest)


@dataclass
class TargetBatch:
    """Edited images of one timestep: ``verts (V,3)`` posed mesh, ``cameras`` (C), ``images (C,H,W,3)``."""

    timestep: int
    verts: torch.Tensor
    cameras: Sequence[Camera]
    images: torch.Tensor


@dataclass
class RefitConfig:
    """How a refit runs.

    ``lrs``: per-group learning rates: a dict (missing groups use ``lr``) or a preset name from
    ``LR_PRESETS`` ("edit", the default; "gaussian_avatars"; "seed": every group at ``lr``, as does None).
    ``appearance_only``: optimise only the colours (f_dc, f_rest); geometry is frozen.
    ``sh_rest``: the view-dependent SH coefficients: "hold" (frozen at the input's values),
    "regularise" (free, plus ``lambda_sh_rest x`` mean squared distance to the input's values),
    "free", or "auto" (hold when the edit set has fewer than ``few_views`` distinct cameras, else free).
    ``stop``: "converged" (at most ``max_iters_per_batch x n`` iterations; every ``window``
    iterations (at least n) the mean loss is compared with the best window so far: an improvement
    below ``tol`` (relative) or ``tol_abs`` is a plateau, which multiplies the rates by ``lr_drop``; the
    ``patience``-th plateau ends the refit) or "fixed" (``iters``, or ``iters_per_batch x n``:
    the seed's 10 x n). ``iters`` given: exactly that many, whatever ``stop`` says.
    ``views_per_iter``: cameras drawn per iteration from the batch (None: all).
    """

    iters: int | None = None
    iters_per_batch: int = 10
    lr: float = 1e-2
    lrs: dict | str | None = "edit"
    appearance_only: bool = False
    sh_rest: str = "auto"
    lambda_sh_rest: float = 1.0
    few_views: int = FEW_VIEWS
    stop: str = "converged"
    max_iters_per_batch: int = 40
    window: int = 10
    tol: float = 0.01
    tol_abs: float = 1e-5
    lr_drop: float = 0.5
    patience: int = 3
    lambda_ssim: float = 0.2
    lambda_xyz: float = 0.01
    threshold_xyz: float = 1.0
    lambda_scale: float = 1.0
    threshold_scale: float = 0.6
    views_per_iter: int | None = None
    background: tuple = (1.0, 1.0, 1.0)
    seed: int = 0

    @classmethod
    def seed_recipe(cls, **kw) -> "RefitConfig":
        """The seed paper's refit: every group at lr 1e-2, everything free, 10 x n iterations."""
        return cls(**{"lrs": "seed", "appearance_only": False, "sh_rest": "free", "stop": "fixed", **kw})

    def group_lrs(self) -> dict:
        from .errors import Edit3DGSError

        if isinstance(self.lrs, str) and self.lrs not in LR_PRESETS:
            raise Edit3DGSError("lrs", f"per-group rates or a preset among {', '.join(LR_PRESETS)}", repr(self.lrs))
        lrs = LR_PRESETS[self.lrs] if isinstance(self.lrs, str) else (self.lrs or {})
        unknown = set(lrs) - set(PARAMS)
        if unknown:
            raise Edit3DGSError("lrs", f"parameter groups among {', '.join(PARAMS)}", ", ".join(sorted(unknown)))
        return {k: float(lrs.get(k, self.lr)) for k in PARAMS}

    def check(self) -> None:
        """One-line errors for options out of range."""
        from .errors import Edit3DGSError

        if self.sh_rest not in SH_REST_MODES:
            raise Edit3DGSError("sh_rest", f"one of {', '.join(SH_REST_MODES)}", repr(self.sh_rest))
        if self.stop not in STOP_MODES:
            raise Edit3DGSError("stop", f"one of {', '.join(STOP_MODES)}", repr(self.stop))
        for name in ("iters_per_batch", "max_iters_per_batch", "window", "patience"):
            if int(getattr(self, name)) < 1:
                raise Edit3DGSError(name, "an integer >= 1", repr(getattr(self, name)))
        if not 0 < self.lr_drop <= 1:
            raise Edit3DGSError("lr_drop", "a factor in (0, 1]", repr(self.lr_drop))
        self.group_lrs()

    def frozen_groups(self, n_cameras: int) -> set:
        """Parameter groups that are not optimised for an edit set with ``n_cameras`` distinct cameras."""
        out = set(GEOMETRY) if self.appearance_only else set()
        if self.sh_rest == "hold" or (self.sh_rest == "auto" and n_cameras < self.few_views):
            out.add("features_rest")
        return out

    def regularise_sh_rest(self, n_cameras: int) -> bool:
        return self.sh_rest == "regularise" and "features_rest" not in self.frozen_groups(n_cameras)


def ssim_loss(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of (C,H,W,3) images in [0,1]."""
    from pytorch_msssim import ssim  # maintained SSIM (Gaussian window 11, sigma 1.5, as 3DGS uses)

    return 1.0 - ssim(img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2), data_range=1.0, size_average=True)


def photometric_loss(img: torch.Tensor, ref: torch.Tensor, lambda_ssim: float = 0.2) -> torch.Tensor:
    """(1 - lambda) L1 + lambda (1 - SSIM)."""
    return (1 - lambda_ssim) * (img - ref).abs().mean() + lambda_ssim * ssim_loss(img, ref)


class TrainState:
    """The Gaussians being fitted: a frozen part and trainable leaf tensors.

    ``origin (M,)``: row of the input avatar each trainable Gaussian came from
    (-1 for Gaussians added by densification).
    """

    def __init__(self, gaussians: GaussianAvatar, trainable: torch.Tensor | None, frozen_groups=()):
        g = gaussians
        N = g.num_gaussians
        idx = torch.arange(N, device=g.device) if trainable is None else torch.nonzero(trainable.to(g.device)).flatten()
        self.base = g
        self.frozen_idx = torch.ones(N, dtype=torch.bool, device=g.device)
        self.frozen_idx[idx] = False
        self.frozen = g.subset(self.frozen_idx) if trainable is not None else None
        # Groups in ``frozen_groups`` keep their values (no gradient, not optimised).
        self.params = {k: getattr(g, k)[idx].detach().clone().requires_grad_(k not in frozen_groups) for k in PARAMS}
        self.binding = g.binding[idx].clone()
        self.origin = idx.clone()
        self.rest0 = None  # the input's SH rest of the trainable rows (set when it is regularised)
        self._placed: dict = {}  # world(): per batch, (binding, its gathered frames, the frozen rows placed)

    @property
    def num_trainable(self) -> int:
        return int(self.binding.shape[0])

    def trainable_avatar(self) -> GaussianAvatar:
        return GaussianAvatar(binding=self.binding, **self.params)

    def world(self, key, frames: PosedFrames) -> WorldGaussians:
        """World Gaussians of ``full()`` on the posed mesh of ``frames`` (differentiable w.r.t. the
        trainable rows), as ``full().to_world_from_frames(frames)`` computes them but cheaper: the
        frames are gathered for the trainable rows once per ``key`` (a batch) and binding
        (densification changes it), and the frozen rows are placed once per key. The world
        quaternions are not normalised (the rasterizer does it)."""
        hit = self._placed.get(key)
        if hit is None or hit[0] is not self.binding:
            frozen = None
            if self.frozen is not None and self.frozen.num_gaussians:
                frozen = hit[2] if hit is not None else None
                if frozen is None:
                    with torch.no_grad():
                        frozen = self.frozen.place(bind_frames(frames, self.frozen.binding), unit_quats=False)
            hit = self._placed[key] = (self.binding, bind_frames(frames, self.binding), frozen)
        _, bound, frozen = hit
        w = self.trainable_avatar().place(bound, unit_quats=False)
        if frozen is None:
            return w
        return WorldGaussians(*(torch.cat([a, b]) for a, b in zip(
            (frozen.means, frozen.quats, frozen.scales, frozen.opacities, frozen.sh),
            (w.means, w.quats, w.scales, w.opacities, w.sh))), w.sh_degree)

    def full(self) -> GaussianAvatar:
        """All Gaussians for rendering (differentiable w.r.t. the trainable ones)."""
        t = self.trainable_avatar()
        if self.frozen is None or self.frozen.num_gaussians == 0:
            return t
        return GaussianAvatar(**{f.name: torch.cat([getattr(self.frozen, f.name), getattr(t, f.name)])
                                 for f in fields(GaussianAvatar)})

    def result(self) -> GaussianAvatar:
        """The fitted avatar in the input's row order; added Gaussians at the end, pruned ones gone."""
        with torch.no_grad():
            keep = self.frozen_idx.clone()
            old = self.origin >= 0
            keep[self.origin[old]] = True
            out = {}
            for f in fields(GaussianAvatar):
                full = getattr(self.base, f.name).clone()
                val = self.binding if f.name == "binding" else self.params[f.name].detach()
                full[self.origin[old]] = val[old]
                out[f.name] = torch.cat([full[keep], val[~old]])
            return GaussianAvatar(**out)

    def replace(self, optimizer: torch.optim.Optimizer, keep: torch.Tensor | None = None,
                append_from: torch.Tensor | None = None, append_values: dict | None = None) -> None:
        """Keep rows ``keep`` (bool) and append copies of rows ``append_from`` (long), fixing Adam's state."""
        M = self.num_trainable
        keep = torch.ones(M, dtype=torch.bool, device=self.binding.device) if keep is None else keep
        add = torch.zeros(0, dtype=torch.long, device=self.binding.device) if append_from is None else append_from
        groups = {group["name"]: group for group in optimizer.param_groups}
        for name in PARAMS:  # every group, optimised or frozen
            old = self.params[name]
            new_val = old.detach()[add] if not append_values or name not in append_values else append_values[name]
            new = torch.cat([old.detach()[keep], new_val]).requires_grad_(old.requires_grad)
            if name in groups:
                st = optimizer.state.pop(old, None)
                if st:
                    for key in ("exp_avg", "exp_avg_sq"):
                        st[key] = torch.cat([st[key][keep], torch.zeros_like(st[key][add])])
                    optimizer.state[new] = st
                groups[name]["params"] = [new]
            self.params[name] = new
        if self.rest0 is not None:
            self.rest0 = torch.cat([self.rest0[keep], self.rest0[add]])
        self.binding = torch.cat([self.binding[keep], self.binding[add]])
        self.origin = torch.cat([self.origin[keep], torch.full_like(add, -1)])


class BindingDensify:
    """Densification and pruning that keep bindings valid (a strategy plugged into ``refit``).

    Every ``every`` iterations between ``start`` and ``stop``: Gaussians whose
    mean gradient norm of the local position exceeds ``grad_threshold`` are
    cloned (the clone inherits the binding, nudged along the gradient) up to
    ``max_new_fraction`` of the current count; Gaussians with opacity below
    ``prune_opacity`` are removed, except the last Gaussian of any face.
    """

    def __init__(self, grad_threshold: float = 2e-4, prune_opacity: float = 0.005, every: int = 20,
                 start: int = 10, stop: int | None = None, max_new_fraction: float = 0.1):
        self.grad_threshold, self.prune_opacity = grad_threshold, prune_opacity
        self.every, self.start, self.stop, self.max_new_fraction = every, start, stop, max_new_fraction
        self.grad_accum = None
        self.count = None
        self.log: list[dict] = []

    def step_post_backward(self, state: TrainState, optimizer, it: int, n_faces: int) -> None:
        g = state.params["xyz"].grad
        if g is None:
            return
        if self.grad_accum is None or self.grad_accum.shape[0] != g.shape[0]:
            self.grad_accum = torch.zeros(g.shape[0], device=g.device)
            self.count = torch.zeros(g.shape[0], device=g.device)
        n = g.norm(dim=-1)
        self.grad_accum += n
        self.count += (n > 0).float()
        stop = self.stop if self.stop is not None else math.inf
        if it < self.start or it >= stop or (it - self.start) % self.every != 0 or it == 0:
            return
        self.refine(state, optimizer, n_faces)

    @torch.no_grad()
    def refine(self, state: TrainState, optimizer, n_faces: int) -> dict:
        M = state.num_trainable
        avg = self.grad_accum / self.count.clamp_min(1) if self.grad_accum is not None else torch.zeros(M)
        cand = torch.nonzero(avg > self.grad_threshold).flatten()
        cap = int(self.max_new_fraction * M)
        if cand.numel() > cap:
            cand = cand[torch.argsort(avg[cand], descending=True)[:cap]]
        xyz = state.params["xyz"].detach()
        grad = state.params["xyz"].grad
        nudge = torch.zeros_like(xyz[cand])
        if grad is not None:
            nudge = -F.normalize(grad[cand], dim=-1) * 0.05
        vals = {"xyz": xyz[cand] + nudge}
        state.replace(optimizer, append_from=cand, append_values=vals)
        # Prune transparent Gaussians, never a face's last one (counting frozen Gaussians too).
        op = torch.sigmoid(state.params["opacity"].detach()[:, 0])
        low = op < self.prune_opacity
        counts = torch.bincount(state.binding, minlength=n_faces)
        if state.frozen is not None:
            counts += torch.bincount(state.frozen.binding, minlength=n_faces)
        keep = ~low
        # For each face losing all its Gaussians keep its most opaque one.
        survivors = torch.bincount(state.binding[keep], minlength=n_faces)
        if state.frozen is not None:
            survivors += torch.bincount(state.frozen.binding, minlength=n_faces)
        orphan = (survivors == 0) & (counts > 0)
        if orphan.any():
            rows = torch.nonzero(orphan[state.binding]).flatten()
            rows = rows[torch.argsort(op[rows], descending=True, stable=True)]
            pos = torch.arange(rows.numel(), device=rows.device)
            first = torch.full((n_faces,), rows.numel(), device=rows.device).scatter_reduce(
                0, state.binding[rows], pos, "amin")
            keep[rows[first[orphan]]] = True
        pruned = int((~keep).sum())
        if pruned:
            state.replace(optimizer, keep=keep)
        info = {"cloned": int(cand.numel()), "pruned": pruned, "count": state.num_trainable}
        self.log.append(info)
        self.grad_accum = None
        return info


@dataclass
class RefitResult:
    gaussians: GaussianAvatar
    losses: list = field(default_factory=list)
    iters: int = 0
    seconds: float = 0.0
    densify_log: list = field(default_factory=list)
    frozen: list = field(default_factory=list)  # parameter groups that were not optimised


def refit(gaussians: GaussianAvatar, faces: torch.Tensor, batches: Sequence[TargetBatch], config: RefitConfig | None = None,
          trainable: torch.Tensor | None = None, strategy: BindingDensify | None = None,
          progress: Callable[[str, int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
          stage: str = "refit") -> RefitResult:
    """Fit ``gaussians`` (local, bound to ``faces`` (F,3)) to the edited ``batches``.

    Returns a new ``GaussianAvatar`` (the input is not modified). ``should_stop``
    is polled every iteration and raises ``CancelledError``.
    """
    import time

    from .render import rasterize

    cfg = config or RefitConfig()
    if not batches:
        raise ValueError("refit needs at least one batch of edited images")
    t0 = time.perf_counter()
    dev = gaussians.device
    faces = faces.to(dev)
    n_faces = int(faces.shape[0])
    cfg.check()
    n_cams = len({c.index for b in batches for c in b.cameras})
    frozen_groups = cfg.frozen_groups(n_cams)
    state = TrainState(gaussians, trainable, frozen_groups)
    reg_rest = cfg.regularise_sh_rest(n_cams) and cfg.lambda_sh_rest > 0 and state.params["features_rest"].shape[1] > 0
    if reg_rest:
        state.rest0 = state.params["features_rest"].detach().clone()
    lrs = cfg.group_lrs()
    # fused Adam on CUDA: one kernel for all groups instead of several per group
    opt = torch.optim.Adam([{"params": [state.params[k]], "lr": lrs[k], "name": k} for k in PARAMS
                            if k not in frozen_groups], eps=1e-15, fused=dev.type == "cuda")
    n = len(batches)
    converge = cfg.iters is None and cfg.stop == "converged"
    if cfg.iters is not None:
        iters = cfg.iters
    else:
        iters = (cfg.max_iters_per_batch if converge else cfg.iters_per_batch) * n
    window = max(cfg.window, n)  # a window sees every timestep at least once
    best, plateaus = math.inf, 0
    rng = random.Random(cfg.seed)
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=dev)
    stacked = [stack(b.cameras, dev) for b in batches]
    # FLAME parameters are fixed during a refit: each batch's face frames are computed once (TrainState.world
    # reuses them).
    with torch.no_grad():
        frames = [posed_frames(b.verts.to(dev), faces) for b in batches]
    order: list[int] = []
    losses = []
    for it in range(iters):
        if should_stop is not None and should_stop():
            raise CancelledError("refit cancelled")
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        bi = order.pop()
        b = batches[bi]
        vm, K, w, h = stacked[bi]
        target = b.images.to(dev)
        if cfg.views_per_iter is not None and cfg.views_per_iter < len(b.cameras):
            sel = torch.tensor(sorted(rng.sample(range(len(b.cameras)), cfg.views_per_iter)), device=dev)
            vm, K, target = vm[sel], K[sel], target[sel]
        if state.num_trainable == 0:
            break
        wg = state.world(bi, frames[bi])
        out = rasterize(wg.means, wg.quats, wg.scales, wg.opacities, wg.sh, vm, K, w, h,
                        sh_degree=wg.sh_degree, background=bg)
        loss = photometric_loss(out.rgb, target, cfg.lambda_ssim)
        p = state.params
        if cfg.lambda_xyz:
            loss = loss + cfg.lambda_xyz * F.relu(p["xyz"].norm(dim=-1) - cfg.threshold_xyz).mean()
        if cfg.lambda_scale:
            loss = loss + cfg.lambda_scale * F.relu(torch.exp(p["scaling"]) - cfg.threshold_scale).mean()
        if reg_rest:
            loss = loss + cfg.lambda_sh_rest * (p["features_rest"] - state.rest0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if strategy is not None:  # after the step, as gsplat's strategies (it may replace the tensors)
            strategy.step_post_backward(state, opt, it, n_faces)
        losses.append(loss.detach())  # no host sync per iteration
        if progress is not None:
            progress(stage, it + 1, iters)
        if converge and (it + 1) % window == 0:  # one host sync per window
            mean = float(torch.stack(losses[-window:]).mean())
            if best - mean < max(cfg.tol * best, cfg.tol_abs):  # a plateau (the first window never is)
                plateaus += 1
                if plateaus >= cfg.patience:
                    break
                for group in opt.param_groups:
                    group["lr"] *= cfg.lr_drop
            best = min(best, mean)
    if progress is not None and len(losses) < iters:
        progress(stage, len(losses), len(losses))  # converged early: the bar ends full
    losses = torch.stack(losses).tolist() if losses else []
    return RefitResult(state.result(), losses, len(losses), time.perf_counter() - t0,
                       list(strategy.log) if strategy is not None else [], frozen=sorted(frozen_groups))
