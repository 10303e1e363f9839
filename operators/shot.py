"""Render the shot: bake the active camera and the rig per frame, splat-render in the backend, load the strip.

The operator bakes on the main thread (a frame_set per frame for the camera, F-curve
evaluation for the rig), sends a ``render_shot`` job and returns; the bridge's timer
(runtime.drain) hands progress and the result back. Nothing in the scene changes
until the shot is finished: then the PNG sequence is in the output path and an image
strip shows it in the sequencer.
"""

from __future__ import annotations

import os
from functools import partial

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .. import motion as mo
from .. import runtime, shotcam
from ..bridge import BridgeError
from ..scene import motion as scene_motion
from .common import deny, preview_object
from .motion import find_rig

STRIP_NAME = "Edit3DGS shot"


class Edit3DGSShotSettings(bpy.types.PropertyGroup):
    status: StringProperty(name="Status", default="", description="State of the last shot (its report's icon)")
    stage: StringProperty(name="Stage", default="", description="What the running shot is doing")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, description="How far the shot is")
    report: StringProperty(name="Report", default="", description="The last report of the shot")
    running: BoolProperty(name="Running", default=False, description="A shot is rendering in the backend")
    add_strip: BoolProperty(name="Load in Sequencer", default=False,
                            description="Show the rendered frames as an image strip in the sequencer. Careful: with "
                                        "strips in the sequencer, Blender's own render (F12) renders the sequencer, "
                                        "not the 3D scene")


class _State:
    job = None


state = _State()


def _shot_note(scene, text: str, status: str = "INFO") -> None:
    s = scene.edit3dgs_shot
    s.report = text
    s.status = status  # always: the icon is this report's
    print(f"Edit3DGS: {text}")


def bake(scene, cam_obj, root, arm, head, frames) -> tuple[list[dict], dict]:
    """Per frame: the camera (transforms entry, FLAME space) and the rig's FLAME parameters."""
    r = scene.render
    w, h = shotcam.render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    entries = []
    current = scene.frame_current
    try:
        for i, f in enumerate(frames):
            scene.frame_set(int(f))  # the camera (and its parents, constraints, lens) may be animated
            cam = cam_obj.data
            K = shotcam.intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit, cam.shift_x,
                                   cam.shift_y, w, h, r.pixel_aspect_x, r.pixel_aspect_y)
            c2w = shotcam.camera_in_frame(np.array(root.matrix_world), np.array(cam_obj.matrix_world))
            entries.append(shotcam.frame_entry(i, c2w, K) | {"scene_frame": int(f)})
    finally:
        scene.frame_set(current)
    return entries, scene_motion.rig_motion(arm, head, np.asarray(frames))


def _shot_finished(scene_name: str, frames: list[int], job) -> None:
    state.job = None
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    s = scene.edit3dgs_shot
    s.running = False
    if job.state == "done":
        files = job.result.get("files", [])
        if s.add_strip and files:
            try:
                add_strip(scene, files, frames[0])
            except (RuntimeError, OSError) as exc:
                _shot_note(scene, f"Shot rendered to {os.path.dirname(files[0])}, but the strip failed: {exc}", "DONE")
                return
        s.progress, s.stage = 1.0, "done"
        _shot_note(scene, f"Shot: {len(files)} frames ({job.result.get('device', '?')}) in "
                          f"{os.path.dirname(files[0]) if files else '?'}", "DONE")
    elif job.state == "cancelled":
        s.stage = ""
        _shot_note(scene, "Shot cancelled; nothing was written to the output path", "CANCELLED")
    else:
        s.stage = ""
        _shot_note(scene, f"Shot failed: {job.error}", "FAILED")


def add_strip(scene, files: list[str], frame_start: int):
    """The frames as one image strip (replacing an earlier shot's strip)."""
    sed = scene.sequence_editor or scene.sequence_editor_create()
    strips = sed.strips if hasattr(sed, "strips") else sed.sequences
    channel = None
    old = strips.get(STRIP_NAME)
    if old is not None:
        channel = old.channel
        strips.remove(old)
    if channel is None:
        every = sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all
        channel = max((st.channel for st in every), default=0) + 1
    st = strips.new_image(name=STRIP_NAME, filepath=files[0], channel=channel, frame_start=int(frame_start))
    for f in files[1:]:
        st.elements.append(os.path.basename(f))
    st.blend_type = "ALPHA_OVER"
    return st


def _progress_timer():
    job = state.job
    if job is None:
        return None
    scene = bpy.context.scene
    s = getattr(scene, "edit3dgs_shot", None)
    if s is not None and not job.finished:
        s.stage = job.progress_text()
        s.progress = job.factor
    return 0.1


class EDIT3DGS_OT_render_shot(bpy.types.Operator):
    """Render the scene's frame range from the active camera with Gaussian splatting (in the backend),
to an RGBA PNG sequence in the output path, shown as a strip in the sequencer"""

    bl_idname = "edit3dgs.render_shot"
    bl_label = "Render Shot"

    @classmethod
    def poll(cls, context):
        if state.job is not None and not state.job.finished:
            return deny(cls, "A shot is rendering: cancel it first")
        found, why = find_rig(context)
        if found is None:
            return deny(cls, why[0].upper() + why[1:])
        cam = context.scene.camera
        if cam is None or cam.type != "CAMERA":
            return deny(cls, "Set the scene's active camera")
        if cam.data.type != "PERSP":
            return deny(cls, f"The camera '{cam.name}' is {cam.data.type.lower()}: use a perspective camera")
        return True

    def execute(self, context):
        scene = context.scene
        if state.job is not None and not state.job.finished:
            return self._fail(context, "a shot is already rendering (cancel it first)")
        found, msg = find_rig(context)
        if found is None:
            return self._fail(context, msg)
        root, arm, head = found
        cam = scene.camera
        if cam is None or cam.type != "CAMERA":
            return self._fail(context, "the scene has no active camera")
        if cam.data.type != "PERSP":
            return self._fail(context, f"the camera '{cam.name}' is {cam.data.type.lower()}: expected a perspective camera")
        prev = preview_object(context)
        h = prev.edit3dgs
        folder = h.versions[h.applied].folder if 0 <= h.applied < len(h.versions) else root.get("edit3dgs_avatar", "")
        if not folder or not os.path.isdir(folder):
            return self._fail(context, f"the avatar folder {folder or '?'} is missing")
        frames = list(range(scene.frame_start, scene.frame_end + 1))
        if not frames:
            return self._fail(context, "the scene's frame range is empty")
        outputs = shotcam.frame_paths(bpy.path.abspath(scene.render.filepath), frames)
        try:
            ident = mo.avatar_identity(folder)
            entries, motion = bake(scene, cam, root, arm, head, frames)
        except (mo.MotionError, ValueError) as exc:
            return self._fail(context, str(exc))
        jd = runtime.job_folder("shot", folder)
        cams_path = shotcam.write_transforms(jd / "shot_cameras.json", entries, camera=cam.name)
        params_path = mo.save_motion(jd / "shot_flame_param.npz", motion, ident)
        args = {"avatar": folder, "cameras": str(cams_path), "flame_params": str(params_path),
                "work_dir": str(jd), "outputs": outputs}
        try:
            job = runtime.submit("render_shot", args, on_finish=partial(_shot_finished, scene.name, frames))
        except BridgeError as exc:
            return self._fail(context, str(exc))
        state.job = job
        s = scene.edit3dgs_shot
        s.running, s.status, s.progress, s.stage = True, "RUNNING", 0.0, "starting"
        _shot_note(scene, f"Rendering {len(frames)} frames from '{cam.name}' "
                          f"({entries[0]['w']}x{entries[0]['h']}) to {os.path.dirname(outputs[0])}")
        if not bpy.app.timers.is_registered(_progress_timer):
            bpy.app.timers.register(_progress_timer, first_interval=0.1)
        return {"FINISHED"}

    def _fail(self, context, msg):
        _shot_note(context.scene, f"Shot not started: {msg}", "FAILED")
        self.report({"ERROR"}, f"Shot not started: {msg}")
        return {"CANCELLED"}


class EDIT3DGS_OT_cancel_shot(bpy.types.Operator):
    """Stop rendering the shot (the output path is left as it was)"""

    bl_idname = "edit3dgs.cancel_shot"
    bl_label = "Cancel Shot"

    @classmethod
    def poll(cls, context):
        if state.job is None or state.job.finished:
            return deny(cls, "No shot is rendering")
        return True

    def execute(self, context):
        job = state.job
        if job is None or job.finished or runtime.state.backend is None:
            self.report({"WARNING"}, "No shot is rendering")
            return {"CANCELLED"}
        runtime.state.backend.cancel(job)
        runtime.ensure_timer()
        _shot_note(context.scene, "Cancelling the shot…", "RUNNING")
        return {"FINISHED"}


CLASSES = (EDIT3DGS_OT_render_shot, EDIT3DGS_OT_cancel_shot)


def register():
    bpy.utils.register_class(Edit3DGSShotSettings)
    bpy.types.Scene.edit3dgs_shot = bpy.props.PointerProperty(type=Edit3DGSShotSettings)


def unregister():
    if bpy.app.timers.is_registered(_progress_timer):
        bpy.app.timers.unregister(_progress_timer)
    state.job = None
    del bpy.types.Scene.edit3dgs_shot
    bpy.utils.unregister_class(Edit3DGSShotSettings)
