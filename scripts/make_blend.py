#!/usr/bin/env python3
"""Write demo.blend: the edited built-in avatar on its FLAME rig, keyframed to the held-out sequence,
with the key-view cameras and a shot camera — open it in Blender and press play.

Run with the Blender-side Python (bpy 5.0.1): ``.venv-blender/bin/python scripts/make_blend.py``
(``make blend``). The backend (``.venv``) builds the avatar and its edit through its CLI:
    edit3dgs make-avatar --out WORK/ada
    edit3dgs edit --avatar WORK/ada --prompt "make the hair blue" --out WORK/ada_edited
(without the ``edit`` command the unedited avatar is used, and the script says so). Then the
extension is built, installed into a throw-away Blender user folder (your own Blender is never
touched), the avatar imported with both versions in its history (the edit applied), and the
motion imported on the rig.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "make the hair blue"


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], text=True, capture_output=True)


def backend(py: str, *args) -> None:
    res = run([py, "-m", "edit3dgs.cli", *args])
    if res.returncode != 0:
        sys.exit(f"make_blend: `edit3dgs {args[0]}` failed:\n{res.stderr.strip()}")
    print(res.stdout.strip())


def build_avatars(py: str, work: Path, edit_args: list[str]) -> tuple[Path, Path | None]:
    ada = work / "ada"
    if not (ada / "avatar.json").is_file():
        backend(py, "make-avatar", "--out", ada, "--overwrite")
    edited = work / "ada_edited"
    if (edited / "avatar.json").is_file():
        return ada, edited
    has_edit = run([py, "-m", "edit3dgs.cli", "edit", "--help"]).returncode == 0
    if not has_edit:
        print("make_blend: this backend has no `edit` command: demo.blend gets the unedited avatar", flush=True)
        return ada, None
    backend(py, "edit", "--avatar", ada, "--prompt", PROMPT, "--out", edited, "--overwrite", *edit_args)
    return ada, edited


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "demo.blend"))
    ap.add_argument("--work", default=str(REPO / "demo_out" / "blend"), help="avatars are built here (kept)")
    ap.add_argument("--backend-python", default=os.environ.get("EDIT3DGS_BACKEND_PYTHON") or str(REPO / ".venv/bin/python"))
    ap.add_argument("--edit-args", default="--editor region --regions hair --scale 0.08 --num-timesteps 1 "
                                           "--cameras 0,4,8,12,15 --views-per-iter 3 --iters-per-batch 40 "
                                           "--lrs '{\"features_dc\": 0.08}'",
                    help="extra arguments of `edit3dgs edit` (the defaults keep it to a minute or two on a CPU: "
                         "few small views, a faster colour rate)")
    a = ap.parse_args(argv)
    py = str(Path(a.backend_python).absolute())
    if not Path(py).is_file():
        sys.exit(f"make_blend: {py}: expected the backend's Python (run `make setup`), found no such file")
    work = Path(a.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    ada, edited = build_avatars(py, work, shlex.split(a.edit_args))

    user = tempfile.mkdtemp(prefix="edit3dgs-make-blend-")
    os.environ["BLENDER_USER_RESOURCES"] = user  # a throw-away Blender user folder
    os.environ["EDIT3DGS_BACKEND_PYTHON"] = py
    res = run([sys.executable, REPO / "build.py", "--out-dir", Path(user) / "dist"])
    if res.returncode != 0:
        sys.exit(f"make_blend: build.py failed:\n{res.stdout}{res.stderr}")
    zip_path = next((Path(user) / "dist").glob("edit3dgs-*.zip"))

    import bpy  # after BLENDER_USER_RESOURCES is set
    from mathutils import Vector

    try:
        bpy.ops.wm.read_homefile(use_empty=True)
        assert bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(zip_path),
                                                        enable_on_install=True) == {"FINISHED"}
        # The extension's files (rig files, history) go beside the avatars, not into the throw-away folder.
        bpy.context.preferences.addons["bl_ext.user_default.edit3dgs"].preferences.cache_dir = str(work / "cache")
        scene = bpy.context.scene
        scene.name = "Edit3DGS demo"
        assert bpy.ops.edit3dgs.import_avatar(directory=str(ada), name="ada") == {"FINISHED"}
        prev = next(o for o in scene.objects if o.get("edit3dgs_role") == "preview")
        root = prev.parent
        if edited is not None:
            # The edit as the history's second version, applied (the original stays one click away).
            rig = work / "edited_gaussians.npz"
            mod = sys.modules["bl_ext.user_default.edit3dgs.runtime"]
            job = mod.submit("export_rig", {"avatar": str(edited), "out": str(rig), "gaussians_only": True})
            mod.backend().wait(job, 600)
            if job.state != "done":
                sys.exit(f"make_blend: reading the edited avatar failed: {job.error}")
            v = prev.edit3dgs.versions.add()
            v.name, v.folder, v.npz, v.prompt, v.editor = f"v1: {PROMPT}", str(edited), str(rig), PROMPT, "region"
            bpy.context.view_layer.objects.active = prev
            assert bpy.ops.edit3dgs.apply_edit(index=1) == {"FINISHED"}
        scene.render.fps, scene.render.fps_base = 25, 1.0
        motion = ada / "sequences" / "held_out.npz"
        assert bpy.ops.edit3dgs.import_motion(filepath=str(motion), frame_start=1) == {"FINISHED"}
        # A shot camera: a slow push-in from three-quarter left to the front.
        cam_data = bpy.data.cameras.new("Shot")
        cam_data.lens, cam_data.sensor_fit, cam_data.sensor_width = 85.0, "AUTO", 36.0
        cam_data.clip_start, cam_data.clip_end = 0.01, 100.0
        cam = bpy.data.objects.new("Shot camera", cam_data)
        scene.collection.objects.link(cam)
        target = root.matrix_world @ Vector((0.0, 0.0, 0.0))
        for frame, az, dist in ((scene.frame_start, -35.0, 1.4), (scene.frame_end, 0.0, 1.1)):
            t = math.radians(az)
            # Blender world: the face looks down -Y (FLAME +z after the root's +90 deg about X)
            eye = target + Vector((dist * math.sin(t), -dist * math.cos(t), 0.03))
            cam.location = eye
            cam.rotation_euler = (target - eye).to_track_quat("-Z", "Y").to_euler()
            cam.keyframe_insert("location", frame=frame)
            cam.keyframe_insert("rotation_euler", frame=frame)
        scene.camera = cam
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1080, 1080, 50
        scene.render.filepath = "//shot/frame_####"
        scene.render.film_transparent = True
        scene.frame_set(scene.frame_start)
        # Look through the shot camera in any 3D view when opened.
        for screen in bpy.data.screens:
            for area in screen.areas:
                if area.type == "VIEW_3D":
                    area.spaces.active.region_3d.view_perspective = "CAMERA"
        out = Path(a.out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(out), compress=True)
        n = len(prev.data.vertices)
        print(f"demo.blend written to {out}: {n} Gaussians ({'edited: ' + PROMPT if edited else 'unedited'}), "
              f"held-out motion on frames {scene.frame_start}-{scene.frame_end}, "
              f"{len(bpy.data.collections['Key Views'].objects)} key views, shot camera 'Shot camera'")
    finally:
        mod = sys.modules.get("bl_ext.user_default.edit3dgs.runtime")
        if mod is not None:
            mod.shutdown()
        import shutil

        shutil.rmtree(user, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
