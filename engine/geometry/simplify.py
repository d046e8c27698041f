"""A lighter stand-in for a large mesh: vertex clustering on a grid.

The style field is a function of position, so it can be trained on a simplified copy of a large
mesh and then evaluated at every original vertex: the result keeps the original's vertex count,
order and detail, while the optimization's memory and time follow the copy's size
(``field.max_vertices``). Clustering (all vertices in one grid cell become their mean) is robust
on any input - open, non-manifold, disconnected - and linear in the mesh's size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..mesh import Mesh, MeshWarning, mesh_from_arrays
from ..parts import PartWeights


@dataclass(frozen=True)
class Proxy:
    """A simplified mesh and the map from the original's vertices to its vertices.

    Attributes:
        vertices: [P, 3] float32, the original's frame (each the mean of its cluster).
        faces: [G, 3] int64, the original's faces that still span three clusters, deduplicated.
        cluster: [V] int64, the proxy vertex each original vertex belongs to.
    """

    kind: ClassVar[str] = "simplified copy"
    vertices: np.ndarray
    faces: np.ndarray
    cluster: np.ndarray

    def mesh(self, name: str) -> Mesh:
        """The copy as a :class:`Mesh` named after the original (faces that collapsed are dropped quietly)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MeshWarning)
            return mesh_from_arrays(self.vertices, self.faces, name=f"{name} (simplified)")

    def reduce_part_weights(self, weights: PartWeights) -> PartWeights:
        """The original's per-vertex part weights -> the copy's (each cluster's mean; rows still sum to 1)."""
        return PartWeights(weights.names, self.carry(weights.weights), self.carry(weights.confidence),
                           weights.source)

    def expand_part_weights(self, weights: PartWeights) -> PartWeights:
        """The copy's part weights -> every original vertex (its cluster's)."""
        return PartWeights(weights.names, weights.weights[self.cluster], weights.confidence[self.cluster],
                           weights.source)

    def surface_normals(self, original: Mesh, copy: Mesh) -> np.ndarray:
        """[P, 3] unit normals the copy (``self.mesh``) displaces along: its own shape's."""
        return copy.vertex_normals

    def carry(self, values: np.ndarray) -> np.ndarray:
        """[V, ...] per original vertex -> [P, ...] per proxy vertex (the cluster's mean)."""
        values = np.asarray(values, dtype=np.float64)
        total = np.zeros((len(self.vertices), *values.shape[1:]), np.float64)
        np.add.at(total, self.cluster, values)
        count = np.bincount(self.cluster, minlength=len(self.vertices)).astype(np.float64)
        return (total / count.reshape(-1, *([1] * (values.ndim - 1)))).astype(np.float32)

    def carry_bounds(self, values: np.ndarray) -> np.ndarray:
        """Relief bounds [V, ...] -> [P, ...] per proxy vertex: the cluster's smallest (a cluster
        may move no further than its most constrained vertex)."""
        values = np.asarray(values, dtype=np.float32)
        low = np.full((len(self.vertices), *values.shape[1:]), np.inf, np.float32)
        np.minimum.at(low, self.cluster, values)
        return low


def simplified_copy(mesh: Mesh, max_vertices: int) -> Proxy | None:
    """The clustered copy a run optimizes on when ``mesh`` has more than ``max_vertices`` vertices
    (``field.max_vertices``; 0: never), else None."""
    if not max_vertices or mesh.num_vertices <= max_vertices:
        return None
    return cluster_vertices(mesh.vertices, mesh.faces, max_vertices)


def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, max_vertices: int) -> Proxy:
    """A :class:`Proxy` of at most ``max_vertices`` vertices (as many as the grid allows below it).

    Args:
        vertices: [V, 3] float, any frame. faces: [F, 3] int.
        max_vertices: the budget (at least 8).

    The grid's cell is the largest power-of-two fraction of the bounding box's longest side that
    stays within the budget (found by bisection on the cell count), so the result is deterministic.
    """
    if max_vertices < 8:
        raise ValueError(f"max_vertices must be at least 8, got {max_vertices}")
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    low, high = vertices.min(0), vertices.max(0)
    extent = float((high - low).max()) or 1.0
    best = None
    lo, hi = 1, 1 << 20  # cells along the longest side (2^20 cubed still fits one int64 key)
    while lo <= hi:
        cells = (lo + hi) // 2
        labels = _cell_labels(vertices, low, extent / cells)
        count = int(labels.max()) + 1
        if count <= max_vertices:
            best = (cells, labels, count)
            lo = cells + 1
        else:
            hi = cells - 1
    if best is None:  # even one cell is over budget: impossible for max_vertices >= 8
        raise ValueError("could not cluster the mesh")
    _, labels, count = best
    sums = np.zeros((count, 3), np.float64)
    np.add.at(sums, labels, vertices)
    centers = sums / np.bincount(labels, minlength=count)[:, None]
    mapped = labels[faces]
    keep = (mapped[:, 0] != mapped[:, 1]) & (mapped[:, 1] != mapped[:, 2]) & (mapped[:, 0] != mapped[:, 2])
    mapped = mapped[keep]
    _, first = np.unique(np.sort(mapped, axis=1), axis=0, return_index=True)
    return Proxy(centers.astype(np.float32), mapped[np.sort(first)], labels)


def _cell_labels(vertices: np.ndarray, low: np.ndarray, cell: float) -> np.ndarray:
    """[V] int64: consecutive ids of the occupied grid cells, in order of first appearance."""
    ijk = np.minimum(np.floor((vertices - low) / cell).astype(np.int64), (1 << 21) - 1)
    keys = (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber cells by first vertex: stable across runs
    return order[inverse.reshape(-1)]
