"""The panel's report: a backend error in the artist's words, a success after it without the error icon,
the backend's log at hand."""

from __future__ import annotations

import sys

import bpy

from conftest import EXT_MODULE, configure_edit, import_avatar, pump


def test_error_in_panel_words_then_success_without_error_icon(scene, ext, avatar_dir):
    panels = sys.modules[EXT_MODULE + ".panels.main"]
    messages = sys.modules[EXT_MODULE + ".messages"]
    import_avatar(avatar_dir)
    s = scene.edit3dgs
    configure_edit(prompt="make the hair blue", timesteps="50")  # the avatar has 8 frames
    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
    pump(ext, lambda: not s.running, timeout=120)
    assert s.status == "FAILED" and panels.report_icon(s.status) == "ERROR"
    assert "--" not in s.report and "Timesteps" in s.report, s.report
    # every panel control the messages name exists under that name
    names = {p.name for p in type(s).bl_rna.properties}
    for label in set(messages.LABELS.values()):
        if "preferences" not in label and not label.startswith(("the ", "a ")):
            assert label in names, f"messages name a control the panel does not have: {label!r}"
    # the next thing that works replaces the icon as well as the text
    assert bpy.ops.edit3dgs.apply_edit(index=0) == {"FINISHED"}
    assert s.status == "DONE" and panels.report_icon(s.status) != "ERROR", (s.status, s.report)
    assert bpy.ops.edit3dgs.open_log(which="backend") == {"FINISHED"}
    assert any("edit3dgs serve" in t.as_string() for t in bpy.data.texts)
