"""Image augmentations in torch: random crops and random perspective, sampled in one pass.

Each augmented image is described by a sampling grid (output pixel -> source position, in
``grid_sample``'s normalized [-1, 1] coordinates); a crop is an affine map and the perspective a
homography, and their composition is one grid, so every augmented image costs one bilinear
lookup into its source render. All random draws come from an explicit CPU generator (the same
draws on every device); the grids themselves are built on the device that samples them, so a GPU
step neither computes them on its host nor copies them over (docs/architecture.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def identity_grid(count: int, size: int, *, dtype=torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """[count, size, size, 2] normalized (x, y) of the output pixel centres, on ``device``."""
    coords = (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2.0 - 1.0
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack((x, y), dim=-1).expand(count, size, size, 2)


def grid_base(size: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size * size, 3] float64 homogeneous ``(x, y, 1)`` of the output pixel centres (row-major,
    normalized as :func:`identity_grid`), on the device that builds grids for ``device``
    (:func:`float64_device`). It depends on the size alone: a caller that builds many grids of one
    size keeps it and passes it to :func:`perspective_grid`."""
    plane = identity_grid(1, size, dtype=torch.float64, device=float64_device(torch.device(device)))
    return torch.cat((plane.reshape(-1, 2), plane.new_ones(size * size, 1)), 1)


def perspective_grid(
    count: int, size: int, *, p: float, distortion: float, generator: torch.Generator,
    device: torch.device | str = "cpu", base: torch.Tensor | None = None,
) -> torch.Tensor:
    """[count, size, size, 2] float32 grids on ``device``; each is, with probability ``p``, a random
    perspective warp.

    Like torchvision's RandomPerspective: each image corner moves inwards by up to
    ``distortion`` of the half side, and the image is warped so that the corners land there.
    The draws and the [count, 3, 3] homographies (the identity for an image left unwarped) are
    computed on the CPU; the grids, on ``device``, as one batched product with ``base`` (the
    :func:`grid_base` of this size and device; made here when None), in float64 on every device
    (an Apple GPU has no float64, so its grids are built on the CPU and copied over).
    """
    target = torch.device(device)
    base = grid_base(size, device=target) if base is None else base
    apply = torch.rand(count, generator=generator) < p
    shifts = torch.rand(count, 4, 2, generator=generator, dtype=torch.float64) * distortion
    warped = apply.nonzero().squeeze(1)  # on the CPU: no wait for the device
    if warped.numel() == 0 or distortion == 0.0:
        return base[:, :2].float().view(1, size, size, 2).repeat(count, 1, 1, 1).to(target)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    inward = -torch.sign(corners)  # direction to move each corner into the image
    moved = corners + inward * shifts  # where each source corner lands in the output
    homography = torch.eye(3, dtype=torch.float64).repeat(count, 1, 1)  # output -> source
    homography[warped] = _homography(moved[warped], corners.expand(warped.numel(), 4, 2))
    # the identity maps (x, y, 1) to itself exactly (x * 1 + y * 0 + 0, then / 1)
    mapped = base @ homography.to(base.device).transpose(1, 2)  # [count, size * size, 3]
    return (mapped[..., :2] / mapped[..., 2:]).view(count, size, size, 2).float().to(target)


def float64_device(device: torch.device) -> torch.device:
    """Where float64 work meant for ``device`` runs: ``device`` itself, or the CPU for an Apple GPU
    (MPS has no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


def crop_boxes(count: int, *, area: float, generator: torch.Generator) -> torch.Tensor:
    """[count, 4] random crops (centre x, centre y, half width, half height), normalized coords.

    Each covers ``area`` of the image with an aspect ratio log-uniform in [3/4, 4/3], inside it.
    """
    log_ratio = (torch.rand(count, generator=generator) * 2.0 - 1.0) * math.log(4.0 / 3.0)
    ratio = torch.exp(log_ratio)
    half_w = (torch.sqrt(area * ratio)).clamp(max=1.0)
    half_h = (torch.sqrt(area / ratio)).clamp(max=1.0)
    centre = (torch.rand(count, 2, generator=generator) * 2.0 - 1.0) * torch.stack((1.0 - half_w, 1.0 - half_h), -1)
    return torch.cat((centre, half_w[:, None], half_h[:, None]), dim=-1)


def cycling_sources(count: int, renders: int) -> torch.Tensor | None:
    """[count] int64: the render each of ``count`` outputs samples, cycling through ``renders``
    (for :func:`resample`); None where each output samples the render of its own index (count ==
    renders), which :func:`resample` then reads without copying them."""
    return None if count == renders else torch.arange(count) % renders


def resample(
    images: torch.Tensor, source: torch.Tensor | None, grid: torch.Tensor, *, fill: float = 1.0
) -> torch.Tensor:
    """Sample augmented images.

    Args:
        images: [N, C, H, W] source renders (differentiable).
        source: [B] int64, which render each output samples; None: output i samples image i (B = N).
        grid: [B, S, S, 2] normalized source positions.
        fill: value for positions outside the source (white, as the render background).
    Returns:
        [B, C, S, S].
    """
    grid = grid.to(images.device, images.dtype)
    if fill != 0.0:  # a channel of ones tells the covered share of each output pixel
        images = torch.cat((images, torch.ones_like(images[:, :1])), dim=1)
    if source is not None:
        images = images.index_select(0, source.to(images.device))  # deterministic backward
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if fill == 0.0:  # the zero padding is the fill
        return sampled
    values, inside = sampled[:, :-1], sampled[:, -1:]
    return values + (1.0 - inside) * fill


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] homographies mapping 4 points ``src`` [B, 4, 2] to ``dst`` [B, 4, 2]."""
    b = src.shape[0]
    ones, zeros = torch.ones_like(src[..., :1]), torch.zeros_like(src)  # [B, 4, 1], [B, 4, 2]
    products = -dst[..., :, None] * src[..., None, :]  # [B, 4, 2, 2]: (-u x, -u y), (-v x, -v y)
    rows_u = torch.cat((src, ones, zeros, zeros[..., :1], products[..., 0, :]), -1)  # x, y, 1, 0, 0, 0, -ux, -uy
    rows_v = torch.cat((zeros, zeros[..., :1], src, ones, products[..., 1, :]), -1)  # 0, 0, 0, x, y, 1, -vx, -vy
    a = torch.cat((rows_u, rows_v), dim=1)  # [B, 8, 8]
    rhs = dst.transpose(1, 2).reshape(b, 8, 1)  # u0..u3, v0..v3
    h = torch.linalg.solve(a, rhs).squeeze(-1)
    return torch.cat((h, h.new_ones(b, 1)), dim=1).view(b, 3, 3)
