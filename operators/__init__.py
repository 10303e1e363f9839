"""Operators (thin: they gather from the scene, call the bridge or the scene builders, report)."""

import bpy

from . import edit, import_avatar, motion, presets, setup, shot

CLASSES = (import_avatar.CLASSES + edit.CLASSES + presets.CLASSES + setup.CLASSES + motion.CLASSES
           + shot.CLASSES)


def menu_import(self, context):
    self.layout.operator(import_avatar.EDIT3DGS_OT_import_avatar.bl_idname, text="Gaussian Head Avatar (Edit3DGS)")
    self.layout.operator(motion.EDIT3DGS_OT_import_motion.bl_idname, text="FLAME Motion onto Avatar (Edit3DGS)")


def menu_export(self, context):
    self.layout.operator(motion.EDIT3DGS_OT_export_motion.bl_idname, text="FLAME Motion (flame_param.npz, Edit3DGS)")


def register():
    shot.register()  # the shot's scene settings (Scene.edit3dgs_shot)
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
    shot.unregister()
