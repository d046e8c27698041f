"""Training the tiny CLIP: the data says what its captions say, the loss ranks, the shipped model works."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.models import TINY_CLIP_FOLDER, ModelStore
from engine.training.synthetic import SyntheticBatches, random_scene
from engine.training.train_clip import color_accuracy, contrastive_loss, train_tiny_clip
from engine.training.vocabulary import COLORS, nearest_color

SHIPPED = os.path.isfile(os.path.join(TINY_CLIP_FOLDER, "model.safetensors"))


def test_plain_scenes_are_colored_as_their_captions_say():
    generator = torch.Generator().manual_seed(3)
    checked = 0
    for _ in range(60):
        scene = random_scene(generator)
        words = scene.caption.split()
        if scene.caption.startswith("a ") and len(words) == 3:  # "a red mug": plain, one color
            color = words[1]
            assert color in COLORS
            assert np.allclose(scene.colors.numpy(), scene.colors.numpy()[0])  # one color everywhere
            assert nearest_color(scene.colors.numpy()[0]) == color  # the caption names it
            checked += 1
        for phrase, part in zip(scene.part_phrases, scene.mesh.part_names, strict=True):
            assert phrase.endswith(" " + part)
    assert checked >= 10


def test_batches_are_seeded_and_well_formed():
    a_images, a_captions = SyntheticBatches(5).batch(6)
    b_images, b_captions = SyntheticBatches(5).batch(6)
    assert a_images.shape == (6, 3, 224, 224) and len(a_captions) == 6
    assert torch.equal(a_images, b_images) and a_captions == b_captions
    assert float(a_images.min()) >= 0.0 and float(a_images.max()) <= 1.0


def test_contrastive_loss_prefers_matching_pairs():
    generator = torch.Generator().manual_seed(0)
    captions = ["a red mug", "a red mug", "blue base", "green shade"]
    table = {c: F.normalize(torch.randn(16, generator=generator), dim=0) for c in set(captions)}

    def encode(texts):
        return torch.stack([table[t] for t in texts])

    matching = torch.stack([table[c] for c in captions])
    wrong = torch.stack([table[c] for c in ["blue base", "green shade", "a red mug", "a red mug"]])
    scale = torch.tensor(20.0)
    matched = float(contrastive_loss(matching, captions, encode, scale))
    assert matched < float(contrastive_loss(wrong, captions, encode, scale))


def test_a_few_training_steps_run_and_report():
    steps = []
    model, _, done, loss = train_tiny_clip(max_steps=2, minutes=5, batch_size=8,
                                           on_progress=lambda step, _loss, _seconds: steps.append(step))
    assert done == 2 and steps == [1, 2] and np.isfinite(loss)
    assert not model.training


@pytest.mark.skipif(not SHIPPED, reason="the trained tiny CLIP is not in engine/assets/tiny/clip of this checkout")
def test_the_shipped_tiny_clip_names_colors_of_held_out_renders():
    bundle = ModelStore("tiny").clip("cpu")
    assert color_accuracy(bundle.model, bundle.tokenizer, scenes=100) >= 0.9


def test_the_learning_rate_warms_up_then_decays_with_whichever_limit_ends_the_run():
    from engine.training.loop import scheduled_rate

    assert scheduled_rate(1.0, 0, 1000, 0.0, 3600.0) == pytest.approx(1 / 50)
    assert scheduled_rate(1.0, 500, 1000, 10.0, 3600.0) == pytest.approx(0.5, abs=1e-6)  # steps limit
    assert scheduled_rate(1.0, 999, 1000, 10.0, 3600.0) < 1e-4
    assert scheduled_rate(1.0, 100, 1000, 3600.0, 3600.0) < 1e-9  # the time budget is spent
