"""The region editor: appearance edits on named head regions, no model weights.

It understands sentences such as "make the hair blue", "give her red lips",
"green eyes", "paler skin", "make him look older" and turns each into one
affine colour map per region, ``c' = A c + b`` in RGB. The map is applied to
the pixels of the region through its soft mask (rendered from the head's face
regions), so the edited images equal what recolouring the region's Gaussians
would render: the same map on the Gaussians' SH (``recolour_gaussians``)
is the demo's ground truth.

Pixel model: a pixel ``p = m f_r + (a - m) f_o + (1 - a) bg`` mixes the
region's colour ``f_r`` (weight ``m``, the region mask), the rest of the
head (total alpha ``a``) and the background. Estimating both foreground
colours by ``f = (p - (1 - a) bg) / a``, the edited pixel is
``p + (A - I)(m f) + m b``: exact wherever the region does not mix with the
rest of the head, and mixed edge pixels change in proportion to their mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Edit3DGSError
from .base import EditRequest, Editor, Progress, no_progress

# Target colours (linear-ish sRGB in [0,1]) of the words the editor knows.
COLOURS = {
    "blue": (0.12, 0.26, 0.78), "navy": (0.08, 0.12, 0.42), "teal": (0.10, 0.50, 0.52),
    "turquoise": (0.20, 0.70, 0.70), "cyan": (0.20, 0.72, 0.85), "green": (0.16, 0.55, 0.22),
    "emerald": (0.10, 0.55, 0.35), "red": (0.78, 0.10, 0.12), "crimson": (0.62, 0.06, 0.14),
    "ginger": (0.72, 0.33, 0.12), "auburn": (0.50, 0.20, 0.10), "orange": (0.90, 0.45, 0.10),
    "yellow": (0.92, 0.82, 0.20), "golden": (0.85, 0.66, 0.25), "gold": (0.85, 0.66, 0.25),
    "blonde": (0.86, 0.72, 0.45), "blond": (0.86, 0.72, 0.45), "platinum": (0.90, 0.88, 0.80),
    "black": (0.06, 0.05, 0.05), "dark": (0.10, 0.08, 0.07), "white": (0.92, 0.92, 0.90),
    "grey": (0.55, 0.55, 0.56), "gray": (0.55, 0.55, 0.56), "silver": (0.72, 0.73, 0.76),
    "pink": (0.92, 0.45, 0.62), "magenta": (0.80, 0.15, 0.60), "purple": (0.45, 0.18, 0.62),
    "violet": (0.52, 0.30, 0.75), "lilac": (0.72, 0.58, 0.85), "brown": (0.40, 0.24, 0.12),
    "hazel": (0.50, 0.38, 0.18), "amber": (0.75, 0.50, 0.12),
}

# Words naming regions (canonical names of edit3dgs.flame).
REGION_WORDS = {
    "hair": "hair", "hairs": "hair", "haired": "hair", "scalp": "hair",
    "lips": "lips", "lip": "lips", "mouth": "lips", "lipstick": "lips",
    "eyes": "eyes", "eye": "eyes", "iris": "eyes", "irises": "eyes", "eyed": "eyes",
    "skin": "skin", "complexion": "skin", "face": "skin",
    "teeth": "teeth", "tooth": "teeth",
}

# How much of the original shading a recolour keeps (rank-1 tint), per region.
SHADING = {"hair": 0.4, "lips": 0.5, "skin": 0.7, "teeth": 0.5}

# Luminance weights (Rec. 601).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

HELP = ("an appearance instruction the region editor knows (a colour for hair, lips, eyes, skin or teeth, "
        "e.g. 'make the hair blue', 'give her red lips', 'green eyes', 'paler skin', 'make him look older'); "
        "for anything else use --editor ip2p")


@dataclass
class ColourMap:
    """``c' = A c + b`` on the colours of one region (A (3,3), b (3,))."""

    region: str
    A: np.ndarray
    b: np.ndarray
    why: str = ""

    def to_json(self) -> dict:
        return {"region": self.region, "A": np.asarray(self.A, float).round(6).tolist(),
                "b": np.asarray(self.b, float).round(6).tolist(), "why": self.why}

    @classmethod
    def from_json(cls, d: dict) -> "ColourMap":
        return cls(d["region"], np.asarray(d["A"], np.float32), np.asarray(d["b"], np.float32), d.get("why", ""))


@dataclass
class Step:
    """One parsed clause: ``kind`` 'tint' (with ``colour``), 'pale', 'dark', 'grey', 'older'."""

    region: str
    kind: str
    colour: tuple | None = None
    word: str = ""


def parse_instruction(text: str) -> list[Step]:
    """Sentence -> steps; raises Edit3DGSError for anything the region editor cannot do."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        raise Edit3DGSError("--prompt", HELP, repr(text))
    if any(w in ("older", "old", "aged", "elderly", "age") for w in words):
        rest = [w for w in words if w in COLOURS or w in REGION_WORDS]
        if not rest:
            return [Step("hair", "grey", word="older"), Step("skin", "older", word="older")]
    steps: list[Step] = []
    # Clauses joined by 'and' / commas each carry one region with its colour or modifier.
    for clause in re.split(r",|;|\band\b|\bwith\b", text.lower()):
        cw = re.findall(r"[a-z]+", clause)
        regions = [REGION_WORDS[w] for w in cw if w in REGION_WORDS]
        colours = [w for w in cw if w in COLOURS]
        mods = [w for w in cw if w in ("paler", "pale", "lighter", "fairer", "darker", "tanned", "tan",
                                       "greyer", "grayer", "whiter", "brighter")]
        if not regions and not colours and not mods:
            continue
        if len(set(regions)) != 1:
            raise Edit3DGSError("--prompt", HELP, repr(text))
        region = regions[0]
        if colours:
            if len(set(colours)) != 1:
                raise Edit3DGSError("--prompt", HELP, repr(text))
            steps.append(Step(region, "tint", COLOURS[colours[0]], colours[0]))
        elif mods:
            m = mods[0]
            kind = {"paler": "pale", "pale": "pale", "lighter": "pale", "fairer": "pale", "whiter": "pale",
                    "brighter": "pale", "darker": "dark", "tanned": "dark", "tan": "dark",
                    "greyer": "grey", "grayer": "grey"}[m]
            steps.append(Step(region, kind, word=m))
        else:
            raise Edit3DGSError("--prompt", HELP, repr(text))
    if not steps:
        raise Edit3DGSError("--prompt", HELP, repr(text))
    return steps


def _saturation(s: float) -> np.ndarray:
    """Linear saturation scaling about the grey axis (luma kept)."""
    return s * np.eye(3, dtype=np.float32) + (1 - s) * np.outer(np.ones(3), LUMA).astype(np.float32)


def colour_map(step: Step, ref: np.ndarray, ref_chroma: np.ndarray) -> ColourMap:
    """The affine map of one step. ``ref`` the region's mean colour, ``ref_chroma`` its most
    coloured part (e.g. the iris of an eyeball: sclera and pupil are nearly grey)."""
    I = np.eye(3, dtype=np.float32)
    ref = np.asarray(ref, np.float32)
    lum = max(float(LUMA @ ref), 0.03)
    if step.kind == "tint" and step.region == "eyes":
        # Chroma-selective: greys (sclera, pupil) stay, the iris colour goes to the target.
        v = ref_chroma - ref_chroma.mean()
        vv = float(v @ ref_chroma)
        if abs(vv) < 1e-4:  # a grey iris: tint by luminance within the coloured part
            v, vv = LUMA.copy(), float(LUMA @ ref_chroma)
        T = np.asarray(step.colour, np.float32) * (0.5 + 0.5 * float(LUMA @ ref_chroma) / max(float(LUMA @ np.asarray(step.colour)), 0.05))
        T = np.clip(T, 0, 0.95)
        A = I + np.outer(T - ref_chroma, v) / vv
        return ColourMap("eyes", A.astype(np.float32), np.zeros(3, np.float32), f"{step.word} eyes")
    if step.kind == "tint":
        T = np.asarray(step.colour, np.float32)
        k = SHADING.get(step.region, 0.5)
        # c' = T ((1 - k) + k lum(c) / lum(ref)): the region's mean goes to T, its shading is kept.
        A = k * np.outer(T, LUMA) / lum
        return ColourMap(step.region, A.astype(np.float32), ((1 - k) * T).astype(np.float32), f"{step.word} {step.region}")
    if step.kind == "pale":
        A = 0.75 * _saturation(0.6)
        return ColourMap(step.region, A, np.full(3, 0.22, np.float32), f"paler {step.region}")
    if step.kind == "dark":
        A = 0.7 * _saturation(1.1)
        return ColourMap(step.region, A, np.array([0.02, 0.0, -0.01], np.float32), f"darker {step.region}")
    if step.kind == "grey":
        # Greyer: fully desaturated, pulled towards silver.
        A = 0.45 * np.outer(np.ones(3), LUMA).astype(np.float32)
        return ColourMap(step.region, A, np.full(3, 0.36, np.float32), f"greyer {step.region}")
    if step.kind == "older":
        # Less saturated, slightly darker, and rougher: contrast about the mean amplifies the skin's grain.
        A = 1.6 * _saturation(0.55) * 0.95
        b = (0.95 * ref - A @ ref).astype(np.float32)
        return ColourMap(step.region, A.astype(np.float32), b, f"older {step.region}")
    raise Edit3DGSError("--prompt", HELP, step.kind)


def reference_colours(images: torch.Tensor, mask: torch.Tensor, alphas: torch.Tensor | None = None,
                      background=(1.0, 1.0, 1.0), region: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A region's mean foreground colour (3,) in ``images`` (B,H,W,3) under its soft ``mask`` (B,H,W),
    and the colour of its most coloured part (chroma-weighted mean: the iris of an eyeball)."""
    bg = torch.tensor(background, dtype=images.dtype, device=images.device)
    a = torch.ones_like(images[..., 0]) if alphas is None else alphas.to(images).reshape(images.shape[:3])
    fg = ((images - (1 - a[..., None]) * bg) / a[..., None].clamp_min(1e-3)).clamp(0, 1)
    m = mask.to(images)
    w = (m > 0.9).to(images) * m  # pixels mostly of this region
    if float(w.sum()) < 1:
        w = m
    if float(w.sum()) <= 0:
        raise Edit3DGSError(f"region '{region}'", "a region visible in the edit views", "no pixel of it")
    px = fg.reshape(-1, 3)
    wf = w.reshape(-1, 1)
    ref = (px * wf).sum(0) / wf.sum()
    chroma = (px - px.mean(1, keepdim=True)).norm(dim=1, keepdim=True)
    wc = wf * chroma ** 2
    ref_c = (px * wc).sum(0) / wc.sum().clamp_min(1e-8) if float(wc.sum()) > 1e-8 else ref
    return ref.cpu().numpy(), ref_c.cpu().numpy()


def instruction_maps(instruction: str, references: dict) -> list[ColourMap]:
    """The colour maps of ``instruction`` given each region's ``(ref, ref_chroma)`` colours."""
    return [colour_map(step, *references[step.region]) for step in parse_instruction(instruction)]


def apply_maps(images: torch.Tensor, masks: dict, maps: list, alphas: torch.Tensor | None = None,
               background=(1.0, 1.0, 1.0), colours: dict | None = None) -> torch.Tensor:
    """Apply colour maps in image space. images (B,H,W,3), masks name -> (B,H,W), alphas (B,H,W).

    ``colours`` name -> (B,H,W,3): the region's own contribution to each pixel (``EditRequest.
    region_colours``). With it a map is exact at the region's edges too: the region's part of a
    pixel, ``C``, becomes ``A C + m b``, whatever else the pixel mixes; without it the region's colour
    is estimated from the pixel's foreground colour (exact only where the region does not mix).
    """
    if colours and all(cm.region in colours for cm in maps):
        out = images.clone()
        cols = {k: v.to(images) for k, v in colours.items()}
        for cm in maps:
            m = masks[cm.region].to(images)[..., None].clamp(0, 1)
            A = torch.as_tensor(cm.A, dtype=images.dtype, device=images.device)
            b = torch.as_tensor(cm.b, dtype=images.dtype, device=images.device)
            new = cols[cm.region] @ A.T + m * b
            out = out + new - cols[cm.region]
            cols[cm.region] = new  # later maps of the same region see the edited colour
        return out.clamp(0, 1)
    out = images.clone()
    bg = torch.tensor(background, dtype=images.dtype, device=images.device)
    a = torch.ones_like(images[..., :1]) if alphas is None else alphas[..., None].to(images)
    fg = (images - (1 - a) * bg) / a.clamp_min(1e-3)
    fg = torch.where(a > 1e-3, fg, images)
    for cm in maps:
        m = masks[cm.region].to(images)[..., None].clamp(0, 1)
        A = torch.as_tensor(cm.A, dtype=images.dtype, device=images.device)
        b = torch.as_tensor(cm.b, dtype=images.dtype, device=images.device)
        out = out + m * (fg @ (A - torch.eye(3, dtype=A.dtype, device=A.device)).T) + m * b
        # Later maps see the edited foreground colour.
        fg = fg + (m / a.clamp_min(1e-3)).clamp(max=1) * (fg @ (A - torch.eye(3, dtype=A.dtype, device=A.device)).T + b)
    return out.clamp(0, 1)


def recolour_sh(sh: torch.Tensor, mask: torch.Tensor, cmap: ColourMap) -> torch.Tensor:
    """The map applied to SH coefficients (N,K,3) (DC first): SH colour c = C0 dc + rest.Y + 0.5 is
    linear, so dc' = A dc + (A 0.5 + b - 0.5) / C0 and rest' = A rest on the rows in ``mask``."""
    from ..render.sh import C0

    out = sh.clone()
    A = torch.as_tensor(cmap.A, dtype=sh.dtype, device=sh.device)
    b = torch.as_tensor(cmap.b, dtype=sh.dtype, device=sh.device)
    half = torch.full((3,), 0.5, dtype=A.dtype, device=A.device)
    m = mask.to(sh.device)
    rows = out[m] @ A.T
    rows[:, 0] += (A @ half + b - half) / C0
    out[m] = rows
    return out


def recolour_gaussians(gaussians, mask: torch.Tensor, cmap: ColourMap):
    """``recolour_sh`` on a GaussianAvatar's features. Returns a new GaussianAvatar."""
    g = gaussians.clone()
    sh = recolour_sh(torch.cat([g.features_dc, g.features_rest], 1), mask, cmap)
    g.features_dc, g.features_rest = sh[:, :1].contiguous(), sh[:, 1:].contiguous()
    return g


class RegionEditor(Editor):
    """Edits pixels inside region masks; see the module docstring.

    The colour maps are estimated once per instruction (from the first images
    it edits) and then reused, so re-editing in later rounds applies the same
    maps to the original-looking renders; ``maps`` holds them for the record.
    """

    name = "region"
    appearance_only = True  # colour maps only: the refit keeps the geometry (EditSettings.appearance_only)
    uses_region_colours = True  # exact edits at region edges (EditRequest.region_colours)

    def __init__(self, background=(1.0, 1.0, 1.0), **unused):
        if unused:
            raise Edit3DGSError("--editor region", "no model options (it needs no weights)", ", ".join(sorted(unused)))
        self.set_background(background)
        self.maps: list[ColourMap] = []
        self._cache: dict = {}

    def set_background(self, background) -> None:
        self.background = tuple(float(x) for x in background)

    def record(self) -> dict:
        return {"colour_maps": [m.to_json() for m in self.maps]}

    def regions_for(self, instruction: str) -> list[str]:
        seen: list[str] = []
        for s in parse_instruction(instruction):
            if s.region not in seen:
                seen.append(s.region)
        return seen

    def plan(self, instruction: str, images: torch.Tensor, masks: dict, alphas: torch.Tensor | None = None) -> list[ColourMap]:
        """Colour maps for ``instruction``, with each region's reference colour measured in ``images``."""
        if instruction in self._cache:
            return self._cache[instruction]
        maps = []
        for step in parse_instruction(instruction):
            ref, ref_c = reference_colours(images, masks[step.region], alphas, self.background, step.region)
            maps.append(colour_map(step, ref, ref_c))
        self._cache[instruction] = maps
        self.maps = maps
        return maps

    def edit(self, request: EditRequest, progress: Progress = no_progress) -> torch.Tensor:
        maps = self.plan(request.instruction, request.images, request.region_masks, request.alphas)
        out = []
        B = request.images.shape[0]
        for i in range(B):  # per image, so a cancel is seen quickly and progress moves
            if request.should_stop():
                from ..errors import CancelledError

                raise CancelledError("edit cancelled")
            masks = {k: v[i:i + 1] for k, v in request.region_masks.items()}
            al = request.alphas[i:i + 1] if request.alphas is not None else None
            cols = {k: v[i:i + 1] for k, v in (request.region_colours or {}).items()}
            out.append(apply_maps(request.images[i:i + 1], masks, maps, al, self.background, cols))
            progress("edit", i + 1, B)
        return torch.cat(out)
