"""Hostile and careless input (issue 17): refused early, in one clear line, losing nothing."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import trimesh
from test_cli import SMALL, engine

from engine import export
from engine.api import locate_parts, stylize
from engine.config import MAX_ITERATIONS, settings_for
from engine.errors import CheckpointError, MeshError, OutputError, PromptError, SettingsError
from engine.files import JOURNAL_FILE, LOCK_FILE, STAGING_PREFIX, check_output_folder, output_lock
from engine.mesh import load_mesh, mesh_from_arrays
from engine.request import StyleRequest
from engine.result import SurfaceStyle
from engine.samples import sample_mesh


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# -- the output folder, checked before work ------------------------------------------------------

@pytest.mark.parametrize("out, message", [
    ("", "is empty"),
    ("/dev/null", "exists and is not a folder"),
    ("/proc/partstyle-cannot-be-here", "cannot be written"),
])
def test_a_bad_output_folder_is_refused_before_models_load(out, message):
    with pytest.raises(OutputError, match=message):
        check_output_folder(out)


def test_an_output_folder_under_a_file_is_refused_and_nothing_is_left(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(str(blocker / "a" / "b"))
    check_output_folder(str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists(), "the check removes the folders it made"


def test_the_command_line_checks_out_before_loading_models(tmp_path):
    proc = engine("stylize", "sample:mug@2k", "--prompt", "a red mug", "--out", "/dev/null", "--models",
                  str(tmp_path / "no-models"))  # a model error would come later: the --out error comes first
    assert proc.returncode == 1 and _error_lines(proc) == [
        "error: --out /dev/null exists and is not a folder; name a folder for the results."]


def test_a_full_disk_is_one_error_and_keeps_the_earlier_result(tmp_path, monkeypatch):
    mesh = sample_mesh("mug", 500)
    colors = np.full((mesh.num_vertices, 3), 0.25, np.float32)
    from engine.prompt import check_prompt
    from engine.result import StyleResult

    result = StyleResult(mesh, check_prompt("a mug"), colors, np.zeros(mesh.num_vertices, np.float32),
                         settings_for("preview"))
    export.write_result(result, str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.np, "savez_compressed", full)
    with pytest.raises(OutputError, match=r"No space left on device.*earlier results there are unchanged"):
        export.write_result(result, str(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# -- requests and settings -------------------------------------------------------------------------

def test_resume_without_a_checkpoint_is_refused_before_models_load(tmp_path):
    mesh = sample_mesh("mug", 500)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        stylize(mesh, "a red mug", models=str(tmp_path / "no-models"), checkpoint=str(tmp_path / "c.pt"),
                resume=True, device="cpu")


def test_a_previous_result_without_a_lock_is_refused():
    look = SurfaceStyle(np.zeros((4, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(PromptError, match="only for locked parts"):
        StyleRequest("red base, blue shade", previous=look)


def test_iterations_have_an_upper_bound():
    settings_for("fast", {"optim.iterations": MAX_ITERATIONS})
    with pytest.raises(SettingsError, match=f"between 1 and {MAX_ITERATIONS}"):
        settings_for("fast", {"optim.iterations": MAX_ITERATIONS + 1})
    with pytest.raises(SettingsError):
        settings_for("fast", ["optim.iterations=1e23"])


@pytest.mark.parametrize("parts, message", [
    (["base", "Base "], "'base' is given twice"),
    (["x" * 200, "y" * 200], "keep them under"),
])
def test_locate_refuses_repeated_and_overlong_part_names(tmp_path, parts, message):
    with pytest.raises(PromptError, match=message):
        locate_parts(sample_mesh("mug", 500), parts, models=str(tmp_path / "no-models"), device="cpu")


# -- messages for bad mesh files ---------------------------------------------------------------------

def test_a_folder_is_called_a_folder(tmp_path):
    with pytest.raises(MeshError, match="is a folder, not a mesh file"):
        load_mesh(tmp_path)


def test_empty_and_garbage_files_are_not_called_point_clouds(tmp_path):
    empty = tmp_path / "empty.obj"
    empty.write_bytes(b"")
    with pytest.raises(MeshError, match=r"the file is empty \(0 bytes\)"):
        load_mesh(empty)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(MeshError) as err:
        load_mesh(garbage)
    assert "point clouds" not in str(err.value)
    points = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(10, 3))).export(points)
    with pytest.raises(MeshError, match="point clouds"):
        load_mesh(points)


@pytest.mark.parametrize("offset, message", [
    (1e12, "lies 1e\\+12 from the origin"),
    (1e19, "reach 1e\\+19: too far from the origin"),  # float64 itself has lost the box: all faces collapse
    (1e38, "beyond what float32"),
])
def test_huge_coordinates_get_the_real_reason(offset, message):
    box = trimesh.creation.box()
    with pytest.raises(MeshError, match=message):
        mesh_from_arrays(np.asarray(box.vertices) + offset, box.faces)


def test_quiet_hides_the_libraries_progress_bars(tmp_path):
    proc = engine("stylize", "sample:mug@2k", "--prompt", "a red mug", "--iterations", "1", "--out",
                  str(tmp_path / "o"), "--quiet", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr


# -- one writer per output folder; files swapped in all or nothing -------------------------------

def test_a_second_writer_of_one_output_folder_is_refused(tmp_path):
    with output_lock(str(tmp_path)):
        with pytest.raises(OutputError, match="another Partstyle run is writing"), output_lock(str(tmp_path)):
            pass
        proc = engine("stylize", "sample:mug@2k", "--prompt", "a red mug", "--iterations", "1", "--out",
                      str(tmp_path), "--quiet", *SMALL)
        assert proc.returncode == 1 and "another Partstyle run is writing" in proc.stderr, proc.stderr
    with output_lock(str(tmp_path)):  # released: free again, and no lock file is left behind
        pass
    assert os.listdir(tmp_path) == []


def test_a_commit_cut_short_is_finished_by_the_next_run(tmp_path):
    for name, text in (("a.txt", "old a"), ("b.txt", "old b")):
        (tmp_path / name).write_text(text)
    staging = tmp_path / (STAGING_PREFIX + "killed")
    staging.mkdir()
    for name, text in (("a.txt", "new a"), ("b.txt", "new b")):
        (staging / name).write_text(text)
    (tmp_path / JOURNAL_FILE).write_text(json.dumps({"staging": staging.name, "names": ["a.txt", "b.txt"]}))
    os.replace(staging / "a.txt", tmp_path / "a.txt")  # killed after the first move
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "old b"
    stale = tmp_path / (STAGING_PREFIX + "killed-while-writing")
    stale.mkdir()
    (stale / "half.glb").write_bytes(b"partial")
    with output_lock(str(tmp_path)):
        assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, "a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"


def test_a_run_never_discards_another_runs_checkpoint(tmp_path):
    other = tmp_path / "checkpoint.pt"
    other.write_bytes(b"another interrupted run's state")
    proc = engine("stylize", "sample:mug@2k", "--prompt", "a red mug", "--iterations", "1", "--out", str(tmp_path),
                  "--quiet", *SMALL)
    assert proc.returncode == 1 and "holds the checkpoint of an interrupted run" in proc.stderr, proc.stderr
    assert other.read_bytes() == b"another interrupted run's state"
