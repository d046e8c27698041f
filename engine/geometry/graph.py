"""The vertex graph of a mesh: neighbours for averaging, filling and relaxing per-vertex values.

Used by localization (smoothing part weights, filling unseen vertices) and by the thickness
measure (spreading sampled values, smoothing, the Lipschitz bound). Numpy only.
"""

from __future__ import annotations

import numpy as np


class VertexGraph:
    """The mesh's vertex adjacency (edges of its faces), for averaging values over neighbours."""

    def __init__(self, faces: np.ndarray, num_vertices: int):
        edges = np.concatenate((faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]))
        self.edges = np.unique(np.sort(edges, axis=1), axis=0)  # [E, 2], each edge once
        edges = self.edges
        self.source = np.concatenate((edges[:, 0], edges[:, 1]))
        self.target = np.concatenate((edges[:, 1], edges[:, 0]))
        self.degree = np.bincount(self.source, minlength=num_vertices).astype(np.float64)
        self.num_vertices = num_vertices

    def mean_of_neighbours(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """[V, C] -> [V, C] mean over each vertex's neighbours (only those in ``mask`` if given);
        a vertex without (such) neighbours keeps its value."""
        weight = np.ones(len(self.source)) if mask is None else mask[self.target].astype(np.float64)
        total = np.zeros_like(values, dtype=np.float64)
        np.add.at(total, self.source, values[self.target] * weight[:, None])
        count = np.bincount(self.source, weights=weight, minlength=self.num_vertices)
        return np.where(count[:, None] > 0, total / np.maximum(count, 1e-12)[:, None], values)

    def fill(self, values: np.ndarray, known: np.ndarray, unreached: np.ndarray | None = None) -> np.ndarray:
        """Give unknown vertices the mean of their known neighbours, growing outwards until none
        changes; vertices no known vertex reaches get ``unreached`` [C] (default ``0 ... 0, 1``:
        all rest, for part weights)."""
        values = np.where(known[:, None], values, 0.0)
        known = known.copy()
        while not known.all():
            neighbour_count = np.bincount(
                self.source, weights=known[self.target].astype(np.float64), minlength=self.num_vertices
            )
            reachable = ~known & (neighbour_count > 0)
            if not reachable.any():
                break
            values[reachable] = self.mean_of_neighbours(values, known)[reachable]
            known = known | reachable
        if not known.all():
            if unreached is None:
                unreached = np.zeros(values.shape[1])
                unreached[-1] = 1.0
            values[~known] = unreached
        return values
