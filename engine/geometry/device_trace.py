"""A :class:`~engine.geometry.triangle_tree.TriangleTree`'s nearest ray hits, traced with torch on a
run's device.

The numpy traversal (``TriangleTree._trace``) is the local thickness's cost: about 2 s of one CPU
thread for a 40k-face mesh, and on a GPU machine it runs on the host while the GPU waits. This is
the same breadth-first descent, level by level over all rays of a chunk at once, with the same
operations in the same precisions (float32 slab tests against the tree's float32 boxes, float64
Möller-Trumbore against its float64 triangles), so the distances are the numpy traversal's bit for
bit (``tests/test_geometry.py``). A chunk is 32,768 rays (numpy's is 4,096, for the CPU's caches),
so on a GPU a whole measurement is a few thousand small launches instead of seconds of host time.

Frame: whatever the tree's (the callers use the unit frame).
"""

from __future__ import annotations

import numpy as np
import torch

from .triangle_tree import LEAF_SIZE, TriangleTree, ray_stages

#: Rays traced together: bounds the pair tensors (at most about 0.35 GB for the lamp at 40k or 100k faces).
DEVICE_CHUNK = 1 << 15
#: float32 rounding of the slab distances, in the tree's units (as the numpy traversal's).
SLACK = float(np.float32(1e-5))


class DeviceTree:
    """A tree's arrays on ``device``: ``corners`` [3, 3, F] float64 (corner, axis, sorted triangle),
    and per level from the root down, ``lows`` / ``highs`` [3, N_l] float32 (axis-major)."""

    def __init__(self, tree: TriangleTree, device: torch.device | str):
        self.device = torch.device(device)
        self.corners = torch.from_numpy(tree.corners).to(self.device)
        self.lows = [torch.from_numpy(level).to(self.device) for level in tree.lows]
        self.highs = [torch.from_numpy(level).to(self.device) for level in tree.highs]
        self.num_triangles = tree.num_triangles

    def nearest_hits(self, origins: np.ndarray, directions: np.ndarray, max_distance: float,
                     min_distance: float = 0.0, *, chunk: int = DEVICE_CHUNK) -> np.ndarray:
        """:meth:`TriangleTree.nearest_hits`: [R, 3] origins and unit directions -> [R] float64
        distance to the nearest triangle each ray hits from either side within ``min_distance`` ..
        ``max_distance`` (``inf``: none), traced ``chunk`` rays at a time on the device."""
        origins = torch.from_numpy(np.asarray(origins, np.float64)).to(self.device)
        directions = torch.from_numpy(np.asarray(directions, np.float64)).to(self.device)
        distance = torch.full((len(origins),), torch.inf, dtype=torch.float64, device=self.device)
        pending = torch.arange(len(origins), device=self.device)
        near = min_distance
        for far in ray_stages(min_distance, max_distance):  # short segments first: most rays stop early
            for start in range(0, len(pending), chunk):
                rays = pending[start:start + chunk]
                distance[rays] = self._trace(origins[rays], directions[rays], near, far)
            pending = pending[torch.isinf(distance[pending])]
            near = far
        return distance.cpu().numpy()

    def _trace(self, origins: torch.Tensor, directions: torch.Tensor, min_distance: float,
               max_distance: float) -> torch.Tensor:
        """[R] nearest hit in [min_distance, max_distance] of each of these rays, ``inf`` if none."""
        tiny = torch.full_like(directions, 1e-12)
        safe = torch.where(directions.abs() < 1e-12, torch.copysign(tiny, directions), directions)
        inverse = (1.0 / safe).float().T.contiguous()  # [3, R]; a ray parallel to a slab gets a huge slope
        start = origins.float().T.contiguous()  # [3, R]
        # the numpy traversal's thresholds: a float64 sum of the Python bound and the float32 slack,
        # compared in float32
        below, beyond = min_distance - SLACK, max_distance + SLACK

        def meets(query: torch.Tensor, level: int, node: torch.Tensor) -> torch.Tensor:
            near = far = None
            for axis in range(3):  # the slab test one axis at a time
                o, i = start[axis][query], inverse[axis][query]
                t0 = (self.lows[level][axis][node] - o) * i
                t1 = (self.highs[level][axis][node] - o) * i
                low, high = torch.minimum(t0, t1), torch.maximum(t0, t1)
                near = low if near is None else torch.maximum(near, low)
                far = high if far is None else torch.minimum(far, high)
            return (near <= far + SLACK) & (far >= below) & (near <= beyond)

        ray, leaf = self._descend(meets, len(origins))
        ray = ray.repeat_interleave(LEAF_SIZE)
        triangle = (LEAF_SIZE * leaf[:, None] + torch.arange(LEAF_SIZE, device=self.device)).reshape(-1)
        inside = triangle < self.num_triangles
        ray, triangle = ray[inside], triangle[inside]
        t = _distances_by_axis(origins.T[:, ray], directions.T[:, ray], self.corners[:, :, triangle])
        hit = (t >= min_distance) & (t <= max_distance)  # nan (a miss) compares False
        best = torch.full((len(origins),), torch.inf, dtype=torch.float64, device=self.device)
        return best.scatter_reduce(0, ray[hit], t[hit], reduce="amin")

    def _descend(self, meets, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, leaf) pairs whose boxes ``meets(query, level, node)`` at every level."""
        query = torch.arange(count, device=self.device)
        node = torch.zeros(count, dtype=torch.int64, device=self.device)
        pair = torch.arange(2, device=self.device)
        for level in range(len(self.lows)):
            keep = meets(query, level, node)
            query, node = query[keep], node[keep]
            if level + 1 < len(self.lows):
                children = self.lows[level + 1].shape[1]
                query = query.repeat_interleave(2)
                node = (2 * node[:, None] + pair).reshape(-1)
                inside = node < children
                query, node = query[inside], node[inside]
        return query, node


def _distances_by_axis(origins: torch.Tensor, directions: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """The numpy ``triangle_tree._distances_by_axis`` (Möller-Trumbore, either side) in torch: [3, N]
    float64 origins and directions, [3 corners, 3 axes, N] triangles -> [N] distance, ``nan`` for a miss."""
    a = corners[0]
    ab, ac = corners[1] - a, corners[2] - a
    p = _cross(directions, ac)
    det = _dot(ab, p)
    ok = det.abs() > 1e-12 * torch.sqrt(_dot(ab, ab) * _dot(ac, ac))
    inv = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    s = origins - a
    u = _dot(s, p) * inv
    q = _cross(s, ab)
    v = _dot(directions, q) * inv
    t = _dot(ac, q) * inv
    inside = ok & (u >= 0.0) & (v >= 0.0) & (u + v <= 1.0)
    return torch.where(inside, t, torch.full_like(t, torch.nan))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products of axis-major [3, N] tensors -> [N], summed in the numpy version's order."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross products of axis-major [3, N] tensors -> [3, N]."""
    return torch.stack((a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]))
