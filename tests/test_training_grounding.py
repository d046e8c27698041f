"""Training the tiny Grounding DINO: boxes where the parts are, captions that match the labels, a
training loop that runs, a folder that loads back, and a shipped model that finds parts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from engine.grounding.detector import GroundingDetector
from engine.models import TINY_GROUNDING_FOLDER, ModelStore, load_grounding_folder
from engine.training.grounding_data import DetectionSamples, all_part_names
from engine.training.train_grounding import (
    box_iou,
    grounding_recall,
    save_grounding,
    tiny_bundle,
    train_tiny_grounding,
)
from engine.training.vocabulary import PART_OBJECTS

SHIPPED = os.path.isfile(os.path.join(TINY_GROUNDING_FOLDER, "model.safetensors"))


def test_boxes_of_all_parts_together_cover_exactly_the_object():
    """With every part named, the union of the part boxes is the extent of the non-white pixels
    (checks the box frame: pixels, y down, cx/cy/w/h normalized)."""
    data = DetectionSamples(1, gray_share=1.0, negative_share=0.0, subset_share=0.0)
    for _ in range(6):
        sample = data.sample()
        object_pixels = (sample.image < 0.99).any(0).nonzero()
        rows, cols = object_pixels[:, 0].float(), object_pixels[:, 1].float()
        cx, cy, w, h = (sample.boxes * data.size).unbind(-1)
        union = torch.stack(((cx - w / 2).min(), (cy - h / 2).min(), (cx + w / 2).max(), (cy + h / 2).max()))
        extent = torch.stack((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        assert torch.allclose(union, extent, atol=2.5), (sample.object_name, union, extent)


def test_labels_name_only_the_objects_own_named_parts():
    data = DetectionSamples(2)
    subsets = negatives = 0
    for _ in range(40):
        sample = data.sample()
        own = _parts_of(sample.object_name)
        labelled = {sample.phrases[int(k)] for k in sample.class_labels}
        assert labelled <= own  # a box only for a part the object has and the caption names
        assert len(sample.class_labels) == len(labelled)  # one box per part
        assert set(sample.phrases) <= set(all_part_names())
        assert bool(((sample.boxes >= 0.0) & (sample.boxes <= 1.0)).all())
        negatives += bool(set(sample.phrases) - own)
        subsets += bool(own - set(sample.phrases))
    assert negatives >= 5 and subsets >= 5  # both caption augmentations occur


def _parts_of(name: str) -> set[str]:
    from engine.training.synthetic import scene_mesh

    return set(scene_mesh(name).part_names)


def test_samples_are_seeded():
    a, b = DetectionSamples(7).batch(3), DetectionSamples(7).batch(3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.image, y.image) and x.phrases == y.phrases and torch.equal(x.boxes, y.boxes)
    assert {s.object_name for s in DetectionSamples(8).batch(12)} <= set(PART_OBJECTS)


def test_box_iou():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    assert float(box_iou(a, a)) == pytest.approx(1.0)
    assert float(box_iou(a, torch.tensor([1.0, 0.0, 3.0, 2.0]))) == pytest.approx(1 / 3)
    assert float(box_iou(a, torch.tensor([5.0, 5.0, 6.0, 6.0]))) == 0.0


def test_training_steps_run_and_the_model_saves_and_loads_back(tmp_path):
    steps = []
    model, tokenizer, done, loss = train_tiny_grounding(max_steps=2, minutes=5, batch_size=2,
                                                        on_progress=lambda step, _loss, _seconds: steps.append(step))
    assert done == 2 and steps == [1, 2] and np.isfinite(loss) and not model.training
    save_grounding(model, tokenizer, str(tmp_path))
    loaded = load_grounding_folder(str(tmp_path), name="tiny")
    trained = tiny_bundle(model, tokenizer)
    assert (loaded.size, loaded.max_size) == (trained.size, trained.max_size)
    image = DetectionSamples(0).sample().image[None]
    caption = GroundingDetector(loaded).caption(["base", "tube"])
    before = GroundingDetector(trained).phrase_logits(image, caption)
    after = GroundingDetector(loaded).phrase_logits(image, caption)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


@pytest.mark.skipif(not SHIPPED, reason="the trained tiny Grounding DINO is not in engine/assets/tiny/grounding")
def test_the_shipped_model_finds_held_out_parts():
    """The shipped model reached 67.5% part recall at IoU 0.5 on 200 held-out renders (the issue's
    target, 80%, was not reached in the 60-minute budget: docs/training.md); it must stay there."""
    bundle = ModelStore("tiny").grounding()
    evaluation = grounding_recall(bundle.model, bundle.tokenizer, samples=60)
    assert evaluation.recall >= 0.6, evaluation
    assert evaluation.recall_by_part["shade"] >= 0.9 and evaluation.recall_by_part["base"] >= 0.7, evaluation
    with open(os.path.join(TINY_GROUNDING_FOLDER, "training.json"), encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["held_out_recall_iou50"] >= 0.6


def test_the_training_command_writes_the_model_and_its_record(tmp_path, capsys):
    from engine.cli import main

    assert main(["train-tiny-grounding", "--steps", "1", "--seed", "2", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "training.json", encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["seed"] == 2 and record["steps"] == 1 and record["batch"] == 8
    assert 0.0 <= record["held_out_recall_iou50"] <= 1.0
    assert set(record["held_out_recall_by_part"]) <= set(all_part_names())
    assert load_grounding_folder(str(tmp_path), name="tiny").size == 256
    assert "held-out part recall at IoU 0.5" in capsys.readouterr().out
