"""Training the tiny box-prompted segmenter (a small ``Sam2Model``) on synthetic part masks,
evaluating it, and saving it.

The loss is SAM's: binary cross-entropy plus dice between the single low-resolution mask and the
part's exact coverage (:mod:`.segment_data`), plus the object-score head's cross-entropy towards
"present" (every prompt in the data names a visible part). The held-out figure is the mean IoU of
the predicted masks (at the input size, logit > 0) with the exact part masks, per object and part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..grounding.segmenter import BoxSegmenter
from ..models import GROUNDING_MEAN, GROUNDING_STD, TINY_SEGMENTER_SIZE, SegmenterBundle
from .loop import train_loop
from .segment_data import SegmentationBatch, SegmentationSamples
from .train_clip import EVAL_SEED

BATCH_SIZE = 8  # images per step, each with BOXES_PER_IMAGE prompts


@dataclass(frozen=True)
class SegmenterEvaluation:
    """Held-out mask IoU: overall mean, per object and per part, over ``masks`` prompts."""

    miou: float
    miou_by_object: dict[str, float]
    miou_by_part: dict[str, float]
    masks: int


def tiny_segmenter_bundle(model) -> SegmenterBundle:
    """The model as the store would give it for ``--models tiny``."""
    return SegmenterBundle(model, TINY_SEGMENTER_SIZE, GROUNDING_MEAN, GROUNDING_STD, "tiny")


def segmentation_loss(model, batch: SegmentationBatch) -> torch.Tensor:
    """BCE + dice of the low-resolution masks, and the object score's BCE towards "present"."""
    segmenter = BoxSegmenter(tiny_segmenter_bundle(model))
    pixel_values = segmenter.preprocess(batch.images)
    outputs = model(pixel_values=pixel_values, input_boxes=batch.boxes, multimask_output=False)
    logits = outputs.pred_masks[:, :, 0]
    target = batch.masks
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid().flatten(2)
    flat = target.flatten(2)
    dice = 1.0 - (2.0 * (prob * flat).sum(-1) + 1.0) / (prob.sum(-1) + flat.sum(-1) + 1.0)
    present = F.binary_cross_entropy_with_logits(outputs.object_score_logits,
                                                 torch.ones_like(outputs.object_score_logits))
    return bce + dice.mean() + 0.1 * present


def train_tiny_segmenter(
    *,
    seed: int = 0,
    minutes: float = 45.0,
    max_steps: int = 100_000,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = 1e-3,
    on_progress: Callable[[int, float, float], None] | None = None,
):
    """Train a tiny segmenter from scratch for ``minutes`` (or ``max_steps``).

    Returns ``(model, None, steps, smoothed loss)`` (no tokenizer: box prompts need none); the model
    is in eval mode.
    """
    from ..tiny_models import build_tiny_segmenter

    model = build_tiny_segmenter(seed, image_size=TINY_SEGMENTER_SIZE)
    model.train()
    data = SegmentationSamples(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps, loss = train_loop(
        model,
        optimizer,
        lambda: segmentation_loss(model, data.segmentation_batch(batch_size)),
        learning_rate=learning_rate,
        max_steps=max_steps,
        minutes=minutes,
        warmup=200,
        smoothing=0.98,
        clip_norm=1.0,
        on_progress=on_progress,
    )
    return model.eval(), None, steps, loss


@torch.no_grad()
def segmenter_iou(model, _tokenizer=None, *, samples: int = 200, seed: int = EVAL_SEED) -> SegmenterEvaluation:
    """Held-out mask IoU at the input size on ``samples`` prompts from a seed range training never uses."""
    segmenter = BoxSegmenter(tiny_segmenter_bundle(model))
    data = SegmentationSamples(seed, boxes_per_image=1)
    by_object: dict[str, list[float]] = {}
    by_part: dict[str, list[float]] = {}
    for _ in range(samples):
        view = data.labelled_view()
        if view is None:
            continue
        image, box, truth, object_name, part_name = view
        predicted = segmenter.masks(image[None], [box[None]])[0][0] > 0.5
        union = (predicted | truth).sum()
        iou = float((predicted & truth).sum() / union) if union else 1.0
        by_object.setdefault(object_name, []).append(iou)
        by_part.setdefault(part_name, []).append(iou)
    every = [v for values in by_object.values() for v in values]
    return SegmenterEvaluation(
        miou=sum(every) / max(len(every), 1),
        miou_by_object={k: sum(v) / len(v) for k, v in sorted(by_object.items())},
        miou_by_part={k: sum(v) / len(v) for k, v in sorted(by_part.items())},
        masks=len(every),
    )


def save_segmenter(model, _tokenizer, folder: str) -> None:
    """Write the model (safetensors + config) and its processor size into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor = {
        "size": {"height": TINY_SEGMENTER_SIZE, "width": TINY_SEGMENTER_SIZE},
        "image_mean": list(GROUNDING_MEAN),
        "image_std": list(GROUNDING_STD),
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w", encoding="utf-8") as fh:
        json.dump(processor, fh, indent=2)
