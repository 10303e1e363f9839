"""Backend errors shown in Blender speak the panel's words: no command-line flag, model hints name the
preference field (edit3dgs_addon/messages.py is bpy-free, so it runs here against the real messages)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edit3dgs.cli import build_parser
from edit3dgs.errors import Edit3DGSError
from edit3dgs.loop import EditSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edit3dgs_addon.messages import artist_words  # noqa: E402


def test_every_edit_flag_becomes_words():
    edit = build_parser()._subparsers._group_actions[0].choices["edit"]
    flags = [f for a in edit._actions for f in a.option_strings if f.startswith("--")]
    assert "--views-per-iter" in flags and "--model" in flags
    for flag in flags:
        shown = artist_words(str(Edit3DGSError(flag, "something else", f"{flag} 3")))
        assert "--" not in shown, shown
    assert artist_words("--views-per-iter: expected x, found 0").startswith("Views per Iteration:")
    assert artist_words("--regions: expected x, found y").startswith("Edit Only:")


def test_model_hints_name_the_preference_field():
    from edit3dgs.edit.ip2p import DOWNLOAD_HINT

    shown = artist_words(str(Edit3DGSError("/models/ip2p", DOWNLOAD_HINT, "no such folder")))
    assert "--" not in shown and "`" not in shown
    assert "Editor Model in the Edit3DGS add-on preferences" in shown, shown
    for flag, field in (("--detector-model", "Grounding DINO"), ("--sam-model", "SAM 2"), ("--device", "Device")):
        shown = artist_words(str(Edit3DGSError(flag, "weights", "none")))
        assert shown.startswith(f"{field} (Edit3DGS add-on preferences)"), shown


@pytest.mark.parametrize("bad", [{"views_per_iter": 0}, {"rounds": 0}, {"scale": -1.0}, {"iteration_multiplier": 2}])
def test_settings_errors_name_the_panel_control(bad):
    with pytest.raises(Edit3DGSError) as e:
        EditSettings.from_dict({"prompt": "make the hair blue", **bad})
    shown = artist_words(str(e.value))
    assert "--" not in shown and "_" not in shown.split(":")[0], shown
