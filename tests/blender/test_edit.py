"""'make the hair blue' through the real backend subprocess, apply, history."""

from __future__ import annotations

import bpy
import numpy as np

from conftest import configure_edit, import_avatar, pump, runtime_mod
from test_extension import check_follows_rig


def colours(prev):
    return prev.id_data.data.attributes  # noqa


def read(prev, name, field, width):
    a = prev.data.attributes[name]
    out = np.empty(len(prev.data.vertices) * width, np.float32 if field != "value" or a.data_type != "INT" else np.int32)
    a.data.foreach_get(field, out)
    return out.reshape(-1, width) if width > 1 else out


def test_edit_hair_blue_apply_and_history(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    prev = objs["preview"]
    mod_before = [m.name for m in prev.modifiers]
    mat_before = prev.material_slots[0].material
    prev.keyframe_insert("location", frame=1)  # an artist's keyframe must survive the apply
    rgba0 = read(prev, "gs_color", "color", 4).copy()
    region = read(prev, "gs_region", "value", 1)
    hair = region == list(prev.data["edit3dgs_regions"]).index("hair")
    configure_edit(prompt="make the hair blue")

    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}  # returns at once; the backend works
    s = scene.edit3dgs
    assert s.running
    longest = pump(ext, lambda: not s.running, timeout=600)
    assert s.status == "DONE", s.report
    assert longest < 0.25, f"a timer tick took {longest:.3f} s"
    h = prev.edit3dgs
    assert len(h.versions) == 2 and h.version_index == 1 and h.applied == 0
    # nothing changes until Apply
    assert np.array_equal(read(prev, "gs_color", "color", 4), rgba0)

    assert bpy.ops.edit3dgs.apply_edit() == {"FINISHED"}
    assert bpy.data.objects[prev.name] == prev and h.applied == 1
    rgba1 = read(prev, "gs_color", "color", 4)
    changed = np.abs(rgba1 - rgba0).max(1) > 1e-6
    assert changed[hair].mean() > 0.5, "the hair did not change"
    assert not changed[~hair].any(), f"{int(changed[~hair].sum())} non-hair points changed"
    # towards blue (3 refit iterations in this test: a step, not the whole way)
    assert (rgba1[hair, 2] - rgba1[hair, 0]).mean() > (rgba0[hair, 2] - rgba0[hair, 0]).mean() + 0.01
    # same object: modifiers, material and keyframes stay
    assert [m.name for m in prev.modifiers] == mod_before
    assert prev.material_slots[0].material == mat_before
    assert prev.animation_data is not None and prev.animation_data.action is not None
    # the edited avatar follows the rig like the backend places it
    check_follows_rig(objs, h.versions[1].folder, tmp_path)

    # revert and re-apply from the history (the colours are seen from the scene camera at this frame's pose)
    assert bpy.ops.edit3dgs.revert_edit() == {"FINISHED"}
    rgba0 = read(prev, "gs_color", "color", 4).copy()
    assert bpy.ops.edit3dgs.apply_edit(index=1) == {"FINISHED"}
    rgba1 = read(prev, "gs_color", "color", 4).copy()
    changed = np.abs(rgba1 - rgba0).max(1) > 1e-6
    assert changed[hair].mean() > 0.5 and not changed[~hair].any()
    assert bpy.ops.edit3dgs.revert_edit() == {"FINISHED"}
    assert np.array_equal(read(prev, "gs_color", "color", 4), rgba0)
    assert bpy.ops.edit3dgs.apply_edit(index=1) == {"FINISHED"}
    assert np.array_equal(read(prev, "gs_color", "color", 4), rgba1)
    # compare shows the selected version beside, and toggles off
    h.version_index = 0
    assert bpy.ops.edit3dgs.compare_version() == {"FINISHED"}
    cmp = bpy.data.objects[prev.name + "_compare"]
    assert np.array_equal(read(cmp, "gs_color", "color", 4), rgba0)
    assert bpy.ops.edit3dgs.compare_version() == {"FINISHED"}
    assert prev.name + "_compare" not in bpy.data.objects
