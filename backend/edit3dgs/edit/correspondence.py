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


def epipolar_distance(cam_q: Camera, cam_k: Camera, h: int, w: int, device=None) -> torch.Tensor:
    """(Nq, Nk) distance, in tokens of the (h, w) grid, from each key token centre to the
    epipolar line of each query token centre."""
    # float32 is plenty here (pixel coordinates ~1e3) and much faster than float64 on GPUs.
    Fm = torch.as_tensor(fundamental_matrix(cam_q, cam_k), dtype=torch.float32, device=device)
    xq = token_centres(h, w, cam_q.width, cam_q.height, device).float()
    lines = xq @ Fm.T                                                # (Nq, 3) lines in key pixels
    # Express lines in key-token units so the distance is measured in tokens.
    s = torch.tensor([cam_k.width / w, cam_k.height / h, 1.0], dtype=torch.float32, device=device)
    lt = lines * s
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    xk = torch.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5, torch.ones(h * w, dtype=torch.float32, device=device)], -1)
    num = (lt @ xk.T).abs()
    den = lt[:, :2].norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (num / den).float()


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
    n = h * w
    both = (tokens_q >= 0) & (tokens_k >= 0)
    pairs = torch.unique(tokens_q[both] * n + tokens_k[both])
    cand = torch.zeros(n * n, dtype=torch.bool, device=tokens_q.device)
    cand[pairs] = True
    cand = cand.view(n, n)
    if dilate > 0:
        k = 2 * dilate + 1
        cand = F.max_pool2d(cand.view(n, 1, h, w).float(), k, stride=1, padding=dilate).view(n, n) > 0
    return cand


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
