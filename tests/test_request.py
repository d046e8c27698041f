"""The door's request value (engine/request.py), the result values (engine/result.py) and the npz
readers beside their writers (engine/export.py): every bad input is refused before any work, with
the file, the array and the fix named."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import settings_for
from engine.errors import InputError, PartNotFound, PromptError
from engine.export import read_part_weights, read_surface_style, write_result
from engine.parts import PartWeights
from engine.prompt import MAX_PROMPT_CHARACTERS, PartStyle, StylePrompt, check_prompt, normalize_part_name
from engine.request import StyleRequest
from engine.result import StyleResult, SurfaceStyle
from engine.samples import sample_mesh

V = 6


def parts(names=("base", "shade"), vertices=V) -> PartWeights:
    labels = np.arange(vertices) % (len(names) + 1) - 1
    return PartWeights.from_labels(labels, names)


def look(vertices=V, color=0.25) -> SurfaceStyle:
    return SurfaceStyle(np.full((vertices, 3), color, np.float32), np.linspace(-0.1, 0.1, vertices, dtype=np.float32))


# -- part names and prompts ------------------------------------------------------------------------

@pytest.mark.parametrize("raw, name", [("Lamp  Shade", "lamp shade"), ("  BASE\t", "base"), ("tube", "tube")])
def test_one_rule_normalizes_part_names(raw, name):
    assert normalize_part_name(raw) == name
    assert PartStyle(raw, "gold").part == name
    assert PartWeights.from_labels(np.zeros(2, int), [raw]).names == (name,)


def test_check_prompt_parses_text_and_validates_a_parsed_prompt():
    assert check_prompt("red base, blue shade").parts == ("base", "shade")
    rows = StylePrompt(pairs=(PartStyle("Base", "red"), PartStyle("shade", "blue")))
    assert check_prompt(rows) is rows
    with pytest.raises(PromptError, match="'base' is given twice"):
        check_prompt(StylePrompt(pairs=(PartStyle("base", "red"), PartStyle("BASE ", "blue"))))
    long_rows = StylePrompt(pairs=(PartStyle("base", "x" * MAX_PROMPT_CHARACTERS),))
    with pytest.raises(PromptError, match=f"keep it under {MAX_PROMPT_CHARACTERS}"):
        check_prompt(long_rows)
    with pytest.raises(PromptError, match="text or a parsed StylePrompt"):
        check_prompt(42)


# -- the request -----------------------------------------------------------------------------------

def test_a_request_is_parsed_and_normalized_when_made():
    request = StyleRequest("red base, blue shade", parts=parts(), lock=(" Shade", "shade"), previous=look())
    assert request.prompt == check_prompt("red base, blue shade")
    assert request.lock == ("shade",)
    assert [p.part for p in request.styled_pairs] == ["base"]
    assert StyleRequest("a red lamp, glossy", holistic=True).prompt.holistic_style == "a red lamp, glossy"


def test_a_previous_result_is_reduced_to_its_look():
    mesh = sample_mesh("mug", 500)
    colors = np.full((mesh.num_vertices, 3), 0.5, np.float32)
    result = StyleResult(mesh, check_prompt("a mug"), colors, np.zeros(mesh.num_vertices, np.float32),
                         settings_for("preview"))
    request = StyleRequest("red body, blue handle", parts=parts(("body", "handle"), mesh.num_vertices),
                           lock=("handle",), previous=result)
    assert isinstance(request.previous, SurfaceStyle)
    assert np.array_equal(request.previous.colors_srgb, colors)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lock": ("tube",), "previous": look()}, PromptError, "not a part of the prompt"),
    ({"lock": ("shade",)}, PromptError, "--previous"),
    ({"lock": "shade", "previous": look()}, PromptError, "a list of part names"),
    ({"previous": "earlier"}, InputError, "SurfaceStyle or a StyleResult"),
    ({"parts": {"base": np.ones(V)}}, InputError, "PartWeights"),
    ({"base_colors": np.ones((V, 4))}, InputError, r"\[V, 3\]"),
    ({"base_colors": np.full((V, 3), 2.0)}, InputError, "0..1"),
])
def test_bad_requests_are_refused_when_made(kwargs, error, message):
    with pytest.raises(error, match=message):
        StyleRequest("red base, blue shade", **kwargs)


def test_holistic_prompts_take_no_parts_and_no_locks():
    with pytest.raises(PromptError, match="names none"):
        StyleRequest("a golden lamp", parts=parts())
    with pytest.raises(PromptError, match="holistic"):
        StyleRequest("a golden lamp", lock=("shade",), previous=look())


@pytest.mark.parametrize("kwargs, what, rows", [
    ({"parts": parts(vertices=V + 1)}, "the given parts", V + 1),
    ({"previous": look(V + 1), "lock": ("shade",), "parts": parts()}, "the previous result", V + 1),
    ({"base_colors": np.zeros((V + 2, 3))}, "base_colors", V + 2),
])
def test_inputs_made_for_another_mesh_are_refused_before_work(kwargs, what, rows):
    request = StyleRequest("red base, blue shade", **kwargs)
    with pytest.raises(InputError, match=f"{what} belong.* of {rows} vertices; this mesh has {V}"):
        request.check_mesh(V)
    StyleRequest("red base, blue shade").check_mesh(V)  # nothing per-vertex: any mesh


@pytest.mark.parametrize("colors, displacement, message", [
    (np.zeros((V, 4)), np.zeros(V), r"\[V, 3\]"),
    (np.zeros((V, 3)), np.zeros(V + 1), r"\[V\]"),
    (np.full((V, 3), np.nan), np.zeros(V), "NaN"),
    (np.full((V, 3), -0.5), np.zeros(V), "0..1"),
])
def test_a_surface_style_checks_its_arrays(colors, displacement, message):
    with pytest.raises(InputError, match=message):
        SurfaceStyle(colors, displacement)


# -- the npz readers -------------------------------------------------------------------------------

def test_parts_npz_round_trip(tmp_path):
    path = tmp_path / "parts.npz"
    given = parts()
    np.savez(path, names=np.array(given.names), weights=given.weights, confidence=given.confidence)
    read = read_part_weights(str(path), V)
    assert read.names == given.names and np.array_equal(read.weights, given.weights)


def _bad_parts(tmp_path, **arrays):
    path = tmp_path / "parts.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    ({"weights": np.ones((V, 2))}, "no 'names' array"),
    ({"names": np.array(["base"])}, "no 'weights' array"),
    ({"names": np.array(["base"]), "weights": np.ones((V + 1, 2)) / 2},
     r"'weights' has shape \[7, 2\], expected \[6, 2\]"),
    ({"names": np.array(["base"]), "weights": np.full((V, 2), np.nan)}, "'weights' holds NaN"),
    ({"names": np.array(["base"]), "weights": np.full((V, 2), 3.0)}, "'weights' must lie in 0..1"),
    ({"names": np.array([1, 2]), "weights": np.ones((V, 3)) / 3}, "'names' must hold text"),
    ({"names": np.array(["base"]), "weights": np.array([["a", "b"]] * V)}, "'weights' must hold numbers"),
    ({"names": np.array([""]), "weights": np.ones((V, 2)) / 2}, "non-empty part name"),
])
def test_bad_parts_files_name_the_file_and_the_array(tmp_path, arrays, message):
    path = _bad_parts(tmp_path, **arrays)
    with pytest.raises(InputError, match=message) as err:
        read_part_weights(path, V)
    assert path in str(err.value) and not isinstance(err.value, PartNotFound)


def test_pickled_and_garbage_files_are_refused_unread(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, names=np.array(["base"], dtype=object), weights=np.ones((V, 2)) / 2)
    with pytest.raises(InputError, match="without unpickling"):
        read_part_weights(str(pickled), V)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a readable npz"):
        read_part_weights(str(garbage), V)
    with pytest.raises(InputError, match="no such file"):
        read_part_weights(str(tmp_path / "missing.npz"), V)


def test_a_previous_folder_round_trips_through_write_result(tmp_path):
    mesh = sample_mesh("mug", 500)
    colors = np.random.default_rng(0).uniform(0, 1, (mesh.num_vertices, 3)).astype(np.float32)
    shift = np.random.default_rng(1).normal(0, 0.01, mesh.num_vertices).astype(np.float32)
    result = StyleResult(mesh, check_prompt("a mug"), colors, shift, settings_for("preview"))
    write_result(result, str(tmp_path))
    read = read_surface_style(str(tmp_path), mesh.num_vertices)
    assert np.array_equal(read.colors_srgb, colors) and np.array_equal(read.displacement, shift)
    with pytest.raises(InputError, match=r"'colors_srgb' has shape .* expected \[7, 3\]"):
        read_surface_style(str(tmp_path), 7)
    with pytest.raises(InputError, match=r"no such file .*earlier `stylize` run"):
        read_surface_style(str(tmp_path / "nowhere"), mesh.num_vertices)


def test_stylize_checks_the_request_against_the_mesh_before_loading_models(tmp_path):
    from engine.api import stylize

    mesh = sample_mesh("mug", 500)
    request = StyleRequest("red body, blue handle", parts=parts(("body", "handle"), mesh.num_vertices + 1))
    with pytest.raises(InputError, match="the given parts"):  # not ModelNotFound: nothing was loaded
        stylize(mesh, request, models=str(tmp_path / "no-models-here"), device="cpu")


@pytest.mark.parametrize("option, content, message", [
    ("--parts-from", b"garbage", "is not a readable npz file"),
    ("--previous", None, "no such file"),
])
def test_the_command_line_reports_bad_input_files_in_one_line(tmp_path, option, content, message):
    from test_cli import engine

    target = tmp_path / "input.npz"
    if content is not None:
        target.write_bytes(content)
    extra = ["--lock", "shade", "--parts-from", "labels"] if option == "--previous" else []
    proc = engine("stylize", "sample:lamp@5k", "--prompt", "red base, blue shade", option, str(target), *extra,
                  "--out", str(tmp_path / "o"), "--quiet")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
