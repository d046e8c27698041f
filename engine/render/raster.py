"""Visibility: which face covers each pixel (z-buffer), without gradients.

The pass enumerates, for every face, exactly the pixel centres inside its screen bounding box
(a ragged expansion, so a face that covers no pixel centre costs nothing), tests them against
the triangle's edge functions, and keeps the nearest face per pixel with one ``scatter_reduce``
over a packed 64-bit key ``(depth bits << 32) | face``: the float32 bit pattern of a positive
depth orders like the depth itself, so ``amin`` over the key picks the nearest face and carries
its id. Work grows with (faces + covered pixels x depth complexity), not faces x pixels, and the
same code runs on CPU and CUDA.

Gradients come from the second pass (``fragments.py``), which recomputes the barycentrics of the
visible pixels differentiably; silhouettes are not differentiated (METHOD section 3).
"""

from __future__ import annotations

import itertools

import torch

# Pixel/face candidates processed at once: bounds the temporary memory to a few hundred MB.
MAX_PAIRS_PER_CHUNK = 1 << 22
_NO_FACE = torch.iinfo(torch.int64).max
_LOW_32 = 0xFFFFFFFF


@torch.no_grad()
def rasterize(
    xy: torch.Tensor,
    depth: torch.Tensor,
    faces: torch.Tensor,
    resolution: int,
    *,
    near: float = 1e-3,
    max_pairs: int = MAX_PAIRS_PER_CHUNK,
) -> torch.Tensor:
    """Nearest face per pixel.

    Args:
        xy: [N, V, 2] pixel coordinates of the vertices in each view (top-left origin, y down).
        depth: [N, V] view depth of the vertices (positive in front of the camera).
        faces: [F, 3] int64 vertex indices.
        resolution: image side in pixels.
        near: faces with a vertex closer than this are skipped (no near-plane clipping: the
            cameras orbit outside the unit sphere, so the mesh is always in front of them).
    Returns:
        face_id: [N, H, W] int64, the index of the visible face, -1 where no face covers the pixel.
    """
    n_views = xy.shape[0]
    n_faces = faces.shape[0]
    if n_faces >= 2**31:
        raise ValueError("meshes with 2^31 faces or more are not supported")
    size = resolution
    corners = xy.permute(2, 0, 1)[:, :, faces].to(torch.float32)  # [2 (x, y), N, F, 3]
    corner_depth = depth[:, faces].to(torch.float32)  # [N, F, 3]
    inv_z = 1.0 / corner_depth.clamp(min=near)
    in_front = (corner_depth > near).all(-1)

    # x and y together ([2, N, F] planes): the pixel centres inside each face's bounding box.
    low = torch.ceil(corners.amin(-1) - 0.5).clamp(min=0)  # x_lo, y_lo
    high = torch.floor(corners.amax(-1) - 0.5).clamp(max=size - 1)
    extent = (high - low + 1).clamp(min=0)  # width, height

    # Barycentrics are affine in the pixel position; measured from vertex 0 so that float32 keeps
    # its precision on tiny triangles: b1 = ((y2 - y0) dx - (x2 - x0) dy) / area2 and
    # b2 = ((x1 - x0) dy - (y1 - y0) dx) / area2.
    edges = corners[..., 1:] - corners[..., :1]  # [2, N, F, 2]: x1 - x0, x2 - x0; y1 - y0, y2 - y0
    (ex1, ex2), (ey1, ey2) = (plane.unbind(-1) for plane in edges)
    area2 = ex1 * ey2 - ex2 * ey1
    usable = in_front & (area2.abs() > 1e-12)
    count = torch.where(usable, extent[0] * extent[1], 0.0).to(torch.int64).flatten()
    candidates = count.nonzero().squeeze(1)
    zbuf = torch.full((n_views * size * size,), _NO_FACE, dtype=torch.int64, device=xy.device)
    if candidates.numel() == 0:
        return torch.full((n_views, size, size), -1, dtype=torch.int64, device=xy.device)

    inv_area = 1.0 / torch.where(usable, area2, 1.0)
    coeffs = torch.cat(
        (
            corners[..., 0],  # x0, y0
            torch.stack((ey2, ex1, ex2, ey1)) * inv_area,  # b1 and b2 are rows 2-3 x (dx, dy) - rows 4-5 x (dy, dx)
            inv_z.permute(2, 0, 1),
            low,
            extent[:1],
        ),
    ).reshape(12, -1)  # [12, N * F]: each (view, face)'s coefficients, as planes

    for chunk, total in _chunks_by_total(candidates, count, max_pairs):
        _rasterize_chunk(chunk, count[chunk], total, coeffs, n_faces, size, zbuf)

    face_id = (zbuf & _LOW_32).masked_fill_(zbuf == _NO_FACE, -1)
    return face_id.view(n_views, size, size)


def _rasterize_chunk(
    flat_ids: torch.Tensor, counts: torch.Tensor, total: int, coeffs: torch.Tensor, n_faces: int, size: int,
    zbuf: torch.Tensor,
) -> None:
    """Enumerate the pixel centres of these (view * F + face) ids and fold them into ``zbuf``;
    ``total`` is ``counts.sum()``, known on the host (reading it again would wait for the device);
    ``coeffs`` [12, N * F] are ``rasterize``'s coefficient planes."""
    device = flat_ids.device
    owner = torch.repeat_interleave(torch.arange(flat_ids.numel(), device=device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - first[owner]
    view_face = flat_ids[owner]  # [P] each candidate's view * F + face
    c = coeffs.index_select(1, view_face)  # [12, P]
    w = c[11].to(torch.int64)
    pixel_xy = c[9:11].to(torch.int64) + torch.stack((local % w, local // w))  # [2, P]: px, py
    offset = pixel_xy.to(torch.float32) + 0.5 - c[0:2]  # dx, dy
    b12 = c[2:4] * offset - c[4:6] * offset.flip(0)  # [2, P]: b1, b2
    b = torch.cat(((1.0 - b12[:1]) - b12[1:], b12))  # [3, P]: b0, b1, b2
    inside = (b >= 0).all(0)
    inv_depth = (b * c[6:9]).sum(0)  # 1/z is affine in screen space
    keep = inside.nonzero().squeeze(1)
    if keep.numel() == 0:
        return
    depth = (1.0 / inv_depth[keep]).contiguous()
    view_face = view_face[keep]
    view = view_face // n_faces
    face = view_face - view * n_faces
    key = (depth.view(torch.int32).to(torch.int64) << 32) | face
    px, py = pixel_xy[:, keep]
    pixel = (view * size + py) * size + px
    zbuf.scatter_reduce_(0, pixel, key, reduce="amin")


def _chunks_by_total(ids: torch.Tensor, count: torch.Tensor, max_total: int) -> list[tuple[torch.Tensor, int]]:
    """Split ``ids`` into consecutive runs of about ``max_total`` pixels (a run ends at the face
    whose running sum passes the next multiple of it): each run with its sum (one read from the
    device for the total, and one for the runs' sums where there are several)."""
    running = torch.cumsum(count[ids], 0)
    total = int(running[-1])
    if total <= max_total:
        return [(ids, total)]
    bounds = torch.searchsorted(running, torch.arange(max_total, total, max_total, device=ids.device), right=True)
    edges = [0, *sorted({int(b) for b in bounds.tolist()}), ids.numel()]
    runs = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    ends = running[torch.tensor([b - 1 for _, b in runs], device=ids.device)].tolist()
    return [(ids[a:b], end - start) for (a, b), end, start in zip(runs, ends, [0, *ends[:-1]], strict=True)]
