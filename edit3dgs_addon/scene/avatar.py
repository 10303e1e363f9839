"""One imported avatar: root empty (FLAME y-up -> Blender z-up), rig, preview, Key Views cameras."""

from __future__ import annotations

import math

import bpy
import numpy as np

from ..rigfile import RigFile
from . import cameras, preview, rig as rig_mod


def build_avatar(rig: RigFile, name: str, folder: str, scene) -> dict:
    """Create everything in a new collection; on any failure remove what was made and re-raise."""
    before = {attr: set(getattr(bpy.data, attr)) for attr in
              ("objects", "meshes", "armatures", "cameras", "collections", "node_groups", "materials")}
    try:
        # Bounding positions for the preview before Geometry Nodes runs: the bound faces' centres.
        f = rig["rig_faces"][rig["gs_binding"]]
        rig.data["faces_center"] = rig["rig_verts"][f].mean(1)
        coll = bpy.data.collections.new(name)
        scene.collection.children.link(coll)
        root = bpy.data.objects.new(name, None)
        root.empty_display_type, root.empty_display_size = "PLAIN_AXES", 0.1
        root.rotation_euler = (math.pi / 2, 0.0, 0.0)  # FLAME's y up -> Blender's z up
        coll.objects.link(root)
        arm_obj, mesh_obj = rig_mod.build_rig(rig, name, coll, root)
        prev = preview.build_preview(rig, name, coll, mesh_obj)
        prev.parent = root
        cams = cameras.build_cameras(rig, name, coll, root)
        if rig.meta.get("fps"):
            root["edit3dgs_fps"] = float(rig.meta["fps"])
        for o in (root, arm_obj, mesh_obj, prev):
            o["edit3dgs_avatar"] = folder
        root["edit3dgs_role"], arm_obj["edit3dgs_role"] = "root", "armature"
        mesh_obj["edit3dgs_role"], prev["edit3dgs_role"] = "head", "preview"
        prev["edit3dgs_expr_names"] = [str(n) for n in rig["expr_names"]]
        return {"root": root, "armature": arm_obj, "head": mesh_obj, "preview": prev, "cameras": cams,
                "collection": coll}
    except Exception:
        if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        for attr, old in before.items():
            coll_data = getattr(bpy.data, attr)
            for idb in [i for i in coll_data if i not in old]:
                coll_data.remove(idb)
        raise
    finally:
        rig.data.pop("faces_center", None)


def first_key_view(cams):
    """The Key Views camera with the lowest capture index (None: the avatar has no cameras)."""
    views = [o for o in cams.objects if "edit3dgs_camera_index" in o]
    return min(views, key=lambda o: int(o["edit3dgs_camera_index"]), default=None)


TRANSPARENT_BOUNCES = 256


def see_through_gaussians(scene) -> bool:
    """Raise Cycles' transparent bounces to ``TRANSPARENT_BOUNCES`` (never lower them): each Gaussian is a sphere
    that fades out (scene/preview.py), a ray through the head crosses hundreds, and at Cycles' default of 8 it
    stops early and the render comes out dark. True when it changed them."""
    cycles = getattr(scene, "cycles", None)
    if cycles is None or cycles.transparent_max_bounces >= TRANSPARENT_BOUNCES:
        return False
    cycles.transparent_max_bounces = TRANSPARENT_BOUNCES
    return True


def set_up_scene(scene, cams, fps: float | None) -> list[str]:
    """The scene as the avatar was captured: its first key view as the active camera, that camera's
    resolution and pixel aspect, the Standard view transform, enough transparent bounces for Cycles to see through
    the Gaussians, and the sequence's frame rate. Returns what changed, in words."""
    done = []
    cam = first_key_view(cams)
    if cam is not None:
        scene.camera = cam
        w, h = cam["edit3dgs_resolution"]
        r = scene.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = int(w), int(h), 100
        ax, ay = cam.get("edit3dgs_pixel_aspect", (1.0, 1.0))
        r.pixel_aspect_x, r.pixel_aspect_y = float(ax), float(ay)
        done.append(f"camera {cam.name}, {int(w)}x{int(h)}")
    vs = scene.view_settings
    if vs.view_transform != "Standard" or vs.look != "None":
        # The Gaussians' colours are display colours: the Standard view shows them as the backend renders them
        # (Filmic/AgX would tone-map them).
        vs.view_transform, vs.look = "Standard", "None"
        done.append("Standard view transform")
    if see_through_gaussians(scene):
        done.append(f"Cycles transparent bounces {TRANSPARENT_BOUNCES}")
    if fps:
        whole = max(1, round(fps))
        scene.render.fps, scene.render.fps_base = whole, whole / float(fps)  # 29.97: 30 / 1.001
        done.append(f"{fps:g} fps")
    return done
