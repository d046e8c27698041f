"""Fewer field evaluations for a bake: texels between evaluated ones, two texels apart, are blended.

The field is evaluated at every texel whose row and column are both even; a texel between four such
texels (or two, on an even row or column) takes their bilinear blend of the field's per-part
outputs - but only where that is the surface in between: where its four neighbours lie on the same
flat piece of the layout, the blend of their 3D points is the texel's own point. Across a seam, an
island's border or a fold, the blended point lands elsewhere, and the texel is evaluated itself. The
composition (part weights, fixed colors, relief bounds) is still applied at every texel, so part
boundaries stay exactly as crisp. At 2 texels the field changes by a fraction of a percent: its
highest frequencies span tens of texels at the sizes maps are baked at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .texels import TexelSamples

# A blended point may miss the texel's own point by this share of the distance to its nearest
# neighbour: 0 on a flat face, far above it across a seam; a curved chart bends by much less.
TOLERANCE = 0.1


@dataclass(frozen=True)
class SharedSamples:
    """Which texels a bake evaluates and how the others blend them.

    Attributes:
        evaluated: [E] int64 texel indices (into :class:`TexelSamples`) evaluated directly.
        blended: [B] int64 texel indices blended from evaluated ones.
        sources: [B, 4] int64 positions in ``evaluated`` of each blended texel's neighbours.
        weights: [B, 4] float32 bilinear weights (sum to 1; 0 for an unused neighbour).
        count: T, all texels.
    """

    evaluated: np.ndarray
    blended: np.ndarray
    sources: np.ndarray
    weights: np.ndarray
    count: int

    def expand(self, values: np.ndarray) -> np.ndarray:
        """Values at the ``evaluated`` texels [E, ...] -> every texel's [T, ...]."""
        out = np.empty((self.count, *values.shape[1:]), values.dtype)
        out[self.evaluated] = values
        weights = self.weights.reshape(*self.weights.shape, *([1] * (values.ndim - 1)))
        out[self.blended] = (values[self.sources] * weights).sum(1)
        return out


def share_samples(texels: TexelSamples, points: np.ndarray) -> SharedSamples:
    """The plan for ``texels`` whose surface points are ``points`` [T, 3] (any frame)."""
    size, count = texels.size, len(texels.rows)
    index = np.full((size + 2, size + 2), -1, np.int64)  # two rows and columns past the edge: uncovered
    index[texels.rows, texels.cols] = np.arange(count)
    odd_row, odd_col = texels.rows % 2, texels.cols % 2
    top, left = texels.rows - odd_row, texels.cols - odd_col
    corners = np.stack([index[top, left], index[top, left + 2], index[top + 2, left], index[top + 2, left + 2]], 1)
    fy, fx = odd_row[:, None] * 0.5, odd_col[:, None] * 0.5
    weights = np.concatenate([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], 1).astype(np.float32)
    used = weights > 0
    candidate = ((odd_row | odd_col) == 1) & np.all((corners >= 0) | ~used, axis=1)
    rows = np.flatnonzero(candidate)
    safe = np.where(used[rows], corners[rows], corners[rows, :1])  # an unused corner: the top-left, always used
    neighbours = points[safe]  # [C, 4, 3]
    own = points[rows]
    blended_point = np.einsum("ck,ckd->cd", weights[rows], neighbours)
    reach = np.linalg.norm(neighbours[:, 0] - own, axis=1)  # one or 1.4 texels of surface away
    on_surface = np.linalg.norm(blended_point - own, axis=1) <= TOLERANCE * reach
    blended = rows[on_surface]
    evaluate = np.ones(count, bool)
    evaluate[blended] = False
    evaluated = np.flatnonzero(evaluate)
    position = np.full(count, -1, np.int64)
    position[evaluated] = np.arange(len(evaluated))
    sources = position[safe[on_surface]]
    return SharedSamples(evaluated, blended, sources, weights[blended], count)
