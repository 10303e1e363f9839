"""Backend messages in the artist's words: the panel's and the preferences' names, never command-line flags.

The backend's errors are written for its command line (``--views-per-iter``, "pass the folder with
--model"); Blender shows them through ``artist_words`` (no bpy: tested on its own).
"""

from __future__ import annotations

import re

PREFS = "Edit3DGS add-on preferences"

# flag (or EditSettings / job-argument name) -> where the artist sets it
LABELS = {
    "prompt": "the Prompt", "editor": "Editor", "rounds": "Rounds", "iters-per-batch": "Iterations",
    "max-iters-per-batch": "the iteration cap", "views-per-iter": "Views per Iteration", "scale": "Render Scale",
    "seed": "Seed", "timesteps": "Timesteps", "num-timesteps": "Timesteps to Use", "regions": "Edit Only", "local-regions": "Edit Only",
    "cameras": "the Key Views", "camera-file": "the Key Views", "steps": "Steps", "guidance-text": "Text Guidance",
    "guidance-image": "Image Guidance", "temporal-keys": "Share Key Views Across Time", "mask-source": "Masks From",
    "inpaint-strength": "Mask Strength", "inpaint-dilate": "Mask Dilation", "inpaint-regions": "the Preserve toggles",
    "instruction": "the Prompt",
    "device": f"Device ({PREFS})", "model": f"Editor Model ({PREFS})", "editor-options": "the editor's settings",
    "detector-model": f"Grounding DINO ({PREFS})", "sam-model": f"SAM 2 ({PREFS})",
    "flame": "a FLAME model file", "overwrite": "a new output folder",
}

_RULES = [
    # "…, e.g. `hf download … --local-dir ip2p`, and pass the folder with --model": a shell command is no help here
    (re.compile(r",?\s*e\.g\.\s*`[^`]*`"), ""),
    (re.compile(r"`[^`]*--[^`]*`"), "the download command in the README"),
    (re.compile(r"pass the folder with --model"), f"set that folder as Editor Model in the {PREFS}"),
    (re.compile(r"--flame PATH"), "a FLAME model file"),
    (re.compile(r"no --flame"), "no FLAME model file"),
    (re.compile(r"\(or 'auto'\)"), "(or 0: Auto)"),
]
_SETTING = re.compile(r"(?:edit setting|job argument) '([a-z_]+)'")
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def _label(name: str) -> str:
    name = name.replace("_", "-")
    return LABELS.get(name, name.replace("-", " "))


def artist_words(message: str) -> str:
    """``message`` with each command-line flag (and setting name) replaced by its name in Blender."""
    text = message or ""
    for rx, repl in _RULES:
        text = rx.sub(repl, text)
    text = _SETTING.sub(lambda m: _label(m.group(1)), text)
    text = _FLAG.sub(lambda m: _label(m.group(1)), text)
    return text
