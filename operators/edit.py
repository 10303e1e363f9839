"""Run / cancel an edit, apply versions from the history, compare, preview masks."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty

from .. import runtime, versions
from ..bridge import BridgeError
from ..jobargs import edit_settings, parse_names
from ..overall import Overall
from ..rigfile import RigFileError, load
from ..scene import preview as preview_mod
from ..scene.avatar import see_through_gaussians
from ..scene.cameras import camera_for_backend
from .common import avatar_root, deny, fail, has_versions, note, preview_object

UI_KEYS = ("prompt", "editor", "steps", "guidance_text", "guidance_image", "rounds", "iters_per_batch",
           "views_per_iter", "scale", "seed", "timesteps", "num_timesteps", "use_frame_range", "frame_start",
           "frame_end", "frame_step", "preserve_eyes", "preserve_mouth", "mask_source", "mask_text", "mask_dilation",
           "mask_strength", "local_regions", "temporal_keys", "ip2p_model")


def panel_values(s) -> dict:
    """The panel values the artist set (a property never touched is left out: the backend decides it)."""
    ui = {k: getattr(s, k) for k in UI_KEYS if s.is_property_set(k)}
    ui["prompt"] = s.prompt
    return ui


def job_settings(context, prev) -> dict:
    """The ``settings`` of the edit job the panel would start now (see jobargs.edit_settings)."""
    p = runtime.prefs()
    prefs = {"device": p.device, "editor_model": p.editor_model, "detector_model": p.detector_model,
             "sam_model": p.sam_model, "compile_unet": p.compile_unet} if p else {}
    ui = panel_values(context.scene.edit3dgs)
    ui["cameras"] = _key_view_indices(context, prev)
    return edit_settings(ui, prefs)


def _key_view_indices(context, prev) -> list[int] | None:
    """Selected Key Views cameras of this avatar (None: the backend's training cameras)."""
    s = context.scene.edit3dgs
    if s.use_all_cameras:
        return None
    root = avatar_root(prev)
    cams = [o for o in (root.children if root else ()) if o.type == "CAMERA" and "edit3dgs_camera_index" in o]
    chosen = sorted(int(o["edit3dgs_camera_index"]) for o in cams if o.select_get())
    if not chosen and context.scene.camera is not None and "edit3dgs_camera_index" in context.scene.camera:
        chosen = [int(context.scene.camera["edit3dgs_camera_index"])]
    return chosen or None


def _edit_finished(scene_name: str, obj_name: str, prompt: str, editor: str, job) -> None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    s = scene.edit3dgs
    s.running = False
    runtime.state.edit_job = None
    ov, runtime.state.edit_overall = runtime.state.edit_overall, None
    if ov is not None and job.state == "done":
        ov.update(job.stage or "save", job.done, job.total)
        shares = ov.measured_shares()
        if shares:  # the next edit with this editor estimates from this one
            runtime.state.stage_shares[editor] = shares
    prev = bpy.data.objects.get(obj_name)
    if job.state == "done" and prev is not None:
        h = prev.edit3dgs
        v = h.versions.add()
        v.name = f"v{len(h.versions) - 1}: {prompt}"
        v.folder, v.npz, v.prompt, v.editor = job.result["avatar"], job.result["npz"], prompt, editor
        h.version_index = len(h.versions) - 1
        s.status, s.progress, s.stage = "DONE", 1.0, "done"
        s.report = f"Edit done: {v.name} ({v.folder}); press Apply"
    elif job.state == "cancelled":
        s.status, s.stage, s.report = "CANCELLED", "", f"Edit cancelled; the avatar is unchanged ({job.error})"
    else:
        s.status, s.stage = "FAILED", ""
        s.report = f"Edit failed: {job.error}"
    print(f"Edit3DGS: {s.report}")


class EDIT3DGS_OT_run_edit(bpy.types.Operator):
    """Edit the avatar with the prompt (runs in the backend; Blender stays responsive)"""

    bl_idname = "edit3dgs.run_edit"
    bl_label = "Run Edit"

    prompt: StringProperty(name="Prompt", default="", description="Overrides the panel's prompt when set")
    directory: StringProperty(name="Versions Folder", subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                              description="Where the edited avatar is saved (asked for while the .blend is not saved)")

    @classmethod
    def poll(cls, context):
        s = context.scene.edit3dgs
        job = runtime.state.edit_job
        if job is not None and not job.finished:
            return deny(cls, "An edit is running: cancel it first")
        if preview_object(context) is None:
            return deny(cls, "Import a Gaussian avatar first (File > Import > Gaussian Head Avatar)")
        if not s.prompt.strip():
            return deny(cls, "Write what to change in the prompt")
        return True

    def invoke(self, context, event):
        if versions.versions_root(context.scene) is None and not self.directory:
            # An unsaved .blend has no folder to put versions beside: ask where they go.
            self.report({"INFO"}, "The .blend file is not saved yet: choose where the edited avatars go")
            context.window_manager.fileselect_add(self)
            return {"RUNNING_MODAL"}
        return self.execute(context)

    def execute(self, context):
        s = context.scene.edit3dgs
        if self.prompt:
            s.prompt = self.prompt
        if self.directory:
            s.versions_dir = self.directory
        prev = preview_object(context)
        if prev is None:
            return self._fail(context, "no Gaussian avatar in the scene: import one first")
        job = runtime.state.edit_job
        if job is not None and not job.finished:
            return self._fail(context, "an edit is already running (cancel it first)")
        if not s.prompt.strip():
            return self._fail(context, "the prompt is empty")
        h = prev.edit3dgs
        base = h.versions[h.applied] if 0 <= h.applied < len(h.versions) else None
        if base is None or not os.path.isdir(base.folder):
            return self._fail(context, f"the avatar folder {base.folder if base else '?'} is missing")
        root = versions.versions_root(context.scene)
        if root is None:
            return self._fail(context, "save the .blend file first, or choose a Versions Folder in the History "
                                       "panel (edited avatars are saved there)")
        settings = job_settings(context, prev)
        try:
            out = versions.new_version_folder(root, prev.name.removesuffix("_gaussians"), len(h.versions),
                                              settings["prompt"])
        except versions.VersionsError as exc:
            return self._fail(context, str(exc))
        args = {"avatar": base.folder, "out_dir": str(out), "npz": str(out / versions.RIG_NAME), "settings": settings}
        try:
            job = runtime.submit("edit", args, on_finish=partial(_edit_finished, context.scene.name, prev.name,
                                                                  settings["prompt"], settings.get("editor", "region")))
        except BridgeError as exc:
            return self._fail(context, str(exc))
        runtime.state.edit_job = job
        editor = settings.get("editor", "region")
        runtime.state.edit_overall = Overall(int(settings.get("rounds", 1) or 1), editor,
                                             runtime.state.stage_shares.get(editor),
                                             reedit=bool(settings.get("reedit_each_round", False)))
        s.running, s.status, s.progress, s.stage = True, "RUNNING", 0.0, "starting"
        s.report = f"Editing: {settings['prompt']}"
        return {"FINISHED"}

    def _fail(self, context, msg):
        return fail(self, context, f"Edit not started: {msg}")


class EDIT3DGS_OT_cancel_edit(bpy.types.Operator):
    """Stop the running edit (the backend is ended if it does not stop within 2 s)"""

    bl_idname = "edit3dgs.cancel_edit"
    bl_label = "Cancel Edit"

    @classmethod
    def poll(cls, context):
        job = runtime.state.edit_job
        if job is None or job.finished:
            return deny(cls, "No edit is running")
        return True

    def execute(self, context):
        job = runtime.state.edit_job
        if job is None or job.finished or runtime.state.backend is None:
            self.report({"WARNING"}, "No edit is running")
            return {"CANCELLED"}
        runtime.state.backend.cancel(job)
        runtime.ensure_timer()
        note(context, "Cancelling…", "RUNNING")
        return {"FINISHED"}


def _apply(context, prev, index: int):
    h = prev.edit3dgs
    v = h.versions[index]
    rig = load(bpy.path.abspath(v.npz), need_rig=False)
    preview_mod.write_attributes(prev.data, rig)
    h.applied = index
    preview_mod.ensure_nodes()  # a .blend from an older add-on: its preview's nodes and material brought up to date
    see_through_gaussians(context.scene)   # and its scene's Cycles bounces (the faded spheres of this version)
    prev.update_tag()
    return v


def _applied_note(context, v) -> None:
    has_folder, _ = versions.files_state(v)
    if has_folder:
        note(context, f"Applied {v.name}", "DONE")
    else:
        note(context, f"Applied {v.name} to the preview only: its avatar folder {v.folder} is gone (moved or "
                      f"deleted), so it cannot be edited further or rendered as a shot", "WARNING")


def _rebuilt(scene_name: str, obj_name: str, index: int, job) -> None:
    """A version's rig file came back from its avatar folder: apply it (on the main thread)."""
    scene, prev = bpy.data.scenes.get(scene_name), bpy.data.objects.get(obj_name)
    if scene is None or prev is None or index >= len(prev.edit3dgs.versions):
        return
    ctx = type("Ctx", (), {"scene": scene})()
    v = prev.edit3dgs.versions[index]
    if job.state != "done":
        note(ctx, f"Cannot apply {v.name}: rebuilding its preview from {v.folder} failed ({job.error}). "
                  f"The preview is unchanged", "FAILED")
        return
    v.npz = job.result["npz"]
    try:
        _apply(ctx, prev, index)
    except (RigFileError, OSError) as exc:
        note(ctx, f"Cannot apply {v.name}: {exc}", "FAILED")
        return
    note(ctx, f"Applied {v.name} (its preview was rebuilt from {v.folder})", "DONE")


class EDIT3DGS_OT_apply_edit(bpy.types.Operator):
    """Put the chosen version's Gaussians on the preview (same object: keyframes, modifiers, materials stay)"""

    bl_idname = "edit3dgs.apply_edit"
    bl_label = "Apply Version"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(name="Version", default=-1, description="-1: the one selected in the history")
    timeout: bpy.props.FloatProperty(name="Timeout (s)", default=300.0, min=1.0, options={"HIDDEN"},
                                     description="How long a script waits for a version's preview to be rebuilt")

    @classmethod
    def poll(cls, context):
        prev, why = has_versions(context, "apply")
        if prev is None:
            return deny(cls, why)
        h = prev.edit3dgs
        if not 0 <= h.version_index < len(h.versions):
            return deny(cls, "Select a version in the history")
        v = h.versions[h.version_index]
        if versions.files_state(v) == (False, False):
            return deny(cls, f"The files of '{v.name}' are gone (moved or deleted)")
        return True

    def execute(self, context):
        prev = preview_object(context)
        if prev is None or not len(prev.edit3dgs.versions):
            return fail(self, context, "No avatar version to apply")
        h = prev.edit3dgs
        i = h.version_index if self.index < 0 else self.index
        if not 0 <= i < len(h.versions):
            return fail(self, context, f"No version {i} (the history has {len(h.versions)})")
        v = h.versions[i]
        has_folder, has_npz = versions.files_state(v)
        if not has_folder and not has_npz:
            return fail(self, context, f"Cannot apply: {versions.gone_message(v)}")
        if has_npz:
            try:
                _apply(context, prev, i)
            except (RigFileError, OSError) as exc:
                if not has_folder:
                    return fail(self, context, f"Cannot apply: {exc}")
            else:
                _applied_note(context, v)
                return {"FINISHED"}
        return self._rebuild(context, prev, i)

    def _rebuild(self, context, prev, i):
        """The rig file is gone or damaged (e.g. the cache went with an uninstall): the backend rebuilds it."""
        v = prev.edit3dgs.versions[i]
        out = runtime.job_folder("rig", v.folder) / "rig.npz"
        try:
            job = runtime.submit("export_rig", {"avatar": bpy.path.abspath(v.folder), "out": str(out)},
                                 on_finish=partial(_rebuilt, context.scene.name, prev.name, i))
        except BridgeError as exc:
            return fail(self, context, f"Cannot apply {v.name}: its preview must be rebuilt from {v.folder} "
                                       f"and the backend cannot start ({exc})")
        note(context, f"Rebuilding the preview of {v.name} from {v.folder}…", "RUNNING")
        if context.window is None or bpy.app.background:  # scripts: no event loop to come back to
            runtime.backend().wait(job, self.timeout)
            if not job.finished:
                runtime.backend().cancel(job)
                return fail(self, context, f"Cannot apply {v.name}: rebuilding its preview took over "
                                           f"{self.timeout:g} s")
            return {"FINISHED"} if context.scene.edit3dgs.status == "DONE" else {"CANCELLED"}
        return {"FINISHED"}


class EDIT3DGS_OT_save_version_as(bpy.types.Operator):
    """Copy the selected version (avatar folder and rig file) to a folder you choose; the history then uses the copy"""

    bl_idname = "edit3dgs.save_version_as"
    bl_label = "Save Version As…"

    directory: StringProperty(name="Folder", subtype="DIR_PATH", default="",
                              description="The folder that receives the copy")
    folder_name: StringProperty(name="Name", default="", options={"SKIP_SAVE"},
                                description="Name of the new folder (default: the version's own folder name)")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        prev, why = has_versions(context, "save")
        if prev is None:
            return deny(cls, why)
        h = prev.edit3dgs
        if not 0 <= h.version_index < len(h.versions):
            return deny(cls, "Select a version in the history")
        if not versions.files_state(h.versions[h.version_index])[0]:
            return deny(cls, "This version's avatar folder is gone (moved or deleted): nothing to copy")
        return True

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        prev = preview_object(context)
        if prev is None or not 0 <= prev.edit3dgs.version_index < len(prev.edit3dgs.versions):
            return fail(self, context, "Select a version in the history to save")
        v = prev.edit3dgs.versions[prev.edit3dgs.version_index]
        if not self.directory:
            return fail(self, context, "Choose a folder to save the version in")
        name = self.folder_name.strip() or Path(bpy.path.abspath(v.folder).rstrip("/\\")).name
        dest = Path(os.path.abspath(bpy.path.abspath(self.directory))) / name
        try:
            folder, npz = versions.save_copy(v, dest)
        except versions.VersionsError as exc:
            return fail(self, context, f"Version not saved: {exc}")
        v.folder = str(folder)
        v.npz = str(npz) if npz is not None else ""
        note(context, f"Saved {v.name} to {folder}; the history now uses this copy", "DONE")
        self.report({"INFO"}, f"Saved {v.name} to {folder}")
        return {"FINISHED"}


class EDIT3DGS_OT_revert_edit(bpy.types.Operator):
    """Go back to the imported avatar (the edits stay in the history)"""

    bl_idname = "edit3dgs.revert_edit"
    bl_label = "Revert to Original"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        prev, why = has_versions(context, "revert to")
        if prev is None:
            return deny(cls, why)
        if prev.edit3dgs.applied == 0:
            return deny(cls, "The preview already shows the original")
        if versions.files_state(prev.edit3dgs.versions[0]) == (False, False):
            return deny(cls, f"The original's avatar folder {prev.edit3dgs.versions[0].folder} is gone (moved or deleted)")
        return True

    def execute(self, context):
        return bpy.ops.edit3dgs.apply_edit(index=0)


class EDIT3DGS_OT_compare_version(bpy.types.Operator):
    """Show the selected version beside the applied one (again: remove the comparison)"""

    bl_idname = "edit3dgs.compare_version"
    bl_label = "Compare"
    bl_options = {"REGISTER", "UNDO"}

    offset: bpy.props.FloatProperty(name="Offset", default=0.35, description="Along the head's x axis (m)")

    @classmethod
    def poll(cls, context):
        prev, why = has_versions(context, "compare")
        if prev is None:
            return deny(cls, why)
        if len(prev.edit3dgs.versions) < 2 and prev.edit3dgs.compare_with < 0:
            return deny(cls, "Only one version so far: run an edit to compare with")
        return True

    def execute(self, context):
        prev = preview_object(context)
        if prev is None:
            return {"CANCELLED"}
        name = f"{prev.name}_compare"
        old = bpy.data.objects.get(name)
        if old is not None:
            me = old.data
            bpy.data.objects.remove(old)
            bpy.data.meshes.remove(me)
            prev.edit3dgs.compare_with = -1
            return {"FINISHED"}
        v = prev.edit3dgs.versions[prev.edit3dgs.version_index]
        try:
            rig = load(bpy.path.abspath(v.npz), need_rig=False)
        except (RigFileError, OSError) as exc:
            return fail(self, context, f"Cannot compare with {v.name}: {exc} (Apply it once to rebuild its preview)")
        me = prev.data.copy()
        me.name = name
        preview_mod.write_attributes(me, rig)
        obj = prev.copy()
        obj.data, obj.name = me, name
        obj["edit3dgs_role"] = "compare"
        for c in prev.users_collection:
            c.objects.link(obj)
        obj.location.x += self.offset
        prev.edit3dgs.compare_with = prev.edit3dgs.version_index
        note(context, f"Comparing {v.name} (right) with the applied version", "DONE")
        return {"FINISHED"}


def _masks_finished(scene_name: str, job) -> None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    if job.state != "done":
        scene.edit3dgs.report = f"Mask preview failed: {job.error}"
        return
    path = job.result["png"]
    img = bpy.data.images.get("Edit3DGS masks")
    if img is None:
        img = bpy.data.images.load(path)
        img.name = "Edit3DGS masks"
    else:
        img.filepath = path
        img.reload()
    for win in getattr(bpy.context.window_manager, "windows", ()):
        for area in win.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = img
    scene.edit3dgs.report = f"Masks of {', '.join(job.result.get('regions', []))} in image 'Edit3DGS masks' (R, G, B)"


class EDIT3DGS_OT_preview_masks(bpy.types.Operator):
    """Render the regions to preserve and to edit from the active key view into the image 'Edit3DGS masks'"""

    bl_idname = "edit3dgs.preview_masks"
    bl_label = "Preview Masks"

    @classmethod
    def poll(cls, context):
        if preview_object(context) is None:
            return deny(cls, "Import a Gaussian avatar first")
        cam = context.scene.camera
        if cam is None or cam.type != "CAMERA":
            return deny(cls, "Make a key view the active camera")
        return True

    def execute(self, context):
        s = context.scene.edit3dgs
        prev = preview_object(context)
        cam = context.scene.camera
        if prev is None or cam is None:
            self.report({"ERROR"}, "Needs an imported avatar and an active camera (a key view)")
            return {"CANCELLED"}
        regions = [r for r, on in (("eyes", s.preserve_eyes), ("lips", s.preserve_mouth)) if on]
        regions += parse_names(s.local_regions) or []
        h = prev.edit3dgs
        folder = h.versions[h.applied].folder
        out = runtime.job_folder("masks", folder) / "masks.png"
        args = {"avatar": folder, "camera": camera_for_backend(cam, avatar_root(prev)), "regions": regions[:3] or ["eyes"],
                "out": str(out), "timestep": 0}
        try:
            runtime.submit("region_masks", args, on_finish=partial(_masks_finished, context.scene.name))
        except BridgeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


CLASSES = (EDIT3DGS_OT_run_edit, EDIT3DGS_OT_cancel_edit, EDIT3DGS_OT_apply_edit, EDIT3DGS_OT_save_version_as,
           EDIT3DGS_OT_revert_edit, EDIT3DGS_OT_compare_version, EDIT3DGS_OT_preview_masks)
