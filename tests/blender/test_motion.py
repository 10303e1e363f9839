"""Motion import/export on the FLAME rig (bpy 5.0.1 headless, the real backend for world positions)."""

from __future__ import annotations

import sys

import bpy
import numpy as np
import pytest

from conftest import EXT_MODULE, import_avatar, world_positions
from edit3dgs_addon import motion as mo

KEYS = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def held_out(avatar_dir) -> dict:
    with np.load(avatar_dir / "sequences" / "held_out.npz") as z:
        return {k: z[k] for k in z.files}


def lively(seq: dict, seed: int = 0) -> dict:
    """The held-out motion with larger, varied poses (so every channel is exercised)."""
    rng = np.random.default_rng(seed)
    T = seq["expr"].shape[0]
    out = dict(seq)
    out["expr"] = (seq["expr"] + rng.normal(0, 0.5, seq["expr"].shape)).astype(np.float32)
    for k, s in (("rotation", 0.3), ("neck_pose", 0.2), ("jaw_pose", 0.15), ("eyes_pose", 0.2), ("translation", 0.02)):
        out[k] = (seq[k] + rng.normal(0, s, (T, seq[k].shape[1]))).astype(np.float32)
    out["shape"] = rng.normal(0, 1, seq["shape"].shape).astype(np.float32)  # someone else: must not be used
    return out


def rig_motion(objs, frames):
    sm = sys.modules[EXT_MODULE + ".scene.motion"]
    return sm.rig_motion(objs["armature"], objs["head"], np.asarray(frames))


def pose_from_scene(objs) -> dict:
    """FLAME parameters read back from the evaluated scene (after frame_set), not from F-curves."""
    arm, head = objs["armature"], objs["head"]
    kb = head.data.shape_keys.key_blocks
    n = sum(1 for k in kb if k.name.startswith("expr_"))
    out = {"expr": np.array([kb[f"expr_{i:03d}"].value for i in range(n)])}
    aa = lambda b: mo.quat_to_axis_angle(np.array(arm.pose.bones[b].rotation_quaternion))  # noqa: E731
    out["rotation"], out["neck_pose"], out["jaw_pose"] = aa("root"), aa("neck"), aa("jaw")
    out["eyes_pose"] = np.concatenate([aa("eye_left"), aa("eye_right")])
    out["translation"] = np.array(arm.location)
    return out


def test_rotation_maths():
    rng = np.random.default_rng(1)
    aa = rng.normal(0, 1.0, (50, 3))
    q = mo.axis_angle_to_quat(aa)
    assert np.allclose(mo.quat_to_axis_angle(q), aa, atol=1e-12)
    assert np.allclose(mo.quat_to_axis_angle(-q * 3.0), mo.quat_to_axis_angle(-q), atol=1e-12)
    from mathutils import Quaternion, Vector

    for v in aa[:5]:
        bq = Quaternion(Vector(v).normalized(), float(np.linalg.norm(v)))
        assert np.allclose(np.array(bq), mo.axis_angle_to_quat(v), atol=1e-6)
    # resampling: same duration, endpoints kept, a 2x rate halves the step
    m = {k: rng.normal(0, 0.2, (5, w)) for k, w in mo.WIDTHS.items()} | {"expr": rng.normal(0, 1, (5, 10))}
    r = mo.resample(m, 25.0, 50.0)
    assert r["expr"].shape == (9, 10)
    for k in mo.MOTION_KEYS:
        assert np.allclose(r[k][::2], m[k], atol=1e-9), k
    assert np.allclose(r["expr"][1], (m["expr"][0] + m["expr"][1]) / 2)
    assert mo.resample(m, 30.0, 24.0)["expr"].shape == (4, 10)


def test_import_motion_keys_rig_and_preview(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    seq = lively(held_out(avatar_dir))
    path = tmp_path / "motion.npz"
    np.savez(path, **seq)
    T = seq["expr"].shape[0]
    assert bpy.ops.edit3dgs.import_motion(filepath=str(path), frame_start=10) == {"FINISHED"}
    assert "cross-identity" in scene.edit3dgs.report
    assert (scene.frame_start, scene.frame_end) == (10, 10 + T - 1)
    # bulk writes into the slotted action's channel bag
    ad = objs["head"].data.shape_keys.animation_data
    bag = ad.action.layers[0].strips[0].channelbag(ad.action_slot)
    assert len(bag.fcurves) == 100 and all(len(fc.keyframe_points) == T for fc in bag.fcurves)
    frames = (0, T // 2, T - 1)
    got = rig_motion(objs, [10 + t for t in frames])
    for i, t in enumerate(frames):
        for k in KEYS:
            assert np.abs(got[k][i] - seq[k][t]).max() < 1e-5, (k, t)
        scene.frame_set(10 + t)
        read = pose_from_scene(objs)
        for k in KEYS:
            assert np.abs(read[k] - seq[k][t]).max() < 1e-5, (k, t)
        # the preview follows: point positions equal the backend's (avatar's shape, the file's motion)
        prev = sys.modules[EXT_MODULE + ".scene.preview"]
        pos = prev.evaluated_positions(objs["preview"], bpy.context.evaluated_depsgraph_get())
        want = world_positions(avatar_dir, {k: seq[k][t].tolist() for k in KEYS}, tmp_path)
        assert np.abs(pos - want).max() < 1e-4, t

    # export round-trips; after hand edits it writes exactly the keyed values
    out = tmp_path / "out.npz"
    assert bpy.ops.edit3dgs.export_motion(filepath=str(out)) == {"FINISHED"}
    with np.load(out) as z:
        exp = {k: z[k] for k in z.files}
    with np.load(avatar_dir / "flame_param.npz") as z:
        assert np.array_equal(exp["shape"], z["shape"])  # the avatar's identity, not the motion's
    for k in KEYS:
        assert exp[k].shape == seq[k].shape and np.abs(exp[k] - seq[k]).max() < 1e-5, k

    arm, head = objs["armature"], objs["head"]
    f = 10 + 3
    kb = head.data.shape_keys.key_blocks["expr_004"]
    kb.value = 2.75
    kb.keyframe_insert("value", frame=f)
    jaw = arm.pose.bones["jaw"]
    from mathutils import Quaternion

    jaw.rotation_quaternion = Quaternion((1.0, 0.0, 0.0), 0.4)
    jaw.keyframe_insert("rotation_quaternion", frame=f)
    arm.location = (0.01, 0.02, -0.03)
    arm.keyframe_insert("location", index=1, frame=f)  # only y keyed; x, z stay the motion's
    assert bpy.ops.edit3dgs.export_motion(filepath=str(out)) == {"FINISHED"}
    with np.load(out) as z:
        exp = {k: z[k] for k in z.files}
    t = f - 10
    assert abs(exp["expr"][t, 4] - 2.75) < 1e-6
    assert np.abs(exp["jaw_pose"][t] - [0.4, 0, 0]).max() < 1e-6
    assert abs(exp["translation"][t, 1] - 0.02) < 1e-7
    assert np.abs(exp["translation"][t, [0, 2]] - seq["translation"][t, [0, 2]]).max() < 1e-6
    others = [i for i in range(T) if i != t]
    for k in KEYS:
        assert np.abs(exp[k][others] - seq[k][others]).max() < 1e-5, k


def test_dataset_folder_and_fps(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    seq = held_out(avatar_dir)
    T = 5
    folder = tmp_path / "dataset" / "flame_param"
    folder.mkdir(parents=True)
    for t in range(T):
        np.savez(folder / f"{t:05d}.npz", **{k: seq[k][t:t + 1] for k in KEYS}, shape=seq["shape"][None])
    scene.render.fps, scene.render.fps_base = 50, 1.0
    assert bpy.ops.edit3dgs.import_motion(filepath=str(folder.parent), frame_start=1, source_fps=25.0) == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (1, 2 * T - 1)
    got = rig_motion(objs, np.arange(1, 2 * T, 2))  # every other scene frame is a source frame
    for k in KEYS:
        assert np.abs(got[k] - seq[k][:T]).max() < 1e-5, k


def write_vhap_dataset(root, seq, n_train=4, n_test=2):
    """A dataset folder as VHAP exports it (formats.md §2): train = timesteps 0..n_train-1 x cameras
    0, 1; val = the same timesteps x camera 2; test = the later timesteps x every camera. Frames
    listed newest first and per-frame files named by a scrambled original index (so neither file
    order nor name order is timestep order); ``shape`` unbatched, the rest with a leading 1.
    Frame t holds frame t of ``seq``."""
    import json

    (root / "flame_param").mkdir(parents=True)
    T = n_train + n_test
    orig = [7, 3, 9, 1, 5, 0, 8, 2][:T]
    for t in range(T):
        np.savez(root / "flame_param" / f"{orig[t]:05d}.npz", **{k: seq[k][t:t + 1] for k in KEYS}, shape=seq["shape"])

    def frames(ts, cams):
        return [{"timestep_index": t, "timestep_index_original": orig[t], "timestep_id": f"frame_{orig[t]:05d}",
                 "camera_index": c, "camera_id": f"22{c:04d}", "file_path": f"images/{t:05d}_{c:02d}.png",
                 "flame_param_path": f"flame_param/{orig[t]:05d}.npz"} for t in reversed(ts) for c in cams]

    splits = {"train": frames(range(n_train), [0, 1]), "val": frames(range(n_train), [2]),
              "test": frames(range(n_train, T), [0, 1, 2])}
    for name, fr in splits.items():
        (root / f"transforms_{name}.json").write_text(json.dumps({"frames": fr, "timestep_indices": sorted({f["timestep_index"] for f in fr}),
                                                                  "camera_indices": sorted({f["camera_index"] for f in fr})}))
    return splits


def test_dataset_frames_by_timestep_index_across_splits(scene, ext, avatar_dir, tmp_path):
    """A VHAP/GaussianAvatars dataset folder: frame t of the motion is the frame whose timestep_index
    is t, whichever split holds it (as the backend's --flame-params DATASET reads it); a timestep
    with two FLAME files, or one missing, is refused before anything is keyed."""
    import json

    objs = import_avatar(avatar_dir)
    seq = lively(held_out(avatar_dir), seed=2)
    scene.render.fps, scene.render.fps_base = 25, 1.0

    def refused(folder, want):
        with pytest.raises(RuntimeError, match="Motion not imported"):
            bpy.ops.edit3dgs.import_motion(filepath=str(folder), frame_start=1)
        assert want in scene.edit3dgs.report, scene.edit3dgs.report
        for idb in (objs["armature"], objs["head"].data.shape_keys):
            assert idb.animation_data is None or idb.animation_data.action is None

    bad = tmp_path / "gap"
    splits = write_vhap_dataset(bad, seq)
    (bad / "transforms_val.json").write_text(json.dumps({"frames": [f for f in splits["val"] if f["timestep_index"] != 2]}))
    (bad / "transforms_train.json").write_text(json.dumps({"frames": [f for f in splits["train"] if f["timestep_index"] != 2]}))
    refused(bad, "no frame with timestep_index 2")
    bad = tmp_path / "twice"
    splits = write_vhap_dataset(bad, seq)
    splits["val"][0]["flame_param_path"] = "flame_param/00000.npz"  # timestep 3's val frame names timestep 5's file
    (bad / "transforms_val.json").write_text(json.dumps({"frames": splits["val"]}))
    refused(bad, "one flame_param_path per timestep_index (timestep_index 3)")

    ds = tmp_path / "subject"
    write_vhap_dataset(ds, seq)
    assert bpy.ops.edit3dgs.import_motion(filepath=str(ds), frame_start=1) == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (1, 6)
    assert "6 frames by timestep_index 0..5 from transforms_train.json, transforms_val.json, transforms_test.json" \
        in scene.edit3dgs.report
    got = rig_motion(objs, np.arange(1, 7))
    for k in KEYS:
        assert np.abs(got[k] - seq[k][:6]).max() < 1e-5, k
    # one split: its own timesteps in order (the test split holds the later ones)
    assert bpy.ops.edit3dgs.import_motion(filepath=str(ds), frame_start=1, split="test") == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (1, 2) and "timestep_index 4..5 from transforms_test.json" in scene.edit3dgs.report
    got = rig_motion(objs, np.arange(1, 3))
    for k in KEYS:
        assert np.abs(got[k] - seq[k][4:6]).max() < 1e-5, k


@pytest.mark.parametrize("case", ["missing", "shape", "nan", "garbage"])
def test_bad_motion_reports_and_keys_nothing(scene, ext, avatar_dir, tmp_path, case):
    objs = import_avatar(avatar_dir)
    seq = held_out(avatar_dir)
    path = tmp_path / f"{case}.npz"
    if case == "missing":
        np.savez(path, **{k: v for k, v in seq.items() if k != "jaw_pose"})
        want = "expected keys expr, rotation, neck_pose, jaw_pose, eyes_pose, translation, found no jaw_pose"
    elif case == "shape":
        np.savez(path, **(seq | {"eyes_pose": seq["eyes_pose"][:, :3]}))
        want = f"expected eyes_pose of shape ({seq['expr'].shape[0]},6)"
    elif case == "nan":
        bad = seq["expr"].copy()
        bad[2, 1] = np.nan
        np.savez(path, **(seq | {"expr": bad}))
        want = "expected finite values in expr"
    else:
        path.write_bytes(b"not an npz")
        want = "expected a FLAME parameter file (.npz)"
    frame_range = (scene.frame_start, scene.frame_end)
    with pytest.raises(RuntimeError, match="Motion not imported"):
        bpy.ops.edit3dgs.import_motion(filepath=str(path))
    rep = scene.edit3dgs.report
    assert str(path) in rep and want in rep, rep
    for idb in (objs["armature"], objs["head"].data.shape_keys):  # (drivers live there; no action)
        assert idb.animation_data is None or idb.animation_data.action is None
    assert (scene.frame_start, scene.frame_end) == frame_range


def test_reimport_replaces_keys_in_range_keeps_others(scene, ext, avatar_dir, tmp_path):
    objs = import_avatar(avatar_dir)
    seq = held_out(avatar_dir)
    T = seq["expr"].shape[0]
    kb = objs["head"].data.shape_keys.key_blocks["expr_001"]
    kb.value = 1.5
    kb.keyframe_insert("value", frame=3)      # inside the motion's span: replaced
    kb.value = -2.0
    kb.keyframe_insert("value", frame=100)    # outside: kept
    assert bpy.ops.edit3dgs.import_motion(filepath=str(avatar_dir / "sequences" / "held_out.npz"), frame_start=1,
                                          set_range=False) == {"FINISHED"}
    assert bpy.ops.edit3dgs.import_motion(filepath=str(avatar_dir / "sequences" / "held_out.npz"), frame_start=1,
                                          set_range=False) == {"FINISHED"}
    ad = objs["head"].data.shape_keys.animation_data
    fc = ad.action.layers[0].strips[0].channelbag(ad.action_slot).fcurves.find('key_blocks["expr_001"].value')
    frames = [k.co[0] for k in fc.keyframe_points]
    assert frames == [float(f) for f in range(1, T + 1)] + [100.0]
    assert abs(fc.evaluate(3) - seq["expr"][2, 1]) < 1e-6 and fc.evaluate(100) == -2.0


def test_motion_at_the_avatars_fps_is_resampled_to_the_scene(scene, ext, avatar_dir):
    """No Source FPS given: the motion runs at the avatar's frame rate (avatar.json), whatever the scene's."""
    objs = import_avatar(avatar_dir)
    assert abs(scene.render.fps / scene.render.fps_base - 25) < 1e-6  # import took the avatar's 25 fps
    seq = held_out(avatar_dir)
    T = len(seq["expr"])
    scene.render.fps, scene.render.fps_base = 50, 1.0
    assert bpy.ops.edit3dgs.import_motion(filepath=str(avatar_dir / "sequences" / "held_out.npz"),
                                          frame_start=1) == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (1, 2 * T - 1)
    assert "resampled 25 -> 50 fps" in scene.edit3dgs.report
    got = rig_motion(objs, np.arange(1, 2 * T, 2))
    for k in KEYS:
        assert np.abs(got[k] - seq[k][:T]).max() < 1e-5, k
