"""Import a FLAME motion onto the rig as keyframes; export the rig's animation as flame_param.npz."""

from __future__ import annotations

import os

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .. import motion as mo
from ..scene import motion as scene_motion
from .common import avatar_root, deny, fail, note, preview_object


def find_rig(context):
    """(root, armature, head) of the active avatar, or an error message."""
    prev = preview_object(context)
    root = avatar_root(prev) if prev is not None else None
    if root is None:
        return None, "no Gaussian avatar in the scene: import one first"
    arm, head = scene_motion.rig_objects(root)
    if arm is None or head is None or head.data.shape_keys is None:
        return None, f"the avatar '{root.name}' has no FLAME rig (armature and head with shape keys)"
    return (root, arm, head), ""


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


class EDIT3DGS_OT_import_motion(bpy.types.Operator):
    """Keyframe the avatar's rig from a FLAME motion (flame_param.npz or a GaussianAvatars dataset folder).
Another person's motion on this avatar is cross-identity reenactment: the avatar keeps its own shape"""

    bl_idname = "edit3dgs.import_motion"
    bl_label = "Import Motion"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Motion", subtype="FILE_PATH",
                             description="flame_param.npz, or a dataset folder with per-frame FLAME files")
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    frame_start: IntProperty(name="Start Frame", default=-1, description="First keyed frame (-1: the scene's start)")
    source_fps: FloatProperty(name="Source FPS", default=0.0, min=0.0,
                              description="Frame rate of the motion; 0: the avatar's (its avatar.json), else the "
                                          "scene's; resampled to the scene's frame rate")
    split: EnumProperty(name="Split", description="Which frames of a dataset folder to read",
                        items=[("all", "All", "Every split (transforms_{train,val,test}.json), frame t = timestep_index t, "
                                              "as the backend reads a dataset")]
                        + [(s, s, f"Only transforms_{s}.json, its timesteps in order") for s in ("train", "val", "test")],
                        default="all")
    set_range: BoolProperty(name="Set Scene Range", default=True, description="Make the scene's frame range the motion's")

    @classmethod
    def poll(cls, context):
        found, why = find_rig(context)
        return True if found is not None else deny(cls, why[0].upper() + why[1:])

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        found, msg = find_rig(context)
        if found is None:
            return self._fail(context, msg)
        root, arm, head = found
        path = bpy.path.abspath(self.filepath)
        if path.endswith(("/", "\\")) and not os.path.isdir(path):
            path = path.rstrip("/\\")
        n_expr = scene_motion.n_expr_keys(head)
        scene = context.scene
        try:
            read = []
            motion = mo.load_motion(path, n_expr=n_expr, split=self.split, report=read.append)
            fps = scene_fps(scene)
            # the motion's rate: the one given, else the avatar's sequence's (a flame_param.npz has none)
            src = self.source_fps if self.source_fps > 0 else float(root.get("edit3dgs_fps", 0.0))
            if src > 0 and abs(src - fps) > 1e-6:
                motion = mo.resample(motion, src, fps)
        except mo.MotionError as exc:  # validated before anything is keyed
            return self._fail(context, str(exc))
        start = scene.frame_start if self.frame_start < 0 else self.frame_start
        T, n_curves = scene_motion.key_motion(arm, head, motion, start)
        if self.set_range:
            scene.frame_start, scene.frame_end = start, start + T - 1
        scene.frame_set(scene.frame_current)
        cross = ""
        try:
            ident = mo.avatar_identity(root.get("edit3dgs_avatar", ""))
            if "shape" in motion:
                a, b = ident["shape"], motion["shape"]
                n = min(len(a), len(b))
                if np.abs(a[:n] - b[:n]).max(initial=0.0) > 1e-6 or np.abs(b[n:]).max(initial=0.0) > 1e-6:
                    cross = "; cross-identity: the motion's own shape is not used, the avatar keeps its identity"
        except mo.MotionError:
            pass
        rate = f", resampled {src:g} -> {fps:g} fps" if src > 0 and abs(src - fps) > 1e-6 else ""
        src_note = f"; {read[0]}" if read else ""
        msg = f"Motion: {T} frames keyed from frame {start} ({n_curves} F-curves{rate}){src_note}{cross}"
        note(context, msg, "IMPORTED")
        self.report({"INFO"}, msg)
        return {"FINISHED"}

    def _fail(self, context, msg):
        return fail(self, context, f"Motion not imported: {msg}")


class EDIT3DGS_OT_export_motion(bpy.types.Operator):
    """Write the rig's animation (hand keyframes included) over the scene's frame range as flame_param.npz"""

    bl_idname = "edit3dgs.export_motion"
    bl_label = "Export Motion"

    filepath: StringProperty(name="File", subtype="FILE_PATH", default="//flame_param.npz",
                             description="The flame_param.npz to write")
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    check_existing: BoolProperty(default=True, options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        found, why = find_rig(context)
        return True if found is not None else deny(cls, why[0].upper() + why[1:])

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        found, msg = find_rig(context)
        if found is None:
            self.report({"ERROR"}, f"Motion not exported: {msg}")
            return {"CANCELLED"}
        root, arm, head = found
        scene = context.scene
        frames = np.arange(scene.frame_start, scene.frame_end + 1)
        path = bpy.path.abspath(self.filepath)
        if not path.lower().endswith(".npz"):
            path += ".npz"
        try:
            ident = mo.avatar_identity(root.get("edit3dgs_avatar", ""))
            motion = scene_motion.rig_motion(arm, head, frames)
            mo.save_motion(path, motion, ident)
        except (mo.MotionError, OSError) as exc:
            self.report({"ERROR"}, f"Motion not exported: {exc}")
            return {"CANCELLED"}
        msg = f"Motion: frames {frames[0]}-{frames[-1]} written to {path}"
        note(context, msg, "DONE")
        self.report({"INFO"}, msg)
        return {"FINISHED"}


CLASSES = (EDIT3DGS_OT_import_motion, EDIT3DGS_OT_export_motion)
