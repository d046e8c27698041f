"""The command line with part prompts: given parts, locating, locking, evaluation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import trimesh
from test_cli import SMALL, engine
from tolerances import CHANGED, SAME_MATH, assert_close, relative_difference

from engine.parts import part_colors

PROMPT = "pottery base, gold tube, linen shade"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "first"
    proc = engine("stylize", "sample:lamp@5k", "--prompt", PROMPT, "--parts-from", "labels", "--out", str(out),
                  "--iterations", "3", "--quiet", *SMALL, "--set", "guidance.part_min_pixels=8")  # 64 px renders
    assert proc.returncode == 0, proc.stderr
    return out


def test_part_prompt_with_given_parts_writes_parts_and_part_losses(first):
    record = json.loads((first / "run.json").read_text())
    assert record["parts"] == [{"part": "base", "style": "pottery"}, {"part": "tube", "style": "gold"},
                               {"part": "shade", "style": "linen"}]
    assert record["parts_source"] == "labels"
    assert {"part:base", "part:tube", "part:shade", "global"} <= set(record["losses"])
    data = np.load(first / "result.npz")
    assert data["part_names"].tolist() == ["base", "tube", "shade"]
    assert data["part_weights"].shape == (data["vertices"].shape[0], 4)


def test_lock_keeps_a_part_from_the_previous_folder(first, tmp_path):
    out = tmp_path / "second"
    proc = engine("stylize", "sample:lamp@5k", "--prompt", "green base, gold tube, linen shade",
                  "--parts-from", "labels", "--lock", "shade", "--previous", str(first), "--out", str(out),
                  "--iterations", "3", "--seed", "4",
                  "--quiet", *SMALL)
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(first / "result.npz"), np.load(out / "result.npz")
    shade = a["part_weights"][:, 2] == 1.0
    assert_close(b["colors_srgb"][shade], a["colors_srgb"][shade], rel=SAME_MATH, what="locked shade colors")
    assert relative_difference(b["colors_srgb"][~shade], a["colors_srgb"][~shade]) > CHANGED


def test_whole_reads_the_prompt_as_one_style(tmp_path):
    proc = engine("stylize", "sample:mug@5k", "--prompt", "gold, shiny", "--whole", "--out", str(tmp_path / "o"),
                  "--iterations", "2", "--quiet", *SMALL)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["prompt"] == "gold, shiny" and record["parts"] == [] and record["parts_source"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "red base, , blue shade"], "phrase 2 is empty"),
        (["--prompt", "red base, blue base"], "part 'base' is given twice"),
        (["--prompt", "red handle, blue shade", "--parts-from", "labels"], "'handle' not among the given parts"),
        (["--prompt", PROMPT, "--parts-from", "nothing.npz"], "no such file"),
        (["--prompt", PROMPT, "--parts-from", "labels", "--lock", "shade"], "--previous"),
    ],
)
def test_part_prompt_errors_are_one_clear_line(tmp_path, args, message):
    proc = engine("stylize", "sample:lamp@5k", *args, "--out", str(tmp_path / "o"), "--quiet")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr


def test_locate_writes_weights_a_colored_ply_and_a_preview(tmp_path):
    out = tmp_path / "located"
    proc = engine("locate", "sample:mug@5k", "--parts", "body, handle", "--out", str(out),
                  "--set", "localize.views=4", "--set", "localize.resolution=128", "--set", "localize.box_threshold=0")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["parts.npz", "parts.ply", "preview.png"]
    data = np.load(out / "parts.npz")
    assert data["names"].tolist() == ["body", "handle"]
    assert data["weights"].shape[1] == 3 and np.allclose(data["weights"].sum(1), 1.0, atol=1e-5)
    confidence = data["part_confidence"]
    assert confidence.shape == (2,) and ((confidence >= 0) & (confidence <= 1)).all()
    assert re.search(r"body: \d+ vertices \(confidence \d\.\d\d\)", proc.stdout), proc.stdout
    # parts.ply is the mesh colored by part: each vertex its part's palette color, blended by weight.
    colored = trimesh.load(out / "parts.ply", process=False)
    expected = np.round(part_colors(data["weights"]) * 255)
    assert len(colored.vertices) == len(data["weights"]) and len(colored.faces) > 0
    assert np.abs(colored.visual.vertex_colors[:, :3].astype(float) - expected).max() <= 1
    # The written weights are accepted back as given parts.
    again = engine("stylize", "sample:mug@5k", "--prompt", "red body, blue handle",
                   "--parts-from", str(out / "parts.npz"), "--out", str(tmp_path / "styled"), "--iterations", "2",
                   "--quiet", *SMALL)
    assert again.returncode == 0, again.stderr


def test_eval_localization_prints_miou_per_part():
    proc = engine("eval-localization", "--no-leakage")
    assert proc.returncode == 0, proc.stderr
    for source in ("ideal masks", "ideal boxes"):
        rows = {m.group(1): float(m.group(2))
                for m in re.finditer(rf"^(\w+)\s+{source}\s+([\d.]+)\s+-", proc.stdout, re.M)}
        assert set(rows) == {"lamp", "chair", "mug"}, proc.stdout
        assert min(rows.values()) >= 0.95, proc.stdout


def test_a_part_prompt_locates_its_parts_and_takes_grounding_steps(tmp_path):
    out = tmp_path / "auto"
    proc = engine("stylize", "sample:mug@5k", "--prompt", "red body, blue handle", "--out", str(out),
                  "--iterations", "2", *SMALL, "--set", "localize.views=4", "--set", "localize.resolution=128",
                  "--set", "localize.box_threshold=0", "--set", "guidance.grounding_every=2",
                  "--set", "guidance.grounding_resolution=128")
    assert proc.returncode == 0, proc.stderr
    assert "locating parts: body, handle" in proc.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["parts_source"] == "grounding"
    assert record["losses"]["grounding"][0] is None and record["losses"]["grounding"][1] is not None
