"""Image metrics for edits: PSNR (optionally inside a mask) and SSIM.

Images are (B,H,W,3) or (H,W,3) float in [0,1].
"""

from __future__ import annotations

import math

import torch


def _b(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    return x[None] if x.ndim == 3 else x


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB over all pixels, or over pixels weighted by ``mask`` (B,H,W) in [0,1].
    Identical images give ``inf``."""
    a, b = _b(a).clamp(0, 1), _b(b).clamp(0, 1)
    se = ((a - b) ** 2).mean(-1)
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.float32).reshape(se.shape).to(se.device)
        if float(m.sum()) <= 0:
            return float("nan")
        mse = float((se * m).sum() / m.sum())
    else:
        mse = float(se.mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5), or its mean weighted by ``mask`` (B,H,W) in [0,1]
    (the SSIM map is computed over the whole image, then averaged over the masked pixels)."""
    from pytorch_msssim import ssim as _ssim  # maintained SSIM implementation

    a, b = _b(a).clamp(0, 1), _b(b).clamp(0, 1)
    if mask is None:
        return float(_ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), data_range=1.0, size_average=True))
    m = torch.as_tensor(mask, dtype=torch.float32).reshape(a.shape[:3]).to(a.device)
    smap = ssim_map(a, b)
    pad = (m.shape[1] - smap.shape[1]) // 2, (m.shape[2] - smap.shape[2]) // 2
    m = m[:, pad[0]:pad[0] + smap.shape[1], pad[1]:pad[1] + smap.shape[2]]
    if float(m.sum()) <= 0:
        return float("nan")
    return float((smap * m).sum() / m.sum())


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (B,H-window+1,W-window+1), averaged over the colour channels: the same
    statistics as ``ssim`` (Gaussian window, valid convolution, K1 0.01, K2 0.03, data range 1)."""
    import torch.nn.functional as F

    a, b = _b(a).permute(0, 3, 1, 2), _b(b).permute(0, 3, 1, 2)
    x = torch.arange(window, dtype=torch.float32, device=a.device) - window // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    C = a.shape[1]
    gh, gv = g.view(1, 1, 1, -1).repeat(C, 1, 1, 1), g.view(1, 1, -1, 1).repeat(C, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    s_aa, s_bb, s_ab = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return s.mean(1)


def finite(x: float) -> float | str:
    """JSON-safe number (inf -> 'inf')."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "nan")


INSIDE = 0.02  # a pixel is "inside" the edited region when at least 2 % of its opacity belongs to it


def region_scores(original: torch.Tensor, edited: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor,
                  inside: float = INSIDE) -> dict:
    """The figures of an edit against its ground truth, over whole images and inside/outside the
    edited region. ``weight`` (B,H,W): each pixel's share of opacity that belongs to the region
    (rendered from the original avatar); inside: ``weight >= inside``, outside: ``weight < inside``."""
    w = torch.as_tensor(weight, dtype=torch.float32)
    ins, out = (w >= inside).float(), (w < inside).float()
    return {
        "psnr_vs_ground_truth": finite(psnr(edited, truth)), "ssim_vs_ground_truth": ssim(edited, truth),
        "psnr_original_vs_ground_truth": finite(psnr(original, truth)),
        "psnr_outside_region": finite(psnr(original, edited, out)),
        "psnr_inside_region_vs_ground_truth": finite(psnr(edited, truth, ins)),
        "ssim_inside_region_vs_ground_truth": finite(ssim(edited, truth, ins)),
        "psnr_inside_region_original_vs_ground_truth": finite(psnr(original, truth, ins)),
        "ssim_inside_region_original_vs_ground_truth": finite(ssim(original, truth, ins)),
    }


def region_colour(images: torch.Tensor, weight: torch.Tensor, inside: float = INSIDE) -> torch.Tensor:
    """(B,3) mean colour of each image's pixels inside the region (``weight >= inside``)."""
    img = _b(images)
    m = (torch.as_tensor(weight, dtype=torch.float32).reshape(img.shape[:3]).to(img.device) >= inside).float()
    return (img * m[..., None]).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)[:, None]
