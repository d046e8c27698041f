"""Training the tiny Grounding DINO on synthetic part boxes, evaluating it, and saving it.

The model learns with the library's own detection loss (``GroundingDinoForObjectDetection`` given
``labels``: Hungarian matching, sigmoid focal loss over the phrase tokens, L1 and GIoU box losses,
for the decoder's layers and the encoder's proposals). The held-out figure is part recall at IoU
0.5: for each visible part, the best-scoring box of its phrase, when above the detection
threshold, must overlap the part's true box by IoU >= 0.5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..compat import check_caption_batch
from ..grounding.detector import GroundingDetector
from ..models import GROUNDING_MEAN, GROUNDING_STD, TINY_GROUNDING_MAX_SIZE, TINY_GROUNDING_SIZE, GroundingBundle
from .grounding_data import DetectionSample, DetectionSamples
from .loop import train_loop
from .train_clip import EVAL_SEED

# Architecture of the shipped tiny Grounding DINO (about 2.2 M parameters, 8.7 MB as float32).
TRAINED_GROUNDING_SIZES = {
    "embed_dim": 32,
    "depths": (1, 1, 2, 1),
    "text_hidden_size": 64,
    "text_layers": 2,
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "ffn_dim": 128,
    "heads": 4,
}
GRADIENT_CLIP = 0.1  # max gradient norm, as DETR-family training uses
IOU_MATCH = 0.5
BATCH_SIZE = 8


@dataclass(frozen=True)
class GroundingEvaluation:
    """Held-out figures: ``recall`` of visible parts at IoU 0.5 (per object and per part too), and the
    share of phrases naming absent parts that still got a box above the threshold
    (``false_positive_rate``)."""

    recall: float
    recall_by_object: dict[str, float]
    recall_by_part: dict[str, float]
    false_positive_rate: float
    boxes: int


def tiny_bundle(model, tokenizer) -> GroundingBundle:
    """The model as the store would give it for ``--models tiny``."""
    return GroundingBundle(
        model, tokenizer, TINY_GROUNDING_SIZE, TINY_GROUNDING_MAX_SIZE, GROUNDING_MEAN, GROUNDING_STD, "tiny"
    )


def detection_loss(model, tokenizer, samples: list[DetectionSample]) -> torch.Tensor:
    """The library's detection loss on a batch of samples that share one caption (see
    :meth:`DetectionSamples.batch` for why they must)."""
    check_caption_batch(s.phrases for s in samples)
    pixel_values, pixel_mask = GroundingDetector(tiny_bundle(model, tokenizer)).preprocess(
        torch.stack([s.image for s in samples])
    )
    tokens = tokenizer([" . ".join(s.phrases) + " ." for s in samples], return_tensors="pt")
    labels = [{"class_labels": s.class_labels, "boxes": s.boxes} for s in samples]
    outputs = model(
        pixel_values=pixel_values,
        pixel_mask=pixel_mask,
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        labels=labels,
    )
    return outputs.loss


def train_tiny_grounding(
    *,
    seed: int = 0,
    minutes: float = 60.0,
    max_steps: int = 100_000,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = 4e-4,
    on_progress: Callable[[int, float, float], None] | None = None,
):
    """Train a tiny Grounding DINO from scratch for ``minutes`` (or ``max_steps``).

    Returns ``(model, tokenizer, steps, smoothed loss)``; the model is in eval mode.
    """
    from ..tiny_models import build_tiny_grounding_dino

    model, tokenizer = build_tiny_grounding_dino(seed, **TRAINED_GROUNDING_SIZES)
    model.train()
    data = DetectionSamples(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps, loss = train_loop(
        model,
        optimizer,
        lambda: detection_loss(model, tokenizer, data.batch(batch_size)),
        learning_rate=learning_rate,
        max_steps=max_steps,
        minutes=minutes,
        warmup=200,
        smoothing=0.98,
        clip_norm=GRADIENT_CLIP,
        on_progress=on_progress,
    )
    return model.eval(), tokenizer, steps, loss


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes a [4] and b [4] ``(x0, y0, x1, y1)``."""
    w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union.clamp(min=1e-9)


@torch.no_grad()
def grounding_recall(
    model, tokenizer, *, samples: int = 200, seed: int = EVAL_SEED, box_threshold: float = 0.25
) -> GroundingEvaluation:
    """Held-out part recall at IoU 0.5 on ``samples`` renders from a seed range training never uses."""
    detector = GroundingDetector(tiny_bundle(model, tokenizer))
    data = DetectionSamples(seed)
    hits: dict[str, list[int]] = {}
    part_hits: dict[str, list[int]] = {}
    absent_named = absent_found = 0
    for _ in range(samples):
        sample = data.sample()
        detections = detector.detect(sample.image[None], list(sample.phrases), box_threshold=box_threshold)[0]
        truth = {int(k): box for k, box in zip(sample.class_labels, sample.boxes, strict=True)}
        for phrase in range(len(sample.phrases)):
            boxes, scores = detections.select(phrase, box_threshold)
            if phrase not in truth:
                absent_named += 1
                absent_found += int(len(scores) > 0)
                continue
            cx, cy, w, h = (truth[phrase] * data.size).tolist()
            true_box = torch.tensor((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            hit = len(scores) > 0 and float(box_iou(boxes[int(scores.argmax())], true_box)) >= IOU_MATCH
            hits.setdefault(sample.object_name, []).append(int(hit))
            part_hits.setdefault(sample.phrases[phrase], []).append(int(hit))
    every = [h for object_hits in hits.values() for h in object_hits]
    return GroundingEvaluation(
        recall=sum(every) / max(len(every), 1),
        recall_by_object={name: sum(h) / len(h) for name, h in sorted(hits.items())},
        recall_by_part={name: sum(h) / len(h) for name, h in sorted(part_hits.items())},
        false_positive_rate=absent_found / max(absent_named, 1),
        boxes=len(every),
    )


def save_grounding(model, tokenizer, folder: str) -> None:
    """Write the model (safetensors + config), tokenizer and processor size into ``folder``.

    ``preprocessor_config.json`` carries the resize rule the model was trained at, so
    :func:`engine.models.load_grounding_folder` runs it at that size.
    """
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    processor = {
        "size": {"shortest_edge": TINY_GROUNDING_SIZE, "longest_edge": TINY_GROUNDING_MAX_SIZE},
        "image_mean": list(GROUNDING_MEAN),
        "image_std": list(GROUNDING_STD),
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w", encoding="utf-8") as fh:
        json.dump(processor, fh, indent=2)
