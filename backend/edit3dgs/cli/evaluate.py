"""``edit3dgs eval``: CLIP-S / CLIP-C of an edited avatar in the seed's three settings."""

from __future__ import annotations

import json
import time
from dataclasses import asdict


def add_eval_args(s) -> None:
    s.add_argument("--original", help="the avatar before the edit (default: the edited avatar's 'edited_from')")
    s.add_argument("--edited", required=True, help="the edited avatar folder")
    s.add_argument("--prompt", help="the edit instruction (default: the one recorded in the edited avatar)")
    s.add_argument("--caption-original", default=None, help="caption of the original (default: \"a photo of a person's head\")")
    s.add_argument("--edited-caption", "--caption-edited", dest="caption_edited", default=None,
                   help="caption of the edited result, e.g. \"a photo of a person with blue hair\" (CLIP-S needs it; "
                        "'{prompt}' in it is replaced by the instruction, a template of your choosing)")
    s.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP model id or folder")
    s.add_argument("--frames", type=int, default=8, help="frames per setting")
    s.add_argument("--scale", type=float, default=0.4, help="render resolution factor of the 550x802 rig")
    s.add_argument("--held-out-sequence", help="motion npz for self-reenactment (default: the avatar's held-out sequence)")
    s.add_argument("--cross-sequence", help="another person's motion npz (default: the avatar's cross-identity sequence)")
    s.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, mps")
    s.add_argument("--json", help="also write the numbers to this JSON file")


def cmd_eval(a) -> int:
    from pathlib import Path

    from ..bundle import read_avatar_json
    from ..errors import Edit3DGSError
    from ..eval import DEFAULT_CAPTION, PAPER_ROWS, edited_caption, evaluate, format_table
    from ..fsutil import atomic_path
    from ..validate import positive, whole
    from ..device import pick_device

    whole(a.frames, "--frames", "frames per setting (CLIP-C compares consecutive frames)", 2, 10_000)
    positive(a.scale, "--scale", "a resolution factor")
    meta = {}
    if (Path(a.edited) / "avatar.json").exists():
        meta = read_avatar_json(Path(a.edited))
    original = a.original or meta.get("edited_from")
    prompt = a.prompt or (meta.get("edit") or {}).get("instruction")
    if not original:
        raise Edit3DGSError("--original", "the avatar before the edit", "no --original and no 'edited_from' in avatar.json")
    if not prompt:
        raise Edit3DGSError("--prompt", "the edit instruction", "no --prompt and none recorded in avatar.json")
    t0 = time.perf_counter()
    res = evaluate(original, a.edited, prompt, a.caption_original, a.caption_edited, a.clip, a.frames, a.scale,
                   pick_device(a.device), a.held_out_sequence, a.cross_sequence)
    print(f"CLIP evaluation of {a.edited} against {original} ({a.frames} frames per setting, {time.perf_counter() - t0:.1f} s)")
    cap_o, cap_e = a.caption_original or DEFAULT_CAPTION, edited_caption(a.caption_edited, prompt)
    print(f"captions: original {cap_o!r}, edited " + (repr(cap_e) if cap_e else "none (CLIP-S needs --edited-caption)"))
    print("images: whole image resized to the CLIP input size, bicubic, no centre crop (as the seed's table)")
    print(format_table(res))
    if a.json:
        with atomic_path(a.json) as tmp:
            Path(tmp).write_text(json.dumps({"prompt": prompt, "clip": a.clip, "caption_original": cap_o, "caption_edited": cap_e,
                                             "preprocessing": "whole image, bicubic resize to the CLIP input size, no centre crop",
                                             "ours": {k: asdict(v) if v else None for k, v in res.items()},
                                             "paper": {k: {s: {"clip_s": v[0], "clip_c": v[1]} for s, v in row.items()}
                                                       for k, row in PAPER_ROWS.items()}}, indent=1))
    return 0
