"""Over-segmentation of a mesh into patches that follow its structure (no model, deterministic).

Localization pools the evidence of the views per patch (``engine/grounding/settle.py``), so a patch
should never straddle two parts. Patches grow by merging faces across their shared edges, the
flattest edges first (union-find over the face graph), and never across:
- a **crease**: the faces' normals turn by more than ``crease_degrees``, or ``concave_degrees`` where
  the edge is concave (a seam where two parts meet is concave: a tube standing on a disc, a leg
  under a seat);
- a **change of thickness**: the two regions' surface radii (the radius over which the surface
  turns, a tube's radius, averaged in log scale over the region) differ by more than
  ``radius_ratio`` - a thin tube is its own patch even where it blends smoothly into a disc;
- **size**: no patch grows past ``max_faces`` faces, so a smooth part too is split into patches
  that the evidence can label one by one.
Separate connected pieces never share an edge, so they are never merged.

Frame: any (angles and ratios do not depend on scale); the unit frame by convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..mesh import vertex_normals
from .graph import VertexGraph
from .thickness import bend_radius


@dataclass(frozen=True)
class FaceGraph:
    """Faces that share an edge.

    Attributes:
        pairs: [E, 2] int64 face indices, each shared edge once (an edge with more than two faces,
            non-manifold, links its faces in a chain).
        edges: [E, 2] int64 the shared edge's vertices.
    """

    pairs: np.ndarray
    edges: np.ndarray

    @staticmethod
    def build(faces: np.ndarray) -> FaceGraph:
        faces = np.asarray(faces, np.int64)
        corners = np.concatenate((faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]))
        corners.sort(axis=1)
        owner = np.tile(np.arange(len(faces)), 3)
        order = np.lexsort((owner, corners[:, 1], corners[:, 0]))
        corners, owner = corners[order], owner[order]
        same = (corners[1:] == corners[:-1]).all(1)
        return FaceGraph(np.stack((owner[:-1][same], owner[1:][same]), 1), corners[1:][same])


@dataclass(frozen=True)
class Patches:
    """A partition of the faces into patches.

    Attributes:
        face_patch: [F] int64 patch of each face, numbered 0..count-1 by first face.
        count: the number of patches.
        graph: the face graph the patches were grown on.
        crease: [E] float64 in 0..1 per face-graph edge: 1 on a flat edge, towards 0 on a crease (how
            cheap the edge is to cut: a boundary along creases costs little).
    """

    face_patch: np.ndarray
    count: int
    graph: FaceGraph
    crease: np.ndarray

    def purity(self, face_labels: np.ndarray) -> np.ndarray:
        """[count] the share of each patch's faces that carry its most common label of [F] ``face_labels``."""
        labels = np.asarray(face_labels, np.int64)
        shift = labels - labels.min()
        joint = np.bincount(self.face_patch * (shift.max() + 1) + shift,
                            minlength=self.count * (shift.max() + 1)).reshape(self.count, -1)
        return joint.max(1) / np.maximum(joint.sum(1), 1)


@dataclass(frozen=True)
class PatchSettings:
    """Thresholds of :func:`segment_patches` (see the module docstring)."""

    crease_degrees: float = 40.0
    concave_degrees: float = 25.0
    radius_ratio: float = 2.5
    max_faces: int = 2_000
    min_patches: int = 64


def segment_patches(vertices: np.ndarray, faces: np.ndarray, settings: PatchSettings = PatchSettings()) -> Patches:
    """Patches of the mesh ``vertices`` [V, 3] float, ``faces`` [F, 3] int64 (see the module docstring).

    The patch cap is ``min(settings.max_faces, F / settings.min_patches)`` faces (at least 16).
    """
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    graph = FaceGraph.build(faces)
    a, b = graph.pairs[:, 0], graph.pairs[:, 1]
    corners = vertices[faces]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    area = np.linalg.norm(cross, axis=1)
    normal = cross / np.maximum(area, 1e-30)[:, None]
    centroid = corners.mean(1)
    turn = np.arccos(np.clip((normal[a] * normal[b]).sum(1), -1.0, 1.0))
    concave = ((centroid[b] - centroid[a]) * normal[a]).sum(1) > 1e-12 * np.sqrt(area[a])
    limit = np.radians(np.where(concave, settings.concave_degrees, settings.crease_degrees))
    crease = np.clip(1.0 - turn / limit, 0.0, 1.0)

    vertex_graph = VertexGraph(faces, len(vertices))
    lengths = np.linalg.norm(vertices[vertex_graph.source] - vertices[vertex_graph.target], axis=1)
    normals = vertex_normals(vertices.astype(np.float32), faces).astype(np.float64)
    radius = bend_radius(normals, vertex_graph, lengths)
    face_log_radius = np.log(radius[faces]).mean(1)
    cost = turn / limit + np.abs(face_log_radius[a] - face_log_radius[b])
    mergeable = np.flatnonzero(turn < limit)
    order = mergeable[np.argsort(cost[mergeable], kind="stable")]
    cap = max(16, min(settings.max_faces, len(faces) // max(settings.min_patches, 1)))
    face_patch = _grow(order, a, b, face_log_radius, np.log(settings.radius_ratio), cap, len(faces))
    _, first, dense = np.unique(face_patch, return_index=True, return_inverse=True)
    numbered = np.argsort(np.argsort(first))[dense.reshape(-1)]
    return Patches(numbered.astype(np.int64), len(first), graph, crease)


def _grow(order: np.ndarray, a: np.ndarray, b: np.ndarray, log_radius: np.ndarray, max_log_ratio: float,
          cap: int, num_faces: int) -> np.ndarray:
    """Union-find over the face graph's edges in ``order``; returns [F] a root face per face."""
    parent = list(range(num_faces))
    size = [1] * num_faces
    total = log_radius.tolist()  # sum of the faces' log radii per root

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for edge in order.tolist():
        ra, rb = root(int(a[edge])), root(int(b[edge]))
        if ra == rb:
            continue
        na, nb = size[ra], size[rb]
        if na + nb > cap or abs(total[ra] / na - total[rb] / nb) > max_log_ratio:
            continue
        if na < nb:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] = na + nb
        total[ra] += total[rb]
    return np.array([root(x) for x in range(num_faces)], np.int64)
