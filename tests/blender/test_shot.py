"""Render a shot from a Blender camera through the real backend; camera conventions against Blender's own."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import bpy
import numpy as np
import pytest
from mathutils import Matrix, Vector

from conftest import EXT_MODULE, import_avatar, pump, world_positions
from edit3dgs_addon import shotcam

W, H = 40, 56  # portrait, small: quick on a CPU
STRIP = "Edit3DGS shot"


def ndc_pixels(scene, cam, p_world) -> np.ndarray:
    from bpy_extras.object_utils import world_to_camera_view

    r = scene.render
    w, h = shotcam.render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    ndc = world_to_camera_view(scene, cam, Vector(p_world))
    return np.array([ndc.x * w, (1.0 - ndc.y) * h])


def look_at_blender(eye, target=(0.0, 0.0, 0.0)) -> Matrix:
    """A Blender camera (looks down its -z, y up) at ``eye`` looking at ``target`` with world z up."""
    eye, target = Vector(eye), Vector(target)
    q = (target - eye).to_track_quat("-Z", "Y")
    return Matrix.Translation(eye) @ q.to_matrix().to_4x4()


def make_camera(scene, name, matrix, **data) -> bpy.types.Object:
    cam = bpy.data.cameras.new(name)
    for k, v in data.items():
        setattr(cam, k, v)
    obj = bpy.data.objects.new(name, cam)
    scene.collection.objects.link(obj)
    obj.matrix_world = matrix
    return obj


CASES = [
    dict(res=(640, 480, 100, 1.0, 1.0), cam=dict(lens=50.0, sensor_fit="AUTO")),
    dict(res=(480, 640, 50, 1.0, 1.0), cam=dict(lens=35.0, sensor_fit="AUTO", shift_x=0.1, shift_y=-0.05)),
    dict(res=(640, 480, 100, 1.0, 1.0), cam=dict(lens=70.0, sensor_fit="VERTICAL", sensor_height=20.0, shift_x=-0.08, shift_y=0.12)),
    dict(res=(400, 600, 75, 2.0, 1.0), cam=dict(lens=42.0, sensor_fit="HORIZONTAL", sensor_width=30.0, shift_y=0.07)),
    dict(res=(600, 400, 100, 1.0, 1.5), cam=dict(lens=55.0, sensor_fit="AUTO", shift_x=0.03)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_projection_matches_blender(scene, ext, case):
    """Our intrinsics/extrinsics put points where Blender's world_to_camera_view does (sensor fits, shift, aspect)."""
    c = CASES[case]
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y = c["res"]
    root = bpy.data.objects.new("root", None)
    scene.collection.objects.link(root)
    root.rotation_euler = (math.pi / 2, 0.0, 0.0)  # as an avatar's root (FLAME y-up)
    root.location = (0.1, -0.2, 0.05)
    cam = make_camera(scene, "cam", look_at_blender((0.7, -0.9, 0.3), (0.1, -0.2, 0.1)), **c["cam"])
    bpy.context.view_layer.update()
    w, h = shotcam.render_size(*c["res"][:3])
    d = cam.data
    K = shotcam.intrinsics(d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y, w, h,
                           r.pixel_aspect_x, r.pixel_aspect_y)
    c2w = shotcam.camera_in_frame(np.array(root.matrix_world), np.array(cam.matrix_world))
    rng = np.random.default_rng(case)
    pts_flame = rng.normal(0, 0.08, (6, 3))
    pts_flame[0] = 0  # the head centre
    ours = shotcam.project(c2w, K, pts_flame)
    for p, uv in zip(pts_flame, ours):
        want = ndc_pixels(scene, cam, root.matrix_world @ Vector(p))
        assert np.abs(uv - want).max() < 0.01, (case, uv, want)


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def read_png(path) -> np.ndarray:
    """(H,W,C) floats in [0,1], top row first, as stored (Blender reads byte PNGs without conversion)."""
    img = bpy.data.images.load(str(path))
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        assert img.channels == 4 and img.depth == 32, (img.channels, img.depth)  # RGBA, 8 bit
        return px.reshape(h, w, 4)[::-1]
    finally:
        bpy.data.images.remove(img)


def test_render_shot_side_view(scene, ext, avatar_dir, backend_py, tmp_path):
    objs = import_avatar(avatar_dir)
    motion = avatar_dir / "sequences" / "held_out.npz"
    assert bpy.ops.edit3dgs.import_motion(filepath=str(motion), frame_start=1) == {"FINISHED"}
    scene.frame_start, scene.frame_end = 1, 3
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = W * 2, H * 2, 50  # percentage counts
    r.filepath = str(tmp_path / "shot" / "frame_####")
    # A side camera: on the head's left (FLAME +x = Blender +X), portrait, vertical fit, shifted.
    root = objs["root"]
    eye = root.matrix_world @ Vector((0.9, 0.0, 0.0))
    cam = make_camera(scene, "shot", look_at_blender(eye, root.matrix_world @ Vector((0, 0, 0))), lens=60.0,
                      sensor_fit="VERTICAL", sensor_height=24.0, shift_x=0.05, shift_y=-0.03)
    scene.camera = cam
    assert not scene.edit3dgs_shot.add_strip, "Load in Sequencer is off by default (it takes over F12)"
    scene.edit3dgs_shot.add_strip = True
    strips_before = len(scene.sequence_editor.strips) if scene.sequence_editor else 0

    assert bpy.ops.edit3dgs.render_shot() == {"FINISHED"}  # returns at once
    s = scene.edit3dgs_shot
    assert s.running
    pump(ext, lambda: not s.running, timeout=120)
    assert s.status == "DONE", s.report
    files = [tmp_path / "shot" / f"frame_{f:04d}.png" for f in (1, 2, 3)]
    for f in files:
        img = read_png(f)
        assert img.shape == (H, W, 4), img.shape  # RGBA at the render size (percentage applied)
        a = img[..., 3]
        assert (a == 0).any() and (a > 0.9).any()
    strip = scene.sequence_editor.strips["Edit3DGS shot"]
    assert len(strip.elements) == 3 and strip.frame_final_start == 1
    assert len(scene.sequence_editor.strips) == strips_before + 1

    # The same frame from `edit3dgs render` with a camera written by hand from Blender's formulas
    # (vertical fit: viewfac = H; F = lens H / sensor_height; cx = W/2 - shift_x H; cy = H/2 + shift_y H)
    F = 60.0 * H / 24.0
    c2w = np.array(root.matrix_world.inverted() @ cam.matrix_world)
    frame = {"camera_index": 5, "w": W, "h": H, "fl_x": F, "fl_y": F, "cx": W / 2 - 0.05 * H, "cy": H / 2 - 0.03 * H,
             "transform_matrix": c2w.tolist()}
    (tmp_path / "cams.json").write_text(json.dumps({"camera_convention": "nerfstudio", "frames": [frame]}))
    out = tmp_path / "cli"
    res = subprocess.run([backend_py, "-m", "edit3dgs.cli", "render", "--avatar", str(avatar_dir), "--cameras",
                          str(tmp_path / "cams.json"), "--flame-params", str(motion), "--timesteps", "1",
                          "--background", "white", "--alpha", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    theirs = read_png(out / "00001_05.png")
    ours = read_png(files[1])
    over_white = ours[..., :3] * ours[..., 3:] + (1 - ours[..., 3:])
    p = psnr(over_white, theirs[..., :3])
    pa = psnr(ours[..., 3], theirs[..., 3])
    print(f"PSNR vs edit3dgs render: rgb {p:.1f} dB, alpha {pa:.1f} dB")
    assert p >= 40 and pa >= 40, (p, pa)

    # The side of the head: the head centre lands where Blender projects it (2 px), and the face
    # (nose) is seen in profile, on the image's left (the camera's right is the head's back, -z).
    scene.frame_set(2)
    K = {"fx": F, "fy": F, "cx": frame["cx"], "cy": frame["cy"]}
    centre = shotcam.project(c2w, K, np.zeros((1, 3)))[0]
    assert np.abs(centre - ndc_pixels(scene, cam, root.matrix_world @ Vector((0, 0, 0)))).max() < 2.0
    params = {k: np.load(motion)[k][1].tolist() for k in ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")}
    pos = world_positions(avatar_dir, params, tmp_path)
    prev = objs["preview"]
    region = np.empty(len(prev.data.vertices), np.int32)
    prev.data.attributes["gs_region"].data.foreach_get("value", region)
    names = list(prev.data["edit3dgs_regions"])
    nose = shotcam.project(c2w, K, pos[region == names.index("nose")].mean(0, keepdims=True))[0]
    ears = pos[region == names.index("ears")]
    left_ear = shotcam.project(c2w, K, ears[ears[:, 0] > 0].mean(0, keepdims=True))[0]
    assert nose[0] < left_ear[0] - 3, (nose, left_ear)  # face to the left of the ear
    alpha = ours[..., 3]
    for u, v in (nose, left_ear):
        assert alpha[int(v), int(u)] > 0.5, (u, v)


def test_render_shot_failure_leaves_scene(scene, ext, avatar_dir, tmp_path):
    """A failing backend job: clear report, no strip, no output frames."""
    objs = import_avatar(avatar_dir)
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 32, 100
    scene.render.filepath = str(tmp_path / "out" / "f_")
    shot = sys.modules[EXT_MODULE + ".operators.shot"]
    mo = sys.modules[EXT_MODULE + ".motion"]
    real = mo.save_motion

    def broken(path, motion, identity):  # a shot whose parameters the backend cannot read
        real(path, {k: v[:1] for k, v in motion.items()}, identity)
        return path

    shot.mo.save_motion = broken
    try:
        assert bpy.ops.edit3dgs.render_shot() == {"FINISHED"}
    finally:
        shot.mo.save_motion = real
    s = scene.edit3dgs_shot
    pump(ext, lambda: not s.running, timeout=60)
    assert s.status == "FAILED" and "expected 2 timesteps" in s.report, s.report
    assert scene.sequence_editor is None or STRIP not in scene.sequence_editor.strips
    assert not (tmp_path / "out").exists()


def test_render_shot_cancel(scene, ext, avatar_dir, tmp_path):
    """Cancel mid-shot: ends within the bridge's 2 s (a frame that renders longer gets the backend ended),
    nothing in the output path, no strip."""
    import time

    import_avatar(avatar_dir)
    scene.frame_start, scene.frame_end = 1, 200
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 64, 100
    scene.render.filepath = str(tmp_path / "out" / "f_")
    shot = sys.modules[EXT_MODULE + ".operators.shot"]
    assert bpy.ops.edit3dgs.render_shot() == {"FINISHED"}
    s = scene.edit3dgs_shot
    pump(ext, lambda: shot.state.job is not None and shot.state.job.stage == "render", timeout=60, step=0.02)
    t0 = time.monotonic()
    assert bpy.ops.edit3dgs.cancel_shot() == {"FINISHED"}
    pump(ext, lambda: not s.running, timeout=10, step=0.02)
    assert time.monotonic() - t0 < 2.6  # 2 s cancel timeout + ending the process, worst case
    assert s.status == "CANCELLED", s.report
    assert not (tmp_path / "out").exists()
    assert scene.sequence_editor is None or STRIP not in scene.sequence_editor.strips


def test_frame_paths_follow_blender():
    assert shotcam.frame_paths("/r/shot_", [1, 12]) == ["/r/shot_0001.png", "/r/shot_0012.png"]
    assert shotcam.frame_paths("/r/", [3]) == ["/r/0003.png"]
    assert shotcam.frame_paths("/r/f_##_x", [7]) == ["/r/f_07_x.png"]
    assert shotcam.frame_paths("/r/a#/f_###.png", [5]) == ["/r/a#/f_005.png"]
    assert shotcam.render_size(1920, 1080, 50) == (960, 540) and shotcam.render_size(101, 33, 50) == (50, 16)
