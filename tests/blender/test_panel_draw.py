"""Every panel draws in every state without error, naming only properties and operators that exist
(headless bpy has no window to draw in, so a recording layout stands in for Blender's)."""

from __future__ import annotations

import bpy

from conftest import import_avatar


class Layout:
    """Records what a panel asks for; checks each property and operator against Blender's own."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):  # row, column, box, grid_flow, split, ...: a sub-layout
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **kw: Layout(self.log)

    def __setattr__(self, name, value):  # scale_y, enabled, ...
        object.__setattr__(self, name, value)

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"no property {name!r} on {data}"
        self.log.append(("prop", name))

    def operator(self, idname, **kw):
        mod, _, op = idname.partition(".")
        assert hasattr(getattr(bpy.ops, mod), op), f"no operator {idname}"
        self.log.append(("operator", idname))
        return type("Props", (), {})()

    def label(self, text="", **kw):
        self.log.append(("label", text))

    def progress(self, **kw):
        self.log.append(("progress", kw.get("text", "")))

    def template_list(self, *a, **kw):
        self.log.append(("list", a[0]))


def draw_all(context) -> dict:
    out = {}
    for cls in bpy.types.Panel.__subclasses__():
        if not cls.__name__.startswith("EDIT3DGS_PT_"):
            continue
        if hasattr(cls, "poll") and not cls.poll(context):
            out[cls.__name__] = None  # hidden
            continue
        log = []
        cls.draw(type("P", (), {"layout": Layout(log)})(), context)
        out[cls.__name__] = log
    return out


def test_panels_draw_in_every_state(scene, ext, avatar_dir):
    s = scene.edit3dgs
    empty = draw_all(bpy.context)
    assert ("operator", "edit3dgs.import_avatar") in empty["EDIT3DGS_PT_main"]
    assert ("operator", "edit3dgs.open_log") in empty["EDIT3DGS_PT_main"]  # the log at hand before anything
    import_avatar(avatar_dir)
    for editor in ("region", "ip2p"):
        s.editor = editor
        for status, report in (("FAILED", "Edit failed: Timesteps: expected timesteps in [0,32), found [50]"),
                               ("DONE", "Applied v1"), ("RUNNING", "Editing")):
            s.status, s.report = status, report
            drawn = draw_all(bpy.context)
            main = drawn["EDIT3DGS_PT_main"]
            assert ("operator", "edit3dgs.open_log") in main and ("operator", "edit3dgs.run_edit") in main
            assert any(k == "label" and "Timesteps" in t for k, t in main) or status != "FAILED"
            assert (drawn["EDIT3DGS_PT_masks"] is None) == (editor == "region")
            assert ("prop", "views_per_iter") in drawn["EDIT3DGS_PT_editor"]
            assert ("prop", "iteration_multiplier") not in drawn["EDIT3DGS_PT_editor"]
    # the preview's colours follow the active camera: without one the History panel says what it shows
    history = draw_all(bpy.context)["EDIT3DGS_PT_history"]
    assert not any(k == "label" and "No active camera" in t for k, t in history)
    cam, scene.camera = scene.camera, None
    history = draw_all(bpy.context)["EDIT3DGS_PT_history"]
    assert any(k == "label" and "No active camera" in t for k, t in history)
    scene.camera = cam
