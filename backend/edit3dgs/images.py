"""Image files: float images in [0, 1] to and from 8-bit PNG (Pillow)."""

from __future__ import annotations

import os

import numpy as np
import torch


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(path: os.PathLike | str, img, alpha=None) -> None:
    """Write an (H,W,3) float image in [0,1] (optionally with (H,W,1) alpha) as PNG (Pillow)."""
    from PIL import Image

    a = to_uint8(img)
    if alpha is not None:
        a = np.concatenate([a, to_uint8(alpha)], -1)
    Image.fromarray(a).save(str(path), format="PNG")  # PNG whatever the name (a temporary's ends in .part)


def load_png(path: os.PathLike | str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
