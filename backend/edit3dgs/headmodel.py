"""The built-in head: a procedural head model written in FLAME's pickle layout.

Edit3DGS cannot ship the licence-gated FLAME model, so it generates its own
default head in code. ``build_head_model`` returns a dict with exactly the
keys of a FLAME pickle (plus names and masks); ``write_head_model`` writes it
as ``head_model.pkl`` + ``head_masks.pkl`` so that ``edit3dgs.flame`` loads it
like any FLAME file. In the UI it is "the built-in head", never FLAME.

Conventions (FLAME's): metres, y up, the face looks towards +z, +x is the
subject's left. The origin is near the centre of the head; the eyes sit at
y = +0.035, the neck goes down to y = -0.15.

How it is made
--------------
* The skin (skull, face, nose, lips, eyelids, neck) is one grid of
  ``N_COLS`` columns (azimuth) by rows (polar angle) whose vertices are
  found by casting rays from a point inside the head onto a smooth signed
  distance function (``_head_sdf``: ellipsoids, spheres and cones joined
  with smooth unions). Before casting, the rows are pulled apart around the
  eyes (almond-shaped openings whose edges are the eyelids) and pulled
  together at the mouth (a slit whose edges are the lips); the quads inside
  those openings are left out. The lower part of the neck is cast
  horizontally from the neck's axis.
* A mouth bag (rings going back from the lip edges), two teeth arcs, two
  eyeballs (spheres, pupil towards +z) and two ear flaps are separate parts.
* Skinning: 5 joints as FLAME (global, neck, jaw, left eye, right eye;
  parents -1, 0, 1, 1, 1). The head follows the neck joint, the lower neck
  blends into the root, the chin/lower lip/lower teeth/lower half of the
  mouth bag follow the jaw (the slit keeps the upper lip still), eyeballs
  follow their eye joint rigidly.
* ``J_regressor`` rows are sparse vertex weights that reproduce the joint
  positions exactly on the template and move with the vertices they use
  (eyeball centres are their vertices' mean).
* ``shapedirs`` (V,3,400): columns 0..299 identity, 300..399 expression,
  displacement in metres per unit coefficient. Named directions come first
  (``SHAPE_NAMES``, ``EXPR_NAMES``); then ``N_RANDOM_SHAPE`` small smooth
  random identity directions drawn from ``seed``; the rest are zero.
  Eyeballs only ever move rigidly (a field is evaluated at the eye centre).
* ``posedirs`` (V,3,36) are all zero: the model has no pose correctives.

The geometry and every named direction are independent of ``seed``; only
the random identity columns depend on it.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .fsutil import atomic_path

MODEL_NAME = "edit3dgs-builtin-head"
N_SHAPE = 300
N_EXPR = 100
N_RANDOM_SHAPE = 20
KINTREE_ROOT = 4294967295  # FLAME stores the root's parent as uint32 -1

EXPR_NAMES: list[str] = [
    "smile", "mouth_open", "pucker", "lip_funnel",
    "brow_raise", "brow_raise_left", "brow_raise_right", "frown",
    "blink_left", "blink_right", "squint_left", "squint_right",
    "eye_wide_left", "eye_wide_right", "cheek_puff", "smirk_left", "smirk_right",
    "lip_press", "upper_lip_up", "lower_lip_down", "mouth_left", "mouth_right",
    "nose_wrinkle", "jaw_forward", "mouth_frown", "nostril_flare",
]
SHAPE_NAMES: list[str] = [
    "head_width", "head_height", "skull_depth", "face_length", "nose_length",
    "nose_width", "jaw_width", "chin_length", "eye_spacing", "cheek_fullness",
    "brow_height", "ear_size", "lip_fullness", "mouth_width", "neck_width",
]

# ---------------------------------------------------------------------------
# Template landmarks (metres). Left = +x.
# ---------------------------------------------------------------------------
EYE_CENTRE = np.array([0.031, 0.035, 0.070])  # left eye; the right one mirrors x
EYE_RADIUS = 0.0125
LID_RADIUS = EYE_RADIUS + 0.0016  # eyelids wrap the eyeball on this sphere
MOUTH_Y = -0.0375  # the line where the lips meet
MOUTH_HALF_WIDTH = 0.025
JAW_HINGE = np.array([0.0, 0.008, 0.0])  # on the midline, between the two jaw joints
NECK_PIVOT = np.array([0.0, -0.03, -0.025])  # where the skull turns on the neck
ROOT = np.array([0.0, -0.13, -0.026])  # base of the neck
NECK_BOTTOM_Y = -0.15

RAY_ORIGIN = np.array([0.0, 0.0, -0.01])
N_COLS = 76  # columns around the head (denser at the front)
N_NECK_ROWS = 10

PART_HEAD, PART_BAG, PART_TEETH_UP, PART_TEETH_LO, PART_EYE_L, PART_EYE_R, PART_EAR_L, PART_EAR_R = range(8)


# ---------------------------------------------------------------------------
# Signed distance of the neutral head (negative inside)
# ---------------------------------------------------------------------------


def _smin(a, b, k):
    """Polynomial smooth minimum (a smooth union with blend radius k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _ellipsoid(p, c, r):
    """Approximate ellipsoid distance (exact sign), p (...,3)."""
    q = (p - c) / r
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / r, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _sphere(p, c, r):
    return np.linalg.norm(p - c, axis=-1) - r


def _round_cone(p, a, b, ra, rb):
    """Capsule from a to b whose radius goes from ra to rb."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - (ra + (rb - ra) * t)


def _mirror(c):
    return np.array([-c[0], c[1], c[2]])


def _lips_sdf(p):
    """Upper and lower lip bulges; bent back at the sides to follow the teeth."""
    q = p.copy()
    q[..., 2] = q[..., 2] + 12.0 * q[..., 0] ** 2
    up = _ellipsoid(q, np.array([0.0, -0.0318, 0.0855]), np.array([0.023, 0.0066, 0.0088]))
    lo = _ellipsoid(q, np.array([0.0, -0.0438, 0.0835]), np.array([0.021, 0.0072, 0.0092]))
    return np.minimum(up, lo)


def _nose_sdf(p):
    d = _round_cone(p, [0.0, 0.037, 0.077], [0.0, 0.003, 0.098], 0.0065, 0.0095)
    d = _smin(d, _sphere(p, np.array([0.0, -0.004, 0.099]), 0.0105), 0.005)
    for c in (np.array([0.0125, -0.009, 0.088]), np.array([-0.0125, -0.009, 0.088])):
        d = _smin(d, _sphere(p, c, 0.0085), 0.004)
    return d


def _head_sdf(p):
    """Signed distance (metres, approximate away from the surface) of the skin."""
    d = _ellipsoid(p, np.array([0.0, 0.03, -0.012]), np.array([0.076, 0.1, 0.1]))  # cranium
    d = _smin(d, _ellipsoid(p, np.array([0.0, -0.018, 0.018]), np.array([0.056, 0.056, 0.07])), 0.02)  # midface
    d = _smin(d, _ellipsoid(p, np.array([0.0, -0.048, 0.014]), np.array([0.05, 0.032, 0.066])), 0.02)  # jaw
    d = _smin(d, _sphere(p, np.array([0.0, -0.063, 0.0695]), 0.016), 0.012)  # chin
    d = _smin(d, _round_cone(p, [0.0, -0.03, -0.022], [0.0, -0.4, -0.035], 0.05, 0.053), 0.02)  # neck
    d = _smin(d, _ellipsoid(p, np.array([0.0, 0.049, 0.062]), np.array([0.058, 0.013, 0.027])), 0.012)  # brow ridge
    for s in (1.0, -1.0):
        d = _smin(d, _sphere(p, np.array([0.047 * s, 0.016, 0.048]), 0.021), 0.015)  # cheekbone
        d = _smin(d, _sphere(p, np.array([0.038 * s, -0.012, 0.046]), 0.024), 0.015)  # cheek
    for c in (EYE_CENTRE, _mirror(EYE_CENTRE)):
        d = _smax(d, -_sphere(p, c + np.array([0.0, 0.001, 0.016]), 0.0165), 0.006)  # eye socket
        d = _smin(d, _sphere(p, c, LID_RADIUS), 0.004)  # eyelids over the eyeball
    d = _smin(d, _nose_sdf(p), 0.006)
    d = _smin(d, _lips_sdf(p), 0.004)
    return d


def _raycast(origins, dirs, t_max=0.3, step=0.002, sdf=_head_sdf):
    """Outermost crossing of each ray with the surface, searching from t_max inwards.

    origins, dirs (N,3); returns hit points (N,3).
    """
    ts = np.arange(t_max, 0.0, -step)
    pts = origins[:, None, :] + ts[None, :, None] * dirs[:, None, :]
    inside = sdf(pts) < 0.0
    if not inside.any(1).all():
        raise RuntimeError("a ray missed the head surface")
    first = inside.argmax(1)
    t_in = ts[first]
    t_out = t_in + step
    for _ in range(30):
        mid = 0.5 * (t_in + t_out)
        ins = sdf(origins + mid[:, None] * dirs) < 0.0
        t_in = np.where(ins, mid, t_in)
        t_out = np.where(ins, t_out, mid)
    return origins + (0.5 * (t_in + t_out))[:, None] * dirs


def _dir(theta, phi):
    """Unit direction for polar angle theta (from +y) and azimuth phi (from +z towards +x)."""
    st = np.sin(theta)
    return np.stack([st * np.sin(phi), np.cos(theta), st * np.cos(phi)], -1)


def _angles(p):
    q = np.asarray(p, float) - RAY_ORIGIN
    return np.arccos(q[1] / np.linalg.norm(q)), np.arctan2(q[0], q[2])


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------
# The skin grid
# ---------------------------------------------------------------------------


@dataclass
class _Opening:
    """An eye or the mouth: a run of quads left out of one grid row.

    Rows ``row`` (upper edge) and ``row + 1`` (lower edge) are pulled apart
    between vertex columns ``j0..j1`` (the corners).
    """

    row: int
    j0: int
    j1: int
    theta_c: float
    b_up: float
    b_lo: float
    p_up: float
    p_lo: float
    corner_gap: float  # fraction of the row spacing left open at the corners


def _column_angles():
    # phi = pi t - c sin(pi t), c = 0.6: columns are four times denser at the front than at the back.
    t = -1.0 + 2.0 * np.arange(N_COLS) / N_COLS
    return np.pi * t - 0.6 * np.sin(np.pi * t)


def _base_rows(phi):
    """Polar angles (R,C) of the cast rows: a cap, the face band, under the chin."""
    cap = np.deg2rad(np.linspace(7.0, 50.0, 7))
    face = np.deg2rad(np.linspace(50.0, 128.0, 37))[1:]
    # Under the chin the rows reach further down at the front than at the back.
    tmax = np.deg2rad(135.0 + 15.0 * (1.0 + np.cos(phi)) / 2.0)
    chin = np.deg2rad(128.0) + (tmax[None, :] - np.deg2rad(128.0)) * (np.arange(1, 5) / 4.0)[:, None]
    rows = np.concatenate([np.repeat(cap[:, None], N_COLS, 1), np.repeat(face[:, None], N_COLS, 1), chin], 0)
    return rows


def _make_opening(rows, phi, centre, left, right, up, down, p_up, p_lo, corner_gap):
    """Choose the grid row and columns of an opening from 3D landmark points."""
    theta_c, phi_c = _angles(centre)
    col = rows[:, N_COLS // 2]
    row = int(np.searchsorted(col, theta_c) - 1)
    _, phi_lo = _angles(right)
    _, phi_hi = _angles(left)
    cols = np.nonzero((phi >= phi_lo) & (phi <= phi_hi))[0]
    j0, j1 = int(cols.min()), int(cols.max())
    return _Opening(row, j0, j1, theta_c, theta_c - _angles(up)[0], _angles(down)[0] - theta_c, p_up, p_lo, corner_gap)


def _warp_rows(rows, phi, op: _Opening, n_decay=4):
    """Pull rows op.row / op.row+1 to the opening's edges; neighbours follow with decay."""
    rows = rows.copy()
    i_u, i_l = op.row, op.row + 1
    dtheta = rows[i_l] - rows[i_u]
    phi_c = 0.5 * (phi[op.j0] + phi[op.j1])
    half = 0.5 * (phi[op.j1] - phi[op.j0])
    spacing = np.gradient(np.unwrap(phi))
    u = (phi - phi_c) / half
    h = np.clip(1.0 - u * u, 0.0, 1.0)
    out = np.maximum(0.0, (np.abs(phi - phi_c) - half) / spacing)  # columns beyond the corner
    g = _smoothstep(out / 2.0)
    gap = 0.5 * dtheta * (op.corner_gap + (1.0 - op.corner_gap) * g)
    t_u = op.theta_c - op.b_up * h ** op.p_up - gap
    t_l = op.theta_c + op.b_lo * h ** op.p_lo + gap
    win = 1.0 - _smoothstep((out - 2.0) / 3.0)
    s_u, s_l = (t_u - rows[i_u]) * win, (t_l - rows[i_l]) * win
    for m in range(n_decay):
        f = 1.0 - m / n_decay
        rows[i_u - m] += s_u * f
        rows[i_l + m] += s_l * f
    return rows


def _quads_to_tris(a, b, c, d):
    """Two triangles per quad a-b (top, left to right), c-d (bottom); outward for our grid order."""
    return np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)], 0)


@dataclass
class _Geometry:
    v: np.ndarray  # (V,3) float64 template
    f: np.ndarray  # (F,3) int64
    part: np.ndarray  # (V,) part id
    grid: np.ndarray  # (R,C) vertex ids of the skin grid (without the top pole)
    n_head_rows: int
    eyes: list  # [left, right] _Opening
    mouth: _Opening
    bag_side: np.ndarray  # (V,) +1 upper half of the bag / upper teeth, -1 lower, 0 other
    bag_ring: np.ndarray  # (V,) ring number in the bag (0 = lip edge), -1 elsewhere
    eye_centres: np.ndarray  # (2,3) left, right
    ear_root: np.ndarray  # (2,3) left, right
    extra: dict = field(default_factory=dict)


def _eyeball(centre, n_rings=10, n_seg=16):
    """UV sphere with its poles on the z axis (front pole = pupil). Returns v, f."""
    verts = [centre + np.array([0.0, 0.0, EYE_RADIUS])]
    for k in range(1, n_rings):
        a = np.pi * k / n_rings
        ang = 2 * np.pi * np.arange(n_seg) / n_seg
        ring = np.stack([np.sin(a) * np.cos(ang), np.sin(a) * np.sin(ang), np.full(n_seg, np.cos(a))], -1)
        verts.append(centre + EYE_RADIUS * ring)
    verts.append(centre - np.array([0.0, 0.0, EYE_RADIUS]))
    v = np.vstack([np.atleast_2d(x) for x in verts])
    faces = []
    n_last = 1 + (n_rings - 1) * n_seg
    for s in range(n_seg):
        faces.append([0, 1 + s, 1 + (s + 1) % n_seg])
        faces.append([n_last, 1 + (n_rings - 2) * n_seg + (s + 1) % n_seg, 1 + (n_rings - 2) * n_seg + s])
    for k in range(n_rings - 2):
        for s in range(n_seg):
            a, b = 1 + k * n_seg + s, 1 + k * n_seg + (s + 1) % n_seg
            c, d = a + n_seg, b + n_seg
            faces += [[a, c, b], [b, c, d]]
    return v, np.asarray(faces, np.int64)


@functools.lru_cache(maxsize=1)
def _geometry() -> _Geometry:
    """The seed-independent template mesh (cached; callers must not modify it)."""
    phi = _column_angles()
    rows = _base_rows(phi)

    # --- openings: eyes (almond) and mouth (slit) --------------------------
    eyes = []
    for s in (1.0, -1.0):
        c = EYE_CENTRE * np.array([s, 1, 1])

        def on_lid(deg_up, deg_side=0.0):
            a, b = np.deg2rad(deg_up), np.deg2rad(deg_side)
            return c + LID_RADIUS * np.array([np.sin(b) * np.cos(a), np.sin(a), np.cos(b) * np.cos(a)])

        left, right = (on_lid(2.0, 62.0), on_lid(-2.0, -62.0))
        eyes.append(_make_opening(rows, phi, on_lid(3.0), left, right, on_lid(25.0), on_lid(-19.0), 0.6, 1.0, 0.35))
    mouth_c = np.array([0.0, MOUTH_Y, 0.092])
    mouth = _make_opening(rows, phi, mouth_c, mouth_c + [MOUTH_HALF_WIDTH, 0, -0.012], mouth_c + [-MOUTH_HALF_WIDTH, 0, -0.012],
                          mouth_c, mouth_c, 1.0, 1.0, 0.12)
    for op in (*eyes, mouth):
        rows = _warp_rows(rows, phi, op)

    # --- cast the skin -----------------------------------------------------
    R, C = rows.shape
    dirs = _dir(rows, np.broadcast_to(phi, rows.shape)).reshape(-1, 3)
    head = _raycast(np.broadcast_to(RAY_ORIGIN, dirs.shape).copy(), dirs).reshape(R, C, 3)
    top = _raycast(RAY_ORIGIN[None].copy(), np.array([[0.0, 1.0, 0.0]]))
    # Neck: horizontal rays from the neck axis, evenly from under the last head row to the bottom.
    y_last = head[-1, :, 1]
    ks = (np.arange(1, N_NECK_ROWS + 1) / N_NECK_ROWS)[:, None]
    y_neck = y_last[None] + (NECK_BOTTOM_Y - y_last[None]) * ks
    z_axis = -0.022 + (y_neck + 0.03) * (0.013 / 0.37)
    org = np.stack([np.zeros_like(y_neck), y_neck, z_axis], -1).reshape(-1, 3)
    ndir = np.broadcast_to(np.stack([np.sin(phi), np.zeros(C), np.cos(phi)], -1), (N_NECK_ROWS, C, 3)).reshape(-1, 3)
    neck = _raycast(org, ndir.copy(), t_max=0.2).reshape(N_NECK_ROWS, C, 3)
    skin = np.concatenate([head, neck], 0)
    RR = skin.shape[0]

    verts = [top, skin.reshape(-1, 3)]
    grid = 1 + np.arange(RR * C).reshape(RR, C)
    faces = []
    # cap fan (pole = 0); same orientation as the quads below
    j = np.arange(C)
    faces.append(np.stack([np.zeros(C, np.int64), grid[0, j], grid[0, (j + 1) % C]], -1))
    keep = np.ones((RR - 1, C), bool)
    for op in (*eyes, mouth):
        keep[op.row, op.j0:op.j1] = False
    ii, jj = np.nonzero(keep)
    faces.append(_quads_to_tris(grid[ii, jj], grid[ii, (jj + 1) % C], grid[ii + 1, jj], grid[ii + 1, (jj + 1) % C]))
    n = 1 + RR * C
    part = [np.full(n, PART_HEAD)]
    bag_side = [np.zeros(n)]
    bag_ring = [np.full(n, -1)]

    # --- mouth bag: rings going back from the lip edges --------------------
    jm = np.arange(mouth.j0, mouth.j1 + 1)
    loop = np.concatenate([grid[mouth.row, jm], grid[mouth.row + 1, jm[::-1]]])
    side = np.concatenate([np.ones(len(jm)), -np.ones(len(jm))])
    P = np.concatenate(verts, 0)
    edge = P[loop]
    xw = np.abs(edge[:, 0]).max()
    prof = 0.3 + 0.7 * np.sqrt(np.clip(1.0 - (edge[:, 0] / xw) ** 2, 0.0, 1.0))
    y_mid = 0.5 * (P[grid[mouth.row, jm], 1] + P[grid[mouth.row + 1, jm], 1]).mean()
    # (x scale, half opening, depth) of each ring behind the lip edge
    ring_spec = [(1.0, 0.0004, 0.004), (1.04, 0.013, 0.008), (1.08, 0.017, 0.022), (0.85, 0.011, 0.036)]
    prev = loop
    L = len(loop)
    for k, (sx, dy, dz) in enumerate(ring_spec, 1):
        rv = np.stack([edge[:, 0] * sx, y_mid + side * dy * prof, edge[:, 2] - dz], -1)
        ids = n + np.arange(L)
        verts.append(rv)
        n += L
        a, b = prev, np.roll(prev, -1)
        c, d = ids, np.roll(ids, -1)
        faces.append(_quads_to_tris(a, b, c, d))
        part.append(np.full(L, PART_BAG))
        bag_side.append(side)
        bag_ring.append(np.full(L, k))
        prev = ids
    centre = verts[-1].mean(0) - np.array([0.0, 0.0, 0.005])
    verts.append(centre[None])
    faces.append(np.stack([prev, np.roll(prev, -1), np.full(L, n)], -1))
    part.append([PART_BAG])
    bag_side.append([0.0])
    bag_ring.append([len(ring_spec) + 1])
    n += 1

    # --- teeth: two arcs behind the lips -----------------------------------
    z_edge = P[grid[mouth.row, mouth.j0 + (mouth.j1 - mouth.j0) // 2], 2]
    n_tc = 17
    xt = np.linspace(-0.023, 0.023, n_tc)
    for upper in (True, False):
        z0 = z_edge - (0.009 if upper else 0.0155)  # lower teeth behind the upper ones (overbite)
        zf = z0 - 0.028 * (xt / 0.026) ** 2
        nrm = np.stack([2 * 0.028 / 0.026**2 * xt, np.zeros(n_tc), np.ones(n_tc)], -1)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        front = np.stack([xt, np.zeros(n_tc), zf], -1)
        back = front - 0.006 * nrm
        y_edge, y_root = (y_mid - 0.003, y_mid + 0.011) if upper else (y_mid - 0.002, y_mid - 0.012)
        # rows: front-root, front-edge, back-edge, back-root (a closed cross-section)
        rws = [front + [0, y_root, 0], front + [0, y_edge, 0], back + [0, y_edge, 0], back + [0, y_root, 0]]
        tv = np.concatenate(rws, 0)
        ids = n + np.arange(4 * n_tc).reshape(4, n_tc)
        verts.append(tv)
        n += 4 * n_tc
        for r in range(4):
            a, b = ids[r, :-1], ids[r, 1:]
            c, d = ids[(r + 1) % 4, :-1], ids[(r + 1) % 4, 1:]
            tris = _quads_to_tris(a, b, c, d) if upper else _quads_to_tris(b, a, d, c)
            faces.append(tris)
        part.append(np.full(4 * n_tc, PART_TEETH_UP if upper else PART_TEETH_LO))
        bag_side.append(np.full(4 * n_tc, 1.0 if upper else -1.0))
        bag_ring.append(np.full(4 * n_tc, -1))

    # --- eyeballs ------------------------------------------------------------
    eye_centres = np.stack([EYE_CENTRE, _mirror(EYE_CENTRE)])
    for k, c in enumerate(eye_centres):
        ev, ef = _eyeball(c)
        verts.append(ev)
        faces.append(ef + n)
        n += len(ev)
        part.append(np.full(len(ev), PART_EYE_L if k == 0 else PART_EYE_R))
        bag_side.append(np.zeros(len(ev)))
        bag_ring.append(np.full(len(ev), -1))

    # --- ears: cupped flaps on the sides, sticking out backwards -----------
    ear_roots = []
    na, nb = 13, 6
    a = np.linspace(0.0, 1.0, na)[:, None]
    b = np.linspace(0.0, 1.0, nb)[None, :]
    for s in (1.0, -1.0):
        y = -0.016 + 0.062 * a  # lobe to top
        z_root = -0.016 - 0.008 * a
        org = np.stack([np.zeros(na), y[:, 0], z_root[:, 0]], -1)
        side_pts = _raycast(org, np.tile([s, 0.0, 0.0], (na, 1)), t_max=0.15)
        root = side_pts - np.array([s * 0.002, 0.0, 0.0])
        width = 0.031 * np.sin(np.pi * np.clip(a, 0.02, 0.98)) ** 0.5 * (0.7 + 0.3 * a)
        # The flap leaves the head steeply (the bowl stands off the skull) and
        # then runs backwards; the rim curls forwards.
        stand_off = 0.013 * np.sin(0.5 * np.pi * b) ** 0.6 * np.sin(np.pi * np.clip(a, 0.08, 0.92)) ** 0.3
        normal = np.array([s * 0.8, 0.0, 0.6])  # facing out and forwards
        cup = -0.0025 * np.sin(np.pi * b) * np.sin(np.pi * a)  # hollow of the ear
        curl = 0.0035 * b**4
        pts = (root[:, None, :] + (b * width)[..., None] * np.array([0.0, 0.0, -1.0])
               + (s * stand_off)[..., None] * np.array([1.0, 0.0, 0.0]) + (cup + curl)[..., None] * normal)
        ids = n + np.arange(na * nb).reshape(na, nb)
        verts.append(pts.reshape(-1, 3))
        n += na * nb
        A, B = np.meshgrid(np.arange(na - 1), np.arange(nb - 1), indexing="ij")
        A, B = A.ravel(), B.ravel()
        q = (ids[A + 1, B], ids[A + 1, B + 1], ids[A, B], ids[A, B + 1])  # top row first
        faces.append(_quads_to_tris(*q) if s > 0 else _quads_to_tris(q[1], q[0], q[3], q[2]))
        part.append(np.full(na * nb, PART_EAR_L if s > 0 else PART_EAR_R))
        bag_side.append(np.zeros(na * nb))
        bag_ring.append(np.full(na * nb, -1))
        ear_roots.append(root.mean(0))

    v = np.concatenate(verts, 0)
    f = np.concatenate(faces, 0).astype(np.int64)
    return _Geometry(
        v=v, f=f, part=np.concatenate(part).astype(np.int64), grid=grid, n_head_rows=R,
        eyes=eyes, mouth=mouth, bag_side=np.concatenate(bag_side), bag_ring=np.concatenate(bag_ring).astype(np.int64),
        eye_centres=eye_centres, ear_root=np.stack(ear_roots),
    )


# ---------------------------------------------------------------------------
# Mesh helpers
# ---------------------------------------------------------------------------


def _adjacency(f, V):
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    A = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(V, V)).tocsr()
    A.data[:] = 1.0
    return A


def _vertex_normals(v, f):
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], n)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _gauss(p, c, s):
    """Anisotropic Gaussian falloff exp(-|(p-c)/s|^2 / 2), p (V,3)."""
    q = (p - np.asarray(c, float)) / np.asarray(s, float)
    return np.exp(-0.5 * (q * q).sum(-1))


def _rot_x_about(p, c, angle):
    """Rotate points p about the x axis through c; positive angle moves +z towards +y (lifts)."""
    q = p - c
    ca, sa = np.cos(angle), np.sin(angle)
    y = q[..., 1] * ca + q[..., 2] * sa
    z = -q[..., 1] * sa + q[..., 2] * ca
    return np.stack([p[..., 0], c[1] + y, c[2] + z], -1)


# ---------------------------------------------------------------------------
# Skinning weights and joint regressor
# ---------------------------------------------------------------------------


def _jaw_weight(g: _Geometry) -> np.ndarray:
    """(V,) share of the jaw in the head's weight: 1 on chin/lower lip, 0 on upper lip.

    Starts from "below the line mouth -> jaw hinge, in front of the hinge", is
    then smoothed over the mesh graph. The mouth slit has no edges across it,
    so the lips stay separated: upper lip 0, lower lip 1.
    """
    v, V = g.v, len(g.v)
    y, z = v[:, 1], v[:, 2]
    z_front, z_hinge = 0.09, JAW_HINGE[2]
    ramp = np.clip((z_front - z) / (z_front - z_hinge), 0.0, 1.0)
    y_line = MOUTH_Y + (JAW_HINGE[1] - MOUTH_Y) * ramp
    w = ((y < y_line) & (z > z_hinge - 0.004) & (y > -0.095) & ~((y < -0.075) & (z < 0.02))).astype(float)
    head = g.part == PART_HEAD
    w[~head] = 0.0
    # Pins: the lips (rows next to the slit), and far-away skin.
    pin = np.zeros(V, bool)
    val = np.zeros(V)
    m = g.mouth
    cols = np.arange(m.j0 - 1, m.j1 + 2)
    for r in range(m.row - 3, m.row + 1):
        pin[g.grid[r, cols]] = True
        val[g.grid[r, cols]] = 0.0
    for r in range(m.row + 1, m.row + 5):
        pin[g.grid[r, cols]] = True
        val[g.grid[r, cols]] = 1.0
    far = head & ((y > JAW_HINGE[1] + 0.03) | (z < z_hinge - 0.03) | (y < -0.115))
    pin |= far
    val[far] = 0.0
    pin |= ~head
    bag = g.part == PART_BAG
    val[bag] = (g.bag_side[bag] < 0) + 0.5 * (g.bag_side[bag] == 0)
    val[g.part == PART_TEETH_LO] = 1.0
    w = np.where(pin, val, w)
    A = _adjacency(g.f, V)
    deg = np.maximum(np.asarray(A.sum(1)).ravel(), 1.0)
    for _ in range(12):
        w = np.where(pin, val, 0.5 * w + 0.5 * (A @ w) / deg)
    return np.clip(w, 0.0, 1.0)


def _skinning_weights(g: _Geometry) -> np.ndarray:
    """(V,5) weights over [global, neck, jaw, eye_l, eye_r]; rows sum to 1."""
    V = len(g.v)
    w = np.zeros((V, 5))
    # Head vs lower neck: the skull turns on the neck joint; the base of the neck stays with the root.
    y = g.v[:, 1]
    head_share = _smoothstep((y - (-0.135)) / 0.06)
    jaw = _jaw_weight(g)
    w[:, 0] = 1.0 - head_share
    w[:, 1] = head_share * (1.0 - jaw)
    w[:, 2] = head_share * jaw
    for part, joint in ((PART_EYE_L, 3), (PART_EYE_R, 4)):
        m = g.part == part
        w[m] = 0.0
        w[m, joint] = 1.0
    for part, joint in ((PART_TEETH_UP, 1), (PART_TEETH_LO, 2), (PART_EAR_L, 1), (PART_EAR_R, 1)):
        m = g.part == part
        w[m] = 0.0
        w[m, joint] = 1.0
    return w / w.sum(1, keepdims=True)


def _affine_weights(P, target):
    """Weights w (n,) with sum 1 and w @ P = target, closest to uniform (least norm)."""
    n = len(P)
    A = np.vstack([P.T, np.ones((1, n))])
    u = np.full(n, 1.0 / n)
    b = np.append(target, 1.0)
    return u + A.T @ np.linalg.solve(A @ A.T, b - A @ u)


def _joint_regressor(g: _Geometry) -> np.ndarray:
    """(5,V) dense regressor; each row uses only vertices that expressions do not move."""
    v, V = g.v, len(g.v)
    J = np.zeros((5, V))
    head = g.part == PART_HEAD
    # root: a slab of the lower neck
    sel = np.nonzero(head & (np.abs(v[:, 1] - ROOT[1]) < 0.008))[0]
    J[0, sel] = _affine_weights(v[sel], ROOT)
    # neck: a slab through the back and sides of the upper neck (no face skin)
    sel = np.nonzero(head & (np.abs(v[:, 1] - NECK_PIVOT[1]) < 0.006) & (v[:, 2] < 0.0))[0]
    J[1, sel] = _affine_weights(v[sel], NECK_PIVOT)
    # jaw: skin just in front of both ears, at the hinge's height
    sel = []
    for s in (1.0, -1.0):
        c = np.array([s * 0.07, JAW_HINGE[1], JAW_HINGE[2]])
        d = np.linalg.norm(v - c, axis=1)
        d[~head] = np.inf
        sel.append(np.argsort(d)[:8])
    sel = np.concatenate(sel)
    J[2, sel] = _affine_weights(v[sel], JAW_HINGE)
    for k, part in enumerate((PART_EYE_L, PART_EYE_R)):
        sel = np.nonzero(g.part == part)[0]
        J[3 + k, sel] = 1.0 / len(sel)
    return J


# ---------------------------------------------------------------------------
# Expression directions
# ---------------------------------------------------------------------------


def _lid_field(g: _Geometry, k: int, up_rot, lo_rot, n_fall=4) -> np.ndarray:
    """Eyelid motion of eye k (0 left, 1 right) as rotation about the eye centre's x axis.

    ``up_rot``/``lo_rot`` (per hole column, radians, positive lifts) rotate the
    upper/lower lid edge; the rows behind the edge follow with linear falloff
    over ``n_fall`` rows. Rotation keeps the lids on their sphere around the
    eyeball. Returns the displacement (V,3) (the chord of the rotation).
    """
    op, c = g.eyes[k], g.eye_centres[k]
    d = np.zeros_like(g.v)
    cols = np.arange(op.j0, op.j1 + 1)
    for m in range(n_fall):
        s = 1.0 - m / n_fall
        for row, rot in ((op.row - m, up_rot), (op.row + 1 + m, lo_rot)):
            ids = g.grid[row, cols]
            p = g.v[ids]
            d[ids] += np.stack([_rot_x_about(p[i], c, s * rot[i]) - p[i] for i in range(len(ids))])
    return d


def _lid_gap(g: _Geometry, k: int) -> np.ndarray:
    """Angle (radians, per hole column) between the upper and lower lid edge seen from the eye centre."""
    op, c = g.eyes[k], g.eye_centres[k]
    cols = np.arange(op.j0, op.j1 + 1)
    up, lo = g.v[g.grid[op.row, cols]] - c, g.v[g.grid[op.row + 1, cols]] - c
    return np.arctan2(up[:, 1], up[:, 2]) - np.arctan2(lo[:, 1], lo[:, 2])


def _expression_dirs(g: _Geometry, jaw: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(V,3,N_EXPR) displacements in metres for expr = +1 (roughly a strong expression)."""
    v = g.v
    V = len(v)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    soft = ((g.part == PART_HEAD) | (g.part == PART_BAG)).astype(float)[:, None]
    m = g.mouth
    corner = {1.0: 0.5 * (v[g.grid[m.row, m.j1]] + v[g.grid[m.row + 1, m.j1]]),
              -1.0: 0.5 * (v[g.grid[m.row, m.j0]] + v[g.grid[m.row + 1, m.j0]])}
    jc = (m.j0 + m.j1) // 2
    mc = 0.5 * (v[g.grid[m.row, jc]] + v[g.grid[m.row + 1, jc]])
    lower, upper = jaw, 1.0 - jaw  # sharp across the lips, which is where they are used
    left = _smoothstep((x + 0.01) / 0.02)  # 1 on the subject's left (+x), 0 on the right
    sides = {1.0: left, -1.0: 1.0 - left}

    def vec(w, d):
        return w[:, None] * np.asarray(d, float)[None, :]

    def corner_pull(s, d, size=(0.016, 0.014, 0.02)):
        return vec(_gauss(v, corner[s], size), [s * d[0], d[1], d[2]])

    def cheek_raise(s, amount):
        return vec(_gauss(v, [s * 0.038, 0.0, 0.07], [0.018, 0.015, 0.02]), [0.0, 0.6 * amount, 0.3 * amount])

    gap = [_lid_gap(g, k) for k in (0, 1)]

    def lids(k, up, lo):
        return _lid_field(g, k, up(gap[k]), lo(gap[k]))

    E = {}
    E["smile"] = sum(corner_pull(s, [0.004, 0.0065, -0.003], (0.011, 0.011, 0.02)) + cheek_raise(s, 0.005) for s in (1.0, -1.0))
    E["smile"] = E["smile"] + lids(0, lambda a: 0 * a, lambda a: 0 * a + 0.08) + lids(1, lambda a: 0 * a, lambda a: 0 * a + 0.08)
    lipzone = _gauss(v, mc, [0.03, 0.016, 0.03])
    E["mouth_open"] = vec(lipzone * upper, [0.0, 0.003, 0.0005]) + vec(lipzone * lower, [0.0, -0.0055, 0.0])
    pk = _gauss(v, mc, [0.022, 0.014, 0.025])
    E["pucker"] = np.stack([-0.3 * x * pk, -0.3 * (y - mc[1]) * pk, 0.008 * pk], -1)
    E["lip_funnel"] = np.stack([-0.2 * x * pk, pk * (0.0025 * upper - 0.0035 * lower), 0.006 * pk], -1)
    brow = _gauss(v, [0.0, 0.055, 0.08], [0.055, 0.03, 0.045]) * _smoothstep((y - 0.042) / 0.012)
    E["brow_raise"] = vec(brow, [0.0, 0.006, 0.0])
    E["brow_raise_left"] = vec(brow * sides[1.0], [0.0, 0.006, 0.0])
    E["brow_raise_right"] = vec(brow * sides[-1.0], [0.0, 0.006, 0.0])
    lid_gate = _smoothstep((y - 0.041) / 0.008)
    E["frown"] = sum(vec(_gauss(v, [s * 0.025, 0.047, 0.085], [0.016, 0.01, 0.02]) * lid_gate, [-s * 0.003, -0.0035, 0.001])
                     for s in (1.0, -1.0)) + vec(_gauss(v, [0.0, 0.042, 0.085], [0.008, 0.008, 0.02]), [0.0, -0.002, 0.0015])
    for k, name in ((0, "left"), (1, "right")):
        # The upper lid edge rotates down onto (slightly past) the lower one, which rises a little.
        E[f"blink_{name}"] = lids(k, lambda a: -0.92 * a - 0.03, lambda a: 0.08 * a)
        E[f"squint_{name}"] = lids(k, lambda a: -0.25 * a, lambda a: 0.3 * a) + cheek_raise(1.0 - 2 * k, 0.004)
        E[f"eye_wide_{name}"] = lids(k, lambda a: 0 * a + 0.22, lambda a: 0 * a - 0.06)
    E["cheek_puff"] = sum(_gauss(v, [s * 0.045, -0.03, 0.055], [0.018, 0.018, 0.025])[:, None] * 0.008 * normals
                          for s in (1.0, -1.0))
    for s, name in ((1.0, "left"), (-1.0, "right")):
        E[f"smirk_{name}"] = corner_pull(s, [0.003, 0.006, -0.003]) + cheek_raise(s, 0.003)
    press = _gauss(v, mc, [0.026, 0.01, 0.02])
    E["lip_press"] = vec(press * upper, [0.0, -0.0005, -0.0025]) + vec(press * lower, [0.0, 0.0005, -0.0025])
    E["upper_lip_up"] = vec(_gauss(v, mc + [0, 0.006, 0], [0.02, 0.008, 0.02]) * upper, [0.0, 0.004, 0.001])
    E["lower_lip_down"] = vec(_gauss(v, mc + [0, -0.006, 0], [0.02, 0.009, 0.02]) * lower, [0.0, -0.004, 0.0015])
    shift = _gauss(v, mc, [0.03, 0.02, 0.03])
    E["mouth_left"] = vec(shift, [0.006, 0.0, 0.0])
    E["mouth_right"] = vec(shift, [-0.006, 0.0, 0.0])
    E["nose_wrinkle"] = (sum(vec(_gauss(v, [s * 0.012, 0.005, 0.09], [0.008, 0.01, 0.015]), [0.0, 0.003, 0.0005]) for s in (1.0, -1.0))
                         + vec(_gauss(v, [0.0, 0.042, 0.085], [0.008, 0.008, 0.02]), [0.0, -0.002, 0.0])
                         + vec(_gauss(v, mc + [0, 0.008, 0], [0.015, 0.006, 0.02]) * upper, [0.0, 0.0015, 0.0]))
    E["mouth_frown"] = sum(corner_pull(s, [0.0, -0.004, -0.001]) for s in (1.0, -1.0))
    E["nostril_flare"] = sum(vec(_gauss(v, [s * 0.0135, -0.009, 0.09], [0.006, 0.006, 0.008]), [s * 0.0025, 0.0, 0.0])
                             for s in (1.0, -1.0))
    out = np.zeros((V, 3, N_EXPR))
    for i, name in enumerate(EXPR_NAMES):
        if name == "jaw_forward":
            continue
        out[:, :, i] = E[name] * soft
    # The chin, lower lip and lower teeth slide forward together (weights of the jaw).
    fwd = jaw * _smoothstep((y + 0.12) / 0.04)
    fwd[g.part == PART_TEETH_LO] = 1.0
    fwd[(g.part != PART_HEAD) & (g.part != PART_BAG) & (g.part != PART_TEETH_LO)] = 0.0
    out[:, :, EXPR_NAMES.index("jaw_forward")] = vec(fwd, [0.0, 0.0, 0.005])
    return out


# ---------------------------------------------------------------------------
# Identity directions
# ---------------------------------------------------------------------------


def _softplus(t, k):
    return k * np.logaddexp(0.0, t / k)


def _identity_dirs(g: _Geometry, jaw: np.ndarray, normals: np.ndarray, seed: int) -> np.ndarray:
    """(V,3,N_SHAPE) displacements in metres for shape = +1 (about one standard deviation).

    Fields are evaluated at the vertices and at the two eye centres; eyeballs
    take their centre's value, so they only ever translate.
    """
    V = len(g.v)
    P = np.concatenate([g.v, g.eye_centres], 0)
    N = np.concatenate([normals, np.zeros((2, 3))], 0)
    x, y, z = P.T
    part = np.concatenate([g.part, [PART_EYE_L, PART_EYE_R]])
    head_share = _smoothstep((y - (-0.135)) / 0.06)
    m = g.mouth
    corner = {1.0: 0.5 * (g.v[g.grid[m.row, m.j1]] + g.v[g.grid[m.row + 1, m.j1]]),
              -1.0: 0.5 * (g.v[g.grid[m.row, m.j0]] + g.v[g.grid[m.row + 1, m.j0]])}
    mc = 0.5 * (corner[1.0] + corner[-1.0])
    jaw_e = np.concatenate([jaw, [0.0, 0.0]])

    def vec(w, d):
        return w[:, None] * np.asarray(d, float)[None, :]

    S = {}
    S["head_width"] = vec(0.065 * x, [1.0, 0.0, 0.0])
    S["head_height"] = vec(0.09 * _softplus(y - 0.03, 0.01), [0.0, 1.0, 0.0])
    S["skull_depth"] = vec(-0.09 * _softplus(-z, 0.01) * head_share, [0.0, 0.0, 1.0])
    front = _smoothstep((z + 0.02) / 0.04) * _smoothstep((y + 0.12) / 0.04)
    S["face_length"] = vec(-0.12 * _softplus(-y, 0.005) * front, [0.0, 1.0, 0.0])
    S["nose_length"] = vec(_gauss(P, [0.0, 0.0, 0.1], [0.012, 0.02, 0.015]), [0.0, -0.001, 0.005])
    S["nose_width"] = sum(vec(_gauss(P, [s * 0.012, -0.006, 0.088], [0.008, 0.012, 0.012]), [s * 0.003, 0.0, 0.0]) for s in (1.0, -1.0))
    S["jaw_width"] = vec(0.12 * x * _smoothstep((-0.02 - y) / 0.03) * _smoothstep((y + 0.11) / 0.02) * _smoothstep((z + 0.04) / 0.03),
                         [1.0, 0.0, 0.0])
    S["chin_length"] = vec(_gauss(P, [0.0, -0.07, 0.075], [0.025, 0.015, 0.02]), [0.0, -0.004, 0.002])
    S["eye_spacing"] = sum(vec(_gauss(P, g.eye_centres[k], [0.015, 0.013, 0.02]), [s * 0.0025, 0.0, 0.0])
                           for k, s in ((0, 1.0), (1, -1.0)))
    S["cheek_fullness"] = sum(_gauss(P, [s * 0.045, -0.01, 0.055], [0.02, 0.02, 0.025])[:, None] * 0.005 * N for s in (1.0, -1.0))
    S["brow_height"] = vec(_gauss(P, [0.0, 0.05, 0.085], [0.05, 0.01, 0.02]), [0.0, 0.002, 0.003])
    ear = np.zeros((len(P), 3))
    for part_id, root in ((PART_EAR_L, g.ear_root[0]), (PART_EAR_R, g.ear_root[1])):
        sel = part == part_id
        ear[sel] = 0.2 * (P[sel] - root)
    S["ear_size"] = ear
    lipw = np.exp(-((_lips_sdf(P) / 0.002) ** 2)) * _gauss(P, mc, [0.03, 0.016, 0.03])
    lipw[part != PART_HEAD] = 0.0
    S["lip_fullness"] = lipw[:, None] * 0.002 * N + vec(lipw * (1.0 - jaw_e), [0, 0.0015, 0]) + vec(lipw * jaw_e, [0, -0.0015, 0])
    S["mouth_width"] = sum(vec(_gauss(P, corner[s], [0.012, 0.012, 0.02]), [s * 0.003, 0.0, -0.001]) for s in (1.0, -1.0))
    z_axis = -0.022 + (y + 0.03) * (0.013 / 0.37)
    S["neck_width"] = np.stack([x, np.zeros_like(x), z - z_axis], -1) * (0.08 * _smoothstep((-0.06 - y) / 0.03))[:, None]

    out = np.zeros((len(P), 3, N_SHAPE))
    for i, name in enumerate(SHAPE_NAMES):
        out[:, :, i] = S[name]
    # Smooth random identity directions from the seed: mirrored pairs of
    # Gaussian bumps on the skin with decreasing strength (like a PCA spectrum).
    rng = np.random.default_rng(seed)
    skin = np.nonzero(g.part == PART_HEAD)[0]
    for k in range(N_RANDOM_SHAPE):
        field_ = np.zeros((len(P), 3))
        for _ in range(2):
            c = g.v[rng.choice(skin)]
            sigma = rng.uniform(0.015, 0.035)
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            amp = 0.002 / (1.0 + 0.2 * k)
            for cc, dd in ((c, d), (_mirror(c), d * [-1.0, 1.0, 1.0])):
                field_ += amp * _gauss(P, cc, sigma)[:, None] * dd[None, :]
        out[:, :, len(SHAPE_NAMES) + k] = field_
    # Rigid eyeballs: every vertex of an eyeball takes its centre's displacement.
    out[:V][g.part == PART_EYE_L] = out[V]
    out[:V][g.part == PART_EYE_R] = out[V + 1]
    return out[:V]


# ---------------------------------------------------------------------------
# Regions (FLAME_masks layout) and the model
# ---------------------------------------------------------------------------


def _hairline(phi_abs_deg):
    return np.interp(phi_abs_deg, [0, 40, 70, 95, 115, 140, 180], [0.088, 0.082, 0.065, 0.06, 0.035, -0.02, -0.045])


def _masks(g: _Geometry) -> dict:
    """Region -> int64 vertex ids. A face is in a region when all 3 of its vertices are."""
    v = g.v
    x, y, z = v.T
    head = g.part == PART_HEAD
    phi = np.degrees(np.abs(np.arctan2(x, z + 0.01)))
    scalp = head & (y > _hairline(phi))
    face = head & ~scalp & (phi < 72.0) & (y > -0.082)
    eye_l = head & (((x - EYE_CENTRE[0]) / 0.024) ** 2 + ((y - EYE_CENTRE[1]) / 0.017) ** 2 < 1) & (z > 0.04)
    eye_r = head & (((x + EYE_CENTRE[0]) / 0.024) ** 2 + ((y - EYE_CENTRE[1]) / 0.017) ** 2 < 1) & (z > 0.04)
    m = g.mouth
    cols = np.zeros(len(v), bool)
    cols[g.grid[:, m.j0 - 2:m.j1 + 3].ravel()] = True
    lips = (head & cols & (_lips_sdf(v) < 0.0008)) | (g.part == PART_BAG)
    nose = head & (_nose_sdf(v) < 0.002)
    forehead = face & (y > 0.052) & (np.abs(x) < 0.065)
    neck = head & ~face & ~scalp & ((y < -0.06) | ((phi > 110.0) & (y < 0.0)))
    boundary = np.zeros(len(v), bool)
    boundary[g.grid[-2:].ravel()] = True
    sel = {
        "face": face, "neck": neck, "scalp": scalp, "boundary": boundary,
        "right_eyeball": g.part == PART_EYE_R, "left_eyeball": g.part == PART_EYE_L,
        "right_ear": g.part == PART_EAR_R, "left_ear": g.part == PART_EAR_L,
        "forehead": forehead, "eye_region": eye_l | eye_r, "nose": nose, "lips": lips,
        "right_eye_region": eye_r, "left_eye_region": eye_l,
        "teeth": (g.part == PART_TEETH_UP) | (g.part == PART_TEETH_LO),
    }
    return {k: np.nonzero(s)[0].astype(np.int64) for k, s in sel.items()}


def build_head_model(seed: int = 0) -> dict:
    """The built-in head as a dict in FLAME's pickle layout (float32 arrays, metres).

    Keys: v_template (V,3), f (F,3) int64, shapedirs (V,3,400) [identity
    0..299, expression 300..399], posedirs (V,3,36) (zeros), J_regressor
    (5,V) dense, kintree_table (2,5), weights (V,5); plus expr_names (100),
    shape_names (300), model_name, seed and masks (region -> vertex ids).
    Only the random identity columns depend on ``seed``.
    """
    g = _geometry()
    V = len(g.v)
    normals = _vertex_normals(g.v, g.f)
    weights = _skinning_weights(g)
    jaw = _jaw_weight(g)
    shapedirs = np.concatenate([_identity_dirs(g, jaw, normals, int(seed)), _expression_dirs(g, jaw, normals)], 2)
    expr_names = list(EXPR_NAMES) + [f"expr_pad_{i:02d}" for i in range(len(EXPR_NAMES), N_EXPR)]
    shape_names = (list(SHAPE_NAMES) + [f"shape_random_{i:02d}" for i in range(N_RANDOM_SHAPE)]
                   + [f"shape_pad_{i:03d}" for i in range(len(SHAPE_NAMES) + N_RANDOM_SHAPE, N_SHAPE)])
    return {
        "v_template": g.v.astype(np.float32),
        "f": g.f.astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": np.zeros((V, 3, 36), np.float32),
        "J_regressor": _joint_regressor(g).astype(np.float32),
        "kintree_table": np.array([[KINTREE_ROOT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        "weights": weights.astype(np.float32),
        "expr_names": expr_names,
        "shape_names": shape_names,
        "model_name": MODEL_NAME,
        "seed": int(seed),
        "masks": _masks(g),
    }


def write_head_model(out_dir, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out_dir/head_model.pkl`` and ``out_dir/head_masks.pkl``; return both paths.

    The model pickle is a plain dict of numpy arrays (J_regressor as a
    scipy.sparse.csc_matrix, as in FLAME files), lists, str and int; the
    masks pickle a dict of int64 arrays. Both are written atomically.
    """
    out_dir = Path(out_dir)
    model = build_head_model(seed)
    masks = model.pop("masks")
    model["J_regressor"] = sp.csc_matrix(model["J_regressor"])
    model["n_shape"] = N_SHAPE
    model["n_expr"] = N_EXPR
    pkl, masks_pkl = out_dir / "head_model.pkl", out_dir / "head_masks.pkl"
    with atomic_path(pkl) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(model, fh, protocol=4)
    with atomic_path(masks_pkl) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(masks, fh, protocol=4)
    return pkl, masks_pkl
