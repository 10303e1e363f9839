"""Eye/mouth masks: FLAME regions rendered from the avatar, and Grounding DINO + SAM 2."""

from __future__ import annotations

import pytest
import torch

from edit3dgs.errors import Edit3DGSError
from edit3dgs.masks import combine_region_masks, detect_boxes, detect_region_masks, render_region_masks

EYE_MOUTH = ["eye_region", "eyes", "lips"]


def test_flame_region_masks_cover_eyes_and_mouth(builtin_avatar_dir):
    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import load_cameras
    from edit3dgs.render_avatar import render_frames

    b = open_avatar(builtin_avatar_dir)
    cams = [c.scaled(0.2) for c in load_cameras(builtin_avatar_dir / "cameras.json") if c.index in (5, 8)]
    verts = b.pose(timesteps=[3])
    soft = render_region_masks(b, verts, cams, EYE_MOUTH)
    ours = combine_region_masks(soft, EYE_MOUTH, ()) > 0.5

    # Reference: each Gaussian's label (1 eyes, 2 mouth, 3 anything else) rendered one-hot;
    # a covered pixel belongs to the label with the largest rendered weight.
    labels = b.gaussian_labels(["eye_region", "eyes", "lips"])
    lab3 = torch.full_like(labels, 2)
    lab3[(labels == 1) | (labels == 2)] = 0
    lab3[labels == 3] = 1
    cols = torch.nn.functional.one_hot(lab3, 3).float()
    (res,) = render_frames(b, verts, cams, (0.0, 0.0, 0.0), colors=cols)
    ref = (res.rgb.argmax(-1) < 2) & (res.alpha[..., 0] > 0.5)
    inter, union = (ours & ref).sum().item(), (ours | ref).sum().item()
    assert ref.sum() > 50                       # the eyes and mouth are visible in these views
    assert inter / union >= 0.9, inter / union


def test_one_region_mask_renderer_serves_loop_server_and_demo(builtin_avatar_dir, tmp_path):
    """render_region_masks is the one renderer: exclusive (the loop's: a Gaussian counts for its first
    region), unions (the demo's region weight) and the server's PNG are all its masks."""
    import numpy as np
    from PIL import Image

    from edit3dgs.bundle import open_avatar
    from edit3dgs.cameras import load_cameras
    from edit3dgs.demo import region_weight
    from edit3dgs.server import Server
    from edit3dgs.images import to_uint8

    b = open_avatar(builtin_avatar_dir)
    cams = [c.scaled(0.15) for c in load_cameras(builtin_avatar_dir / "cameras.json") if c.index in (5, 8)]
    verts = b.pose(timesteps=[1, 3])
    full = render_region_masks(b, verts, cams, ["skin", "nose", "hair", "lips"])
    assert all(m.shape == (4, *m.shape[1:]) for m in full.values()) and float(full["nose"].sum()) > 1
    first = render_region_masks(b, verts, cams, ["skin", "nose", "hair", "lips"], exclusive=True)
    assert float(first["nose"].abs().max()) == 0.0                  # the nose is skin: it counts for skin
    assert torch.equal(first["skin"], full["skin"]) and torch.equal(first["lips"], full["lips"])
    union = render_region_masks(b, verts, cams, {"edit": ["hair", "lips"]})["edit"]
    torch.testing.assert_close(union, full["hair"] + full["lips"], atol=1e-5, rtol=0)  # disjoint regions add up
    assert torch.equal(region_weight(b, b.gaussians, b.params, [1, 3], cams, ["hair", "lips"]), union)

    class Channel:
        def send(self, *message):
            pass

    c = cams[1]
    cam = {"w": c.width, "h": c.height, "fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy, "c2w": c.c2w.tolist()}
    out = tmp_path / "masks.png"
    Server(Channel(), device="cpu").job_region_masks("j", {"avatar": str(builtin_avatar_dir), "camera": cam,
                                                           "regions": ["hair", "lips"], "out": str(out), "timestep": 3})
    png = np.asarray(Image.open(out))
    mine = render_region_masks(b, b.pose(timesteps=[3]), [c], ["hair", "lips"])
    assert np.array_equal(png[..., 0], to_uint8(mine["hair"][0])) and np.array_equal(png[..., 1], to_uint8(mine["lips"][0]))
    assert png[..., 2].max() == 0 and png[..., 0].max() > 200


def test_combine_reports_missing_regions():
    m = {"eyes": torch.zeros(1, 4, 4), "lips": torch.ones(1, 4, 4)}
    assert combine_region_masks(m, ["eyes", "mouth"], (1, 4, 4)).min() == 1.0   # "mouth" is "lips"
    with pytest.raises(Edit3DGSError):
        combine_region_masks(m, ["nose"], (1, 4, 4))


@pytest.fixture(scope="module")
def detector_dirs(tmp_path_factory):
    from tiny_models import build_tiny_grounding_dino, build_tiny_sam2

    root = tmp_path_factory.mktemp("detector")
    return build_tiny_grounding_dino(root / "gdino"), build_tiny_sam2(root / "sam2")


def test_grounding_dino_and_sam2_end_to_end(detector_dirs):
    gd, sam = detector_dirs
    imgs = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    dets = detect_boxes(imgs, ["eyes", "mouth"], str(gd), box_threshold=0.0, text_threshold=0.0)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4
    masks = detect_region_masks(imgs, str(gd), str(sam), ["eyes", "mouth"], box_threshold=0.0, text_threshold=0.0)
    assert masks.shape == (2, 48, 40) and set(masks.unique().tolist()) <= {0.0, 1.0} and masks.sum() > 0
    # Nothing passes a threshold above every score: empty masks, no SAM call needed.
    none = detect_region_masks(imgs, str(gd), str(sam), box_threshold=1.01)
    assert none.shape == (2, 48, 40) and none.sum() == 0


def test_missing_detector_weights_are_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for kw, flag in ((dict(detector_model=str(tmp_path / "empty")), "--detector-model"),
                     (dict(detector_model=str(tmp_path / "nowhere")), "")):
        with pytest.raises(Edit3DGSError) as e:
            detect_region_masks(torch.rand(1, 8, 8, 3), **kw)
        assert "\n" not in str(e.value) and flag in str(e.value)
