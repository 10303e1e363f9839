"""The built-in avatar: the embedded default input, made without any licence-gated data.

Two identities on the built-in head, each a GaussianAvatars-format folder:
several Gaussians per face with region appearance (skin with variation, lips,
iris/pupil/sclera, hair, teeth, brows), FLAME-style motion sequences
(talking, smiling, blinking, head turn, plus a held-out sequence and the other
identity's motion for cross-identity reenactment) and a 16-camera rig like
NeRSemble's with the frontal camera (8) held out.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import headmodel
from .avatar import GaussianAvatar, face_frames
from .cameras import HELD_OUT_CAMERA, camera_rig, save_cameras
from .flame import FlameHead, load_flame_model
from .flame_params import FlameParams
from .fsutil import atomic_dir
from .render.sh import RGB2SH

TRAIN_SEQUENCES = ("talk", "smile", "blink", "turn")
HELD_OUT_SEQUENCE = "held_out"
CROSS_SEQUENCE = "other_identity"


@dataclass(frozen=True)
class Identity:
    name: str
    shape: dict  # shape-component name -> value (in units of the built-in head's directions)
    skin: tuple
    hair: tuple
    iris: tuple
    lips: tuple
    brows: tuple


IDENTITIES = (
    Identity("ada", {}, skin=(0.87, 0.69, 0.58), hair=(0.30, 0.19, 0.11), iris=(0.42, 0.27, 0.14),
             lips=(0.72, 0.40, 0.40), brows=(0.28, 0.18, 0.11)),
    Identity("ben", {}, skin=(0.62, 0.45, 0.34), hair=(0.09, 0.08, 0.08), iris=(0.25, 0.17, 0.10),
             lips=(0.55, 0.33, 0.30), brows=(0.08, 0.07, 0.07)),
)
IDENTITY_SHAPES = ({}, {"head_width": 1.2, "face_length": 0.8, "nose_length": 1.0, "jaw_width": 1.0, "chin_length": -0.6})
TEETH = (0.93, 0.90, 0.82)
SCLERA = (0.95, 0.94, 0.92)
PUPIL = (0.03, 0.03, 0.03)


def _shape_vector(n_shape: int, spec: dict) -> np.ndarray:
    v = np.zeros(n_shape, np.float32)
    names = list(getattr(headmodel, "SHAPE_NAMES", []))
    for k, val in spec.items():
        if k in names:
            v[names.index(k)] = val
    return v


def _expr_index() -> dict:
    return {n: i for i, n in enumerate(getattr(headmodel, "EXPR_NAMES", []))}


def _smooth(t: np.ndarray, period: float, phase: float = 0.0) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * (t / period + phase))


def make_sequence(kind: str, T: int, shape: np.ndarray, n_expr: int = 100, seed: int = 0) -> FlameParams:
    """One motion sequence of T frames (25 fps) on the built-in head's expression names."""
    rng = np.random.default_rng(seed)
    p = FlameParams.neutral(T, n_shape=len(shape), n_expr=n_expr, shape=shape)
    ix = _expr_index()
    t = np.arange(T, dtype=np.float32)

    def ex(name, values):
        if name in ix:
            p.expr[:, ix[name]] += values

    def blink(every=20, offset=3):
        b = np.zeros(T, np.float32)
        for s in range(offset, T, every):
            for d, v in zip(range(-2, 3), (0.35, 0.85, 1.0, 0.85, 0.35)):
                if 0 <= s + d < T:
                    b[s + d] = max(b[s + d], v)
        ex("blink_left", b)
        ex("blink_right", b)

    if kind == "talk":
        syll = np.abs(np.sin(np.pi * t / 3.3)) * (0.6 + 0.4 * np.sin(t / 5.0) ** 2)
        p.jaw_pose[:, 0] = 0.22 * syll
        ex("mouth_open", 0.6 * syll)
        ex("pucker", 0.8 * np.clip(np.sin(t / 4.1), 0, None))
        ex("lip_funnel", 0.6 * np.clip(np.sin(t / 3.1 + 1.0), 0, None))
        ex("brow_raise", 0.4 * _smooth(t, 17))
        p.rotation[:, 1] = 0.06 * np.sin(t / 9.0)
        blink(23, 7)
    elif kind == "smile":
        ramp = np.clip(t / max(T * 0.4, 1), 0, 1)
        ex("smile", 1.6 * ramp)
        ex("cheek_puff", 0.2 * ramp)
        p.jaw_pose[:, 0] = 0.08 * ramp * _smooth(t, 11)
        ex("squint_left", 0.3 * ramp)
        ex("squint_right", 0.3 * ramp)
        p.rotation[:, 0] = -0.05 * ramp
        blink(19, 10)
    elif kind == "blink":
        blink(8, 2)
        ex("brow_raise", 1.0 * _smooth(t, 16))
        ex("frown", 0.8 * _smooth(t, 16, 0.5))
        p.eyes_pose[:, 1] = p.eyes_pose[:, 4] = 0.25 * np.sin(t / 4.0)
    elif kind == "turn":
        p.rotation[:, 1] = 0.45 * np.sin(2 * np.pi * t / T)
        p.rotation[:, 0] = 0.12 * np.sin(4 * np.pi * t / T)
        p.neck_pose[:, 1] = 0.15 * np.sin(2 * np.pi * t / T)
        p.eyes_pose[:, 1] = p.eyes_pose[:, 4] = -0.2 * np.sin(2 * np.pi * t / T)
        blink(15, 6)
    elif kind == HELD_OUT_SEQUENCE:
        # Unseen combinations: talking while smiling and looking around.
        syll = np.abs(np.sin(np.pi * t / 2.7))
        p.jaw_pose[:, 0] = 0.18 * syll
        ex("smile", 1.0 * _smooth(t, T))
        ex("mouth_open", 0.4 * syll)
        ex("brow_raise_left", 0.8 * _smooth(t, 13))
        p.rotation[:, 1] = 0.3 * np.sin(2 * np.pi * t / T + 1.0)
        p.rotation[:, 2] = 0.08 * np.sin(2 * np.pi * t / T)
        p.eyes_pose[:, 0] = p.eyes_pose[:, 3] = 0.15 * np.sin(t / 3.0)
        blink(11, 4)
    elif kind == CROSS_SEQUENCE:
        # Another person's style: frowns, smirks, wide mouth openings, nods.
        p.jaw_pose[:, 0] = 0.3 * _smooth(t, 12)
        ex("frown", 1.2 * _smooth(t, 18, 0.25))
        ex("smirk_left", 1.2 * _smooth(t, 14, 0.5))
        ex("brow_raise", 1.0 * _smooth(t, 9))
        ex("eye_wide_left", 0.8 * _smooth(t, 9))
        ex("eye_wide_right", 0.8 * _smooth(t, 9))
        p.rotation[:, 0] = 0.15 * np.sin(2 * np.pi * t / 10)
        p.rotation[:, 1] = -0.2 * np.sin(2 * np.pi * t / T)
        blink(13, 9)
    else:
        raise ValueError(f"unknown sequence kind {kind!r}")
    # A little natural jitter so no two frames are identical.
    p.rotation += rng.normal(0, 0.004, p.rotation.shape).astype(np.float32)
    return p


def _face_labels(head: FlameHead) -> np.ndarray:
    """Appearance class per face: 0 skin, 1 hair, 2 eyes, 3 lips, 4 teeth, 5 brows."""
    F = head.n_faces
    lab = np.zeros(F, np.int64)
    r = head.regions
    lab[r["hair"]] = 1
    lab[r["lips"]] = 3
    lab[r["eyes"]] = 2
    lab[r["teeth"]] = 4
    # Brows: forehead skin just above the eyes.
    v = head.v_template.numpy()
    f = head.faces.numpy()
    c = v[f].mean(1)
    eye_v = head.model.masks.get("left_eyeball", np.zeros(0, np.int64))
    if eye_v.size and len(r["forehead"]):
        eye_c = v[eye_v].mean(0)
        half = abs(eye_c[0])
        fh = r["forehead"]
        cc = c[fh]
        dy = cc[:, 1] - eye_c[1]
        sel = (dy > 0.012) & (dy < 0.024) & (np.abs(np.abs(cc[:, 0]) - half) < 0.022) & (lab[fh] == 0)
        lab[fh[sel]] = 5
    return lab


def make_gaussians(head: FlameHead, identity: Identity, shape: np.ndarray, gaussians_per_face: int = 3,
                   sh_degree: int = 3, seed: int = 0) -> GaussianAvatar:
    """Gaussians on the identity's neutral mesh, expressed in each face's local frame."""
    rng = np.random.default_rng(seed)
    neutral = FlameParams.neutral(1, n_shape=head.n_shape, n_expr=head.n_expr, shape=shape)
    with torch.no_grad():
        verts = head(neutral.to_torch())[0]
    faces = head.faces
    F, G = head.n_faces, gaussians_per_face
    binding = np.repeat(np.arange(F), G)
    # Uniform points on each triangle.
    r1, r2 = np.sqrt(rng.random(F * G)), rng.random(F * G)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1).astype(np.float32)
    tri = verts[faces[binding]]  # (N,3,3)
    p = (torch.from_numpy(bary)[:, :, None] * tri).sum(1)
    center, R, k = face_frames(verts, faces)
    b = torch.from_numpy(binding)
    local = (R[b].transpose(1, 2) @ (p - center[b])[..., None])[..., 0] / k[b, None]
    area = 0.5 * torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    s = torch.sqrt(area / G).clamp_min(1e-4) * 0.75 / k[b]
    scaling = torch.log(torch.stack([s, 0.25 * s, s], 1))

    lab = _face_labels(head)[binding]
    pos = p.numpy()
    rgb = np.tile(np.asarray(identity.skin, np.float32), (len(binding), 1))
    # Skin: low-frequency tone variation, rosy cheeks, per-Gaussian grain.
    freq = np.array([[31.0, 17.0, 23.0], [13.0, 41.0, 7.0], [19.0, 11.0, 37.0]], np.float32)
    low = np.sin(pos @ freq.T + rng.random(3) * 6.28).mean(1, keepdims=True)
    rgb *= 1 + 0.05 * low
    cheek = np.exp(-(((np.abs(pos[:, 0]) - 0.045) / 0.02) ** 2 + ((pos[:, 1] + 0.01) / 0.02) ** 2)) * (pos[:, 2] > 0.03)
    rgb += cheek[:, None] * np.array([0.06, -0.03, -0.03], np.float32)
    rgb *= 1 + rng.normal(0, 0.025, (len(binding), 1)).astype(np.float32)
    hair = lab == 1
    streak = np.sin(pos[hair] @ np.array([0, 90.0, 25.0], np.float32))[:, None]
    rgb[hair] = np.asarray(identity.hair) * (1 + 0.18 * streak + rng.normal(0, 0.08, (hair.sum(), 1)))
    rgb[lab == 3] = np.asarray(identity.lips) * (1 + rng.normal(0, 0.03, ((lab == 3).sum(), 1)))
    rgb[lab == 4] = TEETH
    rgb[lab == 5] = np.asarray(identity.brows) * (1 + rng.normal(0, 0.1, ((lab == 5).sum(), 1)))
    eyes = np.nonzero(lab == 2)[0]
    if eyes.size:
        J = (head.J_regressor @ verts).numpy()  # joint 3 left eye, 4 right eye
        for j, side in ((3, pos[eyes, 0] > 0), (4, pos[eyes, 0] <= 0)):
            idx = eyes[side]
            d = pos[idx] - J[j]
            d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
            ang = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
            col = np.where(ang[:, None] < 10, PUPIL, np.where(ang[:, None] < 27, identity.iris, SCLERA))
            ring = (ang > 22) & (ang < 27)
            col = col * np.where(ring[:, None], 0.7, 1.0)
            rgb[idx] = col
    # Baked soft lighting (key light from the upper left front), as captured avatars have.
    normal = R[b][:, :, 1].numpy()
    light = np.array([0.35, 0.45, 0.82], np.float32)
    light /= np.linalg.norm(light)
    shade = 0.62 + 0.45 * np.clip(normal @ light, 0, 1) ** 0.8
    rgb *= np.where(lab == 2, 0.85 + 0.15 * shade, shade)[:, None]
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)

    K = (sh_degree + 1) ** 2
    rest = np.zeros((len(binding), K - 1, 3), np.float32)
    if K > 1:
        amp = np.where(np.isin(lab, (1, 2, 3)), 0.05, 0.012).astype(np.float32)
        rest = rng.normal(0, 1, rest.shape).astype(np.float32) * amp[:, None, None] / np.sqrt(K)
    opacity = np.where(lab == 1, 3.0, 4.0).astype(np.float32)[:, None]
    angle = rng.uniform(-np.pi, np.pi, len(binding)).astype(np.float32) / 2
    rot = np.stack([np.cos(angle), np.zeros_like(angle), np.sin(angle), np.zeros_like(angle)], 1)  # about the normal
    return GaussianAvatar(
        xyz=local.float().contiguous(), features_dc=torch.from_numpy(RGB2SH(rgb))[:, None, :].float(),
        features_rest=torch.from_numpy(rest.astype(np.float32)), opacity=torch.from_numpy(opacity),
        scaling=scaling.float(), rotation=torch.from_numpy(rot.astype(np.float32)),
        binding=torch.from_numpy(binding.astype(np.int64)),
    )


def make_avatar(out: os.PathLike | str, identity: int = 0, frames: int = 24, gaussians_per_face: int = 3,
                sh_degree: int = 3, seed: int = 0, overwrite: bool = False, progress=None) -> Path:
    """Write a built-in avatar folder (GaussianAvatars layout + avatar.json)."""
    out = Path(out)
    other = 1 - identity if identity in (0, 1) else 0
    ident = IDENTITIES[identity % len(IDENTITIES)]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        pkl, masks = headmodel.write_head_model(tmp, seed=seed)
        head = FlameHead(load_flame_model(pkl, masks))
        shape = _shape_vector(head.n_shape, IDENTITY_SHAPES[identity % len(IDENTITY_SHAPES)])
        other_shape = _shape_vector(head.n_shape, IDENTITY_SHAPES[other])
        seqs = {k: make_sequence(k, frames, shape, head.n_expr, seed=seed + i) for i, k in enumerate(TRAIN_SEQUENCES)}
        seqs[HELD_OUT_SEQUENCE] = make_sequence(HELD_OUT_SEQUENCE, frames, shape, head.n_expr, seed=seed + 10)
        seqs[CROSS_SEQUENCE] = make_sequence(CROSS_SEQUENCE, frames, other_shape, head.n_expr, seed=seed + 20)
        train = FlameParams.concat([seqs[k] for k in TRAIN_SEQUENCES])
        train.static_offset = np.zeros((1, head.n_verts, 3), np.float32)
        train.save(tmp / "flame_param.npz")
        (tmp / "sequences").mkdir()
        for k, s in seqs.items():
            s.save(tmp / "sequences" / f"{k}.npz")
        g = make_gaussians(head, ident, shape, gaussians_per_face, sh_degree, seed=seed + identity)
        g.save_ply(tmp / "point_cloud.ply")
        save_cameras(tmp / "cameras.json", camera_rig())
        spans, start = {}, 0
        for k in TRAIN_SEQUENCES:
            spans[k] = [start, start + frames]
            start += frames
        meta = {
            "format": "edit3dgs-avatar", "version": 1, "kind": "builtin",
            "identity": ident.name, "other_identity": IDENTITIES[other].name,
            "head_model": pkl.name, "head_masks": masks.name, "head_seed": seed,
            "cameras": "cameras.json", "held_out_camera": HELD_OUT_CAMERA,
            "train_cameras": [i for i in range(16) if i != HELD_OUT_CAMERA],
            "train_sequences": spans, "held_out_sequence": f"sequences/{HELD_OUT_SEQUENCE}.npz",
            "cross_identity_sequence": f"sequences/{CROSS_SEQUENCE}.npz",
            "background": [1.0, 1.0, 1.0], "fps": 25,
            "num_gaussians": g.num_gaussians, "sh_degree": sh_degree,
        }
        (tmp / "avatar.json").write_text(json.dumps(meta, indent=1))
    return out
