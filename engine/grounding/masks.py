"""Per-view, per-part pixel evidence for localization: where in each view each part is.

Three sources, one shape - ``[N, K, H, W]`` float32 in 0..1 (view, part, pixel):
- :func:`box_masks`: the detector's boxes as filled rectangles (the box-only path, kept for
  comparison): a pixel inside a part's best box counts fully, less towards the box's border;
- :func:`segmented_masks`: each part's best box in each view refined into a pixel mask by a
  box-prompted segmenter (:class:`~engine.grounding.segmenter.BoxSegmenter`);
- :func:`label_masks`: exact masks from known per-vertex labels (the ``ideal`` figure of
  ``eval-localization``, and the tiny models' training data).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import LocalizeSettings
from .segmenter import BoxSegmenter
from .views import PartBoxes


def box_masks(boxes: list[list[PartBoxes]], size: int, settings: LocalizeSettings) -> np.ndarray:
    """[N, K, size, size] each part's best box per view (:func:`best_boxes`) as a filled rectangle
    (pixels of a size x size view).

    A pixel inside the box gets a weight rising from ``border_weight`` at the box's edge to 1 at
    ``border_falloff`` x its smaller side inside. The box's score only decides whether it counts (above
    ``settings.box_threshold``) and which box is best, as for segmenter masks.
    """
    centres = np.arange(size, dtype=np.float64) + 0.5
    chosen = best_boxes(boxes, settings.box_threshold)
    out = np.zeros((len(boxes), len(boxes[0]) if boxes else 0, size, size), np.float32)
    for view, parts in enumerate(chosen):
        for part, box in enumerate(parts):
            if box is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            dx = np.minimum(centres - x0, x1 - centres)
            dy = np.minimum(centres - y0, y1 - centres)
            inside = np.minimum(dy[:, None], dx[None, :])
            ramp = max(settings.border_falloff * min(x1 - x0, y1 - y0), 1e-6)
            border = settings.border_weight + (1.0 - settings.border_weight) * np.clip(inside / ramp, 0.0, 1.0)
            out[view, part] = np.where(inside >= 0, border, 0.0)
    return out


def best_boxes(boxes: list[list[PartBoxes]], threshold: float) -> list[list[np.ndarray | None]]:
    """Per view and part, the highest-scoring box above ``threshold`` ([4] pixels) or None."""
    out = []
    for parts in boxes:
        row = []
        for found in parts:
            keep = found.scores > threshold
            row.append(found.boxes[keep][int(np.argmax(found.scores[keep]))] if keep.any() else None)
        out.append(row)
    return out


def segmented_masks(images: torch.Tensor, boxes: list[list[PartBoxes]], segmenter: BoxSegmenter,
                    threshold: float, cancel=None) -> np.ndarray:
    """[N, K, H, W] mask probabilities of each part's best box in each view (zero where a part has
    no box), from ``images`` [N, 3, H, W] in 0..1, overlaps given to the more specific part
    (:func:`specific_first`). ``cancel`` is checked between views.

    Masks are not clipped to their boxes: the tiny detector's boxes are often narrower than the part
    (the lamp's base: 0.8 of its width in half the views), and the segmenter's mask is the better
    outline there."""
    n, _, height, width = images.shape
    chosen = best_boxes(boxes, threshold)
    k = len(boxes[0]) if boxes else 0
    out = np.zeros((n, k, height, width), np.float32)
    for view in range(n):
        if cancel is not None:
            cancel.raise_if_cancelled()
        parts = [p for p in range(k) if chosen[view][p] is not None]
        if not parts:
            continue
        prompts = torch.tensor(np.stack([chosen[view][p] for p in parts]), dtype=torch.float32)
        probabilities = segmenter.masks(images[view:view + 1].to(segmenter.device), [prompts])[0]
        out[view, parts] = probabilities.cpu().numpy()
    return specific_first(out)


def specific_first(masks: np.ndarray) -> np.ndarray:
    """[N, K, H, W] masks with overlaps given to the more specific part: in each view, parts are taken
    from the smallest mask to the largest, and each keeps only what the smaller ones left
    (``m_k * (1 - covered)``). A box around a mug's body also holds its handle, and a body mask may
    claim it; the handle's own, smaller mask wins there."""
    out = masks.copy()
    for view in range(masks.shape[0]):
        covered = np.zeros(masks.shape[2:], np.float32)
        for part in np.argsort(masks[view].reshape(masks.shape[1], -1).sum(1), kind="stable"):
            out[view, part] = masks[view, part] * (1.0 - covered)
            covered = np.maximum(covered, masks[view, part])
    return out


def label_masks(face_id: np.ndarray, face_labels: np.ndarray, num_parts: int) -> np.ndarray:
    """[N, K, H, W] exact masks from the visibility pass ``face_id`` [N, H, W] (-1 background) and
    [F] per-face part labels (-1: no part)."""
    labels = np.where(face_id >= 0, face_labels[np.maximum(face_id, 0)], -1)
    return np.stack([labels == k for k in range(num_parts)], 1).astype(np.float32)
