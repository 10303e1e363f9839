"""Capture cameras as Blender cameras (Blender cameras use OpenGL axes, like the transforms file)."""

from __future__ import annotations

import bpy
from mathutils import Matrix

from ..rigfile import RigFile, blender_camera

COLLECTION = "Key Views"


def build_cameras(rig: RigFile, name: str, parent_collection, root) -> bpy.types.Collection:
    coll = bpy.data.collections.new(f"{COLLECTION}" if COLLECTION not in bpy.data.collections else f"{COLLECTION} ({name})")
    parent_collection.children.link(coll)
    for i in range(len(rig["cam_index"])):
        idx = int(rig["cam_index"][i])
        bc = blender_camera(float(rig["cam_fx"][i]), float(rig["cam_fy"][i]), float(rig["cam_cx"][i]),
                            float(rig["cam_cy"][i]), int(rig["cam_w"][i]), int(rig["cam_h"][i]))
        cam = bpy.data.cameras.new(f"{name}_cam{idx:02d}")
        cam.sensor_fit, cam.sensor_width, cam.sensor_height = bc["sensor_fit"], bc["sensor_width"], bc["sensor_height"]
        cam.lens, cam.shift_x, cam.shift_y = bc["lens"], bc["shift_x"], bc["shift_y"]
        cam.clip_start, cam.clip_end = 0.01, 100.0
        obj = bpy.data.objects.new(f"{name}_cam{idx:02d}", cam)
        coll.objects.link(obj)
        obj.parent = root
        obj.matrix_basis = Matrix(rig["cam_c2w"][i].tolist())
        obj["edit3dgs_camera_index"] = idx
        obj["edit3dgs_resolution"] = list(bc["resolution"])
        obj["edit3dgs_pixel_aspect"] = list(bc["pixel_aspect"])
    return coll


def camera_for_backend(obj, root) -> dict:
    """A Blender camera as the backend's pinhole camera (OpenGL c2w in FLAME space, pixels)."""
    import numpy as np

    scene = bpy.context.scene
    w, h = obj.get("edit3dgs_resolution", (scene.render.resolution_x, scene.render.resolution_y))
    cam = obj.data
    size = max(w, h)
    fit = cam.sensor_fit if cam.sensor_fit != "AUTO" else ("HORIZONTAL" if w >= h else "VERTICAL")
    sensor = cam.sensor_width if fit == "HORIZONTAL" else cam.sensor_height
    f = cam.lens * size / sensor
    c2w = np.array(root.matrix_world.inverted() @ obj.matrix_world)
    return {"c2w": c2w.tolist(), "fx": f, "fy": f, "cx": w / 2.0 - cam.shift_x * size, "cy": h / 2.0 + cam.shift_y * size,
            "w": int(w), "h": int(h)}
