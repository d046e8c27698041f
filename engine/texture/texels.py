"""Texels of a UV layout: for each texel of an ``S x S`` map, the face its centre lies in and the
centre's barycentric coordinates in that face.

The UV layout is rasterized with the engine's own rasterizer (``render/raster.py``) as a flat
image: texel ``(row, col)`` has its centre at ``u = (col + 0.5) / S``, ``v = 1 - (row + 0.5) / S``
(row 0 is the image's top, v up as in OpenGL, Blender and OBJ). Where UV islands overlap, the face
with the lowest index wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..mesh import barycentric_blend
from ..render.raster import rasterize


@dataclass(frozen=True)
class TexelSamples:
    """The covered texels of an ``size x size`` map.

    Attributes:
        size: the map's side in texels.
        rows, cols: [T] int64 texel coordinates (row 0 at the top).
        face: [T] int64, the face each texel centre lies in.
        bary: [T, 3] float32 barycentric coordinates of the centre in that face (they sum to 1).
    """

    size: int
    rows: np.ndarray
    cols: np.ndarray
    face: np.ndarray
    bary: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        """[size, size] bool: the texels some face covers."""
        mask = np.zeros((self.size, self.size), bool)
        mask[self.rows, self.cols] = True
        return mask

    def interpolate(self, values: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Per-vertex ``values`` [V, ...] -> [T, ...] at the texel centres (barycentric)."""
        return barycentric_blend(values, faces, self.face, self.bary)

    def image(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """[T, ...] texel values -> a [size, size, ...] image, ``fill`` where no face covers."""
        out = np.full((self.size, self.size, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.rows, self.cols] = values
        return out


def sample_texels(corner_uv: np.ndarray, size: int) -> TexelSamples:
    """The texels of an ``size x size`` map covered by the faces' UV triangles, ``corner_uv``
    [F, 3, 2] (v up)."""
    count = len(corner_uv)
    pixels = np.stack([corner_uv[..., 0] * size, (1.0 - corner_uv[..., 1]) * size], axis=-1).astype(np.float32)
    flat = torch.from_numpy(pixels.reshape(-1, 2))[None]  # each corner a vertex of its own
    face_id = rasterize(flat, torch.ones(1, 3 * count), torch.arange(3 * count).reshape(count, 3), size)[0].numpy()
    rows, cols = np.nonzero(face_id >= 0)
    face = face_id[rows, cols]
    centre = np.stack([cols + 0.5, rows + 0.5], axis=-1).astype(np.float64)
    bary = _barycentric(centre, pixels[face].astype(np.float64))
    return TexelSamples(size, rows.astype(np.int64), cols.astype(np.int64), face.astype(np.int64),
                        bary.astype(np.float32))


def _barycentric(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """[T, 2] points in [T, 3, 2] triangles -> [T, 3] barycentric coordinates, clipped into the
    triangle (a centre on an edge may round a hair outside) and renormalized."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    denominator = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    denominator = np.where(np.abs(denominator) < 1e-20, 1e-20, denominator)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / denominator
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / denominator
    bary = np.clip(np.stack([1.0 - w1 - w2, w1, w2], axis=-1), 0.0, 1.0)
    return bary / bary.sum(axis=-1, keepdims=True)


def per_vertex_uv(faces: np.ndarray, corner_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layout with one uv per vertex, as glTF stores it: each vertex is split where its corners
    have different UVs (a seam). Returns (``source`` [V'] int64, the original vertex of each new one;
    ``faces`` [F, 3] into the new vertices; ``uv`` [V', 2] float32). Without seams V' = V."""
    bits = np.ascontiguousarray(corner_uv.astype(np.float32).reshape(-1, 2)).view(np.int32)
    keys = np.column_stack([faces.reshape(-1), bits]).astype(np.int64)
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    uv = corner_uv.reshape(-1, 2)[first].astype(np.float32)
    return unique[:, 0], inverse.reshape(faces.shape).astype(np.int64), uv
