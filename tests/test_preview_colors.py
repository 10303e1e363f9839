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
    sh[:5, 0], sh[5:10, 0] = 4.0, -4.0               # base colours out of range (1.63, -0.63)
    means = rng.normal(0, 0.1, (n, 3)).astype(np.float32)
    eye = np.array([0.3, -0.2, 1.5], np.float32)
    want = sh_to_rgb(degree, torch.from_numpy(sh), torch.from_numpy(means - eye)).clamp(0, 1).numpy()
    base = sh[:, 0] * 0.28209479177387814 + 0.5      # the rig file's gs_base_color: not clamped
    assert (base > 1).any() and (base < 0).any()     # (some colours out of range, where clamping first differs)
    got = view_colors(base, sh[:, 1:], means, eye)
    assert np.abs(got - want).max() < 1e-5


def test_srgb_to_linear():
    c = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    assert np.allclose(srgb_to_linear(c), [0.0, 0.04045 / 12.92, 0.21404114, 1.0], atol=1e-6)


def test_rig_file_carries_the_unclamped_base_colour(tmp_path):
    """The preview adds the SH bands to the DC colour before clamping, as the renderer does: the rig file
    carries that colour unclamped (gs_base_color) beside the clamped display colour (gs_color)."""
    from edit3dgs.builtin import make_avatar
    from edit3dgs.bundle import open_avatar
    from edit3dgs.rig_export import gaussian_arrays

    b = open_avatar(make_avatar(tmp_path / "a", frames=2))
    g = b.gaussians.clone()
    g.features_dc[:10] = 3.0                       # base colour 1.35: out of range
    g.features_dc[10:20] = -3.0                    # -0.35
    arr = gaussian_arrays(b, g)
    want = g.features_dc[:, 0].numpy() * 0.28209479177387814 + 0.5
    assert np.allclose(arr["gs_base_color"], want, atol=1e-6)
    assert arr["gs_color"].max() <= 1 and arr["gs_color"].min() >= 0


def test_gaussian_extent_is_the_renderers_cutoff():
    """The preview's spheres end where the backend stops drawing a Gaussian (alpha below 1/255)."""
    from edit3dgs.render import torch_raster
    from edit3dgs_addon import shcolor
    from edit3dgs_addon.shcolor import gaussian_extent

    assert shcolor.ALPHA_MIN == torch_raster.ALPHA_MIN and shcolor.EXTENT_MAX == torch_raster.EXTENT_MAX
    o = np.array([0.5 / 255, 1 / 255, 0.01, 0.3, 0.95, 0.999], np.float32)
    want = torch.sqrt(2.0 * torch.log(torch.from_numpy(o).clamp_min(torch_raster.ALPHA_MIN) / torch_raster.ALPHA_MIN))
    want = want.clamp(max=torch_raster.EXTENT_MAX).numpy()
    assert np.allclose(gaussian_extent(o), want, atol=1e-6)
    # beyond the extent the alpha is below 1/255 (up to the 3.33 cap)
    e = gaussian_extent(o)
    assert np.all(o * np.exp(-0.5 * e**2) <= shcolor.ALPHA_MIN * 1.0001)
