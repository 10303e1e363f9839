"""Presets for the editor's settings, through Blender's preset mechanism (issue 12 item 6)."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy

from conftest import EXT_MODULE


def test_editor_preset_saves_and_restores_the_editor_settings(scene, ext):
    s = scene.edit3dgs
    s.editor, s.steps, s.guidance_text, s.rounds, s.views_per_iter = "ip2p", 7, 5.5, 2, 3
    s.local_regions = {"hair", "lips"}
    s.prompt = "make the hair blue"
    assert bpy.ops.edit3dgs.add_editor_preset(name="Few Steps") == {"FINISHED"}
    folder = Path(bpy.utils.user_resource("SCRIPTS", path="presets/edit3dgs/editor"))
    preset = folder / "Few_Steps.py"
    assert preset.is_file(), sorted(p.name for p in folder.glob("*"))
    # in the user's presets, not the extension's folder (which an uninstall deletes)
    assert Path(bpy.utils.extension_path_user(EXT_MODULE, create=True)) not in preset.parents
    assert "prompt" not in preset.read_text()

    bpy.ops.wm.read_homefile(use_empty=True)  # a new scene: the defaults
    s = bpy.context.scene.edit3dgs
    assert (s.editor, s.steps, s.rounds, s.views_per_iter) == ("region", 20, 1, 0)
    assert bpy.ops.script.execute_preset(filepath=str(preset), menu_idname="EDIT3DGS_MT_editor_presets") == {"FINISHED"}
    assert (s.editor, s.steps, s.rounds, s.views_per_iter) == ("ip2p", 7, 2, 3)
    assert abs(s.guidance_text - 5.5) < 1e-6 and s.local_regions == {"hair", "lips"}
    # what a preset sets is what the panel sends
    edit_ops = sys.modules[EXT_MODULE + ".operators.edit"]
    assert edit_ops.panel_values(s)["steps"] == 7 and edit_ops.panel_values(s)["views_per_iter"] == 3
    # the Editor panel offers them
    menu = bpy.types.EDIT3DGS_MT_editor_presets
    assert menu.preset_subdir == "edit3dgs/editor"
    preset.unlink()
