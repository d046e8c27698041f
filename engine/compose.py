"""Composition (METHOD section 7): keeping each part's style on its part.

The field gives one color and one displacement per styled part; a vertex's result is the blend
``sum_k W_k c_k + (fixed share)``, where the fixed share is what the vertex keeps: its original
color and shape for the *rest* weight, and the earlier result for the weights of *locked* parts.
Vertices with no weight on any styled part therefore keep their color and position exactly.

Relief: the field proposes each part's displacement as a number in [-1, 1]; the composition turns
it into unit-frame lengths with per-vertex, per-part bounds (``engine/relief.py``): positive values
scale the outward bound, negative ones the inward bound. A composition starts without relief
(bounds zero) until :meth:`Composition.with_relief` gives it bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .parts import PartWeights


@dataclass(frozen=True)
class Composition:
    """Blends per-part field outputs into per-vertex results.

    Attributes:
        weights: [V, P] weights of the P parts the field styles.
        fixed_colors: [V, 3] sRGB, the color share that does not change (rest + locked parts).
        fixed_displacement: [V] unit frame, likewise.
        outward, inward: [V, P] unit-frame bounds (>= 0) of each part's displacement at each vertex
            along and against the normal; None: no relief (zeros).
    """

    weights: torch.Tensor
    fixed_colors: torch.Tensor
    fixed_displacement: torch.Tensor
    outward: torch.Tensor | None = None
    inward: torch.Tensor | None = None

    def __post_init__(self):
        for name in ("outward", "inward"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, torch.zeros_like(self.weights))

    @property
    def num_styled(self) -> int:
        return int(self.weights.shape[1])

    @property
    def has_relief(self) -> bool:
        """Whether any part may move any vertex at all."""
        return bool((self.outward > 0).any() or (self.inward > 0).any())

    def with_relief(self, outward, inward) -> Composition:
        """This composition with [V, P] relief bounds (arrays or tensors, unit frame, >= 0)."""
        return replace(self, outward=torch.as_tensor(outward, dtype=torch.float32).to(self.weights.device),
                       inward=torch.as_tensor(inward, dtype=torch.float32).to(self.weights.device))

    def apply(self, part_colors: torch.Tensor, part_relief: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[V, P, 3] colors and [V, P] relief in [-1, 1] -> [V, 3] sRGB colors and [V] unit-frame
        displacement."""
        colors = (self.weights.unsqueeze(-1) * part_colors).sum(1) + self.fixed_colors
        part_displacement = part_relief.clamp(min=0.0) * self.outward + part_relief.clamp(max=0.0) * self.inward
        displacement = (self.weights * part_displacement).sum(1) + self.fixed_displacement
        return colors, displacement

    def rows(self, start: int, end: int) -> Composition:
        """The composition of vertices ``start:end``."""
        return Composition(*(getattr(self, f.name)[start:end] for f in fields(self)))

    def to(self, device) -> Composition:
        return Composition(*(getattr(self, f.name).to(device) for f in fields(self)))


def whole_object(num_vertices: int) -> Composition:
    """Holistic stylization: one styled 'part' with weight 1 everywhere, nothing fixed, no relief
    until :meth:`Composition.with_relief`."""
    return Composition(torch.ones(num_vertices, 1), torch.zeros(num_vertices, 3), torch.zeros(num_vertices))


def compose_parts(
    weights: PartWeights,
    *,
    original_colors: np.ndarray,
    locked: tuple[str, ...] = (),
    previous_colors: np.ndarray | None = None,
    previous_displacement: np.ndarray | None = None,
) -> Composition:
    """The composition for ``weights``' parts, all styled except the ``locked`` ones.

    Args:
        weights: part weights whose names are the prompt's parts, in prompt order.
        original_colors: [V, 3] sRGB colors the rest keeps.
        locked: parts that keep ``previous_colors`` [V, 3] / ``previous_displacement`` [V]
            (unit frame) instead of being styled again.
    """
    w = torch.from_numpy(weights.weights.astype(np.float32))
    styled = [i for i, name in enumerate(weights.names) if name not in locked]
    fixed_share = w[:, -1:]
    fixed_colors = fixed_share * torch.from_numpy(np.asarray(original_colors, np.float32))
    fixed_displacement = torch.zeros(w.shape[0])
    locked_columns = [i for i, name in enumerate(weights.names) if name in locked]
    if locked_columns:
        if previous_colors is None or previous_displacement is None:
            raise ValueError("locked parts need the previous result's colors and displacement")
        share = w[:, locked_columns].sum(1, keepdim=True)
        fixed_colors = fixed_colors + share * torch.from_numpy(np.asarray(previous_colors, np.float32))
        fixed_displacement = fixed_displacement + share[:, 0] * torch.from_numpy(
            np.asarray(previous_displacement, np.float32)
        )
    return Composition(w[:, styled].contiguous(), fixed_colors, fixed_displacement)
