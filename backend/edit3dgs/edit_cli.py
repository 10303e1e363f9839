"""``edit3dgs edit``: one text edit of an avatar folder into a new avatar folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import Edit3DGSError
from .validate import limit, positive, whole


class TqdmProgress:
    """progress(stage, done, total) -> one tqdm bar per stage (on stderr)."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm  # maintained progress bars

        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _ip2p():
    try:
        from .edit import ip2p  # noqa: F401
    except Exception:  # the diffusion editor is optional (its own install)
        return None
    return ip2p


def _parse_cameras(text: str | None):
    """--cameras: a cameras JSON file, or camera indices '0,1,2'. Returns (file, ids)."""
    from .cli import _parse_int_list

    if text is None:
        return None, None
    p = Path(text)
    if p.suffix.lower() == ".json" or p.exists():
        return str(p), None
    return None, _parse_int_list(text, "--cameras")


def add_edit_args(s: argparse.ArgumentParser) -> None:
    from .cli import _add_avatar_args

    _add_avatar_args(s)
    s.add_argument("--prompt", required=True, help="the edit instruction, e.g. 'make the hair blue'")
    s.add_argument("--editor", default="region", choices=("region", "ip2p"),
                   help="region: colour edits on named regions, no weights; ip2p: Instruct-Pix2Pix (diffusion)")
    s.add_argument("--cameras", help="edit cameras: a cameras JSON (transforms layout) or indices '0,1,2' "
                                     "(default: the avatar's training cameras)")
    s.add_argument("--timesteps", help="edit timesteps, e.g. '0,10,20' or '0-90:10' (default: a spread)")
    s.add_argument("--num-timesteps", type=int, default=8, help="how many timesteps the default spread has")
    s.add_argument("--regions", help="local edit: only Gaussians bound to these regions change, e.g. 'hair' or 'lips,eyes'")
    s.add_argument("--rounds", type=int, default=1, help="render -> edit -> refit rounds")
    s.add_argument("--reedit-each-round", action="store_true", help="re-render and re-edit the views every round")
    s.add_argument("--iters-per-batch", type=int, default=None,
                   help="refit iterations per edit timestep (default: until the loss stops improving; 10 is the seed's 10 x n)")
    s.add_argument("--max-iters-per-batch", type=int, default=40, help="the cap of a refit until convergence, per edit timestep")
    s.add_argument("--appearance-only", default=None, action=argparse.BooleanOptionalAction,
                   help="fit colours only, geometry frozen (default: the editor decides; the region editor's edits are)")
    s.add_argument("--sh-rest", default="auto", choices=("auto", "hold", "regularise", "free"),
                   help="view-dependent colour: auto holds it when the edit set has fewer than 8 cameras")
    s.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of groups --lrs does not name")
    s.add_argument("--lrs", default="edit", help="per-group rates as JSON ({\"xyz\": 5e-3, ...}) or a preset: "
                                                 "edit (default), gaussian_avatars, seed (every group at --lr)")
    s.add_argument("--views-per-iter", type=int, help="cameras per refit iteration (default: all of the timestep on CUDA, 4 on CPU)")
    s.add_argument("--scale", type=float, default=None,
                   help="render resolution factor of the cameras (default: 1 on CUDA, 0.25 on CPU/MPS, where "
                        "full-resolution refits take far longer)")
    s.add_argument("--densify", action="store_true", help="densify/prune during the refit (bindings kept valid)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="output avatar folder (default: <avatar>_edited)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ip = _ip2p()
    if ip is not None and hasattr(ip, "add_cli_args"):
        ip.add_cli_args(s)
    else:
        s.add_argument("--model", help="ip2p weights: a Hugging Face id or a local folder")


def check_edit_ranges(a) -> None:
    """The numeric options of ``edit``, before anything is loaded: whole counts in range, finite positive rates."""
    whole(a.rounds, "--rounds", "rounds", 1, 1000)
    whole(a.num_timesteps, "--num-timesteps", "timesteps", 1, limit("MAX_LIST_ITEMS", 100_000))
    whole(a.max_iters_per_batch, "--max-iters-per-batch", "iterations", 1, 10**6)
    for opt, v in (("--iters-per-batch", a.iters_per_batch), ("--views-per-iter", a.views_per_iter)):
        if v is not None:
            whole(v, opt, "a count", 1, 10**6)
    whole(a.seed, "--seed", "a seed", 0, 2**32 - 1)
    positive(a.lr, "--lr", "a learning rate")
    if a.scale is not None:
        positive(a.scale, "--scale", "a resolution factor")


def settings_from_args(a):
    from .cli import _parse_int_list
    from .loop import EditSettings

    check_edit_ranges(a)
    cam_file, cam_ids = _parse_cameras(a.cameras)
    if cam_file is not None:  # which cy convention the file is read in (cameras.py), said before the long run
        from .cameras import read_camera_file

        print(read_camera_file(cam_file).describe(), file=sys.stderr)
    lrs = "edit"
    if a.lrs:
        if a.lrs.strip().startswith("{"):
            try:
                lrs = json.loads(a.lrs, parse_constant=lambda c: float("nan"))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise Edit3DGSError("--lrs", "JSON like {\"xyz\": 5e-3}", str(exc)[:120]) from None
            if not isinstance(lrs, dict):
                raise Edit3DGSError("--lrs", "a JSON object like {\"xyz\": 5e-3}", type(lrs).__name__)
            for k, v in lrs.items():
                positive(v, "--lrs", f"the rate of '{k}'")
        else:
            lrs = a.lrs
            from .fit import LR_PRESETS

            if lrs not in LR_PRESETS:
                raise Edit3DGSError("--lrs", f"JSON or a preset among {', '.join(LR_PRESETS)}", repr(lrs))
    opts: dict = {}
    if a.editor == "ip2p":
        ip = _ip2p()
        if ip is not None and hasattr(ip, "options_from_args"):
            opts = dict(ip.options_from_args(a))
        elif getattr(a, "model", None):
            opts = {"model": a.model}
    regions = [r.strip() for r in a.regions.split(",") if r.strip()] if a.regions else None
    from .views import pick_device

    on_gpu = pick_device(a.device).type == "cuda"
    scale, views = a.scale, a.views_per_iter
    if not on_gpu and (scale is None or views is None):
        # Full-resolution refits of every view per iteration take far too long on a CPU.
        scale = 0.25 if scale is None else scale
        views = 4 if views is None else views
        print(f"edit: on this device the edit set renders at {scale}x and each refit iteration fits {views} views "
              "(--scale / --views-per-iter change it)", file=sys.stderr)
    scale = 1.0 if scale is None else scale
    return EditSettings(prompt=a.prompt, editor=a.editor, editor_options=opts, cameras=cam_ids, camera_file=cam_file,
                        timesteps=_parse_int_list(a.timesteps, "--timesteps"), regions=regions, rounds=a.rounds,
                        reedit_each_round=a.reedit_each_round, iters_per_batch=a.iters_per_batch, lr=a.lr, lrs=lrs,
                        scale=scale, densify=a.densify, seed=a.seed, device=a.device, num_timesteps=a.num_timesteps,
                        views_per_iter=views, appearance_only=a.appearance_only, sh_rest=a.sh_rest,
                        max_iters_per_batch=a.max_iters_per_batch)


def cmd_edit(a) -> int:
    from .bundle import open_avatar
    from .loop import EditSession
    from .views import pick_device

    settings = settings_from_args(a)
    out = Path(a.out) if a.out else Path(str(Path(a.avatar).resolve()) + "_edited")
    if out.exists() and any(out.iterdir()) and not a.overwrite:
        raise Edit3DGSError(out, "an empty or new output folder (or --overwrite)", "a folder with files in it")
    dev = pick_device(a.device)
    bundle = open_avatar(a.avatar, a.flame, a.flame_masks, device=dev)
    print(f"avatar: {bundle.folder} — {bundle.gaussians.num_gaussians} Gaussians on {bundle.topology}, device {dev}",
          file=sys.stderr)
    settings.overwrite = a.overwrite
    bar = TqdmProgress()
    try:
        session = EditSession(bundle, settings, progress=bar)
        saved = session.run(out)
    finally:
        bar.close()
    t = session.timings
    print("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()), file=sys.stderr)
    m = session.metrics
    print(f"edited avatar written to {saved} (edit views PSNR {float(m['edit_view_psnr']):.2f} dB, "
          f"inside the edit {float(m['edit_view_psnr_inside_edit']):.2f} dB; "
          f"{saved / 'edit.json'})")
    return 0


def register(sub) -> None:
    s = sub.add_parser("edit", help="edit an avatar with a sentence (render -> edit -> refit)")
    add_edit_args(s)
    s.set_defaults(func=cmd_edit)
