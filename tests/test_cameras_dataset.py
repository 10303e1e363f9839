"""Cameras (OpenGL files <-> OpenCV renderer), the GaussianAvatars dataset layout, avatar folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_pickle
from test_flame import flame_topology_dict
from test_formats import random_avatar

from edit3dgs.bundle import open_avatar
from edit3dgs.cameras import Camera, camera_rig, load_cameras, look_at, save_cameras
from edit3dgs.dataset import load_capture, load_motion, write_capture
from edit3dgs.errors import Edit3DGSError
from edit3dgs.flame_params import FlameParams


def test_camera_projects_like_a_pinhole_with_principal_point():
    c2w = look_at([0, 0, 2.0], [0, 0, 0])
    cam = Camera(0, 100, 80, fx=50, fy=60, cx=40, cy=30, c2w=c2w)
    uv, z = cam.project(np.array([[0.0, 0, 0], [0.2, 0.1, 0]]))
    np.testing.assert_allclose(z, [2.0, 2.0])
    np.testing.assert_allclose(uv[0], [40, 30])  # the target lands on the principal point
    # world +x is image right, world +y (up) is image up = smaller v
    np.testing.assert_allclose(uv[1], [40 + 50 * 0.1, 30 - 60 * 0.05])


def test_rig_has_16_cameras_looking_at_the_head_with_frontal_camera_8():
    cams = camera_rig()
    assert len(cams) == 16 and {(c.width, c.height) for c in cams} == {(550, 802)}
    np.testing.assert_allclose(cams[8].forward, [0, 0, -1], atol=1e-9)  # frontal: looks at the face (+z)
    for c in cams:
        uv, z = c.project(np.array([[0.0, -0.02, 0.0]]))
        assert z[0] > 0 and abs(uv[0, 0] - 275) < 1 and abs(uv[0, 1] - 401) < 1


def test_cameras_json_round_trip_and_scaling(tmp_path):
    cams = camera_rig()
    save_cameras(tmp_path / "c.json", cams)
    back = load_cameras(tmp_path / "c.json")
    for a, b in zip(cams, back):
        np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-12)
        np.testing.assert_allclose(a.K, b.K)
    half = cams[3].scaled(0.5)
    p = np.array([[0.05, 0.02, 0.08]])
    np.testing.assert_allclose(half.project(p)[0], cams[3].project(p)[0] * 0.5, rtol=1e-3)


def test_dataset_layout_round_trip(tmp_path):
    cams = [c.scaled(0.05) for c in camera_rig()]
    p = FlameParams.neutral(4)
    p.expr[:, 0] = np.arange(4)
    p.jaw_pose[:, 0] = 0.1 * np.arange(4)

    def render(t, cs):
        return [(np.full((c.height, c.width, 3), t / 4.0), np.ones((c.height, c.width, 1))) for c in cs]

    write_capture(tmp_path / "subject", {"train": ([0, 1, 2, 3], cams[:8] + cams[9:]), "val": ([0, 2], cams[8:9])}, p, render)
    cap = load_capture(tmp_path / "subject", "train")
    assert cap.timesteps == [0, 1, 2, 3] and [c.index for c in cap.cameras] == [i for i in range(16) if i != 8]
    fr = cap.frames[5]
    assert fr.image.is_file() and fr.fg_mask.is_file() and fr.image.name == f"{fr.timestep:05d}_{fr.camera.index:02d}.png"
    np.testing.assert_allclose(cap.cameras[0].viewmat, cams[0].viewmat, atol=1e-9)
    motion = load_motion(tmp_path / "subject")
    np.testing.assert_array_equal(motion.expr, p.expr)
    np.testing.assert_array_equal(motion.jaw_pose, p.jaw_pose)
    val = load_capture(tmp_path / "subject", "val")
    assert [c.index for c in val.cameras] == [8] and val.timesteps == [0, 2]
    # the transforms file is also a cameras file for the CLI
    assert len(load_cameras(tmp_path / "subject" / "transforms_train.json")) == 15


@pytest.fixture(scope="module")
def flame_file(tmp_path_factory):
    return write_pickle(tmp_path_factory.mktemp("flame") / "generic_model.pkl", flame_topology_dict())


@pytest.mark.parametrize("n_faces,n_verts,label", [(9976, 5023, "FLAME without teeth (9976 faces)"),
                                                    (10144, 5143, "FLAME with teeth (10144 faces)")])
def test_gaussianavatars_folder_with_and_without_teeth(tmp_path, flame_file, n_faces, n_verts, label):
    d = tmp_path / "ga" / "point_cloud" / "iteration_30000"
    d.mkdir(parents=True)
    random_avatar(N=40, F=n_faces).save_ply(d / "point_cloud.ply")
    p = FlameParams.neutral(2)
    p.static_offset = np.zeros((1, n_verts, 3), np.float32)
    p.save(tmp_path / "ga" / "flame_param.npz")
    b = open_avatar(tmp_path / "ga", flame=flame_file)
    assert b.topology == label and b.head.n_faces == n_faces
    verts = b.pose(timesteps=[1])
    assert verts.shape == (1, n_verts, 3)


def test_avatar_needing_more_faces_is_refused_clearly(tmp_path, flame_file):
    d = tmp_path / "ga"
    d.mkdir()
    a = random_avatar(N=40, F=10144)
    a.binding[0] = 10144
    a.save_ply(d / "point_cloud.ply")
    FlameParams.neutral(2).save(d / "flame_param.npz")
    with pytest.raises(Edit3DGSError, match=r"face count 10144.*needs at least 10145 faces"):
        open_avatar(d, flame=flame_file)


def test_folder_without_head_model_asks_for_flame(tmp_path):
    d = tmp_path / "ga"
    d.mkdir()
    random_avatar().save_ply(d / "point_cloud.ply")
    FlameParams.neutral(1).save(d / "flame_param.npz")
    with pytest.raises(Edit3DGSError, match="--flame PATH"):
        open_avatar(d)
