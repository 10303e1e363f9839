"""Blender's preview colours (edit3dgs_addon/shcolor.py, numpy only) are the backend renderer's: the SH
bands evaluated toward a camera as backend/edit3dgs/render/sh.py does, then sRGB -> scene-linear."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edit3dgs.render.sh import sh_to_rgb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edit3dgs_addon.shcolor import srgb_to_linear, view_colors  # noqa: E402


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_view_colors_are_the_renderers(degree):
    rng = np.random.default_rng(degree)
    n, k = 500, (degree + 1) ** 2
    sh = rng.normal(0, 0.6, (n, k, 3)).astype(np.float32)
    means = rng.normal(0, 0.1, (n, 3)).astype(np.float32)
    eye = np.array([0.3, -0.2, 1.5], np.float32)
    want = sh_to_rgb(degree, torch.from_numpy(sh), torch.from_numpy(means - eye)).clamp(0, 1).numpy()
    dc = np.clip(sh[:, 0] * 0.28209479177387814 + 0.5, 0, 1)
    ok = (sh[:, 0] * 0.28209479177387814 + 0.5 >= 0).all(1) & (sh[:, 0] * 0.28209479177387814 + 0.5 <= 1).all(1)
    got = view_colors(dc, sh[:, 1:], means, eye)
    assert np.abs(got[ok] - want[ok]).max() < 1e-5  # (the rig file's DC colour is clamped, as exported)


def test_srgb_to_linear():
    c = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    assert np.allclose(srgb_to_linear(c), [0.0, 0.04045 / 12.92, 0.21404114, 1.0], atol=1e-6)
