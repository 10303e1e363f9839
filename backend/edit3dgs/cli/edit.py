"""``edit3dgs edit``: one text edit of an avatar folder into a new avatar folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import Edit3DGSError
from .common import TqdmProgress, add_avatar_args, add_camera_args, load_avatar, parse_int_list


def _parse_cameras(text: str | None):
    """--cameras: a cameras JSON file, or camera indices '0,1,2'. Returns (file, ids)."""
    if text is None:
        return None, None
    p = Path(text)
    if p.suffix.lower() == ".json" or p.exists():
        return str(p), None
    return None, parse_int_list(text, "--cameras")


def add_edit_args(s: argparse.ArgumentParser) -> None:
    """The flags of ``edit3dgs edit``; their defaults are EditSettings' (loop.py), shown in the help.

    Flags not given stay None, so only what the user chose reaches ``EditSettings.from_dict``."""
    from ..loop import DEVICE_DEFAULTS, EditSettings

    D = EditSettings(prompt="")
    cpu = DEVICE_DEFAULTS["other"]
    add_avatar_args(s)
    s.add_argument("--prompt", required=True, help="the edit instruction, e.g. 'make the hair blue'")
    s.add_argument("--editor", choices=("region", "ip2p"),
                   help=f"region: colour edits on named regions, no weights; ip2p: Instruct-Pix2Pix (diffusion) "
                        f"(default: {D.editor})")
    s.add_argument("--cameras", help="edit cameras: a cameras JSON (transforms layout) or indices '0,1,2' "
                                     "(default: the avatar's training cameras)")
    add_camera_args(s)  # as render reads a camera file; left out, the setting's default (auto) decides
    s.set_defaults(camera_convention=None, camera_model=None)
    s.add_argument("--timesteps", help="edit timesteps, e.g. '0,10,20' or '0-90:10' (default: a spread)")
    s.add_argument("--num-timesteps", type=int, help=f"how many timesteps the default spread has (default: {D.num_timesteps})")
    s.add_argument("--regions", help="local edit: only Gaussians bound to these regions change, e.g. 'hair' or 'lips,eyes'")
    s.add_argument("--rounds", type=int, help=f"render -> edit -> refit rounds (default: {D.rounds})")
    s.add_argument("--reedit-each-round", action="store_true", default=None,
                   help="re-render and re-edit the views every round")
    s.add_argument("--iters-per-batch", type=int, default=None,
                   help="refit iterations per edit timestep (default: until the loss stops improving; 10 is the seed's 10 x n)")
    s.add_argument("--max-iters-per-batch", type=int,
                   help=f"the cap of a refit until convergence, per edit timestep (default: {D.max_iters_per_batch})")
    s.add_argument("--appearance-only", default=None, action=argparse.BooleanOptionalAction,
                   help="fit colours only, geometry frozen (default: the editor decides; the region editor's edits are)")
    s.add_argument("--sh-rest", choices=("auto", "hold", "regularise", "free"),
                   help="view-dependent colour: auto (default) holds it when the edit set has fewer than 8 cameras")
    s.add_argument("--lr", type=float, help=f"Adam learning rate of groups --lrs does not name (default: {D.lr})")
    s.add_argument("--lrs", help="per-group rates as JSON ({\"xyz\": 5e-3, ...}) or a preset: "
                                 "edit (default), gaussian_avatars, seed (every group at --lr)")
    s.add_argument("--views-per-iter", type=int,
                   help=f"cameras per refit iteration (default: all of the timestep on CUDA, {cpu['views_per_iter']} elsewhere)")
    s.add_argument("--scale", type=float, default=None,
                   help=f"render resolution factor of the cameras (default: 1 on CUDA, {cpu['scale']} on CPU/MPS, where "
                        "full-resolution refits take far longer)")
    s.add_argument("--densify", action="store_true", default=None, help="densify/prune during the refit (bindings kept valid)")
    s.add_argument("--seed", type=int, help=f"random seed (default: {D.seed})")
    s.add_argument("--out", help="output avatar folder (default: <avatar>_edited)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("--dry-run", action="store_true",
                   help="print the resolved settings (as edit.json records them) and stop")
    add_ip2p_args(s)


# The IP2PSettings fields the command line offers, with their help; flag, type and the default the help shows are
# the field's (a field that defaults to True has a --no-<field> flag, one that defaults to False --<field>).
IP2P_FLAG_HELP = {
    "steps": "denoising steps", "guidance_text": "text guidance scale", "guidance_image": "image guidance scale",
    "resolution": "short side of the images the diffusion model sees (default: the model's native size, 512 for IP2P)",
    "multiview": "edit every view on its own (ablation)",
    "chunk_size": "views per chunk; one key view per chunk per step",
    "key_neighbours": "key views blended into each other view (the nearest in viewing direction)",
    "batch_size": "views per UNet call (each x3 guidance branches); less: less memory",
    "temporal_keys": "one timestep's key views serve all timesteps, linked by the FLAME binding "
                     "(default: key views per timestep, as the seed and DGE)",
    "inpaint": "no expression-preserving inpainting (ablation)",
    "inpaint_strength": "weight of the re-injected original latents",
    "inpaint_start": "first denoising step of re-injection (default: half of --steps)",
}


def add_ip2p_args(parser) -> None:
    """Add the Instruct-Pix2Pix flags to an argparse parser (flags already there are kept).

    Flags left out stay None: only what the user set becomes an editor option, the rest are
    ``IP2PSettings``' defaults (shown in the help), as for the Blender panel."""
    from ..edit.ip2p import DEFAULT_INPAINT_REGIONS, DEFAULT_MODEL, IP2PSettings

    D, types = IP2PSettings(), IP2PSettings.field_types()
    g = parser.add_argument_group("Instruct-Pix2Pix editor (--editor ip2p)")

    def add(flag: str, **kw) -> None:
        if flag not in parser._option_string_actions:   # e.g. --device shared with the edit command
            g.add_argument(flag, **kw)

    for name, text in IP2P_FLAG_HELP.items():
        default, flag = getattr(D, name), ("--no-" if getattr(D, name) is True else "--") + name.replace("_", "-")
        if types[name] is bool:   # dest: the field, so a flag left out stays None
            add(flag, dest=name, action="store_false" if default else "store_true", default=None, help=text)
        else:
            add(flag, type=types[name], choices=(1, 2) if name == "key_neighbours" else None,
                help=text if "default:" in text else f"{text} (default: {default})")
    add("--model", help=f"Instruct-Pix2Pix model id or local diffusers folder (safetensors; default: {DEFAULT_MODEL}); "
                        "'builtin': the small model trained on the built-in head (ships with Edit3DGS)")
    add("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    add("--dtype", help="auto (default: fp16 on CUDA, fp32 elsewhere), fp16, bf16, fp32")
    add("--inpaint-regions", help=f"regions re-injected from the originals (default: {','.join(DEFAULT_INPAINT_REGIONS)})")
    add("--mask-source", choices=("flame", "detector"),
        help="eye/mouth masks from the avatar's regions (default), or Grounding DINO + SAM 2")
    add("--detector-model", help="Grounding DINO model id or folder")
    add("--sam-model", help="SAM 2 model id or folder")
    add("--reedit-strength", type=float,
        help="re-edit the current renders at this noise strength in later rounds (Instruct-NeRF2NeRF)")
    add("--attention-slicing", action="store_true", default=None, help="less memory, slower attention")
    add("--vae-tiling", action="store_true", default=None, help="VAE in tiles (large images)")
    add("--cpu-offload", action="store_true", default=None,
        help="keep models on the CPU, move each to the GPU while it runs")
    add("--compile-unet", action="store_true", default=None,
        help="torch.compile the UNet and the VAE (CUDA with Triton; elsewhere they stay eager): an edit 1.4x "
             "faster on an H200 after a compile of about 1.5-2 min at the first new image size or number of views "
             "per UNet call")


def ip2p_options_from_args(args) -> dict:
    """Editor options for ``make_editor("ip2p", **options)``: the flags the user gave (the editor's
    defaults, ``IP2PSettings``', for the rest; a ``--device`` other than auto is passed on)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    opts = {k: get(k) for k in (*IP2P_FLAG_HELP, "model", "dtype", "mask_source", "detector_model", "sam_model",
                                "reedit_strength", "attention_slicing", "vae_tiling", "cpu_offload",
                                "compile_unet")}
    opts["inpaint_regions"] = [r.strip() for r in (get("inpaint_regions") or "").split(",") if r.strip()] or None
    if get("device") not in (None, "auto"):
        opts["device"] = get("device")
    # No seed here: the loop gives each round's EditRequest its own seed (--seed + round).
    return {k: v for k, v in opts.items() if v is not None}


def settings_dict_from_args(a) -> dict:
    """The settings the user chose on the command line (flags left out are absent); EditSettings checks them."""
    cam_file, cam_ids = _parse_cameras(a.cameras)
    lrs = None
    if a.lrs:
        if a.lrs.strip().startswith("{"):
            try:
                lrs = json.loads(a.lrs, parse_constant=lambda c: float("nan"))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise Edit3DGSError("--lrs", "JSON like {\"xyz\": 5e-3}", str(exc)[:120]) from None
            if not isinstance(lrs, dict):
                raise Edit3DGSError("--lrs", "a JSON object like {\"xyz\": 5e-3}", type(lrs).__name__)
        else:
            lrs = a.lrs
    opts = ip2p_options_from_args(a) if a.editor == "ip2p" else None
    regions = [r.strip() for r in a.regions.split(",") if r.strip()] if a.regions else None
    d = dict(prompt=a.prompt, editor=a.editor, editor_options=opts, cameras=cam_ids, camera_file=cam_file,
             camera_convention=a.camera_convention, camera_model=a.camera_model,
             timesteps=parse_int_list(a.timesteps, "--timesteps"), regions=regions, rounds=a.rounds,
             reedit_each_round=a.reedit_each_round, iters_per_batch=a.iters_per_batch, lr=a.lr, lrs=lrs,
             scale=a.scale, densify=a.densify, seed=a.seed, device=a.device, num_timesteps=a.num_timesteps,
             views_per_iter=a.views_per_iter, appearance_only=a.appearance_only, sh_rest=a.sh_rest,
             max_iters_per_batch=a.max_iters_per_batch)
    return {k: v for k, v in d.items() if v is not None}


def settings_from_args(a, device=None):
    """``EditSettings.from_dict`` of the user's flags, resolved for ``device`` (default: ``--device``'s)."""
    from ..loop import EditSettings
    from ..device import pick_device

    try:
        settings = EditSettings.from_dict(settings_dict_from_args(a))
    except Edit3DGSError as exc:  # name the flag, not the setting: this is the command line
        if exc.path and exc.path.startswith("edit setting '"):
            flag = "--" + exc.path[len("edit setting '"):-1].replace("_", "-")
            raise Edit3DGSError(flag, exc.expected, exc.found) from None
        raise
    dev = pick_device(a.device) if device is None else device
    out = settings.resolved(dev)
    if not str(dev).startswith("cuda") and (settings.scale == "auto" or settings.views_per_iter == "auto"):
        print(f"edit: on this device the edit set renders at {out.scale}x and each refit iteration fits "
              f"{out.views_per_iter} views (--scale / --views-per-iter change it)", file=sys.stderr)
    return out


def cmd_edit(a) -> int:
    from ..loop import EditSession

    settings = settings_from_args(a)
    if a.dry_run:
        from dataclasses import asdict

        print(json.dumps(asdict(settings), indent=1))
        return 0
    out = Path(a.out) if a.out else Path(str(Path(a.avatar).resolve()) + "_edited")
    if out.exists() and any(out.iterdir()) and not a.overwrite:
        raise Edit3DGSError(out, "an empty or new output folder (or --overwrite)", "a folder with files in it")
    bundle, _ = load_avatar(a)
    settings.overwrite = a.overwrite
    bar = TqdmProgress()
    try:
        # which cy convention and camera model the edit cameras are read in, said before the long run
        session = EditSession(bundle, settings, progress=bar, report=lambda line: print(line, file=sys.stderr))
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

