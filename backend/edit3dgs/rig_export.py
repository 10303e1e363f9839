"""Everything Blender needs to rebuild an avatar, as one plain ``.npz`` (no pickles, no torch).

Blender (numpy only) turns this file into the FLAME rig and the Gaussian
preview; the format logic lives here so the add-on stays thin.

Rig keys (V head vertices, F faces, E expressions, J=5 joints):
- ``rig_verts (V,3)`` identity baked in: template + static_offset + shape blend (metres);
- ``rig_faces (F,3)`` int32;
- ``expr_deltas (E,V,3)``: expression blend shapes (one shape key each);
- ``pose_deltas (36,V,3)``: FLAME pose correctives; column p = 9*(j-1) + 3*r + c is
  driven by ``(R_j - I)[r, c]`` of joint j (1..4: neck, jaw, eyes), as in FLAME's LBS;
- ``joints (J,3)`` joint locations regressed from ``rig_verts`` (neutral expression);
- ``joint_expr (J,3,E)`` how each joint moves per unit expression (FLAME regresses
  joints from the expression-shaped mesh, so the jaw pivot follows the expression);
- ``parents (J,)``, ``weights (V,J)`` skinning weights, ``joint_names``, ``expr_names``.

Gaussian keys (N Gaussians):
- ``gs_color (N,3)`` RGB from the SH DC term; ``gs_sh_rest (N,K-1,3)`` float16, the higher SH bands; ``gs_base_color (N,3)`` the DC colour unclamped (the preview adds the bands to it, then clamps, as the renderer does); ``gs_opacity (N,)`` sigmoid'ed;
- ``gs_scale (N,)`` largest world scale at rest; ``gs_scale_rel (N,)`` largest
  ``exp(scaling)`` (world scale = k * this, k the face scaling);
- ``gs_binding (N,)`` int32; ``gs_xyz (N,3)``, ``gs_scaling (N,3)``, ``gs_rotation (N,4)`` local;
- ``gs_region (N,)`` int32 index into ``region_names`` (-1: none), first match wins.

Cameras (C): ``cam_index (C,)``, ``cam_c2w (C,4,4)`` OpenGL axes, ``cam_fx, cam_fy,
cam_cx, cam_cy (C,)`` pixels, ``cam_w, cam_h (C,)``.

``meta_json``: JSON text with the avatar folder, topology, counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .bundle import AvatarBundle
from .flame import JOINT_NAMES
from .fsutil import atomic_path

FORMAT = "edit3dgs-rig"
FORMAT_VERSION = 1
SH_C0 = 0.28209479177387814
# Regions written as labels, in priority order (a Gaussian gets the first that holds its face).
LABEL_REGIONS = ("eyes", "teeth", "lips", "nose", "ears", "hair", "eye_region", "forehead", "skin", "neck", "boundary")


def _identity_verts(bundle: AvatarBundle) -> np.ndarray:
    head = bundle.head
    p = bundle.params
    v = head.v_template.detach().cpu().numpy().astype(np.float64)
    if p.static_offset is not None:
        v = v + np.asarray(p.static_offset, np.float64).reshape(v.shape)
    S = head.n_shape
    shape = np.zeros(S, np.float64)
    n = min(S, p.shape.shape[-1])
    shape[:n] = p.shape.reshape(-1)[:n]
    sd = head.shapedirs.detach().cpu().numpy()[:, :, :S].astype(np.float64)
    return v + sd @ shape


def rig_arrays(bundle: AvatarBundle) -> dict:
    head = bundle.head
    model = head.model
    verts = _identity_verts(bundle)
    S, E = head.n_shape, head.n_expr
    exprdirs = head.shapedirs.detach().cpu().numpy()[:, :, S:S + E]  # (V,3,E)
    posedirs = head.posedirs.detach().cpu().numpy().reshape(36, -1, 3)  # (36,V,3)
    Jreg = head.J_regressor.detach().cpu().numpy().astype(np.float64)
    names = list(model.expr_names) if model.expr_names else []
    names = (names + [f"expr_{i:03d}" for i in range(len(names), E)])[:E]
    return {
        "rig_verts": verts.astype(np.float32),
        "rig_faces": head.faces.cpu().numpy().astype(np.int32),
        "expr_deltas": np.ascontiguousarray(exprdirs.transpose(2, 0, 1)).astype(np.float32),
        "pose_deltas": posedirs.astype(np.float32),
        "joints": (Jreg @ verts).astype(np.float32),
        "joint_expr": np.einsum("jv,vce->jce", Jreg, exprdirs).astype(np.float32),
        "parents": head.parents.cpu().numpy().astype(np.int32),
        "weights": head.lbs_weights.detach().cpu().numpy().astype(np.float32),
        "joint_names": np.array(JOINT_NAMES),
        "expr_names": np.array(names),
    }


def gaussian_arrays(bundle: AvatarBundle, gaussians=None) -> dict:
    g = (bundle.gaussians if gaussians is None else gaussians).to("cpu")
    with torch.no_grad():
        dc = g.features_dc[:, 0, :]
        color = torch.clamp(dc * SH_C0 + 0.5, 0.0, 1.0)
        rel = torch.exp(g.scaling).amax(1)
        # Face scaling k at rest (identity, neutral expression and pose).
        from .avatar import face_frames

        verts = torch.from_numpy(_identity_verts(bundle).astype(np.float32))
        _, _, k = face_frames(verts, bundle.head.faces.cpu())
        scale = rel * k[g.binding]
        labels = torch.full((g.num_gaussians,), -1, dtype=torch.int32)
        names = [r for r in LABEL_REGIONS if len(bundle.head.regions.get(r, ())) > 0]
        for i in reversed(range(len(names))):
            labels[bundle.gaussian_mask([names[i]]).cpu()] = i
        rest = g.features_rest.detach().numpy()
        return {
            "gs_color": color.numpy().astype(np.float32),
            # the view-dependent bands (N,K-1,3), so Blender's preview can show what a camera sees (half floats:
            # a few MB per 100k Gaussians)
            "gs_sh_rest": rest.astype(np.float16),
            # the DC colour before clamping: the renderer clamps after adding the bands
            "gs_base_color": (dc * SH_C0 + 0.5).numpy().astype(np.float32),
            "gs_opacity": torch.sigmoid(g.opacity[:, 0]).numpy().astype(np.float32),
            "gs_scale": scale.numpy().astype(np.float32),
            "gs_scale_rel": rel.numpy().astype(np.float32),
            "gs_binding": g.binding.numpy().astype(np.int32),
            "gs_xyz": g.xyz.numpy().astype(np.float32),
            "gs_scaling": g.scaling.numpy().astype(np.float32),
            "gs_rotation": g.rotation.numpy().astype(np.float32),
            "gs_region": labels.numpy(),
            "region_names": np.array(names),
        }


def camera_arrays(bundle: AvatarBundle) -> dict:
    from .cameras import camera_rig, load_cameras

    path = bundle.folder / bundle.meta.get("cameras", "cameras.json")
    cams = load_cameras(path) if path.is_file() else camera_rig()
    return {
        "cam_index": np.array([c.index for c in cams], np.int32),
        "cam_c2w": np.stack([np.asarray(c.c2w, np.float64) for c in cams]).astype(np.float32),
        "cam_fx": np.array([c.fx for c in cams], np.float32),
        "cam_fy": np.array([c.fy for c in cams], np.float32),
        "cam_cx": np.array([c.cx for c in cams], np.float32),
        "cam_cy": np.array([c.cy for c in cams], np.float32),
        "cam_w": np.array([c.width for c in cams], np.int32),
        "cam_h": np.array([c.height for c in cams], np.int32),
    }


def export_rig(bundle: AvatarBundle, out: os.PathLike | str, gaussians_only: bool = False) -> Path:
    """Write the ``.npz`` Blender imports (see the module docstring); returns its path."""
    arrays = gaussian_arrays(bundle)
    if not gaussians_only:
        arrays.update(rig_arrays(bundle))
        arrays.update(camera_arrays(bundle))
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "avatar": str(bundle.folder),
        "topology": bundle.topology, "n_gaussians": bundle.gaussians.num_gaussians,
        "n_verts": bundle.head.n_verts, "n_faces": bundle.head.n_faces, "n_expr": bundle.head.n_expr,
        "head": bundle.head.model.name, "timesteps": bundle.params.num_timesteps,
    }
    fps = bundle.meta.get("fps")  # avatar.json's frame rate of the sequence (Blender's scene takes it)
    if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0:
        meta["fps"] = float(fps)
    arrays["meta_json"] = np.array(json.dumps(meta))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return out


def world_positions(bundle: AvatarBundle, params: dict) -> np.ndarray:
    """World Gaussian centres (N,3) for one set of FLAME parameters (unbatched arrays)."""
    from .flame_params import FlameParams

    kw = {k: np.asarray(params.get(k, np.zeros(w, np.float32)), np.float32)[None]
          for k, w in (("expr", bundle.head.n_expr), ("rotation", 3), ("neck_pose", 3), ("jaw_pose", 3),
                       ("eyes_pose", 6), ("translation", 3))}
    p = FlameParams(shape=bundle.params.shape, static_offset=bundle.params.static_offset, **kw)
    verts = bundle.pose(p)
    return bundle.world(verts[0]).means.cpu().numpy()
