"""Eye and mouth masks for expression-preserving inpainting (formats.md §5).

Two sources:

(a) FLAME regions rendered from the avatar (default): each Gaussian knows the
    face it is bound to, so rendering the region indicator as a flat colour
    gives an exact, instant mask with no weights. The edit loop renders these
    into ``EditRequest.region_masks``; ``render_region_masks`` does the same
    for any posed avatar.
(b) The paper's detector route: Grounding DINO boxes for text queries
    ("eyes", "mouth") refined by SAM 2, both from ``transformers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import Edit3DGSError
from .flame import canonical_region

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM = "facebook/sam2.1-hiera-tiny"
DEFAULT_QUERIES = ("eyes", "mouth")


# ---------------------------------------------------------------------------
# (a) FLAME regions
# ---------------------------------------------------------------------------

def combine_region_masks(region_masks: dict, regions: Sequence[str], shape: Sequence[int]) -> torch.Tensor:
    """Union (max) of the named soft masks (B,H,W); names are matched after canonicalisation."""
    by_canon = {canonical_region(k): v for k, v in region_masks.items()}
    out = None
    for r in regions:
        m = region_masks.get(r, by_canon.get(canonical_region(r)))
        if m is None:
            raise Edit3DGSError(f"region '{r}'", f"a rendered mask for it (rendered: {sorted(region_masks) or 'none'})", "none")
        m = m.float()
        out = m if out is None else torch.maximum(out, m.to(out.device))
    return out if out is not None else torch.zeros(tuple(shape))


def render_region_masks(bundle, verts: torch.Tensor, cameras, regions, gaussians=None, exclusive: bool = False) -> dict:
    """Soft masks name -> (T*C,H,W) (timestep-major) of ``regions`` of a posed avatar ``verts`` (T,V,3).

    Each region's indicator is rendered as a flat colour on black, so a pixel holds that
    region's share of the pixel's opacity; three regions per render (one per channel).
    ``regions``: names, or a dict name -> region names (one mask of their union, e.g.
    ``{"edit": ["hair", "lips"]}``). ``exclusive``: a Gaussian bound to several of the regions
    counts for the first of them only (the edit loop's masks). The one renderer of region masks:
    the edit loop, the server's ``region_masks`` job, the demo and the editor's training data use it.
    """
    from .render_avatar import render_frames

    g = bundle.gaussians if gaussians is None else gaussians
    groups = dict(regions) if isinstance(regions, dict) else {r: [r] for r in regions}
    names = list(groups)
    taken = torch.zeros(g.num_gaussians, dtype=torch.bool, device=g.device)
    inside = []
    for n in names:  # the Gaussians bound to each region's faces (of these Gaussians' bindings)
        faces = torch.zeros(bundle.head.n_faces, dtype=torch.bool, device=g.device)
        faces[torch.from_numpy(bundle.region_faces(groups[n])).to(g.device)] = True
        m = faces[g.binding]
        if exclusive:
            m = m & ~taken
            taken |= m
        inside.append(m)
    masks = {n: [] for n in names}
    for j in range(0, len(names), 3):
        chunk = names[j:j + 3]
        cols = torch.zeros(g.num_gaussians, 3, device=g.device)
        for c in range(len(chunk)):
            cols[inside[j + c], c] = 1.0
        with torch.no_grad():
            for res in render_frames(bundle, verts, cameras, (0.0, 0.0, 0.0), gaussians=g, colors=cols):
                for c, r in enumerate(chunk):
                    masks[r].append(res.rgb[..., c])
    return {r: torch.cat(v) for r, v in masks.items()}


# ---------------------------------------------------------------------------
# (b) Grounding DINO + SAM 2
# ---------------------------------------------------------------------------

_LOADED: dict = {}


def _source(model: str) -> str:
    p = Path(model).expanduser()
    if p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        if not p.is_dir():
            raise Edit3DGSError(model, "a model folder", "no such folder")
        return str(p.resolve())
    return model


def _load(kind: str, model: str, device, flag: str):
    """(processor, model) for the detector; (preprocessing config, model) for SAM 2, whose image
    processor needs torchvision, so we resize and normalise ourselves from its preprocessor_config.json."""
    key = (kind, model, str(device))
    if key in _LOADED:
        return _LOADED[key]
    if kind == "detector":
        from transformers import AutoProcessor, GroundingDinoForObjectDetection as Model
        what = "Grounding DINO weights (transformers layout, safetensors), e.g. `hf download IDEA-Research/grounding-dino-tiny`"
    else:
        from transformers import Sam2Model as Model
        what = "SAM 2 weights (transformers layout, safetensors), e.g. `hf download facebook/sam2.1-hiera-tiny`"
    src = _source(model)
    try:
        net = Model.from_pretrained(src, use_safetensors=True).to(device).eval()
        if kind == "detector":
            proc = AutoProcessor.from_pretrained(src)
        else:
            proc = _sam_preprocessing(src, net.config)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise Edit3DGSError(model, f"{what}; point {flag} at the folder", f"no loadable weights ({first})") from None
    _LOADED[key] = (proc, net)
    return proc, net


def _sam_preprocessing(src: str, config) -> dict:
    import json

    pre = {}
    try:
        from huggingface_hub import hf_hub_download

        path = Path(src) / "preprocessor_config.json" if Path(src).is_dir() else Path(hf_hub_download(src, "preprocessor_config.json"))
        if path.is_file():
            pre = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - the defaults below are SAM 2's own
        pre = {}
    size = pre.get("size") or {}
    side = int(size.get("height", size.get("longest_edge", getattr(config, "image_size", 1024) or 1024)))
    return {"size": side, "mean": pre.get("image_mean", [0.485, 0.456, 0.406]), "std": pre.get("image_std", [0.229, 0.224, 0.225])}


def _pil(img: torch.Tensor):
    from PIL import Image

    return Image.fromarray((img.detach().float().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))


@torch.no_grad()
def detect_boxes(images: torch.Tensor, queries: Sequence[str], detector_model: str = DEFAULT_DETECTOR,
                 box_threshold: float = 0.3, text_threshold: float = 0.25, device="cpu") -> list[dict]:
    """Grounding DINO on images (B,H,W,3): per image {"boxes": (n,4) xyxy pixels, "scores": (n,), "labels": [str]}."""
    proc, net = _load("detector", detector_model, device, "--detector-model")
    text = " ".join(q.strip().lower().rstrip(".") + "." for q in queries)
    B, H, W, _ = images.shape
    pils = [_pil(im) for im in images]
    inputs = proc(images=pils, text=[text] * B, return_tensors="pt").to(device)
    out = net(**inputs)
    res = proc.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=box_threshold,
                                                      text_threshold=text_threshold, target_sizes=[(H, W)] * B)
    return [{"boxes": r["boxes"].float().cpu(), "scores": r["scores"].float().cpu(),
             "labels": list(r["text_labels"] if "text_labels" in r else r.get("labels", []))} for r in res]


@torch.no_grad()
def segment_boxes(images: torch.Tensor, boxes: list[torch.Tensor], sam_model: str = DEFAULT_SAM, device="cpu") -> torch.Tensor:
    """SAM 2 masks for boxes (per image (n,4) xyxy pixels): union per image, (B,H,W) float {0,1}."""
    B, H, W, _ = images.shape
    out = torch.zeros(B, H, W)
    if not any(len(b) for b in boxes):
        return out
    pre, net = _load("sam", sam_model, device, "--sam-model")
    side = pre["size"]
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    scale = torch.tensor([side / W, side / H, side / W, side / H])
    for i, (img, bx) in enumerate(zip(images, boxes)):
        if len(bx) == 0:
            continue
        x = torch.nn.functional.interpolate(img.float().cpu().permute(2, 0, 1)[None], size=(side, side), mode="bilinear",
                                            antialias=True, align_corners=False)
        x = ((x - mean) / std).to(device)
        pred = net(pixel_values=x, input_boxes=(bx.float() * scale)[None].to(device), multimask_output=False)
        low = pred.pred_masks.reshape(-1, 1, *pred.pred_masks.shape[-2:]).float()
        masks = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False) > 0
        out[i] = masks.float().amax(0)[0].cpu()
    return out


def detect_region_masks(images: torch.Tensor, detector_model: str | None = None, sam_model: str | None = None,
                        queries: Sequence[str] | None = None, box_threshold: float = 0.3,
                        text_threshold: float = 0.25, device="cpu") -> torch.Tensor:
    """Eye/mouth masks (B,H,W) of images (B,H,W,3) in [0,1]: Grounding DINO boxes for ``queries``,
    each refined by SAM 2 (the union over queries)."""
    queries = list(queries or DEFAULT_QUERIES)
    dets = detect_boxes(images, queries, detector_model or DEFAULT_DETECTOR, box_threshold, text_threshold, device)
    return segment_boxes(images, [d["boxes"] for d in dets], sam_model or DEFAULT_SAM, device)
