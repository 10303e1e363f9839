"""Blender conventions an artist relies on: operators grey out with the reason, every setting has a tooltip
and a Title Case name, the Masks panel only where it does something."""

from __future__ import annotations

import re
import sys

import bpy
import pytest

from conftest import EXT_MODULE, import_avatar

SMALL = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "per", "the", "to", "with", "across"}


def title_case(name: str) -> bool:
    words = [w for w in re.split(r"[\s/]+", name) if w and w[0].isalpha()]
    return all(w[0].isupper() or (i > 0 and w in SMALL) for i, w in enumerate(words))


def settings_classes():
    m = sys.modules
    ops = m[EXT_MODULE + ".operators"].CLASSES
    groups = (m[EXT_MODULE + ".props"].CLASSES + (m[EXT_MODULE + ".operators.shot"].Edit3DGSShotSettings,
                                                 m[EXT_MODULE + ".prefs"].Edit3DGSPreferences))
    return ops, groups


def test_every_operator_polls_and_every_setting_explains_itself(ext):
    ops, groups = settings_classes()
    assert len(ops) >= 13
    no_poll = [c.__name__ for c in ops if "poll" not in c.__dict__]
    assert not no_poll, f"operators without poll(): {no_poll}"
    missing, lower, checked = [], [], 0
    def rna(cls):
        if cls in ops:
            mod, _, op = cls.bl_idname.partition(".")
            return getattr(getattr(bpy.ops, mod), op).get_rna_type()
        return cls.bl_rna

    for cls in ops + groups:
        for prop in rna(cls).properties:
            if prop.identifier in ("rna_type", "name", "bl_idname") or prop.is_hidden:
                continue
            checked += 1
            if not prop.description:
                missing.append(f"{cls.__name__}.{prop.identifier}")
            if prop.name and not title_case(prop.name):
                lower.append(f"{cls.__name__}.{prop.identifier}: {prop.name!r}")
    for cls in ops:
        if not title_case(cls.bl_label):
            lower.append(f"{cls.__name__}: {cls.bl_label!r}")
    assert checked > 50, checked
    assert not missing, f"properties without a tooltip: {missing}"
    assert not lower, f"labels not in Title Case: {lower}"


def test_operators_grey_out_with_the_reason(scene, ext, avatar_dir):
    assert not bpy.ops.edit3dgs.run_edit.poll()
    with pytest.raises(RuntimeError, match="Import a Gaussian avatar first"):
        bpy.ops.edit3dgs.run_edit()
    for op in (bpy.ops.edit3dgs.apply_edit, bpy.ops.edit3dgs.revert_edit, bpy.ops.edit3dgs.cancel_edit,
               bpy.ops.edit3dgs.render_shot, bpy.ops.edit3dgs.export_motion, bpy.ops.edit3dgs.cancel_shot):
        assert not op.poll(), op
    assert bpy.ops.edit3dgs.import_avatar.poll() and bpy.ops.edit3dgs.open_log.poll()
    import_avatar(avatar_dir)
    s = scene.edit3dgs
    assert bpy.ops.edit3dgs.run_edit.poll() and bpy.ops.edit3dgs.apply_edit.poll()
    with pytest.raises(RuntimeError, match="already shows the original"):
        bpy.ops.edit3dgs.revert_edit()
    with pytest.raises(RuntimeError, match="No edit is running"):
        bpy.ops.edit3dgs.cancel_edit()
    s.prompt = "  "
    with pytest.raises(RuntimeError, match="Write what to change"):
        bpy.ops.edit3dgs.run_edit()


def test_masks_panel_only_for_instruct_pix2pix(scene, ext):
    masks = bpy.types.EDIT3DGS_PT_masks
    scene.edit3dgs.editor = "region"
    assert not masks.poll(bpy.context)
    scene.edit3dgs.editor = "ip2p"
    assert masks.poll(bpy.context)
