"""Lifting 2D part boxes to per-vertex part weights (METHOD section 5.1).

For each view, a vertex that the view sees (it belongs to a face the rasterizer found visible)
and that projects inside a part's box receives that box's score, scaled down near the box
border; scores accumulate over views and are divided by how often the vertex was seen. Parts then
compete with a constant *rest* score through a softmax, and the weights are smoothed over the
mesh's vertex graph (vertices no view saw take their neighbours' weights). Boxes overlap where
parts do not; the multi-view average and the competition are what keep a part's style from
leaking onto its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Cameras, fixed_views
from ..config import LocalizeSettings, RenderSettings, ViewSettings
from ..geometry.graph import VertexGraph
from ..parts import PartWeights
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


def lift_boxes(
    seen: Visibility,
    boxes: list[list[PartBoxes]],
    part_names: tuple[str, ...],
    faces: torch.Tensor,
    settings: LocalizeSettings,
) -> PartWeights:
    """Per-vertex part weights from per-view, per-part boxes.

    Args:
        seen: the views' :class:`Visibility`.
        boxes: ``boxes[view][part]`` for every view and part of ``part_names``.
        faces: [F, 3] int64, for the vertex graph.
    """
    xy = seen.xy.cpu().numpy()
    visible = seen.visible.cpu().numpy()
    n_views, n_vertices = visible.shape
    k = len(part_names)
    total = np.zeros((n_vertices, k), np.float64)
    for view in range(n_views):
        for part in range(k):
            total[:, part] += _box_scores(xy[view], boxes[view][part], settings) * visible[view]
    times_seen = visible.sum(0)
    known = times_seen > 0
    mean = np.where(known[:, None], total / np.maximum(times_seen, 1)[:, None], 0.0)
    logits = np.concatenate((mean, np.full((n_vertices, 1), settings.rest_score)), 1) / settings.temperature
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    graph = VertexGraph(faces.cpu().numpy(), n_vertices)
    weights = graph.fill(weights, known)
    confidence = graph.fill(mean.max(1, keepdims=True) if k else np.zeros((n_vertices, 1)), known)[:, 0]
    for _ in range(settings.smoothing_iterations):
        weights = 0.5 * weights + 0.5 * graph.mean_of_neighbours(weights)
    return PartWeights(
        tuple(part_names), weights.astype(np.float32), np.clip(confidence, 0, 1).astype(np.float32), "grounding"
    )


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


def _box_scores(xy: np.ndarray, part: PartBoxes, settings: LocalizeSettings) -> np.ndarray:
    """[V] best score over ``part``'s boxes at each vertex position [V, 2], border-weighted."""
    best = np.zeros(xy.shape[0])
    for (x0, y0, x1, y1), score in zip(part.boxes, part.scores, strict=True):
        if score <= settings.box_threshold:
            continue
        inside_distance = np.minimum.reduce([xy[:, 0] - x0, x1 - xy[:, 0], xy[:, 1] - y0, y1 - xy[:, 1]])
        ramp = max(settings.border_falloff * min(x1 - x0, y1 - y0), 1e-6)
        border = settings.border_weight + (1.0 - settings.border_weight) * np.clip(inside_distance / ramp, 0.0, 1.0)
        best = np.maximum(best, np.where(inside_distance >= 0, score * border, 0.0))
    return best
