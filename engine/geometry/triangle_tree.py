"""A bounding-volume tree over a mesh's triangles: nearest ray hits and box overlaps, in numpy (a GPU
run traces the same rays with the same arithmetic in torch: ``device_trace.py``).

The tree is built once per mesh in O(F log F): triangles are sorted along a Morton (Z-order)
curve of their centroids, cut into leaves of ``LEAF_SIZE`` consecutive triangles, and leaves are
paired level by level up to one root. Queries run breadth first over *all* queries at once: each
level keeps the (query, node) pairs whose boxes meet and hands their children to the next level,
so the work is a handful of vectorized numpy operations per level instead of a Python loop per
ray. Queries are processed in chunks, so memory stays bounded whatever their number; with
``workers`` > 1 the chunks run on that many threads (numpy releases the interpreter lock in its
array loops, and chunks share nothing but the read-only tree), with the same results bit for bit.

Any frame works (positions are float64 internally); the callers use the unit frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

LEAF_SIZE = 4
#: float32 rounding of the slab distances, in the tree's units: the box test's margin.
SLACK = float(np.float32(1e-5))
#: Rays (or boxes) traced together: bounds the size of the per-level pair arrays, which at this
#: size stay in the CPU's caches (32,768 was about 1.1x slower on one thread) and give threads work to share.
CHUNK = 4_096

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class TriangleTree:
    """Triangles in Morton order with a complete binary tree of boxes above them.

    Attributes:
        corners: [3, 3, F] float64, axis-major: ``corners[j, k, i]`` is axis ``k`` of the j-th
            corner of triangle ``i`` of the sorted order.
        order: [F] int64, the input face index of each sorted triangle.
        lows, highs: per level from the root (one node) down to the leaves, [3, N_l] float32 box
            corners, one contiguous row per axis (x, y, z: the traversal gathers and compares one
            axis at a time); node ``i`` of a level has children ``2i`` and ``2i + 1`` one level
            down, and leaf ``i`` holds sorted triangles ``LEAF_SIZE * i`` up to the next leaf's.
    """

    corners: np.ndarray
    order: np.ndarray
    lows: tuple[np.ndarray, ...]
    highs: tuple[np.ndarray, ...]

    @staticmethod
    def build(vertices: np.ndarray, faces: np.ndarray) -> TriangleTree:
        """The tree of a mesh: ``vertices`` [V, 3], ``faces`` [F, 3] (F >= 1)."""
        corners = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]  # [F, 3, 3]
        order = np.argsort(morton_codes(corners.mean(1)), kind="stable")
        corners = corners[order]
        starts = np.arange(0, len(corners), LEAF_SIZE)
        lows = [np.minimum.reduceat(corners.min(1), starts)]
        highs = [np.maximum.reduceat(corners.max(1), starts)]
        while len(lows[-1]) > 1:
            pairs = np.arange(0, len(lows[-1]), 2)
            lows.append(np.minimum.reduceat(lows[-1], pairs))
            highs.append(np.maximum.reduceat(highs[-1], pairs))
        # float32 boxes, widened by one ulp so that rounding never shrinks them: half the memory
        # traffic of the traversal, which is what its time is made of; axis-major, so each of its
        # gathers and comparisons runs over contiguous values (1.4x faster than [N, 3] rows).
        lows = [np.nextafter(level.astype(np.float32), np.float32(-np.inf)).T.copy() for level in reversed(lows)]
        highs = [np.nextafter(level.astype(np.float32), np.float32(np.inf)).T.copy() for level in reversed(highs)]
        return TriangleTree(corners.transpose(1, 2, 0).copy(), order, tuple(lows), tuple(highs))

    @property
    def num_triangles(self) -> int:
        return int(self.corners.shape[2])

    @property
    def level_sizes(self) -> list[int]:
        """The number of nodes at each level, from the root down."""
        return [level.shape[1] for level in self.lows]

    def nearest_hits(
        self, origins: np.ndarray, directions: np.ndarray, max_distance: float, min_distance: float = 0.0, *,
        workers: int = 1,
    ) -> np.ndarray:
        """Distance along each ray to the nearest triangle it hits, from either side.

        Args:
            origins, directions: [R, 3] rays; directions must be unit length.
            max_distance: rays are traced only this far.
            min_distance: hits closer than this are ignored (the triangles at a ray's own origin).
            workers: threads that trace chunks of rays at once (the result does not depend on it).

        Returns [R] float64 distances; ``inf`` where a ray hits nothing within ``max_distance``.
        """
        return self.nearest_faces(origins, directions, max_distance, min_distance, workers=workers)[0]

    def nearest_faces(
        self, origins: np.ndarray, directions: np.ndarray, max_distance: float, min_distance: float = 0.0, *,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`nearest_hits`, and the input face index each ray hits first ([R] int64, -1: none)."""
        origins = np.asarray(origins, np.float64)
        directions = np.asarray(directions, np.float64)
        distance = np.full(len(origins), np.inf)
        face = np.full(len(origins), -1, np.int64)
        pending = np.arange(len(origins))
        near = min_distance
        for far in ray_stages(min_distance, max_distance):  # short segments first: most rays stop early
            chunks = [pending[start:start + CHUNK] for start in range(0, len(pending), CHUNK)]

            def trace(rays: np.ndarray, near: float = near, far: float = far) -> tuple[np.ndarray, np.ndarray]:
                return self._trace(origins[rays], directions[rays], near, far)

            for rays, (hits, faces) in zip(chunks, _map(trace, chunks, workers), strict=True):
                distance[rays], face[rays] = hits, faces
            pending = pending[np.isinf(distance[pending])]
            near = far
        return distance, face

    def overlapping_pairs(
        self, lows: np.ndarray, highs: np.ndarray, *, workers: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every (query box, triangle) whose boxes overlap: [Q, 3] query boxes -> (query indices,
        input face indices), two [N] int64 arrays. ``workers``: threads sharing the queries."""

        def overlapping(start: int) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = lows[start:start + CHUNK], highs[start:start + CHUNK]
            lo_axes, hi_axes = np.ascontiguousarray(lo.T), np.ascontiguousarray(hi.T)  # [3, C] each

            def meets(q, level, node):
                node_lo, node_hi = self.lows[level], self.highs[level]
                met = (lo_axes[0][q] <= node_hi[0][node]) & (hi_axes[0][q] >= node_lo[0][node])
                for axis in (1, 2):
                    met &= (lo_axes[axis][q] <= node_hi[axis][node]) & (hi_axes[axis][q] >= node_lo[axis][node])
                return met

            q, leaf = descend(meets, np.arange(len(lo)), self.level_sizes)
            q, tri = leaf_triangles(q, leaf, self.num_triangles)
            corners = self.corners[:, :, tri]  # [3 corners, 3 axes, P]
            box_lo, box_hi = corners.min(0), corners.max(0)
            keep = (lo_axes[0][q] <= box_hi[0]) & (hi_axes[0][q] >= box_lo[0])
            for axis in (1, 2):
                keep &= (lo_axes[axis][q] <= box_hi[axis]) & (hi_axes[axis][q] >= box_lo[axis])
            return q[keep] + start, self.order[tri[keep]]

        found = _map(overlapping, range(0, len(lows), CHUNK), workers)
        return np.concatenate([q for q, _ in found]), np.concatenate([tri for _, tri in found])

    # -- internals -------------------------------------------------------------------------------

    def _trace(self, origins, directions, min_distance: float, max_distance: float) -> np.ndarray:
        """Nearest hit in [min_distance, max_distance] of each ray (inf if none) and its input face (-1)."""
        safe = np.where(np.abs(directions) < 1e-12, np.copysign(1e-12, directions), directions)
        inverse = (1.0 / safe).astype(np.float32).T.copy()  # [3, R]; finite: a ray parallel to a slab gets a huge slope
        start = origins.astype(np.float32).T.copy()  # [3, R]
        origin_axes, direction_axes = origins.T.copy(), directions.T.copy()  # [3, R] float64
        meets = slab_test(start, inverse, self.lows, self.highs, min_distance, max_distance)
        ray, leaf = descend(meets, np.arange(len(origins)), self.level_sizes)
        ray, triangle = leaf_triangles(ray, leaf, self.num_triangles)
        t = distances_by_axis(origin_axes[:, ray], direction_axes[:, ray], self.corners[:, :, triangle])
        hit = (t >= min_distance) & (t <= max_distance)
        ray, triangle, t = ray[hit], triangle[hit], t[hit]
        first = np.lexsort((t, ray))  # by ray, nearest first
        keep = first[np.r_[True, ray[first][1:] != ray[first][:-1]]] if len(first) else first
        best = np.full(len(origins), np.inf)
        face = np.full(len(origins), -1, np.int64)
        best[ray[keep]] = t[keep]
        face[ray[keep]] = self.order[triangle[keep]]
        return best, face


def slab_test(start, inverse, lows, highs, min_distance: float, max_distance: float, xp=np):
    """The traversal's box test of rays against a level's boxes: a function ``(ray, level, node) ->
    bool`` over pairs of [P] indices, True where ray ``ray`` passes through box ``node`` of ``level``
    within ``min_distance`` .. ``max_distance`` (widened by float32's rounding of the slab distances).

    ``start`` and ``inverse`` are the rays' [3, R] float32 origins and inverse directions, ``lows``
    and ``highs`` the tree's per-level [3, N_l] float32 boxes; numpy arrays (``xp=np``) or torch
    tensors (``xp=torch``), with the same arithmetic either way."""
    slack = SLACK
    below, beyond = min_distance - slack, max_distance + slack  # Python floats, compared in float32

    def meets(ray, level, node):
        near = far = None
        for axis in range(3):  # the slab test one axis at a time, over contiguous values
            o, i = start[axis][ray], inverse[axis][ray]
            t0 = (lows[level][axis][node] - o) * i
            t1 = (highs[level][axis][node] - o) * i
            low, high = xp.minimum(t0, t1), xp.maximum(t0, t1)
            near = low if near is None else xp.maximum(near, low)
            far = high if far is None else xp.minimum(far, high)
        return (near <= far + slack) & (far >= below) & (near <= beyond)

    return meets


def descend(meets, queries, level_sizes: Sequence[int]):
    """The breadth-first descent: (query, leaf) pairs whose boxes ``meets(query, level, node)`` at
    every level, from ``queries`` [Q] int64 (all at the root) through levels of ``level_sizes`` nodes
    (node ``i`` has children ``2i`` and ``2i + 1``). numpy arrays or torch tensors, as ``queries``."""
    query, node = queries, queries * 0
    for level in range(len(level_sizes)):
        keep = meets(query, level, node)
        query, node = query[keep], node[keep]
        if level + 1 < len(level_sizes):
            query = _repeat(query, 2)
            node = (2 * node[:, None] + _arange_like(node, 2)).reshape(-1)
            inside = node < level_sizes[level + 1]
            query, node = query[inside], node[inside]
    return query, node


def leaf_triangles(query, leaf, num_triangles: int):
    """(query, leaf) pairs -> (query, sorted triangle) pairs for every triangle of the leaf; numpy
    arrays or torch tensors."""
    query = _repeat(query, LEAF_SIZE)
    triangle = (LEAF_SIZE * leaf[:, None] + _arange_like(leaf, LEAF_SIZE)).reshape(-1)
    inside = triangle < num_triangles
    return query[inside], triangle[inside]


def _repeat(values, count: int):
    """Each value ``count`` times in a row: numpy's ``repeat``, torch's ``repeat_interleave``."""
    return np.repeat(values, count) if isinstance(values, np.ndarray) else values.repeat_interleave(count)


def _arange_like(values, count: int):
    """0 .. ``count`` - 1 where ``values`` live (a numpy array, or a tensor on its device)."""
    if isinstance(values, np.ndarray):
        return np.arange(count)
    import torch  # only for tensors: this module is numpy's

    return torch.arange(count, device=values.device)


def _map(work: Callable[..., _Result], items: Sequence, workers: int) -> list[_Result]:
    """``[work(item) for item in items]``, on up to ``workers`` threads when there is more than one item."""
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(work, items))


def ray_stages(first: float, last: float) -> list[float]:
    """Growing ray lengths up to ``last``: 1/64, 1/16, 1/4 of it, then all of it."""
    return [d for d in (last / 64, last / 16, last / 4) if d > first] + [last]


def ray_triangle_distances(origins: np.ndarray, directions: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Möller-Trumbore: [N, 3] rays against [N, 3, 3] triangles (``corners[i, j]``: the j-th corner
    of triangle ``i``) -> [N] distance along each ray to its triangle's plane where the ray passes
    through the triangle (either side), else ``nan``. A ray parallel to its triangle's plane counts
    as a miss."""
    return distances_by_axis(np.asarray(origins).T, np.asarray(directions).T, np.asarray(corners).transpose(1, 2, 0))


def distances_by_axis(origins, directions, corners, xp=np):
    """:func:`ray_triangle_distances` of axis-major arrays: [3, N] origins and directions, [3 corners,
    3 axes, N] triangles (contiguous rows: each operation runs over contiguous values); numpy arrays
    (``xp=np``) or torch tensors (``xp=torch``), with the same arithmetic in the same order."""
    a = corners[0]
    ab, ac = corners[1] - a, corners[2] - a
    p = _cross(directions, ac, xp)
    det = _dot(ab, p)
    ok = xp.abs(det) > 1e-12 * xp.sqrt(_dot(ab, ab) * _dot(ac, ac))
    inv = xp.where(ok, 1.0 / xp.where(ok, det, 1.0), 0.0)
    s = origins - a
    u = _dot(s, p) * inv
    q = _cross(s, ab, xp)
    v = _dot(directions, q) * inv
    t = _dot(ac, q) * inv
    inside = ok & (u >= 0.0) & (v >= 0.0) & (u + v <= 1.0)
    return xp.where(inside, t, xp.nan)


def _dot(a, b):
    """Dot products of axis-major [3, N] arrays -> [N]."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a, b, xp=np):
    """Cross products of axis-major [3, N] arrays -> [3, N]."""
    return xp.stack((a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]))


def morton_codes(points: np.ndarray) -> np.ndarray:
    """[N, 3] points -> [N] uint64 Morton codes of their 21-bit grid cells in the points' bounds."""
    lo, hi = points.min(0), points.max(0)
    cells = ((points - lo) / np.maximum(hi - lo, 1e-30) * (2**21 - 1)).astype(np.uint64)
    code = np.zeros(len(points), np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return code
