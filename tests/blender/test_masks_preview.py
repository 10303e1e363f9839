"""'Preview masks': the backend renders the regions to preserve from the active key view into an image."""

from __future__ import annotations

import bpy
import numpy as np

from conftest import import_avatar, pump


def test_preview_masks_shows_eyes_and_mouth_of_the_active_key_view(scene, ext, avatar_dir):
    import_avatar(avatar_dir)
    cam = next(o for o in bpy.data.objects if o.type == "CAMERA" and o.name.endswith("cam08"))  # frontal
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 110, 160, 100
    s = scene.edit3dgs
    s.preserve_eyes, s.preserve_mouth, s.local_regions = True, True, set()
    assert bpy.ops.edit3dgs.preview_masks() == {"FINISHED"}  # returns at once; the backend renders
    pump(ext, lambda: "Masks of" in s.report or "failed" in s.report, timeout=120)
    assert "Masks of eyes, lips" in s.report, s.report
    img = bpy.data.images["Edit3DGS masks"]
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(h, w, 4)[::-1]  # Blender stores rows bottom-up
    eyes, mouth = px[..., 0] > 0.5, px[..., 1] > 0.5
    assert eyes.sum() > 4 and mouth.sum() > 4, "both regions are visible from the front"
    ey, my = np.nonzero(eyes)[0].mean(), np.nonzero(mouth)[0].mean()
    assert ey < my, "the eyes are above the mouth"
    ex = np.nonzero(eyes)[1]
    assert ex.min() < w / 2 < ex.max(), "two eyes, either side of the middle"
    assert (eyes & mouth).sum() == 0
