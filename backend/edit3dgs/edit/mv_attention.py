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
  self-attention output (weights blend two key views). As in DGE
  (formats.md §4), the matching is done **once per layer and call, on the
  image-conditioned guidance branch** (branch 1: its features carry the
  conditioning image; the unconditional branch's would match at random), and
  the same indices select the key outputs of all three branches.
  Tokens with no candidate in any key view's band keep the view's own
  self-attention (our choice; DGE instead lifts the band for such tokens and
  matches them against every key token);
- ``mode = "mixed"``: the first ``n_keys`` views of the batch are the key views
  ("key"), the rest other views ("inject"), all in one UNet call (each layer
  handles the key views first, so the others match against this layer's
  key features): as many UNet calls per step as per-view editing.

UNet batches are laid out branch-major: index ``branch * n_views + view``, branches in
diffusers' Instruct-Pix2Pix order [text+image, image only, none].

Speed: everything that depends only on the views (candidate masks, blend
weights, tokens without candidates) is built once per UNet call and attention
resolution (``MultiViewContext.plan``, shared by all layers of that resolution,
batched over the call's views, with one host sync for the camera pairs it has not seen before: which
tokens have candidates is kept per pair on the host); inside a layer the matching
of all views runs as a few batched similarity products, masked fills and
argmaxes (one per neighbour slot, not one per guidance branch), with no host
syncs and no loops over views or tokens. (Testing the epipolar band inside a
compiled matching instead of reading masks was measured slower on an H200,
4.36 against 4.22 s for 16 views, and more memory: benchmarks/results/
episode_nosync_h200.txt.) With ``fused`` (a torch.compile backend: the editor
sets its own when its UNet is compiled) the memory-bound parts around the matching's products run as
torch.compile'd functions, each one or two kernels instead of several passes
over the (Nq, Nk) tensors: the plan's band test (``epipolar_not_candidates``),
and, in one compiled call per layer (``match_and_blend``), the masked argmax
(``masked_argmax``) and the blend of the key outputs (``blend``). Same results up to float rounding (tests/test_ip2p.py,
tests/test_ip2p_gpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Camera
from . import correspondence as corr

MATCH_BRANCH = 1    # the image-conditioned branch of [text+image, image only, none]: DGE matches on it


@dataclass
class View:
    """One view of the edit: its camera and timestep, and (optionally) the avatar's Gaussian
    centres (N,3) at that timestep with the render's depth/alpha (H,W) for the FLAME binding."""

    camera: Camera
    timestep: int
    means: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


@dataclass
class MatchPlan:
    """What the matching of one UNet call at one attention resolution needs, built once and shared
    by all layers of that resolution (``MultiViewContext.plan``). K: neighbour slots per view."""

    nbr_pos: torch.Tensor        # (K, V) long: position of each view's k-th key view in the key batch
    not_cand: torch.Tensor       # (K, V, Nq, Nk) bool: True where a key token is NOT a candidate
    coef: torch.Tensor           # (K, V, Nq) float32: blend weight of each match (0 without candidate)
    valid: torch.Tensor          # (K, V, Nq) bool: query tokens with at least one candidate
    pairs: list                  # [(k, v, view, key view)] of the real neighbour slots
    miss_views: torch.Tensor | None = None   # (Vm,) long: views with tokens that have no candidate at all
    miss_q: torch.Tensor | None = None       # (Vm, M) long: their missing tokens, flat in (Vm*N), padded by repetition
    miss_sel: torch.Tensor | None = None     # (Nmiss,) long: real entries of the flattened (Vm*M) layout
    miss_flat: torch.Tensor | None = None    # (Nmiss,) long: their flat (view * Nq + token) positions


class MultiViewContext:
    """State shared by the self-attention processors of one UNet."""

    def __init__(self):
        self.mode = "off"
        self.extended = True
        self.n_branches = 3
        self.batch: list[int] = []            # view ids of the current UNet call, in order
        self.n_keys = 0                       # mode "mixed": the first n_keys views of the batch are key views
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
        self.match_bytes = 2**28              # bytes of similarity matrices per matching product
        self.cand_bytes = 2**30               # bytes of float32 temporaries per candidate-building product
        self._plans: dict = {}
        self._plan_batch: tuple | None = None
        self._levels: list[tuple[int, int]] = []   # attention resolutions seen in this edit
        self._gtok: dict = {}
        self._valid_host: dict = {}           # _pair_key -> (Nq,) bool on the host: query tokens with candidates
        self.fused: str | None = None         # the matching's tail compiled with this torch.compile backend

    def begin(self, views: list[View], latent_hw: tuple[int, int]) -> None:
        """Start an edit of ``views`` whose latents are ``latent_hw``."""
        self.views, self.latent_hw = list(views), tuple(latent_hw)
        self._gtok.clear()
        self._forget_edit_pairs()
        self._levels = []
        self.set_keys([], {})

    def set_keys(self, keys: list[int], neighbours: dict[int, list[tuple[int, float]]]) -> None:
        """New key views for this denoising step (recorded outputs and match plans are dropped)."""
        self.keys, self.neighbours = list(keys), dict(neighbours)
        self.cache.clear()
        self.matches.clear()
        self._plans.clear()
        self._plan_batch = None

    def end(self) -> None:
        self.mode = "off"
        self.views, self.batch = [], []
        self.set_keys([], {})
        self._gtok.clear()
        self._forget_edit_pairs()

    def _forget_edit_pairs(self) -> None:
        """Drop the kept candidates of pairs across timesteps (they belong to one edit's views), and all of
        them past a bound (a few MB)."""
        if len(self._valid_host) > 4096:
            self._valid_host.clear()
        for key in [key for key in self._valid_host if key[0] == "binding"]:
            del self._valid_host[key]

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
        out = torch.zeros(1, h * w, h * w, dtype=torch.bool, device=device)
        self._fill_candidates(out, [(i, j)], h, w, device)
        return out[0]

    def _fill_candidates(self, out: torch.Tensor, pairs: list[tuple[int, int]], h: int, w: int, device,
                         rows: list[int] | None = None, negate: bool = False) -> None:
        """Write the candidate masks of (query view, key view) ``pairs`` into rows ``rows`` (default: 0..P-1)
        of ``out`` (R, Nq, Nk) bool, or their complements (``negate``: True where a key token is not a
        candidate); rows of pairs without a source are left as they are. Batched: same-timestep pairs by the
        epipolar band, the others by the FLAME binding. Consecutive rows are written in place (no index copy)."""
        n = h * w
        rows = list(range(len(pairs))) if rows is None else list(rows)
        epi, bind = [], []
        for p, (i, j) in enumerate(pairs):
            vi, vj = self.views[i], self.views[j]
            if vi.timestep == vj.timestep:
                epi.append(p)
            else:
                ti, tj = self._tokens(i, h, w, device), self._tokens(j, h, w, device)
                if ti is not None and tj is not None:
                    bind.append((p, ti, tj))

        def write(ps: list[int], mask_of):
            r = [rows[p] for p in ps]
            if r == list(range(r[0], r[0] + len(r))):
                mask_of(out[r[0]:r[0] + len(r)])                   # straight into ``out``
            else:
                tmp = torch.empty((len(r), n, n), dtype=torch.bool, device=out.device)
                mask_of(tmp)
                out[_index(r, device)] = tmp

        step = max(1, self.cand_bytes // (4 * n * n))
        for s in range(0, len(epi), step):
            ps = epi[s:s + step]
            d = corr.epipolar_distances([(self.views[pairs[p][0]].camera, self.views[pairs[p][1]].camera) for p in ps],
                                        h, w, device)
            # (negated after the test, so a NaN distance is never a candidate either way)
            write(ps, lambda dst: torch.le(d, self.band, out=dst).logical_not_() if negate
                  else torch.le(d, self.band, out=dst))
            del d
        step = max(1, self.cand_bytes // (2 * n * n))
        for s in range(0, len(bind), step):
            chunk = bind[s:s + step]
            c = corr.binding_candidates_batched(torch.stack([t for _, t, _ in chunk]), torch.stack([t for _, _, t in chunk]),
                                                h, w, self.binding_dilate)
            write([p for p, _, _ in chunk], lambda dst: torch.logical_not(c, out=dst) if negate else dst.copy_(c))

    def _pair_key(self, i: int, j: int, h: int, w: int) -> tuple:
        """What the candidates of query view i in key view j at grid (h, w) depend on: within a timestep the
        two cameras and the band (the same across edits), across timesteps the two views of this edit."""
        vi, vj = self.views[i], self.views[j]
        if vi.timestep == vj.timestep:
            return ("band", _camera_key(vi.camera), _camera_key(vj.camera), h, w, float(self.band))
        return ("binding", i, j, h, w, float(self.depth_tol), int(self.binding_dilate))

    def plan(self, views: list[int], h: int, w: int, pos: dict[int, int], device) -> MatchPlan:
        """The match plan of other views ``views`` at grid (h, w). Built on first use, for every
        attention resolution seen so far at once, with one host sync when it holds pairs not seen before."""
        batch = tuple(views)
        if batch != self._plan_batch:
            self._plans.clear()
            self._plan_batch = batch
        if (h, w) not in self._levels:
            self._levels.append((h, w))
        if (h, w) not in self._plans:
            todo = [lv for lv in self._levels if lv not in self._plans]
            self._plans.update(self._build_plans(list(views), todo, pos, device))
        return self._plans[(h, w)]

    def _build_plans(self, views: list[int], levels: list[tuple[int, int]], pos: dict[int, int], device) -> dict:
        nv = len(views)
        nbrs = [self.neighbours.get(i, []) for i in views]
        K = max([1] + [len(x) for x in nbrs])
        nbr_pos = [[0] * nv for _ in range(K)]
        weight = [[0.0] * nv for _ in range(K)]
        pairs = []
        for v, (i, lst) in enumerate(zip(views, nbrs)):
            for k, (j, wt) in enumerate(lst):
                nbr_pos[k][v], weight[k][v] = pos[j], float(wt)
                pairs.append((k, v, i, j))
        pairs.sort(key=lambda x: x[0] * nv + x[1])       # row order of the masks: consecutive rows, written in place
        nbr_pos_t = _to_device(nbr_pos, torch.long, device)
        weight_t = _to_device(weight, torch.float32, device)[..., None]
        # Fused: every slot of every view holds a key view of its own timestep (the usual case), so the
        # masks of all pairs are one band test, written in slot-major row order.
        fused = (self.fused and len(pairs) == K * nv
                 and all(self.views[i].timestep == self.views[j].timestep for _, _, i, j in pairs))
        plans = {}
        for h, w in levels:
            n = h * w
            if fused:
                lines = corr.epipolar_lines([(self.views[i].camera, self.views[j].camera) for _, _, i, j in pairs],
                                            h, w, device)
                grid = corr.token_grid(h, w, device)
                band_test = _fused(epipolar_not_candidates, self.fused)
                not_cand, valid = band_test(lines, grid[:, 0], grid[:, 1], float(self.band))
                not_cand, valid = not_cand.view(K, nv, n, n), valid.view(K, nv, n)
            else:
                # True where a key token is NOT a candidate (what the matching masks), built directly; slots
                # without a key view have no candidates at all.
                not_cand = torch.ones(K * nv, n, n, dtype=torch.bool, device=device)
                if pairs:
                    self._fill_candidates(not_cand, [(i, j) for _, _, i, j in pairs], h, w, device,
                                          rows=[k * nv + v for k, v, _, _ in pairs], negate=True)
                not_cand = not_cand.view(K, nv, n, n)
                valid = not_cand.all(-1).logical_not_()                             # (K, V, Nq)
            wv = weight_t * valid
            wsum = wv.sum(0)                                                       # (V, Nq)
            coef = wv / wsum.clamp_min(1e-12)
            plans[(h, w)] = MatchPlan(nbr_pos_t, not_cand, coef, valid, pairs)
        # Which tokens have no candidate in any key view, on the host: from each pair's candidates, read back
        # once per pair (one host sync for all the pairs of this call not seen before) and kept. A sync drains
        # the GPU's queue, so after the first steps of an edit the calls run without any.
        keys = {(h, w, k, v): self._pair_key(i, j, h, w) for h, w in levels for k, v, i, j in pairs}
        new = [(lv_kv, key) for lv_kv, key in keys.items() if key not in self._valid_host]
        if new:
            got = torch.cat([plans[(h, w)].valid[k, v] for (h, w, k, v), _ in new]).cpu()   # the host sync
            off = 0
            for (h, w, _, _), key in new:
                self._valid_host[key] = got[off:off + h * w]
                off += h * w
        for h, w in levels:
            n = h * w
            miss = torch.ones(nv, n, dtype=torch.bool)
            for k, v, _, _ in pairs:
                if weight[k][v] > 0:
                    miss[v] &= ~self._valid_host[keys[(h, w, k, v)]]
            counts = miss.sum(1)
            if not int(counts.sum()):
                continue
            plan = plans[(h, w)]
            mv = torch.nonzero(counts).flatten()
            m = int(counts.max())
            q = torch.zeros(len(mv), m, dtype=torch.long)
            sel, flat = [], []
            for r, v in enumerate(mv.tolist()):
                toks = torch.nonzero(miss[v]).flatten()
                q[r] = r * n + toks[torch.arange(m) % len(toks)]                  # pad by repeating
                sel.append(r * m + torch.arange(len(toks)))
                flat.append(v * n + toks)
            plan.miss_views, plan.miss_q = _to_device(mv, torch.long, device), _to_device(q, torch.long, device)
            plan.miss_sel = _to_device(torch.cat(sel), torch.long, device)
            plan.miss_flat = _to_device(torch.cat(flat), torch.long, device)
        return plans


def _camera_key(cam: Camera) -> tuple:
    return (int(cam.width), int(cam.height), np.asarray(cam.K, dtype=np.float64).tobytes(),
            np.asarray(cam.viewmat, dtype=np.float64).tobytes())


def _to_device(x, dtype, device) -> torch.Tensor:
    """A host list/array/tensor on ``device`` without a host sync (pinned, non-blocking copy)."""
    t = torch.as_tensor(x, dtype=dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _index(ids: list[int], device) -> torch.Tensor:
    return _to_device(ids, torch.long, device)


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
        nb, n = ctx.n_branches, hidden_states.shape[1]
        if ctx.mode == "key":
            out = self._key_views(attn, hidden_states, ctx.batch)
        elif ctx.mode == "inject":
            out = self._other_views(attn, hidden_states, ctx.batch)
        else:                                   # "mixed": key views first, then the others
            nk, nt = ctx.n_keys, len(ctx.batch)
            hsv = hidden_states.view(nb, nt, n, -1)
            ko = self._key_views(attn, hsv[:, :nk].reshape(nb * nk, n, -1), ctx.batch[:nk])
            if nt > nk:
                oo = self._other_views(attn, hsv[:, nk:].reshape(nb * (nt - nk), n, -1), ctx.batch[nk:])
                ko = torch.cat([ko.view(nb, nk, n, -1), oo.view(nb, nt - nk, n, -1)], 1)
            out = ko.reshape(nb * nt, n, -1)
        return out / attn.rescale_output_factor

    def _key_views(self, attn, hs: torch.Tensor, views: list[int]) -> torch.Tensor:
        ctx = self.ctx
        nb, nk = ctx.n_branches, len(views)
        _, n, c = hs.shape
        q, k, v = attn.to_q(hs), attn.to_k(hs), attn.to_v(hs)
        if ctx.extended and nk > 1:
            # One sequence per guidance branch: all key views' tokens attend to all key views' tokens
            # (a single SDPA call over the nb branches).
            q, k, v = (_heads(attn, x.reshape(nb, nk * n, -1)) for x in (q, k, v))
            o = _merge(_sdpa(q, k, v, ctx.slice_size)).reshape(nb * nk, n, -1)
        else:
            o = _merge(_sdpa(_heads(attn, q), _heads(attn, k), _heads(attn, v), ctx.slice_size))
        out = _out(attn, o.to(hs.dtype))
        pos = {view: p for p, view in enumerate(views)}
        # Only the image-conditioned branch's features are kept (the other views match against
        # them, once for all branches), L2-normalised: matching is by cosine similarity.
        ctx.cache[self.name] = (pos, _unit(hs.view(nb, nk, n, c)[_match_branch(nb)]), out.view(nb, nk, n, -1))
        return out

    def _other_views(self, attn, hs: torch.Tensor, views: list[int]) -> torch.Tensor:
        ctx = self.ctx
        nb, nv = ctx.n_branches, len(views)
        _, n, c = hs.shape
        h, w = corr.token_hw(n, ctx.latent_hw)
        pos, kfeat, kout = ctx.cache[self.name]
        nk, co = kout.shape[1], kout.shape[-1]
        plan = ctx.plan(views, h, w, pos, hs.device)
        K = plan.nbr_pos.shape[0]
        # Matching, once for all guidance branches, on the image-conditioned branch (DGE): the argmax
        # over key tokens of the cosine similarity only needs the key features normalised (they
        # are, in the cache); the query's norm does not change the argmax.
        q = hs.view(nb, nv, n, c)[_match_branch(nb)]
        vstep = max(1, ctx.match_bytes // (n * n * hs.element_size()))
        kflat = kout.reshape(nb, nk * n, co)
        if ctx.fused:
            res, idx = _fused(match_and_blend, ctx.fused)(q, kfeat, kflat, plan.nbr_pos, plan.not_cand, plan.coef, vstep)
        else:
            idx = torch.empty(K, nv, n, dtype=torch.long, device=hs.device)
            for k in range(K):
                for s in range(0, nv, vstep):
                    e = min(nv, s + vstep)
                    kf = kfeat.index_select(0, plan.nbr_pos[k, s:e])                 # (v, Nk, C)
                    sim = torch.matmul(q[s:e], kf.transpose(-1, -2))                 # (v, Nq, Nk)
                    sim.masked_fill_(plan.not_cand[k, s:e], float("-inf"))           # same shape: vectorised
                    torch.argmax(sim, -1, out=idx[k, s:e])
                    del sim, kf
            # The key views' outputs at the matches, blended over the neighbour slots.
            flat = (plan.nbr_pos[:, :, None] * n + idx).view(K, nv * n)
            res = None
            for k in range(K):
                got = torch.gather(kflat, 1, flat[k][None, :, None].expand(nb, -1, co))
                got.mul_(plan.coef[k].view(1, nv * n, 1).to(got.dtype))
                res = got if res is None else res.add_(got)
        if plan.miss_views is not None:
            # Tokens without any candidate keep their own self-attention (one batched SDPA call).
            x = hs.view(nb, nv, n, c).index_select(1, plan.miss_views)            # (nb, Vm, N, C)
            vm, m = plan.miss_q.shape
            xq = x.reshape(nb, vm * n, c).index_select(1, plan.miss_q.flatten())
            qm = _heads(attn, attn.to_q(xq).view(nb * vm, m, -1))
            x = x.reshape(nb * vm, n, c)
            o = _out(attn, _merge(_sdpa(qm, _heads(attn, attn.to_k(x)), _heads(attn, attn.to_v(x)), ctx.slice_size)).to(hs.dtype))
            res.index_copy_(1, plan.miss_flat, o.reshape(nb, vm * m, co).index_select(1, plan.miss_sel))
        if ctx.record_matches:
            for k, v, i, j in plan.pairs:
                ctx.matches[(self.name, i, j)] = (idx[k, v], plan.valid[k, v])
        return res.view(nb * nv, n, co)


# -- the fused matching tail (``MultiViewContext.fused``) ----------------------------------------
# Plain functions, written so that inductor makes each a kernel or two; ``_fused`` compiles them once per
# process and backend (shapes that change between calls, such as the number of views, compile once more, as
# dynamic).
_FUSED: dict = {}


def _fused(fn, backend: str):
    key = (fn.__name__, backend)
    if key not in _FUSED:
        _FUSED[key] = torch.compile(fn, backend=backend)
    return _FUSED[key]


def epipolar_not_candidates(lines: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, band: float):
    """The band test of P (query, key) pairs at once, never storing a distance: (P, Nq, Nk) bool, True where
    a key token (centres ``gx``, ``gy`` (Nk,), token units) is NOT within ``band`` tokens of the query token's
    epipolar line (``lines`` (P, Nq, 3), as ``correspondence.epipolar_lines``; a NaN line has no candidate),
    and (P, Nq) bool, the query tokens with at least one candidate."""
    d = (lines[..., 0:1] * gx + lines[..., 1:2] * gy + lines[..., 2:3]).abs()
    cand = d <= band
    return cand.logical_not(), cand.any(-1)


def masked_argmax(q: torch.Tensor, kfeat: torch.Tensor, pos: torch.Tensor, not_cand: torch.Tensor) -> torch.Tensor:
    """(V, Nq) long: per query token of V views (``q`` (V, Nq, C)), the key token of key view ``pos`` (V,)
    (features ``kfeat`` (Nk_views, Nk, C)) with the largest dot product, among those ``not_cand`` (V, Nq, Nk)
    leaves (the mask and the argmax one pass over the similarities)."""
    sim = torch.matmul(q, kfeat.index_select(0, pos).transpose(-1, -2))
    return sim.masked_fill(not_cand, float("-inf")).argmax(-1)


def blend(kflat: torch.Tensor, flat: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """(nb, R, C) = sum over slots k of ``coef[k]`` (K, R) times the rows ``flat[k]`` (K, R) of ``kflat``
    (nb, M, C), accumulated in float32, in ``kflat``'s dtype (one gathering pass)."""
    out = None
    for k in range(flat.shape[0]):
        got = kflat[:, flat[k]].float() * coef[k][None, :, None]
        out = got if out is None else out + got
    return out.to(kflat.dtype)


def match_and_blend(q: torch.Tensor, kfeat: torch.Tensor, kflat: torch.Tensor, nbr_pos: torch.Tensor,
                    not_cand: torch.Tensor, coef: torch.Tensor, vstep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's matching and blend for V views (``q`` (V, Nq, C)) in K neighbour slots (``nbr_pos`` (K, V),
    ``not_cand`` (K, V, Nq, Nk), ``coef`` (K, V, Nq)) against the key views' features ``kfeat`` (Nk_views, Nk, C)
    and outputs ``kflat`` (nb, Nk_views * Nk, Co), ``vstep`` views per similarity product: the blended outputs
    (nb, V * Nq, Co) and the matches (K, V, Nq). One compiled call per layer (few host-side calls)."""
    K, nv, n = not_cand.shape[:3]
    idx = torch.stack([torch.cat([masked_argmax(q[s:s + vstep], kfeat, nbr_pos[k, s:s + vstep], not_cand[k, s:s + vstep])
                                  for s in range(0, nv, vstep)]) for k in range(K)])
    flat = (nbr_pos[:, :, None] * n + idx).view(K, nv * n)
    return blend(kflat, flat, coef.reshape(K, nv * n)), idx


def _match_branch(n_branches: int) -> int:
    return MATCH_BRANCH if n_branches > MATCH_BRANCH else 0


def _unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised along the last dimension (in float32), back in the input's dtype."""
    return F.normalize(x.float(), dim=-1).to(x.dtype)


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
