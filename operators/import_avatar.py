"""File > Import > Gaussian Head Avatar: the backend writes the rig file, Blender builds the scene."""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .. import runtime
from ..bridge import BridgeError
from ..rigfile import RigFileError, load
from ..scene.avatar import build_avatar, set_up_scene
from .common import deny, fail, note


class EDIT3DGS_OT_import_avatar(bpy.types.Operator):
    """Import a GaussianAvatars folder: FLAME rig, Gaussian preview that follows it, Key Views cameras"""

    bl_idname = "edit3dgs.import_avatar"
    bl_label = "Import Gaussian Avatar"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Avatar Folder", subtype="DIR_PATH",
                              description="A GaussianAvatars folder (point_cloud.ply, flame_param.npz)")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    name: StringProperty(name="Name", default="", description="Name of the new objects (default: the folder's)")
    set_scene: BoolProperty(name="Set Up Scene", default=True,
                            description="Make the avatar's first key view the active camera, take the scene's "
                                        "resolution and frame rate from the avatar's cameras and sequence, and use "
                                        "the Standard view transform (the Gaussians' colours are display colours)")
    timeout: FloatProperty(name="Timeout (s)", default=300.0, min=1.0, options={"HIDDEN"},
                           description="How long a script waits for the backend to read the avatar")

    _job = None
    _timer = None

    @classmethod
    def poll(cls, context):
        if context.scene is None:
            return deny(cls, "Needs a scene to import into")
        return True

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        folder = bpy.path.abspath(self.directory).rstrip("/\\") if self.directory else ""
        if not folder or not os.path.isdir(folder):
            return self._fail(context, f"{folder or '(none)'}: expected an avatar folder, found no such folder")
        out = runtime.job_folder("import", folder) / "rig.npz"
        try:
            self._job = runtime.submit("export_rig", {"avatar": folder, "out": str(out)})
        except BridgeError as exc:
            return self._fail(context, str(exc))
        self._folder = folder
        if context.window is None or bpy.app.background:
            # Scripts and background mode: no event loop to return to, so wait here.
            runtime.backend().wait(self._job, self.timeout)
            return self._finish(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        context.workspace.status_text_set("Edit3DGS: reading the avatar… (Esc to cancel)")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            runtime.backend().cancel(self._job)
        if event.type == "TIMER":
            runtime.backend().poll()
            if self._job.finished:
                context.window_manager.event_timer_remove(self._timer)
                context.workspace.status_text_set(None)
                return self._finish(context)
        return {"PASS_THROUGH"}

    def _fail(self, context, msg):
        return fail(self, context, f"Import failed: {msg}")

    def _finish(self, context):
        job = self._job
        if job.state != "done":
            return self._fail(context, job.error or job.state)
        try:
            rig = load(job.result["npz"])
        except RigFileError as exc:
            return self._fail(context, str(exc))
        name = self.name or Path(self._folder).name or "avatar"
        objs = build_avatar(rig, name, self._folder, context.scene)
        prev = objs["preview"]
        v = prev.edit3dgs.versions.add()
        v.name, v.folder, v.npz, v.prompt, v.editor = "original", self._folder, str(rig.path), "", ""
        prev.edit3dgs.version_index = prev.edit3dgs.applied = 0
        for o in context.view_layer.objects:
            o.select_set(False)
        prev.select_set(True)
        context.view_layer.objects.active = prev
        msg = (f"Imported {rig.n_gaussians} Gaussians on {rig.meta.get('topology', 'the head')}, "
               f"{len(objs['cameras'].objects)} key views")
        if self.set_scene:
            changed = set_up_scene(context.scene, objs["cameras"], rig.meta.get("fps"))
            if changed:
                msg += "; scene: " + ", ".join(changed)
        note(context, msg, "IMPORTED")
        self.report({"INFO"}, msg)
        return {"FINISHED"}


CLASSES = (EDIT3DGS_OT_import_avatar,)
