"""Differentiable tile rasterizer in plain PyTorch (CPU, MPS, or CUDA without gsplat).

Same conventions as gsplat 1.5 ``rasterization(..., packed=False,
rasterize_mode="classic", render_mode="RGB+ED")``:

1. Project (EWA): ``cov3d = R S S^T R^T`` from w-first quaternions, the
   Jacobian of the OpenCV pinhole (principal point from ``K``, the point
   clamped to 1.3x the field of view as gsplat does), ``eps2d`` added to
   the 2D covariance's diagonal, conic = its inverse.
2. Cull: depth outside ``[near, far]``, a singular 2D covariance, opacity
   below 1/255, or a bounding box entirely off-screen. The box is gsplat's
   opacity-aware one: ``ceil(e * sqrt(cov2d_ii))`` per axis with
   ``e = min(3.33, sqrt(2 ln(255 o)))`` -- beyond it alpha < 1/255 anyway.
3. Bin into ``tile_size`` tiles, sort each tile's list front to back.
4. Composite per pixel centre ``(j + 0.5, i + 0.5)``:
   ``alpha = min(0.999, o exp(-q/2))``, skip ``alpha < 1/255``, stop before
   the Gaussian that would bring T to 1e-4 or below, ``rgb += T bg``.

How it is fast on a CPU: within a tile ``q/2 - ln o`` is a quadratic
polynomial of the pixel's tile-local coordinates, so one matrix product
``(pixels, 6) @ (6, gaussians)`` gives the exponent for a whole tile.
Tiles are processed in chunks of similar list length (padded), the
transmittance is a ``cumprod``, and the compositing has a hand-written
backward (no per-element autograd graph). Everything upstream of the
per-tile coefficients (projection, SH) is ordinary autograd, so gradients
reach means, quats, scales, opacities and colours/SH.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cancel import check as check_cancel
from .sh import sh_to_rgb

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
_LOG_ALPHA_MAX = math.log(ALPHA_MAX)
T_MIN = 1e-4
EXTENT_MAX = 3.33
# Exponent given to padded slots of a tile's list: exp(-1e4) == 0.
_PAD_EXPONENT = 1e4
# Upper bound on pixels x (padded) Gaussians evaluated per chunk: on a CPU it
# keeps the working set near the cache (2^19 measured best on 2 cores); on a
# GPU larger chunks mean fewer kernel launches. Memory stays bounded either way.
_CHUNK_ELEMENTS = {"cpu": 1 << 19}
_CHUNK_ELEMENTS_OTHER = 1 << 23
# A chunk holds tiles whose list length is at least this fraction of the
# longest one, which bounds the work wasted on padding.
_CHUNK_FILL = 0.6


@dataclass
class Projection:
    """Per camera and Gaussian screen-space quantities (``C`` cameras, ``N`` Gaussians).

    ``means2d (C,N,2)`` pixels, ``conics (C,N,3)`` inverse 2D covariance
    ``(a, b, c)`` with ``q = a dx^2 + 2 b dx dy + c dy^2``, ``depths (C,N)``
    camera z, ``radii (C,N,2)`` int64 half-extent of the bounding box in
    pixels (0 where culled), ``visible (C,N)`` bool.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    visible: torch.Tensor


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``(N,4)`` w-first quaternions (normalised here) -> ``(N,3,3)`` rotations."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def project(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 100.0,
) -> Projection:
    """EWA projection of world-space Gaussians into each camera, with culling."""
    R = viewmats[:, :3, :3]  # (C,3,3)
    t = viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # (C,N,3)
    x, y, z = means_c.unbind(-1)

    in_range = (z >= near) & (z <= far) & (z > 0)
    # Culled entries get a harmless depth so no inf/NaN reaches the backward.
    z = torch.where(in_range, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    u = fx * x / z + cx
    v = fy * y / z + cy
    # gsplat clamps the point used by the Jacobian to 1.3x the view frustum.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.maximum(torch.minimum(x / z, lim_x_pos), -lim_x_neg)
    ty = z * torch.maximum(torch.minimum(y / z, lim_y_pos), -lim_y_neg)

    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))  # (C,N,2,3)

    # cov2d = J Rc (Rq S)(Rq S)^T Rc^T J^T = A A^T with A = J Rc Rq S.
    M = quat_to_rotmat(quats) * scales[:, None, :]  # (N,3,3)
    A = J @ (R[:, None] @ M[None])  # (C,N,2,3)
    cov_a = (A[..., 0, :] * A[..., 0, :]).sum(-1) + eps2d
    cov_b = (A[..., 0, :] * A[..., 1, :]).sum(-1)
    cov_c = (A[..., 1, :] * A[..., 1, :]).sum(-1) + eps2d
    det = cov_a * cov_c - cov_b * cov_b
    valid = in_range & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cov_c / det, -cov_b / det, cov_a / det], dim=-1)

    with torch.no_grad():
        o = opacities.detach()[None].expand_as(z)
        valid = valid & (o >= ALPHA_MIN)  # not in place: torch.where saved it
        extent = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp(
            max=EXTENT_MAX
        )
        rx = torch.ceil(extent * cov_a.detach().clamp_min(0).sqrt())
        ry = torch.ceil(extent * cov_c.detach().clamp_min(0).sqrt())
        valid &= (rx > 0) | (ry > 0)
        ud, vd = u.detach(), v.detach()
        valid &= (ud + rx > 0) & (ud - rx < width) & (vd + ry > 0) & (vd - ry < height)
        radii = torch.stack([rx, ry], dim=-1).to(torch.int64) * valid[..., None]

    means2d = torch.stack([u, v], dim=-1)
    return Projection(means2d, conics, means_c[..., 2], radii, valid)


def _tile_monomials(tile_size: int, device, dtype) -> torch.Tensor:
    """``(P, 6)`` rows ``[x^2, y^2, xy, x, y, 1]`` of each pixel centre in a tile,
    relative to the tile's centre; pixel ``p = row * tile_size + col``."""
    c = torch.arange(tile_size, device=device, dtype=dtype) + 0.5 - 0.5 * tile_size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    return torch.stack([xx * xx, yy * yy, xx * yy, xx, yy, torch.ones_like(xx)], dim=-1)


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing of a chunk of ``B`` tiles of ``P`` pixels.

    Inputs: ``coef (B,L,6)`` exponent coefficients (``alpha = exp(-mono @ coef)``
    before the clamps), ``feat (B,L,D)`` per-Gaussian features, both sorted
    front to back along L; ``mono (P,6)`` pixel monomials. Output ``(B,D,P)``:
    ``sum_i w_i feat_i`` with ``w_i = alpha_i T_i``.

    Written for a CPU: only cheap elementwise kernels (clamp, threshold,
    sign, mul) -- no boolean masks, which are slow there -- and matrix
    products laid out so that MKL sees long rows.
    """

    @staticmethod
    def forward(ctx, coef, feat, mono):
        # log alpha, clamped to [-30, ln 0.999]: the upper bound is gsplat's
        # alpha <= 0.999, the lower one keeps exp() out of denormals.
        log_alpha = torch.matmul(mono, coef.neg().transpose(1, 2))  # (B,P,L)
        log_alpha.clamp_(-30.0, _LOG_ALPHA_MAX)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if needs_grad:  # 1 where alpha was not clamped at 0.999
            unclamped = torch.sub(_LOG_ALPHA_MAX, log_alpha).mul_(1e30).clamp_(0.0, 1.0)
        alpha = log_alpha.exp_()
        F.threshold(alpha, ALPHA_MIN, 0.0, inplace=True)  # skip alpha < 1/255
        one_minus = torch.sub(1.0, alpha)
        trans = torch.cumprod(one_minus, dim=-1)  # T after each Gaussian
        # keep Gaussian i only while T_i > 1e-4 (stop before the one that would not)
        alpha.mul_(F.threshold(trans, T_MIN, 0.0).sign_())
        ratio = alpha.div_(one_minus)  # alpha / (1 - alpha)
        weights = ratio * trans  # alpha_i T_{i-1}
        out = torch.bmm(feat.transpose(1, 2), weights.transpose(1, 2))  # (B,D,P)
        if needs_grad:
            # the clamp's zero derivative, folded into the two factors backward uses
            weights_u = unclamped * weights
            ratio_u = ratio.mul_(unclamped)
            ctx.save_for_backward(weights, ratio_u, weights_u, feat, mono)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # grad_out (B,D,P). With h_i = w_i (g . f_i) and S_i = sum_{j>i} h_j:
        # dL/d alpha_i = T_{i-1} (g . f_i) - S_i / (1 - alpha_i), and
        # dL/d exponent_i = -alpha_i dL/d alpha_i = ratio_i S_i - h_i (unclamped only).
        check_cancel()  # backward runs in the thread that called it: a refit's backward stops here too
        weights, ratio_u, weights_u, feat, mono = ctx.saved_tensors
        grad_feat = grad_coef = None
        if ctx.needs_input_grad[1]:
            grad_feat = torch.bmm(grad_out, weights).transpose(1, 2)  # (B,L,D)
        if ctx.needs_input_grad[0]:
            gf = torch.bmm(grad_out.transpose(1, 2), feat.transpose(1, 2))  # (B,P,L) g . f_i
            h = weights * gf
            behind = torch.cumsum(h, dim=-1).neg_().add_(h.sum(-1, keepdim=True))
            grad_exp = behind.mul_(ratio_u).sub_(gf.mul_(weights_u))
            grad_coef = torch.matmul(mono.t(), grad_exp).transpose(1, 2)  # (B,L,6)
        return grad_coef, grad_feat, None


@dataclass
class _Bins:
    gaussian: torch.Tensor  # (I,) flat camera*N + gaussian index, sorted by tile then depth
    tile: torch.Tensor  # (I,) flat camera*tiles + tile index
    tile_ids: torch.Tensor  # (T,) non-empty tiles
    starts: torch.Tensor  # (T,) first intersection of each
    counts: torch.Tensor  # (T,) intersections of each


@torch.no_grad()
def _bin(proj: Projection, tile_size: int, tiles_x: int, tiles_y: int) -> _Bins:
    C, N = proj.depths.shape
    device = proj.depths.device
    flat = proj.visible.reshape(-1).nonzero().squeeze(1)
    flat = flat[torch.argsort(proj.depths.reshape(-1)[flat])]  # front to back
    cam = flat // N
    m = proj.means2d.detach().reshape(-1, 2)[flat]
    r = proj.radii.reshape(-1, 2)[flat].to(m.dtype)
    lo = torch.floor((m - r) / tile_size).long()
    hi = torch.ceil((m + r) / tile_size).long()
    x0, x1 = lo[:, 0].clamp(0, tiles_x), hi[:, 0].clamp(0, tiles_x)
    y0, y1 = lo[:, 1].clamp(0, tiles_y), hi[:, 1].clamp(0, tiles_y)
    span_x = x1 - x0
    n_tiles = span_x * (y1 - y0)
    total = int(n_tiles.sum())
    rep = torch.repeat_interleave(torch.arange(flat.numel(), device=device), n_tiles, output_size=total)
    k = torch.arange(total, device=device) - (torch.cumsum(n_tiles, 0) - n_tiles)[rep]
    sx = span_x[rep]
    tile = (cam[rep] * tiles_y + y0[rep] + k // sx) * tiles_x + x0[rep] + k % sx
    tile, order = torch.sort(tile, stable=True)  # stable keeps depth order within a tile
    gaussian = flat[rep[order]]
    # runs of equal tile ids (unique_consecutive without relying on its MPS support)
    first = torch.ones_like(tile, dtype=torch.bool)
    first[1:] = tile[1:] != tile[:-1]
    starts = first.nonzero().squeeze(1)
    tile_ids = tile[starts]
    counts = torch.diff(starts, append=starts.new_full((1,), total))
    return _Bins(gaussian, tile, tile_ids, starts, counts)


def _schedule(counts: list[int], pixels: int, budget: int) -> list[tuple[int, int]]:
    """Split tiles sorted by descending count into ``(begin, end)`` chunks."""
    chunks, i, n = [], 0, len(counts)
    neg = [-c for c in counts]
    while i < n:
        length = counts[i]
        end = min(n, i + max(1, budget // (length * pixels)))
        # stop at the first tile shorter than _CHUNK_FILL * length
        end = min(end, bisect.bisect_right(neg, -math.ceil(_CHUNK_FILL * length), i))
        end = max(end, i + 1)
        chunks.append((i, end))
        i = end
    return chunks


def rasterize_torch(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 100.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render ``C`` cameras; returns ``rgb (C,H,W,3)``, ``alpha (C,H,W,1)``,
    ``depth (C,H,W,1)`` (expected depth, 0 where alpha is 0).

    Inputs as ``edit3dgs.render.rasterize`` (validated there);
    ``backgrounds`` is None or ``(C,3)``.
    """
    C, N = viewmats.shape[0], means.shape[0]
    device, dtype = means.device, means.dtype
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    P = tile_size * tile_size

    proj = project(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near=near, far=far,
    )
    if sh_degree is None:
        rgb_cn = colors[None].expand(C, N, 3)
    else:
        R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
        campos = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # (C,3)
        dirs = means[None] - campos[:, None]
        rgb_cn = sh_to_rgb(sh_degree, colors[None], dirs).expand(C, N, 3)

    bins = _bin(proj, tile_size, tiles_x, tiles_y)
    n_isect = bins.gaussian.numel()
    D = 5  # rgb, depth, 1 (the last one accumulates alpha)
    out_tiles = torch.zeros(C * tiles_y * tiles_x, P, D, device=device, dtype=dtype)
    if n_isect > 0:
        # Exponent coefficients of each (tile, Gaussian) intersection:
        # q/2 - ln o = [x^2, y^2, xy, x, y, 1] . coef, x/y tile-local pixels.
        g = bins.gaussian
        tile_in_cam = bins.tile % (tiles_x * tiles_y)
        centre = torch.stack(
            [(tile_in_cam % tiles_x) * tile_size, (tile_in_cam // tiles_x) * tile_size], dim=-1
        ).to(dtype) + 0.5 * tile_size
        mu = proj.means2d.reshape(-1, 2)[g] - centre
        a, b, c = proj.conics.reshape(-1, 3)[g].unbind(-1)
        mx, my = mu.unbind(-1)
        log_o = torch.log(opacities)[g % N]
        coef = torch.stack(
            [
                0.5 * a,
                0.5 * c,
                b,
                -(a * mx + b * my),
                -(c * my + b * mx),
                0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my - log_o,
            ],
            dim=-1,
        )
        pad = torch.zeros(1, 6, device=device, dtype=dtype)
        pad[0, 5] = _PAD_EXPONENT
        coef = torch.cat([coef, pad])
        feat = torch.cat(
            [rgb_cn, proj.depths[..., None], torch.ones_like(proj.depths[..., None])], dim=-1
        ).reshape(C * N, D)
        feat = torch.cat([feat, torch.zeros(1, D, device=device, dtype=dtype)])
        gaussian_padded = torch.cat([g, g.new_full((1,), C * N)])

        # Chunks of tiles with similar list lengths, padded to the longest.
        order = torch.argsort(bins.counts, descending=True)
        counts_sorted = bins.counts[order]
        budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_OTHER)
        chunks = _schedule(counts_sorted.tolist(), P, budget)
        index_parts, shapes = [], []
        for begin, end in chunks:
            sel = order[begin:end]
            length = int(counts_sorted[begin])
            slot = torch.arange(length, device=device)
            idx = bins.starts[sel, None] + slot
            idx = torch.where(slot < bins.counts[sel, None], idx, n_isect)
            index_parts.append(idx.reshape(-1))
            shapes.append((end - begin, length))
        index = torch.cat(index_parts)
        coef_all = coef[index].split([b * l for b, l in shapes])
        feat_all = feat[gaussian_padded[index]].split([b * l for b, l in shapes])
        mono = _tile_monomials(tile_size, device, dtype)
        outs = []
        for cf, ft, (b, l) in zip(coef_all, feat_all, shapes):
            check_cancel()  # a chunk is a fraction of a second; a whole render can take seconds on a busy CPU
            outs.append(_CompositeTiles.apply(cf.view(b, l, 6), ft.view(b, l, D), mono))
        out_tiles = out_tiles.index_copy(0, bins.tile_ids[order], torch.cat(outs).transpose(1, 2))
    elif torch.is_grad_enabled():
        # Nothing visible: keep the images in the graph (zero gradients), as
        # gsplat does, so that loss.backward() works for an empty view.
        out_tiles = out_tiles + 0.0 * sum(t.sum() for t in (means, quats, scales, opacities, colors))

    image = (
        out_tiles.view(C, tiles_y, tiles_x, tile_size, tile_size, D)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(C, tiles_y * tile_size, tiles_x * tile_size, D)[:, :height, :width]
    )
    alpha = image[..., 4:5]
    rgb = image[..., :3]
    if backgrounds is not None:
        rgb = rgb + (1.0 - alpha) * backgrounds[:, None, None, :]
    depth = image[..., 3:4] / alpha.clamp_min(1e-10)
    return rgb, alpha, depth
