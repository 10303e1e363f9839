"""Results survive: versions beside the saved .blend, Save Version As, guarded Apply/Revert, and an
uninstall + reinstall of the extension that leaves every version of a saved .blend loadable.

This file runs last (it uninstalls and reinstalls the extension)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import bpy
import numpy as np
import pytest

from conftest import EXT_MODULE, configure_edit, import_avatar, pump


def colours(prev) -> np.ndarray:
    a = np.empty(len(prev.data.vertices) * 4, np.float32)
    prev.data.attributes["gs_color"].data.foreach_get("color", a)
    return a.reshape(-1, 4)


def run_edit(ext, scene, prompt):
    configure_edit(prompt=prompt)
    scene.edit3dgs.property_unset("versions_dir")  # the default: beside the .blend
    assert bpy.ops.edit3dgs.run_edit() == {"FINISHED"}
    pump(ext, lambda: not scene.edit3dgs.running, timeout=600)
    assert scene.edit3dgs.status == "DONE", scene.edit3dgs.report


def test_unsaved_blend_needs_a_versions_folder(scene, ext, avatar_dir):
    prev = import_avatar(avatar_dir)["preview"]
    configure_edit(prompt="make the hair blue")
    scene.edit3dgs.property_unset("versions_dir")
    assert not bpy.data.filepath
    with pytest.raises(RuntimeError, match="save the .blend file first, or choose a Versions Folder"):
        bpy.ops.edit3dgs.run_edit()
    assert scene.edit3dgs.status == "FAILED" and len(prev.edit3dgs.versions) == 1
    # the folder the file browser would hand back
    assert bpy.ops.edit3dgs.run_edit(directory=str(Path(avatar_dir).parent / "chosen")) == {"FINISHED"}
    bpy.ops.edit3dgs.cancel_edit()
    pump(ext, lambda: not scene.edit3dgs.running, timeout=60)
    assert scene.edit3dgs.versions_dir == str(Path(avatar_dir).parent / "chosen")
    # the next unsaved file asks again (the folder chosen for one file is not remembered for another)
    assert bpy.ops.edit3dgs.run_edit.get_rna_type().properties["directory"].is_skip_save
    bpy.ops.wm.read_homefile(use_empty=True)
    import_avatar(avatar_dir)
    configure_edit(prompt="make the hair blue")
    bpy.context.scene.edit3dgs.property_unset("versions_dir")
    with pytest.raises(RuntimeError, match="save the .blend file first"):
        bpy.ops.edit3dgs.run_edit()


def test_versions_beside_the_blend_survive_uninstall_and_reinstall(scene, ext, avatar_dir, zip_path, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    blend = project / "shot.blend"
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}
    prev = import_avatar(avatar_dir)["preview"]
    name = prev.name
    run_edit(ext, scene, "make the hair blue")
    h = prev.edit3dgs
    v1 = h.versions[1]
    user = Path(bpy.utils.extension_path_user(EXT_MODULE, create=True))
    # the edit lives beside the .blend, never in the extension's folder
    assert Path(v1.folder).parent == project / "edit3dgs_versions", v1.folder
    assert Path(v1.npz).parent == Path(v1.folder) and Path(v1.npz).is_file()
    assert user not in Path(v1.folder).parents

    # Save Version As: a copy where the artist wants it; the history follows the copy
    assert bpy.ops.edit3dgs.save_version_as(directory=str(tmp_path / "keep"), folder_name="blue") == {"FINISHED"}
    assert v1.folder == str(tmp_path / "keep" / "blue") and Path(v1.npz).is_file()
    assert Path(v1.npz).parent == tmp_path / "keep" / "blue"
    # refuses to copy over a folder that holds something
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="already exists and is not empty"):
        bpy.ops.edit3dgs.save_version_as(directory=str(tmp_path), folder_name="taken")
    assert (tmp_path / "taken" / "x.txt").read_text() == "mine"

    run_edit(ext, scene, "make the lips red")  # from the original: a second version
    assert Path(h.versions[2].folder).parent == project / "edit3dgs_versions"
    want = {}
    for i in range(len(h.versions)):
        assert bpy.ops.edit3dgs.apply_edit(index=i) == {"FINISHED"}, scene.edit3dgs.report
        want[i] = colours(prev).copy()
    assert not np.array_equal(want[0], want[1]) and not np.array_equal(want[0], want[2])
    assert bpy.ops.wm.save_mainfile() == {"FINISHED"}

    # uninstall: Blender deletes the extension's user folder (the cache with the original's rig file)
    repo = next(r.directory for r in bpy.context.preferences.extensions.repos if r.module == "user_default")
    assert bpy.ops.extensions.package_uninstall(repo_directory=repo, pkg_id="edit3dgs") == {"FINISHED"}
    assert EXT_MODULE not in bpy.context.preferences.addons
    assert not user.exists(), f"{user} survived the uninstall"
    assert bpy.ops.extensions.package_install_files(repo="user_default", filepath=str(zip_path),
                                                    enable_on_install=True) == {"FINISHED"}
    assert bpy.ops.wm.open_mainfile(filepath=str(blend)) == {"FINISHED"}
    prev = bpy.data.objects[name]
    bpy.context.view_layer.objects.active = prev
    h = prev.edit3dgs
    assert len(h.versions) == 3 and h.applied == 2
    for i in reversed(range(len(h.versions))):  # the original's rig file went with the cache: rebuilt
        assert bpy.ops.edit3dgs.apply_edit(index=i) == {"FINISHED"}, scene.edit3dgs.report
        assert np.array_equal(colours(prev), want[i]), f"version {i} differs after the reinstall"
    assert "rebuilt" in bpy.context.scene.edit3dgs.report

    # a version whose files are gone: Apply and Revert say so, and the preview stays as it was
    shutil.rmtree(h.versions[2].folder)
    h.version_index = 2
    with pytest.raises(RuntimeError, match="files of 'v2: make the lips red' are gone"):  # greyed out, says why
        bpy.ops.edit3dgs.apply_edit()
    h.version_index = 0
    with pytest.raises(RuntimeError, match="are gone"):  # and checked again when it runs
        bpy.ops.edit3dgs.apply_edit(index=2)
    assert np.array_equal(colours(prev), want[0]) and h.applied == 0
    s = bpy.context.scene.edit3dgs
    assert s.status == "FAILED" and h.versions[2].folder in s.report
    # a version whose avatar folder is gone but whose rig file is not: the preview only, said so
    v1 = h.versions[1]
    shutil.copy2(v1.npz, tmp_path / "rig_copy.npz")
    v1.npz = str(tmp_path / "rig_copy.npz")
    os.rename(v1.folder, str(tmp_path / "moved"))
    assert bpy.ops.edit3dgs.apply_edit(index=1) == {"FINISHED"}
    assert "preview only" in s.report and s.status != "FAILED", s.report
    assert np.array_equal(colours(prev), want[1])
