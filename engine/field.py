"""The neural style field (METHOD section 4): unit-frame position -> (sRGB color, relief).

Random Fourier features of the position feed an MLP trunk with a color head and a displacement
head. With part prompts the heads give one output per styled part (METHOD section 7: "one head
per part" on a shared trunk); ``compose.py`` blends them with the part weights. The heads' last
layers start at zero, so a new field leaves the mesh unchanged (gray color, zero displacement).
All initialization draws from an explicit generator, so a seed fixes the field exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import FieldSettings

BASE_COLOR = 0.5  # the color head adds tanh(x) / 2 to this gray (T2M)


class FourierFeatures(nn.Module):
    """p -> [p, sin(2 pi p B), cos(2 pi p B)] with a fixed B ~ N(0, sigma^2) of shape [3, M].

    Columns of B are sorted by their norm so that progressive training can open the lowest
    frequencies first with a prefix mask.
    """

    def __init__(self, count: int, sigma: float, generator: torch.Generator):
        super().__init__()
        b = torch.randn(3, count, generator=generator) * sigma
        order = b.norm(dim=0).argsort()
        self.register_buffer("matrix", b[:, order].contiguous())

    @property
    def out_features(self) -> int:
        return 3 + 2 * self.matrix.shape[1]

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """[V, 3] unit frame -> [V, 3 + 2M] features."""
        angles = (2.0 * math.pi) * points @ self.matrix
        return torch.cat((points, torch.sin(angles), torch.cos(angles)), dim=-1)

    def frequency_mask(self, fraction: float) -> torch.Tensor:
        """[3 + 2M] multiplicative mask that keeps the lowest ``fraction`` of the frequencies."""
        count = self.matrix.shape[1]
        open_count = max(1, round(fraction * count)) if fraction < 1.0 else count
        keep = (torch.arange(count, device=self.matrix.device) < open_count).to(self.matrix.dtype)
        return torch.cat((torch.ones(3, device=keep.device, dtype=keep.dtype), keep, keep))


class StyleField(nn.Module):
    """Fourier features -> trunk -> (color head, displacement head)."""

    def __init__(self, settings: FieldSettings, generator: torch.Generator, *, parts: int = 1):
        super().__init__()
        self.settings = settings
        self.parts = parts
        self.encoding = FourierFeatures(settings.fourier_features, settings.sigma, generator)
        width = settings.width
        self.trunk = _mlp(self.encoding.out_features, width, settings.trunk_depth, generator)
        self.color_head = _head(width, settings.head_depth, 3 * parts, generator)
        self.displacement_head = _head(width, settings.head_depth, parts, generator)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """[V, 3] unit frame -> [V, 3 + 2M] features (constant for a mesh: compute once per run)."""
        return self.encoding(points)

    def decode(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [V, D] (optionally masked by a [D] frequency mask) -> per-part outputs.

        Returns:
            colors: [V, P, 3] sRGB in (0, 1), one color per styled part.
            relief: [V, P] in (-1, 1): each part's displacement as a share of its bound at the
                vertex, outward when positive (the composition applies the bounds, ``compose.py``).
        """
        hidden = self.trunk(features if mask is None else features * mask)
        colors = BASE_COLOR + 0.5 * torch.tanh(self.color_head(hidden))
        relief = torch.tanh(self.settings.relief_gain * self.displacement_head(hidden))
        return colors.view(-1, self.parts, 3), relief

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[V, 3] unit frame -> ([V, P, 3] sRGB colors, [V, P] relief in (-1, 1)); see :meth:`decode`."""
        return self.decode(self.encode(points))


def _linear(n_in: int, n_out: int, generator: torch.Generator, *, zero: bool = False) -> nn.Linear:
    """nn.Linear with PyTorch's default uniform init drawn from ``generator`` (or all zeros)."""
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            layer.bias.zero_()
        else:
            bound = 1.0 / math.sqrt(n_in)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _mlp(n_in: int, width: int, depth: int, generator: torch.Generator) -> nn.Sequential:
    """Linear(n_in, width) + ReLU, then ``depth`` x (Linear(width, width) + ReLU)."""
    layers: list[nn.Module] = [_linear(n_in, width, generator), nn.ReLU()]
    for _ in range(depth):
        layers += [_linear(width, width, generator), nn.ReLU()]
    return nn.Sequential(*layers)


def _head(width: int, depth: int, n_out: int, generator: torch.Generator) -> nn.Sequential:
    """``depth`` x (Linear + ReLU), then a zero-initialized Linear(width, n_out)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [_linear(width, width, generator), nn.ReLU()]
    layers.append(_linear(width, n_out, generator, zero=True))
    return nn.Sequential(*layers)
