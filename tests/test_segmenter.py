"""The box-prompted segmenter: its data (exact part masks), the wrapper (preprocessing, box frames),
training, the model store, and the shipped tiny model's held-out quality."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.errors import ModelFormatError
from engine.grounding.segmenter import BoxSegmenter
from engine.models import TINY_CLIP_FOLDER, TINY_SEGMENTER_FOLDER, ModelStore, SegmenterBundle, load_segmenter_folder
from engine.tiny_models import segmenter_config
from engine.training.segment_data import MASK_SCALE, SegmentationSamples
from engine.training.train_segmenter import (
    save_segmenter,
    segmentation_loss,
    segmenter_iou,
    tiny_segmenter_bundle,
    train_tiny_segmenter,
)

SHIPPED = os.path.isfile(os.path.join(TINY_SEGMENTER_FOLDER, "model.safetensors"))


def test_a_prompt_box_is_about_its_exact_part_mask():
    """The box holds the part's centre, is at least 70% of its extent either way (each side moves
    inward by 15% at most), and its longer side is at most 1.3x the part's (widening across a thin
    part stops at half the longer side, then 15% per side)."""
    data = SegmentationSamples(3)
    widened = 0
    for _ in range(80):
        view = data.labelled_view()
        if view is None:
            continue
        image, box, truth, _, _ = view
        rows, cols = torch.nonzero(truth, as_tuple=True)
        x0, y0, x1, y1 = (float(v) for v in (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        w, h, bw, bh = x1 - x0, y1 - y0, float(box[2] - box[0]), float(box[3] - box[1])
        assert box[0] <= (x0 + x1) / 2 <= box[2] and box[1] <= (y0 + y1) / 2 <= box[3], (box, (x0, y0, x1, y1))
        assert bw >= 0.7 * w - 1e-3 and bh >= 0.7 * h - 1e-3 and max(bw, bh) <= 1.3 * max(w, h) + 1e-3
        widened += max(bw / w, bh / h) > 1.5
        assert (image[:, truth] < 0.99).any(0).all()  # the mask lies on the object, not on the white ground
    assert widened > 0  # some prompts are widened across a thin part, as detectors' boxes are


def test_batches_hold_low_resolution_coverage_and_are_seeded():
    a, b = SegmentationSamples(5).segmentation_batch(3), SegmentationSamples(5).segmentation_batch(3)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)
    assert a.masks.shape == (3, 2, 256 // MASK_SCALE, 256 // MASK_SCALE)
    assert a.masks.min() >= 0 and a.masks.max() <= 1 and (a.masks.flatten(2).max(-1).values > 0).all()


class _Recorder(torch.nn.Module):
    """Stands in for a Sam2Model: records its inputs, answers with a box-shaped mask."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.size = size
        self.calls = []

    def forward(self, pixel_values, input_boxes, multimask_output):
        self.calls.append((pixel_values, input_boxes, multimask_output))
        low = self.size // 4
        centres = (torch.arange(low) + 0.5) * 4
        x0, y0, x1, y1 = input_boxes.unbind(-1)
        inside_x = (centres >= x0[..., None]) & (centres < x1[..., None])  # [N, B, low]
        inside_y = (centres >= y0[..., None]) & (centres < y1[..., None])
        logits = torch.where(inside_y[..., :, None] & inside_x[..., None, :], 10.0, -10.0)
        return SimpleNamespace(pred_masks=logits[:, :, None])


def test_the_wrapper_resizes_normalizes_and_scales_boxes_to_the_model_frame():
    model = _Recorder(64)
    segmenter = BoxSegmenter(SegmenterBundle(model, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "recorder"))
    images = torch.full((1, 3, 128, 128), 0.75)
    masks = segmenter.masks(images, [torch.tensor([[0.0, 0.0, 64.0, 128.0]])])
    pixel_values, boxes, multimask = model.calls[0]
    assert pixel_values.shape == (1, 3, 64, 64) and torch.allclose(pixel_values, torch.ones(1)) and not multimask
    assert torch.equal(boxes, torch.tensor([[[0.0, 0.0, 32.0, 64.0]]]))
    assert masks[0].shape == (1, 128, 128)
    assert masks[0][0, 64, 16] > 0.99 and masks[0][0, 64, 112] < 0.01  # back in the view's pixels
    assert segmenter.masks(images, [torch.zeros(0, 4)])[0].shape == (0, 128, 128)


def test_training_steps_run_and_the_model_saves_and_loads_back(tmp_path):
    steps = []
    model, _, done, loss = train_tiny_segmenter(max_steps=2, minutes=5, batch_size=2,
                                                on_progress=lambda step, _loss, _seconds: steps.append(step))
    assert done == 2 and steps == [1, 2] and np.isfinite(loss) and not model.training
    save_segmenter(model, None, str(tmp_path))
    loaded = load_segmenter_folder(str(tmp_path), name="tiny")
    assert loaded.size == tiny_segmenter_bundle(model).size == 256
    batch = SegmentationSamples(1).segmentation_batch(1)
    before = BoxSegmenter(tiny_segmenter_bundle(model)).mask_logits(batch.images, batch.boxes)
    after = BoxSegmenter(loaded).mask_logits(batch.images, batch.boxes)
    assert torch.equal(before, after)
    assert torch.isfinite(segmentation_loss(model.train(), batch))


def test_a_folder_of_another_kind_of_model_is_refused():
    with pytest.raises(ModelFormatError, match=r"'clip' model.*sam2, edgetam"):
        load_segmenter_folder(TINY_CLIP_FOLDER, name="x")


def test_the_default_architecture_is_sam2_hiera_tiny():
    config = segmenter_config()
    backbone = config.vision_config.backbone_config
    assert backbone.embed_dim_per_stage == [96, 192, 384, 768] and backbone.blocks_per_stage == [1, 2, 7, 2]
    assert config.prompt_encoder_config.image_size == 1024 and config.mask_decoder_config.hidden_size == 256


def test_the_store_gives_a_frozen_segmenter():
    bundle = ModelStore("tiny").segmenter("cpu")
    assert bundle.size == 256 and not any(p.requires_grad for p in bundle.model.parameters())


@pytest.mark.skipif(not SHIPPED, reason="the trained tiny segmenter is not in engine/assets/tiny/segmenter")
def test_the_shipped_segmenter_outlines_held_out_parts():
    bundle = ModelStore("tiny").segmenter()
    evaluation = segmenter_iou(bundle.model, samples=60)
    with open(os.path.join(TINY_SEGMENTER_FOLDER, "training.json"), encoding="utf-8") as fh:
        record = json.load(fh)
    assert evaluation.miou >= SHIPPED_MIOU - 0.08, evaluation
    assert record["held_out_mask_iou"] >= SHIPPED_MIOU


def test_the_training_command_writes_the_model_and_its_record(tmp_path, capsys):
    from engine.cli import main

    assert main(["train-tiny-segmenter", "--steps", "1", "--seed", "2", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "training.json", encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["seed"] == 2 and record["steps"] == 1 and record["batch"] == 8
    assert 0.0 <= record["held_out_mask_iou"] <= 1.0
    assert set(record["held_out_mask_iou_by_object"]) <= {"lamp", "chair", "mug"}
    assert load_segmenter_folder(str(tmp_path), name="tiny").size == 256
    assert "held-out mask IoU" in capsys.readouterr().out


# The shipped model's held-out mean mask IoU (engine/assets/tiny/segmenter/training.json), as trained.
SHIPPED_MIOU = 0.82


def test_bfloat16_masks_cover_what_float32_masks_cover():
    """localize.precision=bfloat16 runs the segmenter under autocast: the same pixels, nearly."""
    from test_grounding_detector import lamp_views

    bundle = ModelStore("tiny").segmenter("cpu")
    images = lamp_views(2)
    boxes = [torch.tensor([[60.0, 150.0, 200.0, 250.0], [80.0, 10.0, 180.0, 120.0]])] * 2
    full = BoxSegmenter(bundle).masks(images, boxes)
    half = BoxSegmenter(bundle, bfloat16=True).masks(images, boxes)
    for a, b in zip(full, half, strict=True):
        assert b.dtype == torch.float32
        inside_a, inside_b = a > 0.5, b > 0.5
        assert inside_a.any() and (inside_a & inside_b).sum() / (inside_a | inside_b).sum() > 0.95
