"""Import sets the scene up as the avatar was captured (active camera, resolution, frame rate) unless the
artist opts out; the shot does not take over F12 by default."""

from __future__ import annotations

import json

import bpy

from conftest import import_avatar


def test_import_sets_camera_resolution_and_fps(scene, ext, avatar_dir):
    frames = json.loads((avatar_dir / "cameras.json").read_text())["frames"]
    first = min(frames, key=lambda f: f["camera_index"])
    fps = json.loads((avatar_dir / "avatar.json").read_text())["fps"]
    scene.render.fps, scene.render.fps_base, scene.render.resolution_percentage = 60, 1.0, 50
    objs = import_avatar(avatar_dir)
    cam = scene.camera
    assert cam is not None and cam.parent == objs["root"]
    assert cam["edit3dgs_camera_index"] == first["camera_index"]
    r = scene.render
    assert (r.resolution_x, r.resolution_y, r.resolution_percentage) == (first["w"], first["h"], 100)
    assert abs(r.fps / r.fps_base - fps) < 1e-6
    # the Gaussians' colours are display colours: shown untouched (AgX, Blender's default, would tone-map them)
    assert scene.view_settings.view_transform == "Standard" and scene.view_settings.look == "None"
    assert "fps" in scene.edit3dgs.report and scene.edit3dgs.status == "IMPORTED"
    assert not scene.edit3dgs_shot.add_strip, "Load in Sequencer is off by default (it takes over F12)"


def test_import_can_leave_the_scene_alone(scene, ext, avatar_dir):
    mine = bpy.data.objects.new("my camera", bpy.data.cameras.new("my camera"))
    scene.collection.objects.link(mine)
    scene.camera = mine
    r = scene.render
    r.fps, r.fps_base, r.resolution_x, r.resolution_y = 60, 1.0, 1280, 720
    scene.view_settings.view_transform = "AgX"
    assert bpy.ops.edit3dgs.import_avatar(directory=str(avatar_dir), set_scene=False) == {"FINISHED"}
    assert scene.view_settings.view_transform == "AgX"
    assert scene.camera == mine and (r.fps, r.resolution_x, r.resolution_y) == (60, 1280, 720)
