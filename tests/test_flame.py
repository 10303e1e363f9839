"""FLAME layer: restricted unpickling, chumpy, LBS against smplx, teeth and face counts."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import tiny_flame_dict, write_pickle

from edit3dgs.errors import Edit3DGSError
from edit3dgs.flame import (FLAME_N_FACES, FLAME_N_VERTS, FlameHead, add_teeth, face_regions, load_flame_model,
                            safe_load_pickle, teeth_faces)
from edit3dgs.flame_params import FlameParams


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-not-run > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    p = write_pickle(tmp_path / "evil.pkl", {"v_template": np.zeros((3, 3)), "x": _Evil()})
    with pytest.raises(Edit3DGSError) as e:
        safe_load_pickle(p)
    assert "evil.pkl" in str(e.value) and "posix.system" in str(e.value)


def test_pickle_of_other_objects_is_refused(tmp_path):
    import collections

    p = write_pickle(tmp_path / "od.pkl", collections.OrderedDict(a=np.zeros(3)))
    with pytest.raises(Edit3DGSError, match="refused"):
        safe_load_pickle(p)


def test_chumpy_values_become_arrays_without_chumpy(tmp_path, monkeypatch):
    # A stand-in 'chumpy.ch.Ch' class exists only while writing the pickle.
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty = set()

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    mod.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    d = tiny_flame_dict()
    want = d["shapedirs"].copy()
    d["shapedirs"] = Ch(d["shapedirs"])
    d["J_regressor"] = sp.csc_matrix(d["J_regressor"])
    p = write_pickle(tmp_path / "flame2020.pkl", d)
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")
    m = load_flame_model(p)
    np.testing.assert_array_equal(m.shapedirs, want)
    assert m.J_regressor.shape == (5, 40) and "chumpy" not in sys.modules


def test_truncated_and_wrong_pickles_name_the_file(tmp_path):
    p = write_pickle(tmp_path / "m.pkl", tiny_flame_dict())
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(Edit3DGSError, match="m.pkl: expected a readable pickle"):
        load_flame_model(p)
    d = tiny_flame_dict()
    d["weights"] = d["weights"][:, :4]
    with pytest.raises(Edit3DGSError, match=r"weights of shape \(40,5\)"):
        load_flame_model(write_pickle(tmp_path / "w.pkl", d))


def _random_params(T, S, E, V=None, seed=0):
    rng = np.random.default_rng(seed)
    p = FlameParams.neutral(T, S, E)
    p.shape = rng.normal(0, 1, S).astype(np.float32)
    p.expr = rng.normal(0, 1, (T, E)).astype(np.float32)
    for k in ("rotation", "neck_pose", "jaw_pose", "translation"):
        setattr(p, k, rng.normal(0, 0.2, (T, 3)).astype(np.float32))
    p.eyes_pose = rng.normal(0, 0.2, (T, 6)).astype(np.float32)
    if V:
        p.static_offset = rng.normal(0, 0.01, (1, V, 3)).astype(np.float32)
    return p


def _smplx_reference(m, p):
    from smplx.lbs import lbs

    T = p.num_timesteps
    betas = torch.cat([torch.from_numpy(p.shape)[None].expand(T, -1), torch.from_numpy(p.expr)], 1)
    pose = torch.from_numpy(np.concatenate([p.rotation, p.neck_pose, p.jaw_pose, p.eyes_pose], 1))
    vt = torch.from_numpy(m.v_template)[None] + (torch.from_numpy(p.static_offset) if p.static_offset is not None else 0)
    sd = torch.from_numpy(m.shapedirs[:, :, : m.n_shape + m.n_expr])
    pd = torch.from_numpy(m.posedirs.reshape(-1, 36).T.copy())
    parents = torch.tensor([-1, 0, 1, 1, 1])
    v, _ = lbs(betas, pose, vt.expand(T, -1, -1), sd, pd, torch.from_numpy(m.J_regressor), parents,
               torch.from_numpy(m.weights))
    return v + torch.from_numpy(p.translation)[:, None]


def test_skinning_matches_smplx_lbs_on_a_random_model(tmp_path):
    m = load_flame_model(write_pickle(tmp_path / "m.pkl", tiny_flame_dict()))
    p = _random_params(3, 300, 100, V=m.n_verts)
    head = FlameHead(m)
    torch.testing.assert_close(head(p.to_torch()), _smplx_reference(m, p), atol=1e-5, rtol=1e-5)  # float32, two orders


def test_skinning_matches_smplx_lbs_on_the_builtin_head(tmp_path):
    from edit3dgs.headmodel import write_head_model

    pkl, masks = write_head_model(tmp_path)
    m = load_flame_model(pkl, masks)
    p = _random_params(2, m.n_shape, m.n_expr, V=m.n_verts, seed=3)
    head = FlameHead(m)
    torch.testing.assert_close(head(p.to_torch()), _smplx_reference(m, p), atol=1e-5, rtol=1e-5)  # float32, two orders
    assert "FLAME" not in m.name  # the built-in head never claims to be FLAME


def test_fewer_components_are_zero_padded(tmp_path):
    m = load_flame_model(write_pickle(tmp_path / "m.pkl", tiny_flame_dict()))
    head = FlameHead(m)
    p = _random_params(2, 300, 100)
    short = FlameParams(**{**p.as_dict(), "shape": p.shape[:50], "expr": p.expr[:, :10]})
    full = FlameParams(**{**p.as_dict(),
                          "shape": np.concatenate([p.shape[:50], np.zeros(250, np.float32)]),
                          "expr": np.concatenate([p.expr[:, :10], np.zeros((2, 90), np.float32)], 1)})
    torch.testing.assert_close(head(short.to_torch()), head(full.to_torch()))


def flame_topology_dict(seed=0):
    """FLAME's vertex/face counts with random values, to exercise the teeth."""
    d = tiny_flame_dict(V=FLAME_N_VERTS, F=FLAME_N_FACES, seed=seed, n_cols=400)
    d["J_regressor"] = sp.csc_matrix(d["J_regressor"])
    return d


def test_teeth_are_added_to_flame_topology(tmp_path):
    m = load_flame_model(write_pickle(tmp_path / "flame.pkl", flame_topology_dict()))
    t = add_teeth(m)
    assert (t.n_verts, t.n_faces) == (5143, 10144)
    tf = teeth_faces()
    assert tf.shape == (168, 3) and tf.min() == 0 and tf.max() == 119
    assert len({tuple(sorted(f)) for f in tf.tolist()}) == 168  # no duplicate triangles
    # upper teeth (rows 0,30,60,75) move with the neck, lower with the jaw
    w = t.weights[FLAME_N_VERTS:]
    assert (w[:15, 1] == 1).all() and (w[15:30, 2] == 1).all() and w.sum(1).tolist() == [1.0] * 120
    regions = face_regions(t.faces, t.masks, t.n_verts)
    np.testing.assert_array_equal(regions["teeth"], np.arange(FLAME_N_FACES, 10144))
    # jaw rotation moves the lower teeth only
    head = FlameHead(m)
    p = FlameParams.neutral(2)
    p.jaw_pose[1, 0] = 0.3
    v = head(p.to_torch())
    moved = (v[1] - v[0]).norm(dim=-1)[FLAME_N_VERTS:]
    assert moved[15:30].min() > 0 and moved[:15].max() == 0
