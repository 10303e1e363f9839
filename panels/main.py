"""Side panel (View3D > N > Edit3DGS): avatar, prompt and editor, key views, masks, run, history."""

from __future__ import annotations

import bpy

from .. import versions
from ..operators.common import preview_object
from ..operators.presets import PRESET_SUBDIR


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Edit3DGS"


class EDIT3DGS_UL_versions(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        applied = data.applied == index
        row = layout.row(align=True)
        row.label(text=item.name, icon="CHECKMARK" if applied else "BLANK1", translate=False)
        if item.editor:
            row.label(text=item.editor, translate=False)


class EDIT3DGS_PT_main(_Panel, bpy.types.Panel):
    bl_label = "Edit3DGS"

    def draw(self, context):
        layout = self.layout
        s = context.scene.edit3dgs
        prev = preview_object(context)
        row = layout.row()
        row.operator("edit3dgs.import_avatar", icon="IMPORT")
        if prev is None:
            layout.label(text="Import a GaussianAvatars folder to start", icon="INFO")
            _report_box(layout, s)
            return
        layout.label(text=f"{prev.name}: {len(prev.data.vertices)} Gaussians", icon="POINTCLOUD_DATA", translate=False)
        layout.prop(s, "prompt", text="")
        row = layout.row(align=True)
        row.scale_y = 1.4
        if s.running:
            row.operator("edit3dgs.cancel_edit", icon="CANCEL")
        else:
            row.operator("edit3dgs.run_edit", icon="PLAY")
        if s.running or s.status == "RUNNING":
            layout.progress(factor=s.progress, type="BAR", text=s.stage or "starting")
        _report_box(layout, s)


def _report_box(layout, s) -> None:
    """The last report, whole, with its status's icon; the backend's log always one click away."""
    if s.report:
        box = layout.box()
        for i, line in enumerate(_wrap(s.report, 48)[:MAX_REPORT_LINES]):
            box.label(text=line, icon=report_icon(s.status) if i == 0 else "BLANK1", translate=False)
    layout.operator("edit3dgs.open_log", text="Open Backend Log", icon="TEXT").which = "backend"


MAX_REPORT_LINES = 16
STATUS_ICONS = {"FAILED": "ERROR", "CANCELLED": "CANCEL", "DONE": "CHECKMARK", "IMPORTED": "CHECKMARK"}


def report_icon(status: str) -> str:
    """The icon beside a report: its own status's (a report without a failure never shows ERROR)."""
    return STATUS_ICONS.get(status, "INFO")


def _wrap(text, width):
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


class EDIT3DGS_PT_rig(_Panel, bpy.types.Panel):
    bl_label = "Expressions"
    bl_parent_id = "EDIT3DGS_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        prev = preview_object(context)
        head = None
        if prev is not None and prev.parent is not None:
            for o in prev.parent.children_recursive:
                if o.get("edit3dgs_role") == "head":
                    head = o
        if head is None or head.data.shape_keys is None:
            return
        names = prev.get("edit3dgs_expr_names", [])
        col = self.layout.column(align=True)
        for i in range(10):
            kb = head.data.shape_keys.key_blocks.get(f"expr_{i:03d}")
            if kb is not None:
                col.prop(kb, "value", text=names[i] if i < len(names) else kb.name, slider=True)


class EDIT3DGS_MT_editor_presets(bpy.types.Menu):
    """Saved editor settings (operators/presets.py saves them)"""

    bl_label = "Editor Presets"
    preset_subdir = PRESET_SUBDIR
    preset_operator = "script.execute_preset"
    draw = bpy.types.Menu.draw_preset


class EDIT3DGS_PT_editor(_Panel, bpy.types.Panel):
    bl_label = "Editor"
    bl_parent_id = "EDIT3DGS_PT_main"

    def draw(self, context):
        s = context.scene.edit3dgs
        row = self.layout.row(align=True)
        row.menu("EDIT3DGS_MT_editor_presets", text=EDIT3DGS_MT_editor_presets.bl_label)
        row.operator("edit3dgs.add_editor_preset", text="", icon="ADD")
        row.operator("edit3dgs.add_editor_preset", text="", icon="REMOVE").remove_active = True
        col = self.layout.column()
        col.prop(s, "editor")
        if s.editor == "ip2p":
            col.prop(s, "ip2p_model")
            col.prop(s, "steps")
            col.prop(s, "guidance_text")
            col.prop(s, "guidance_image")
            col.prop(s, "temporal_keys")
        col.prop(s, "rounds")
        col.prop(s, "iters_per_batch")
        col.prop(s, "views_per_iter")
        col.prop(s, "scale")
        col.prop(s, "seed")
        col.label(text="Edit Only (none: the whole head)")
        col.grid_flow(columns=3, even_columns=True, align=True).prop(s, "local_regions")
        if s.editor != "ip2p":  # (with Instruct-Pix2Pix it sits in Masks)
            col.operator("edit3dgs.preview_masks", icon="IMAGE_DATA")


class EDIT3DGS_PT_views(_Panel, bpy.types.Panel):
    bl_label = "Key Views"
    bl_parent_id = "EDIT3DGS_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.edit3dgs
        col = self.layout.column()
        col.prop(s, "use_all_cameras")
        if not s.use_all_cameras:
            col.label(text="Uses the selected Key Views cameras (or the scene camera)")
        col.prop(s, "use_frame_range")
        if s.use_frame_range:
            row = col.row(align=True)
            row.prop(s, "frame_start")
            row.prop(s, "frame_end")
            row.prop(s, "frame_step")
        else:
            col.prop(s, "timesteps")
            if not s.timesteps:
                col.prop(s, "num_timesteps")


class EDIT3DGS_PT_masks(_Panel, bpy.types.Panel):
    """Expression-preserving inpainting: Instruct-Pix2Pix only (the region editor has no masks to set)."""

    bl_label = "Masks"
    bl_parent_id = "EDIT3DGS_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        return context.scene.edit3dgs.editor == "ip2p"

    def draw(self, context):
        s = context.scene.edit3dgs
        col = self.layout.column()
        row = col.row(align=True)
        row.label(text="Preserve")
        row.prop(s, "preserve_eyes", toggle=True)
        row.prop(s, "preserve_mouth", toggle=True)
        col.prop(s, "mask_source")
        if s.mask_source == "DETECTOR":
            col.prop(s, "mask_text")
        col.prop(s, "mask_dilation")
        col.prop(s, "mask_strength")
        col.operator("edit3dgs.preview_masks", icon="IMAGE_DATA")


class EDIT3DGS_PT_history(_Panel, bpy.types.Panel):
    bl_label = "History"
    bl_parent_id = "EDIT3DGS_PT_main"

    def draw(self, context):
        prev = preview_object(context)
        if prev is None:
            return
        h = prev.edit3dgs
        self.layout.template_list("EDIT3DGS_UL_versions", "", h, "versions", h, "version_index", rows=3)
        row = self.layout.row(align=True)
        row.operator("edit3dgs.apply_edit", text="Apply", icon="CHECKMARK")
        row.operator("edit3dgs.revert_edit", text="Revert", icon="LOOP_BACK")
        row.operator("edit3dgs.compare_version", text="Compare", icon="SPLIT_HORIZONTAL",
                     depress=h.compare_with >= 0)
        s = context.scene.edit3dgs
        col = self.layout.column(align=True)
        col.prop(s, "versions_dir")
        if versions.versions_root(context.scene) is None:
            col.label(text="Not saved yet: Run asks where versions go", icon="INFO")
        col.operator("edit3dgs.save_version_as", icon="FILE_TICK")
        if context.scene.camera is None:  # the preview's view-dependent colours follow the active camera
            self.layout.label(text="No active camera: the preview shows view-independent colours", icon="INFO")


class EDIT3DGS_PT_motion(_Panel, bpy.types.Panel):
    bl_label = "Motion"
    bl_parent_id = "EDIT3DGS_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        scene = context.scene
        col = self.layout.column(align=True)
        col.operator("edit3dgs.import_motion", text="Import Motion…", icon="IMPORT")
        col.operator("edit3dgs.export_motion", text="Export Motion…", icon="EXPORT")
        fps = scene.render.fps / scene.render.fps_base
        self.layout.label(text=f"Frames {scene.frame_start}-{scene.frame_end} at {fps:g} fps", icon="TIME", translate=False)


class EDIT3DGS_PT_shot(_Panel, bpy.types.Panel):
    bl_label = "Shot"
    bl_parent_id = "EDIT3DGS_PT_main"

    def draw(self, context):
        scene = context.scene
        s = scene.edit3dgs_shot
        layout = self.layout
        col = layout.column()
        col.prop(scene, "camera")
        row = col.row(align=True)
        row.prop(scene, "frame_start", text="Start")
        row.prop(scene, "frame_end", text="End")
        col.prop(scene.render, "filepath", text="Output")
        col.prop(s, "add_strip")
        row = layout.row(align=True)
        row.scale_y = 1.3
        if s.running:
            row.operator("edit3dgs.cancel_shot", icon="CANCEL")
            layout.progress(factor=s.progress, type="BAR", text=s.stage or "starting")
        else:
            row.operator("edit3dgs.render_shot", icon="RENDER_ANIMATION")
        if s.report:
            box = layout.box()
            for i, line in enumerate(_wrap(s.report, 48)[:MAX_REPORT_LINES]):
                box.label(text=line, icon=report_icon(s.status) if i == 0 else "BLANK1", translate=False)
            if s.status == "FAILED":
                box.operator("edit3dgs.open_log", text="Open Backend Log", icon="TEXT").which = "backend"


# Sub-panels show in this order: the history right under Run.
CLASSES = (EDIT3DGS_UL_versions, EDIT3DGS_MT_editor_presets, EDIT3DGS_PT_main, EDIT3DGS_PT_history, EDIT3DGS_PT_editor, EDIT3DGS_PT_views,
           EDIT3DGS_PT_masks, EDIT3DGS_PT_rig, EDIT3DGS_PT_motion, EDIT3DGS_PT_shot)
