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


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5)."""
    from pytorch_msssim import ssim as _ssim  # maintained SSIM implementation

    a, b = _b(a).clamp(0, 1), _b(b).clamp(0, 1)
    return float(_ssim(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), data_range=1.0, size_average=True))


def finite(x: float) -> float | str:
    """JSON-safe number (inf -> 'inf')."""
    return x if math.isfinite(x) else ("inf" if x > 0 else "nan")
