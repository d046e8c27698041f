"""What runs measure on a shape, measured once per session (engine/shape_measurements.py): a run on
an equal shape, built afresh as the add-on and a batch build it, reuses its local thickness and, with
the same part names and localization settings, its located parts; any other shape is measured."""

from __future__ import annotations

import numpy as np
import pytest

import engine.geometry.thickness as thickness_module
from engine.api import stylize
from engine.config import settings_for
from engine.events import PreviewEvent, StageEvent
from engine.mesh import mesh_from_arrays
from engine.models import ModelStore
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh
from engine.shape_measurements import THICKNESS, ShapeMeasurements, array_bytes, shape_key


@pytest.fixture
def measured(monkeypatch) -> list[int]:
    """The vertex count of each thickness measurement made while the test runs."""
    calls: list[int] = []
    measure = thickness_module.local_thickness

    def counting(vertices, *args, **kwargs):
        calls.append(len(vertices))
        return measure(vertices, *args, **kwargs)

    monkeypatch.setattr(thickness_module, "local_thickness", counting)
    return calls


def _rebuilt(mesh, vertices=None, faces=None):
    """A new Mesh object of ``mesh``'s arrays (copies), as each run builds one."""
    return mesh_from_arrays((mesh.vertices if vertices is None else vertices).copy(),
                            (mesh.faces if faces is None else faces).copy(), name=mesh.name)


def _thickness(kept: ShapeMeasurements, mesh):
    return kept.measured(THICKNESS, mesh, mesh.local_thickness)


def test_an_equal_shape_is_measured_once_and_any_change_is_measured_again(measured):
    lamp = sample_mesh("lamp", 1500)
    kept = ShapeMeasurements()
    first = _thickness(kept, _rebuilt(lamp))
    again = _thickness(kept, _rebuilt(lamp))
    assert again is first and measured == [lamp.num_vertices]
    moved = lamp.vertices.copy()
    moved[7, 2] += 1e-4  # one coordinate of one vertex
    changed = _thickness(kept, _rebuilt(lamp, vertices=moved))
    flipped = lamp.faces.copy()
    flipped[0] = flipped[0, ::-1]  # one face turned over: its normal, and the thickness behind it, change
    _thickness(kept, _rebuilt(lamp, faces=flipped))
    assert len(measured) == 3
    assert not np.array_equal(changed.inside, first.inside) or not np.array_equal(changed.bend, first.bend)


def test_the_key_depends_on_values_dtypes_and_shapes_not_on_the_object():
    lamp = sample_mesh("lamp", 1500)
    assert shape_key(_rebuilt(lamp)) == shape_key(lamp)
    reordered = np.asfortranarray(lamp.vertices)  # the same values in another memory order
    assert shape_key(_rebuilt(lamp, vertices=reordered)) == shape_key(lamp)
    fewer = _rebuilt(lamp, faces=lamp.faces[:-1])
    assert shape_key(fewer) != shape_key(lamp)


def test_only_the_most_recent_shapes_are_kept(measured):
    kept = ShapeMeasurements(capacity=2)
    shapes = [sample_mesh(name, 800) for name in ("lamp", "mug", "chair")]
    for mesh in shapes:
        _thickness(kept, mesh)
    _thickness(kept, _rebuilt(shapes[2]))  # kept
    _thickness(kept, _rebuilt(shapes[1]))  # kept
    assert len(measured) == 3
    _thickness(kept, _rebuilt(shapes[0]))  # the oldest was let go
    assert len(measured) == 4


def test_the_kept_arrays_stay_within_their_byte_budget_and_the_newest_is_always_kept(measured):
    lamp, mug = sample_mesh("lamp", 800), sample_mesh("mug", 800)
    one = 12 * lamp.num_vertices  # a thickness: three float32 values a vertex
    assert array_bytes(lamp.local_thickness()) == one
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    assert array_bytes((parts, {"base": 0.5})) == parts.weights.nbytes + parts.confidence.nbytes
    kept = ShapeMeasurements(max_bytes=one + 12 * mug.num_vertices - 1)  # not both
    _thickness(kept, lamp)
    assert kept.kept_bytes == one
    _thickness(kept, mug)
    assert kept.kept_bytes == 12 * mug.num_vertices  # the lamp's was let go for the newest
    _thickness(kept, _rebuilt(lamp))
    assert len(measured) == 3
    tiny = ShapeMeasurements(max_bytes=1)  # smaller than any measurement: the newest still stays
    _thickness(tiny, mug)  # the mug object's own cache: nothing measured
    _thickness(tiny, _rebuilt(mug))  # a new object of the same shape: from the one kept
    assert len(measured) == 3 and tiny.known(THICKNESS, mug) is not None


def test_what_else_a_measurement_depends_on_is_part_of_its_key():
    lamp = sample_mesh("lamp", 800)
    kept = ShapeMeasurements()
    made = []
    for depends_on in ("base, shade @ cpu", "base, shade @ cpu", "base @ cpu", "base, shade @ cuda:0"):
        kept.measured("located parts", _rebuilt(lamp), lambda d=depends_on: made.append(d) or d, depends_on)
    assert made == ["base, shade @ cpu", "base @ cpu", "base, shade @ cuda:0"]
    assert kept.known("located parts", lamp, "base @ cpu") == "base @ cpu"
    assert kept.known("local thickness", lamp, "base @ cpu") is None  # another kind


def test_a_measurement_that_fails_is_not_kept():
    lamp = sample_mesh("lamp", 800)
    kept = ShapeMeasurements()

    def fails():
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        kept.measured("located parts", lamp, fails)
    assert kept.known("located parts", lamp) is None


def test_a_second_run_on_the_same_shape_skips_the_measurement_and_gives_the_same_result(measured):
    lamp = sample_mesh("lamp", 2000)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    settings = settings_for("preview", {"optim.iterations": 2})
    store = ModelStore("tiny")
    results, stages = [], []
    for _ in range(2):
        events: list[str] = []

        def on_event(event, into=events):
            if isinstance(event, StageEvent):
                into.append(event.name)

        results.append(stylize(_rebuilt(lamp), StyleRequest("red base, yellow tube, blue shade", parts=parts),
                               settings=settings, models=store, device="cpu", on_event=on_event))
        stages.append(events)
    assert measured == [lamp.num_vertices]
    assert "measuring thickness" in stages[0] and "measuring thickness" not in stages[1]
    assert results[0].record["reused_from_earlier_run"] == []
    assert results[1].record["reused_from_earlier_run"] == ["local thickness"]  # run.json says so
    assert np.array_equal(results[0].displacement, results[1].displacement)
    assert np.array_equal(results[0].colors_srgb, results[1].colors_srgb)
    assert np.abs(results[1].displacement).max() > 0  # relief was on: the reused thickness bounded it


def test_a_rerun_with_the_same_part_names_and_other_styles_takes_the_parts_located_before(monkeypatch):
    import engine.api

    located = []
    locate = engine.api.locate_parts
    monkeypatch.setattr(engine.api, "locate_parts", lambda *a, **k: located.append(a[1]) or locate(*a, **k))
    lamp = sample_mesh("lamp", 5000)
    settings = settings_for("fast", ["optim.iterations=2", "views.count=2", "render.resolution=96", "field.width=64",
                                     "localize.views=4", "localize.resolution=256", "run.preview_every=1"])
    store = ModelStore("tiny")
    runs = []
    for prompt in ("red base, blue shade", "gold base, green shade", "red base, blue shade"):
        events: list = []
        result = stylize(_rebuilt(lamp), prompt, settings=settings, models=store, device="cpu", on_event=events.append)
        runs.append((result, events))
    assert located == [("base", "shade")]  # the later runs reused the first one's parts
    assert runs[1][0].record["reused_from_earlier_run"] == ["located parts", "local thickness"]
    (first, _), (other_styles, events), (same_again, _) = runs
    assert np.array_equal(first.parts.weights, other_styles.parts.weights)
    assert first.record["part_confidence"] == other_styles.record["part_confidence"]
    stage = [e.detail for e in events if isinstance(e, StageEvent) and e.name == "locating parts"]
    assert stage == ["base, shade: as located on this shape earlier"]
    assert any(isinstance(e, PreviewEvent) and e.step == 0 for e in events)  # the parts are shown, as when located
    assert not np.array_equal(first.colors_srgb, other_styles.colors_srgb)  # the styles did change
    assert np.array_equal(first.colors_srgb, same_again.colors_srgb)  # and the same prompt gives the same result
    # other localization settings locate again
    stylize(_rebuilt(lamp), "red base, blue shade", settings=settings_for("fast", [
        "optim.iterations=2", "views.count=2", "render.resolution=96", "field.width=64", "localize.views=3",
        "localize.resolution=256"]), models=store, device="cpu")
    assert len(located) == 2
