"""The N-panel "Edit3DGS" and the edit-history list."""

import bpy

from . import main

CLASSES = main.CLASSES


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)


def unregister():
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
