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
from engine.training.synthetic import striped_picture
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


# ------------------------------------------------------------------------------------------------
# Image prompts (engine/references.py): a picture as a part's target, beside or instead of its words

IMAGE_ONLY = settings_for("fast", ["optim.iterations=120", "run.preview_every=0", "guidance.image_weight=1.0"])


def _swatch(name: str) -> np.ndarray:
    from engine.training.vocabulary import COLORS

    swatch = np.empty((48, 64, 3), np.float32)
    swatch[:] = COLORS[name]
    return swatch


def test_a_red_swatch_as_the_bases_picture_turns_the_base_red():
    """With image_weight 1 the picture alone is the base's target: the words 'plain' (which the tiny
    models never saw) do not count; the shade keeps its words."""
    lamp = sample_mesh("lamp", 5000)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    request = StyleRequest("plain base, blue shade", parts=parts, images={"base": _swatch("red")})
    result = stylize(lamp, request, settings=IMAGE_ONLY, models=STORE, device="cpu")
    names = lamp.label_names
    assert mean_color(result, lamp.labels == names.index("base")) == "red"
    assert mean_color(result, lamp.labels == names.index("shade")) == "blue"
    assert result.record["reference_images"]["base"]["sha256"] == request.images[0][1].sha256


def test_the_picture_wins_over_the_words_at_image_weight_one():
    """Text 'red' with a blue picture at image_weight 1.0 gives blue: the picture is the target."""
    lamp = sample_mesh("lamp", 5000)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    request = StyleRequest("red base, yellow shade", parts=parts, images={"base": _swatch("blue")})
    result = stylize(lamp, request, settings=IMAGE_ONLY, models=STORE, device="cpu")
    assert mean_color(result, lamp.labels == lamp.label_names.index("base")) == "blue"
    assert mean_color(result, lamp.labels == lamp.label_names.index("shade")) == "yellow"


def _white_bands(mesh, mask: np.ndarray, white: np.ndarray) -> list[int]:
    """Sizes of the connected white regions (through the mesh's edges) among the ``mask`` vertices."""
    parent = np.arange(mesh.num_vertices)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    keep = mask & white
    for a, b in np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]):
        if keep[a] and keep[b]:
            parent[find(a)] = find(b)
    roots = [find(v) for v in np.flatnonzero(keep)]
    return sorted(np.unique(roots, return_counts=True)[1].tolist(), reverse=True)


def test_a_picture_of_blue_stripes_gives_a_blue_striped_shade():
    """The shade follows a picture of blue stripes (its words, 'plain', steer nothing): mostly blue,
    with white in several separate bands - not a plain blue shade and not one white patch."""
    from engine.training.vocabulary import nearest_color

    lamp = sample_mesh("lamp", 5000)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    settings = settings_for("fast", ["optim.iterations=300", "run.preview_every=0", "guidance.image_weight=1.0"])
    request = StyleRequest("plain base, plain shade", parts=parts, images={"shade": striped_picture()})
    result = stylize(lamp, request, settings=settings, models=STORE, device="cpu")
    shade = lamp.labels == lamp.label_names.index("shade")
    names = np.array([nearest_color(c) for c in result.colors_srgb])
    blue, white = (names[shade] == "blue").mean(), (names[shade] == "white").mean()
    assert blue >= 0.5 and white >= 0.15, (blue, white)
    bands = _white_bands(lamp, shade, names == "white")
    assert sum(size >= 0.02 * shade.sum() for size in bands) >= 3, bands[:8]
