"""The add-on's headless command with a manifest of objects (addon/cli_manifest.py), run in-process
with Blender as the ``bpy`` module: each row its own prompt, failures recorded while the batch goes
on, every row checked before any object runs, Ctrl-C saving what finished."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import (
    FAST_OVERRIDES,
    assert_same_state,
    file_digest,
    group_weights,
    make_lamp,
    object_state,
    reset_scene,
)

from addon import bridge, cli, nodes
from addon.cli import main as cli_main

FAST = ["--models", "tiny", "--device", "cpu", "--iterations", "2", *[a for o in FAST_OVERRIDES for a in ("--set", o)]]



@pytest.fixture(scope="module")
def blend_file(tmp_path_factory):
    reset_scene()
    make_lamp("Lamp")
    make_lamp("Lamp2", user_data=True)
    make_lamp("Plain", groups=False)  # no part:<name> groups: a use_groups row fails when it runs
    bpy.context.scene.collection.objects.link(bpy.data.objects.new("Marker", None))  # an empty, not a mesh
    path = str(tmp_path_factory.mktemp("manifest") / "input.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    reset_scene()
    return path


@pytest.fixture
def keep_sigint():
    """The command makes Ctrl-C cancel its run; the test process keeps its own handler."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def summary(out: str) -> list[dict]:
    with open(out[: -len(".blend")] + ".summary.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def states(path: str, names) -> dict:
    bpy.ops.wm.open_mainfile(filepath=path)
    try:
        return {name: object_state(bpy.data.objects[name]) for name in names}
    finally:
        reset_scene()


def assert_stylized(obj) -> np.ndarray:
    """``obj`` carries a Partstyle result (colors, displacement and its modifier); returns the displacement."""
    colors = bridge.read_color(obj.data, bridge.COLOR_ATTRIBUTE)
    shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)
    assert colors is not None and colors.shape == (len(obj.data.vertices), 3) and np.isfinite(colors).all()
    assert shift is not None and shift.shape == (len(obj.data.vertices),) and np.isfinite(shift).all()
    assert nodes.displace_modifier(obj) is not None
    return shift


def test_one_failed_object_does_not_stop_the_others(blend_file, tmp_path, capsys, keep_sigint):
    original = file_digest(blend_file)
    before = states(blend_file, ["Plain", "Lamp2"])
    manifest = write_jsonl(tmp_path / "objects.jsonl", [
        {"object": "Lamp", "prompt": "red base, yellow tube, blue shade", "use_groups": True},
        "# Plain has no part groups: its row fails when it runs",
        {"object": "Plain", "prompt": "red base, blue shade", "use_groups": True},
        {"object": "Lamp2", "prompt": "green base, blue shade", "use_groups": True, "seed": 2,
         "relief": ["none", "base=strong"]},
    ])
    out = str(tmp_path / "out" / "result.blend")
    code = cli_main(["--blend", blend_file, "--manifest", manifest, "--out", out, *FAST])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "error: Plain (line 3): 'Plain' has no vertex group 'part:base'" in captured.err
    assert "error: 1 of 3 object(s) failed (Plain); saved the 2 that succeeded" in captured.err
    assert "[Lamp] Stylized 'Lamp'" in captured.out and "[Lamp2] Stylized 'Lamp2'" in captured.out
    assert f"saved {out}" in captured.out
    table = [line.split() for line in captured.out.splitlines() if line.startswith(("object ", "Lamp ", "Lamp2 ",
                                                                                     "Plain "))]
    assert [cells[:2] for cells in table] == [["object", "status"], ["Lamp", "done"], ["Plain", "failed"],
                                              ["Lamp2", "done"]]
    records = summary(out)
    assert [(r["object"], r["line"], r["status"]) for r in records] == [
        ("Lamp", 1, "done"), ("Plain", 3, "failed"), ("Lamp2", 4, "done")]
    assert [r["device"] for r in records] == ["cpu", "", "cpu"]
    assert records[1]["error"].startswith("'Plain' has no vertex group 'part:base'")
    assert records[0]["error"] == records[2]["error"] == ""
    assert all(r["seconds"] >= 0 for r in records) and records[0]["seconds"] > 0
    assert file_digest(blend_file) == original, "the input file is never written"
    bpy.ops.wm.open_mainfile(filepath=out)
    try:
        assert_stylized(bpy.data.objects["Lamp"])
        shift = assert_stylized(bpy.data.objects["Lamp2"])
        base = group_weights(bpy.data.objects["Lamp2"])["part:base"]
        assert np.all(shift[base == 0.0] == 0.0), "the row's relief none outside the base"
        assert np.abs(shift[base == 1.0]).max() > 0.0, "the row's base=strong"
        assert_same_state(before["Plain"], object_state(bpy.data.objects["Plain"]))
        assert bridge.COLOR_ATTRIBUTE not in bpy.data.objects["Plain"].data.attributes
    finally:
        reset_scene()


def test_every_row_is_checked_before_any_object_runs(blend_file, tmp_path, capsys, keep_sigint):
    original = file_digest(blend_file)
    manifest = write_jsonl(tmp_path / "objects.jsonl", [
        {"object": "Nope", "prompt": "red base"},
        {"object": "Marker", "prompt": "red base"},
        {"object": "Lamp", "prompt": "red base, blue shade", "colour": "red"},
        {"object": "Lamp", "prompt": "red base, blue shade", "relief": "huge"},
        {"object": "Lamp", "prompt": "red base"},
        {"object": "Lamp2", "prompt": "red base, blue shade", "image": "shade=pictures/missing.png"},
        {"object": "Plain", "prompt": "red base", "use_groups": "maybe"},
        {"object": "Plain", "prompt": "red base, blue shade"},
    ])
    out = str(tmp_path / "result.blend")
    code = cli_main(["--blend", blend_file, "--manifest", manifest, "--out", out, *FAST])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith(f"error: {manifest}: 7 bad row(s); nothing was run.")
    assert "warning" not in captured.err and "error:" not in captured.err[len("error:"):], "one error"
    missing = os.path.join(str(tmp_path), "pictures", "missing.png")
    for expected in ("line 1: there is no object named 'Nope'", "line 2: 'Marker' is an empty object, not a mesh",
                     "line 3: unknown field(s) colour; the fields are object, prompt, use_groups, lock, preset, seed, "
                     "iterations, set, relief, image", "line 4: relief: relief 'huge' is not understood",
                     "line 5: 'Lamp' is already on line 4; give each object one row",
                     f"line 6: image: the image for 'shade': '{missing}' does not exist",
                     "line 7: 'use_groups' must be true or false", "Mesh objects in input.blend: Lamp, Lamp2, Plain."):
        assert expected in captured.err, expected
    assert "line 8" not in captured.err
    assert "[Lamp" not in captured.out and "[Plain]" not in captured.out, "no object ran"
    assert not os.path.exists(out) and not os.path.exists(str(tmp_path / "result.summary.jsonl")), "nothing saved"
    assert file_digest(blend_file) == original


def test_manifest_and_object_do_not_go_together(blend_file, tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "objects.jsonl", [{"object": "Lamp", "prompt": "red base"}])
    out = str(tmp_path / "result.blend")
    assert cli_main(["--blend", blend_file, "--manifest", manifest, "--object", "Lamp", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--manifest names the objects and their prompts; leave out --object" in err
    assert cli_main(["--blend", blend_file, "--manifest", manifest, "--prompt", "red base", "--out", out]) == 2
    assert "leave out --prompt" in capsys.readouterr().err
    assert cli_main(["--blend", blend_file, "--object", "Lamp", "--out", out]) == 2
    assert "the following arguments are required: --prompt (or give --manifest FILE)" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_a_csv_manifest_and_ctrl_c_save_what_finished(blend_file, tmp_path, capsys, monkeypatch, keep_sigint):
    """CSV rows run as JSONL ones do; Ctrl-C during the second object cancels it, the first one's
    result is saved, the rest are not run, and the exit code is 130."""
    before = states(blend_file, ["Lamp2"])
    manifest = tmp_path / "objects.csv"
    manifest.write_text('object,prompt,use_groups,seed,set\n'
                        'Lamp,"red base, yellow tube, blue shade",yes,5,views.count=1;render.resolution=64\n'
                        'Lamp2,"green base, blue shade",yes,,\n'
                        'Plain,"red base, blue shade",,,\n')
    call = cli.ProgressLines.__call__

    def interrupt_lamp2(self, event):  # Ctrl-C once Lamp2 has made its first step
        call(self, event)
        if self.name == "Lamp2" and isinstance(event, self.events.StepEvent) and event.step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli.ProgressLines, "__call__", interrupt_lamp2)
    out = str(tmp_path / "result.blend")
    code = cli_main(["--blend", blend_file, "--manifest", str(manifest), "--out", out, *FAST])
    captured = capsys.readouterr()
    assert code == 130, captured.err
    assert "[Lamp] Stylized 'Lamp'" in captured.out and "[Lamp2] step 1/2" in captured.out
    assert "[Plain]" not in captured.out
    assert "cancelled: interrupted; 1 finished object(s) saved, 2 not run" in captured.err
    records = summary(out)
    assert [(r["object"], r["line"], r["status"]) for r in records] == [
        ("Lamp", 2, "done"), ("Lamp2", 3, "not run"), ("Plain", 4, "not run")]
    assert "cancelled" in records[1]["error"] and records[2]["error"] == ""
    bpy.ops.wm.open_mainfile(filepath=out)
    try:
        assert_stylized(bpy.data.objects["Lamp"])
        assert_same_state(before["Lamp2"], object_state(bpy.data.objects["Lamp2"]))
    finally:
        reset_scene()
