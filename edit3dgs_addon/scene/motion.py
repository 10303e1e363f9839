"""Motion on the FLAME rig: bulk keyframe writes and per-frame evaluation of its channels.

Keys go into the ID's action in bulk (``keyframe_points.add(n)`` + ``foreach_set``),
never key by key. Blender 4.4+ keeps F-curves in channel bags of slotted actions
(``action.layers[0].strips[0].channelbag(slot)``, formats.md §7); older actions keep
``action.fcurves``. The channel maths lives in ``edit3dgs_addon.motion`` (no bpy).
"""

from __future__ import annotations

import bpy
import numpy as np

from .. import motion as mo

LINEAR = 1  # enum value of 'LINEAR' in Keyframe.interpolation (foreach_set takes the integer)


def rig_objects(root) -> tuple:
    """(armature object, head mesh object) of the avatar under ``root``."""
    arm = head = None
    for o in root.children_recursive:
        role = o.get("edit3dgs_role")
        if role == "armature":
            arm = o
        elif role == "head":
            head = o
    return arm, head


def n_expr_keys(head) -> int:
    kb = head.data.shape_keys.key_blocks if head.data.shape_keys else ()
    n = 0
    while f"expr_{n:03d}" in kb:
        n += 1
    return n


# -- actions ------------------------------------------------------------------------------------
def _channelbag(idb, create: bool):
    """Where ``idb``'s F-curves live (a channel bag, or a legacy action); None when it has none."""
    ad = idb.animation_data
    if ad is None:
        if not create:
            return None
        ad = idb.animation_data_create()
    act = ad.action
    if act is None:
        if not create:
            return None
        act = bpy.data.actions.new(f"{idb.name}Action")
        ad.action = act
    if not hasattr(act, "layers"):  # Blender < 4.4
        return act
    slot = ad.action_slot
    if slot is None:
        if not create:
            return None
        slot = next((s for s in act.slots if s.target_id_type == idb.id_type), None) or \
            act.slots.new(id_type=idb.id_type, name=idb.name)
        ad.action_slot = slot
    if not len(act.layers):
        if not create:
            # An assigned action with no layers yet (legacy data converted on load keeps fcurves here).
            return None
        act.layers.new("Layer")
    layer = act.layers[0]
    if not len(layer.strips):
        if not create:
            return None
        layer.strips.new(type="KEYFRAME")
    return layer.strips[0].channelbag(slot, ensure=create)


def _fcurve(bag, path: str, index: int, group: str = "", create: bool = False):
    fc = bag.fcurves.find(path, index=index)
    if fc is None and create:
        if isinstance(bag, bpy.types.Action):  # legacy action (Blender < 4.4)
            fc = bag.fcurves.new(path, index=index, action_group=group)
        else:
            fc = bag.fcurves.new(path, index=index, group_name=group)
    return fc


def set_keys(fc, frames: np.ndarray, values: np.ndarray) -> None:
    """Keys (frames[i], values[i]) on ``fc``, linear; its old keys inside the frames' span are replaced."""
    kp = fc.keyframe_points
    n_old = len(kp)
    lo, hi = float(frames[0]) - 0.5, float(frames[-1]) + 0.5
    if n_old:
        old = np.empty(2 * n_old, np.float32)
        kp.foreach_get("co", old)
        inside = (old[0::2] > lo) & (old[0::2] < hi)
        if inside.all():
            kp.clear()
        else:
            for i in np.nonzero(inside)[0][::-1]:  # a few hand keys at most
                kp.remove(kp[int(i)], fast=True)
    start = len(kp)
    n = len(frames)
    kp.add(n)
    co = np.empty(2 * (start + n), np.float32)
    kp.foreach_get("co", co)
    co[2 * start::2] = frames
    co[2 * start + 1::2] = values
    kp.foreach_set("co", co)
    interp = np.empty(start + n, np.int32)
    kp.foreach_get("interpolation", interp)
    interp[start:] = LINEAR
    kp.foreach_set("interpolation", interp)
    fc.update()  # sort, handles


def write_channels(idb, channels: dict, frames: np.ndarray, groups: dict | None = None) -> int:
    """Key every {(data_path, index): values (T,)} of ``idb`` at ``frames``; returns the F-curve count."""
    bag = _channelbag(idb, create=True)
    for (path, index), vals in channels.items():
        group = (groups or {}).get(path, "")
        fc = _fcurve(bag, path, index, group, create=True)
        set_keys(fc, frames, np.asarray(vals, np.float32))
    return len(channels)


def _current(idb, path: str, index: int) -> float:
    v = idb.path_resolve(path)
    try:
        return float(v[index])
    except TypeError:
        return float(v)


def evaluate_channels(idb, keys, frames) -> dict:
    """Each channel's animated value at ``frames`` (its F-curve, else its current constant value)."""
    bag = _channelbag(idb, create=False)
    out = {}
    for path, index in keys:
        fc = _fcurve(bag, path, index) if bag is not None else None
        if fc is not None and not fc.mute and len(fc.keyframe_points):
            out[(path, index)] = np.array([fc.evaluate(float(f)) for f in frames], np.float64)
        else:
            out[(path, index)] = np.full(len(frames), _current(idb, path, index), np.float64)
    return out


# -- FLAME parameters ---------------------------------------------------------------------------
def bone_groups() -> dict:
    return {mo.bone_path(b): b for _, _, b in mo.BONES} | {"location": "Object Transforms"}


def key_motion(arm, head, motion: dict, frame_start: int) -> tuple[int, int]:
    """Keyframe ``motion`` (validated) on the rig from ``frame_start``; returns (frames, F-curves)."""
    n_expr = n_expr_keys(head)
    ch = mo.motion_to_channels(motion, n_expr)
    T = mo.num_frames(motion)
    frames = np.arange(frame_start, frame_start + T, dtype=np.float32)
    key = head.data.shape_keys
    # Shape-key sliders clamp values: widen them to the motion's range.
    lo, hi = float(motion["expr"].min(initial=0.0)), float(motion["expr"].max(initial=0.0))
    for i in range(n_expr):
        kb = key.key_blocks[f"expr_{i:03d}"]
        kb.slider_min, kb.slider_max = min(kb.slider_min, np.floor(lo) - 1), max(kb.slider_max, np.ceil(hi) + 1)
    for bone in (b for _, _, b in mo.BONES):
        arm.pose.bones[bone].rotation_mode = "QUATERNION"
    n = write_channels(key, ch["key"], frames) + write_channels(arm, ch["armature"], frames, bone_groups())
    return T, n


def rig_motion(arm, head, frames) -> dict:
    """The rig's FLAME parameters (expr, rotation, neck, jaw, eyes, translation) at ``frames``."""
    n_expr = n_expr_keys(head)
    proto = mo.motion_to_channels({k: np.zeros((1, w)) for k, w in mo.WIDTHS.items()} | {"expr": np.zeros((1, 1))},
                                  n_expr)
    key = evaluate_channels(head.data.shape_keys, proto["key"], frames)
    arm_ch = evaluate_channels(arm, proto["armature"], frames)
    return mo.channels_to_motion(key, arm_ch, n_expr)
