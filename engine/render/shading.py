"""Diffuse shading from the face normals of the (displaced) mesh.

A headlight at the camera: shade = ambient + diffuse * |n . l|, with n the face normal of the
visible face (two-sided, so open surfaces such as a lamp shade look the same from inside) and l
the direction to the camera. Face normals depend on the vertex positions, which is what lets
displacement receive gradients from images (METHOD section 3).
"""

from __future__ import annotations

import torch

from .fragments import Fragments, gather_rows


def fragment_face_normals(fragments: Fragments, vertices: torch.Tensor) -> torch.Tensor:
    """[K, 3] unit normals of each fragment's face, from [V, 3] vertex positions (unit frame)."""
    tri = gather_rows(vertices, fragments.vertex)  # [K, 3, 3]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def headlight_shade(
    fragments: Fragments, vertices: torch.Tensor, forward: torch.Tensor, *, ambient: float, diffuse: float
) -> torch.Tensor:
    """[K, 1] shading factor per fragment; ``forward`` is [N, 3], each camera's viewing axis."""
    normal = fragment_face_normals(fragments, vertices)
    facing = (normal * gather_rows(forward, fragments.view)).sum(-1, keepdim=True).abs()
    return ambient + diffuse * facing


def sample_map(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of a map: ``image`` [S, S, C] (row 0 at the top) at ``uv`` [K, 2] (v up, 0..1,
    texel centres at (i + 0.5) / S; clamped at the edges) -> [K, C]."""
    size = image.shape[0]
    x = (uv[:, 0] * size - 0.5).clamp(0, size - 1)
    y = ((1.0 - uv[:, 1]) * size - 0.5).clamp(0, size - 1)
    x0, y0 = x.floor().long().clamp(max=size - 2), y.floor().long().clamp(max=size - 2)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
