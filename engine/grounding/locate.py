"""Localization once per run (METHOD section 5.1): untextured views -> part boxes -> part weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Cameras
from ..config import Settings
from ..errors import PartNotFound
from ..events import CancelToken
from ..parts import PartWeights
from ..render import Renderer
from .detector import GroundingDetector
from .lift import PartBoxes, lift_boxes, localization_views, visibility

# Albedo of the untextured views the detector sees.
UNTEXTURED_GRAY = 0.7
# A part is "found" when at least this many vertices end up assigned to it.
MIN_PART_VERTICES = 3

# Views the grounding model sees at once: bounds memory at 800 px, and is how often cancel is checked.
DETECT_BATCH = 2

# (images [N, 3, H, W] in 0..1, part names) -> per view, per part: boxes above the threshold.
BoxDetector = Callable[[torch.Tensor, list[str]], list[list[PartBoxes]]]


def detector_boxes(detector: GroundingDetector, threshold: float, cancel: CancelToken | None = None) -> BoxDetector:
    """A :data:`BoxDetector` over a grounding model: each view's boxes, split per part.

    Views go through the model ``DETECT_BATCH`` at a time; ``cancel`` is checked between batches.
    """

    def detect(images: torch.Tensor, phrases: list[str]) -> list[list[PartBoxes]]:
        found = []
        for chunk in images.split(DETECT_BATCH):
            if cancel is not None:
                cancel.raise_if_cancelled()
            found += detector.detect(chunk, phrases, box_threshold=threshold)
        return [
            [PartBoxes(d.boxes.cpu().numpy(), d.scores[:, k].cpu().numpy()) for k in range(len(phrases))]
            for d in found
        ]

    return detect


@dataclass(frozen=True)
class Localization:
    """Where each part is.

    Attributes:
        weights: the lifted per-vertex part weights.
        boxes: ``boxes[view][part]`` as detected.
        images: [N, H, W, 3] float32 the untextured views the detector saw.
        cameras: the N views.
    """

    weights: PartWeights
    boxes: list[list[PartBoxes]]
    images: np.ndarray
    cameras: Cameras


def locate(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    parts: list[str],
    detect: BoxDetector,
    settings: Settings,
) -> Localization:
    """Find ``parts`` on a unit-frame mesh ([V, 3] vertices, [F, 3] faces) with a box detector.

    Raises :class:`PartNotFound` when a part has no support in any view, naming the parts found.
    """
    loc = settings.localize
    cameras = localization_views(loc, settings.views, settings.render, device=vertices.device)
    seen = visibility(vertices, faces, cameras, loc.resolution)
    gray = torch.full_like(vertices, UNTEXTURED_GRAY)
    with torch.no_grad():
        images = Renderer(settings.render).render(vertices, faces, cameras, colors=gray, face_id=seen.face_id).color
    boxes = detect(images, list(parts))
    weights = lift_boxes(seen, boxes, tuple(parts), faces, loc)
    check_support(weights, boxes)
    return Localization(weights, boxes, images.permute(0, 2, 3, 1).cpu().numpy(), cameras.to("cpu"))


def check_support(weights: PartWeights, boxes: list[list[PartBoxes]]) -> None:
    """Raise :class:`PartNotFound` for parts no box supports or no vertex ended up in."""
    assigned = np.bincount(weights.labels() + 1, minlength=weights.num_parts + 1)[1:]
    found, missing = [], []
    for k, name in enumerate(weights.names):
        has_boxes = any(len(view[k].scores) for view in boxes)
        (found if has_boxes and assigned[k] >= MIN_PART_VERTICES else missing).append(name)
    if missing:
        raise PartNotFound(
            f"could not find {', '.join(repr(m) for m in missing)} on the mesh "
            f"(found: {', '.join(repr(f) for f in found) or 'no part'}); reword the part "
            "(e.g. a more common name), or give the parts by hand (vertex groups / --parts-from)."
        )
