"""The add-on's headless batch command (addon/cli.py), end to end in a subprocess.

Without a Blender binary here, the command runs as ``python addon/cli.py --blend FILE -- ...``
with Blender as the ``bpy`` module: the same code path as ``blender -b FILE --python addon/cli.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import FAST_OVERRIDES, file_digest, group_weights, make_lamp, reset_scene

from addon import bridge, engine_link, nodes, runs
from addon.cli import build_parser, request_for, script_args
from addon.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "addon", "cli.py")


def run_cli(*args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the command must find the add-on and the engine on its own
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)



@pytest.fixture(scope="module")
def blend_file(tmp_path_factory):
    reset_scene()
    make_lamp("Lamp")
    make_lamp("Lamp2", user_data=True)
    bpy.context.scene.collection.objects.link(bpy.data.objects.new("Marker", None))  # an empty, not a mesh
    path = str(tmp_path_factory.mktemp("cli") / "input.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    reset_scene()
    return path


def test_arguments_after_the_double_dash_are_the_scripts():
    blender = ["/usr/bin/blender", "-b", "f.blend", "--python-exit-code", "1", "--python", "addon/cli.py",
               "--", "--object", "A"]
    assert script_args(blender) == ["--object", "A"]
    assert script_args(["addon/cli.py", "--blend", "f.blend", "--", "--object", "A"]) == [
        "--blend", "f.blend", "--object", "A"]


def test_batch_stylizes_several_objects_and_saves(blend_file, tmp_path):
    out = str(tmp_path / "result.blend")
    sets = [a for o in FAST_OVERRIDES for a in ("--set", o)]
    done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--object", "Lamp2",
                   "--prompt", "red base, yellow tube, blue shade", "--use-groups", "--iterations", "2",
                   "--seed", "1", "--models", "tiny", "--device", "cpu", *sets, "--out", out)
    assert done.returncode == 0, done.stderr
    for name in ("Lamp", "Lamp2"):
        assert f"[{name}] step 2/2" in done.stdout and f"[{name}] Stylized '{name}'" in done.stdout
    assert f"saved {out}" in done.stdout
    bpy.ops.wm.open_mainfile(filepath=out)
    for name in ("Lamp", "Lamp2"):
        obj = bpy.data.objects[name]
        colors = bridge.read_color(obj.data, bridge.COLOR_ATTRIBUTE)
        shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)
        assert colors.shape == (len(obj.data.vertices), 3) and np.isfinite(colors).all()
        assert shift.shape == (len(obj.data.vertices),) and np.isfinite(shift).all()
        assert nodes.displace_modifier(obj) is not None
    assert [m.name for m in bpy.data.objects["Lamp2"].data.materials] == ["UserMaterial"]
    reset_scene()


def test_batch_failure_exits_nonzero_and_saves_nothing(blend_file, tmp_path):
    out = str(tmp_path / "result.blend")
    done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--object", "Lamp2", "--prompt",
                   "red base, blue handle", "--use-groups", "--iterations", "1", "--out", out)
    assert done.returncode == 1
    assert "error: Lamp: 'Lamp' has no vertex group 'part:handle'" in done.stderr
    assert "2 of 2 object(s) failed" in done.stderr and "nothing was saved" in done.stderr
    assert not os.path.exists(out)
    bad = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--prompt", "x", "--out", "result.txt")
    assert bad.returncode == 2 and "ending in .blend" in bad.stderr


def test_batch_refuses_to_save_over_its_input(blend_file):
    """``--out`` naming the input file is refused before any work, however the path is written."""
    folder, name = os.path.split(blend_file)
    original = file_digest(blend_file)
    link = os.path.join(folder, "link-to-input.blend")
    if not os.path.exists(link):
        os.symlink(blend_file, link)
    for out, cwd in ((blend_file, "/"), (os.path.join(".", name), folder), (link, "/")):
        done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--prompt", "red base, blue shade",
                       "--use-groups", "--iterations", "1", "--out", out, cwd=cwd)
        assert done.returncode == 2, (out, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --out {out} is the input .blend file"), done.stderr
        assert "[Lamp]" not in done.stdout, "nothing ran"
        assert file_digest(blend_file) == original



def test_batch_in_blender_refuses_to_save_over_the_open_file(blend_file, capsys):
    """``blender -b FILE --python cli.py``: the input is the file Blender opened (no --blend)."""
    original = file_digest(blend_file)
    bpy.ops.wm.open_mainfile(filepath=blend_file)
    try:
        code = cli_main(["--object", "Lamp", "--prompt", "red base", "--out", os.path.relpath(blend_file)])
    finally:
        reset_scene()
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: --out {os.path.relpath(blend_file)} is the input .blend file")
    assert file_digest(blend_file) == original


def test_batch_checks_every_object_before_running_any(blend_file, tmp_path):
    out = str(tmp_path / "result.blend")
    done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--object", "Nope", "--object", "Marker",
                   "--object", "lamp2", "--prompt", "red base, blue shade", "--use-groups", "--iterations", "1",
                   "--out", out)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --object: "), done.stderr
    for problem in ("no object named 'Nope'", "'Marker' is an empty object, not a mesh", "no object named 'lamp2'",
                    "Mesh objects there: Lamp, Lamp2."):
        assert problem in lines[0]
    assert "'Lamp'" not in lines[0]
    assert "[Lamp]" not in done.stdout, "no object ran"
    assert not os.path.exists(out)


def test_batch_checks_where_it_will_save_before_running(blend_file, tmp_path):
    """A result that could not be saved is found before any object runs, not after the whole batch."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = tmp_path / "looks-like.blend"
    folder.mkdir()
    for out, message in ((str(folder), "is a folder"), (str(blocker / "result.blend"), "exists and is not a folder"),
                         ("/proc/partstyle/result.blend", "cannot be written")):
        done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--prompt", "red base, blue shade",
                       "--use-groups", "--iterations", "1", "--out", out)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], (out, done.stderr)
        assert "[Lamp]" not in done.stdout, "nothing ran"


def test_relief_options_become_the_requests_relief():
    base = ["--object", "Lamp", "--prompt", "red base, yellow tube, blue shade", "--out", "r.blend"]
    request = request_for("Lamp", build_parser().parse_args(base), runs, engine_link)
    assert (request.relief, request.part_relief) == (runs.RELIEF_DEFAULT, ())
    args = build_parser().parse_args([*base, "--relief", "tube=none", "--relief", "strong", "--relief", "shade = 0.2"])
    request = request_for("Lamp", args, runs, engine_link)
    assert request.relief == "strong" and request.part_relief == (("tube", "none"), ("shade", "0.2"))


def test_bad_relief_is_refused_before_any_object_runs(blend_file, tmp_path, capsys):
    out = str(tmp_path / "result.blend")
    cases = [
        (["--relief", "huge"], "red base, blue shade", "--relief: relief 'huge' is not understood; use none, subtle"),
        (["--relief", "strong", "--relief", "none"], "red base, blue shade",
         "--relief for the whole object was given 2 times (strong, none)"),
        (["--relief", "shade=9"], "red base, blue shade", "--relief: relief '9' is not understood"),
        (["--relief", "handle=none"], "red base, blue shade",
         "--relief: relief is set for 'handle', which the prompt does not name (base, shade)"),
        (["--relief", "tube=none"], "a lamp made of gold", "describes the whole object and names no parts"),
    ]
    try:
        for relief, prompt, message in cases:
            code = cli_main(["--blend", blend_file, "--object", "Lamp", "--prompt", prompt, "--use-groups",
                             "--iterations", "1", "--out", out, *relief])
            captured = capsys.readouterr()
            lines = captured.err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
                relief, captured.err)
            assert "[Lamp]" not in captured.out, "nothing ran"
            assert not os.path.exists(out)
    finally:
        reset_scene()


def test_batch_relief_reaches_the_engine(blend_file, tmp_path):
    """``--relief none --relief base=strong``: only the base may move, every other vertex stays exactly put."""
    out = str(tmp_path / "result.blend")
    sets = [a for o in FAST_OVERRIDES for a in ("--set", o)]
    done = run_cli("--blend", blend_file, "--", "--object", "Lamp", "--prompt", "red base, yellow tube, blue shade",
                   "--use-groups", "--iterations", "2", "--models", "tiny", "--device", "cpu", *sets,
                   "--relief", "none", "--relief", "base=strong", "--out", out)
    assert done.returncode == 0, done.stderr
    bpy.ops.wm.open_mainfile(filepath=out)
    try:
        obj = bpy.data.objects["Lamp"]
        shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)
        base = group_weights(obj)["part:base"]
        assert np.all(shift[base == 0.0] == 0.0), "relief none outside the base"
        assert np.abs(shift[base == 1.0]).max() > 0.0, "the base's own relief (strong)"
    finally:
        reset_scene()
