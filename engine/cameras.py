"""Pinhole cameras orbiting the unit-frame origin, view sampling, and projection to pixels.

Angles follow T2M: elevation above the horizontal plane, azimuth around the up axis, azimuth 0
being the *front* of the object (+Z for a Y-up object, -Y for a Z-up object, as in Blender's
front view). Pixel coordinates have their origin at the top-left image corner, x to the right,
y down; pixel (i, j) has its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import RenderSettings, ViewSettings

# Elevations are clamped here so that no view looks straight down the up axis (an undefined
# orientation) or flips the object upside down, which CLIP scores poorly.
MAX_ELEVATION_DEGREES = 80.0


@dataclass(frozen=True)
class Cameras:
    """N cameras looking at the origin.

    Attributes:
        eye: [N, 3] camera positions, unit frame.
        right, up, forward: [N, 3] orthonormal camera axes, unit frame (``forward`` points from the
            camera to the origin).
        elevation, azimuth: [N] radians, as sampled (for records).
        fov_y: vertical field of view in radians.
    """

    eye: torch.Tensor
    right: torch.Tensor
    up: torch.Tensor
    forward: torch.Tensor
    elevation: torch.Tensor
    azimuth: torch.Tensor
    fov_y: float

    def __len__(self) -> int:
        return int(self.eye.shape[0])

    def to(self, device: torch.device | str) -> Cameras:
        """The same cameras with their tensors on ``device``."""
        return Cameras(
            *(t.to(device) for t in (self.eye, self.right, self.up, self.forward, self.elevation, self.azimuth)),
            fov_y=self.fov_y,
        )

    def project(self, points: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Project unit-frame points into each camera's image.

        Args:
            points: [V, 3] (shared by all views) or [N, V, 3], unit frame.
            resolution: image side in pixels (square images).
        Returns:
            xy: [N, V, 2] pixel coordinates (x right, y down, top-left origin), laid out as x and y
                planes ([2, N, V] permuted: ``xy.permute(2, 0, 1)`` is contiguous).
            depth: [N, V] distance along the viewing axis (positive in front of the camera).
        """
        rel = points.unsqueeze(0) - self.eye[:, None, :] if points.dim() == 2 else points - self.eye[:, None, :]
        # The coordinates along right, -up (image y points down) and forward as planes [3, N, V]: one
        # product and one sum for all three axes (few operations on a GPU, forward and backward).
        axes = torch.stack((self.right, -self.up, self.forward))  # [3, N, 3]
        coordinates = (rel * axes[:, :, None, :]).sum(-1)
        depth = coordinates[2]
        focal = 1.0 / math.tan(self.fov_y / 2.0)
        half = resolution / 2.0
        xy = (focal * coordinates[:2] / depth.clamp(min=1e-6) + 1.0) * half  # [2, N, V]
        return xy.permute(1, 2, 0), depth


def up_axis_basis(up_axis: str, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[3, 3] rotation from the canonical Y-up orbit frame to the object's frame."""
    if up_axis == "y":
        m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    elif up_axis == "z":  # canonical (x, y, z) -> object (x, -z, y): front camera at -Y, up +Z
        m = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    else:
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    return torch.tensor(m, dtype=dtype, device=device)


def orbit_cameras(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    *,
    radius: float,
    fov_y: float,
    up_axis: str = "y",
) -> Cameras:
    """Cameras at the given angles (radians, [N] each) on a sphere of ``radius`` around the origin."""
    elevation = elevation.clamp(-math.radians(MAX_ELEVATION_DEGREES), math.radians(MAX_ELEVATION_DEGREES))
    ce, se = torch.cos(elevation), torch.sin(elevation)
    ca, sa = torch.cos(azimuth), torch.sin(azimuth)
    direction = torch.stack((ce * sa, se, ce * ca), dim=-1)  # canonical Y-up, origin -> camera
    up = torch.stack((-se * sa, ce, -se * ca), dim=-1)  # d(direction)/d(elevation): never degenerate
    basis = up_axis_basis(up_axis, dtype=direction.dtype, device=direction.device)
    direction, up = direction @ basis.T, up @ basis.T
    forward = -direction
    right = torch.linalg.cross(forward, up, dim=-1)
    return Cameras(
        eye=direction * radius,
        right=right,
        up=up,
        forward=forward,
        elevation=elevation,
        azimuth=azimuth,
        fov_y=fov_y,
    )


def sample_views(
    count: int,
    views: ViewSettings,
    render: RenderSettings,
    generator: torch.Generator,
    *,
    device: torch.device | str = "cpu",
) -> Cameras:
    """The front view plus ``count - 1`` views jittered around it (T2M's sampling).

    All randomness comes from ``generator`` (a CPU generator, so the same seed gives the same
    views on every device).
    """
    front_e = math.radians(views.front_elevation_degrees)
    front_a = math.radians(views.front_azimuth_degrees)
    jitter = torch.randn(max(count - 1, 0), 2, generator=generator, dtype=torch.float64)
    elevation = torch.cat(
        (
            torch.tensor([front_e], dtype=torch.float64),
            front_e + jitter[:, 0] * math.radians(views.elevation_std_degrees),
        )
    )
    azimuth = torch.cat(
        (torch.tensor([front_a], dtype=torch.float64), front_a + jitter[:, 1] * math.radians(views.azimuth_std_degrees))
    )
    return fixed_views(elevation[:count], azimuth[:count], views, render, device=device)


def ring_views(
    count: int,
    views: ViewSettings,
    render: RenderSettings,
    *,
    elevation_degrees: float = 20.0,
    device: torch.device | str = "cpu",
) -> Cameras:
    """``count`` views evenly spaced in azimuth starting at the front (previews, localization)."""
    azimuth = torch.arange(count, dtype=torch.float64) * (2.0 * math.pi / count) + math.radians(
        views.front_azimuth_degrees
    )
    elevation = torch.full((count,), math.radians(elevation_degrees), dtype=torch.float64)
    return fixed_views(elevation, azimuth, views, render, device=device)


def fixed_views(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    views: ViewSettings,
    render: RenderSettings,
    *,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras at explicit angles (radians, [N] each) with the run's radius, field of view and up axis."""
    return orbit_cameras(
        elevation.to(torch.float32),
        azimuth.to(torch.float32),
        radius=render.camera_radius,
        fov_y=math.radians(render.fov_degrees),
        up_axis=views.up_axis,
    ).to(device)
