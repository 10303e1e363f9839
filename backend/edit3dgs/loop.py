"""The edit loop: choose edit views, render them, edit them, refit the avatar, repeat.

    edit set  = cameras x timesteps            (default: training cameras at a spread of timesteps)
    round r:  render (+ region masks) -> editor.edit -> refit   (render/edit again each round: option)
    output    = a new avatar folder (temporary folder, then rename) with edit.json

The edit reaches unseen timesteps and views through the FLAME binding: only
local (face-frame) parameters are fitted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bundle import AvatarBundle, AvatarCameras
from .cameras import Camera
from .errors import CancelledError, Edit3DGSError
from .fit import LR_PRESETS, BindingDensify, RefitConfig, TargetBatch, refit
from .metrics import finite, psnr, ssim
from .validate import limit, parse_int_list

DEFAULT_NUM_TIMESTEPS = 8
AUTO = "auto"  # a device-dependent setting not chosen yet: EditSettings.resolved(device) fills it in
AUTO_FIELDS = ("scale", "views_per_iter")
# The edit set's render scale and the cameras per refit iteration, by device: full-resolution refits
# of every view per iteration take far too long on a CPU (or MPS), so those render at a quarter and fit 4 views.
DEVICE_DEFAULTS = {"cuda": {"scale": 1.0, "views_per_iter": None},
                   "other": {"scale": 0.25, "views_per_iter": 4}}
EDIT_CHANGE = 0.02  # a pixel is inside the edit when the editor changed one of its channels by more than this
MIN_ALPHA_SUM = 1.0  # a camera "sees the head" when its renders hold at least one pixel's worth of alpha


@dataclass
class EditSettings:
    """Everything that decides an edit (recorded in edit.json).

    cameras: camera indices of the edit set (None: the avatar's training cameras);
    camera_file: a cameras JSON to take them from (None: the avatar's cameras.json);
    camera_convention: the file's ``cy`` (auto: from the file's evidence, never guessed; vhap; nerfstudio);
    camera_model: auto (the one the avatar was trained with: ``AvatarBundle.default_camera_model``),
    file (the file's intrinsics) or gaussianavatars (GaussianAvatars' camera model), as ``render``;
    timesteps: None -> ``num_timesteps`` spread over the avatar's sequence;
    regions: None -> all Gaussians are refit; else only those bound to these regions (local edit);
    scale: render resolution factor; views_per_iter: cameras per refit iteration (None: all of the timestep's);
    both "auto" (``from_dict`` leaves them so when not given): the device's defaults, ``resolved(device)``.

    The refit (``fit.RefitConfig``, measured in docs/refit.md):
    lrs: per-group learning rates, a dict or a preset name ("edit", the default: the base colour
    fast, geometry at GaussianAvatars' rates; "gaussian_avatars"; "seed": every group at ``lr``);
    appearance_only: fit colours only, geometry (position, scale, rotation, opacity) frozen;
    None: the editor decides (the region editor's edits are all appearance-only: True; others: False);
    sh_rest: view-dependent SH coefficients: "auto" (held at the input's when the edit set has
    fewer than 8 cameras, else free), "hold", "regularise" (pulled towards the input's), "free";
    iters_per_batch: None (default): refit until the loss stops improving, at most
    ``max_iters_per_batch x n`` iterations; a number: exactly that many per edit timestep
    (the seed's 10 x n is ``iters_per_batch=10``).
    ``EditSettings.seed_recipe(prompt)`` gives the seed paper's refit (lr 1e-2 everywhere, all free, 10 x n).
    """

    prompt: str
    editor: str = "region"
    editor_options: dict = field(default_factory=dict)
    cameras: list | None = None
    timesteps: list | None = None
    regions: list | None = None
    rounds: int = 1
    reedit_each_round: bool = False
    iters_per_batch: int | None = None
    lr: float = 1e-2
    lrs: dict | str | None = "edit"
    appearance_only: bool | None = None
    sh_rest: str = "auto"
    max_iters_per_batch: int = 40
    scale: float | str = 1.0
    densify: bool = False
    seed: int = 0
    device: str = "auto"
    camera_file: str | None = None
    camera_convention: str = "auto"
    camera_model: str = "auto"
    num_timesteps: int = DEFAULT_NUM_TIMESTEPS
    views_per_iter: int | str | None = None
    overwrite: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "EditSettings":
        """The settings a front end asked for (the CLI's flags, a server job's ``settings``).

        Keys left out take the defaults above; the device-dependent ones (``scale``,
        ``views_per_iter``) are left ``"auto"`` until ``resolved(device)``. Unknown keys and
        values of the wrong kind raise ``Edit3DGSError`` (one line, naming the setting)."""
        if not isinstance(d, dict):
            raise Edit3DGSError("edit settings", "a JSON object of settings", type(d).__name__)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise Edit3DGSError("edit settings", f"settings among {', '.join(names)}",
                                f"unknown {', '.join(map(repr, unknown))}")
        if not isinstance(d.get("prompt"), str) or not d["prompt"].strip():
            raise Edit3DGSError("edit setting 'prompt'", "an instruction such as 'make the hair blue'",
                                repr(d.get("prompt", "nothing")))
        given = {k: v for k, v in d.items() if v is not None or k in cls._NONE_IS_A_CHOICE}
        for k in ("cameras", "timesteps"):   # index lists may come as text ('0,4,8', '0-40:10'), e.g. from Blender
            if isinstance(given.get(k), str):
                given[k] = parse_int_list(given[k], f"edit setting '{k}'")
        for k in AUTO_FIELDS:
            given.setdefault(k, AUTO)
        s = cls(**given)
        s.check()
        return s

    # None is a value of its own for these (e.g. iters_per_batch None: until the loss stops improving)
    _NONE_IS_A_CHOICE = ("iters_per_batch", "appearance_only", "cameras", "timesteps", "regions", "camera_file")

    def check(self) -> None:
        """Kinds and ranges of the settings (the message names the setting, never a command-line flag)."""
        def bad(name, expected, value):
            raise Edit3DGSError(f"edit setting '{name}'", expected, repr(value))

        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if self.editor not in ("region", "ip2p"):
            bad("editor", "region or ip2p", self.editor)
        if not isinstance(self.editor_options, dict):
            bad("editor_options", "a JSON object", self.editor_options)
        # whole numbers in range, before anything is loaded: name -> (lowest, highest, other values allowed)
        for name, (lo, hi, other) in {"rounds": (1, 1000, ()), "num_timesteps": (1, limit("MAX_LIST_ITEMS", 100_000), ()),
                                      "max_iters_per_batch": (1, 10**6, ()), "seed": (0, 2**32 - 1, ()),
                                      "iters_per_batch": (1, 10**6, (None,)), "views_per_iter": (1, 10**6, (None, AUTO))}.items():
            v = getattr(self, name)
            if v not in other and (not whole(v) or not lo <= v <= hi):
                bad(name, f"a whole number in [{lo},{hi}]" + {(None,): " (or none: until the loss stops improving)",
                                                              (None, AUTO): " (or 'auto')"}.get(other, ""), v)
        if self.scale != AUTO and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))
                                   or not 0 < self.scale <= 4):
            bad("scale", "a render scale above 0 and at most 4 (or 'auto')", self.scale)
        rate = lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf")  # noqa: E731
        if not rate(self.lr):
            bad("lr", "a finite positive learning rate", self.lr)
        if isinstance(self.lrs, dict) and not all(rate(v) for v in self.lrs.values()):
            bad("lrs", "finite positive learning rates", self.lrs)
        if isinstance(self.lrs, str) and self.lrs not in LR_PRESETS:
            bad("lrs", f"per-group rates or a preset among {', '.join(LR_PRESETS)}", self.lrs)
        for name in ("cameras", "timesteps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, list) or not all(whole(i) for i in v)):
                bad(name, "a list of whole numbers", v)
        if self.regions is not None and (not isinstance(self.regions, list)
                                         or not all(isinstance(r, str) for r in self.regions)):
            bad("regions", "a list of region names", self.regions)
        if self.sh_rest not in ("auto", "hold", "regularise", "free"):
            bad("sh_rest", "auto, hold, regularise or free", self.sh_rest)
        if self.camera_convention not in ("auto", "vhap", "nerfstudio"):
            bad("camera_convention", "auto, vhap or nerfstudio", self.camera_convention)
        if self.camera_model not in ("auto", "file", "gaussianavatars"):
            bad("camera_model", "auto, file or gaussianavatars", self.camera_model)

    def resolved(self, device) -> "EditSettings":
        """These settings on ``device`` (a torch.device or its name): "auto" values get the
        device's defaults (``DEVICE_DEFAULTS``), and ``device`` names the device the edit runs on."""
        dev = str(device)
        table = DEVICE_DEFAULTS["cuda" if dev.startswith("cuda") else "other"]
        out = replace(self, device=dev)
        for k in AUTO_FIELDS:
            if getattr(out, k) == AUTO:
                setattr(out, k, table[k])
        return out

    @classmethod
    def seed_recipe(cls, prompt: str, **kw) -> "EditSettings":
        """The seed paper's refit: every group at lr 1e-2, geometry and SH rest free, 10 x n iterations."""
        return cls(prompt=prompt, **{"lrs": "seed", "appearance_only": False, "sh_rest": "free",
                                     "iters_per_batch": 10, **kw})

    def refit_config(self, appearance_only: bool, background=(1.0, 1.0, 1.0), seed: int = 0) -> RefitConfig:
        fixed = self.iters_per_batch is not None
        return RefitConfig(iters_per_batch=self.iters_per_batch if fixed else 10, stop="fixed" if fixed else "converged",
                           max_iters_per_batch=self.max_iters_per_batch, lr=self.lr, lrs=self.lrs,
                           views_per_iter=self.views_per_iter, appearance_only=appearance_only, sh_rest=self.sh_rest,
                           background=tuple(background), seed=seed)


def default_timesteps(T: int, n: int) -> list[int]:
    """n timesteps spread evenly over [0, T)."""
    n = max(1, min(n, T))
    return sorted({int(round(x)) for x in np.linspace(0, T - 1, n)})


def edit_cameras(bundle: AvatarBundle, settings: EditSettings) -> tuple[list[Camera], Path | None, AvatarCameras]:
    """The edit set's cameras (before scaling), the file they came from and how it was read: the
    settings' ``cy`` convention and camera model, as ``render`` reads them (``AvatarBundle.read_cameras``)."""
    path = Path(settings.camera_file) if settings.camera_file else None
    if path is None and bundle.meta.get("cameras"):
        path = bundle.folder / bundle.meta["cameras"]
    if path is None or not path.is_file():
        raise Edit3DGSError(path or bundle.folder, "cameras for the edit set (--cameras JSON, or cameras.json in the avatar folder)", "none")
    read = bundle.read_cameras(path, settings.camera_convention, settings.camera_model)
    cams = read.cameras
    if settings.cameras is not None:
        want = [int(i) for i in settings.cameras]
        have = {c.index for c in cams}
        missing = [i for i in want if i not in have]
        if missing:
            raise Edit3DGSError(path, f"camera indices among {sorted(have)}", f"{missing}")
        cams = [c for c in cams if c.index in want]
    else:
        train = bundle.meta.get("train_cameras")
        held = bundle.meta.get("held_out_camera")
        if train is not None:
            cams = [c for c in cams if c.index in set(train)]
        elif held is not None:
            cams = [c for c in cams if c.index != held]
    return cams, path, read


class EditSession:
    """One edit of one avatar. ``progress(stage, done, total)``; ``should_stop()`` polled at
    every refit iteration and between renders and edits (raises ``CancelledError``);
    ``report(line)`` is told how the camera file was read (convention, camera model) before
    anything is rendered."""

    def __init__(self, bundle: AvatarBundle, settings: EditSettings,
                 progress: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 report: Callable[[str], None] | None = None):
        self.progress = progress or (lambda stage, done, total: None)
        self.report = report or (lambda line: None)
        self.camera_read: AvatarCameras | None = None
        self.should_stop = should_stop or (lambda: False)
        from .device import pick_device

        self.device = pick_device(settings.device)
        self.settings = settings = settings.resolved(self.device)  # edit.json records what ran
        self.bundle = replace(bundle, gaussians=bundle.gaussians.to(self.device), head=bundle.head.to(self.device))
        self.timings: dict = {}
        self.editor = None
        self.result = None
        self.metrics: dict = {}

    # -- helpers -----------------------------------------------------------------
    def _check(self) -> None:
        if self.should_stop():
            raise CancelledError("edit cancelled")

    def _timed(self, stage: str, t0: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def edit_set(self) -> tuple[list[Camera], list[int], Path | None]:
        s = self.settings
        cams, path, self.camera_read = edit_cameras(self.bundle, s)
        T = self.bundle.params.num_timesteps
        ts = list(s.timesteps) if s.timesteps is not None else default_timesteps(T, s.num_timesteps)
        bad = [t for t in ts if not 0 <= int(t) < T]
        if bad:
            raise Edit3DGSError("--timesteps", f"timesteps in [0,{T}) of the avatar's sequence", f"{bad}")
        if not cams or not ts:
            raise Edit3DGSError("edit set", "at least one camera and one timestep",
                                f"{len(cams)} camera(s) x {len(ts)} timestep(s)")
        if s.scale != 1.0:
            cams = [c.resized(s.scale) for c in cams]  # square pixels (fl_x == fl_y stays so)
        return cams, [int(t) for t in ts], path

    def render_set(self, gaussians, cams, ts, regions):
        """Renders of the edit set: rgb, alpha, depth (T*C,H,W,..) and region masks name -> (T*C,H,W)."""
        from .masks import render_region_masks
        from .render_avatar import render_frames

        b = self.bundle
        bg = tuple(b.meta.get("background", (1.0, 1.0, 1.0)))
        verts = b.pose(timesteps=ts, device=self.device)
        groups: dict = {}
        for c in cams:
            groups.setdefault((c.width, c.height), []).append(c)
        if len(groups) > 1:
            raise Edit3DGSError("--cameras", "edit cameras of one resolution", f"{sorted(groups)}")
        rgb, alpha, depth, masks = [], [], [], {r: [] for r in regions}
        total = len(ts)
        with torch.no_grad():
            for i in range(len(ts)):
                self._check()
                res = next(render_frames(b, verts[i:i + 1], cams, bg, gaussians=gaussians))
                rgb.append(res.rgb)
                alpha.append(res.alpha[..., 0])
                depth.append(res.depth[..., 0])
                # Region masks: a pixel's value is each region's share of its opacity (soft at edges);
                # a Gaussian in two of the regions counts for the first.
                for r, m in render_region_masks(b, verts[i:i + 1], cams, regions, gaussians, exclusive=True).items():
                    masks[r].append(m)
                self.progress("render", i + 1, total)
        cat = lambda xs: torch.cat(xs)  # noqa: E731  (timestep-major: image k = (ts[k // C], cams[k % C]))
        return cat(rgb), cat(alpha), cat(depth), {r: cat(v) for r, v in masks.items()}, verts

    def render_region_colours(self, gaussians, cams, verts, regions) -> dict:
        """name -> (T*C,H,W,3): each region's own contribution to the renders of the edit set (its
        Gaussians' SH colours, the others' colour zero, black background; the same blending weights)."""
        from .render.sh import C0
        from .render_avatar import render_frames

        b = self.bundle
        out = {}
        with torch.no_grad():
            for r in regions:
                g = gaussians.clone()
                faces = torch.zeros(b.head.n_faces, dtype=torch.bool, device=g.device)
                faces[torch.from_numpy(b.region_faces([r])).to(g.device)] = True
                other = ~faces[g.binding]
                g.features_dc[other] = -0.5 / C0  # SH colour 0 (= C0 dc + 0.5)
                g.features_rest[other] = 0.0
                parts = []
                for i in range(verts.shape[0]):
                    self._check()
                    parts.append(next(render_frames(b, verts[i:i + 1], cams, (0.0, 0.0, 0.0), gaussians=g)).rgb)
                out[r] = torch.cat(parts).clamp_min(0)
        return out

    # -- the loop -------------------------------------------------------------------
    def run(self, out_dir, before_commit: Callable[[Path], None] | None = None) -> Path:
        """Edit and save the new avatar to ``out_dir``; ``before_commit(tmp)`` runs on the complete
        temporary folder before it is renamed into place (see ``AvatarBundle.save``)."""
        from .edit import EditRequest, make_editor
        from .fsutil import check_dir_output, check_output

        s = self.settings
        b = self.bundle
        t_all = time.perf_counter()
        if s.rounds < 1:
            raise Edit3DGSError("--rounds", "at least 1 round", str(s.rounds))
        out_dir = Path(out_dir)
        if out_dir.resolve() == b.folder.resolve():
            raise Edit3DGSError(out_dir, "an output folder other than the input avatar", "the input folder itself")
        # an output the save would refuse is refused now, not after the edit
        check_output(out_dir, {"avatar": b.folder, "head model": b.head_path}, "output folder")
        check_dir_output(out_dir, s.overwrite)
        t0 = time.perf_counter()
        editor = make_editor(s.editor, **s.editor_options)
        editor.set_background(tuple(b.meta.get("background", (1.0, 1.0, 1.0))))
        self.editor = editor
        regions = list(editor.regions_for(s.prompt))  # raises for instructions it cannot do
        appearance_only = bool(editor.appearance_only if s.appearance_only is None else s.appearance_only)
        s.refit_config(appearance_only).check()  # bad options fail before any rendering
        if s.regions:
            for r in s.regions:
                b.region_faces([r])  # validates the names
        cams, ts, cam_path = self.edit_set()
        for line in self.camera_read.describe():
            self.report(line)
        self._timed("setup", t0)

        gaussians = b.gaussians
        trainable = b.gaussian_mask(s.regions) if s.regions else None
        if trainable is not None and not bool(trainable.any()):
            raise Edit3DGSError("--regions", "regions with Gaussians bound to them", f"none bound to {s.regions}")
        C = len(cams)
        seeds = []
        losses = []
        targets = None
        densify_log = []
        for r in range(s.rounds):
            if targets is None or s.reedit_each_round:
                t0 = time.perf_counter()
                # Round 0 renders the input; later rounds re-render the current fit.
                rgb, alpha, depth, masks, verts = self.render_set(gaussians, cams, ts, regions)
                colours = (self.render_region_colours(gaussians, cams, verts, regions)
                           if editor.uses_region_colours else {})
                self._timed("render", t0)
                if r == 0:
                    seen = alpha.reshape(len(ts), C, -1).sum(-1).amax(0)
                    blind = [cams[i].index for i in range(C) if float(seen[i]) < MIN_ALPHA_SUM]
                    if blind:
                        raise Edit3DGSError(cam_path or "--cameras", "cameras that see the head",
                                            f"camera(s) {blind} see nothing of it (their renders are empty)")
                    for reg, m in masks.items():
                        if float(m.sum()) < MIN_ALPHA_SUM:
                            raise Edit3DGSError(f"region '{reg}'", "a region the edit cameras see",
                                                "no pixel of it in any edit view")
                self._check()
                t0 = time.perf_counter()
                seed = s.seed + r
                seeds.append(seed)
                means = {}
                req = EditRequest(images=rgb, cameras=[cams[k % C] for k in range(len(ts) * C)],
                                  timesteps=[ts[k // C] for k in range(len(ts) * C)], instruction=s.prompt,
                                  seed=seed, region_masks=masks, alphas=alpha, depths=depth,
                                  gaussian_means=means, should_stop=self.should_stop, region_colours=colours)
                for i, t in enumerate(ts):
                    means[t] = b.world(verts[i], gaussians).means
                edited = editor.edit(req, self.progress).to(self.device)
                self._check()
                self._timed("edit", t0)
                targets = [TargetBatch(t, verts[i], cams, edited[i * C:(i + 1) * C]) for i, t in enumerate(ts)]
                # the edited region of each view: the pixels the editor changed
                changed = ((edited - rgb.to(edited)).abs().amax(-1) > EDIT_CHANGE).float()
                if r == 0:
                    self._edit_images = (rgb, edited, masks)
            t0 = time.perf_counter()
            cfg = s.refit_config(appearance_only, b.meta.get("background", (1.0, 1.0, 1.0)), s.seed + r)
            strategy = BindingDensify() if s.densify else None
            if r > 0 and trainable is not None and gaussians.num_gaussians != trainable.shape[0]:
                trainable = torch.cat([trainable, torch.ones(gaussians.num_gaussians - trainable.shape[0], dtype=torch.bool,
                                                             device=trainable.device)])
            res = refit(gaussians, b.head.faces, targets, cfg, trainable=trainable, strategy=strategy,
                        progress=lambda st, d, n, r=r: self.progress(f"refit {r + 1}/{s.rounds}" if s.rounds > 1 else "refit", d, n),
                        should_stop=self.should_stop)
            gaussians = res.gaussians
            losses += res.losses
            densify_log += res.densify_log
            self._timed("refit", t0)

        # How well the fit reproduces the edited views (train-view fit quality).
        t0 = time.perf_counter()
        fits = []
        with torch.no_grad():
            from .render_avatar import render_frames

            bg = tuple(b.meta.get("background", (1.0, 1.0, 1.0)))
            for i, tb in enumerate(targets):
                self._check()
                out = next(render_frames(b, tb.verts[None], cams, bg, gaussians=gaussians))
                inside = changed[i * C:(i + 1) * C]
                fits.append([psnr(out.rgb, tb.images), ssim(out.rgb, tb.images), psnr(out.rgb, tb.images, inside),
                             ssim(out.rgb, tb.images, inside)])
        fits = np.array(fits, dtype=np.float64)
        mean = lambda j: finite(float(np.nanmean(fits[:, j])) if not np.isnan(fits[:, j]).all() else float("nan"))  # noqa: E731
        self.metrics = {"edit_view_psnr": mean(0), "edit_view_ssim": mean(1),
                        "edit_view_psnr_inside_edit": mean(2), "edit_view_ssim_inside_edit": mean(3),
                        "edit_view_changed_fraction": round(float(changed.mean()), 5),
                        "final_loss": losses[-1] if losses else None,
                        "first_loss": losses[0] if losses else None, "iterations": len(losses),
                        "num_gaussians_before": b.gaussians.num_gaussians, "num_gaussians_after": gaussians.num_gaussians,
                        "appearance_only": appearance_only, "frozen_groups": res.frozen}
        self._timed("check", t0)
        self._check()
        self.result = gaussians
        t0 = time.perf_counter()
        record = {
            "instruction": s.prompt, "editor": editor.name, "settings": asdict(s),
            "seeds": seeds, "edit_set": {"cameras": [c.index for c in cams], "timesteps": ts,
                                         "resolution": [cams[0].width, cams[0].height]},
            "cameras": self.camera_read.record(),
            "regions_rendered": regions, "input": str(b.folder),
            "metrics": self.metrics, "densify": densify_log,
        }
        record.update(editor.record())  # settings: what was chosen; the editor's: e.g. what it ran with (editor_settings)
        self.timings["total"] = round(time.perf_counter() - t_all, 3)
        record["timings_s"] = dict(self.timings)

        def write_record(p: Path) -> None:
            rec = dict(record)
            rec["timings_s"] = {**self.timings, "save": round(time.perf_counter() - t0, 3)}
            p.write_text(json.dumps(rec, indent=1))

        meta = {"edited_from": str(b.folder), "edit": {"instruction": s.prompt, "editor": record["editor"]}}
        self.progress("save", 0, 1)
        saved = b.save(out_dir, gaussians=gaussians.to("cpu"), extra_meta=meta,
                       extra_files={"edit.json": write_record}, overwrite=s.overwrite, before_commit=before_commit)
        self._timed("save", t0)
        return saved
