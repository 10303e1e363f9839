"""Presets for the editor's settings (Blender's preset mechanism: files in the user's presets folder,
scripts/presets/edit3dgs/editor/, which an uninstall of the extension leaves alone)."""

from __future__ import annotations

import bpy
from bl_operators.presets import AddPresetBase

PRESET_SUBDIR = "edit3dgs/editor"
# The editor's settings a preset keeps (not the prompt, the key views or the frames: those are per shot).
PRESET_KEYS = ("editor", "ip2p_model", "steps", "guidance_text", "guidance_image", "temporal_keys", "rounds",
               "iters_per_batch", "views_per_iter", "scale", "seed", "local_regions", "preserve_eyes",
               "preserve_mouth", "mask_source", "mask_text", "mask_dilation", "mask_strength")


class EDIT3DGS_OT_add_editor_preset(AddPresetBase, bpy.types.Operator):
    """Save the editor's settings as a preset (or remove the chosen one)"""

    bl_idname = "edit3dgs.add_editor_preset"
    bl_label = "Add Editor Preset"
    preset_menu = "EDIT3DGS_MT_editor_presets"  # panels/main.py
    preset_defines = ["s = bpy.context.scene.edit3dgs"]
    preset_values = [f"s.{k}" for k in PRESET_KEYS]
    preset_subdir = PRESET_SUBDIR

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "edit3dgs", None) is None:
            cls.poll_message_set("Needs a scene")
            return False
        return True


CLASSES = (EDIT3DGS_OT_add_editor_preset,)
