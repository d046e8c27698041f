"""``python -m engine eval-localization``: how well parts are found, and how well unnamed parts are
left alone, against the procedural samples' exact labels.

For each sample, each evidence source is scored by the IoU of each part's settled vertices with its
true vertices:
- ``ideal masks``: exact per-view part masks (from the true labels and the visibility pass), so the
  figure measures the settling alone;
- ``ideal boxes``: each part's true box per view (the extent of its visible labelled vertices), as
  filled rectangles: the box-only path without a detector's errors;
- with a model source: its grounding model's boxes refined by its segmenter (``masks``), and the
  same boxes as rectangles (``boxes``).

**Leakage.** A prompt that names only some parts (:data:`LEAKAGE_PROMPTS`) is stylized for a few
iterations with parts located from each source; ``untouched`` is the share of the unnamed parts'
vertices whose output color and position are bit-identical to the input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .api import resolve_device, stylize, views_detector
from .config import Settings
from .devices import use_bfloat16
from .errors import PartNotFound
from .geometry.patches import segment_patches
from .grounding.locate import check_support, detector_boxes, render_views, settle_masks
from .grounding.masks import box_masks, label_masks, segmented_masks
from .grounding.segmenter import BoxSegmenter
from .grounding.views import boxes_from_labels
from .mesh import Mesh
from .models import ModelStore
from .prompt import parse_prompt
from .request import StyleRequest
from .samples import SAMPLE_NAMES, sample_mesh

#: Per sample, a prompt that leaves some parts unnamed. A single phrase such as ``green seat`` reads as
#: a style for the whole object (docs/parts.md), so one-part prompts use the explicit ``part: style``.
LEAKAGE_PROMPTS = {"lamp": "red base, blue shade", "chair": "seat: green", "mug": "body: blue"}
LEAKAGE_ITERATIONS = 3


@dataclass(frozen=True)
class LocalizationScore:
    """One sample with one evidence source: IoU per part, and ``untouched`` (share of the unnamed
    parts' vertices left bit-identical by the sample's leakage prompt; None when not measured).
    ``error`` when localization failed."""

    sample: str
    source: str
    iou: dict[str, float]
    untouched: float | None = None
    error: str = ""

    @property
    def miou(self) -> float:
        return float(np.mean(list(self.iou.values()))) if self.iou else 0.0


def evaluate_localization(
    settings: Settings, *, store: ModelStore | None = None, device: str = "auto", faces: int = 20_000,
    leakage: bool = True,
) -> list[LocalizationScore]:
    """Score the ideal sources on every sample, and ``store``'s models when given (see the module
    docstring); ``leakage`` also stylizes each sample's leakage prompt from each source."""
    dev = resolve_device(device)
    scores = []
    for name in SAMPLE_NAMES:
        scores += _evaluate_sample(sample_mesh(name, faces), settings, store, dev, leakage)
    return scores


def _evaluate_sample(mesh: Mesh, settings: Settings, store: ModelStore | None, dev, leakage: bool):
    vertices = torch.from_numpy(mesh.unit_vertices()).to(dev)
    faces_t = torch.from_numpy(mesh.faces).to(dev)
    unit, faces = mesh.unit_vertices(), mesh.faces
    views = render_views(vertices, faces_t, settings)
    patches = segment_patches(unit, faces)
    face_labels = mesh.labels[faces[:, 0]]
    size = settings.localize.resolution
    detector = segmenter = None
    if store is not None:
        bfloat16 = use_bfloat16(settings.localize.precision, dev)  # as a run's localization
        detector = detector_boxes(views_detector(store.grounding(dev), size, bfloat16=bfloat16),
                                  settings.localize.box_threshold)
        segmenter = BoxSegmenter(store.segmenter(dev), bfloat16=bfloat16)

    def sources(names: tuple[str, ...]):
        """(source name, evidence [N, K, H, W] or an error) per source, for the parts ``names``."""
        index = [mesh.label_names.index(n) for n in names]
        chosen = np.array([index.index(label) if label in index else -1 for label in range(len(mesh.label_names))])
        face_id = views.seen.face_id.cpu().numpy()
        yield "ideal masks", label_masks(face_id, chosen[face_labels], len(names)), None
        yield "ideal boxes", box_masks(boxes_from_labels(views.seen, chosen[mesh.labels], len(names)), size,
                                       settings.localize), None
        if detector is not None:
            boxes = detector(views.images, list(names))
            threshold = settings.localize.box_threshold
            yield "masks", segmented_masks(views.images, boxes, segmenter, threshold), boxes
            yield "boxes", box_masks(boxes, size, settings.localize), boxes

    def settle(evidence, boxes, names):
        settled = settle_masks(views, evidence, unit, faces, names, settings, patches,
                               source="grounding" if boxes is not None else "labels")
        if boxes is not None:
            check_support(settled.weights, boxes)
        return settled.weights

    scores = {}
    for source, evidence, boxes in sources(mesh.label_names):
        try:
            iou = settle(evidence, boxes, mesh.label_names).iou(mesh.labels, mesh.label_names)
            scores[source] = LocalizationScore(mesh.name, source, iou)
        except PartNotFound as exc:
            scores[source] = LocalizationScore(mesh.name, source, {}, error=str(exc))
    if leakage and mesh.name in LEAKAGE_PROMPTS:
        prompt = LEAKAGE_PROMPTS[mesh.name]
        named = parse_prompt(prompt).parts
        unnamed = ~np.isin(mesh.labels, [mesh.label_names.index(n) for n in named])
        for source, evidence, boxes in sources(named):
            if scores[source].error:
                continue
            try:
                weights = settle(evidence, boxes, named)
            except PartNotFound as exc:
                scores[source] = replace(scores[source], error=f"{prompt!r}: {exc}")
                continue
            untouched = _untouched(mesh, prompt, weights, settings, store or ModelStore("tiny"), dev)
            scores[source] = replace(scores[source], untouched=float(untouched[unnamed].mean()))
    return list(scores.values())


def _untouched(mesh: Mesh, prompt: str, weights, settings: Settings, store: ModelStore, dev) -> np.ndarray:
    """[V] bool: the vertices whose color and position a short stylization left bit-identical."""
    short = replace(settings, optim=replace(settings.optim, iterations=LEAKAGE_ITERATIONS))
    base = np.full((mesh.num_vertices, 3), 0.5, np.float32)
    result = stylize(mesh, StyleRequest(prompt, parts=weights, base_colors=base), settings=short, models=store,
                     device=dev)
    same_color = (result.colors_srgb == base).all(1)
    return same_color & (result.displacement == 0)
