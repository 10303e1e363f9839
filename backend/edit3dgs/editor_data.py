"""Training data for the built-in editor: (render, instruction, edited render) triples of the built-in head.

Every target is an exact ground-truth edit: the region's Gaussians recoloured by
the region editor's colour map (``recolour_gaussians``) and rendered from the
same camera at the same timestep, so the editor learns edits whose truth is
known everywhere, and the demo can measure the paper's method against it.

What goes in (and what never does) is fixed here and written to a manifest:

* identities: the two built-in ones and ``n_random`` drawn from the head
  model's identity space (shape directions and colours);
* motion: the training sequences only (``builtin.TRAIN_SEQUENCES``) — never the
  held-out sequence nor the cross-identity sequence the evaluation uses;
* cameras: the rig's training cameras (never camera 8) and cameras jittered
  around the rig, each at least ``MIN_ANGLE_TO_HELD_OUT`` degrees away from
  camera 8's viewing direction;
* instructions: colours x {hair, lips, eyes, skin}, "look older", "paler skin",
  each in several phrasings, minus ``HELD_OUT_COMBOS`` (colours seen on other
  regions, never on this one) kept for measuring generalisation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .builtin import CROSS_SEQUENCE, HELD_OUT_SEQUENCE, IDENTITIES, IDENTITY_SHAPES, TRAIN_SEQUENCES, Identity, _shape_vector
from .cameras import HELD_OUT_CAMERA, RIG_AZIMUTHS, RIG_ELEVATIONS, Camera, camera_rig
from .edit.region import instruction_maps, parse_instruction, recolour_gaussians, recolour_sh, reference_colours

EDIT_REGIONS = ("hair", "lips", "eyes", "skin")
TRAIN_COLOURS = ("blue", "red", "green", "pink", "purple", "orange", "yellow", "teal", "black", "white", "silver", "brown")
# Colour-region combinations never trained on: each colour is trained on other regions.
HELD_OUT_COMBOS = (("hair", "pink"), ("lips", "blue"), ("eyes", "purple"), ("skin", "green"))
MIN_ANGLE_TO_HELD_OUT = 6.0     # degrees between a jittered camera's view direction and camera 8's
SIZE = (160, 112)               # (H, W) of the training images: the built-in editor's native size

COLOUR_TEMPLATES = ("make the {r} {c}", "make {his} {r} {c}", "give {him} {c} {r}", "turn the {r} {c}", "{c} {r}",
                    "change the {r} to {c}", "turn {his} {r} {c}")
REGION_TEMPLATES = {"hair": ("dye the hair {c}", "dye {his} hair {c}"), "lips": ("{c} lipstick",),
                    "eyes": ("{c} eyes please",), "skin": ("{c} skin tone",)}
OLDER = ("make him look older", "make her look older", "make him older", "make her older", "older")
PALER = ("paler skin", "make the skin paler", "give her paler skin", "make his skin paler", "give him paler skin")


def phrasings(region: str, colour: str) -> list[str]:
    """Every phrasing of "colour on region" the editor is trained with."""
    out = []
    for t in COLOUR_TEMPLATES + REGION_TEMPLATES.get(region, ()):
        for his, him in (("his", "him"), ("her", "her")):
            s = t.format(r=region, c=colour, his=his, him=him)
            if s not in out:
                out.append(s)
    return out


def instruction_vocabulary(held_out: bool = False) -> dict[str, list[str]]:
    """Edit key ('hair:blue', 'older', 'paler') -> phrasings. ``held_out``: only the held-out combinations."""
    out: dict[str, list[str]] = {}
    for r in EDIT_REGIONS:
        for c in TRAIN_COLOURS:
            if ((r, c) in HELD_OUT_COMBOS) == held_out:
                out[f"{r}:{c}"] = phrasings(r, c)
    if not held_out:
        out["older"] = list(OLDER)
        out["paler"] = list(PALER)
    return out


def vocabulary_words() -> list[str]:
    """All words of all phrasings (the tokenizer's whole-word merges)."""
    words = set()
    for held in (False, True):
        for ps in instruction_vocabulary(held).values():
            for p in ps:
                words.update(p.split())
    return sorted(words)


def edit_key(instruction: str) -> str:
    """The edit key ('hair:blue', 'older', ...) of an instruction, as the region editor parses it."""
    steps = parse_instruction(instruction)
    if len(steps) == 2 and {s.kind for s in steps} == {"grey", "older"}:
        return "older"
    if len(steps) == 1 and steps[0].kind == "pale":
        return "paler"
    return ",".join(f"{s.region}:{s.word}" for s in steps)


# ---------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------

@dataclass
class TrainIdentity:
    """One head of the training set: a posable bundle, its training motion, the colours each
    region's edits are measured from."""

    name: str
    bundle: object            # AvatarBundle (in memory)
    params: object            # FlameParams: the training sequences, concatenated
    references: dict          # region -> (ref, ref_chroma) colours
    spec: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)

    def mask(self, region: str) -> torch.Tensor:
        """Bool (N,): the Gaussians bound to ``region`` (cached)."""
        if region not in self._masks:
            self._masks[region] = self.bundle.gaussian_mask([region])
        return self._masks[region]


def random_identity(rng: np.random.Generator, k: int) -> tuple[Identity, dict]:
    """Colours and shape of a random head (shape in units of the head model's named directions)."""
    skin = np.array([0.87, 0.69, 0.58]) * rng.uniform(0.55, 1.08) + rng.normal(0, 0.02, 3)
    hair_choices = [(0.30, 0.19, 0.11), (0.09, 0.08, 0.08), (0.62, 0.48, 0.28), (0.55, 0.25, 0.10), (0.45, 0.44, 0.43),
                    (0.20, 0.13, 0.08)]
    hair = np.array(hair_choices[rng.integers(len(hair_choices))]) * rng.uniform(0.8, 1.2)
    iris = np.array([(0.42, 0.27, 0.14), (0.25, 0.17, 0.10), (0.25, 0.40, 0.55), (0.30, 0.42, 0.25)][rng.integers(4)])
    lips = skin * np.array([0.85, 0.6, 0.62]) * rng.uniform(0.85, 1.1)
    brows = hair * rng.uniform(0.7, 1.0)
    clip = lambda v: tuple(float(x) for x in np.clip(v, 0.02, 0.98))  # noqa: E731
    ident = Identity(f"random_{k:02d}", {}, skin=clip(skin), hair=clip(hair), iris=clip(iris), lips=clip(lips), brows=clip(brows))
    names = ["head_width", "head_height", "skull_depth", "face_length", "nose_length", "nose_width", "jaw_width",
             "chin_length", "eye_spacing", "cheek_fullness", "brow_height", "lip_fullness", "mouth_width"]
    shape = {n: float(np.clip(rng.normal(0, 0.55), -1.3, 1.3)) for n in names}
    return ident, shape


def make_identities(head, n_random: int = 14, frames: int = 24, seed: int = 0, device="cpu",
                    gaussians_per_face: Sequence[int] = (1, 2), sh_degree: Sequence[int] = (1, 3),
                    reference_scale: float = 0.2, reference_views: int | None = None) -> list[TrainIdentity]:
    """The built-in identities (as ``make_avatar`` builds them) and ``n_random`` random ones."""
    from .builtin import make_gaussians, make_sequence
    from .bundle import AvatarBundle
    from .flame_params import FlameParams

    rng = np.random.default_rng(seed)
    out = []
    dev_head = copy.deepcopy(head).to(device)  # one posing layer on the device, shared; ``head`` stays put
    specs = [(IDENTITIES[i], IDENTITY_SHAPES[i], i) for i in range(len(IDENTITIES))]
    specs += [(*random_identity(rng, k), 100 + k) for k in range(n_random)]
    for n, (ident, shape_spec, sseed) in enumerate(specs):
        shape = _shape_vector(head.n_shape, shape_spec)
        builtin = n < len(IDENTITIES)
        # The built-in identities' training motion is exactly their avatars' (seeds 0..3);
        # random identities get the same kinds of motion with their own seeds.
        seqs = [make_sequence(k, frames, shape, head.n_expr, seed=(i if builtin else 1000 + 10 * n + i))
                for i, k in enumerate(TRAIN_SEQUENCES)]
        params = FlameParams.concat(seqs)
        params.static_offset = np.zeros((1, head.n_verts, 3), np.float32)
        gpf = int(gaussians_per_face[n % len(gaussians_per_face)])
        sh = int(sh_degree[(n // len(gaussians_per_face)) % len(sh_degree)])
        g = make_gaussians(head, ident, shape, gpf, sh, seed=sseed)
        bundle = AvatarBundle(Path(f"<training identity {ident.name}>"), g.to(device), params, dev_head,
                              {"background": [1.0, 1.0, 1.0]}, "built-in head")
        rig = train_rig(reference_scale)
        if reference_views:   # a spread of the rig (tests); None: all training cameras
            rig = [rig[int(i)] for i in np.linspace(0, len(rig) - 1, reference_views).round()]
        refs = measure_references(bundle, params, [0, frames], rig)
        out.append(TrainIdentity(ident.name, bundle, params, refs,
                                 {"name": ident.name, "builtin": builtin, "shape": shape_spec, "skin": ident.skin,
                                  "hair": ident.hair, "iris": ident.iris, "lips": ident.lips,
                                  "gaussians_per_face": gpf, "sh_degree": sh, "num_gaussians": g.num_gaussians,
                                  "sequences": {k: (i if builtin else 1000 + 10 * n + i) for i, k in enumerate(TRAIN_SEQUENCES)},
                                  "frames_per_sequence": frames}))
    return out


def train_rig(scale: float = 0.2) -> list[Camera]:
    """The rig's training cameras (camera 8 left out), scaled."""
    return [c.scaled(scale) for c in camera_rig() if c.index != HELD_OUT_CAMERA]


def measure_references(bundle, params, timesteps: Sequence[int], cameras: Sequence[Camera],
                       regions: Sequence[str] = EDIT_REGIONS) -> dict:
    """Each region's reference colours (mean, most coloured part) seen from ``cameras`` at ``timesteps``:
    what the region editor measures, so training targets and the demo's ground truth agree."""
    from .masks import render_region_masks
    from .render_avatar import render_frames

    verts = bundle.pose(params, list(timesteps))
    with torch.no_grad():
        res = list(render_frames(bundle, verts, cameras, (1.0, 1.0, 1.0)))
        images = torch.cat([r.rgb for r in res])
        alphas = torch.cat([r.alpha[..., 0] for r in res])
        masks = render_region_masks(bundle, verts, cameras, list(regions))
    return {r: reference_colours(images, masks[r], alphas, (1.0, 1.0, 1.0), r) for r in regions}


def ground_truth_gaussians(bundle, gaussians, instruction: str, references: dict):
    """The Gaussians of the exact edit: each region of ``instruction`` recoloured by its colour map."""
    g = gaussians
    for cm in instruction_maps(instruction, references):
        g = recolour_gaussians(g, bundle.gaussian_mask([cm.region]), cm)
    return g


# ---------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------

def angle_to_held_out(cam: Camera) -> float:
    """Degrees between ``cam``'s viewing direction and camera 8's."""
    ref = camera_rig()[HELD_OUT_CAMERA].forward
    f = cam.forward
    c = float(f @ ref / (np.linalg.norm(f) * np.linalg.norm(ref)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def jittered_camera(rng: random.Random, index: int, scale: float) -> Camera:
    """A camera around the rig (azimuth within the rig's span, elevation, distance and aim jittered),
    never within ``MIN_ANGLE_TO_HELD_OUT`` of camera 8."""
    while True:
        az = rng.uniform(min(RIG_AZIMUTHS) - 5, max(RIG_AZIMUTHS) + 5)
        el = rng.uniform(min(RIG_ELEVATIONS) - 4, max(RIG_ELEVATIONS) + 4)
        d = rng.uniform(0.9, 1.12)
        target = (rng.uniform(-0.01, 0.01), -0.02 + rng.uniform(-0.015, 0.015), rng.uniform(-0.01, 0.01))
        cam = camera_rig(distance=d, target=target, azimuths=[az], elevations=[el])[0]
        if angle_to_held_out(cam) >= MIN_ANGLE_TO_HELD_OUT:
            return dataclasses.replace(cam.scaled(scale), index=index)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

class EditorDataset:
    """Draws training batches on the fly (renders are cheap; no stored images).

    Each group of a batch is one identity at one timestep seen from ``views`` cameras,
    original and ``edits`` edited versions; ``log`` counts what was drawn for the manifest.
    """

    def __init__(self, identities: list[TrainIdentity], size=SIZE, seed: int = 0, jitter_prob: float = 0.6,
                 render_scale: float = 0.2):
        self.ids = identities
        self.size = tuple(size)
        self.rng = random.Random(seed)
        self.vocab = instruction_vocabulary()
        self.keys = sorted(self.vocab)
        self.jitter_prob = jitter_prob
        self.scale = render_scale
        self.rig = train_rig(render_scale)
        self.log = {"edit_keys": Counter(), "instructions": Counter(), "rig_cameras": Counter(), "jittered_cameras": 0,
                    "min_jittered_angle_to_held_out_deg": 180.0, "identities": Counter(), "timesteps": 0, "pairs": 0}
        self._n_jit = 0

    def instruction(self) -> tuple[str, str]:
        key = self.rng.choice(self.keys)
        return key, self.rng.choice(self.vocab[key])

    def cameras(self, n: int) -> list[Camera]:
        out = []
        for _ in range(n):
            if self.rng.random() < self.jitter_prob:
                self._n_jit += 1
                c = jittered_camera(self.rng, 1000 + self._n_jit, self.scale)
                self.log["jittered_cameras"] += 1
                self.log["min_jittered_angle_to_held_out_deg"] = min(self.log["min_jittered_angle_to_held_out_deg"],
                                                                     round(angle_to_held_out(c), 3))
            else:
                c = self.rng.choice(self.rig)
                self.log["rig_cameras"][int(c.index)] += 1
            out.append(c)
        return out

    def _render(self, bundle, gaussians, verts, cams) -> torch.Tensor:
        """Renders (C,H,W,3) of ``gaussians`` posed by ``verts`` from ``cams``, at the training size."""
        wg = bundle.world(verts, gaussians)
        return self._raster(wg, wg.sh, cams)

    def _raster(self, wg, sh: torch.Tensor, cams) -> torch.Tensor:
        from .cameras import stack
        from .render import rasterize

        vm, K, w, h = stack(cams, wg.means.device)
        r = rasterize(wg.means, wg.quats, wg.scales, wg.opacities, sh, vm, K, w, h, sh_degree=wg.sh_degree,
                      background=torch.ones(3, device=wg.means.device))
        return _resize(r.rgb, self.size)

    @torch.no_grad()
    def batch(self, groups: int = 4, views: int = 4, edits: int = 4) -> dict:
        """``groups * edits * views`` triples: ``original`` and ``edited`` (B,H,W,3) in [0,1], ``prompts``.

        A group is one identity at one timestep from ``views`` cameras (one rasterizer call), edited
        ``edits`` ways: the exact edit recolours the region's SH rows of the posed Gaussians."""
        orig, edited, prompts = [], [], []
        for _ in range(groups):
            ident = self.rng.choice(self.ids)
            t = self.rng.randrange(ident.params.num_timesteps)
            cams = self.cameras(views)
            wg = ident.bundle.world(ident.bundle.pose(ident.params, [t])[0])
            o = self._raster(wg, wg.sh, cams)
            self.log["identities"][ident.name] += 1
            self.log["timesteps"] += 1
            for _ in range(edits):
                key, text = self.instruction()
                sh = wg.sh
                for cm in instruction_maps(text, ident.references):
                    sh = recolour_sh(sh, ident.mask(cm.region), cm)
                orig.append(o)
                edited.append(self._raster(wg, sh, cams))
                prompts += [text] * len(cams)
                self.log["edit_keys"][key] += len(cams)
                self.log["instructions"][text] += len(cams)
                self.log["pairs"] += len(cams)
        return {"original": torch.cat(orig), "edited": torch.cat(edited), "prompts": prompts}

    def manifest(self) -> dict:
        """What went into training (for ``training_manifest.json``)."""
        lg = self.log
        return {
            "identities": [i.spec for i in self.ids],
            "sequences": {"kinds": list(TRAIN_SEQUENCES), "never": [HELD_OUT_SEQUENCE, CROSS_SEQUENCE]},
            "cameras": {"rig_indices": sorted(int(c.index) for c in self.rig),
                        "rig_draws": {str(k): v for k, v in sorted(lg["rig_cameras"].items())},
                        "held_out_camera": HELD_OUT_CAMERA,
                        "jittered": {"count": lg["jittered_cameras"], "min_angle_to_held_out_deg_allowed": MIN_ANGLE_TO_HELD_OUT,
                                     "min_angle_to_held_out_deg_drawn": lg["min_jittered_angle_to_held_out_deg"]},
                        "render_scale": self.scale, "size_hw": list(self.size)},
            "instructions": {"edit_keys": dict(sorted(lg["edit_keys"].items())),
                             "phrasings": dict(sorted(lg["instructions"].items())),
                             "vocabulary": instruction_vocabulary(),
                             "held_out_combinations": [f"{r}:{c}" for r, c in HELD_OUT_COMBOS],
                             "held_out_phrasings": instruction_vocabulary(held_out=True)},
            "draws": {"pairs": lg["pairs"], "timesteps": lg["timesteps"], "identities": dict(lg["identities"])},
        }


def _resize(images: torch.Tensor, hw) -> torch.Tensor:
    """(B,H,W,3) -> (B,h,w,3), antialiased bilinear (as the editor resizes its inputs)."""
    if tuple(images.shape[1:3]) == tuple(hw):
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2), size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1)
