"""Self-intersections: which faces of a mesh pass through one another, and which a displacement made.

Two triangles intersect when an edge of one crosses the other. Pairs that share a vertex are
never counted (they touch by construction), nor are coplanar overlaps (a zero-volume contact).
Candidates come from a :class:`TriangleTree` box query, so the check is ~O(F log F).

Parts modelled to interpenetrate (a lamp's tube pushed into its base) intersect in the input
already; when a displacement moves such a contact, its face pairs change without anything new
going wrong, so :func:`new_intersections` leaves pairs of connected pieces that already met alone.
"""

from __future__ import annotations

import numpy as np

from .triangle_tree import TriangleTree, ray_triangle_distances


def intersecting_pairs(vertices: np.ndarray, faces: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """[N, 2] int64 face index pairs (i < j) of ``faces`` [F, 3] that intersect at ``vertices`` [V, 3].
    ``workers``: threads sharing the candidate search (the result does not depend on it)."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    tree = TriangleTree.build(vertices, faces)
    corners = vertices[faces]  # [F, 3, 3]
    first, second = tree.overlapping_pairs(corners.min(1), corners.max(1), workers=workers)
    keep = first < second
    first, second = first[keep], second[keep]
    shared = (faces[first][:, :, None] == faces[second][:, None, :]).any(axis=(1, 2))
    first, second = first[~shared], second[~shared]
    crossing = _edges_cross(corners[first], corners[second]) | _edges_cross(corners[second], corners[first])
    return np.stack((first[crossing], second[crossing]), axis=1)


def new_intersections(before: np.ndarray, after: np.ndarray, faces: np.ndarray, *, workers: int = 1) -> np.ndarray:
    """Face pairs that intersect at ``after`` [V, 3] but not at ``before`` [V, 3] (same ``faces``),
    less those between two connected pieces that already intersected each other ``before``.
    Returns [N, 2] int64. ``workers``: as for :func:`intersecting_pairs`."""
    faces = np.asarray(faces, np.int64)
    old = intersecting_pairs(before, faces, workers=workers)
    new = intersecting_pairs(after, faces, workers=workers)
    count = len(faces)
    fresh = new[~np.isin(new[:, 0] * count + new[:, 1], old[:, 0] * count + old[:, 1])]
    piece = face_components(faces)
    pieces = int(piece.max()) + 1
    touching = piece[old[:, 0]] * pieces + piece[old[:, 1]]
    between = piece[fresh[:, 0]] * pieces + piece[fresh[:, 1]]
    mirrored = piece[fresh[:, 1]] * pieces + piece[fresh[:, 0]]
    already = (np.isin(between, touching) | np.isin(mirrored, touching)) & (piece[fresh[:, 0]] != piece[fresh[:, 1]])
    return fresh[~already]


def face_components(faces: np.ndarray) -> np.ndarray:
    """[F] int64 index of the connected piece (faces joined through shared vertices) of each face,
    numbered 0.. in order of first appearance."""
    faces = np.asarray(faces, np.int64)
    label = np.arange(int(faces.max()) + 1)
    while True:  # label propagation with pointer jumping: a few dozen rounds at most in practice
        lowest = label[faces].min(axis=1)
        updated = label.copy()
        for column in range(3):
            np.minimum.at(updated, faces[:, column], lowest)
        updated = updated[updated]
        if np.array_equal(updated, label):
            break
        label = updated
    _, first_seen, dense = np.unique(label[faces[:, 0]], return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first_seen))[dense.reshape(-1)]


def _edges_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] whether an edge of triangles ``a`` [N, 3, 3] passes through triangles ``b`` [N, 3, 3]."""
    out = np.zeros(len(a), bool)
    for i in range(3):
        start, end = a[:, i], a[:, (i + 1) % 3]
        t = ray_triangle_distances(start, end - start, b)
        out |= (t > 1e-9) & (t < 1.0 - 1e-9)
    return out
