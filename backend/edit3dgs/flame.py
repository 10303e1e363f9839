"""The FLAME head layer: safe pickle loading, LBS posing, GaussianAvatars' teeth, regions.

A FLAME 2020/2023 pickle (or the built-in head, written in the same layout)
is read with a restricted unpickler that builds numpy and scipy.sparse arrays
only; chumpy objects (FLAME 2020) become arrays without importing chumpy.
Posing is standard linear blend skinning: ``smplx.lbs``'s, with a capturable kinematic chain (``FlameHead.lbs``).

Facts (formats.md §1): 5 joints [global, neck, jaw, left eye, right eye],
parents [-1, 0, 1, 1, 1]; 300 shape + 100 expression columns in
``shapedirs``; GaussianAvatars appends 120 teeth vertices and 168 faces to
FLAME's 5023/9976 topology (10144 faces), and ``binding_0`` indexes those.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .errors import Edit3DGSError
from .validate import at_most, float32_array, index_array, limit, whole

FLAME_N_VERTS = 5023
FLAME_N_FACES = 9976
TEETH_N_VERTS = 120
TEETH_N_FACES = 168
N_SHAPE_MAX = 300
N_EXPR_MAX = 100
JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")

# ---------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------


class _ChumpyStand_in:
    """Takes the place of a chumpy class while unpickling; keeps only its state."""

    def __init__(self, *args, **kwargs):
        self._state = {}

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {"x": state}

    def to_array(self, what: str) -> np.ndarray:
        x = self._state.get("x")
        if x is None:
            raise ValueError(f"a chumpy object without a value array ({what})")
        return np.asarray(x)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    return _reconstruct, scalar


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """numpy's own ``_frombuffer`` (protocol-5 pickles of arrays), without importing a private name."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"_frombuffer with dtype {type(dtype).__name__}")
    arr = np.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:
        return arr.reshape(shape, order="C").transpose(axis_order)
    return arr.reshape(shape, order=order)


def _byte_maker(cls):
    """``bytes``/``bytearray`` as protocol 0-2 pickles call them (from data or a str), never ``bytes(n)``."""
    def make(*args):
        if not args:
            return cls()
        if isinstance(args[0], (bytes, bytearray, str)) and len(args) <= 3:
            return cls(*args)
        raise pickle.UnpicklingError(f"{cls.__name__}() of {type(args[0]).__name__}")
    return make


# Bounds on the work a pickle can ask for (a small file must not expand into minutes or gigabytes).
# File size and array elements are settings (validate.py: EDIT3DGS_MAX_PICKLE_BYTES, _ELEMENTS); FLAME 2023
# holds about 7 million elements, so the defaults leave room while a bad file stays far below 2 GB of memory.
MAX_PICKLE_BYTES = 1 << 30  # file size
MAX_PICKLE_DEPTH = 64  # nesting of containers
MAX_PICKLE_ITEMS = 2_000_000  # entries of lists, tuples, sets, dicts, counted as often as they are referenced
MAX_PICKLE_ELEMENTS = 50_000_000  # array elements (sparse: rows x columns, as densified), likewise


def _kids(x):
    if isinstance(x, np.ndarray):
        return x.ravel().tolist() if x.dtype == object else None
    if isinstance(x, (list, tuple, set, frozenset)):
        return list(x)
    if isinstance(x, dict):
        return list(x.values())
    if isinstance(x, _ChumpyStand_in):
        return [x._state]
    return None


def _leaf_elements(x) -> int:
    if isinstance(x, np.ndarray):
        return int(x.size)
    if hasattr(x, "tocsr") and hasattr(x, "shape"):  # scipy.sparse: densified later
        return int(np.prod([int(v) for v in x.shape], dtype=object)) if x.shape else 0
    return 0


def check_pickle_budget(obj, path) -> None:
    """Refuse an unpickled object whose expansion exceeds the bounds above.

    Shared references count each time they are reached (converting to arrays would expand them),
    but each object is visited once (sizes are memoised), so a memo bomb is measured, not walked.
    """
    def refuse(expected, found):
        raise Edit3DGSError(path, expected, found + " (refused as a possible pickle bomb)")

    max_elements = limit("MAX_PICKLE_ELEMENTS", MAX_PICKLE_ELEMENTS)
    note = " (the limit; raise it with EDIT3DGS_MAX_PICKLE_ELEMENTS)"
    memo: dict = {}  # id -> (entries, elements) once expanded
    path_ids: set = set()
    stack = [(obj, False)]
    while stack:
        x, finishing = stack.pop()
        k = id(x)
        if not finishing:
            if k in memo:
                continue
            kids = _kids(x)
            if kids is None:
                memo[k] = (0, _leaf_elements(x))
                continue
            if k in path_ids:
                refuse("containers without cycles", "a container that contains itself")
            path_ids.add(k)
            if len(path_ids) > MAX_PICKLE_DEPTH:
                refuse(f"containers nested at most {MAX_PICKLE_DEPTH} deep", "deeper nesting")
            stack.append((x, True))
            stack.extend((c, False) for c in kids if id(c) not in memo)
            continue
        path_ids.discard(k)
        kids = _kids(x)
        if any(id(c) in path_ids for c in kids):
            refuse("containers without cycles", "a container that contains itself")
        entries = len(kids) + sum(memo[id(c)][0] for c in kids)
        elements = sum(memo[id(c)][1] for c in kids)
        if entries > MAX_PICKLE_ITEMS:
            refuse(f"a pickle of at most {MAX_PICKLE_ITEMS:,} container entries", f"{entries:,} once expanded")
        if elements > max_elements:
            refuse(f"arrays of at most {max_elements:,} elements in all{note}", f"{elements:,} once expanded")
        memo[k] = (entries, elements)
    if id(obj) in memo and _kids(obj) is None and memo[id(obj)][1] > max_elements:
        refuse(f"arrays of at most {max_elements:,} elements in all{note}", f"{memo[id(obj)][1]:,}")


def _allowed_globals() -> dict:
    import scipy.sparse as sp

    _reconstruct, scalar = _numpy_reconstruct()
    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = _frombuffer
    import codecs

    # Protocol-2 pickles written by Python 3 store byte strings via _codecs.encode(str, "latin1").
    allowed[("_codecs", "encode")] = codecs.encode
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"):
        cls = getattr(sp, name, None)
        if cls is None:
            continue
        short = name.split("_")[0]
        for mod in (f"scipy.sparse.{short}", f"scipy.sparse._{short}", "scipy.sparse"):
            allowed[(mod, name)] = cls
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # Python 2 names
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStand_in
        if (module, name) == ("copyreg", "_reconstructor"):
            # Protocol 0/1 pickles (Python 2 era FLAME files) build objects with
            # it; it only calls base.__new__ on classes this method allowed.
            import copyreg

            return copyreg._reconstructor
        if module == "builtins" and name in ("bytes", "bytearray"):
            return _byte_maker(bytes if name == "bytes" else bytearray)
        if module == "builtins" and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]
        raise Edit3DGSError(
            self._path,
            "a pickle of numpy/scipy arrays only",
            f"a reference to {module}.{name} (refused: loading it could run code)",
        )


def safe_load_pickle(path: os.PathLike | str) -> dict:
    """Load a FLAME-style pickle allowing only arrays; chumpy values become arrays."""
    path = Path(path)
    if not path.is_file():
        raise Edit3DGSError(path, "a FLAME model pickle", "no such file")
    at_most(path, "bytes of pickle", path.stat().st_size, "MAX_PICKLE_BYTES", MAX_PICKLE_BYTES)
    data = path.read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except Edit3DGSError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise Edit3DGSError(path, "a readable pickle", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise Edit3DGSError(path, "a pickled dict", f"a pickled {type(obj).__name__}")
    check_pickle_budget(obj, path)
    out = {}
    for key, value in obj.items():
        if isinstance(value, _ChumpyStand_in):
            try:
                value = value.to_array(str(key))
            except ValueError as exc:
                raise Edit3DGSError(path, "chumpy objects holding arrays", str(exc)) from None
        out[key] = value
    return out


# ---------------------------------------------------------------------------
# The model data
# ---------------------------------------------------------------------------


@dataclass
class FlameModel:
    """A FLAME-layout head model as plain arrays (float32, metres).

    v_template (V,3), faces (F,3) int64, shapedirs (V,3,S+E), posedirs (V,3,36),
    J_regressor (5,V), parents (5,), weights (V,5). ``masks`` maps region names
    to vertex ids (FLAME_masks layout). ``name`` says what it is (FLAME or the
    built-in head); ``path`` where it came from.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    parents: np.ndarray
    weights: np.ndarray
    n_shape: int
    n_expr: int
    masks: dict = field(default_factory=dict)
    name: str = "FLAME"
    path: str = ""
    expr_names: list = field(default_factory=list)

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def has_flame_topology(self) -> bool:
        return self.n_verts == FLAME_N_VERTS and self.n_faces == FLAME_N_FACES


def _check(path, cond, expected, found):
    if not cond:
        raise Edit3DGSError(path, expected, found)


def _model_array(path, d: dict, key: str, shape_ok, shape: str, index_below: int | None = None,
                 index_from: int = 0) -> np.ndarray:
    """A model array (dense or scipy sparse) as float32, or int64 indices in [index_from, index_below): real numbers
    only, finite, of the expected shape; a sparse matrix's shape is checked before it is densified."""
    x = d[key]
    if hasattr(x, "toarray") and hasattr(x, "shape"):
        _check(path, shape_ok(tuple(int(n) for n in x.shape)), f"{key} of shape {shape}", f"shape {tuple(x.shape)}")
        x = x.toarray()
    if isinstance(x, _ChumpyStand_in):
        x = x.to_array(key)
    if index_below is not None:
        a = index_array(x, path, key + " (indices)", index_from, index_below)
    else:
        a = float32_array(x, path, key)
    _check(path, shape_ok(a.shape), f"{key} of shape {shape}", f"shape {a.shape}")
    return a


def load_flame_model(path: os.PathLike | str, masks_path: os.PathLike | str | None = None) -> FlameModel:
    """Read a FLAME 2020/2023 pickle or the built-in head (same layout).

    ``masks_path`` defaults to ``FLAME_masks.pkl`` (or ``head_masks.pkl``)
    beside the model when present; without it the model has no regions.
    """
    path = Path(path)
    d = safe_load_pickle(path)
    for key in ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights"):
        _check(path, key in d, f"FLAME key '{key}'", f"keys {sorted(map(str, d))}")
    v = _model_array(path, d, "v_template", lambda s: len(s) == 2 and s[1] == 3 and s[0] > 0, "(V,3)")
    V = v.shape[0]
    f = _model_array(path, d, "f", lambda s: len(s) == 2 and s[1] == 3 and s[0] > 0, "(F,3)", index_below=V)
    sd = _model_array(path, d, "shapedirs", lambda s: len(s) == 3 and s[:2] == (V, 3), f"({V},3,K)")
    K = sd.shape[2]
    n_shape = whole(d.get("n_shape", min(K, N_SHAPE_MAX)), path, "n_shape (shape components)", 0, K)
    n_expr = whole(d.get("n_expr", min(K - n_shape, N_EXPR_MAX)), path,
                   f"n_expr (expression components; shapedirs has {K - n_shape} after the shape ones)", 0, K - n_shape)
    pd = _model_array(path, d, "posedirs", lambda s: s == (V, 3, 36), f"({V},3,36)")
    J = _model_array(path, d, "J_regressor", lambda s: s == (5, V), f"(5,{V})")
    # the root's parent is -1, or 2**32 - 1 as FLAME's own files store it (unsigned); it is not read
    kt = _model_array(path, d, "kintree_table", lambda s: s == (2, 5), "(2,5)", index_below=1 << 32, index_from=-(1 << 32))
    parents = kt[0].copy()
    parents[0] = -1
    for j in range(1, 5):
        _check(path, 0 <= parents[j] < j, f"kintree_table parents of joint {j} among joints 0..{j - 1} (FLAME's tree)",
               f"parent {parents[j]}")
    w = _model_array(path, d, "weights", lambda s: s == (V, 5), f"({V},5)")

    if masks_path is None:
        for cand in ("FLAME_masks.pkl", "head_masks.pkl"):
            if (path.parent / cand).is_file():
                masks_path = path.parent / cand
                break
    masks = {}
    if masks_path is not None:
        masks = load_vertex_masks(masks_path, V)
    name = str(d.get("model_name", "FLAME"))[:200]
    names = d.get("expr_names", [])
    _check(path, isinstance(names, (list, tuple, np.ndarray)), "expr_names as a list of names", type(names).__name__)
    expr_names = [str(x) for x in np.asarray(names, dtype=object).ravel()]
    return FlameModel(v, f, sd, pd, J, parents, w, n_shape, n_expr, masks, name, str(path), expr_names)


def load_vertex_masks(path: os.PathLike | str, n_verts: int) -> dict:
    """Read a FLAME_masks-layout pickle: region name -> vertex ids."""
    path = Path(path)
    d = safe_load_pickle(path)
    out = {}
    for key, ids in d.items():
        if hasattr(ids, "toarray"):
            ids = ids.toarray()
        out[str(key)] = index_array(ids, path, f"vertex ids of '{key}'", 0, n_verts).reshape(-1)
    return out


# ---------------------------------------------------------------------------
# GaussianAvatars' teeth (facts from formats.md §1 and the GaussianAvatars paper's code)
# ---------------------------------------------------------------------------

# Outer lip rings of FLAME's topology, left to right, 15 vertices each.
LIP_OUTSIDE_RING_UPPER = np.array([1713, 1715, 1716, 1735, 1696, 1694, 1657, 3543, 2774, 2811, 2813, 2850, 2833, 2832, 2830])
LIP_OUTSIDE_RING_LOWER = np.array([1576, 1577, 1773, 1774, 1795, 1802, 1865, 3503, 2948, 2905, 2898, 2881, 2880, 2713, 2712])


def _strip(a: int, b: int, pattern: str) -> list:
    """Triangles between two 15-vertex rows starting at ``a`` and ``b``.

    GaussianAvatars splits each quad along one diagonal on the left half and
    the other on the right half (the mirror), in the orders below.
    """
    tris = []
    for j in range(14):
        first = j < 7
        p, q, r, s = a + j, a + j + 1, b + j, b + j + 1  # row a: p q ; row b: r s
        if pattern == "front_upper":  # rows root(a) / edge(b)
            tris += [[p, s, r], [p, q, s]] if first else [[p, q, r], [q, s, r]]
        elif pattern == "back_upper":  # rows root_back(a) / edge_back(b)
            tris += [[p, r, s], [p, s, q]] if first else [[p, r, q], [q, r, s]]
        elif pattern == "bite_upper":  # rows edge_back(a) / edge(b)
            tris += [[p, r, q], [q, r, s]] if first else [[p, r, s], [p, s, q]]
        elif pattern == "front_lower":  # rows edge(a) / root(b)
            tris += [[p, q, r], [q, s, r]] if first else [[p, s, r], [p, q, s]]
        elif pattern == "back_lower":  # rows root_back(a) / edge_back(b)
            tris += [[p, s, r], [p, q, s]] if first else [[p, q, r], [q, s, r]]
        elif pattern == "bite_lower":  # rows edge_back(a) / edge(b)
            tris += [[p, q, r], [q, s, r]] if first else [[p, s, r], [p, q, s]]
    return tris


def teeth_faces() -> np.ndarray:
    """The 168 teeth faces, indices local to the 120 appended teeth vertices.

    Vertex rows (15 each): 0 upper root, 15 lower root, 30 upper edge, 45 lower
    edge, 60 upper root back, 75 upper edge back, 90 lower root back, 105
    lower edge back.
    """
    upper = _strip(0, 30, "front_upper") + _strip(60, 75, "back_upper") + _strip(75, 30, "bite_upper")
    lower = _strip(45, 15, "front_lower") + _strip(90, 105, "back_lower") + _strip(105, 45, "bite_lower")
    return np.asarray(upper + lower, dtype=np.int64)


def add_teeth(model: FlameModel) -> FlameModel:
    """Append GaussianAvatars' teeth to a FLAME-topology model (5023 -> 5143 verts, 9976 -> 10144 faces)."""
    if not model.has_flame_topology:
        raise Edit3DGSError(model.path, f"FLAME's topology ({FLAME_N_VERTS} vertices) to add teeth", f"{model.n_verts} vertices")
    v = model.v_template
    up, lo = v[LIP_OUTSIDE_RING_UPPER], v[LIP_OUTSIDE_RING_LOWER]
    d = float(np.linalg.norm(up - lo, axis=-1).mean())
    mid = (up + lo) / 2
    mid[:, 1] = mid[:, 1].mean()
    mid[:, 2] -= 1.5 * d
    ey = np.array([0.0, d, 0.0], np.float32)
    ez = np.array([0.0, 0.0, d], np.float32)
    upper_edge = mid + 0.1 * ey
    upper_root = upper_edge + 2 * ey
    lower_edge = mid - 0.1 * ey - 0.4 * ez
    lower_root = lower_edge - 2 * ey
    rows = [upper_root, lower_root, upper_edge, lower_edge,
            upper_root - ez, upper_edge - ez, lower_root - ez, lower_edge - ez]
    v_teeth = np.concatenate(rows, 0).astype(np.float32)
    V = model.n_verts
    upper_ids = np.concatenate([np.arange(0, 15), np.arange(30, 45), np.arange(60, 90)])
    lower_ids = np.setdiff1d(np.arange(TEETH_N_VERTS), upper_ids)

    sd_teeth = np.zeros((TEETH_N_VERTS, 3, model.shapedirs.shape[2]), np.float32)
    ns = model.n_shape
    sd_teeth[:, :, :ns] = (model.shapedirs[LIP_OUTSIDE_RING_UPPER, :, :ns] + model.shapedirs[LIP_OUTSIDE_RING_LOWER, :, :ns])[np.arange(TEETH_N_VERTS) % 15] / 2
    w_teeth = np.zeros((TEETH_N_VERTS, 5), np.float32)
    w_teeth[upper_ids, 1] = 1.0  # upper teeth move with the neck (the skull)
    w_teeth[lower_ids, 2] = 1.0  # lower teeth move with the jaw
    masks = dict(model.masks)
    masks["teeth"] = np.arange(V, V + TEETH_N_VERTS)
    return FlameModel(
        v_template=np.concatenate([v, v_teeth]),
        faces=np.concatenate([model.faces, teeth_faces() + V]),
        shapedirs=np.concatenate([model.shapedirs, sd_teeth]),
        posedirs=np.concatenate([model.posedirs, np.zeros((TEETH_N_VERTS, 3, 36), np.float32)]),
        J_regressor=np.concatenate([model.J_regressor, np.zeros((5, TEETH_N_VERTS), np.float32)], 1),
        parents=model.parents,
        weights=np.concatenate([model.weights, w_teeth]),
        n_shape=model.n_shape, n_expr=model.n_expr, masks=masks,
        name=model.name + " + teeth", path=model.path, expr_names=model.expr_names,
    )


# ---------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------

REGION_ALIASES = {"mouth": "lips", "scalp": "hair", "eyeballs": "eyes", "eye": "eyes", "lip": "lips", "ear": "ears", "tooth": "teeth"}
REGION_NAMES = ("hair", "skin", "face", "forehead", "nose", "eyes", "eye_region", "lips", "ears", "neck", "teeth", "boundary")


def canonical_region(name: str) -> str:
    n = name.strip().lower()
    return REGION_ALIASES.get(n, n)


def face_regions(faces: np.ndarray, masks: Mapping[str, np.ndarray], n_verts: int) -> dict:
    """Face-index sets per canonical region; a face is in a region when all 3 vertices are."""
    def faces_of(*keys):
        sel = np.zeros(n_verts, bool)
        for k in keys:
            if k in masks:
                sel[masks[k]] = True
        return np.nonzero(sel[faces].all(1))[0]

    out = {
        "hair": faces_of("scalp"),
        "face": faces_of("face"),
        "forehead": faces_of("forehead"),
        "nose": faces_of("nose"),
        "eyes": faces_of("left_eyeball", "right_eyeball"),
        "eye_region": faces_of("eye_region"),
        "lips": faces_of("lips"),
        "ears": faces_of("left_ear", "right_ear"),
        "neck": faces_of("neck"),
        "teeth": faces_of("teeth"),
        "boundary": faces_of("boundary"),
    }
    not_skin = np.zeros(len(faces), bool)
    for k in ("hair", "eyes", "lips", "teeth"):
        not_skin[out[k]] = True
    out["skin"] = np.nonzero(~not_skin)[0] if masks else np.zeros(0, np.int64)
    return {k: v.astype(np.int64) for k, v in out.items()}


# ---------------------------------------------------------------------------
# The posing layer
# ---------------------------------------------------------------------------


class FlameHead(nn.Module):
    """FLAME (or the built-in head) as a differentiable posing layer.

    ``forward(params)`` returns posed vertices (B,V,3) in metres. ``params``
    holds torch tensors: ``shape`` (S,) or (B,S), ``expr`` (B,E), ``rotation``,
    ``neck_pose``, ``jaw_pose`` (B,3) axis-angle, ``eyes_pose`` (B,6) left then
    right, ``translation`` (B,3), optional ``static_offset`` (1,V,3), added to
    the shaped template before skinning. ``dynamic_offset`` (B,V,3) is accepted
    and not added, as GaussianAvatars' FlameHead does (formats.md §1), so avatars
    pose where GaussianAvatars poses them. Fewer shape/expression components than
    the model's are zero-padded.
    """

    def __init__(self, model: FlameModel, add_teeth_if_flame: bool = True):
        super().__init__()
        if add_teeth_if_flame and model.has_flame_topology:
            model = add_teeth(model)
        self.model = model
        S, E = model.n_shape, model.n_expr
        sd = np.concatenate([model.shapedirs[:, :, :S], model.shapedirs[:, :, S:S + E]], 2)
        self.register_buffer("v_template", torch.from_numpy(model.v_template))
        self.register_buffer("shapedirs", torch.from_numpy(np.ascontiguousarray(sd)))
        self.register_buffer("posedirs", torch.from_numpy(np.ascontiguousarray(model.posedirs.reshape(-1, 36).T)))
        self.register_buffer("J_regressor", torch.from_numpy(model.J_regressor))
        # The kinematic tree as Python ints (the chain loop) and as a buffer (gathers): no host
        # sync or host-to-device copy while posing, so posing can be captured in a CUDA graph.
        self.parents = torch.from_numpy(model.parents)
        self._parent_list = [int(x) for x in model.parents]
        self.register_buffer("parent_index", torch.from_numpy(np.asarray(model.parents[1:], dtype=np.int64)))
        self.register_buffer("lbs_weights", torch.from_numpy(model.weights))
        self.register_buffer("faces", torch.from_numpy(model.faces))
        self.n_shape, self.n_expr = S, E
        self.regions = face_regions(model.faces, model.masks, model.n_verts)

    @property
    def n_verts(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def param_sizes(self) -> dict:
        """What FLAME parameters must fit (``FlameParams.load(path, **head.param_sizes())``)."""
        return {"n_verts": self.n_verts, "n_shape": self.n_shape, "n_expr": self.n_expr}

    def _pad(self, x: torch.Tensor, n: int, what: str) -> torch.Tensor:
        if x.shape[-1] > n:
            extra = x[..., n:]
            if torch.any(extra != 0):  # loaders check this with the file's name; this is the last guard
                raise Edit3DGSError(None, f"{what} with at most {n} components (the head model's), or zeros beyond",
                                    f"{x.shape[-1]} components")
            return x[..., :n]
        if x.shape[-1] < n:
            x = torch.cat([x, x.new_zeros(*x.shape[:-1], n - x.shape[-1])], -1)
        return x

    def lbs(self, betas: torch.Tensor, pose: torch.Tensor, v_template: torch.Tensor):
        """``smplx.lbs.lbs`` (pose as axis-angle), step for step with smplx's own building blocks, except
        the kinematic chain, which walks Python ints and gathers with a device index instead of
        indexing with a CPU tensor (so no host sync or copy: capturable in a CUDA graph). Equal to
        ``smplx.lbs.lbs`` (tests/test_flame.py)."""
        import torch.nn.functional as F
        from smplx.lbs import batch_rodrigues, blend_shapes, transform_mat, vertices2joints

        B = betas.shape[0]
        v_shaped = v_template + blend_shapes(betas, self.shapedirs)
        J = vertices2joints(self.J_regressor, v_shaped)
        ident = torch.eye(3, dtype=betas.dtype, device=betas.device)
        rot_mats = batch_rodrigues(pose.view(-1, 3)).view([B, -1, 3, 3])
        pose_feature = (rot_mats[:, 1:, :, :] - ident).view([B, -1])
        v_posed = torch.matmul(pose_feature, self.posedirs).view(B, -1, 3) + v_shaped
        # smplx.lbs.batch_rigid_transform
        joints = J.unsqueeze(-1)
        rel_joints = joints.clone()
        rel_joints[:, 1:] -= joints[:, self.parent_index]
        nj = joints.shape[1]
        transforms_mat = transform_mat(rot_mats.reshape(-1, 3, 3), rel_joints.reshape(-1, 3, 1)).reshape(-1, nj, 4, 4)
        chain = [transforms_mat[:, 0]]
        for i in range(1, nj):
            chain.append(torch.matmul(chain[self._parent_list[i]], transforms_mat[:, i]))
        transforms = torch.stack(chain, dim=1)
        posed_joints = transforms[:, :, :3, 3]
        joints_h = F.pad(joints, [0, 0, 0, 1])
        A = transforms - F.pad(torch.matmul(transforms, joints_h), [3, 0, 0, 0, 0, 0, 0, 0])
        # skinning
        W = self.lbs_weights.unsqueeze(0).expand([B, -1, -1])
        T = torch.matmul(W, A.view(B, nj, 16)).view(B, -1, 4, 4)
        v_posed_homo = torch.cat([v_posed, torch.ones([B, v_posed.shape[1], 1], dtype=betas.dtype, device=betas.device)], 2)
        verts = torch.matmul(T, v_posed_homo.unsqueeze(-1))[:, :, :3, 0]
        return verts, posed_joints

    def forward(self, params: Mapping[str, torch.Tensor], return_joints: bool = False):
        expr = params["expr"]
        B = expr.shape[0]
        dt = self.v_template.dtype
        shape = params["shape"].to(dt)
        if shape.ndim == 1:
            shape = shape[None].expand(B, -1)
        betas = torch.cat([self._pad(shape, self.n_shape, "shape"), self._pad(expr.to(dt), self.n_expr, "expr")], 1)
        pose = torch.cat([params["rotation"], params["neck_pose"], params["jaw_pose"], params["eyes_pose"]], 1).to(dt)
        v_t = self.v_template[None].expand(B, -1, -1)
        if params.get("static_offset") is not None:
            v_t = v_t + params["static_offset"].to(dt)
        verts, joints = self.lbs(betas, pose, v_t)
        t = params["translation"].to(dt)[:, None, :]
        if return_joints:
            return verts + t, joints + t
        return verts + t


def load_flame_head(path: os.PathLike | str, masks_path=None) -> FlameHead:
    return FlameHead(load_flame_model(path, masks_path))
