"""A generated UV layout for a mesh without one: every face its own island (a lightmap-style atlas).

Two faces share a square cell (one in each half, along the diagonal) with a margin of an eighth of
a cell on each side, cells in rows from the bottom-left. Every edge is a seam, and a map spends
about half its texels on margins. That is enough for a benchmark or a test, but not a layout an
artist would paint on.
"""

from __future__ import annotations

import math

import numpy as np

_LOWER = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
_UPPER = np.array([[1, 1], [0, 1], [1, 0]], np.float32)


def face_atlas(num_faces: int) -> np.ndarray:
    """[F, 3, 2] float32 corner UVs (v up) for ``num_faces`` faces, one island each."""
    cells = math.ceil(math.sqrt(math.ceil(num_faces / 2)))
    k = np.arange(num_faces)
    cell = k // 2
    low = np.stack([cell % cells, cell // cells], -1).astype(np.float32) / cells + 0.125 / cells
    corners = np.where((k % 2 == 0)[:, None, None], _LOWER[None], _UPPER[None])
    return (low[:, None, :] + corners * (0.75 / cells)).astype(np.float32)
