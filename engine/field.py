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
import torch.nn.functional as F
from torch import nn

from .config import FieldSettings
from .devices import autocast_dtype

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
        """Features [V, D] (optionally masked by a [D] frequency mask) -> per-part outputs. Under
        autocast to a lower precision the layers read their parameters cast together, once a call
        (:func:`_parameters_in_autocast_dtype`): the same values as autocast's own casts.

        Returns:
            colors: [V, P, 3] sRGB in (0, 1), one color per styled part.
            relief: [V, P] in (-1, 1): each part's displacement as a share of its bound at the
                vertex, outward when positive (the composition applies the bounds, ``compose.py``).
        """
        inputs = features if mask is None else features * mask
        cast = _parameters_in_autocast_dtype(self, inputs.device)
        hidden = _run(self.trunk, inputs, cast)
        colors = BASE_COLOR + 0.5 * torch.tanh(_run(self.color_head, hidden, cast))
        relief = torch.tanh(self.settings.relief_gain * _run(self.displacement_head, hidden, cast))
        return colors.view(-1, self.parts, 3), relief

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[V, 3] unit frame -> ([V, P, 3] sRGB colors, [V, P] relief in (-1, 1)); see :meth:`decode`."""
        return self.decode(self.encode(points))


def _parameters_in_autocast_dtype(field: nn.Module, device: torch.device) -> dict[torch.Tensor, torch.Tensor] | None:
    """Under autocast to a lower precision on ``device``: each of the field's parameters -> its copy in
    that precision, all cast at once (:class:`_CastTogether`), for :func:`_run` to use; else None.

    Autocast would cast each layer's weight and bias on its own (22 casts for `fast`'s field, and as
    many casts of their gradients back), because the parameters take gradients and autocast casts
    those at every use; on a GPU each is a kernel launch. The values are the same: each parameter
    rounded to the autocast dtype, each gradient brought back to the parameter's dtype."""
    dtype = autocast_dtype(device)
    parameters = list(field.parameters())
    if dtype is None or not parameters or parameters[0].dtype == dtype:
        return None
    return dict(zip(parameters, _CastTogether.apply(dtype, *parameters), strict=True))  # tensors hash by identity


def _run(layers: nn.Sequential, inputs: torch.Tensor, cast: dict[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``layers(inputs)``, each Linear with its weight's and bias's copies in ``cast`` when given."""
    if cast is None:
        return layers(inputs)
    for layer in layers:
        linear = isinstance(layer, nn.Linear)
        inputs = F.linear(inputs, cast[layer.weight], cast[layer.bias]) if linear else layer(inputs)
    return inputs


class _CastTogether(torch.autograd.Function):
    """Tensors of one dtype -> their copies in ``dtype``, with one multi-tensor copy
    (``torch._foreach_copy_``, a single launch on a GPU) forward, and one for the gradients backward."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.source_dtype = tensors[0].dtype
        return _copied(tensors, dtype)

    @staticmethod
    def backward(ctx, *gradients: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, *_copied(gradients, ctx.source_dtype))


def _copied(tensors, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Copies of ``tensors`` in ``dtype``, each laid out as its source (so one multi-tensor copy fills them)."""
    copies = tuple(torch.empty_like(tensor, dtype=dtype) for tensor in tensors)
    torch._foreach_copy_(list(copies), list(tensors))
    return copies


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
