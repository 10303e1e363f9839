"""FLAME-bound Gaussians exactly as GaussianAvatars stores them, and their world placement.

Every Gaussian lives in the local frame of its parent triangle (formats.md §1):
for face f with posed vertices v0, v1, v2

    center = (v0+v1+v2)/3,  a0 = n(v1-v0),  a1 = n(a0 x (v2-v0)),  a2 = -n(a1 x a0)
    R = [a0 a1 a2],         k = (|v1-v0| + |a2 . (v2-v0)|) / 2

    world_xyz = k R xyz + center,  world_scale = exp(scale) k,
    world_rot = quat(R) (x) normalize(rot)          (Hamilton product, w first)

Colour (SH) and opacity are not transformed. World Gaussians are computed
per timestep and never stored as the truth.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import roma  # small, maintained rotation library (XYZW internally): rotmat->quat and products
import torch

from .errors import Edit3DGSError
from .fsutil import atomic_path
from .validate import at_most, finite, index_array

# Bounds on stored values: beyond them world values are 0 or infinite in float32 (exp(88.7) overflows,
# exp(-87.3) is below the smallest normal float; sigmoid(+-88) is 1 or 0 and its logit infinite).
SCALE_LOG_LIMIT = 80.0
OPACITY_LOGIT_LIMIT = 80.0
VALUE_LIMIT = 1e18  # positions and colours: a world position k * R * xyz must stay finite

SH_REST_COUNTS = {0: 0, 1: 3, 2: 8, 3: 15}


def ply_attribute_names(sh_degree: int, with_binding: bool = True) -> list[str]:
    """Vertex properties in the order GaussianAvatars (and 3DGS) write them."""
    n_rest = 3 * SH_REST_COUNTS[sh_degree]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    if with_binding:
        names.append("binding_0")
    return names


@dataclass
class WorldGaussians:
    """World-space Gaussians ready for ``render.rasterize``.

    means (N,3) m, quats (N,4) w-first unit, scales (N,3) m, opacities (N,)
    in (0,1), sh (N,K,3) with K=(sh_degree+1)^2.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    sh_degree: int


def quat_wxyz_to_xyzw(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([q[..., 1:], q[..., :1]], -1)


def quat_xyzw_to_wxyz(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([q[..., 3:], q[..., :3]], -1)


def face_frames(verts: torch.Tensor, faces: torch.Tensor):
    """Per-face frames of a posed mesh.

    verts (..., V, 3), faces (F, 3) -> center (..., F, 3), R (..., F, 3, 3)
    with columns [a0 a1 a2], scale k (..., F).
    """
    v0, v1, v2 = verts[..., faces[:, 0], :], verts[..., faces[:, 1], :], verts[..., faces[:, 2], :]
    center = (v0 + v1 + v2) / 3
    e1, e2 = v1 - v0, v2 - v0
    a0 = torch.nn.functional.normalize(e1, dim=-1)
    a1 = torch.nn.functional.normalize(torch.cross(a0, e2, dim=-1), dim=-1)
    a2 = -torch.nn.functional.normalize(torch.cross(a1, a0, dim=-1), dim=-1)
    R = torch.stack([a0, a1, a2], dim=-1)
    k = (e1.norm(dim=-1) + (a2 * e2).sum(-1).abs()) / 2
    return center, R, k


@dataclass
class PosedFrames:
    """Per-face frames of one posed mesh: center (F,3), R (F,3,3), k (F,), q_xyzw (F,4) = quat(R)."""

    center: torch.Tensor
    R: torch.Tensor
    k: torch.Tensor
    q_xyzw: torch.Tensor


def posed_frames(verts: torch.Tensor, faces: torch.Tensor) -> PosedFrames:
    """Face frames of posed meshes ``verts`` (..., V, 3) (leading dimensions: timesteps)."""
    center, R, k = face_frames(verts, faces)
    return PosedFrames(center, R, k, roma.rotmat_to_unitquat(R))


def quat_left_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) w-first quaternions -> (..., 4, 4) matrices L with ``L(q) @ p = q (x) p`` (Hamilton product)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([w, -x, -y, -z, x, w, -z, y, y, z, w, -x, z, -y, x, w], -1).unflatten(-1, (4, 4))


@dataclass
class BoundFrames:
    """Face frames gathered for each Gaussian through its binding, ready to place the Gaussians
    again and again (a refit places them every iteration, a render every timestep):
    ``M = k R`` (..., N, 3, 3), ``center`` (..., N, 3), ``k`` (..., N, 1) and ``L`` (..., N, 4, 4),
    the left-multiplication matrix of quat(R). Placing is then two small matrix products and an
    exp: a handful of kernels forward and backward instead of gathers and quaternion algebra."""

    M: torch.Tensor
    center: torch.Tensor
    k: torch.Tensor
    L: torch.Tensor


def bind_frames(frames: PosedFrames, binding: torch.Tensor) -> BoundFrames:
    """Gather ``frames`` (per face, optionally with leading timestep dimensions) for Gaussians
    bound to faces ``binding`` (N,)."""
    k = frames.k[..., binding, None]
    M = frames.R[..., binding, :, :] * k[..., None]
    L = quat_left_matrix(quat_xyzw_to_wxyz(frames.q_xyzw[..., binding, :]))
    return BoundFrames(M, frames.center[..., binding, :], k, L)


def _affine(A: torch.Tensor, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """``A @ x (+ c)`` for (..., N, d, d) matrices and (N, d) vectors: one batched product."""
    if A.ndim == 3:
        if c is None:
            return torch.bmm(A, x[..., None])[..., 0]
        return torch.baddbmm(c[..., None], A, x[..., None])[..., 0]
    y = torch.matmul(A, x[..., None])[..., 0]
    return y if c is None else y + c


@dataclass
class GaussianAvatar:
    """Gaussians bound to head-model faces (local parameters, GaussianAvatars layout).

    xyz (N,3) offset in face-scale units; features_dc (N,1,3) and
    features_rest (N,K-1,3) SH coefficients; opacity (N,1) logit; scaling (N,3)
    log relative to face scale; rotation (N,4) raw quaternion w-first relative
    to the face frame; binding (N,) int64 parent face index.
    """

    xyz: torch.Tensor
    features_dc: torch.Tensor
    features_rest: torch.Tensor
    opacity: torch.Tensor
    scaling: torch.Tensor
    rotation: torch.Tensor
    binding: torch.Tensor

    PARAM_NAMES = ("xyz", "features_dc", "features_rest", "opacity", "scaling", "rotation")

    @property
    def num_gaussians(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def sh_degree(self) -> int:
        k = self.features_rest.shape[1]
        return {v: d for d, v in SH_REST_COUNTS.items()}[k]

    @property
    def device(self) -> torch.device:
        return self.xyz.device

    def to(self, device) -> "GaussianAvatar":
        return GaussianAvatar(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def clone(self) -> "GaussianAvatar":
        return GaussianAvatar(**{f.name: getattr(self, f.name).detach().clone() for f in fields(self)})

    def subset(self, mask_or_idx) -> "GaussianAvatar":
        return GaussianAvatar(**{f.name: getattr(self, f.name)[mask_or_idx] for f in fields(self)})

    # -- world placement -------------------------------------------------
    def to_world(self, verts: torch.Tensor, faces: torch.Tensor) -> WorldGaussians:
        """Place the Gaussians on a posed mesh: verts (V,3), faces (F,3)."""
        if verts.ndim != 2:
            raise ValueError(f"to_world takes one posed mesh (V,3); got {tuple(verts.shape)}")
        return self.to_world_from_frames(posed_frames(verts, faces))

    def to_world_from_frames(self, frames: "PosedFrames") -> WorldGaussians:
        """Place the Gaussians with precomputed face frames."""
        return self.place(bind_frames(frames, self.binding))

    def place(self, bound: BoundFrames, unit_quats: bool = True) -> WorldGaussians:
        """The binding transform (module docstring) with frames gathered by ``bind_frames``; with
        leading timestep dimensions in ``bound``, means/quats/scales get them too. ``unit_quats=False``
        leaves the local rotation's norm in the world quaternion (the rasterizer normalises; a
        refit saves the normalisation's kernels)."""
        rot = torch.nn.functional.normalize(self.rotation, dim=-1) if unit_quats else self.rotation
        means = _affine(bound.M, self.xyz, bound.center)
        quats = _affine(bound.L, rot)
        scales = torch.exp(self.scaling) * bound.k
        sh = torch.cat([self.features_dc, self.features_rest], 1)
        return WorldGaussians(means, quats, scales, torch.sigmoid(self.opacity[:, 0]), sh, self.sh_degree)

    # -- PLY I/O -----------------------------------------------------------
    def save_ply(self, path: os.PathLike | str) -> Path:
        """Write ``point_cloud.ply`` with GaussianAvatars' attributes in their order."""
        return write_gaussian_ply(path, self._columns(), self.sh_degree, with_binding=True)

    def _columns(self) -> dict:
        N = self.num_gaussians
        t = lambda x: x.detach().cpu().numpy().astype(np.float32)  # noqa: E731
        cols = {"x": t(self.xyz[:, 0]), "y": t(self.xyz[:, 1]), "z": t(self.xyz[:, 2])}
        zeros = np.zeros(N, np.float32)
        cols.update(nx=zeros, ny=zeros, nz=zeros)
        dc = t(self.features_dc[:, 0, :])
        for i in range(3):
            cols[f"f_dc_{i}"] = dc[:, i]
        rest = t(self.features_rest.transpose(1, 2).reshape(N, -1))  # channel-major
        for i in range(rest.shape[1]):
            cols[f"f_rest_{i}"] = rest[:, i]
        cols["opacity"] = t(self.opacity[:, 0])
        sc, rot = t(self.scaling), t(self.rotation)
        for i in range(3):
            cols[f"scale_{i}"] = sc[:, i]
        for i in range(4):
            cols[f"rot_{i}"] = rot[:, i]
        cols["binding_0"] = self.binding.detach().cpu().numpy().astype(np.float32)
        return cols

    @classmethod
    def load_ply(cls, path: os.PathLike | str, n_faces: int | None = None) -> "GaussianAvatar":
        """Read a GaussianAvatars ``point_cloud.ply``; checks every value."""
        path = Path(path)
        cols, names = read_ply_vertices(path)
        if "binding_0" not in cols:
            raise Edit3DGSError(path, "a GaussianAvatars PLY with a 'binding_0' property (Gaussians bound to FLAME faces)",
                                "no 'binding_0': a plain static 3DGS scene, not an avatar")
        n_rest = sum(1 for n in names if n.startswith("f_rest_"))
        degree = {3 * v: d for d, v in SH_REST_COUNTS.items()}.get(n_rest)
        if degree is None:
            raise Edit3DGSError(path, "0, 9, 24 or 45 f_rest_* properties (SH degree 0-3)", f"{n_rest}")
        required = ply_attribute_names(degree)
        missing = [n for n in required if n not in cols]
        if missing:
            raise Edit3DGSError(path, f"properties {', '.join(required[:9])}...", f"no {', '.join(missing)}")
        N = len(cols["x"])
        if N == 0:
            raise Edit3DGSError(path, "at least one Gaussian", "an empty vertex element")
        for n in required:
            finite(cols[n], path, f"'{n}'")
        # values whose world form a float cannot hold: exp(scale) 0 or inf, sigmoid(opacity) exactly 0 or 1 and back
        for names, lo, hi, why in ((("scale_0", "scale_1", "scale_2"), -SCALE_LOG_LIMIT, SCALE_LOG_LIMIT, "log scales"),
                                   (("opacity",), -OPACITY_LOGIT_LIMIT, OPACITY_LOGIT_LIMIT, "opacity logits")):
            for n in names:
                out = (cols[n] < lo) | (cols[n] > hi)
                if out.any():
                    raise Edit3DGSError(path, f"{why} in [{lo:g},{hi:g}] in '{n}' (beyond, the Gaussian's size or opacity "
                                        "is 0 or infinite in float32)", f"{int(out.sum())} value(s) such as {cols[n][out][0]:g}")
        for n in required:
            big = np.abs(cols[n]) > VALUE_LIMIT
            if n != "binding_0" and big.any():
                raise Edit3DGSError(path, f"values of magnitude at most {VALUE_LIMIT:g} in '{n}'", f"{cols[n][big][0]:g}")
        rot_norm = np.sqrt(sum(cols[f"rot_{i}"].astype(np.float64) ** 2 for i in range(4)))
        if (rot_norm == 0).any():
            raise Edit3DGSError(path, "non-zero rotation quaternions in 'rot_0..3'", f"{int((rot_norm == 0).sum())} all-zero quaternion(s)")
        binding = index_array(cols["binding_0"], path, "'binding_0' (non-negative whole face indices)", 0)
        if n_faces is not None and binding.max() >= n_faces:
            raise Edit3DGSError(path, f"bindings below the head model's face count {n_faces}", f"binding {int(binding.max())} (the avatar needs at least {int(binding.max()) + 1} faces)")
        f = lambda *ns: torch.from_numpy(np.stack([cols[n] for n in ns], 1).astype(np.float32))  # noqa: E731
        if n_rest:
            rest = f(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(N, 3, -1).transpose(1, 2).contiguous()
        else:
            rest = torch.zeros(N, 0, 3)
        return cls(
            xyz=f("x", "y", "z"),
            features_dc=f("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :].contiguous(),
            features_rest=rest,
            opacity=f("opacity"),
            scaling=f("scale_0", "scale_1", "scale_2"),
            rotation=f("rot_0", "rot_1", "rot_2", "rot_3"),
            binding=torch.from_numpy(binding),
        )


def read_ply_vertices(path: Path) -> tuple[dict, list]:
    """Read the 'vertex' element of a PLY as float32 columns (plyfile does the parsing)."""
    from plyfile import PlyData  # maintained PLY reader/writer, handles binary and ascii

    if not path.is_file():
        raise Edit3DGSError(path, "a point_cloud.ply file", "no such file")
    class _KeepOpen(io.BufferedReader):
        def close(self):  # plyfile's text reader closes the stream it is given; we read on after it
            pass

    fh = _KeepOpen(io.FileIO(path, "rb"))
    try:
        check_ply_header(path, fh)
        fh.seek(0)
        ply = PlyData.read(fh)
        el = ply["vertex"]
        data = el.data
        extra = fh.read(1 << 16)  # what the header's counts do not cover
        more = len(extra) + max(0, os.fstat(fh.fileno()).st_size - fh.tell())
    except Edit3DGSError:
        raise
    except KeyError:
        raise Edit3DGSError(path, "a PLY with a 'vertex' element", "no 'vertex' element") from None
    except Exception as exc:
        raise Edit3DGSError(path, "a complete PLY file", f"{type(exc).__name__}: {str(exc)[:200]}".strip()) from None
    finally:
        io.BufferedReader.close(fh)
    if (extra.strip() if ply.text else extra):
        # the header counts fewer elements than the file holds: reading on would drop Gaussians silently
        per = el.data.dtype.itemsize if not ply.text else None
        holds = f", about {len(data) + more // per} vertices" if per else ""
        raise Edit3DGSError(path, f"as much data as the header's 'element vertex {len(data)}' describes",
                            f"{more} bytes more{holds}")
    names = [p.name for p in el.properties]
    with np.errstate(over="ignore", invalid="ignore"):  # a double beyond float32 becomes inf: refused as not finite
        return {n: np.asarray(data[n], dtype=np.float32) for n in names}, names


def check_ply_header(path: Path, fh) -> None:
    """Refuse, before any data is read, a PLY whose header asks for more than the file holds (a vertex
    count far beyond the file's size would allocate it), more Gaussians than ``EDIT3DGS_MAX_GAUSSIANS``,
    or list properties in its vertex element."""
    from plyfile import PlyData, PlyListProperty

    try:
        head = PlyData._parse_header(fh)  # plyfile's own header parser; reads the header only
    except Exception as exc:  # noqa: BLE001 - whatever the parser trips on is a broken header
        raise Edit3DGSError(path, "a PLY header (ply, format, element, property ..., end_header)",
                            f"{type(exc).__name__}: {str(exc)[:120]}") from None
    left = os.fstat(fh.fileno()).st_size - fh.tell()
    need = 0
    for el in head.elements:
        if el.count < 0:
            raise Edit3DGSError(path, f"a non-negative count of element '{el.name}'", str(el.count))
        if el.name == "vertex":
            if any(isinstance(p, PlyListProperty) for p in el.properties):
                lists = [p.name for p in el.properties if isinstance(p, PlyListProperty)]
                raise Edit3DGSError(path, "vertex properties of one number each", f"list properties {', '.join(lists)}")
            at_most(path, "Gaussians ('element vertex')", el.count, "MAX_GAUSSIANS", 10_000_000)
        if head.text:  # at least one digit and one separator per value
            need += el.count * 2 * max(1, len(el.properties))
        else:
            need += el.count * sum(p.len_dtype.itemsize if isinstance(p, PlyListProperty) else np.dtype(p.val_dtype).itemsize
                                   for p in el.properties)
    if need > left:
        raise Edit3DGSError(path, f"a complete PLY file: at least {need:,} bytes of data for the header's element counts "
                            f"({', '.join(f'{e.name} {e.count:,}' for e in head.elements)})", f"{left:,} bytes")


def write_gaussian_ply(path: os.PathLike | str, cols: dict, sh_degree: int, with_binding: bool) -> Path:
    """Binary little-endian PLY, all float32, properties in 3DGS/GaussianAvatars order."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    names = ply_attribute_names(sh_degree, with_binding)
    N = len(cols["x"])
    arr = np.empty(N, dtype=[(n, "<f4") for n in names])
    for n in names:
        arr[n] = cols[n]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(arr, "vertex")], byte_order="<").write(str(tmp))
    return path


def write_world_ply(path: os.PathLike | str, g: WorldGaussians) -> Path:
    """A standard (static) 3DGS PLY of world Gaussians, for common splat viewers."""
    N = g.means.shape[0]
    t = lambda x: x.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    # a Gaussian on a face of zero area has zero size: the smallest positive float32 keeps its log finite
    m, s, q = t(g.means), np.log(np.maximum(t(g.scales), np.finfo(np.float32).tiny)), t(g.quats)
    o = t(torch.logit(g.opacities.clamp(1e-6, 1 - 1e-6)))
    sh = t(g.sh)
    cols = {"x": m[:, 0], "y": m[:, 1], "z": m[:, 2], "nx": np.zeros(N, np.float32), "ny": np.zeros(N, np.float32), "nz": np.zeros(N, np.float32)}
    for i in range(3):
        cols[f"f_dc_{i}"] = sh[:, 0, i]
        cols[f"scale_{i}"] = s[:, i]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(N, -1)
    for i in range(rest.shape[1]):
        cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = o
    for i in range(4):
        cols[f"rot_{i}"] = q[:, i]
    return write_gaussian_ply(path, cols, g.sh_degree, with_binding=False)


# Sign of each real SH basis function (3DGS order, degree <= 3) under (x, y, z) -> (x, -y, -z):
# a basis polynomial changes sign when its total degree in y and z is odd.
_SH_SIGNS_X180 = (1, -1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1)


def turn_upside_down(g: WorldGaussians) -> WorldGaussians:
    """World Gaussians turned 180 degrees about x (up axis y -> -y, z -> -z): positions,
    orientations and view-dependent colour (SH) turn together, so every view of the turned
    scene from the turned camera is the same image (for viewers that assume 3DGS's y-down)."""
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=g.means.dtype, device=g.means.device)
    w, x, y, z = g.quats.unbind(-1)
    quats = torch.stack([-x, w, -z, y], -1)  # (0, 1, 0, 0) ⊗ q, w first
    K = g.sh.shape[1]
    signs = torch.tensor(_SH_SIGNS_X180[:K], dtype=g.sh.dtype, device=g.sh.device)
    return WorldGaussians(g.means * flip, quats, g.scales, g.opacities, g.sh * signs[None, :, None], g.sh_degree)
