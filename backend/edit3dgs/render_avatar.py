"""Rendering an avatar: FLAME posing -> binding transform -> rasterize, per timestep and camera."""

from __future__ import annotations

from typing import Sequence

import torch

from .avatar import GaussianAvatar
from .bundle import AvatarBundle
from .cameras import Camera, stack
from .flame_params import FlameParams


def background_tensor(bg, device) -> torch.Tensor:
    if isinstance(bg, str):
        bg = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}[bg]
    return torch.tensor(bg, dtype=torch.float32, device=device)


def render_frames(bundle: AvatarBundle, verts: torch.Tensor, cameras: Sequence[Camera], background=(1.0, 1.0, 1.0),
                  gaussians: GaussianAvatar | None = None, colors: torch.Tensor | None = None):
    """Render posed meshes ``verts`` (T,V,3) from ``cameras``: RenderResult per timestep, batched over cameras.

    ``colors`` (N,3) replaces the Gaussians' SH with flat RGB (used for region masks).
    """
    from .render import rasterize

    g = bundle.gaussians if gaussians is None else gaussians
    dev = g.device
    vm, K, w, h = stack(cameras, dev)
    bg = background_tensor(background, dev)
    for t in range(verts.shape[0]):
        wg = bundle.world(verts[t], g)
        if colors is None:
            yield rasterize(wg.means, wg.quats, wg.scales, wg.opacities, wg.sh, vm, K, w, h,
                            sh_degree=wg.sh_degree, background=bg)
        else:
            yield rasterize(wg.means, wg.quats, wg.scales, wg.opacities, colors, vm, K, w, h, background=bg)


class WorldPoser:
    """FLAME posing + binding transform, for rendering sequences (no gradients).

    Posing (LBS) runs once for a whole batch of timesteps and the binding
    transform places the Gaussians of all of them in one batched pass: on CUDA
    both are launch-bound, so per-timestep calls would cost more than gsplat's
    rasterization of 16 views.
    """

    def __init__(self, bundle: AvatarBundle, gaussians: GaussianAvatar | None = None):
        self.gaussians = bundle.gaussians if gaussians is None else gaussians
        self.device = self.gaussians.device
        self.head = bundle.head.to(self.device)
        self.faces = self.head.faces

    @torch.no_grad()
    def pose(self, params: FlameParams) -> torch.Tensor:
        """Posed vertices (T,V,3) for every timestep of ``params`` in one LBS call."""
        return self.head(params.to_torch(self.device))

    @torch.no_grad()
    def place_sequence(self, verts: torch.Tensor) -> list:
        """World Gaussians for every posed mesh of ``verts`` (T,V,3), in one batched pass
        (a fixed number of kernels, however many timesteps)."""
        import roma

        from .avatar import WorldGaussians, face_frames, quat_wxyz_to_xyzw, quat_xyzw_to_wxyz

        g = self.gaussians
        center, R, k = face_frames(verts, self.faces)
        b = g.binding
        kb = k[:, b]
        means = kb[..., None] * torch.einsum("tnij,nj->tni", R[:, b], g.xyz) + center[:, b]
        scales = torch.exp(g.scaling)[None] * kb[..., None]
        q_local = quat_wxyz_to_xyzw(torch.nn.functional.normalize(g.rotation, dim=-1))
        quats = quat_xyzw_to_wxyz(roma.quat_product(roma.rotmat_to_unitquat(R)[:, b], q_local[None].expand(len(verts), -1, -1)))
        opac = torch.sigmoid(g.opacity[:, 0])
        sh = torch.cat([g.features_dc, g.features_rest], 1)
        return [WorldGaussians(means[t], quats[t], scales[t], opac, sh, g.sh_degree) for t in range(len(verts))]

    def __call__(self, params: FlameParams):
        """World Gaussians for a single-timestep ``params``."""
        return self.place_sequence(self.pose(params))[0]
