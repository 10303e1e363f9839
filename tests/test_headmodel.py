"""The built-in head: FLAME layout, determinism, skinning, regions, expressions, files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from edit3dgs import headmodel as hm
from edit3dgs.flame import FlameHead, face_regions, load_flame_model

JOINTS = {"global": 0, "neck": 1, "jaw": 2, "eye_left": 3, "eye_right": 4}


@pytest.fixture(scope="module")
def model():
    return hm.build_head_model(seed=0)


def pose(model, shape=None, expr=None, jaw=None, eyes=None, neck=None):
    """Skin the model with smplx's LBS (betas = shape ++ expr, 400 columns)."""
    from smplx.lbs import lbs

    betas = torch.zeros(1, 400)
    for name, val in (shape or {}).items():
        betas[0, hm.SHAPE_NAMES.index(name)] = val
    for name, val in (expr or {}).items():
        betas[0, 300 + hm.EXPR_NAMES.index(name)] = val
    p = torch.zeros(1, 15)
    for sl, val in ((slice(3, 6), neck), (slice(6, 9), jaw), (slice(9, 15), eyes)):
        if val is not None:
            p[0, sl] = torch.tensor(val, dtype=torch.float32)
    parents = torch.tensor(model["kintree_table"][0].astype(np.int64))
    parents[0] = -1
    V = model["v_template"].shape[0]
    verts, joints = lbs(betas, p, torch.from_numpy(model["v_template"]), torch.from_numpy(model["shapedirs"]),
                        torch.from_numpy(model["posedirs"].reshape(V * 3, 36).T.copy()),
                        torch.from_numpy(model["J_regressor"]), parents, torch.from_numpy(model["weights"]))
    return verts[0].numpy().astype(np.float64), joints[0].numpy().astype(np.float64)


def faces_in(model, *regions):
    sel = np.zeros(model["v_template"].shape[0], bool)
    for r in regions:
        sel[model["masks"][r]] = True
    return sel[model["f"]].all(1)


def first_hit(v, f, origins, direction):
    """Index of the first face hit by each ray (Moller-Trumbore), -1 for a miss."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = b - a, c - a
    out = []
    for o in origins:
        pv = np.cross(direction, e2)
        det = (e1 * pv).sum(1)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tv = o - a
        u = (tv * pv).sum(1) * inv
        qv = np.cross(tv, e1)
        w = (direction * qv).sum(1) * inv
        t = (e2 * qv).sum(1) * inv
        hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
        out.append(int(np.argmin(np.where(hit, t, np.inf))) if hit.any() else -1)
    return np.array(out)


# ---------------------------------------------------------------------------
# Layout and determinism
# ---------------------------------------------------------------------------


def test_flame_layout(model):
    V = model["v_template"].shape[0]
    F = model["f"].shape[0]
    assert 3000 <= V <= 6000 and 6000 <= F <= 11000
    assert model["v_template"].dtype == np.float32 and model["v_template"].shape == (V, 3)
    assert model["f"].shape == (F, 3) and model["f"].min() == 0 and model["f"].max() == V - 1
    assert model["shapedirs"].shape == (V, 3, 400) and model["shapedirs"].dtype == np.float32
    assert model["posedirs"].shape == (V, 3, 36)
    assert model["J_regressor"].shape == (5, V)
    assert model["weights"].shape == (V, 5)
    np.testing.assert_array_equal(model["kintree_table"], [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    assert len(hm.EXPR_NAMES) >= 20 and len(hm.SHAPE_NAMES) >= 10
    assert model["expr_names"][: len(hm.EXPR_NAMES)] == hm.EXPR_NAMES and len(model["expr_names"]) == 100
    assert model["shape_names"][: len(hm.SHAPE_NAMES)] == hm.SHAPE_NAMES and len(model["shape_names"]) == 300
    assert model["model_name"] == "edit3dgs-builtin-head" and "flame" not in model["model_name"].lower()
    # Head-sized, in metres, FLAME's axes: about 0.2 m tall (top to chin), 0.15 m wide, neck to -0.15.
    v = model["v_template"][model["masks"]["scalp"]]
    assert 0.11 < model["v_template"][:, 1].max() < 0.15 and abs(model["v_template"][:, 1].min() + 0.15) < 1e-3
    assert 0.14 < np.ptp(v[:, 0]) < 0.17
    nose_tip = model["v_template"][model["masks"]["nose"]][:, 2].max()
    assert nose_tip > 0.1 and nose_tip == model["v_template"][:, 2].max()  # the face looks towards +z


def test_same_seed_same_model_other_seed_only_random_identity(model):
    again = hm.build_head_model(seed=0)
    other = hm.build_head_model(seed=1)
    for key in ("v_template", "f", "posedirs", "J_regressor", "kintree_table", "weights"):
        np.testing.assert_array_equal(model[key], again[key])
        np.testing.assert_array_equal(model[key], other[key])
    np.testing.assert_array_equal(model["shapedirs"], again["shapedirs"])
    lo, hi = len(hm.SHAPE_NAMES), len(hm.SHAPE_NAMES) + hm.N_RANDOM_SHAPE
    diff = np.abs(model["shapedirs"] - other["shapedirs"]).max((0, 1))
    assert (diff[lo:hi] > 0).all()
    assert (diff[:lo] == 0).all() and (diff[hi:] == 0).all()
    for key in model["masks"]:
        np.testing.assert_array_equal(model["masks"][key], other["masks"][key])


def test_named_directions_are_meaningful_and_padding_is_zero(model):
    sd = model["shapedirs"]
    n_e = len(hm.EXPR_NAMES)
    mag = np.linalg.norm(sd, axis=1).max(0)  # largest vertex motion per unit coefficient (m)
    assert (mag[: len(hm.SHAPE_NAMES)] > 1e-3).all() and (mag[: len(hm.SHAPE_NAMES)] < 0.02).all()
    assert (mag[300:300 + n_e] > 1e-3).all() and (mag[300:300 + n_e] < 0.02).all()
    assert (mag[300 + n_e:] == 0).all()
    assert (mag[len(hm.SHAPE_NAMES) + hm.N_RANDOM_SHAPE:300] == 0).all()
    # Expressions never deform the eyeballs; identity moves each eyeball rigidly.
    for side in ("left_eyeball", "right_eyeball"):
        ids = model["masks"][side]
        assert np.abs(sd[ids, :, 300:]).max() == 0
        assert np.abs(sd[ids, :, :300] - sd[ids[:1], :, :300]).max() < 1e-7


# ---------------------------------------------------------------------------
# Skinning and joints
# ---------------------------------------------------------------------------


def test_weights_and_joint_regressor(model):
    w = model["weights"]
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    m = model["masks"]
    assert (w[m["left_eyeball"], JOINTS["eye_left"]] == 1).all()
    assert (w[m["right_eyeball"], JOINTS["eye_right"]] == 1).all()
    assert (w[m["scalp"], JOINTS["neck"]] > 0.999).all()
    J = model["J_regressor"] @ model["v_template"]
    np.testing.assert_allclose(J[JOINTS["eye_left"]], [0.031, 0.035, 0.070], atol=1e-5)  # left = +x
    np.testing.assert_allclose(J[JOINTS["eye_right"]], [-0.031, 0.035, 0.070], atol=1e-5)
    for j in (0, 1, 2):
        assert abs(J[j, 0]) < 1e-6  # on the midline
    assert J[0, 1] < J[1, 1] < J[2, 1] < J[3, 1]  # root below neck below jaw hinge below eyes
    assert -0.15 < J[0, 1] < -0.1
    # Each eye joint is its eyeball's centre.
    for side, j in (("left_eyeball", 3), ("right_eyeball", 4)):
        np.testing.assert_allclose(model["v_template"][m[side]].mean(0), J[j], atol=1e-6)


def test_joints_follow_identity(model):
    _, j0 = pose(model)
    _, j1 = pose(model, shape={"eye_spacing": 2.0})
    assert j1[3, 0] - j0[3, 0] > 0.004 and j1[4, 0] - j0[4, 0] < -0.004
    np.testing.assert_allclose(j1[:3], j0[:3], atol=1e-4)


def test_opening_the_jaw_moves_chin_and_lower_lip_not_scalp(model):
    v0, _ = pose(model)
    v1, _ = pose(model, jaw=[0.3, 0.0, 0.0])
    m = model["masks"]
    y_mouth = -0.0375
    lips = v0[m["lips"]]
    lower_lip = m["lips"][(lips[:, 1] < y_mouth - 0.003) & (lips[:, 2] > 0.085)]
    upper_lip = m["lips"][(lips[:, 1] > y_mouth + 0.003) & (lips[:, 2] > 0.085)]
    chin = np.nonzero((np.abs(v0[:, 0]) < 0.01) & (np.abs(v0[:, 1] + 0.065) < 0.005) & (v0[:, 2] > 0.07))[0]
    assert len(lower_lip) and len(upper_lip) and len(chin)
    assert (v1[lower_lip, 1] - v0[lower_lip, 1] < -0.01).all()
    assert (v1[chin, 1] - v0[chin, 1] < -0.005).all()
    assert np.abs(v1[upper_lip] - v0[upper_lip]).max() < 1e-3
    np.testing.assert_allclose(v1[m["scalp"]], v0[m["scalp"]], atol=1e-6)
    np.testing.assert_allclose(v1[m["left_eyeball"]], v0[m["left_eyeball"]], atol=1e-6)


def test_open_jaw_shows_teeth_and_mouth_interior(model):
    f = model["f"]
    teeth = faces_in(model, "teeth")
    mouth = faces_in(model, "lips")  # lips and the mouth bag behind them
    d = np.array([0.0, 0.0, -1.0])
    v0, _ = pose(model)
    v1, _ = pose(model, jaw=[0.3, 0.0, 0.0])
    upper_teeth = model["masks"]["teeth"][model["weights"][model["masks"]["teeth"], JOINTS["neck"]] == 1]
    y_edge = v0[upper_teeth, 1].min()
    upper_teeth_rays = np.array([[dx, y_edge + 0.001, 0.3] for dx in (-0.005, 0.0, 0.005)])
    inside_rays = np.array([[dx, -0.05, 0.3] for dx in (-0.005, 0.0, 0.005)])
    assert not teeth[first_hit(v0, f, upper_teeth_rays, d)].any()  # closed: the lips hide the teeth
    assert teeth[first_hit(v1, f, upper_teeth_rays, d)].all()  # open: the upper teeth show
    hit = first_hit(v1, f, inside_rays, d)
    assert (teeth | mouth)[hit].all()
    assert (v1[f[hit]][:, :, 2].mean(1) < 0.085).all()  # behind the lips, inside the mouth


def test_eye_rotation_moves_only_that_eyeball(model):
    v0, _ = pose(model)
    v1, _ = pose(model, eyes=[0.0, 0.4, 0.0, 0.0, 0.0, 0.0])
    moved = np.nonzero(np.linalg.norm(v1 - v0, axis=1) > 1e-6)[0]
    assert np.isin(moved, model["masks"]["left_eyeball"]).all()  # nothing else moves
    assert len(moved) > 0.9 * len(model["masks"]["left_eyeball"])  # (points on the axis stay)
    # the pupil (front pole) now looks towards +x
    ids = model["masks"]["left_eyeball"]
    pupil = ids[np.argmax(v0[ids, 2])]
    assert v1[pupil, 0] - v0[pupil, 0] > 0.003


def test_blink_left_closes_the_left_eye_only(model):
    f = model["f"]
    eyeball_l = faces_in(model, "left_eyeball")
    eyeball_r = faces_in(model, "right_eyeball")
    c = np.array([0.031, 0.035, 0.070])
    d = np.array([0.0, 0.0, -1.0])
    rays_l = np.array([[c[0] + dx, c[1] + dy, 0.3] for dx in (-0.004, 0.0, 0.004) for dy in (-0.002, 0.0, 0.002)])
    rays_r = rays_l * [-1, 1, 1]
    v0, _ = pose(model)
    assert eyeball_l[first_hit(v0, f, rays_l, d)].all()  # open at rest: the rays see the eyeball
    v1, _ = pose(model, expr={"blink_left": 1.0})
    assert not eyeball_l[first_hit(v1, f, rays_l, d)].any()  # the lids cover it
    assert eyeball_r[first_hit(v1, f, rays_r, d)].all()  # the right eye stays open
    # the upper lid edge comes down below the eyeball's centre height
    region = model["masks"]["left_eye_region"]
    front = region[(np.abs(v0[region, 0] - c[0]) < 0.003) & (v0[region, 2] > c[2] + 0.01) & (v0[region, 1] > c[1])]
    lowest_upper_lid = v1[front, 1].min()
    assert lowest_upper_lid < c[1]


def test_expressions_do_what_their_names_say(model):
    v0, _ = pose(model)
    m = model["masks"]
    corners = []
    lips = m["lips"][model["v_template"][m["lips"], 2] > 0.07]
    for s in (1, -1):
        side = lips[np.sign(v0[lips, 0]) == s]
        corners.append(side[np.argmax(np.abs(v0[side, 0]))])
    vs, _ = pose(model, expr={"smile": 1.0})
    assert (vs[corners, 1] - v0[corners, 1] > 0.002).all()
    vf, _ = pose(model, expr={"mouth_frown": 1.0})
    assert (vf[corners, 1] - v0[corners, 1] < -0.001).all()
    fh = m["forehead"]
    vb, _ = pose(model, expr={"brow_raise": 1.0})
    assert (vb[fh, 1] - v0[fh, 1]).max() > 0.004
    vl, _ = pose(model, expr={"brow_raise_left": 1.0})
    up = vl[fh, 1] - v0[fh, 1]
    assert up[v0[fh, 0] > 0.02].mean() > 5 * max(up[v0[fh, 0] < -0.02].mean(), 1e-9)
    vp, _ = pose(model, expr={"pucker": 1.0})
    assert (vp[m["lips"], 2] - v0[m["lips"], 2]).max() > 0.005


def test_masks_cover_parts_with_faces(model):
    f = model["f"]
    required = ["face", "neck", "scalp", "boundary", "right_eyeball", "left_eyeball", "right_ear", "left_ear",
                "forehead", "eye_region", "nose", "lips", "right_eye_region", "left_eye_region", "teeth"]
    for key in required:
        ids = model["masks"][key]
        assert ids.dtype == np.int64 and len(ids) and np.all(np.diff(ids) > 0), key
        assert faces_in(model, key).sum() > 0, key
    # every face of an eyeball / tooth / ear is in its region
    w = model["weights"]
    eye_faces = (w[f, 3] == 1).all(1) | (w[f, 4] == 1).all(1)
    assert (faces_in(model, "left_eyeball", "right_eyeball") == eye_faces).all()
    assert faces_in(model, "left_eyeball").sum() == faces_in(model, "right_eyeball").sum()
    regions = face_regions(f, model["masks"], model["v_template"].shape[0])
    for key in ("hair", "skin", "eyes", "lips", "teeth", "ears", "neck", "nose", "forehead"):
        assert len(regions[key]) > 0, key
    # eyeballs sit on the correct side (left = +x)
    assert (model["v_template"][model["masks"]["left_eyeball"], 0] > 0).all()
    assert (model["v_template"][model["masks"]["right_ear"], 0] < 0).all()


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _only_plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _only_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_only_plain(x) for x in obj)
    return isinstance(obj, (np.ndarray, sp.spmatrix, str, int, float))


def test_write_round_trip(tmp_path, model):
    pkl, masks_pkl = hm.write_head_model(tmp_path / "out", seed=0)
    assert pkl.name == "head_model.pkl" and masks_pkl.name == "head_masks.pkl"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["head_masks.pkl", "head_model.pkl"]
    with open(pkl, "rb") as fh:
        d = pickle.load(fh)
    with open(masks_pkl, "rb") as fh:
        masks = pickle.load(fh)
    assert _only_plain(d) and _only_plain(masks)
    assert sp.issparse(d["J_regressor"])
    np.testing.assert_array_equal(d["J_regressor"].toarray(), model["J_regressor"])
    np.testing.assert_array_equal(d["shapedirs"], model["shapedirs"])
    assert set(masks) == set(model["masks"])
    # The project's FLAME loader reads it like a FLAME pickle (restricted unpickler).
    fm = load_flame_model(pkl)
    assert fm.name == "edit3dgs-builtin-head" and fm.n_shape == 300 and fm.n_expr == 100
    assert fm.expr_names[: len(hm.EXPR_NAMES)] == hm.EXPR_NAMES
    head = FlameHead(fm)
    assert head.n_faces == model["f"].shape[0] and len(head.regions["teeth"]) > 0
