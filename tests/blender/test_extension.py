"""Package, install, register; import the built-in avatar; the preview follows the rig exactly."""

from __future__ import annotations

import zipfile

import bpy
import numpy as np
from mathutils import Quaternion, Vector

from conftest import EXT_MODULE, import_avatar, world_positions

OPERATORS = ("import_avatar", "run_edit", "cancel_edit", "apply_edit", "setup_backend")


def test_zip_layout(zip_path):
    names = set(zipfile.ZipFile(zip_path).namelist())
    for n in ("blender_manifest.toml", "__init__.py", "operators/__init__.py", "panels/__init__.py", "bridge.py",
              "protocol.py", "backend/pyproject.toml", "backend/edit3dgs/server.py", "backend/edit3dgs/rig_export.py", "LICENSE"):
        assert n in names, n
    assert not any("__pycache__" in n for n in names)
    # relative imports only: no module of the extension imports the repo's package names
    for n in names:
        if n.endswith(".py") and not n.startswith("backend/"):
            src = zipfile.ZipFile(zip_path).read(n).decode()
            assert "import edit3dgs_addon" not in src and "from edit3dgs_addon" not in src, n
            assert "import torch" not in src, n


def test_installed_and_registered(ext):
    assert EXT_MODULE in bpy.context.preferences.addons
    for op in OPERATORS:
        assert hasattr(bpy.ops.edit3dgs, op), op
        assert bpy.ops.edit3dgs.__getattr__(op).idname() == f"EDIT3DGS_OT_{op}"
    prefs = bpy.context.preferences.addons[EXT_MODULE].preferences
    assert type(prefs).bl_idname == EXT_MODULE
    assert hasattr(bpy.types, "EDIT3DGS_PT_main")
    assert ext.operators.__name__ == EXT_MODULE + ".operators"
    assert ext.panels.__name__ == EXT_MODULE + ".panels"
    user = bpy.utils.extension_path_user(EXT_MODULE, create=True)
    assert "user_default" in user


def pose_rig(arm, head, params: dict) -> None:
    """FLAME parameters onto the rig (axis-angle -> quaternion), the way motion import keys them."""
    def q(v):
        v = Vector(v)
        return Quaternion(v.normalized(), v.length) if v.length > 0 else Quaternion()

    keys = head.data.shape_keys.key_blocks
    for i, v in enumerate(params.get("expr", [])):
        keys[f"expr_{i:03d}"].value = v
    pb = arm.pose.bones
    pb["root"].rotation_quaternion = q(params.get("rotation", (0, 0, 0)))
    pb["neck"].rotation_quaternion = q(params.get("neck_pose", (0, 0, 0)))
    pb["jaw"].rotation_quaternion = q(params.get("jaw_pose", (0, 0, 0)))
    eyes = params.get("eyes_pose", (0,) * 6)
    pb["eye_left"].rotation_quaternion = q(eyes[:3])
    pb["eye_right"].rotation_quaternion = q(eyes[3:])
    arm.location = params.get("translation", (0, 0, 0))


def key_rig(arm, head, frame: int) -> None:
    for i in range(100):
        head.data.shape_keys.key_blocks[f"expr_{i:03d}"].keyframe_insert("value", frame=frame)
    for n in ("root", "neck", "jaw", "eye_left", "eye_right"):
        arm.pose.bones[n].keyframe_insert("rotation_quaternion", frame=frame)
    arm.keyframe_insert("location", frame=frame)


POSES = {
    3: {"expr": [1.2, 1.5, 0, 0, 0, -0.7] + [0.0] * 94, "jaw_pose": [0.25, 0.02, 0.0], "neck_pose": [0.1, -0.2, 0.05],
        "rotation": [0.05, 0.3, -0.1], "eyes_pose": [0.1, 0.2, 0, 0.1, -0.1, 0], "translation": [0.01, -0.02, 0.03]},
    11: {"expr": [-0.8, 0.4, 1.0] + [0.0] * 96 + [0.5], "jaw_pose": [0.1, 0.0, 0.03], "neck_pose": [-0.15, 0.1, 0.0],
         "rotation": [-0.1, -0.4, 0.05], "eyes_pose": [-0.05, -0.2, 0, 0, 0.15, 0], "translation": [-0.02, 0.0, 0.01]},
}


def preview_positions(prev):
    import sys

    preview = sys.modules[EXT_MODULE + ".scene.preview"]
    return preview.evaluated_positions(prev, bpy.context.evaluated_depsgraph_get())


def check_follows_rig(objs, avatar_folder, tmp_path):
    arm, head, prev = objs["armature"], objs["head"], objs["preview"]
    for frame, params in POSES.items():
        pose_rig(arm, head, params)
        key_rig(arm, head, frame)
    errs = {}
    for frame, params in POSES.items():
        bpy.context.scene.frame_set(frame)
        got = preview_positions(prev)
        want = world_positions(avatar_folder, params, tmp_path)
        assert got.shape == want.shape
        errs[frame] = float(np.abs(got - want).max())
    assert max(errs.values()) < 1e-4, errs
    return errs


def test_import_rig_preview_cameras(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    arm, head, prev = objs["armature"], objs["head"], objs["preview"]
    keys = head.data.shape_keys.key_blocks
    assert [k.name for k in keys][1:101] == [f"expr_{i:03d}" for i in range(100)]
    assert {b.name for b in arm.data.bones} >= {"root", "neck", "jaw", "eye_left", "eye_right"}
    assert head.modifiers[0].type == "ARMATURE" and head.parent == arm
    rig = np.load(prev.edit3dgs.versions[0].npz)
    assert len(head.data.polygons) == len(rig["rig_faces"]) and len(head.data.vertices) == len(rig["rig_verts"])
    # skinning weights are FLAME's
    vg = head.vertex_groups["DEF-jaw"].index
    w = np.array([next((g.weight for g in v.groups if g.group == vg), 0.0) for v in head.data.vertices])
    assert np.abs(w - rig["weights"][:, 2]).max() < 1e-6
    # the preview: bulk attributes, Geometry Nodes, material reading the colour
    me = prev.data
    assert len(me.vertices) == len(rig["gs_binding"])
    for a in ("binding", "gs_xyz", "gs_color", "gs_opacity", "gs_scale", "gs_region"):
        assert a in me.attributes, a
    assert prev.modifiers[0].type == "NODES"
    assert any(n.type == "ATTRIBUTE" and n.attribute_name == "gs_color" for n in prev.material_slots[0].material.node_tree.nodes)
    # the point cloud is drawn with radii from the Gaussians' scale: each sphere ends where the Gaussian's alpha
    # falls below 1/255, min(3.33, sqrt(2 ln(255 opacity))) sigmas of its largest axis from its centre
    import sys

    from edit3dgs_addon.shcolor import gaussian_extent

    r = sys.modules[EXT_MODULE + ".scene.preview"].evaluated_radii(prev, bpy.context.evaluated_depsgraph_get())
    assert np.allclose(r, rig["gs_scale"] * gaussian_extent(rig["gs_opacity"]), rtol=1e-4, atol=1e-7)
    # cameras
    coll = bpy.data.collections["Key Views"]
    assert len(coll.objects) == 16 and all(o.type == "CAMERA" for o in coll.objects)
    # rest pose equals the backend's
    got = preview_positions(prev)
    want = world_positions(avatar_dir, {}, tmp_path)
    assert np.abs(got - want).max() < 1e-4


def test_preview_follows_rig_at_two_frames(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    errs = check_follows_rig(objs, avatar_dir, tmp_path)
    print("max position error per frame:", errs)


def test_preview_colour_follows_the_camera_per_frame(scene, ext, avatar_dir):
    """The view-dependent colour is evaluated by the Follow Rig nodes toward the active camera at every frame (no
    handlers): with the camera and the rig animated, every point's colour at two frames is the backend's
    (shcolor.view_colors toward that frame's camera, then sRGB -> scene-linear), within float32 rounding."""
    import sys

    from edit3dgs_addon.rigfile import load
    from edit3dgs_addon.shcolor import srgb_to_linear, view_colors

    preview = sys.modules[EXT_MODULE + ".scene.preview"]
    objs = import_avatar(avatar_dir)
    arm, head, prev = objs["armature"], objs["head"], objs["preview"]
    rig = load(prev.edit3dgs.versions[0].npz, need_rig=False)
    n = rig.n_gaussians
    rng = np.random.default_rng(0)
    rig.data["gs_sh_rest"] = rng.normal(0, 0.15, (n, 15, 3)).astype(np.float16)  # strong in every band
    rig.data["gs_base_color"] = rig["gs_base_color"] + rng.normal(0, 0.3, (n, 3)).astype(np.float32)  # some out of range
    preview.write_attributes(prev.data, rig)
    cam = scene.camera  # the first key view; at frame 11 it moves to where the back view (cam12) is
    assert cam is not None and cam.type == "CAMERA"
    back = next(o for o in objs["all"] if o.name.endswith("cam12"))
    for frame, loc in ((3, cam.location.copy()), (11, back.location.copy())):
        pose_rig(arm, head, POSES[frame])
        key_rig(arm, head, frame)
        cam.location = loc
        cam.keyframe_insert("location", frame=frame)
    base, rest = rig["gs_base_color"], rig["gs_sh_rest"].astype(np.float32)
    seen = {}
    for frame in (3, 11):
        scene.frame_set(frame)
        dg = bpy.context.evaluated_depsgraph_get()
        eye = np.array(prev.matrix_world.inverted() @ cam.evaluated_get(dg).matrix_world.translation, np.float32)
        got = preview.evaluated_colors(prev, dg)
        want = srgb_to_linear(view_colors(base, rest, preview.evaluated_positions(prev, dg), eye))
        err = float(np.abs(got[:, :3] - want).max())
        print(f"frame {frame}: camera at {np.round(eye, 3)} (avatar space), max colour error {err:.2e}")
        assert err < 1e-5, (frame, err)
        assert np.array_equal(got[:, 3], rig["gs_opacity"].astype(np.float32))
        seen[frame] = got
    # the two frames' colours really differ (a preview coloured once could not match both)
    assert np.abs(seen[3] - seen[11]).max() > 0.3
    # the modifier's View-Dependent Colour off: the view-independent colours (the mesh's)
    mod = prev.modifiers[0]
    socket = next(i.identifier for i in mod.node_group.interface.items_tree
                  if getattr(i, "in_out", None) == "INPUT" and i.name == preview.VIEW_SOCKET)
    assert mod[socket]
    mod[socket] = False
    prev.update_tag()
    got = preview.evaluated_colors(prev, bpy.context.evaluated_depsgraph_get())
    assert np.array_equal(got, preview.read_colors(prev.data))
    mod[socket] = True
    prev.update_tag()
    # no active camera: the view-independent colours (the mesh's)
    scene.camera = None
    got = preview.evaluated_colors(prev, bpy.context.evaluated_depsgraph_get())
    assert np.array_equal(got, preview.read_colors(prev.data))
    scene.camera = cam
    # rig files of SH degree 2, 1 and 0: the bands of the version before are gone (they read as zero)
    full = rig["gs_sh_rest"]
    for bands in (8, 3, 0):
        rig.data["gs_sh_rest"] = full[:, :bands]
        preview.write_attributes(prev.data, rig)
        dg = bpy.context.evaluated_depsgraph_get()
        eye = np.array(prev.matrix_world.inverted() @ cam.evaluated_get(dg).matrix_world.translation, np.float32)
        want = srgb_to_linear(view_colors(base, rest[:, :bands], preview.evaluated_positions(prev, dg), eye))
        assert sum(a.name.startswith("gs_sh_") for a in prev.data.attributes) == bands
        assert np.abs(preview.evaluated_colors(prev, dg)[:, :3] - want).max() < 1e-5, bands
    # a preview from an older add-on (no base colour): the colours it was given
    prev.data.attributes.remove(prev.data.attributes["gs_base_color"])
    prev.data.update()
    got = preview.evaluated_colors(prev, bpy.context.evaluated_depsgraph_get())
    assert np.array_equal(got, preview.read_colors(prev.data))


def test_older_preview_nodes_are_rebuilt_in_place(scene, ext, avatar_dir):
    """A .blend saved by an older add-on: Apply brings the preview's node group and material up to date in place
    (the modifier keeps its rig), and the preview's points and colours are this version's."""
    import sys

    preview = sys.modules[EXT_MODULE + ".scene.preview"]
    objs = import_avatar(avatar_dir)
    prev = objs["preview"]
    dg = bpy.context.evaluated_depsgraph_get()
    pos, col, rad = (f(prev, dg).copy() for f in (preview.evaluated_positions, preview.evaluated_colors,
                                                   preview.evaluated_radii))
    mod = prev.modifiers[0]
    ng, mat = mod.node_group, prev.material_slots[0].material
    # a second preview (another avatar, or a Compare copy) from the older add-on: no extent, no SH bands
    older = prev.copy()
    older.data = prev.data.copy()
    bpy.context.scene.collection.objects.link(older)
    for name in ("gs_extent", "gs_base_color", *preview.SH_ATTRIBUTES):
        if name in older.data.attributes:
            older.data.attributes.remove(older.data.attributes[name])
    for idblock in (ng, mat):  # as an older add-on left them
        del idblock["edit3dgs_nodes"]
    ng.interface.remove(next(i for i in ng.interface.items_tree  # the older group had no View-Dependent switch
                             if getattr(i, "in_out", None) == "INPUT" and i.name == preview.VIEW_SOCKET))
    ng.nodes.clear()
    mat.node_tree.nodes.clear()
    bpy.context.scene.cycles.transparent_max_bounces = 8   # and its scene's Cycles default
    assert bpy.ops.edit3dgs.apply_edit(index=0) == {"FINISHED"}
    assert bpy.context.scene.cycles.transparent_max_bounces == 256
    assert mod.node_group == ng and prev.material_slots[0].material == mat
    assert ng["edit3dgs_nodes"] == mat["edit3dgs_nodes"] == preview.NODES_VERSION
    assert any(n.type == "POINT_INFO" for n in mat.node_tree.nodes)
    dg = bpy.context.evaluated_depsgraph_get()
    assert np.array_equal(preview.evaluated_positions(prev, dg), pos)
    assert np.array_equal(preview.evaluated_colors(prev, dg), col)
    assert np.array_equal(preview.evaluated_radii(prev, dg), rad)
    # the older preview did not vanish: this version's radii, and its view-independent colours
    assert np.array_equal(preview.evaluated_radii(older, dg), rad)
    assert np.array_equal(preview.evaluated_colors(older, dg), preview.read_colors(older.data))


def test_camera_matches_transforms(scene, ext, avatar_dir):
    import json

    objs = import_avatar(avatar_dir)
    frames = {f["camera_index"]: f for f in json.loads((avatar_dir / "cameras.json").read_text())["frames"]}
    root = objs["root"]
    from bpy_extras.object_utils import world_to_camera_view

    head_center = root.matrix_world @ Vector((0.0, 0.0, 0.0))
    for cam in bpy.data.collections["Key Views"].objects:
        f = frames[cam["edit3dgs_camera_index"]]
        c2w = np.array((root.matrix_world.inverted() @ cam.matrix_world))
        assert np.abs(c2w - np.array(f["transform_matrix"])).max() < 1e-5
        # projecting the head centre: Blender's own projection vs the pinhole (OpenCV) one
        scene.render.resolution_x, scene.render.resolution_y = f["w"], f["h"]
        ndc = world_to_camera_view(scene, cam, head_center)
        px_blender = np.array([ndc.x * f["w"], (1 - ndc.y) * f["h"]])
        pc = np.linalg.inv(np.array(f["transform_matrix"]) @ np.diag([1, -1, -1, 1])) @ np.array([0, 0, 0, 1.0])
        px_cv = np.array([f["fl_x"] * pc[0] / pc[2] + f["cx"], f["fl_y"] * pc[1] / pc[2] + f["cy"]])
        assert np.abs(px_blender - px_cv).max() < 0.5, (cam.name, px_blender, px_cv)
