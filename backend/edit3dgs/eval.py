"""CLIP evaluation of an edit, in the seed's three settings (formats.md §6).

- CLIP-S (directional similarity): cos(E_I(edited) - E_I(original), E_T(edited caption) - E_T(original caption)),
  averaged over frames;
- CLIP-C (consistency): cos(E_I(edit_i) - E_I(orig_i), E_I(edit_{i+1}) - E_I(orig_{i+1})) over consecutive
  frames of a path, averaged.
E_I, E_T are L2-normalised CLIP embeddings (OpenAI ViT-L/14 by default).

Comparable with the seed's table only when computed as its reference implementation
(instruct-pix2pix ``metrics/clip_similarity.py``, formats.md §6) does: ViT-L/14, each image
resized **whole** to 224 x 224 with bicubic filtering (no centre crop, which would cut the sides
of a portrait render), and a caption **of the edited result** beside the original's caption.
The edited caption is the user's (``caption_edited``, which may be a template with ``{prompt}``
filled by the instruction); it is never made up from the instruction otherwise, so without
it CLIP-S is not computed (CLIP-C needs no caption). Rows computed with another CLIP model are
labelled not comparable.

Settings: novel view (a camera orbit at one timestep, sweeping through the held-out camera),
self-reenactment (the held-out sequence seen from the held-out camera) and cross-identity
reenactment (another person's motion driving the avatar, from the held-out camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Edit3DGSError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
SETTINGS = ("novel_view", "self_reenactment", "cross_identity")
SETTING_TITLES = {"novel_view": "Novel view", "self_reenactment": "Self-reenact.", "cross_identity": "Cross-reenact."}
# The seed's table (formats.md §6): setting -> (CLIP-S, CLIP-C).
PAPER_ROWS = {
    "GA-Editor (paper)": {"novel_view": (0.258, 0.978), "self_reenactment": (0.076, 0.954), "cross_identity": (0.072, 0.965)},
    "Edit3DGS (paper)": {"novel_view": (0.269, 0.969), "self_reenactment": (0.071, 0.957), "cross_identity": (0.074, 0.945)},
}


# ---------------------------------------------------------------------------
# The metrics, on embeddings
# ---------------------------------------------------------------------------

def clip_directional_similarity(img_orig: torch.Tensor, img_edit: torch.Tensor, txt_orig: torch.Tensor,
                                txt_edit: torch.Tensor) -> torch.Tensor:
    """Per-frame CLIP-S (N,) from image embeddings (N,D) and caption embeddings (D,) or (N,D)."""
    d_img = F.normalize(img_edit.float(), dim=-1) - F.normalize(img_orig.float(), dim=-1)
    d_txt = F.normalize(txt_edit.float(), dim=-1) - F.normalize(txt_orig.float(), dim=-1)
    return F.cosine_similarity(d_img, d_txt.expand_as(d_img), dim=-1)


def clip_consistency(img_orig: torch.Tensor, img_edit: torch.Tensor) -> torch.Tensor:
    """CLIP-C (N-1,) between consecutive frames of a path, from image embeddings (N,D)."""
    d = F.normalize(img_edit.float(), dim=-1) - F.normalize(img_orig.float(), dim=-1)
    return F.cosine_similarity(d[:-1], d[1:], dim=-1)


# ---------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------

class ClipScorer:
    """CLIP from a model id or folder (transformers, safetensors): embeddings of images and captions.

    Images are preprocessed as the seed's reference does (not by the transformers processor,
    which resizes the short side and centre-crops): the whole image resized to the model's
    input size (224 for ViT-L/14) with bicubic filtering, then normalised by CLIP's mean/std."""

    _cache: dict = {}

    def __init__(self, model: str = DEFAULT_CLIP, device="cpu"):
        from transformers import CLIPModel, CLIPProcessor

        key = (model, str(device))
        if key not in self._cache:
            p = Path(model).expanduser()
            local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
            if local and not p.is_dir():
                raise Edit3DGSError(model, "a CLIP model folder (--clip)", "no such folder")
            src = str(p.resolve()) if local else model
            try:
                net = CLIPModel.from_pretrained(src, use_safetensors=True).to(device).eval()
                proc = CLIPProcessor.from_pretrained(src)
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise Edit3DGSError(model, "CLIP weights in transformers layout (safetensors), e.g. `hf download "
                                    "openai/clip-vit-large-patch14`; point --clip at the folder",
                                    f"no loadable weights ({first})") from None
            self._cache[key] = (net, proc)
        self.model, self.processor = self._cache[key]
        self.device = device

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def comparable(self) -> bool:
        """Whether this is the seed's CLIP (ViT-L/14 at 224 px: 24 layers of width 1024, 14 px patches)."""
        v = self.model.config.vision_config
        return (int(v.image_size), int(v.patch_size), int(v.hidden_size), int(v.num_hidden_layers)) == (224, 14, 1024, 24)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(N,H,W,3) float in [0,1] -> (N,3,S,S) model input: the whole image resized to S x S
        (bicubic, no crop), normalised by the processor's mean/std."""
        ip = getattr(self.processor, "image_processor", self.processor)
        mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        x = images.detach().float().cpu().clamp(0, 1).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - mean) / std

    @torch.no_grad()
    def images(self, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """(N,H,W,3) float in [0,1] -> (N,D) normalised embeddings."""
        out = []
        for s in range(0, images.shape[0], batch):
            px = self.pixel_values(images[s:s + batch]).to(self.device)
            out.append(_features(self.model.get_image_features(pixel_values=px)))
        return F.normalize(torch.cat(out).float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        emb = _features(self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask")))
        return F.normalize(emb.float(), dim=-1).cpu()


def _features(x):
    """transformers 5 may return an output object; the embeddings are its pooled output."""
    if isinstance(x, torch.Tensor):
        return x
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        if getattr(x, name, None) is not None:
            return getattr(x, name)
    return x[0]


# ---------------------------------------------------------------------------
# The settings: what is rendered
# ---------------------------------------------------------------------------

@dataclass
class SettingResult:
    clip_s: float | None                # None: no caption of the edited result was given
    clip_c: float
    frames: int
    comparable: bool = True             # computed as the seed's table was (see the module docstring)


def _held_out_camera(bundle, scale: float):
    from .cameras import camera_rig, load_cameras

    cams = None
    if bundle.meta.get("cameras") and (bundle.folder / bundle.meta["cameras"]).is_file():
        cams = load_cameras(bundle.folder / bundle.meta["cameras"])
    cams = cams or camera_rig()
    want = bundle.meta.get("held_out_camera", 8)
    cam = next((c for c in cams if c.index == want), cams[len(cams) // 2])
    return cam.scaled(scale)


def _motion(bundle, path: Path | None, frames: int):
    from .flame_params import FlameParams

    if path is None or not Path(path).is_file():
        return None
    m = FlameParams.load(path, **bundle.head.param_sizes()).with_identity(bundle.params)
    T = m.num_timesteps
    idx = np.unique(np.linspace(0, T - 1, min(frames, T)).round().astype(int))
    return m.select(idx)


def render_setting(bundle, setting: str, frames: int = 8, scale: float = 0.4, motion_path: Path | None = None,
                   timestep: int = 0) -> torch.Tensor | None:
    """Frames (N,H,W,3) of ``bundle`` for one evaluation setting (None when its motion is missing)."""
    from .cameras import orbit
    from .render_avatar import render_frames

    bg = tuple(bundle.meta.get("background", (1.0, 1.0, 1.0)))
    with torch.no_grad():
        if setting == "novel_view":
            ref = _held_out_camera(bundle, scale)
            cams = orbit(frames, ref.width, ref.height)
            cams = [c.scaled(1.0) for c in cams]
            verts = bundle.pose(timesteps=[min(timestep, bundle.params.num_timesteps - 1)])
            return next(render_frames(bundle, verts, cams, bg)).rgb.cpu()
        m = _motion(bundle, motion_path, frames)
        if m is None:
            return None
        verts = bundle.pose(m)
        cam = _held_out_camera(bundle, scale)
        return torch.cat([r.rgb.cpu() for r in render_frames(bundle, verts, [cam], bg)])


def motion_paths(bundle, held_out: str | None = None, cross: str | None = None) -> dict:
    def pick(flag, key):
        if flag:
            p = Path(flag)
            if not p.is_file():
                raise Edit3DGSError(flag, "a FLAME motion npz (flame_param.npz layout)", "no such file")
            return p
        rel = bundle.meta.get(key)
        return bundle.folder / rel if rel else None

    return {"self_reenactment": pick(held_out, "held_out_sequence"), "cross_identity": pick(cross, "cross_identity_sequence")}


DEFAULT_CAPTION = "a photo of a person's head"


def edited_caption(caption_edited: str | None, prompt: str) -> str | None:
    """The caption of the edited result: the user's text, with ``{prompt}`` (if any) replaced by the
    instruction (a template the user chose). None when the user gave none: never derived otherwise."""
    if caption_edited is None or not str(caption_edited).strip():
        return None
    text = str(caption_edited)
    return text.replace("{prompt}", (prompt or "").strip().rstrip(".")) if "{prompt}" in text else text


def evaluate(original: str | Path, edited: str | Path, prompt: str, caption_original: str | None = None,
             caption_edited: str | None = None, clip: str = DEFAULT_CLIP, frames: int = 8, scale: float = 0.4,
             device="cpu", held_out_sequence: str | None = None, cross_sequence: str | None = None,
             settings: Sequence[str] = SETTINGS) -> dict:
    """CLIP-S and CLIP-C of ``edited`` against ``original`` in each setting -> {setting: SettingResult | None}.

    ``caption_edited``: a caption of the edited result (may hold ``{prompt}``); without it CLIP-S is None."""
    from .bundle import open_avatar

    a = open_avatar(original, device=device)
    b = open_avatar(edited, device=device)
    if a.gaussians.num_gaussians == 0 or b.gaussians.num_gaussians == 0:
        raise Edit3DGSError(edited, "avatars with Gaussians", "an empty avatar")
    cap_o = caption_original or DEFAULT_CAPTION
    cap_e = edited_caption(caption_edited, prompt)
    scorer = ClipScorer(clip, device)
    comparable = bool(scorer.comparable)
    t = scorer.texts([cap_o, cap_e]) if cap_e is not None else None
    paths = motion_paths(a, held_out_sequence, cross_sequence)
    out = {}
    for s in settings:
        ra = render_setting(a, s, frames, scale, paths.get(s))
        rb = render_setting(b, s, frames, scale, paths.get(s))
        if ra is None or rb is None:
            out[s] = None
            continue
        ea, eb = scorer.images(ra), scorer.images(rb)
        cs = clip_directional_similarity(ea, eb, t[0], t[1]).mean().item() if t is not None else None
        cc = clip_consistency(ea, eb).mean().item() if len(ea) > 1 else float("nan")
        out[s] = SettingResult(cs, cc, len(ea), comparable)
    return out


def format_table(results: dict, name: str = "This edit (ours)") -> str:
    """The seed's table, the paper's rows and ours beside them (markdown). Our row is labelled
    "not comparable" when it was computed with another CLIP than the seed's."""
    head = "| Method | " + " | ".join(f"{SETTING_TITLES[s]} CLIP-S | {SETTING_TITLES[s]} CLIP-C" for s in SETTINGS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(SETTINGS))]
    for row, vals in PAPER_ROWS.items():
        lines.append(f"| {row} | " + " | ".join(f"{vals[s][0]:.3f} | {vals[s][1]:.3f}" for s in SETTINGS) + " |")
    cells = []
    for s in SETTINGS:
        r = results.get(s)
        if r is None:
            cells.append("n/a | n/a")
        else:
            cells.append(("n/a" if r.clip_s is None else f"{r.clip_s:.3f}") + f" | {r.clip_c:.3f}")
    if any(r is not None and not r.comparable for r in results.values()):
        name += " (not comparable: another CLIP than ViT-L/14)"
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
