"""Fuzz every input kind through the CLI: each malformed input gets one clear line (issue 15).

A generator derives malformed variants (truncations, type swaps, wrong shapes, non-finite
values, huge sizes) from one small valid set of inputs (a tiny avatar on a 60-face head,
its cameras, a motion) and runs ``cli.main`` in-process on each. The assertion is the
contract, not a list of messages:

- a non-zero exit status;
- exactly one ``error:`` line on stderr, naming what was expected and what was found;
- a line that says it clearly (a few hundred characters at most) and that is not a MemoryError: an
  input must be refused by a check, not by failing to allocate;
- no traceback, and no numeric warning (a NaN or a log(0) on its way to a render);
- nothing written: the case's folder holds exactly the files it held before, byte for byte
  (so the inputs are unchanged and there is no output, not even a hidden temporary);
- the same malformed avatars and cameras sent to ``edit3dgs serve`` as jobs: an ``input`` error of
  one line each, and the server still answering afterwards;
- seeded random byte mutations of every file: the command works, or it fails as above;
- peak memory under 2 GB: the huge-size cases run in a child process whose address space is
  limited to 2 GiB (an attempt to allocate beyond it fails there instead of succeeding
  lazily), and the child's and this process's peak resident sizes are checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_flame_dict
from test_formats import random_avatar

from edit3dgs.cameras import camera_rig, save_cameras
from edit3dgs.flame_params import FlameParams

MAX_LINE = 600  # characters of the error line (paths of the case folder included)
GB = 1 << 30
MEMORY_LIMIT = 2 * GB
N_FACES, N_GAUSS, T = 60, 30, 3


# -- the valid inputs every case starts from -----------------------------------------------------------------------


def flame_dict() -> dict:
    """conftest's tiny head, with three distinct corners per face (no degenerate faces to bind to)."""
    d = tiny_flame_dict()
    rng = np.random.default_rng(1)
    d["f"] = np.stack([rng.choice(40, 3, replace=False) for _ in range(N_FACES)]).astype(np.int64)
    return d


def _write_base(root: Path) -> None:
    a = root / "avatar"
    a.mkdir(parents=True)
    (a / "head_model.pkl").write_bytes(pickle.dumps(flame_dict(), protocol=2))
    random_avatar(N=N_GAUSS, F=N_FACES).save_ply(a / "point_cloud.ply")
    FlameParams.neutral(T).save(a / "flame_param.npz")
    (a / "avatar.json").write_text(json.dumps({"head_model": "head_model.pkl"}))
    (root / "masks.pkl").write_bytes(pickle.dumps({"face": np.arange(10), "scalp": np.arange(10, 20)}, protocol=2))
    save_cameras(root / "cams.json", camera_rig(40, 60)[:2])
    FlameParams.neutral(T).save(root / "motion.npz")
    from edit3dgs.dataset import write_capture

    write_capture(root / "data", {"train": (list(range(T)), camera_rig(40, 60)[:2])}, FlameParams.neutral(T))


_BASE = None


def base_dir() -> Path:
    global _BASE
    if _BASE is None:
        import tempfile

        import atexit

        _BASE = Path(tempfile.mkdtemp(prefix="edit3dgs-fuzz-base-"))
        atexit.register(shutil.rmtree, _BASE, True)
        _write_base(_BASE)
    return _BASE


def base_bytes(rel: str) -> bytes:
    return (base_dir() / rel).read_bytes()


# -- commands ------------------------------------------------------------------------------------------------------

EXPORT = ["export", "--avatar", "{d}/avatar", "--device", "cpu", "--out", "{d}/out/x.ply"]
RENDER = ["render", "--avatar", "{d}/avatar", "--device", "cpu", "--cameras", "{d}/cams.json", "--timesteps", "0",
          "--out", "{d}/out"]
WITH_FLAME = ["--flame", "{d}/avatar/head_model.pkl"]
WITH_MOTION = ["--flame-params", "{d}/motion.npz"]


@dataclass
class Case:
    id: str
    files: dict  # relative path -> bytes, or a callable(path) that makes it
    argv: list
    huge: bool = False  # run in the memory-limited child
    remove: list = field(default_factory=list)


CASES: list[Case] = []


def case(id, argv, huge=False, remove=(), **files):
    CASES.append(Case(id, {k.replace("__", "/").replace("_DOT_", "."): v for k, v in files.items()}, list(argv),
                      huge, list(remove)))


# -- byte-level mutations (any file) --------------------------------------------------------------------------------


def truncations(data: bytes, header_end: int | None = None) -> dict:
    n = len(data)
    cuts = {"empty": 0, "1byte": 1, "tenth": n // 10, "half": n // 2, "minus1": n - 1, "minus7": n - 7}
    if header_end:
        cuts.update(header_minus1=header_end - 1, header_plus3=header_end + 3)
    return {k: data[:v] for k, v in cuts.items()}


NOT_THIS_FORMAT = {
    "random": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
    "text": b"hello, I am not what you think\n",
    "nonutf8": b"\xff\xfe\xfa\x80 binary junk \xc3\x28",
    "zeros": bytes(64),
}


def byte_cases(kind: str, target: str, argv: list, good: bytes, header_end: int | None = None) -> None:
    """Truncations of the valid file and files of another format in its place."""
    for k, v in truncations(good, header_end).items():
        case(f"{kind}-truncated-{k}", argv, **{target: v})
    for k, v in NOT_THIS_FORMAT.items():
        case(f"{kind}-other-format-{k}", argv, **{target: v})


def sparse_file(size: int, head: bytes = b""):
    """A file of ``size`` bytes that costs no disk (a hole after ``head``)."""
    def make(path: Path):
        with open(path, "wb") as fh:
            fh.write(head)
            fh.truncate(size)
    return make


# -- PLY ------------------------------------------------------------------------------------------------------------


def _ply_array():
    from plyfile import PlyData

    return PlyData.read(io.BytesIO(base_bytes("avatar/point_cloud.ply")))["vertex"].data.copy()


def ply_bytes(arr, text=False, extra_elements=()) -> bytes:
    from plyfile import PlyData, PlyElement

    buf = io.BytesIO()
    PlyData([PlyElement.describe(arr, "vertex"), *extra_elements], text=text).write(buf)
    return buf.getvalue()


def ply_with(prop, value, row=3, rows=None):
    arr = _ply_array()
    if rows is None:
        arr[prop][row] = value
    else:
        arr[prop][:] = value
    return ply_bytes(arr)


def ply_without(*props):
    from numpy.lib.recfunctions import repack_fields

    arr = _ply_array()
    return ply_bytes(repack_fields(arr[[n for n in arr.dtype.names if n not in props]]))


def _ply_header_end(data: bytes) -> int:
    return data.index(b"end_header\n") + len(b"end_header\n")


def _gen_ply():
    P = "avatar__point_cloud_DOT_ply"
    good = base_bytes("avatar/point_cloud.ply")
    hend = _ply_header_end(good)
    byte_cases("ply", P, EXPORT, good, hend)
    case("ply-npz-bytes", EXPORT, **{P: base_bytes("avatar/flame_param.npz")})
    header = good[:hend].decode()
    body = good[hend:]

    def with_header(old, new):
        assert old in header, old
        return header.replace(old, new, 1).encode() + body

    for n in (N_GAUSS + 1, 10**6, 10**9, 2**40, -1):
        case(f"ply-count-{n}", EXPORT, **{P: with_header(f"element vertex {N_GAUSS}", f"element vertex {n}")})
    case("ply-count-text", EXPORT, **{P: with_header(f"element vertex {N_GAUSS}", "element vertex many")})
    case("ply-count-zero", EXPORT, **{P: with_header(f"element vertex {N_GAUSS}", "element vertex 0")[:hend - 1]})
    case("ply-list-property", EXPORT, **{P: with_header("property float opacity", "property list uchar float opacity")})
    case("ply-double-property", EXPORT, **{P: with_header("property float x", "property double x")})
    case("ply-unknown-type", EXPORT, **{P: with_header("property float y", "property quaternion y")})
    case("ply-ascii-claimed", EXPORT, **{P: with_header("binary_little_endian", "ascii")})
    case("ply-big-endian-claimed", EXPORT, **{P: with_header("binary_little_endian", "binary_big_endian")})
    case("ply-renamed-element", EXPORT, **{P: with_header("element vertex", "element gaussian")})
    case("ply-bad-magic", EXPORT, **{P: b"plx" + good[3:]})
    case("ply-no-end-header", EXPORT, **{P: header.replace("end_header", "end_hedaer").encode() + body})
    # a list property written properly (a well-formed PLY of the wrong type)
    from plyfile import PlyElement

    arr = _ply_array()
    lst = np.empty(len(arr), dtype=[("x", "O")])
    lst["x"] = [np.array([1.0, 2.0], np.float32) for _ in range(len(arr))]
    from numpy.lib.recfunctions import repack_fields

    others = repack_fields(arr[[n for n in arr.dtype.names if n != "x"]])
    case("ply-list-x-wellformed", EXPORT,
         **{P: ply_bytes(others, extra_elements=[PlyElement.describe(lst, "extra")]).replace(b"element extra", b"element extra")})
    case("ply-empty-vertex", EXPORT, **{P: ply_bytes(arr[:0])})
    case("ply-only-face-element", EXPORT, **{P: ply_bytes(arr).replace(b"element vertex", b"element face")})
    for props in (("binding_0",), ("scale_2",), ("rot_3", "opacity"), tuple(f"f_rest_{i}" for i in range(30, 45))):
        case(f"ply-missing-{'-'.join(props[:2])}", EXPORT, **{P: ply_without(*props)})
    for prop in ("x", "nx", "f_dc_0", "f_rest_0", "f_rest_44", "opacity", "scale_0", "rot_0", "binding_0"):
        for name, v in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
            case(f"ply-{prop}-{name}", EXPORT, **{P: ply_with(prop, v)})
    absurd = {"zero-scale": ("scale_1", -200.0), "huge-scale": ("scale_0", 200.0), "opacity-high": ("opacity", 1e4),
              "opacity-low": ("opacity", -1e4), "binding-fraction": ("binding_0", 1.5), "binding-negative": ("binding_0", -1.0),
              "binding-too-big": ("binding_0", float(N_FACES)), "binding-1e20": ("binding_0", 1e20),
              "xyz-absurd": ("y", 3e38), "fdc-absurd": ("f_dc_1", 3e38)}
    for k, (prop, v) in absurd.items():
        case(f"ply-{k}", EXPORT, **{P: ply_with(prop, v)})
    arr = _ply_array()
    for i in range(4):
        arr[f"rot_{i}"][5] = 0.0
    case("ply-zero-quaternion", EXPORT, **{P: ply_bytes(arr)})
    case("ply-all-zero-scales", RENDER, **{P: ply_with("scale_2", -1e30, rows=True)})
    # huge: a header that counts 10^8 Gaussians over a file as large as that (a hole: no disk used)
    row = _ply_array().dtype.itemsize
    big_header = with_header(f"element vertex {N_GAUSS}", f"element vertex {10**8}")[:hend + 8]
    case("ply-huge-count-sparse", EXPORT, huge=True, **{P: sparse_file(hend + 8 + row * 10**8, big_header)})
    case("ply-huge-count-short", EXPORT, huge=True,
         **{P: with_header(f"element vertex {N_GAUSS}", f"element vertex {2 * 10**9}")})


# -- npz ------------------------------------------------------------------------------------------------------------


def npz_bytes(d: dict, compressed=False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **d)
    return buf.getvalue()


def params_dict():
    return FlameParams.neutral(T).as_dict()


def changed(d: dict, changes: dict) -> dict:
    """``d`` with the keys of ``changes`` replaced (None: removed)."""
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


def npz_with(**changes):
    return npz_bytes(changed(params_dict(), changes))


def _gen_npz():
    N = "avatar__flame_param_DOT_npz"
    good = base_bytes("avatar/flame_param.npz")
    byte_cases("npz", N, EXPORT, good)
    npy = io.BytesIO()
    np.save(npy, np.zeros((T, 100), np.float32))
    case("npz-is-npy", EXPORT, **{N: npy.getvalue()})
    case("npz-is-pickle", EXPORT, **{N: pickle.dumps(params_dict())})
    comp = npz_bytes(params_dict(), compressed=True)
    zf = zipfile.ZipFile(io.BytesIO(comp))
    for i, info in enumerate(zf.infolist()[:4]):  # damage the deflate stream of a member
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        bad = bytearray(comp)
        for j in range(start + 2, min(start + info.compress_size, start + 40)):
            bad[j] ^= 0x5A
        case(f"npz-corrupt-deflate-{info.filename}", EXPORT, **{N: bytes(bad)})
    for key in ("shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation"):
        case(f"npz-missing-{key}", EXPORT, **{N: npz_with(**{key: None})})
    like = params_dict()
    for key in ("shape", "expr", "rotation", "eyes_pose"):
        a = like[key]
        case(f"npz-{key}-str", EXPORT, **{N: npz_with(**{key: np.full(a.shape, "x")})})
        case(f"npz-{key}-bytes", EXPORT, **{N: npz_with(**{key: np.full(a.shape, b"\x00\x01")})})
        case(f"npz-{key}-complex", EXPORT, **{N: npz_with(**{key: a.astype(np.complex64) + 1j})})
        case(f"npz-{key}-nan", EXPORT, **{N: npz_with(**{key: np.where(np.arange(a.size).reshape(a.shape) == 1, np.nan, a)})})
        case(f"npz-{key}-inf", EXPORT, **{N: npz_with(**{key: np.full(a.shape, np.inf, np.float32)})})
        case(f"npz-{key}-float64-overflow", EXPORT, **{N: npz_with(**{key: np.full(a.shape, 1e300)})})
        case(f"npz-{key}-datetime", EXPORT, **{N: npz_with(**{key: np.zeros(a.shape, "datetime64[s]")})})
        case(f"npz-{key}-bool", EXPORT, **{N: npz_with(**{key: np.zeros(a.shape, bool)})})
    case("npz-translation-nan-motion", EXPORT + WITH_MOTION,
         motion_DOT_npz=npz_with(translation=np.full((T, 3), np.nan, np.float32)))
    wrong = {"expr-3d": dict(expr=np.zeros((T, 100, 2), np.float32)), "expr-0d": dict(expr=np.float32(0)),
             "rotation-width4": dict(rotation=np.zeros((T, 4), np.float32)), "shape-2rows": dict(shape=np.zeros((2, 300), np.float32)),
             "shape-0d": dict(shape=np.float32(1)), "eyes-T-mismatch": dict(eyes_pose=np.zeros((T + 1, 6), np.float32)),
             "static-offset-V": dict(static_offset=np.zeros((1, 7, 3), np.float32)),
             "static-offset-4d": dict(static_offset=np.zeros((1, 1, 40, 3), np.float32)),
             "dynamic-offset-T": dict(dynamic_offset=np.zeros((T + 2, 40, 3), np.float32)),
             "zero-timesteps": {k: np.zeros((0,) + like[k].shape[1:], np.float32) for k in like if k != "shape"},
             "shape-too-many": dict(shape=np.ones(301, np.float32)),
             "expr-too-many": dict(expr=np.ones((T, 150), np.float32)),
             "static-offset-nan": dict(static_offset=np.full((1, 40, 3), np.nan, np.float32)),
             "dynamic-offset-inf": dict(dynamic_offset=np.full((T, 40, 3), np.inf, np.float32))}
    for k, ch in wrong.items():
        case(f"npz-{k}", EXPORT, **{N: npz_with(**ch)})
    case("npz-motion-expr-too-many", EXPORT + WITH_MOTION, motion_DOT_npz=npz_with(expr=np.ones((T, 101), np.float32)))
    case("npz-motion-folder-empty", EXPORT + ["--flame-params", "{d}/avatar/sub"], avatar__sub__keep=b"")
    # huge: a member whose header asks for 4e11 floats, and a real zip bomb (tiny file, 1.2 GiB inflated)
    case("npz-header-lies-shape", EXPORT, huge=True, **{N: _npz_lying_header})
    case("npz-zip-bomb", EXPORT, huge=True, **{N: _zip_bomb})


def _npz_lying_header(path: Path):
    """An npz whose expr.npy header asks for 4e11 floats over 12 bytes of data."""
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in params_dict().items():
            with zf.open(k + ".npy", "w") as fh:
                if k == "expr":
                    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (4 * 10**9, 100)})
                    fh.write(bytes(12))
                else:
                    np.lib.format.write_array(fh, v)


def _gen_dataset():
    """A dataset folder as motion (--flame-params DATASET): its transforms and per-frame files."""
    argv = EXPORT + ["--flame-params", "{d}/data"]
    T_JSON = "data__transforms_train_DOT_json"
    base = json.loads(base_bytes("data/transforms_train.json"))

    def frames_with(i, **kv):
        d = json.loads(json.dumps(base))
        d["frames"][i].update(kv)
        return json.dumps(d).encode()

    for k, kv in {"path-number": dict(flame_param_path=5), "path-list": dict(flame_param_path=["a"]),
                 "path-missing": dict(flame_param_path="flame_param/99999.npz"),
                 "two-files-one-timestep": dict(flame_param_path="flame_param/00001.npz"),
                 "timestep-gap": dict(timestep_index=7, flame_param_path="flame_param/00007.npz"),
                 "timestep-text": dict(timestep_index="0"), "timestep-negative": dict(timestep_index=-1),
                 "image-path-number": dict(file_path=3)}.items():
        case(f"data-{k}", argv, **{T_JSON: frames_with(0, **kv)})
    wide = FlameParams.neutral(1).as_dict()
    wide["expr"] = np.zeros((1, 50), np.float32)
    case("data-frame-width-differs", argv, data__flame_param__00001_DOT_npz=npz_bytes(wide))
    case("data-frame-nan", argv, data__flame_param__00002_DOT_npz=npz_with(rotation=np.full((T, 3), np.nan, np.float32)))
    case("data-frame-truncated", argv, data__flame_param__00000_DOT_npz=base_bytes("data/flame_param/00000.npz")[:100])
    case("data-transforms-list", argv, **{T_JSON: b"[]"})
    case("data-no-transforms", argv, remove=["data/transforms_train.json", "data/transforms.json"])


def _zip_bomb(path: Path):
    """An npz of about 1 MB whose expr inflates to 1.06 GiB of zeros (just beyond the 1 GiB default)."""
    chunk, n_chunks = bytes(1 << 24), 68
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in params_dict().items():
            if k != "expr":
                with zf.open(k + ".npy", "w") as fh:
                    np.lib.format.write_array(fh, v)
        with zf.open("expr.npy", "w", force_zip64=True) as fh:
            rows = n_chunks * len(chunk) // 4 // 64
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, 64)})
            for _ in range(n_chunks):
                fh.write(chunk)


# -- FLAME pickle -----------------------------------------------------------------------------------------------------


def pkl_with(protocol=2, **changes):
    return pickle.dumps(changed(flame_dict(), changes), protocol=protocol)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _gen_pickle():
    K = "avatar__head_model_DOT_pkl"
    good = base_bytes("avatar/head_model.pkl")
    byte_cases("pkl", K, EXPORT, good)
    case("pkl-list", EXPORT, **{K: pickle.dumps([1, 2, 3])})
    case("pkl-code", EXPORT, **{K: pickle.dumps({"v_template": _Evil()})})
    case("pkl-code-via-flame-option", EXPORT + WITH_FLAME, **{K: pickle.dumps(_Evil())})
    d0 = flame_dict()
    for key in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights"):
        case(f"pkl-missing-{key}", EXPORT, **{K: pkl_with(**{key: None})})
        a = d0[key]
        swaps = {"str": "abc", "dict": {"a": 1}, "none-list": [None, None], "objarr-str": np.full(a.shape, "x", object),
                 "objarr-dict": np.array([{"a": 1}] * 3, object), "complex": a.astype(np.complex64),
                 "1d": a.reshape(-1), "strarr": np.full(a.shape, "7")}
        for s, v in swaps.items():
            case(f"pkl-{key}-{s}", EXPORT, **{K: pkl_with(**{key: v})})
        if a.dtype.kind == "f":
            b = a.copy()
            b.flat[1] = np.nan
            case(f"pkl-{key}-nan", EXPORT, **{K: pkl_with(**{key: b})})
            case(f"pkl-{key}-inf", EXPORT, **{K: pkl_with(**{key: np.full_like(a, np.inf)})})
    for k, v in {"str": "abc", "fraction": 3.5, "negative": -1, "huge": 10**9, "list": [1, 2], "bignum": 10**40,
                 "nan": float("nan")}.items():
        case(f"pkl-n_shape-{k}", EXPORT, **{K: pkl_with(n_shape=v)})
    for k, v in {"str": "x", "too-many": 1000, "negative": -5}.items():
        case(f"pkl-n_expr-{k}", EXPORT, **{K: pkl_with(n_expr=v)})
    f = d0["f"].copy()
    f[0, 0] = 40
    case("pkl-faces-out-of-range", EXPORT, **{K: pkl_with(f=f)})
    case("pkl-faces-fraction", EXPORT, **{K: pkl_with(f=d0["f"].astype(np.float64) + 0.5)})
    kt = d0["kintree_table"].copy()
    kt[0, 2] = 7
    case("pkl-parents-out-of-range", EXPORT, **{K: pkl_with(kintree_table=kt)})
    kt = d0["kintree_table"].copy()
    kt[0, 1] = 3
    case("pkl-parents-cycle", EXPORT, **{K: pkl_with(kintree_table=kt)})
    import scipy.sparse as sp

    case("pkl-sparse-wrong-shape", EXPORT, **{K: pkl_with(J_regressor=sp.csc_matrix((6, 40), dtype=np.float32))})
    case("pkl-sparse-huge", EXPORT, huge=True, **{K: pkl_with(J_regressor=sp.csr_matrix((5, 10**9), dtype=np.float32))})
    big = np.zeros(1_000_000, np.float32)
    case("pkl-shared-array-bomb", EXPORT, huge=True, **{K: pkl_with(protocol=4, shapedirs=[big] * 300)})
    nest = []
    for _ in range(30):
        nest = [nest, nest, nest, nest]
    case("pkl-memo-bomb", EXPORT, huge=True, **{K: pkl_with(protocol=4, v_template=nest)})
    case("pkl-deep", EXPORT, **{K: b"\x80\x04}\x8c\x0av_template" + b"]" * 100_000 + b"a" * 99_999 + b"s."})
    case("pkl-huge-file", EXPORT, huge=True, **{K: sparse_file(3 * GB, good[:-1])})
    # the masks pickle beside it
    M = ["--flame-masks", "{d}/masks.pkl"]
    for k, v in {"str-ids": {"face": "abc"}, "dict-ids": {"face": {"a": 1}}, "out-of-range": {"face": np.array([0, 99])},
                 "fraction": {"face": np.array([0.5, 1.5])}, "list": [1, 2], "nan": {"face": np.array([np.nan])},
                 "negative": {"face": np.array([-3])}}.items():
        case(f"masks-{k}", EXPORT + M, masks_DOT_pkl=pickle.dumps(v, protocol=2))


# -- avatar.json ------------------------------------------------------------------------------------------------------


def _gen_avatar_json():
    J = "avatar__avatar_DOT_json"
    good = base_bytes("avatar/avatar.json")
    byte_cases("json", J, EXPORT, good)
    for k, v in {"list": [{"head_model": "head_model.pkl"}], "string": "head_model.pkl", "number": 5, "null": None,
                 "true": True}.items():
        case(f"json-top-{k}", EXPORT, **{J: json.dumps(v).encode()})
    case("json-deep", EXPORT, **{J: b"[" * 100_000 + b"]" * 100_000})
    case("json-huge", EXPORT, huge=True, **{J: sparse_file(600 * 10**6, b'{"head_model": "head_model.pkl", "x": "')})
    fields = {"head_model": [5, [], "", "missing.pkl", {"a": 1}, "../head_model.pkl"],
              "head_masks": [7, "missing_masks.pkl"],
              "camera_model": [5, "weird", ["file"]], "background": ["red", [1, 2], [1, "a", 0], [float("nan"), 0, 0], 3],
              "held_out_camera": ["x", 1.5, [8]], "version": ["one", 1.5], "kind": [5, ["builtin"]],
              "format": [5], "cameras": [3, "../cams.json"], "train_cameras": ["0,1", [0, "x"]]}
    for key, values in fields.items():
        for i, v in enumerate(values):
            meta = {"head_model": "head_model.pkl", key: v}
            case(f"json-{key}-{i}", EXPORT, **{J: json.dumps(meta).encode()})
    case("json-nan-literal", EXPORT, **{J: b'{"head_model": "head_model.pkl", "background": [NaN, 1, 1]}'})


# -- cameras ----------------------------------------------------------------------------------------------------------


def cams_data():
    return json.loads(base_bytes("cams.json"))


def cams_with(frame_changes=None, top=None, frame=0, drop=()):
    d = cams_data()
    fr = d["frames"][frame]
    for k in drop:
        fr.pop(k, None)
    fr.update(frame_changes or {})
    d.update(top or {})
    return json.dumps(d).encode()


def ga_cams(**changes):
    d = cams_data()["frames"][0]
    m = np.asarray(d["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
    e = {"id": 0, "img_name": "00000_00", "width": d["w"], "height": d["h"], "position": m[:3, 3].tolist(),
         "rotation": m[:3, :3].tolist(), "fx": d["fl_x"], "fy": d["fl_y"]}
    e.update(changes)
    return json.dumps([e]).encode()


def _gen_cameras():
    C = "cams_DOT_json"
    good = base_bytes("cams.json")
    byte_cases("cams", C, RENDER, good)
    nan, inf = float("nan"), float("inf")
    bad = {"w": [nan, inf, -inf, 0, -1, "abc", None, [1], 1e300, 10.5, True],
           "h": [nan, inf, 0, -5, "x", 1e300],
           "fl_x": [nan, inf, 0, -1, "f", [1]], "fl_y": [nan, -inf, 0],
           "cx": [nan, inf, "c"], "cy": [nan, -inf, None],
           "camera_index": ["a", 1.5, [1], -1, 1e300, None, {"i": 1}],
           "timestep_index": [[1], "x", 1.5, -2, {"t": 0}],
           "transform_matrix": [None, "eye", [[1, 0], [0, 1]], [[1, 0, 0, 0], [0, 1]], [[nan] * 4] * 4,
                                [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]], [["a"] * 4] * 4, 5]}
    for key, values in bad.items():
        for i, v in enumerate(values):
            case(f"cams-{key}-{i}", RENDER, **{C: cams_with({key: v}, frame=1)})
    for i, v in enumerate([0, -0.1, nan, inf, 3.2, 10, "wide"]):  # field of view decides the focal length
        case(f"cams-angle-{i}", RENDER, **{C: cams_with({"camera_angle_x": v}, drop=("fl_x", "fl_y"))})
    for key in ("w", "transform_matrix"):
        case(f"cams-missing-{key}", RENDER, **{C: cams_with(drop=(key,))})
    case("cams-missing-focal", RENDER, **{C: cams_with(drop=("fl_x", "camera_angle_x"))})
    case("cams-only-cx", RENDER, **{C: cams_with(drop=("cy",))})
    for k, v in {"frames-dict": {"frames": {"a": 1}}, "frames-empty": {"frames": []}, "frames-number": {"frames": [5]},
                 "frames-none": {"frames": None}, "convention-bad": {"camera_convention": "opencv"},
                 "convention-list": {"camera_convention": ["vhap"]}}.items():
        case(f"cams-{k}", RENDER, **{C: cams_with(top=v)})
    case("cams-top-list-empty", RENDER, **{C: b"[]"})
    case("cams-top-string", RENDER, **{C: b'"cams"'})
    case("cams-deep", RENDER, **{C: b'{"frames": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"})
    for k, v in {"width-nan": dict(width=nan), "fx-zero": dict(fx=0), "fy-nan": dict(fy=nan), "id-text": dict(id="x", img_name="a"),
                 "position-inf": dict(position=[inf, 0, 0]), "rotation-2x2": dict(rotation=[[1, 0], [0, 1]]),
                 "width-inf": dict(width=inf), "height-huge": dict(height=10**6), "entry-not-object": None}.items():
        case(f"cams-ga-{k}", RENDER, **{C: ga_cams(**v) if v is not None else b"[5]"})
    # huge images: refused before any pixel is allocated
    for s in (20_000, 100_000):
        case(f"cams-image-{s}", RENDER, huge=True,
             **{C: cams_with({"w": s, "h": s, "cx": s / 2, "cy": s / 2, "fl_x": s, "fl_y": s})})
    case("cams-huge-file", RENDER, huge=True, **{C: sparse_file(600 * 10**6, b'{"frames": [')})
    # the --scale resolution factor (CLI range of the same boundary)
    for v in ("nan", "inf", "0", "-1", "1e6", "3000"):
        case(f"cams-scale-{v}", RENDER + ["--scale", v], huge=v in ("1e6", "3000"))


# -- CLI ranges -------------------------------------------------------------------------------------------------------


def _gen_ranges():
    def without(argv, opt):
        i = argv.index(opt)
        return argv[:i] + argv[i + 2:]

    for v in ("0-10000000", "0-99999999999999999999", "5-100000000:1", "0-2000000:2"):
        case(f"range-timesteps-{v}", without(RENDER, "--timesteps") + ["--timesteps", v], huge=True)
    for v in ("0-10000000", "3-99999999999999"):
        case(f"range-camera-ids-{v}", RENDER + ["--camera-ids", v], huge=True)
    for v in ("99999999999999999999", "-1", str(T)):
        case(f"range-timestep-{v}", EXPORT + ["--timestep", v])
    M = ["make-avatar", "--out", "{d}/made"]
    for opt, values in {"--frames": ("0", "-3", "1000000000"), "--gaussians-per-face": ("0", "-1", "10000000"),
                        "--seed": ("-1", "99999999999999999999999")}.items():
        for v in values:
            case(f"range-make-avatar{opt}={v}", M + [opt, v], huge=True)
    E = ["edit", "--avatar", "{d}/avatar", "--prompt", "make it blue", "--device", "cpu", "--out", "{d}/edited"]
    for opt, values in {"--rounds": ("0", "-1", "1000000000"), "--num-timesteps": ("0", "999999999"),
                        "--lr": ("nan", "inf", "0", "-1"), "--scale": ("nan", "0", "inf", "-2"),
                        "--lrs": ('{"xyz": "a"}', "[1]", '{"xyz": NaN}', '{"xyz": -1}', "{", '{"nope": 1}', "fastest"),
                        "--iters-per-batch": ("0",), "--views-per-iter": ("-1",), "--max-iters-per-batch": ("0",),
                        "--timesteps": ("0-99999999", "x"), "--seed": ("-1",), "--cameras": ("0-9999999",)}.items():
        for v in values:
            case(f"range-edit{opt}={v}", E + [opt, v], huge=True)
    others = {"capture": (["capture", "--avatar", "{d}/avatar", "--cameras", "{d}/cams.json", "--out", "{d}/cap"], {"--step": ("0", "-2"), "--scale": ("0", "nan", "1e9")}),
              "eval": (["eval", "--edited", "{d}/avatar", "--original", "{d}/avatar", "--prompt", "x"],
                       {"--frames": ("1", "-5", "99999999"), "--scale": ("0", "inf")}),
              "train-editor": (["train-editor", "--out", "{d}/model", "--device", "cpu"],
                               {"--steps": ("-1",), "--views": ("0",), "--lr": ("nan", "-1"), "--minutes": ("-1",),
                                "--snr-gamma": ("nan", "-2"), "--bank": ("-1",), "--seed": ("-7",)})}
    for cmd, (argv, opts) in others.items():
        for opt, values in opts.items():
            for v in values:
                case(f"range-{cmd}{opt}={v}", argv + [opt, v], huge=True)


# -- output paths -----------------------------------------------------------------------------------------------------


def _gen_outputs():
    def out(argv, new):
        i = argv.index("--out")
        return argv[:i + 1] + [new] + argv[i + 2:]

    case("out-export-is-a-folder", out(EXPORT, "{d}/outdir"), outdir__keep=b"x")
    case("out-export-parent-is-a-file", out(EXPORT, "{d}/plain.txt/x.ply"), plain_DOT_txt=b"x")
    case("out-export-nul", out(EXPORT, "{d}/x\0.ply"))
    case("out-export-name-too-long", out(EXPORT, "{d}/" + "n" * 300 + ".ply"))
    case("out-export-read-only-system", out(EXPORT, "/proc/edit3dgs-fuzz/x.ply"))
    case("out-render-is-a-file", out(RENDER, "{d}/plain.txt"), plain_DOT_txt=b"x")
    case("out-render-foreign-folder", out(RENDER, "{d}/foreign"), foreign__notes_DOT_txt=b"mine")
    case("out-render-parent-is-a-file", out(RENDER, "{d}/plain.txt/r"), plain_DOT_txt=b"x")
    case("out-render-read-only-system", out(RENDER, "/proc/edit3dgs-fuzz"))
    case("out-make-avatar-is-a-file", ["make-avatar", "--out", "{d}/plain.txt"], plain_DOT_txt=b"x")


for _gen in (_gen_ply, _gen_npz, _gen_dataset, _gen_pickle, _gen_avatar_json, _gen_cameras, _gen_ranges, _gen_outputs):
    _gen()

# -- random mutations: not always invalid, so either the command works or it fails cleanly ---------------------------


def random_mutants(n_per_file: int = 24, seed: int = 15) -> list[Case]:
    """Seeded byte flips, inserts and deletes in each input file (in its first 600 bytes, where headers,
    zip entries and pickle opcodes are; binary data further on is mostly still valid data)."""
    rng = np.random.default_rng(seed)
    targets = {"avatar/point_cloud.ply": EXPORT, "avatar/flame_param.npz": EXPORT, "avatar/head_model.pkl": EXPORT,
               "avatar/avatar.json": EXPORT, "cams.json": RENDER, "masks.pkl": EXPORT + ["--flame-masks", "{d}/masks.pkl"]}
    out = []
    for rel, argv in targets.items():
        good = base_bytes(rel)
        for i in range(n_per_file):
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 4))):
                at = int(rng.integers(0, min(len(b), 600)))
                op = rng.integers(0, 3)
                if op == 0:
                    b[at] = int(rng.integers(0, 256))
                elif op == 1:
                    b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
                else:
                    del b[at:at + int(rng.integers(1, 9))]
            out.append(Case(f"random-{rel.replace('/', '_')}-{i}", {rel: bytes(b)}, argv))
    return out


RANDOM = random_mutants()
IN_PROCESS = [c for c in CASES if not c.huge]
HUGE = [c for c in CASES if c.huge]


# -- running a case and checking the contract -----------------------------------------------------------------------


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def prepare(c: Case, root: Path) -> list[str]:
    """The case's folder: the valid inputs (hard links to one copy: cheap), its mutations written as new files."""
    shutil.copytree(base_dir(), root, copy_function=_link_or_copy)
    for rel, v in c.files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)  # never write through a link into the shared valid inputs
        if callable(v):
            v(p)
        else:
            p.write_bytes(v)
    for rel in c.remove:
        (root / rel).unlink(missing_ok=True)
    return [a.replace("{d}", str(root)) for a in c.argv]


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    size = p.stat().st_size
    with open(p, "rb") as fh:
        if size <= 64 << 20:
            h.update(fh.read())
        else:  # a huge (sparse) file: its size, its head and its tail
            h.update(fh.read(1 << 20))
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return f"{size}:{h.hexdigest()}"


def tree(root: Path) -> dict:
    """Every path under ``root`` (hidden ones too) with its bytes' digest."""
    return {str(p.relative_to(root)): (_digest(p) if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def check_contract(c: Case, code: int, err: str, before: dict, after: dict, caught=()):
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code not in (0, None), f"{c.id}: accepted (exit {code})\n{err}"
    assert "Traceback" not in err, f"{c.id}: traceback\n{err}"
    assert len(lines) == 1, f"{c.id}: {len(lines)} error lines\n{err}"
    assert "expected" in lines[0] and "found" in lines[0], f"{c.id}: not 'expected ..., found ...'\n{lines[0]}"
    assert len(lines[0]) <= MAX_LINE, f"{c.id}: a line of {len(lines[0])} characters is not a clear one\n{lines[0][:400]}"
    assert "MemoryError" not in lines[0], f"{c.id}: tried to allocate (refused by the memory limit, not by a check)\n{lines[0]}"
    assert not caught, f"{c.id}: warnings {caught}\n{err}"
    assert after == before, f"{c.id}: files changed or written: {sorted(set(after.items()) ^ set(before.items()))}"


def run_main(argv: list[str]) -> tuple[int, str, list]:
    from edit3dgs.cli import main

    err, out = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as w, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        except BaseException:  # a crash: record it as the traceback it would print
            import traceback

            err.write(traceback.format_exc())
            code = 1
    caught = [f"{x.category.__name__}: {x.message}" for x in w
              if issubclass(x.category, (RuntimeWarning, UserWarning, np.exceptions.ComplexWarning))]
    return code, err.getvalue(), caught


def test_the_generator_has_enough_cases_of_every_kind():
    kinds = {}
    for c in CASES:
        kinds[c.id.split("-")[0]] = kinds.get(c.id.split("-")[0], 0) + 1
    assert len(CASES) >= 200 and len({c.id for c in CASES}) == len(CASES), len(CASES)
    assert set(kinds) >= {"ply", "npz", "data", "pkl", "masks", "json", "cams", "range", "out"}, kinds
    assert len(HUGE) >= 10


def test_the_unmutated_inputs_work(tmp_path):
    """The base inputs are valid: every failure below is the mutation's."""
    for argv, name in ((EXPORT, "export"), (RENDER, "render"), (EXPORT + WITH_MOTION + WITH_FLAME, "export2"),
                       (EXPORT + ["--flame-params", "{d}/data", "--timestep", "2"], "export3")):
        root = tmp_path / name
        args = prepare(Case(name, {}, argv), root)
        code, err, caught = run_main(args)
        assert code == 0, err
        assert not caught, caught


@pytest.mark.parametrize("c", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_malformed_input_gets_one_line(c, tmp_path):
    root = tmp_path / "case"
    argv = prepare(c, root)
    before = tree(root)
    code, err, caught = run_main(argv)
    check_contract(c, code, err, before, tree(root), caught)


@pytest.mark.parametrize("c", RANDOM, ids=[c.id for c in RANDOM])
def test_randomly_mutated_input_works_or_gets_one_line(c, tmp_path):
    root = tmp_path / "case"
    argv = prepare(c, root)
    before = tree(root)
    code, err, caught = run_main(argv)
    after = tree(root)
    if code == 0:  # still a valid input: then the inputs are untouched and nothing else matters here
        changed = {k for k in before if after.get(k) != before[k]}
        assert not changed and "Traceback" not in err, (c.id, changed, err)
    else:
        check_contract(c, code, err, before, after, caught)


def test_limits_are_named_and_raised_by_their_setting(monkeypatch):
    """A limit's message names the setting that raises it; the setting raises it; a bad setting is one line too."""
    from edit3dgs.cli.common import parse_int_list
    from edit3dgs.errors import Edit3DGSError

    with pytest.raises(Edit3DGSError, match="at most 100,000 items .*EDIT3DGS_MAX_LIST_ITEMS.*found 200,000"):
        parse_int_list("0-200000", "--timesteps")
    monkeypatch.setenv("EDIT3DGS_MAX_LIST_ITEMS", "300_000")
    assert len(parse_int_list("0-200000", "--timesteps")) == 200_000
    monkeypatch.setenv("EDIT3DGS_MAX_LIST_ITEMS", "lots")
    with pytest.raises(Edit3DGSError, match=r"\$EDIT3DGS_MAX_LIST_ITEMS: expected a positive whole number, found 'lots'"):
        parse_int_list("0-2", "--timesteps")


_CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path[:0] = sys.argv[2:4]
from test_fuzz_inputs import run_main
results = []
for argv in json.loads(sys.stdin.read()):
    code, err, caught = run_main(argv)
    results.append({"code": code, "err": err, "caught": caught,
                    "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
print(json.dumps(results))
"""


def test_huge_inputs_refused_within_2gb(tmp_path):
    """Huge sizes are refused before allocating: in a child limited to 2 GiB of address space."""
    roots, argvs = [], []
    for i, c in enumerate(HUGE):
        root = tmp_path / f"c{i}"
        argvs.append(prepare(c, root))
        roots.append((root, tree(root)))
    tests_dir = str(Path(__file__).parent)
    backend = str(Path(__file__).parents[1] / "backend")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _CHILD, str(MEMORY_LIMIT), tests_dir, backend], input=json.dumps(argvs),
                       capture_output=True, text=True, timeout=300, env=env, cwd=tests_dir)
    assert p.returncode == 0, p.stderr[-4000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    failures = []
    for c, (root, before), r in zip(HUGE, roots, results):
        try:
            check_contract(c, r["code"], r["err"], before, tree(root), r["caught"])
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)
    assert max(r["maxrss"] for r in results) < MEMORY_LIMIT


def _server_cases():
    """The avatar cases (a bad PLY, npz, head model or avatar.json) as export_rig jobs, and bad cameras
    as region_masks jobs: the inputs the Blender extension sends through ``edit3dgs serve``."""
    avatar = [c for c in IN_PROCESS if c.argv == EXPORT and c.files and all(k.startswith("avatar/") for k in c.files)]
    jobs = [(c, "export_rig", {"avatar": "{d}/avatar", "out": "{d}/out/rig.npz"}) for c in avatar[::3]]  # a third: time
    good = {"w": 40, "h": 60, "fx": 50.0, "fy": 50.0, "cx": 20.0, "cy": 30.0, "c2w": np.eye(4).tolist()}
    bad = {"w-huge": dict(w=100_000, h=100_000), "w-zero": dict(w=0), "w-fraction": dict(w=40.5), "w-text": dict(w="40"),
           "fx-zero": dict(fx=0), "fx-nan": dict(fx=float("nan")), "cy-inf": dict(cy=float("inf")), "cx-none": dict(cx=None),
           "c2w-3x3": dict(c2w=np.eye(3).tolist()), "c2w-nan": dict(c2w=[[float("nan")] * 4] * 4),
           "c2w-singular": dict(c2w=np.zeros((4, 4)).tolist()), "c2w-text": dict(c2w="eye"), "missing-h": dict(h=None)}
    for k, ch in bad.items():
        cam = {**good, **ch}
        if ch.get("h", 0) is None and k == "missing-h":
            cam.pop("h")
        jobs.append((Case(f"job-camera-{k}", {}, []), "region_masks",
                     {"avatar": "{d}/avatar", "camera": cam, "out": "{d}/out/mask.png", "regions": ["face"]}))
    for k, out in {"out-parent-is-a-file": "{d}/cams.json/mask.png", "out-nul": "{d}/m\0.png",
                   "out-name-too-long": "{d}/" + "m" * 300 + ".png"}.items():
        jobs.append((Case(f"job-{k}", {}, []), "region_masks",
                     {"avatar": "{d}/avatar", "camera": good, "out": out, "regions": ["face"]}))
    for k, v in {"regions-number": 5, "regions-text": "face", "timestep-text": "0"}.items():
        args = {"avatar": "{d}/avatar", "camera": good, "out": "{d}/out/mask.png", "regions": ["face"]}
        args[k.split("-")[0]] = v
        jobs.append((Case(f"job-{k}", {}, []), "region_masks", args))
    return jobs


def test_the_same_inputs_through_the_server_get_one_line_and_it_keeps_serving(tmp_path):
    from test_server_fuzz import _serve

    jobs = _server_cases()
    assert len(jobs) >= 100 and len({kind for _, kind, _ in jobs}) == 2
    backend = str(Path(__file__).parents[1] / "backend")  # this checkout's backend, whatever is installed
    s = _serve({"PYTHONPATH": os.pathsep.join([backend, os.environ.get("PYTHONPATH", "")])})
    try:
        failures = []
        for i, (c, kind, args) in enumerate(jobs):
            root = tmp_path / f"s{i}"
            prepare(c, root)
            before = tree(root)
            fill = lambda v: v.replace("{d}", str(root)) if isinstance(v, str) else v  # noqa: E731
            s.send("job", {"id": c.id, "kind": kind, "args": {k: fill(v) for k, v in args.items()}})
            k, p = s.until({"done", "error", "cancelled"}, c.id, timeout=60)
            msg = p.get("message", "")
            if not (k == "error" and p.get("kind") == "input" and "\n" not in msg and "expected" in msg and "found" in msg
                    and len(msg) <= MAX_LINE and tree(root) == before):
                failures.append(f"{c.id}: {k} {p}")
        assert not failures, "\n".join(failures)
        s.send("ping", {})
        assert s.until({"pong"}, timeout=30)[0] == "pong"
        assert s.p.poll() is None
    finally:
        s.close(10)


def test_peak_memory_of_the_in_process_cases():
    """Runs last in this file: the whole in-process fuzz stayed under 2 GB resident."""
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MEMORY_LIMIT

