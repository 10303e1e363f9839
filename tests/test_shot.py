"""Backend side of a film shot: per-frame cameras and parameters -> straight-alpha RGBA PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit3dgs.bundle import open_avatar
from edit3dgs.cameras import camera_rig, save_cameras
from edit3dgs.errors import Edit3DGSError
from edit3dgs.flame_params import FlameParams
from edit3dgs.shot import deliver, load_shot, render_shot, straight_rgba
from edit3dgs.render_avatar import render_frames


def test_straight_alpha():
    a = torch.tensor([[[0.0], [0.5], [1.0]]])
    rgb = torch.tensor([[[0.0, 0.0, 0.0], [0.25, 0.1, 0.5], [0.2, 0.4, 0.6]]])
    out = straight_rgba(rgb, a)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 4)
    assert out[0, 0].tolist() == [0, 0, 0, 0]
    assert out[0, 1].tolist() == [128, 51, 255, 128]  # colour / alpha


def test_render_shot_matches_render_frames(builtin_avatar_dir, tmp_path):
    from PIL import Image

    b = open_avatar(builtin_avatar_dir, device="cpu")
    cams = [c.scaled(0.08) for c in camera_rig()[6:9]]
    cams = [type(c)(i, c.width, c.height, c.fx, c.fy, c.cx, c.cy, c.c2w) for i, c in enumerate(cams)]
    save_cameras(tmp_path / "shot.json", cams)
    params = b.params.select([0, 3, 5])
    params.save(tmp_path / "shot.npz")
    cams2, p2 = load_shot(tmp_path / "shot.json", tmp_path / "shot.npz", b)
    seen = []
    files = render_shot(b, cams2, p2, tmp_path / "frames", progress=lambda s, d, t: seen.append((d, t)))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"] and seen[-1] == (3, 3)
    verts = b.pose(params, [1])
    ref = next(render_frames(b, verts, [cams[1]], background=(1.0, 1.0, 1.0)))
    img = np.asarray(Image.open(files[1]), np.float32) / 255
    over = img[..., :3] * img[..., 3:] + 1 - img[..., 3:]
    mse = np.mean((over - ref.rgb[0].numpy()) ** 2)
    assert 10 * np.log10(1 / mse) > 40
    outs = deliver(files, [tmp_path / "out" / f"f{i}.png" for i in range(3)])
    assert all((tmp_path / "out" / f"f{i}.png").is_file() for i in range(3)) and len(outs) == 3


def test_shot_length_mismatch(builtin_avatar_dir, tmp_path):
    b = open_avatar(builtin_avatar_dir, device="cpu")
    save_cameras(tmp_path / "shot.json", camera_rig()[:2])
    FlameParams.neutral(3, shape=b.params.shape).save(tmp_path / "shot.npz")
    with pytest.raises(Edit3DGSError, match="expected 2 timesteps"):
        load_shot(tmp_path / "shot.json", tmp_path / "shot.npz", b)
