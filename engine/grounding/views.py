"""The localization views (METHOD section 5.1): where they look from, what each one sees, and the
part boxes found in them.

The visibility pass gives every pixel the face it shows (the renderer's face ids); localization
lifts per-pixel evidence to faces through it (``settle.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Cameras, fixed_views
from ..config import LocalizeSettings, RenderSettings, ViewSettings
from ..render import rasterize


@dataclass(frozen=True)
class PartBoxes:
    """The boxes of one part in one view.

    Attributes:
        boxes: [M, 4] float32 (x0, y0, x1, y1) in pixels (top-left origin).
        scores: [M] float32 in 0..1.
    """

    boxes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> PartBoxes:
        return PartBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


def localization_views(
    settings: LocalizeSettings, views: ViewSettings, render: RenderSettings, *, device="cpu"
) -> Cameras:
    """``settings.views`` cameras evenly spaced in azimuth, elevations alternating between two values."""
    count = settings.views
    azimuth = torch.arange(count, dtype=torch.float64) * (2.0 * np.pi / count) + np.radians(views.front_azimuth_degrees)
    high, low = settings.elevations_degrees
    elevation = torch.tensor([high if i % 2 == 0 else low for i in range(count)], dtype=torch.float64).deg2rad()
    return fixed_views(elevation, azimuth, views, render, device=device)


@dataclass(frozen=True)
class Visibility:
    """What each view sees of a unit-frame mesh.

    Attributes:
        xy: [N, V, 2] pixel positions of the vertices.
        visible: [N, V] bool, the vertex belongs to a face covering some pixel.
        face_id: [N, H, W] the visibility pass.
    """

    xy: torch.Tensor
    visible: torch.Tensor
    face_id: torch.Tensor


def visibility(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, resolution: int) -> Visibility:
    """Project and rasterize [V, 3] unit-frame ``vertices`` in every view."""
    xy, depth = cameras.project(vertices, resolution)
    face_id = rasterize(xy, depth, faces, resolution)
    n, v = depth.shape
    visible = torch.zeros(n, v, dtype=torch.bool, device=vertices.device)
    for view in range(n):
        seen = face_id[view][face_id[view] >= 0].unique()
        visible[view, faces[seen].reshape(-1)] = True
    return Visibility(xy=xy, visible=visible, face_id=face_id)


def boxes_from_labels(seen: Visibility, labels: np.ndarray, num_parts: int) -> list[list[PartBoxes]]:
    """Ideal boxes: per view and part, the extent of the visible labelled vertices (score 1).

    Used to measure the lifting alone against ground truth, without a detector's errors.
    """
    xy = seen.xy.cpu().numpy()
    visible = seen.visible.cpu().numpy()
    out = []
    for view in range(xy.shape[0]):
        row = []
        for part in range(num_parts):
            points = xy[view][visible[view] & (labels == part)]
            if len(points) == 0:
                row.append(PartBoxes.empty())
            else:
                box = np.concatenate((points.min(0), points.max(0)))[None].astype(np.float32)
                row.append(PartBoxes(box, np.ones(1, np.float32)))
        out.append(row)
    return out
