"""The FLAME rig: identity-baked mesh, expression shape keys, armature skinned with FLAME's weights.

Exactly FLAME's linear blend skinning, with Blender's own pieces:
- expression blend shapes are shape keys ``expr_000``...;
- pose correctives are shape keys ``pose_<joint>_<r><c>`` driven by (R - I)[r, c] of the
  joint's bone rotation (simple driver expressions, no Python needed to evaluate);
- FLAME regresses joints from the expression-shaped mesh, so a joint's pivot moves with
  the expression: each joint has a pivot bone (``MCH-<joint>``, location driven linearly by
  the expression keys), the bone an artist poses (``<joint>``, rotation) and a deform bone
  (``DEF-<joint>``, location = minus the pivot offset). Then every DEF bone's skinning matrix
  equals FLAME's A_k = G_k T(-J'_k).
- the armature object's location is FLAME's ``translation``; bone ``root`` its global rotation.
All in FLAME's axes (y up) under a root empty that stands the head up in Blender (z up).
"""

from __future__ import annotations

import bpy
import numpy as np

from ..rigfile import BONE_NAMES, RigFile, linear_expressions, pose_feature_expression, unique_weight_groups

BONE_LENGTH = 0.02
# FLAME pose-corrective feature order: joints 1..4 (neck, jaw, eye_left, eye_right), row-major 3x3.
POSE_JOINTS = (1, 2, 3, 4)


def bone_names(rig: RigFile) -> list[str]:
    return [BONE_NAMES.get(str(n), str(n)) for n in rig["joint_names"]]


def build_mesh(rig: RigFile, name: str) -> bpy.types.Mesh:
    verts, faces = rig["rig_verts"], rig["rig_faces"]
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    me.polygons.add(len(faces))
    # Triangles in order: corner 3f+i is vertex faces[f, i] (the preview samples corners by binding).
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    return me


def add_shape_keys(obj: bpy.types.Object, rig: RigFile, names: list[str]) -> None:
    base = rig["rig_verts"].astype(np.float32)
    obj.shape_key_add(name="Basis", from_mix=False)
    for i, d in enumerate(rig["expr_deltas"]):
        kb = obj.shape_key_add(name=f"expr_{i:03d}", from_mix=False)
        kb.points.foreach_set("co", (base + d).ravel())
        kb.slider_min, kb.slider_max = -10.0, 10.0
        kb.value = 0.0
    for p, d in enumerate(rig["pose_deltas"]):
        j, rc = POSE_JOINTS[p // 9], p % 9
        kb = obj.shape_key_add(name=f"pose_{names[j]}_{rc // 3}{rc % 3}", from_mix=False)
        kb.points.foreach_set("co", (base + d).ravel())
        kb.slider_min, kb.slider_max = -10.0, 10.0
    obj.data.shape_keys.use_relative = True
    obj.data.shape_keys.name = f"{obj.name}_keys"


def build_armature(rig: RigFile, name: str, collection) -> bpy.types.Object:
    names = bone_names(rig)
    joints, parents = rig["joints"].astype(np.float64), rig["parents"]
    arm = bpy.data.armatures.new(name)
    arm_obj = bpy.data.objects.new(name, arm)
    collection.objects.link(arm_obj)
    view_layer = bpy.context.view_layer
    prev_active = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        eb = arm.edit_bones
        for j, n in enumerate(names):
            head = tuple(joints[j])
            tail = (joints[j][0], joints[j][1] + BONE_LENGTH, joints[j][2])  # +y, roll 0: identity rest
            for bname, deform, length in ((f"MCH-{n}", False, 0.5), (n, False, 1.0), (f"DEF-{n}", True, 0.3)):
                b = eb.new(bname)
                b.head, b.tail, b.roll = head, (tail[0], head[1] + BONE_LENGTH * length, tail[2]), 0.0
                b.use_deform = deform
        for j, n in enumerate(names):
            eb[n].parent = eb[f"MCH-{n}"]
            eb[f"DEF-{n}"].parent = eb[n]
            if parents[j] >= 0:
                eb[f"MCH-{n}"].parent = eb[f"DEF-{names[parents[j]]}"]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = prev_active
    for pb in arm_obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
        if pb.name.startswith(("MCH-", "DEF-")):
            pb.bone.hide = True
    return arm_obj


def skin(mesh_obj, arm_obj, rig: RigFile) -> None:
    names = bone_names(rig)
    w = rig["weights"]
    for j, n in enumerate(names):
        vg = mesh_obj.vertex_groups.new(name=f"DEF-{n}")
        for value, idx in unique_weight_groups(w[:, j]):
            vg.add(idx, value, "REPLACE")
    mod = mesh_obj.modifiers.new("FLAME skinning", "ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_deform_preserve_volume = False


def add_drivers(mesh_obj, arm_obj, rig: RigFile) -> None:
    names = bone_names(rig)
    key = mesh_obj.data.shape_keys
    # Pose correctives: (R_j - I)[r, c] from the posed bone's local rotation.
    for p in range(rig["pose_deltas"].shape[0]):
        j, rc = POSE_JOINTS[p // 9], p % 9
        kb = key.key_blocks[f"pose_{names[j]}_{rc // 3}{rc % 3}"]
        drv = kb.driver_add("value").driver
        drv.type = "SCRIPTED"
        for comp in "wxyz":
            v = drv.variables.new()
            v.name, v.type = comp, "TRANSFORMS"
            t = v.targets[0]
            t.id, t.bone_target = arm_obj, names[j]
            t.transform_type, t.rotation_mode, t.transform_space = f"ROT_{comp.upper()}", "QUATERNION", "LOCAL_SPACE"
        drv.expression = pose_feature_expression(rc // 3, rc % 3)
    # Joint pivots follow the expression (linear in the expr shape-key values). Blender keeps a
    # driver expression to 256 characters, so partial sums live in custom properties of the
    # armature object and the bones add them up.
    jd = rig["joint_expr"]
    var_names = [f"e{i}" for i in range(jd.shape[2])]
    for j, n in enumerate(names):
        for c in range(3):
            parts = linear_expressions(jd[j, c], var_names)
            if not parts:
                continue
            props = []
            for q, (expr, used) in enumerate(parts):
                prop = f"edit3dgs_pivot_{n}_{'xyz'[c]}_{q}"
                arm_obj[prop] = 0.0
                drv = arm_obj.driver_add(f'["{prop}"]').driver
                drv.type = "SCRIPTED"
                for i in used:
                    v = drv.variables.new()
                    v.name, v.type = var_names[i], "SINGLE_PROP"
                    v.targets[0].id_type = "KEY"
                    v.targets[0].id = key
                    v.targets[0].data_path = f'key_blocks["expr_{i:03d}"].value'
                drv.expression = expr
                props.append(prop)
            for sign, bone in (("", f"MCH-{n}"), ("-", f"DEF-{n}")):
                drv = arm_obj.pose.bones[bone].driver_add("location", c).driver
                drv.type = "SCRIPTED"
                for q, prop in enumerate(props):
                    v = drv.variables.new()
                    v.name, v.type = f"p{q}", "SINGLE_PROP"
                    v.targets[0].id_type = "OBJECT"
                    v.targets[0].id = arm_obj
                    v.targets[0].data_path = f'["{prop}"]'
                drv.expression = sign + "(" + "+".join(f"p{q}" for q in range(len(props))) + ")"


def build_rig(rig: RigFile, name: str, collection, root) -> tuple:
    """Armature (child of ``root``) and the skinned mesh (child of the armature)."""
    arm_obj = build_armature(rig, f"{name}_rig", collection)
    arm_obj.parent = root
    me = build_mesh(rig, f"{name}_head")
    mesh_obj = bpy.data.objects.new(f"{name}_head", me)
    collection.objects.link(mesh_obj)
    mesh_obj.parent = arm_obj
    add_shape_keys(mesh_obj, rig, bone_names(rig))
    skin(mesh_obj, arm_obj, rig)
    add_drivers(mesh_obj, arm_obj, rig)
    return arm_obj, mesh_obj
