"""The panel's choices as the backend's job arguments (no bpy; see backend/edit3dgs/loop.py EditSettings)."""

from __future__ import annotations


def parse_ints(text: str) -> list[int] | None:
    """'0,4,8' or '0-20:5' (stop exclusive) -> ints; '' -> None (the backend's default)."""
    text = (text or "").strip()
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        rng, _, step = part.partition(":")
        if "-" in rng:
            a, b = rng.split("-", 1)
            out += list(range(int(a), int(b), int(step or 1)))
        else:
            out.append(int(rng))
    return out


def parse_names(text: str) -> list[str] | None:
    names = [t.strip() for t in (text or "").replace(";", ",").split(",") if t.strip()]
    return names or None


def edit_settings(ui: dict, prefs: dict) -> dict:
    """``ui``: the panel's values; ``prefs``: device, editor_model, detector_model, sam_model.

    Returns the ``settings`` of an ``edit`` job (EditSettings fields)."""
    editor = ui.get("editor", "region")
    options: dict = {}
    if editor == "ip2p":
        preserve = [r for r, on in (("eyes", ui.get("preserve_eyes", True)), ("mouth", ui.get("preserve_mouth", True))) if on]
        options = {
            "steps": int(ui.get("steps", 20)), "guidance_text": float(ui.get("guidance_text", 7.5)),
            "guidance_image": float(ui.get("guidance_image", 1.5)), "seed": int(ui.get("seed", 0)),
            "temporal_keys": bool(ui.get("temporal_keys", False)),
            "inpaint": bool(preserve), "inpaint_regions": preserve or ["eyes", "mouth"],
            "inpaint_strength": float(ui.get("mask_strength", 1.0)), "inpaint_dilate": int(ui.get("mask_dilation", 1)),
            "mask_source": "detector" if ui.get("mask_source") == "DETECTOR" else "flame",
            "device": prefs.get("device", "auto"),
        }
        if ui.get("mask_source") == "DETECTOR" and ui.get("mask_text"):
            options["detector_queries"] = parse_names(ui["mask_text"])
        for key, pref in (("model", "editor_model"), ("detector_model", "detector_model"), ("sam_model", "sam_model")):
            if prefs.get(pref):
                options[key] = prefs[pref]
        if ui.get("ip2p_model") == "builtin":   # the panel's choice wins over the preferences' folder
            options["model"] = "builtin"
    frames = None
    if ui.get("use_frame_range"):
        frames = list(range(int(ui["frame_start"]), int(ui["frame_end"]) + 1, max(1, int(ui.get("frame_step", 1)))))
    settings = {
        "prompt": ui["prompt"].strip(), "editor": editor, "editor_options": options,
        "cameras": ui.get("cameras"), "timesteps": frames if frames is not None else parse_ints(ui.get("timesteps", "")),
        "regions": parse_names(ui.get("local_regions", "")), "rounds": int(ui.get("rounds", 1)),
        "iters_per_batch": max(1, round(int(ui.get("iters_per_batch", 10)) * float(ui.get("iteration_multiplier", 1.0)))),
        "scale": float(ui.get("scale", 0.25)), "seed": int(ui.get("seed", 0)), "device": prefs.get("device", "auto"),
    }
    if ui.get("num_timesteps"):
        settings["num_timesteps"] = int(ui["num_timesteps"])
    return settings
