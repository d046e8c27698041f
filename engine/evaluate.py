"""``python -m engine eval-localization``: how well parts are found, against exact labels.

For each procedural sample (its parts carry exact per-vertex labels) the localization is scored
by the IoU of each part's lifted vertices with its true vertices:
- ``ideal``: boxes computed from the true labels (the extent of each part's visible labelled
  vertices in each view), so the figure measures the lifting alone;
- ``model``: boxes from the grounding model of a model source, the full localization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .api import locate_parts, resolve_device
from .config import Settings
from .errors import PartNotFound
from .grounding.lift import boxes_from_labels, lift_boxes, localization_views, visibility
from .models import ModelStore
from .samples import SAMPLE_NAMES, sample_mesh


@dataclass(frozen=True)
class LocalizationScore:
    """IoU per part of one sample with one box source; ``error`` when localization failed."""

    sample: str
    source: str
    iou: dict[str, float]
    error: str = ""

    @property
    def miou(self) -> float:
        return float(np.mean(list(self.iou.values()))) if self.iou else 0.0


def evaluate_localization(
    settings: Settings, *, store: ModelStore | None = None, device: str = "auto", faces: int = 20_000
) -> list[LocalizationScore]:
    """Score ideal boxes on every sample, and the grounding model of ``store`` when given."""
    dev = resolve_device(device)
    scores = []
    for name in SAMPLE_NAMES:
        mesh = sample_mesh(name, faces)
        vertices = torch.from_numpy(mesh.unit_vertices()).to(dev)
        faces_t = torch.from_numpy(mesh.faces).to(dev)
        cameras = localization_views(settings.localize, settings.views, settings.render, device=dev)
        seen = visibility(vertices, faces_t, cameras, settings.localize.resolution)
        boxes = boxes_from_labels(seen, mesh.labels, len(mesh.label_names))
        weights = lift_boxes(seen, boxes, mesh.label_names, faces_t, settings.localize)
        scores.append(LocalizationScore(name, "ideal", weights.iou(mesh.labels, mesh.label_names)))
        if store is not None:
            try:
                found = locate_parts(mesh, list(mesh.label_names), settings=settings, models=store, device=dev)
                scores.append(
                    LocalizationScore(name, store.describe(), found.weights.iou(mesh.labels, mesh.label_names))
                )
            except PartNotFound as exc:
                scores.append(LocalizationScore(name, store.describe(), {}, str(exc)))
    return scores
