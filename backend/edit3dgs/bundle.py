"""An avatar folder opened for work: Gaussians + FLAME parameters + the head model.

Accepted folders (formats.md §1):
- ``DIR/point_cloud.ply`` + ``DIR/flame_param.npz`` (GaussianAvatars, flat);
- ``DIR/point_cloud/iteration_N/point_cloud.ply`` (latest N) with
  ``flame_param.npz`` beside the PLY or in DIR (GaussianAvatars' output tree);
- any of the above plus ``avatar.json``, written by Edit3DGS, which records
  the head model file so ``--flame`` is not needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .avatar import GaussianAvatar, WorldGaussians
from .cancel import check as check_cancel
from .errors import Edit3DGSError
from .flame import FLAME_N_FACES, FLAME_N_VERTS, FlameHead, canonical_region, load_flame_model
from .flame_params import FlameParams
from .fsutil import atomic_dir, check_output
from .validate import read_json

AVATAR_JSON = "avatar.json"
# avatar.json entries that name files of the avatar (copied by save())
META_FILES = ("head_model", "head_masks", "cameras", "held_out_sequence", "cross_identity_sequence")


def meta_file(folder: Path, key: str, value) -> Path:
    """An avatar.json file entry as a path inside ``folder``: a relative name of plain parts
    (``head_model.pkl``, ``sequences/held.npz``) that stays inside the folder after resolving
    symlinks; anything else is refused with the one-line error."""
    where = folder / AVATAR_JSON
    expected = f"'{key}' as a file name inside the avatar folder"
    if not isinstance(value, str) or not value:
        raise Edit3DGSError(where, expected, repr(value)[:80])
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or any(pt in ("", ".", "..") for pt in parts):
        raise Edit3DGSError(where, expected + " (no '..', no absolute path)", repr(value)[:80])
    path = folder.joinpath(*parts)
    root = folder.resolve()
    target = path.resolve()
    if target == root or not target.is_relative_to(root):
        raise Edit3DGSError(where, expected, f"{value!r}, which leads outside it (to {target})")
    return path


def _names(v):
    return isinstance(v, str)


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _rgb(v):
    return (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        and 0 <= x <= 1 for x in v))


# avatar.json fields this program reads, and what each must be (other fields are kept as they are)
META_FIELDS = {
    "format": (_names, "text"), "kind": (_names, "text"), "identity": (_names, "text"),
    "other_identity": (_names, "text"), "edited_from": (_names, "text"),
    "version": (_whole, "a whole number"), "head_seed": (_whole, "a whole number"),
    "held_out_camera": (_whole, "a camera index"), "fps": (lambda v: _whole(v) and v > 0, "a positive whole number"),
    "camera_model": (lambda v: v in ("file", "gaussianavatars"), "'file' or 'gaussianavatars'"),
    "background": (_rgb, "an RGB list of three numbers in [0,1]"),
    "train_cameras": (lambda v: isinstance(v, list) and all(map(_whole, v)), "a list of camera indices"),
    "edit": (lambda v: isinstance(v, dict), "an object"),
}


def read_avatar_json(folder: Path) -> dict:
    """``avatar.json``: a JSON object whose known fields have their types and whose file entries
    stay inside the folder; anything else is the one-line error."""
    where = folder / AVATAR_JSON
    meta = read_json(where, "an avatar.json file")
    if not isinstance(meta, dict):
        raise Edit3DGSError(where, "a JSON object", type(meta).__name__)
    for key, (ok, what) in META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise Edit3DGSError(where, f"'{key}' as {what}", repr(meta[key])[:80])
    for key in META_FILES:
        if meta.get(key) is not None:
            meta_file(folder, key, meta[key])
    return meta


def find_ply(folder: Path) -> Path:
    if (folder / "point_cloud.ply").is_file():
        return folder / "point_cloud.ply"
    its = []
    for p in (folder / "point_cloud").glob("iteration_*/point_cloud.ply"):
        m = re.match(r"iteration_(\d+)$", p.parent.name)
        if m:
            its.append((int(m.group(1)), p))
    if its:
        return max(its)[1]
    raise Edit3DGSError(folder, "an avatar folder with point_cloud.ply (or point_cloud/iteration_N/point_cloud.ply)", "no point_cloud.ply")


def find_flame_params(folder: Path, ply: Path) -> Path:
    for cand in (ply.parent / "flame_param.npz", folder / "flame_param.npz"):
        if cand.is_file():
            return cand
    raise Edit3DGSError(folder, "flame_param.npz beside point_cloud.ply", "no flame_param.npz")


@dataclass
class AvatarCameras:
    """A camera file's cameras as an avatar is rendered with them (``AvatarBundle.read_cameras``):
    the file as read (its ``cy`` convention and why), and the camera model applied (and why)."""

    cameras: list
    file: object  # cameras.CameraFile
    model: str
    model_why: str

    def describe(self) -> list[str]:
        """Two lines for the user: the file and its convention, the camera model."""
        how = (" — centred principal point, focal length from camera_angle_x, square pixels"
               if self.model == "gaussianavatars" else " — fl_x, fl_y, cx, cy as in the file")
        return [self.file.describe(), f"camera model: {self.model} ({self.model_why}){how}"]

    def record(self) -> dict:
        """What edit.json records of them."""
        return {"file": str(self.file.path), "convention": self.file.convention, "convention_why": self.file.why,
                "model": self.model, "model_why": self.model_why}


@dataclass
class AvatarBundle:
    """One avatar ready to pose and render.

    ``gaussians`` local (bound) Gaussians, ``params`` the avatar's own FLAME
    sequence, ``head`` the posing layer, ``meta`` the avatar.json contents.
    """

    folder: Path
    gaussians: GaussianAvatar
    params: FlameParams
    head: FlameHead
    meta: dict = field(default_factory=dict)
    topology: str = ""
    head_path: Path | None = None

    # -- posing ---------------------------------------------------------------
    def pose(self, params: FlameParams | None = None, timesteps: Sequence[int] | None = None,
             device=None) -> torch.Tensor:
        """Posed vertices (T,V,3) for ``params`` (default: the avatar's own) at ``timesteps``."""
        p = self.params if params is None else params
        if timesteps is not None:
            p = p.select(timesteps)
        if p.static_offset is None and self.params.static_offset is not None and params is not None:
            # Motion from another file keeps this avatar's personal offsets.
            p = FlameParams(**{**p.as_dict(), "static_offset": self.params.static_offset})
        device = device or self.gaussians.device
        head = self.head.to(device)
        with torch.no_grad():
            return head(p.to_torch(device))

    def world(self, verts: torch.Tensor, gaussians: GaussianAvatar | None = None) -> WorldGaussians:
        g = self.gaussians if gaussians is None else gaussians
        return g.to_world(verts.to(g.device), self.head.faces.to(g.device))

    # -- regions ----------------------------------------------------------------
    @property
    def regions(self) -> dict:
        return self.head.regions

    def region_faces(self, names: Sequence[str]) -> np.ndarray:
        out = []
        for n in names:
            c = canonical_region(n)
            if c not in self.head.regions:
                raise Edit3DGSError(None, f"a region among {', '.join(sorted(self.head.regions))}", f"'{n}'")
            if len(self.head.regions[c]) == 0:
                raise Edit3DGSError(self.head_path, f"faces for region '{c}' (a masks file beside the head model)", "none")
            out.append(self.head.regions[c])
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def gaussian_mask(self, names: Sequence[str]) -> torch.Tensor:
        """Bool (N,): Gaussians bound to faces of the named regions."""
        sel = torch.zeros(self.head.n_faces, dtype=torch.bool)
        sel[torch.from_numpy(self.region_faces(names))] = True
        return sel.to(self.gaussians.device)[self.gaussians.binding]

    def gaussian_labels(self, names: Sequence[str]) -> torch.Tensor:
        """Long (N,): 1 + index into ``names`` of each Gaussian's region, 0 elsewhere (first match wins)."""
        lab = torch.zeros(self.gaussians.num_gaussians, dtype=torch.long, device=self.gaussians.device)
        for i in reversed(range(len(names))):
            lab[self.gaussian_mask([names[i]])] = i + 1
        return lab

    # -- cameras ----------------------------------------------------------------------
    def default_camera_model(self) -> tuple[str, str]:
        """The camera model that puts this avatar where it was trained, and why: GaussianAvatars'
        own for GaussianAvatars avatars (and edits of them), the file's intrinsics for Edit3DGS's
        built-in avatars (made with them); ``camera_model`` in avatar.json overrides both."""
        rec = self.meta.get("camera_model")
        if rec in ("file", "gaussianavatars"):
            return rec, f"recorded in {self.folder / AVATAR_JSON}"
        if self.meta.get("kind") == "builtin":
            return "file", "a built-in avatar, made with the files' intrinsics"
        return "gaussianavatars", "a GaussianAvatars avatar, trained with GaussianAvatars' camera model"

    def read_cameras(self, path: os.PathLike | str, convention: str = "auto", model: str = "auto") -> "AvatarCameras":
        """The cameras of a camera file for rendering this avatar: ``cy`` read in ``convention``
        (``auto``: from the file's evidence, never guessed), intrinsics by ``model`` (``auto``:
        ``default_camera_model``). Every command that renders an avatar with a camera file
        (render, capture, edit, the server's edit job) goes through here."""
        from .cameras import apply_camera_model, read_camera_file

        cf = read_camera_file(path, convention)
        why = "asked for"
        if model == "auto":
            model, why = self.default_camera_model()
        return AvatarCameras(apply_camera_model(cf.cameras, model), cf, model, why)

    # -- saving ---------------------------------------------------------------------
    def save(self, out: os.PathLike | str, gaussians: GaussianAvatar | None = None, extra_meta: dict | None = None,
             extra_files: dict | None = None, overwrite: bool = False,
             before_commit: Callable[[Path], None] | None = None) -> Path:
        """Write a new avatar folder (atomically; never over the input).

        ``extra_files`` maps relative names to callables ``fn(path)`` that write them;
        ``before_commit(tmp)`` runs on the complete temporary folder just before it is renamed
        into place (the last moment a cancel or a failure leaves nothing at ``out``). A cancelled
        job (``cancel.check``) stops between files, and nothing is left at ``out``.
        """
        out = Path(out)
        check_output(out, {"avatar": self.folder, "head model": self.head_path})
        g = self.gaussians if gaussians is None else gaussians
        with atomic_dir(out, overwrite=overwrite) as tmp:
            g.save_ply(tmp / "point_cloud.ply")
            check_cancel()
            self.params.save(tmp / "flame_param.npz")
            check_cancel()
            meta = dict(self.meta)
            meta.setdefault("format", "edit3dgs-avatar")
            meta.setdefault("version", 1)
            # Built-in heads travel with the avatar; a user's FLAME file never does. Every file the
            # metadata names is copied, or the save fails whole (an output that cannot load is worse).
            for key in META_FILES:
                if not self.meta.get(key):
                    continue
                src = meta_file(self.folder, key, self.meta[key])
                if not src.is_file():
                    raise Edit3DGSError(src, f"the file avatar.json names as '{key}' (the avatar changed while in use?)",
                                        "no such file; nothing was written")
                dst = meta_file(tmp, key, self.meta[key])
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            seqs = self.folder / "sequences"
            if seqs.is_dir():
                root = self.folder.resolve()
                for src in sorted(seqs.rglob("*")):
                    check_cancel()
                    if src.is_file() and src.resolve().is_relative_to(root):  # never a file from outside the avatar
                        dst = tmp / src.relative_to(self.folder)
                        if not dst.exists():
                            dst.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(src, dst)
            if not self.meta.get("cameras") and (self.folder / "cameras.json").is_file():
                shutil.copy2(self.folder / "cameras.json", tmp / "cameras.json")
            meta.update(extra_meta or {})
            (tmp / AVATAR_JSON).write_text(json.dumps(meta, indent=1))
            for name, fn in (extra_files or {}).items():
                check_cancel()
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                fn(tmp / name)
            if before_commit is not None:
                before_commit(tmp)
            check_cancel()  # the last check: after it the folder is renamed into place
        return out


def open_avatar(folder: os.PathLike | str, flame: os.PathLike | str | None = None,
                flame_masks: os.PathLike | str | None = None, device="cpu") -> AvatarBundle:
    """Open an avatar folder; ``flame`` is the user's FLAME pickle when the folder records none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Edit3DGSError(folder, "an avatar folder", "no such folder")
    meta = {}
    if (folder / AVATAR_JSON).exists():
        meta = read_avatar_json(folder)
    if flame is not None:
        head_path, masks = Path(flame), flame_masks
    elif meta.get("head_model"):
        head_path = meta_file(folder, "head_model", meta["head_model"])
        masks = flame_masks or (meta_file(folder, "head_masks", meta["head_masks"]) if meta.get("head_masks") else None)
    else:
        raise Edit3DGSError(folder, "--flame PATH (this GaussianAvatars folder does not record its head model)", "no --flame and no avatar.json")
    model = load_flame_model(head_path, masks)
    ply = find_ply(folder)
    npz = find_flame_params(folder, ply)

    # FLAME topology: 9976 faces without teeth, 10144 with GaussianAvatars' teeth.
    teeth = False
    if model.has_flame_topology:
        raw = FlameParams.load(npz)
        nv = raw.static_offset.shape[1] if raw.static_offset is not None else None
        if nv not in (None, FLAME_N_VERTS, FLAME_N_VERTS + 120):
            raise Edit3DGSError(npz, f"static_offset for {FLAME_N_VERTS} or {FLAME_N_VERTS + 120} vertices", f"{nv} vertices")
        teeth = nv != FLAME_N_VERTS
    head = FlameHead(model, add_teeth_if_flame=teeth)
    gaussians = GaussianAvatar.load_ply(ply, n_faces=head.n_faces)
    params = FlameParams.load(npz, **head.param_sizes())
    if model.has_flame_topology:
        topology = f"FLAME with teeth ({head.n_faces} faces)" if teeth else f"FLAME without teeth ({FLAME_N_FACES} faces)"
    else:
        topology = f"{model.name} ({head.n_faces} faces)"
    return AvatarBundle(folder, gaussians.to(device), params, head.to(device), meta, topology, head_path)
