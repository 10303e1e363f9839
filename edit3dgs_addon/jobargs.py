"""The panel's choices as the backend's job arguments (no bpy; see backend/edit3dgs/loop.py EditSettings)."""

from __future__ import annotations


def parse_names(text) -> list[str] | None:
    """'eyes, mouth' (or a set of names, as an ENUM_FLAG property gives) -> names; nothing -> None."""
    if not isinstance(text, str):
        return sorted(text) or None
    names = [t.strip() for t in (text or "").replace(";", ",").split(",") if t.strip()]
    return names or None


# The panel's preserve toggles -> the backend's inpainting regions (edit3dgs.edit.ip2p.DEFAULT_INPAINT_REGIONS
# is both together, so the default is not sent).
PRESERVE_REGIONS = {"preserve_eyes": ["eye_region", "eyes"], "preserve_mouth": ["lips"]}

# Panel values that mean "the backend decides" (0: Auto).
AUTO_ZERO = ("scale", "views_per_iter", "iters_per_batch")


def decimal(v) -> float:
    """A Blender float (single precision: 0.1 reads back as 0.10000000149) as the decimal the artist typed."""
    return float(f"{float(v):.7g}")


def edit_settings(ui: dict, prefs: dict) -> dict:
    """``ui``: the panel values the artist set (keys of properties never touched are absent);
    ``prefs``: device, editor_model, detector_model, sam_model (empty or "auto": not set), compile_unet.

    Returns the ``settings`` of an ``edit`` job: only what the artist chose. Everything else,
    including the CPU defaults, is decided by the backend's ``EditSettings.from_dict(...).resolved(device)``,
    the same code ``edit3dgs edit`` runs, so the panel's defaults and the CLI's give the same edit."""
    editor = ui.get("editor", "region")
    settings: dict = {"prompt": ui["prompt"].strip()}
    if "editor" in ui:
        settings["editor"] = editor
    if prefs.get("device") and prefs["device"] != "auto":
        settings["device"] = prefs["device"]
    if ui.get("cameras") is not None:
        settings["cameras"] = list(ui["cameras"])
    if ui.get("use_frame_range"):
        start, end = int(ui.get("frame_start", 0)), int(ui.get("frame_end", 7))
        settings["timesteps"] = list(range(start, end + 1, max(1, int(ui.get("frame_step", 1)))))
    elif (ui.get("timesteps") or "").strip():
        settings["timesteps"] = ui["timesteps"].strip()   # the backend reads '0,4,8' / '0-40:10' (EditSettings.from_dict)
    elif "num_timesteps" in ui:
        settings["num_timesteps"] = int(ui["num_timesteps"])
    regions = parse_names(ui.get("local_regions", ""))
    if regions:
        settings["regions"] = regions
    for key in ("rounds", "seed"):
        if key in ui:
            settings[key] = int(ui[key])
    for key in AUTO_ZERO:
        if ui.get(key):  # 0 (Auto) and absent: the backend's default for the device
            settings[key] = decimal(ui[key]) if key == "scale" else int(ui[key])
    if editor == "ip2p":
        settings["editor_options"] = ip2p_options(ui, prefs)
    return settings


def ip2p_options(ui: dict, prefs: dict) -> dict:
    """Instruct-Pix2Pix options the artist set (the editor's own defaults otherwise: IP2PSettings)."""
    options: dict = {}
    for key in ("steps", "guidance_text", "guidance_image", "temporal_keys"):
        if key in ui:
            options[key] = decimal(ui[key]) if isinstance(ui[key], float) else ui[key]
    if "preserve_eyes" in ui or "preserve_mouth" in ui:
        keep = [r for k, rs in PRESERVE_REGIONS.items() if ui.get(k, True) for r in rs]
        if not keep:
            options["inpaint"] = False
        elif len(keep) < sum(len(rs) for rs in PRESERVE_REGIONS.values()):
            options["inpaint_regions"] = keep
    if "mask_strength" in ui:
        options["inpaint_strength"] = decimal(ui["mask_strength"])
    if "mask_dilation" in ui:
        options["inpaint_dilate"] = int(ui["mask_dilation"])
    if "mask_source" in ui:
        options["mask_source"] = "detector" if ui["mask_source"] == "DETECTOR" else "flame"
        if ui["mask_source"] == "DETECTOR" and parse_names(ui.get("mask_text", "")):
            options["detector_queries"] = parse_names(ui["mask_text"])
    if prefs.get("device") and prefs["device"] != "auto":
        options["device"] = prefs["device"]
    for key, pref in (("model", "editor_model"), ("detector_model", "detector_model"), ("sam_model", "sam_model")):
        if prefs.get(pref):
            options[key] = prefs[pref]
    if prefs.get("compile_unet"):
        options["compile_unet"] = True
    if ui.get("ip2p_model") == "builtin":   # the panel's choice wins over the preferences' folder
        options["model"] = "builtin"
    return options
