"""A shape's local thickness measured once per session (engine/shape_measurements.py): a run on an
equal shape, built afresh as the add-on and a batch build it, reuses it; any other shape is measured."""

from __future__ import annotations

import numpy as np
import pytest

import engine.geometry.thickness as thickness_module
from engine.api import stylize
from engine.config import settings_for
from engine.events import StageEvent
from engine.mesh import mesh_from_arrays
from engine.models import ModelStore
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh
from engine.shape_measurements import ShapeMeasurements, shape_key


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


def test_an_equal_shape_is_measured_once_and_any_change_is_measured_again(measured):
    lamp = sample_mesh("lamp", 1500)
    kept = ShapeMeasurements()
    first = kept.local_thickness(_rebuilt(lamp))
    again = kept.local_thickness(_rebuilt(lamp))
    assert again is first and measured == [lamp.num_vertices]
    moved = lamp.vertices.copy()
    moved[7, 2] += 1e-4  # one coordinate of one vertex
    changed = kept.local_thickness(_rebuilt(lamp, vertices=moved))
    flipped = lamp.faces.copy()
    flipped[0] = flipped[0, ::-1]  # one face turned over: its normal, and the thickness behind it, change
    kept.local_thickness(_rebuilt(lamp, faces=flipped))
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
        kept.local_thickness(mesh)
    kept.local_thickness(_rebuilt(shapes[2]))  # kept
    kept.local_thickness(_rebuilt(shapes[1]))  # kept
    assert len(measured) == 3
    kept.local_thickness(_rebuilt(shapes[0]))  # the oldest was let go
    assert len(measured) == 4


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
    assert np.array_equal(results[0].displacement, results[1].displacement)
    assert np.array_equal(results[0].colors_srgb, results[1].colors_srgb)
    assert np.abs(results[1].displacement).max() > 0  # relief was on: the reused thickness bounded it
