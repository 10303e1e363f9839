"""Where an avatar's versions live: a folder the artist chooses, by default beside the saved .blend.

The extension's user folder is deleted with the extension (formats.md §7), so
an edited avatar and its rig file never live only there: each edit writes one
folder ``<versions folder>/<avatar>_v<N>_<prompt>/`` holding the GaussianAvatars
avatar and its rig file (``gaussians.npz``). A version whose rig file is gone
but whose avatar folder is still there is rebuilt from that folder (the
imported original's rig file is a cache).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import bpy

DEFAULT_DIR = "//edit3dgs_versions/"
RIG_NAME = "gaussians.npz"


class VersionsError(Exception):
    """A versions folder that cannot be used; the message is for the panel."""


def versions_root(scene) -> Path | None:
    """The scene's versions folder as an absolute path (None: relative to a .blend that is not saved yet)."""
    raw = (scene.edit3dgs.versions_dir or DEFAULT_DIR).strip()
    if raw.startswith("//") and not bpy.data.filepath:
        return None
    return Path(os.path.abspath(bpy.path.abspath(raw)))


def slug(text: str, limit: int = 32) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return s[:limit].rstrip("_") or "edit"


def new_version_folder(root: Path, avatar: str, number: int, prompt: str) -> Path:
    """A folder name for version ``number`` that is not taken yet (the folder itself is not created)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VersionsError(f"cannot create the Versions Folder {root} ({exc.strerror or exc})") from None
    if not os.access(root, os.W_OK):
        raise VersionsError(f"the Versions Folder {root} is read-only: choose another")
    base = f"{slug(avatar, 24)}_v{number:02d}_{slug(prompt)}"
    out, i = root / base, 2
    while out.exists():
        out, i = root / f"{base}-{i}", i + 1
    return out


def files_state(v) -> tuple[bool, bool]:
    """(avatar folder there, rig file there) of a history entry."""
    folder = bool(v.folder) and os.path.isdir(bpy.path.abspath(v.folder))
    npz = bool(v.npz) and os.path.isfile(bpy.path.abspath(v.npz))
    return folder, npz


def gone_message(v) -> str:
    return (f"the files of '{v.name}' are gone: its avatar folder {v.folder or '(none)'} was moved or deleted. "
            f"The preview is unchanged")


def save_copy(v, dest: Path) -> tuple[Path, Path | None]:
    """Copy a version (avatar folder and rig file) to the new folder ``dest``; returns (folder, rig file)."""
    folder, npz = Path(bpy.path.abspath(v.folder)), Path(bpy.path.abspath(v.npz)) if v.npz else None
    has_folder, has_npz = files_state(v)
    if not has_folder:
        raise VersionsError(gone_message(v))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersionsError(f"{dest} already exists and is not empty: choose a new folder name")
    if folder == dest or folder in dest.parents:
        raise VersionsError(f"{dest} is inside the version's own folder {folder}: choose a folder outside it")
    inside = has_npz and folder in npz.parents  # an edit's rig file lives in its folder: copied with it
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():  # not ours to remove
        raise VersionsError(f"{tmp} is in the way: move it or choose another folder name")
    try:
        shutil.copytree(folder, tmp)
        if has_npz and not inside:  # the imported original's rig file sits in the cache: keep a copy
            shutil.copy2(npz, tmp / RIG_NAME)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VersionsError(f"cannot copy {folder} to {dest} ({exc.strerror or exc})") from None
    if not has_npz:
        return dest, None
    return dest, (dest / npz.relative_to(folder) if inside else dest / RIG_NAME)
