"""A :class:`~engine.geometry.triangle_tree.TriangleTree`'s nearest ray hits, traced with torch on a
run's device.

The numpy traversal (``TriangleTree._trace``) is the local thickness's cost: about 2 s of one CPU
thread for a 40k-face mesh, and on a GPU machine it runs on the host while the GPU waits. This is
the same breadth-first descent, level by level over all rays of a chunk at once, with the same
operations in the same precisions: float32 slab tests against the tree's float32 boxes and float64
Möller-Trumbore against its float64 triangles, the numpy module's own ``slab_test`` and
``distances_by_axis`` run on tensors. So the distances are the numpy traversal's bit for bit
(``tests/test_geometry.py``). A chunk is 32,768 rays (numpy's is 4,096, for the CPU's caches),
so on a GPU a whole measurement is a few thousand small launches instead of seconds of host time.

Frame: whatever the tree's (the callers use the unit frame).
"""

from __future__ import annotations

import numpy as np
import torch

from .triangle_tree import TriangleTree, descend, distances_by_axis, leaf_triangles, ray_stages, slab_test

#: Rays traced together: bounds the (ray, triangle) pairs held at once (about 1.3 million, 0.4 GB, for
#: the lamp at 40k or 100k faces).
DEVICE_CHUNK = 1 << 15


class DeviceTree:
    """A tree's arrays on ``device``: ``corners`` [3, 3, F] float64 (corner, axis, sorted triangle),
    and per level from the root down, ``lows`` / ``highs`` [3, N_l] float32 (axis-major)."""

    def __init__(self, tree: TriangleTree, device: torch.device | str):
        self.device = torch.device(device)
        self.corners = torch.from_numpy(tree.corners).to(self.device)
        self.lows = [torch.from_numpy(level).to(self.device) for level in tree.lows]
        self.highs = [torch.from_numpy(level).to(self.device) for level in tree.highs]
        self.num_triangles = tree.num_triangles
        self.level_sizes = tree.level_sizes

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
        meets = slab_test(start, inverse, self.lows, self.highs, min_distance, max_distance, xp=torch)
        ray, leaf = descend(meets, torch.arange(len(origins), device=self.device), self.level_sizes)
        ray, triangle = leaf_triangles(ray, leaf, self.num_triangles)
        t = distances_by_axis(origins.T[:, ray], directions.T[:, ray], self.corners[:, :, triangle], xp=torch)
        hit = (t >= min_distance) & (t <= max_distance)  # nan (a miss) compares False
        best = torch.full((len(origins),), torch.inf, dtype=torch.float64, device=self.device)
        return best.scatter_reduce(0, ray[hit], t[hit], reduce="amin")
