"""A finer stand-in for a coarse mesh: its edges split until none is longer than a target.

The style field is a function of position, so a low-poly mesh can be optimized on a finer copy of
its own surface: the guidance model then sees the field's detail between the original vertices
(kept by the maps baked on the mesh's UVs, ``engine/texture``) instead of colors interpolated
across large faces. The copy lies exactly on the original's faces - every vertex of it is a
barycentric point of one original face - and the original's vertices come first, with their own
indices, so a result on the copy is the original's at rows ``0..V-1``.

Refinement splits every edge longer than the target at its midpoint and re-triangulates each face
by how many of its edges were split (1 -> 2, 2 -> 3, 3 -> 4 triangles, the same winding), round
after round: splitting shared edges on both sides keeps the copy free of cracks. A round that would
pass the vertex budget splits only the longest edges that fit it, and refinement stops there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..mesh import Mesh, MeshWarning, barycentric_blend, mesh_from_arrays
from ..parts import PartWeights

# Each face's six slots: corners a, b, c (0, 1, 2), then the midpoints of edges ab, bc, ca (3, 4, 5).
# Templates for a face rotated so its split edges come first (see _retriangulate).
_ONE_SPLIT = ((0, 3, 2), (3, 1, 2))
_TWO_SPLITS = ((3, 1, 4),)  # plus the quad a, m_ab, m_bc, c, cut along its shorter diagonal
_QUAD_VIA_A = ((0, 3, 4), (0, 4, 2))  # diagonal a - m_bc
_QUAD_VIA_M = ((0, 3, 2), (3, 4, 2))  # diagonal m_ab - c
_THREE_SPLITS = ((0, 3, 5), (3, 1, 4), (5, 4, 2), (3, 4, 5))


@dataclass(frozen=True)
class Refinement:
    """A subdivided copy of a mesh and where each of its vertices lies on the original.

    Attributes:
        vertices: [W, 3] float32 positions in the original's frame; rows 0..V-1 are the original's.
        faces: [G, 3] int64, each inside one original face, with its winding.
        face_parent: [G] int64 the original face each face lies in.
        source_face: [W] int64 an original face holding each vertex.
        source_bary: [W, 3] float32 the vertex's barycentrics in that face (rows sum to 1).
        original_faces: [F, 3] int64 the original's faces (``source_face`` indexes them).
        original_count: V, the original's vertex count.
    """

    kind: ClassVar[str] = "subdivided copy"
    vertices: np.ndarray
    faces: np.ndarray
    face_parent: np.ndarray
    source_face: np.ndarray
    source_bary: np.ndarray
    original_faces: np.ndarray
    original_count: int

    @property
    def cluster(self) -> np.ndarray:
        """[V] int64 the copy's vertex of each original vertex (itself: the originals come first)."""
        return np.arange(self.original_count, dtype=np.int64)

    def mesh(self, name: str) -> Mesh:
        """The copy as a :class:`Mesh` named after the original."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MeshWarning)
            return mesh_from_arrays(self.vertices, self.faces, name=f"{name} (subdivided)")

    def carry(self, values: np.ndarray) -> np.ndarray:
        """[V, ...] per original vertex -> [W, ...] float32 per copy vertex: the barycentric blend of
        the holding face's corners (the original rows are copied exactly)."""
        values = np.asarray(values, dtype=np.float32)
        out = barycentric_blend(values, self.original_faces, self.source_face, self.source_bary)
        out[: self.original_count] = values
        return out

    def carry_bounds(self, values: np.ndarray) -> np.ndarray:
        """Relief bounds [V, ...] -> [W, ...]: blended like any value (a point between vertices may
        move as far as its corners' blend)."""
        return self.carry(values)

    def reduce_part_weights(self, weights: PartWeights) -> PartWeights:
        """The original's per-vertex part weights -> the copy's (blended; rows still sum to 1)."""
        return PartWeights(weights.names, self.carry(weights.weights), self.carry(weights.confidence),
                           weights.source)

    def expand_part_weights(self, weights: PartWeights) -> PartWeights:
        """The copy's part weights -> the original's (its own rows, which come first)."""
        count = self.original_count
        return PartWeights(weights.names, weights.weights[:count], weights.confidence[:count], weights.source)

    def surface_normals(self, original: Mesh, copy: Mesh) -> np.ndarray:
        """[W, 3] unit normals the copy (``self.mesh``) displaces along: the original's vertex normals
        blended and renormalized, the field the original moves along (not the copy's flat faces')."""
        normals = original.vertex_normals
        blended = self.carry(normals).astype(np.float64)
        length = np.linalg.norm(blended, axis=1, keepdims=True)
        fallback = normals[self.original_faces[self.source_face, 0]]  # where opposite normals cancel
        return np.where(length > 1e-8, blended / np.maximum(length, 1e-12), fallback).astype(np.float32)


def refine_edges(vertices: np.ndarray, faces: np.ndarray, max_edge: float, max_vertices: int) -> Refinement:
    """Split edges longer than ``max_edge`` until none is, or the copy would pass ``max_vertices``.

    Args:
        vertices: [V, 3] float, any frame (``max_edge`` is in its units). faces: [F, 3] int.
        max_edge: the longest edge the copy should have (> 0).
        max_vertices: the copy's vertex budget, the original's included.
    """
    if max_edge <= 0:
        raise ValueError(f"max_edge must be positive, got {max_edge}")
    positions = np.asarray(vertices, dtype=np.float64)
    current = np.asarray(faces, dtype=np.int64)
    count = len(positions)
    parent = np.arange(len(current), dtype=np.int64)
    corner_bary = np.broadcast_to(np.eye(3), (len(current), 3, 3)).copy()  # [G, corner, bary]
    first_face, first_corner = _a_corner_of_each_vertex(current, count)
    sources_face, sources_bary = [first_face], [np.eye(3)[first_corner]]
    while True:
        ends = np.stack([current, np.roll(current, -1, axis=1)], axis=-1)  # [G, 3, 2] edges ab, bc, ca
        keys = np.sort(ends, axis=-1).reshape(-1, 2)
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        length = np.linalg.norm(positions[unique[:, 0]] - positions[unique[:, 1]], axis=1)
        split = np.flatnonzero(length > max_edge)
        budget = max_vertices - len(positions)
        if len(split) == 0 or budget <= 0:
            break
        final = len(split) > budget
        if final:  # the longest that fit, in a stable order
            split = np.sort(split[np.argsort(-length[split], kind="stable")[:budget]])
        midpoint = np.full(len(unique), -1, dtype=np.int64)
        midpoint[split] = len(positions) + np.arange(len(split))
        positions = np.concatenate([positions, positions[unique[split]].mean(1)])
        # each new vertex lies in the parent face of the first face listing its edge
        face_of, slot_of = np.divmod(first[split], 3)
        sources_face.append(parent[face_of])
        sources_bary.append(0.5 * (corner_bary[face_of, slot_of] + corner_bary[face_of, (slot_of + 1) % 3]))
        current, parent, corner_bary = _retriangulate(current, parent, corner_bary,
                                                       midpoint[inverse.reshape(-1)].reshape(-1, 3), positions)
        if final:
            break
    return Refinement(
        vertices=positions.astype(np.float32),
        faces=current,
        face_parent=parent,
        source_face=np.concatenate(sources_face),
        source_bary=np.concatenate(sources_bary).astype(np.float32),
        original_faces=np.asarray(faces, dtype=np.int64),
        original_count=count,
    )


def _a_corner_of_each_vertex(faces: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """([V] face, [V] corner 0..2): where each vertex first appears in ``faces`` (face 0, corner 0
    for a vertex no face uses: its rows are copied anyway)."""
    face, corner = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    used, first = np.unique(faces.reshape(-1), return_index=True)
    face[used], corner[used] = np.divmod(first, 3)
    return face, corner


def _retriangulate(faces, parent, corner_bary, midpoints, positions):
    """Replace each face [G, 3] by the triangles its split edges call for.

    ``midpoints`` is [G, 3]: the new vertex on edges ab, bc, ca, or -1. Returns the new faces, their
    parent faces and [G', 3, 3] corner barycentrics in those parents.
    """
    slots = np.concatenate([faces, midpoints], axis=1)  # [G, 6]
    slot_bary = np.concatenate([corner_bary, 0.5 * (corner_bary + np.roll(corner_bary, -1, axis=1))], axis=1)
    split = midpoints >= 0
    splits = split.sum(1)
    out_faces, out_parent, out_bary = [], [], []

    def emit(rows: np.ndarray, rotation: int, templates) -> None:
        if len(rows) == 0:
            return
        order = np.array([(i + rotation) % 3 for i in range(3)] + [3 + (i + rotation) % 3 for i in range(3)])
        local = slots[rows][:, order]
        local_bary = slot_bary[rows][:, order]
        for template in templates:
            out_faces.append(local[:, template])
            out_parent.append(parent[rows])
            out_bary.append(local_bary[:, template])

    emit(np.flatnonzero(splits == 0), 0, ((0, 1, 2),))
    emit(np.flatnonzero(splits == 3), 0, _THREE_SPLITS)
    for rotation in range(3):
        emit(np.flatnonzero((splits == 1) & split[:, rotation]), rotation, _ONE_SPLIT)
        # two split edges: rotate so they are ab and bc (the unsplit one is ca)
        rows = np.flatnonzero((splits == 2) & ~split[:, (rotation + 2) % 3])
        if len(rows):
            order = [(i + rotation) % 3 for i in range(3)]
            a, c = faces[rows][:, order[0]], faces[rows][:, order[2]]
            m_ab, m_bc = midpoints[rows, order[0]], midpoints[rows, order[1]]
            via_a = (np.linalg.norm(positions[a] - positions[m_bc], axis=1)
                     <= np.linalg.norm(positions[m_ab] - positions[c], axis=1))
            emit(rows, rotation, _TWO_SPLITS)
            emit(rows[via_a], rotation, _QUAD_VIA_A)
            emit(rows[~via_a], rotation, _QUAD_VIA_M)
    order = np.argsort(np.concatenate(out_parent), kind="stable")  # keep a parent's children together
    return (np.concatenate(out_faces)[order], np.concatenate(out_parent)[order],
            np.concatenate(out_bary)[order])
