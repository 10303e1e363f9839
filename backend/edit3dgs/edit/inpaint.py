"""Expression-preserving inpainting (formats.md §5).

Edits tend to flatten the eyes and mouth, where the expression of each
timestep lives. The original render is encoded to latents; inside dilated
eye/mouth masks (latent resolution) the original latents, noised to the
scheduler's current level, are blended back after every denoising step from
a chosen step onward, so the source expression survives the edit. An
instruction that targets the eyes or the mouth ("green eyes", "red lips")
would be undone by this, so the editor leaves those parts out of the masks
(``ip2p.inpaint_regions_for``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_masks(masks: torch.Tensor, latent_hw: tuple[int, int], dilate: int = 1, threshold: float = 0.5) -> torch.Tensor:
    """Soft image masks (B,H,W) in [0,1] -> binary latent masks (B,1,h,w).

    A latent cell is inside when any of its pixels exceeds ``threshold``; the
    result is then dilated by ``dilate`` cells so the seam falls outside the features.
    """
    m = masks.float()[:, None]
    m = (F.adaptive_max_pool2d(m, tuple(latent_hw)) > threshold).float()
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m


def reinject(latents: torch.Tensor, original: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
             scheduler, t_next, strength: float = 1.0) -> torch.Tensor:
    """Blend the original latents, noised to the level of ``t_next`` (None: the clean end of
    denoising), into ``latents`` inside ``mask`` (B,1,h,w) with weight ``strength``."""
    if t_next is None:
        target = original
    else:
        tt = torch.as_tensor(t_next, device=original.device).long().reshape(1).expand(original.shape[0])
        target = scheduler.add_noise(original, noise, tt)
    m = (mask * strength).to(latents.dtype)
    return latents * (1 - m) + target.to(latents.dtype) * m
