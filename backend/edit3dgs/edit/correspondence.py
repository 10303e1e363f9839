"""Token correspondences between views, for multi-view batch editing (formats.md §4).

Two sources, both expressed as a candidate mask ``(Nq, Nk)`` between the
tokens of a query view and those of a key view at one attention resolution
``(h, w)`` (token ``y * w + x`` covers image pixels ``[x W/w, (x+1) W/w)``):

- same timestep: the epipolar band. A token of the query view may only match
  key tokens whose centres lie within ``band`` tokens of its epipolar line in
  the key view, computed from our cameras (K with principal point, OpenCV
  world-to-camera ``viewmat``).
- different timesteps: the FLAME binding. Epipolar lines do not hold once the
  head has moved, but the avatar tells us where each Gaussian is at each
  timestep; a query token may match the key tokens that see the same
  (visible) Gaussians.

``match_tokens`` then picks, per query token, the candidate with the highest
cosine similarity of the normalised hidden states.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Camera


def token_hw(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size (h, w) of an attention layer with ``n_tokens`` tokens in a UNet whose
    latent is ``latent_hw``: each downsampling halves (rounding up) both sides."""
    h, w = latent_hw
    for _ in range(8):
        if h * w == n_tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"no UNet level of a {latent_hw} latent has {n_tokens} tokens")


def token_centres(h: int, w: int, width: int, height: int, device=None) -> torch.Tensor:
    """(h*w, 3) homogeneous image-pixel coordinates of token centres (row-major)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                            torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    u = (xs.reshape(-1) + 0.5) * (width / w)
    v = (ys.reshape(-1) + 0.5) * (height / h)
    return torch.stack([u, v, torch.ones_like(u)], -1)


def fundamental_matrix(cam_q: Camera, cam_k: Camera) -> np.ndarray:
    """F (3,3) with l_k = F x_q: the epipolar line in the key image of query pixel x_q (pixels)."""
    vq, vk = cam_q.viewmat, cam_k.viewmat
    R = vk[:3, :3] @ vq[:3, :3].T                   # query camera -> key camera
    t = vk[:3, 3] - R @ vq[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ R
    return np.linalg.inv(cam_k.K).T @ E @ np.linalg.inv(cam_q.K)


def token_grid(h: int, w: int, device=None) -> torch.Tensor:
    """(h*w, 3) float32 homogeneous token-centre coordinates in token units (row-major)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5, torch.ones(h * w, dtype=torch.float32, device=device)], -1)


def token_fundamental(cam_q: Camera, cam_k: Camera, h: int, w: int) -> np.ndarray:
    """G (3,3) with l = G x: the epipolar line in key-token units of query token centre x (token units)."""
    sq = np.diag([cam_q.width / w, cam_q.height / h, 1.0])
    sk = np.diag([cam_k.width / w, cam_k.height / h, 1.0])
    return sk @ fundamental_matrix(cam_q, cam_k) @ sq


def epipolar_lines(pairs: Sequence[tuple[Camera, Camera]], h: int, w: int, device=None) -> torch.Tensor:
    """(P, Nq, 3) float32 epipolar lines (a, b, c), in key-token units of the (h, w) grid, of each query token
    centre for P (query, key) camera pairs, normalised so that |a x + b y + c| is a point's distance in tokens
    (one host-to-device copy, no host syncs)."""
    # float32 is plenty here (token coordinates ~1e2) and much faster than float64 on GPUs.
    G = torch.as_tensor(np.stack([token_fundamental(q, k, h, w) for q, k in pairs]), dtype=torch.float32)
    if device is not None and torch.device(device).type == "cuda":
        G = G.pin_memory().to(device, non_blocking=True)                # no host sync
    else:
        G = G.to(device)
    lt = torch.matmul(token_grid(h, w, device), G.transpose(1, 2))     # (P, Nq, 3) lines in key tokens
    return lt / lt[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)


def epipolar_distances(pairs: Sequence[tuple[Camera, Camera]], h: int, w: int, device=None) -> torch.Tensor:
    """(P, Nq, Nk) distance, in tokens of the (h, w) grid, from each key token centre to the
    epipolar line of each query token centre, for P (query, key) camera pairs at once
    (one host-to-device copy, no host syncs)."""
    return torch.matmul(epipolar_lines(pairs, h, w, device), token_grid(h, w, device).T).abs_()


def epipolar_distance(cam_q: Camera, cam_k: Camera, h: int, w: int, device=None) -> torch.Tensor:
    """(Nq, Nk) distance, in tokens of the (h, w) grid, from each key token centre to the
    epipolar line of each query token centre."""
    return epipolar_distances([(cam_q, cam_k)], h, w, device)[0]


def epipolar_candidates(cam_q: Camera, cam_k: Camera, h: int, w: int, band: float = 1.0, device=None) -> torch.Tensor:
    """(Nq, Nk) bool: key tokens within ``band`` tokens of each query token's epipolar line."""
    return epipolar_distance(cam_q, cam_k, h, w, device) <= band


def gaussian_tokens(means: torch.Tensor, cam: Camera, h: int, w: int, depth: torch.Tensor | None = None,
                    alpha: torch.Tensor | None = None, depth_tol: float = 0.01) -> torch.Tensor:
    """(N,) long: the (h, w)-grid token each Gaussian centre falls in, -1 where it is outside the
    image, behind the camera, or hidden (its depth differs from the rendered ``depth`` (H,W) by
    more than ``depth_tol`` metres, or the render is transparent there)."""
    dev = means.device
    vm = torch.as_tensor(cam.viewmat, dtype=torch.float32, device=dev)
    pc = means.float() @ vm[:3, :3].T + vm[:3, 3]
    z = pc[:, 2]
    zs = z.clamp_min(1e-6)
    u = pc[:, 0] / zs * cam.fx + cam.cx
    v = pc[:, 1] / zs * cam.fy + cam.cy
    ok = (z > 1e-6) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    if depth is not None:
        H, W = depth.shape[-2:]
        pu = (u * W / cam.width).long().clamp(0, W - 1)
        pv = (v * H / cam.height).long().clamp(0, H - 1)
        d = depth.to(dev)[pv, pu]
        vis = (d > 0) & ((d - z).abs() <= depth_tol)
        if alpha is not None:
            vis &= alpha.to(dev)[pv, pu] > 0.5
        ok &= vis
    tx = (u * w / cam.width).long().clamp(0, w - 1)
    ty = (v * h / cam.height).long().clamp(0, h - 1)
    return torch.where(ok, ty * w + tx, torch.full_like(tx, -1))


def binding_candidates(tokens_q: torch.Tensor, tokens_k: torch.Tensor, h: int, w: int, dilate: int = 1) -> torch.Tensor:
    """(Nq, Nk) bool from per-Gaussian tokens of the same Gaussians in two views (-1: not visible):
    query token p may match key token q when some Gaussian seen at p is seen at q (or within
    ``dilate`` tokens of it)."""
    return binding_candidates_batched(tokens_q[None], tokens_k[None], h, w, dilate)[0]


def dilate_keys(cand: torch.Tensor, h: int, w: int, dilate: int) -> torch.Tensor:
    """(..., Nq, Nk) bool dilated by ``dilate`` tokens over the key grid (h, w) (a square window)."""
    if dilate <= 0:
        return cand
    shape = cand.shape
    c = cand.reshape(-1, h, w)
    out = c.clone()
    for dy in range(-dilate, dilate + 1):
        for dx in range(-dilate, dilate + 1):
            if dy == 0 and dx == 0:
                continue
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[:, yd, xd] |= c[:, ys, xs]
    return out.view(shape)


def binding_candidates_batched(tokens_q: torch.Tensor, tokens_k: torch.Tensor, h: int, w: int, dilate: int = 1,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """``binding_candidates`` for P pairs at once: tokens (P, N) -> (P, Nq, Nk) bool, written into
    ``out`` when given. One scatter, no host syncs."""
    P, n = tokens_q.shape[0], h * w
    both = (tokens_q >= 0) & (tokens_k >= 0)
    base = torch.arange(P, device=tokens_q.device)[:, None] * (n * n)
    flat = torch.where(both, base + tokens_q * n + tokens_k, P * n * n)     # invalid -> one spare slot
    cand = torch.zeros(P * n * n + 1, dtype=torch.bool, device=tokens_q.device)
    cand.index_fill_(0, flat.reshape(-1), True)
    cand = dilate_keys(cand[:P * n * n].view(P, n, n), h, w, dilate)
    if out is None:
        return cand
    out.copy_(cand)
    return out


def match_tokens(feat_q: torch.Tensor, feat_k: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best key token per query token by cosine similarity, among the candidates.

    feat_q (..., Nq, C), feat_k (..., Nk, C), candidates (Nq, Nk) bool.
    Returns idx (..., Nq) long and valid (Nq,) bool (query tokens with at least one candidate).
    """
    # Normalise in float32, multiply in the features' dtype (tensor cores in fp16 on CUDA).
    q = F.normalize(feat_q.float(), dim=-1).to(feat_q.dtype)
    k = F.normalize(feat_k.float(), dim=-1).to(feat_k.dtype)
    sim = q @ k.transpose(-1, -2)
    sim = sim.masked_fill(~candidates, float("-inf"))
    return sim.argmax(-1), candidates.any(-1)
