"""Batch runs (engine/batch, `python -m engine batch`): manifests checked up front, failures isolated,
resume by fingerprint, stop and cancel that lose nothing, shards."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from batch_fixtures import QUICK, ROWS, quick_assets, result_arrays, summary, write_manifest
from test_cli import wait_for
from tolerances import SAME_MATH, assert_close

from engine.batch.manifest import Defaults, ManifestError, folder_manifest, read_manifest
from engine.batch.run import AssetEvent, LocalExecutor, Shard, run_batch
from engine.batch.state import asset_fingerprint
from engine.cli import main
from engine.events import CancelToken, StepEvent
from engine.export import RESULT_FILES
from engine.files import output_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_thread():
    """One torch thread, as each Ray worker has: results then match the Ray executor's bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(assets, out, **kwargs):
    return run_batch(assets, str(out), LocalExecutor("tiny", device="cpu"), models="tiny", **kwargs)


def statuses(report) -> dict[str, str]:
    return {p.asset.id: report.status(p) for p in report.planned}


# -- the manifest ------------------------------------------------------------------------------------

def test_every_bad_row_is_named_with_its_line_before_anything_runs(tmp_path):
    (tmp_path / "lamp.obj").write_text("v 0 0 0\n")
    lines = [
        '{"mesh": "sample:lamp", "prompt": "red base"}',
        '{"mesh": "sample:lamp"}',                                           # 2: no prompt
        '{"mesh": "missing.obj", "prompt": "red base"}',                     # 3: no such file
        '{"mesh": "lamp.obj", "prompt": "red base", "colour": "red"}',       # 4: unknown field
        '{"mesh": "sample:mug", "prompt": "red body", "preset": "quick"}',   # 5: unknown preset
        '{"mesh": "sample:mug", "prompt": "red body", "set": ["views.cuont=2"]}',  # 6: unknown setting
        '{"mesh": "sample:chair", "prompt": "red seat", "relief": "huge"}',  # 7: bad relief
        '{"mesh": "sample:lamp", "prompt": "blue base"}',                    # 8: id "lamp-20000" again
        '{"mesh": "sample:mug", "prompt": "red body", ',                     # 9: not JSON
        '{"mesh": "sample:mug", "prompt": "mug: red", "lock": ["mug"]}',     # 10: lock without previous
        '{"mesh": "sample:mug", "prompt": "blue", "parts": "labels"}',       # 11: parts, but a whole-object prompt
        '{"mesh": "lamp.obj", "prompt": "red base", "parts": "labels"}',     # 12: labels of a file
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(path))
    message = str(caught.value)
    assert "11 bad row(s); nothing was run" in message
    for line, words in [(2, "'prompt' is missing"), (3, "missing.obj"), (4, "colour"), (5, "quick"),
                        (6, "views.cuont"), (7, "huge"), (8, "already used on line 1"), (9, "not a JSON object"),
                        (10, "previous"), (11, "names no part"), (12, "labels")]:
        assert re.search(rf"line {line}: [^\n]*{re.escape(words)}", message), (line, message)
    assert "line 1:" not in message


def test_the_command_refuses_a_bad_manifest_and_writes_nothing(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"mesh": "sample:lamp", "prompt": "red base", "seed": "one"}\n')
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out)]) == 1
    assert "line 1: 'seed' must be a whole number" in capsys.readouterr().err
    assert not out.exists()


def test_csv_rows_read_as_the_jsonl_ones(tmp_path):
    jsonl = read_manifest(write_manifest(tmp_path, [
        {"id": "a", "mesh": "sample:lamp@2000", "prompt": "red base, blue shade", "parts": "labels",
         "set": ["views.count=3", "render.resolution=96"], "relief": ["strong", "shade=none"], "seed": 4}]))
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('id,mesh,prompt,parts,set,relief,seed\n'
                        'a,sample:lamp@2000,"red base, blue shade",labels,views.count=3;render.resolution=96,'
                        'strong;shade=none,4\n')
    assert read_manifest(str(csv_path)) == [dataclasses.replace(jsonl[0], line=2)]  # CSV counts its header


def test_a_folder_of_meshes_is_one_asset_per_mesh(tmp_path):
    for name in ("b.obj", "a.ply", "notes.txt"):
        (tmp_path / name).write_text("")
    assets = folder_manifest(str(tmp_path), "a gold lamp", QUICK, whole=True)
    assert [(a.id, os.path.basename(a.mesh), a.whole, a.preset) for a in assets] == [
        ("a", "a.ply", True, "preview"), ("b", "b.obj", True, "preview")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="holds no mesh file"):
        folder_manifest(str(tmp_path / "empty"), "x")


def test_the_fingerprint_follows_inputs_and_settings_not_the_device(tmp_path):
    mesh = tmp_path / "m.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    base = {"id": "m", "mesh": "m.obj", "prompt": "a red lamp"}
    first = quick_assets(tmp_path, [base])[0]
    fingerprint = asset_fingerprint(first, "tiny")
    assert asset_fingerprint(quick_assets(tmp_path, [{**base, "id": "other"}])[0], "tiny") == fingerprint
    changed = [quick_assets(tmp_path, [{**base, "prompt": "a blue lamp"}])[0],
               quick_assets(tmp_path, [{**base, "iterations": 3}])[0],
               quick_assets(tmp_path, [{**base, "set": "views.count=3"}])[0]]
    assert all(asset_fingerprint(a, "tiny") != fingerprint for a in changed)
    assert asset_fingerprint(first, "default") != fingerprint
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 2 0\nf 1 2 3\n")
    assert asset_fingerprint(first, "tiny") != fingerprint


# -- running -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_batch(tmp_path_factory):
    """The three assets run once with the local executor (one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("batch")
        assets = quick_assets(folder)
        events = []
        report = run(assets, folder / "out", on_event=events.append)
    finally:
        torch.set_num_threads(before)
    return folder, assets, report, events


def test_a_bad_mesh_fails_alone_and_the_others_are_written(first_batch):
    folder, _, report, events = first_batch
    out = folder / "out"
    assert statuses(report) == {"lamp": "done", "broken": "failed", "mug": "done"}
    assert [p.asset.id for p in report.failed] == ["broken"]
    for asset_id in ("lamp", "mug"):
        assert sorted(os.listdir(out / asset_id)) == sorted(RESULT_FILES)
        record = json.loads((out / asset_id / "run.json").read_text())
        assert record["batch"]["id"] == asset_id and len(record["batch"]["fingerprint"]) == 64
    failure = json.loads((out / "broken" / "failure.json").read_text())
    assert "no mesh could be read" in failure["error"]
    rows = summary(out)
    assert {k: (v["status"], v["this_run"]) for k, v in rows.items()} == {
        "lamp": ("done", "done"), "broken": ("failed", "failed"), "mug": ("done", "done")}
    assert rows["broken"]["error"] == failure["error"] and rows["lamp"]["device"] == "cpu"
    finished = [e.asset_id for e in events if isinstance(e, AssetEvent) and e.outcome is not None]
    assert finished == ["lamp", "broken", "mug"]
    assert any(isinstance(e, StepEvent) for e in events)  # each asset's own progress comes through


def test_each_asset_is_the_single_commands_result(first_batch, tmp_path):
    folder, _, _, _ = first_batch
    out = tmp_path / "single"
    assert main(["stylize", "sample:lamp@2000", "--prompt", "red base, blue shade", "--parts-from", "labels",
                 "--seed", "3", "--preset", "preview", "--iterations", "2", "--set", "views.count=2",
                 "--set", "render.resolution=64", "--out", str(out), "--quiet"]) == 0
    batch, single = result_arrays(folder / "out" / "lamp"), result_arrays(out)
    assert batch.keys() == single.keys()
    assert np.array_equal(batch["part_names"], single["part_names"]) and np.array_equal(batch["faces"], single["faces"])
    # the single command runs with every thread, the batch above with one: the same math, summed in another order
    for key in ("colors_srgb", "displacement", "vertices"):
        assert_close(batch[key], single[key], rel=SAME_MATH)


def test_a_rerun_skips_what_is_done_and_redoes_what_changed(first_batch, tmp_path, one_thread):
    folder, assets, _, _ = first_batch
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    stamp = os.stat(out / "lamp" / "result.npz").st_mtime_ns
    again = run(assets, out)
    assert statuses(again) == {"lamp": "skipped (done)", "broken": "skipped (failed before)", "mug": "skipped (done)"}
    assert not again.outcomes and [p.asset.id for p in again.failed] == ["broken"]
    assert os.stat(out / "lamp" / "result.npz").st_mtime_ns == stamp

    changed = quick_assets(tmp_path, [{**ROWS[0], "prompt": "blue base, red shade"}, *ROWS[1:]])
    redone = run(changed, out, retry_failed=True)
    assert statuses(redone) == {"lamp": "done", "broken": "failed", "mug": "skipped (done)"}
    assert json.loads((out / "lamp" / "run.json").read_text())["prompt"] == "blue base and red shade"


def test_stop_ends_after_the_running_asset_and_the_next_run_finishes(tmp_path, one_thread):
    assets = quick_assets(tmp_path, [ROWS[0], ROWS[2]])
    stop = CancelToken()

    def stop_after_first(event):
        if isinstance(event, AssetEvent) and event.outcome is not None:
            stop.cancel()

    report = run(assets, tmp_path / "out", on_event=stop_after_first, stop=stop)
    assert statuses(report) == {"lamp": "done", "mug": "not run"} and report.stopped
    assert summary(tmp_path / "out")["mug"]["status"] == "pending"
    assert not (tmp_path / "out" / "mug").exists()
    rest = run(assets, tmp_path / "out")
    assert statuses(rest) == {"lamp": "skipped (done)", "mug": "done"} and not rest.stopped


def test_cancel_mid_asset_keeps_the_earlier_result_and_the_next_run_resumes(tmp_path, one_thread):
    out = tmp_path / "out"
    earlier = run(quick_assets(tmp_path, [ROWS[2]]), out)
    assert statuses(earlier) == {"mug": "done"}
    before = (out / "mug" / "result.npz").read_bytes()
    longer = quick_assets(tmp_path, [{**ROWS[2], "prompt": "body: red", "iterations": 6}])
    cancel = CancelToken()

    def cancel_at_step_3(event):
        if isinstance(event, StepEvent) and event.step == 3:
            cancel.cancel()

    cut = run(longer, out, on_event=cancel_at_step_3, cancel=cancel)
    assert statuses(cut) == {"mug": "cancelled"}
    assert (out / "mug" / "result.npz").read_bytes() == before  # the earlier result, untouched
    assert (out / "mug" / "checkpoint.pt").exists()
    steps = []
    resumed = run(longer, out, on_event=lambda e: steps.append(e.step) if isinstance(e, StepEvent) else None)
    assert statuses(resumed) == {"mug": "done"}
    assert steps[0] > 1 and steps[-1] == 6  # continued from the checkpoint, not from step 1
    assert not (out / "mug" / "checkpoint.pt").exists()
    assert json.loads((out / "mug" / "run.json").read_text())["prompt"] == "red body"


def test_an_asset_another_run_is_writing_is_left_to_it(tmp_path, one_thread):
    assets = quick_assets(tmp_path, [ROWS[2]])
    with output_lock(str(tmp_path / "out" / "mug")):
        busy = run(assets, tmp_path / "out")
    assert statuses(busy) == {"mug": "failed"}
    assert "another Partstyle run is writing" in busy.outcomes["mug"].error
    assert not (tmp_path / "out" / "mug" / "failure.json").exists()  # the other run's folder: nothing recorded
    assert statuses(run(assets, tmp_path / "out")) == {"mug": "done"}  # once free, it runs


def test_shards_split_the_rows_and_share_the_output_folder(tmp_path, one_thread):
    assets = quick_assets(tmp_path, [ROWS[0], ROWS[1], ROWS[2]])
    out = tmp_path / "out"
    first = run(assets, out, shard=Shard.parse("0/2"))
    assert statuses(first) == {"lamp": "done", "mug": "done"}
    assert summary(out)["broken"]["this_run"] == "another shard's"
    second = run(assets, out, shard=Shard.parse("1/2"))
    assert statuses(second) == {"broken": "failed"}
    assert {k: v["status"] for k, v in summary(out).items()} == {"lamp": "done", "broken": "failed", "mug": "done"}
    for bad in ("2/2", "1", "-1/2", "a/b"):
        with pytest.raises(Exception, match="I/N"):
            Shard.parse(bad)


# -- the command -----------------------------------------------------------------------------------------

def test_the_command_prints_a_table_and_exits_1_when_an_asset_failed(first_batch, tmp_path, capsys):
    folder, _, _, _ = first_batch
    shutil.copytree(folder / "out", tmp_path / "out")
    code = main(["batch", str(folder / "assets.jsonl"), "--out", str(tmp_path / "out"), "--preset", "preview",
                 "--iterations", "2", "--set", "views.count=2", "--set", "render.resolution=64", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 1
    assert re.search(r"lamp\s+skipped \(done\)", printed) and re.search(r"broken\s+skipped \(failed before\)",
                                                                         printed)
    assert "--retry-failed" in printed and "summary.jsonl" in printed


def test_a_folder_batch_runs_every_mesh_with_one_prompt(tmp_path, capsys, one_thread):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    for name in ("one", "two"):
        trimesh.Trimesh(vertices, faces, process=False).export(str(meshes / f"{name}.ply"))
    code = main(["batch", str(meshes), "--prompt", "a red vase", "--whole", "--out", str(tmp_path / "out"),
                 "--preset", "preview", "--iterations", "2", "--set", "views.count=2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert {k: v["status"] for k, v in summary(tmp_path / "out").items()} == {"one": "done", "two": "done"}


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT, which Windows delivers differently")
def test_ctrl_c_stops_after_the_running_asset_and_keeps_the_finished_ones(tmp_path):
    rows = [{**ROWS[0], "id": f"lamp{k}"} for k in range(3)]
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "batch", manifest, "--out", str(out), "--preset", "preview",
         "--iterations", "30", "--set", "views.count=2", "--set", "render.resolution=64"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert wait_for(proc, re.compile(r"lamp1 \d+/30"), timeout=240), "the second asset never started its steps"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    rows = summary(out)
    assert rows["lamp0"]["status"] == "done" and rows["lamp1"]["status"] == "done"  # the running one finished
    assert rows["lamp2"]["status"] == "pending" and not (out / "lamp2").exists()
    assert re.search(r"lamp2\s+not run", stdout)
    assert sorted(os.listdir(out / "lamp1")) == sorted(RESULT_FILES)


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    manifest = write_manifest(tmp_path, ROWS[:1])
    assert main(["batch", manifest, "--out", str(tmp_path / "out"), "--ray", "auto"]) == 1
    assert "pip install 'partstyle[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lamp").exists()


def test_defaults_fill_what_a_row_leaves_out(tmp_path):
    asset = read_manifest(write_manifest(tmp_path, [{"mesh": "sample:mug", "prompt": "body: red", "seed": 9}]),
                          Defaults(preset="faithful", seed=1, iterations=5, overrides=("views.count=3",),
                                   relief=("none",), up_axis="z"))[0]
    settings = asset.settings()
    assert (asset.id, asset.preset, settings.run.seed, settings.optim.iterations) == ("mug-20000", "faithful", 9, 5)
    assert (settings.views.count, settings.views.up_axis, asset.relief) == (3, "z", ("none",))
