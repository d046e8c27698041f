"""Differentiable per-pixel quantities for the pixels a face covers.

Given the face ids of the visibility pass, the perspective-correct barycentrics of every covered
pixel are recomputed from the (differentiable) projected vertices, so gradients reach vertex
positions through interpolation and shading, and vertex attributes through interpolation. Only
covered pixels are stored ("packed"): K of them over all views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a [R, ...] table and an integer index of any shape.

    Uses ``index_select``, whose backward (``index_add_``) is deterministic on the CPU, unlike
    advanced indexing's (``index_put_`` with accumulation, which races across threads): the same
    seed must give the same result bit for bit.
    """
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


@dataclass(frozen=True)
class Fragments:
    """The covered pixels of a batch of views, packed.

    Attributes:
        pixel: [K] int64 flat index into [N * H * W].
        view: [K] int64 view index.
        face: [K] int64 visible face.
        vertex: [K, 3] int64 the face's vertex indices.
        bary: [K, 3] perspective-correct barycentrics (sum to 1), differentiable w.r.t. positions.
        shape: (N, H, W).
    """

    pixel: torch.Tensor
    view: torch.Tensor
    face: torch.Tensor
    vertex: torch.Tensor
    bary: torch.Tensor
    shape: tuple[int, int, int]

    def interpolate(self, attributes: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes [V, C] -> per-fragment values [K, C]."""
        return (gather_rows(attributes, self.vertex) * self.bary.unsqueeze(-1)).sum(1)

    def to_image(self, values: torch.Tensor, background: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Packed values [K, C] -> images [N, C, H, W] with ``background`` ([C] or scalar) elsewhere."""
        n, h, w = self.shape
        channels = values.shape[-1]
        bg = torch.as_tensor(background, dtype=values.dtype, device=values.device).expand(channels)
        dense = bg.expand(n * h * w, channels).clone()
        dense = dense.index_put((self.pixel,), values)
        return dense.view(n, h, w, channels).permute(0, 3, 1, 2)

    def coverage(self) -> torch.Tensor:
        """[N, 1, H, W] float: 1 where a face is visible, else 0 (hard, not differentiable)."""
        n, h, w = self.shape
        alpha = torch.zeros(n * h * w, device=self.pixel.device)
        alpha[self.pixel] = 1.0
        return alpha.view(n, 1, h, w)


def fragments_from_face_ids(
    face_id: torch.Tensor, xy: torch.Tensor, depth: torch.Tensor, faces: torch.Tensor
) -> Fragments:
    """Build :class:`Fragments` from a visibility pass.

    Args:
        face_id: [N, H, W] int64 from :func:`rasterize` (-1 = background).
        xy: [N, V, 2] pixel coordinates of the vertices (may require grad).
        depth: [N, V] view depths of the vertices (may require grad).
        faces: [F, 3] int64.
    """
    n, h, w = face_id.shape
    n_vertices = xy.shape[1]
    flat = face_id.reshape(-1)
    pixel = (flat >= 0).nonzero().squeeze(1)
    face = flat[pixel]
    view = torch.div(pixel, h * w, rounding_mode="floor")
    rem = pixel - view * (h * w)
    py = torch.div(rem, w, rounding_mode="floor")
    px = rem - py * w
    vertex = faces[face]  # [K, 3]
    # The corners' coordinates as planes with the fragments innermost, [2 (x, y), 3 corners, K] and
    # [3, K]: each operation below is then one vectorized pass over K on a CPU, and one kernel on a GPU
    # (index_select for its deterministic backward, as in gather_rows).
    corner_rows = (view * n_vertices + vertex.t()).reshape(-1)  # [3 * K] rows of [N * V], corner-major
    tri = xy.reshape(-1, 2).t().index_select(1, corner_rows).view(2, 3, -1)
    z = depth.reshape(-1).index_select(0, corner_rows).view(3, -1)

    # Screen-space barycentrics from vertex 0 (precise for small triangles): with the pixel centre's
    # offset d = p - v0 and the edges e1 = v1 - v0, e2 = v2 - v0, b1 = (d x e2) / (e1 x e2) and
    # b2 = (e1 x d) / (e1 x e2). The three 2D cross products come together: of the rows (e2, d, e1, e2),
    # each with the next (u x v = u_x v_y - v_x u_y, and u x v = -(v x u) exactly).
    centre = torch.stack((px, py)).to(tri.dtype) + 0.5  # [2, K]
    rows = torch.cat((tri[:, 2:], centre.unsqueeze(1), tri[:, 1:]), dim=1) - tri[:, :1]  # [2, 4, K]
    products = rows[:, :3] * rows[:, 1:].flip(0)  # [2, 3, K]: u_x v_y and u_y v_x of each row u and the next v
    crosses = products[0] - products[1]  # [3, K]: -(d x e2), -(e1 x d), e1 x e2
    area2 = crosses[2:]
    area2 = torch.where(area2.abs() > 1e-12, area2, 1e-12)
    b12 = crosses[:2] / -area2  # [2, K]: b1, b2
    screen = torch.cat(((1.0 - b12[:1]) - b12[1:], b12))  # [3, K]
    # Perspective correction: b_k / z_k renormalized.
    weighted = screen / z.clamp(min=1e-6)
    bary = (weighted / weighted.sum(0, keepdim=True)).t().contiguous()  # [K, 3]
    return Fragments(pixel=pixel, view=view, face=face, vertex=vertex, bary=bary, shape=(n, h, w))
