"""Multi-view batch editing inside the UNet's self-attention (DGE-style, formats.md §4).

Installed with ``unet.set_attn_processor`` on every self-attention layer
(``attn1``); cross-attention and feed-forward run unchanged. One
``MultiViewContext`` is shared by all processors of a UNet and says what the
current UNet call is:

- ``mode = "off"``: plain self-attention (per-view editing, and t < 100);
- ``mode = "key"``: the batch holds the key views. With ``extended`` each key
  view's queries attend to the keys/values of all key views of the same
  guidance branch; every layer records its normalised input features and
  output per key view for the next mode;
- ``mode = "inject"``: the batch holds other views. For each token, the best
  matching token (cosine similarity of normalised hidden states, among the
  candidates of ``correspondence``) of the nearest key view(s) is found and
  the key view's recorded output at that token replaces the view's own
  self-attention output (weights blend two key views). Tokens with no
  candidate fall back to the view's own self-attention.

UNet batches are laid out branch-major: index ``branch * n_views + view``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import Camera
from . import correspondence as corr


@dataclass
class View:
    """One view of the edit: its camera and timestep, and (optionally) the avatar's Gaussian
    centres (N,3) at that timestep with the render's depth/alpha (H,W) for the FLAME binding."""

    camera: Camera
    timestep: int
    means: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


class MultiViewContext:
    """State shared by the self-attention processors of one UNet."""

    def __init__(self):
        self.mode = "off"
        self.extended = True
        self.n_branches = 3
        self.batch: list[int] = []            # view ids of the current UNet call, in order
        self.views: list[View] = []
        self.latent_hw: tuple[int, int] = (0, 0)
        self.neighbours: dict[int, list[tuple[int, float]]] = {}
        self.band = 1.0                       # epipolar band half-width, in tokens
        self.depth_tol = 0.01                 # metres, visibility test of the FLAME binding
        self.binding_dilate = 1
        self.slice_size: int | None = None    # attention slicing: batch entries per SDPA call
        self.record_matches = False           # keep (idx, valid) per (layer, view, key) for tests
        self.matches: dict = {}
        self.cache: dict[str, tuple[dict, torch.Tensor, torch.Tensor]] = {}
        self._cand: dict = {}                 # candidate masks, kept for the whole edit (key views recur)
        self._cand_bytes = 0
        self.cand_budget = 2 * 2**30          # bytes of candidate masks kept; beyond that they are recomputed
        self._gtok: dict = {}

    def begin(self, views: list[View], latent_hw: tuple[int, int]) -> None:
        """Start an edit of ``views`` whose latents are ``latent_hw``."""
        self.views, self.latent_hw = list(views), tuple(latent_hw)
        self._gtok.clear()
        self._cand.clear()
        self._cand_bytes = 0
        self.set_keys([], {})

    def set_keys(self, keys: list[int], neighbours: dict[int, list[tuple[int, float]]]) -> None:
        """New key views for this denoising step (recorded outputs and candidate masks are dropped)."""
        self.keys, self.neighbours = list(keys), dict(neighbours)
        self.cache.clear()
        self.matches.clear()

    def end(self) -> None:
        self.mode = "off"
        self.views, self.batch = [], []
        self.set_keys([], {})
        self._gtok.clear()
        self._cand.clear()
        self._cand_bytes = 0

    # -- correspondences ------------------------------------------------------------
    def _tokens(self, i: int, h: int, w: int, device) -> torch.Tensor | None:
        key = (i, h, w)
        if key not in self._gtok:
            v = self.views[i]
            self._gtok[key] = None if v.means is None else corr.gaussian_tokens(
                v.means.to(device), v.camera, h, w, v.depth, v.alpha, self.depth_tol)
        return self._gtok[key]

    def candidates(self, i: int, j: int, h: int, w: int, device) -> torch.Tensor:
        """(Nq, Nk) bool candidates between view i (query) and key view j at grid (h, w)."""
        key = (i, j, h, w)
        if key not in self._cand:
            vi, vj = self.views[i], self.views[j]
            if vi.timestep == vj.timestep:
                c = corr.epipolar_candidates(vi.camera, vj.camera, h, w, self.band, device)
            else:
                ti, tj = self._tokens(i, h, w, device), self._tokens(j, h, w, device)
                if ti is None or tj is None:
                    c = torch.zeros(h * w, h * w, dtype=torch.bool, device=device)
                else:
                    c = corr.binding_candidates(ti, tj, h, w, self.binding_dilate)
            if self._cand_bytes + c.numel() > self.cand_budget:
                return c
            self._cand[key] = c
            self._cand_bytes += c.numel()
        return self._cand[key]


def _sdpa(q, k, v, slice_size: int | None):
    if not slice_size or q.shape[0] <= slice_size:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[s:s + slice_size], k[s:s + slice_size], v[s:s + slice_size])
                      for s in range(0, q.shape[0], slice_size)])


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, attn.heads, c // attn.heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _out(attn, x: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](x))


def plain_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                    slice_size: int | None = None) -> torch.Tensor:
    """Standard (self- or cross-) attention of a diffusers ``Attention`` module."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    ndim = hidden_states.ndim
    if ndim == 4:
        b, c, hh, ww = hidden_states.shape
        hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
    b = hidden_states.shape[0]
    ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, ctx.shape[1], b)
        attention_mask = attention_mask.view(b, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            ctx = hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        ctx = attn.norm_encoder_hidden_states(ctx)
    q, k, v = _heads(attn, attn.to_q(hidden_states)), _heads(attn, attn.to_k(ctx)), _heads(attn, attn.to_v(ctx))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if attention_mask is not None:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
    else:
        o = _sdpa(q, k, v, slice_size)
    out = _out(attn, _merge(o).to(q.dtype))
    if ndim == 4:
        out = out.transpose(-1, -2).reshape(b, c, hh, ww)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class MultiViewAttnProcessor:
    """Self-attention processor for multi-view batch editing; plain attention when the context is off."""

    def __init__(self, ctx: MultiViewContext, name: str):
        self.ctx, self.name = ctx, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        ctx = self.ctx
        simple = (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                  and attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
                  and attn.norm_q is None and attn.norm_k is None)
        if ctx.mode == "off" or not simple:
            return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, ctx.slice_size)
        out = self._key_views(attn, hidden_states) if ctx.mode == "key" else self._other_views(attn, hidden_states)
        return out / attn.rescale_output_factor

    def _key_views(self, attn, hs: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        nb, nk = ctx.n_branches, len(ctx.batch)
        _, n, c = hs.shape
        q, k, v = attn.to_q(hs), attn.to_k(hs), attn.to_v(hs)
        if ctx.extended and nk > 1:
            # One sequence per guidance branch: all key views' tokens attend to all key views' tokens.
            q, k, v = (_heads(attn, x.reshape(nb, nk * n, -1)) for x in (q, k, v))
            o = _merge(_sdpa(q, k, v, ctx.slice_size)).reshape(nb * nk, n, -1)
        else:
            o = _merge(_sdpa(_heads(attn, q), _heads(attn, k), _heads(attn, v), ctx.slice_size))
        out = _out(attn, o.to(hs.dtype))
        pos = {view: p for p, view in enumerate(ctx.batch)}
        ctx.cache[self.name] = (pos, hs.view(nb, nk, n, c), out.view(nb, nk, n, -1))
        return out

    def _other_views(self, attn, hs: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        nb, nv = ctx.n_branches, len(ctx.batch)
        _, n, c = hs.shape
        h, w = corr.token_hw(n, ctx.latent_hw)
        pos, kfeat, kout = ctx.cache[self.name]
        hsv = hs.view(nb, nv, n, c)
        out = torch.empty(nb, nv, n, kout.shape[-1], dtype=kout.dtype, device=hs.device)
        for b, i in enumerate(ctx.batch):
            acc = torch.zeros(nb, n, kout.shape[-1], dtype=torch.float32, device=hs.device)
            wsum = torch.zeros(n, dtype=torch.float32, device=hs.device)
            for j, weight in ctx.neighbours.get(i, []):
                cand = ctx.candidates(i, j, h, w, hs.device)
                idx, valid = corr.match_tokens(hsv[:, b], kfeat[:, pos[j]], cand)
                if ctx.record_matches:
                    ctx.matches[(self.name, i, j)] = (idx, valid)
                got = torch.gather(kout[:, pos[j]], 1, idx[..., None].expand(-1, -1, kout.shape[-1]))
                acc += (weight * valid[None, :, None]) * got.float()
                wsum += weight * valid
            res = (acc / wsum.clamp_min(1e-12)[None, :, None]).to(kout.dtype)
            miss = wsum <= 0
            if miss.any():
                # No correspondence for these tokens: they keep their own self-attention.
                x = hsv[:, b]
                q = _heads(attn, attn.to_q(x[:, miss]))
                k, v = _heads(attn, attn.to_k(x)), _heads(attn, attn.to_v(x))
                res[:, miss] = _out(attn, _merge(_sdpa(q, k, v, ctx.slice_size)).to(x.dtype))
            out[:, b] = res
        return out.view(nb * nv, n, -1)


def install(unet) -> MultiViewContext:
    """Put a ``MultiViewAttnProcessor`` on every self-attention layer of ``unet``; returns their context."""
    existing = getattr(unet, "_edit3dgs_mv_context", None)
    if existing is not None:
        return existing
    ctx = MultiViewContext()
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = MultiViewAttnProcessor(ctx, name) if name.endswith("attn1.processor") else proc
    unet.set_attn_processor(procs)
    unet._edit3dgs_mv_context = ctx
    return ctx
