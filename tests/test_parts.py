"""Part-tailored stylization: weights, lifting, composition, locking, part losses, schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tolerances import CHANGED, SAME_MATH, assert_close, relative_difference

from engine.api import stylize
from engine.config import GuidanceSettings, settings_for
from engine.errors import PartNotFound, PromptError
from engine.events import StepEvent
from engine.field import BASE_COLOR
from engine.geometry.graph import VertexGraph
from engine.grounding.lift import PartBoxes, boxes_from_labels, lift_boxes, localization_views, visibility
from engine.grounding.locate import locate
from engine.guidance import ClipGuidance
from engine.mesh import Normalization
from engine.models import ModelStore
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh

STORE = ModelStore("tiny")


def small(*extra: str, iterations: int = 3):
    return settings_for("fast", [f"optim.iterations={iterations}", "views.count=2", "render.resolution=96",
                                 "field.width=64", "run.preview_every=0", *extra])


@pytest.fixture(scope="module")
def lamp():
    return sample_mesh("lamp", 5000)


def unit(mesh):
    return torch.from_numpy(Normalization.fit(mesh.vertices).to_unit(mesh.vertices)), torch.from_numpy(mesh.faces)


# -- weights ---------------------------------------------------------------------------------------


def test_vertex_groups_are_normalized_with_a_rest_share():
    groups = {"Seat": np.array([1.0, 0.6, 0.0, 0.5]), "legs": np.array([0.5, 0.2, 0.0, 0.5])}
    w = PartWeights.from_vertex_groups(groups, 4)
    assert w.names == ("seat", "legs")
    assert_close(w.weights.sum(1), 1.0, rel=SAME_MATH)
    assert_close(w.weights[0], [2 / 3, 1 / 3, 0.0], rel=SAME_MATH)  # over 1: scaled, no rest
    assert_close(w.weights[1], [0.6, 0.2, 0.2], rel=SAME_MATH)
    assert_close(w.weights[2], [0.0, 0.0, 1.0], rel=SAME_MATH)
    assert w.labels().tolist() == [0, 0, -1, 0]


def test_select_folds_other_parts_into_rest_and_names_missing_ones(lamp):
    w = PartWeights.from_labels(lamp.labels, lamp.label_names).select(["shade", "base"])
    assert w.names == ("shade", "base")
    tube = lamp.labels == lamp.label_names.index("tube")
    assert np.all(w.weights[tube, -1] == 1.0)
    with pytest.raises(PartNotFound, match=r"'handle'.*base, tube, shade"):
        PartWeights.from_labels(lamp.labels, lamp.label_names).select(["handle"])


# -- lifting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lamp", "chair", "mug"])
def test_lifting_ideal_boxes_reaches_the_target_miou(name):
    mesh = sample_mesh(name, 20_000)
    settings = settings_for()
    vertices, faces = unit(mesh)
    views = localization_views(settings.localize, settings.views, settings.render)
    seen = visibility(vertices, faces, views, settings.localize.resolution)
    boxes = boxes_from_labels(seen, mesh.labels, len(mesh.label_names))
    weights = lift_boxes(seen, boxes, mesh.label_names, faces, settings.localize)
    iou = weights.iou(mesh.labels, mesh.label_names)
    assert np.allclose(weights.weights.sum(1), 1.0, atol=1e-5)
    assert np.mean(list(iou.values())) >= 0.85, iou


def test_a_box_only_lends_its_part_to_vertices_inside_it():
    settings = settings_for().localize
    graph_faces = np.array([[0, 1, 2]])
    seen_xy = torch.tensor([[[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]]])
    from engine.grounding.lift import Visibility

    seen = Visibility(xy=seen_xy, visible=torch.ones(1, 3, dtype=torch.bool),
                      face_id=torch.zeros(1, 1, 1, dtype=torch.int64))
    box = PartBoxes(np.array([[0.0, 0.0, 60.0, 60.0]], np.float32), np.array([0.9], np.float32))
    no_smoothing = type(settings)(smoothing_iterations=0)
    weights = lift_boxes(seen, [[box]], ("base",), torch.from_numpy(graph_faces), no_smoothing)
    assert weights.labels().tolist() == [0, 0, -1]


def test_vertices_no_view_saw_take_their_neighbours_weights():
    faces = np.array([[0, 1, 2], [2, 3, 4]])  # a strip: 0-1-2 known, 3 and 4 unseen
    graph = VertexGraph(faces, 6)  # vertex 5 is isolated
    values = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    filled = graph.fill(values, np.array([True, True, True, False, False, False]))
    assert np.allclose(filled[3], [0.0, 1.0]) and np.allclose(filled[4], [0.0, 1.0])
    assert np.allclose(filled[5], [0.0, 1.0])  # unreachable: all rest


def test_locate_with_ideal_boxes_and_a_part_nobody_finds(lamp):
    settings = settings_for()
    vertices, faces = unit(lamp)

    def ideal(images, phrases):
        views = localization_views(settings.localize, settings.views, settings.render)
        seen = visibility(vertices, faces, views, images.shape[-1])
        names = [lamp.label_names[i] for i in lamp.labels]
        labels = np.array([phrases.index(name) if name in phrases else -1 for name in names])
        boxes = boxes_from_labels(seen, labels, len(phrases))
        return boxes

    found = locate(vertices, faces, ["base", "shade"], ideal, settings)
    assert found.images.shape == (settings.localize.views, 512, 512, 3) and len(found.boxes) == settings.localize.views
    assert found.weights.names == ("base", "shade")

    def no_handle(images, phrases):
        boxes = ideal(images, [p for p in phrases if p != "handle"])
        return [[*row, PartBoxes.empty()] for row in boxes]

    with pytest.raises(PartNotFound, match=r"could not find 'handle'.*found: 'base', 'shade'"):
        locate(vertices, faces, ["base", "shade", "handle"], no_handle, settings)


# -- composition and locking -----------------------------------------------------------------------


def test_vertices_outside_the_styled_parts_keep_color_and_shape(lamp):
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    result = stylize(lamp, StyleRequest("red base, blue shade", parts=parts), settings=small(), models=STORE,
                     device="cpu")
    tube = lamp.labels == lamp.label_names.index("tube")
    styled = ~tube
    assert result.parts.names == ("base", "shade")
    assert np.all(result.colors_srgb[tube] == np.float32(BASE_COLOR)) and np.all(result.displacement[tube] == 0.0)
    assert np.array_equal(result.displaced_vertices()[tube], lamp.vertices[tube])
    assert np.abs(result.colors_srgb[styled] - BASE_COLOR).max() > 1e-4  # the styled parts did change


def test_a_locked_part_keeps_its_previous_result(lamp):
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    first = stylize(lamp, StyleRequest("red base, blue shade", parts=parts), settings=small(), models=STORE,
                    device="cpu")
    again = StyleRequest("green base, blue shade", parts=parts, lock=("Shade ",), previous=first.surface)
    second = stylize(lamp, again, settings=small("run.seed=3"), models=STORE, device="cpu")
    shade = lamp.labels == lamp.label_names.index("shade")
    base = lamp.labels == lamp.label_names.index("base")
    # the locked part's result is copied through the composition (and the displacement through unit lengths)
    assert_close(second.colors_srgb[shade], first.colors_srgb[shade], rel=SAME_MATH, what="locked colors")
    assert_close(second.displacement[shade], first.displacement[shade], rel=SAME_MATH, what="locked displacement")
    assert relative_difference(second.colors_srgb[base], first.colors_srgb[base]) > CHANGED


def test_locking_needs_a_part_of_the_prompt_and_a_previous_result(lamp):
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    with pytest.raises(PromptError, match="not a part of the prompt"):
        StyleRequest("red base, blue shade", parts=parts, lock=("tube",))
    with pytest.raises(PromptError, match="--previous"):
        StyleRequest("red base, blue shade", parts=parts, lock=("shade",))
    with pytest.raises(PromptError, match="holistic"):
        StyleRequest("a golden lamp", lock=("shade",))
    with pytest.raises(PromptError, match="names none"):
        StyleRequest("a golden lamp", parts=parts)


# -- losses and schedule ---------------------------------------------------------------------------


def test_part_crops_isolate_each_visible_part_on_white():
    guidance = ClipGuidance(STORE.clip("cpu"), GuidanceSettings(part_crops=2, part_min_pixels=20, perspective_p=0.0))
    color = torch.zeros(2, 3, 64, 64)  # black renders
    masks = torch.zeros(2, 3, 64, 64)
    masks[0, 0, 10:30, 10:20] = 1.0  # part 0 in view 0 (200 px)
    masks[1, 1, 40:44, 40:44] = 1.0  # part 1 in view 1: 16 px, below part_min_pixels
    images, owner = guidance.part_crops(color, masks, torch.Generator().manual_seed(0))
    assert owner.tolist() == [0, 0]
    assert images.shape == (2, 3, 224, 224)
    centre = images[:, :, 112, 112]
    corner = images[:, :, 2, 2]
    assert torch.all(centre < 0.05) and torch.all(corner > 0.95)  # the part is black, around it white
    texts = guidance.encode_text(["red base", "blue tube", "green shade"])
    assert guidance.part_losses(color, masks, texts, torch.Generator())[2] is None


def test_grounding_steps_follow_the_schedule(lamp):
    from engine.compose import compose_parts
    from engine.train import Objective, StyleTrainer, SurfaceInputs

    settings = small("guidance.grounding_every=2", "guidance.grounding_views=1", "guidance.grounding_resolution=64",
                     iterations=5)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    guidance = ClipGuidance(STORE.clip("cpu"), settings.guidance)
    calls = []

    def fake_grounding(images):
        calls.append(tuple(images.shape))
        return (1.0 - images.mean()) ** 2

    vertices, faces = unit(lamp)
    objective = Objective(
        text=guidance.encode_text(["lamp"])[0],
        composition=compose_parts(parts, original_colors=np.full((lamp.num_vertices, 3), 0.5, np.float32)),
        part_names=parts.names,
        part_texts=guidance.encode_text(list(parts.names)),
        grounding=fake_grounding,
    )
    surface = SurfaceInputs(vertices, torch.from_numpy(lamp.vertex_normals), faces)
    trainer = StyleTrainer(surface, objective, guidance, settings)
    steps = []
    result = trainer.run(on_event=lambda e: steps.append(set(e.losses)) if isinstance(e, StepEvent) else None)
    assert calls == [(1, 3, 64, 64), (1, 3, 64, 64)]  # iterations 2 and 4
    assert [("grounding" in s) for s in steps] == [False, True, False, True, False]
    assert all(f"part:{p}" in steps[0] for p in parts.names)
    grounding = result.history["grounding"]
    assert math.isnan(grounding[0]) and not math.isnan(grounding[1]) and len(grounding) == 5


def test_grounding_part_loss_sends_gradient_to_the_render():
    from engine.grounding.detector import GroundingDetector
    from engine.guidance.grounding_loss import GroundingPartLoss

    detector = GroundingDetector(STORE.grounding("cpu"), size=128)
    loss_fn = GroundingPartLoss(detector, ["base", "shade"], ["pottery base", "linen shade"], threshold=0.0)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    selected = loss_fn.selection(images)
    assert selected.shape[0] == 2 and selected.shape[2] == 2 and bool(selected.all())  # threshold 0 selects all
    loss = loss_fn(images)
    assert 0.0 < float(loss.detach()) < 1.0
    loss.backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    strict = GroundingPartLoss(detector, ["base"], ["pottery base"], threshold=1.5)  # above any score
    nothing = strict(images.detach().requires_grad_(True))
    assert float(nothing.detach()) == 0.0  # no region shows the part: no signal, no error


def test_locating_parts_can_be_cancelled(lamp):
    from engine.api import locate_parts
    from engine.errors import Cancelled
    from engine.events import CancelToken

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        locate_parts(lamp, ["base", "shade"], models=STORE, device="cpu", cancel=token,
                     settings=settings_for("fast", ["localize.views=2", "localize.resolution=128"]))
