"""CLIP's image preprocessing in torch, so gradients reach the rendered image.

Matches ``CLIPImageProcessor``: resize the shortest side to the model's size (bicubic,
antialiased), centre-crop a square, normalize by mean/std. The processor itself works on PIL
images and would cut the gradient; tests check the two against each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_shortest_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, H', W'] with min(H', W') == size (bicubic, antialiased)."""
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    # As the processor: the long side is floored, int(size * long / short).
    new_h = size if h <= w else int(size * h / w)
    new_w = size if w <= h else int(size * w / h)
    return F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] from the centre (offsets floored, as the processor does)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> (x - mean) / std per channel."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def clip_preprocess(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """[B, 3, H, W] RGB in 0..1 -> [B, 3, size, size] model input, differentiable."""
    return normalize(center_crop(resize_shortest_side(images, size), size), mean, std)
