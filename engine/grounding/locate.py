"""Localization once per run (METHOD section 5.1): untextured views -> part boxes -> pixel masks ->
votes on the mesh's patches -> settled part weights."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..cameras import Cameras
from ..config import Settings
from ..errors import PartNotFound
from ..events import CancelToken
from ..geometry.patches import Patches, segment_patches
from ..parts import PartWeights
from ..render import Renderer
from .detector import GroundingDetector
from .masks import box_masks, segmented_masks
from .segmenter import BoxSegmenter
from .settle import face_votes, settle_labels
from .views import PartBoxes, Visibility, localization_views, visibility

# Albedo of the untextured views the detector sees.
UNTEXTURED_GRAY = 0.7
# A part is "found" when at least this many vertices end up assigned to it.
MIN_PART_VERTICES = 3

# Views the grounding model sees at once: bounds memory at 800 px, and is how often cancel is checked.
DETECT_BATCH = 2

# (images [N, 3, H, W] in 0..1, part names) -> per view, per part: boxes above the threshold.
BoxDetector = Callable[[torch.Tensor, list[str]], list[list[PartBoxes]]]
# (images [N, 3, H, W] in 0..1, boxes[view][part]) -> [N, K, H, W] float32 evidence in 0..1.
MaskSource = Callable[[torch.Tensor, list[list[PartBoxes]]], np.ndarray]


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


def segmenter_masks(segmenter: BoxSegmenter, threshold: float, cancel: CancelToken | None = None) -> MaskSource:
    """A :data:`MaskSource` refining each part's best box per view with ``segmenter``."""
    return lambda images, boxes: segmented_masks(images, boxes, segmenter, threshold, cancel)


def rectangle_masks(settings: Settings) -> MaskSource:
    """A :data:`MaskSource` giving the boxes themselves as filled rectangles (``evidence=boxes``)."""
    return lambda images, boxes: box_masks(boxes, images.shape[-1], settings.localize)


@dataclass(frozen=True)
class Localization:
    """Where each part is.

    Attributes:
        weights: the settled per-vertex part weights (exactly keep where no part won).
        boxes: ``boxes[view][part]`` as detected.
        masks: [N, K, H, W] float32 the per-pixel evidence the labels were settled from.
        images: [N, H, W, 3] float32 the untextured views the detector saw.
        cameras: the N views.
        part_confidence: per part name, 0..1: the mean share of the evidence for the part over the
            faces it got.
        face_labels: [F] int64 part index per face, -1 keep.
    """

    weights: PartWeights
    boxes: list[list[PartBoxes]]
    masks: np.ndarray
    images: np.ndarray
    cameras: Cameras
    part_confidence: dict[str, float]
    face_labels: np.ndarray


@dataclass(frozen=True)
class LocalizationViews:
    """The views of a localization, rendered once: ``cameras``, the visibility pass ``seen`` and the
    untextured ``images`` [N, 3, H, W] in 0..1."""

    cameras: Cameras
    seen: Visibility
    images: torch.Tensor


def render_views(vertices: torch.Tensor, faces: torch.Tensor, settings: Settings) -> LocalizationViews:
    """The untextured localization views of a unit-frame mesh ([V, 3] vertices, [F, 3] faces)."""
    loc = settings.localize
    cameras = localization_views(loc, settings.views, settings.render, device=vertices.device)
    seen = visibility(vertices, faces, cameras, loc.resolution)
    gray = torch.full_like(vertices, UNTEXTURED_GRAY)
    with torch.no_grad():
        images = Renderer(settings.render).render(vertices, faces, cameras, colors=gray, face_id=seen.face_id).color
    return LocalizationViews(cameras, seen, images)


def settle_masks(views: LocalizationViews, masks: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                 parts: tuple[str, ...], settings: Settings, patches: Patches | None = None, *,
                 source: str = "grounding"):
    """Settle part labels on the mesh from per-view evidence ``masks`` [N, K, H, W] of the first N
    views (see ``settle.py``)."""
    patches = patches if patches is not None else segment_patches(vertices, faces)
    votes = face_votes(views.seen.face_id[: len(masks)].cpu().numpy(), masks, len(faces))
    return settle_labels(votes, patches, vertices, faces, parts, smoothness=settings.localize.smoothness,
                         band=settings.localize.band, source=source)


def locate(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    parts: list[str],
    detect: BoxDetector,
    masks: MaskSource,
    settings: Settings,
    on_progress: Callable[[PartWeights, int, int], None] | None = None,
) -> Localization:
    """Find ``parts`` on a unit-frame mesh ([V, 3] vertices, [F, 3] faces): boxes from ``detect``,
    evidence from ``masks``, labels settled on the mesh's patches.

    The views go through the models the first alone, then ``DETECT_BATCH`` at a time; after each
    batch but the last, ``on_progress(weights, views done, views)`` receives the labels settled from
    the views so far (a live preview of where the parts are; it costs one settling per batch).

    Raises :class:`PartNotFound` when a part has no support in any view, naming the parts found.
    """
    views = render_views(vertices, faces, settings)
    unit, face_array = vertices.cpu().numpy(), faces.cpu().numpy()
    patches = segment_patches(unit, face_array)
    count = views.images.shape[0]
    boxes: list[list[PartBoxes]] = []
    evidence: list[np.ndarray] = []
    bounds = [0, *range(1, count, DETECT_BATCH), count]  # the first view alone: the first preview comes soonest
    for start, done in itertools.pairwise(bounds):
        batch = views.images[start:done]
        found = detect(batch, list(parts))
        boxes += found
        evidence.append(masks(batch, found))
        if on_progress is not None and done < count:
            so_far = settle_masks(views, np.concatenate(evidence), unit, face_array, tuple(parts), settings, patches)
            on_progress(so_far.weights, done, count)
    evidence = np.concatenate(evidence)
    settled = settle_masks(views, evidence, unit, face_array, tuple(parts), settings, patches)
    check_support(settled.weights, boxes)
    return Localization(settled.weights, boxes, evidence, views.images.permute(0, 2, 3, 1).cpu().numpy(),
                        views.cameras.to("cpu"), settled.part_confidence, settled.face_labels)


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
