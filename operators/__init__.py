"""Operators (thin: they gather from the scene, call the bridge or the scene builders, report)."""

import bpy

from . import edit, import_avatar, setup

CLASSES = import_avatar.CLASSES + edit.CLASSES + setup.CLASSES


def menu_import(self, context):
    self.layout.operator(import_avatar.EDIT3DGS_OT_import_avatar.bl_idname, text="Gaussian Head Avatar (Edit3DGS)")


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
