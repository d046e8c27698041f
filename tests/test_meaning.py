"""End to end with the shipped tiny models: the result must mean what the prompt says.

Each runs the real pipeline (renderer, field, CLIP guidance, composition; localization and the
grounding loss with the tiny Grounding DINO where the parts are not given) on CPU with the `fast`
preset's settings, shortened; colors are judged by the nearest vocabulary color of the mean
per-vertex albedo of the true part.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_segmenter import SHIPPED as SEGMENTER_SHIPPED
from test_training import SHIPPED
from test_training_grounding import SHIPPED as GROUNDING_SHIPPED

from engine.api import stylize
from engine.config import settings_for
from engine.models import ModelStore
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh
from engine.training.vocabulary import nearest_color

pytestmark = pytest.mark.skipif(not SHIPPED, reason="needs the trained tiny CLIP shipped in engine/assets/tiny/clip")
STORE = ModelStore("tiny")
SETTINGS = settings_for("fast", ["optim.iterations=120", "run.preview_every=0"])


def mean_color(result, mask) -> str:
    return nearest_color(result.colors_srgb[mask].mean(0))


def test_green_seat_black_legs_with_parts_given_by_hand():
    chair = sample_mesh("chair", 5000)
    parts = PartWeights.from_labels(chair.labels, chair.label_names)
    request = StyleRequest("green seat, black legs", parts=parts)
    result = stylize(chair, request, settings=SETTINGS, models=STORE, device="cpu")
    labels = chair.labels
    assert mean_color(result, labels == chair.label_names.index("seat")) == "green"
    assert mean_color(result, labels == chair.label_names.index("legs")) == "black"
    back = labels == chair.label_names.index("back")
    assert np.all(result.colors_srgb[back] == np.float32(0.5)) and np.all(result.displacement[back] == 0)


def test_a_yellow_mug():
    mug = sample_mesh("mug", 5000)
    result = stylize(mug, "a yellow mug", settings=SETTINGS, models=STORE, device="cpu")
    assert mean_color(result, np.ones(mug.num_vertices, bool)) == "yellow"


@pytest.mark.skipif(not (GROUNDING_SHIPPED and SEGMENTER_SHIPPED),
                    reason="needs the trained tiny Grounding DINO and segmenter in engine/assets/tiny")
def test_red_base_blue_shade_on_parts_found_by_the_tiny_grounding_model():
    """Localization (tiny Grounding DINO boxes, tiny segmenter masks, settled on patches) and styling
    by the tiny models alone; the tube, which the prompt does not name, stays exactly as it was."""
    lamp = sample_mesh("lamp", 5000)
    result = stylize(lamp, "red base, blue shade", settings=SETTINGS, models=STORE, device="cpu")
    labels, names = lamp.labels, lamp.label_names
    iou = result.parts.iou(labels, names)
    assert set(iou) == {"base", "shade"} and np.mean(list(iou.values())) >= 0.85, iou
    assert mean_color(result, labels == names.index("base")) == "red"
    assert mean_color(result, labels == names.index("shade")) == "blue"
    tube = labels == names.index("tube")
    untouched = (result.colors_srgb[tube] == np.float32(0.5)).all(1) & (result.displacement[tube] == 0)
    assert untouched.mean() >= 0.98, untouched.mean()
