"""``python -m engine`` keeps Python's garbage collector off what it keeps for good: no full collection
while its command line's modules (torch among them) import, those modules frozen afterwards, none
while a run imports the models' code, and every object frozen before the interpreter's teardown
(engine/collector.py)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from engine.collector import YOUNG_COLLECTION_EVERY, exit_without_collecting, kept_for_good

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_objects_made_in_the_block_are_made_without_collections_and_frozen():
    before = gc.get_freeze_count()
    was_enabled = gc.isenabled()
    try:
        with kept_for_good():
            assert not gc.isenabled()
            made = [[index] for index in range(5000)]  # tracked containers
        assert gc.isenabled() == was_enabled
        assert gc.get_freeze_count() >= before + len(made)
        collectable = {id(obj) for obj in gc.get_objects()}  # every generation but the frozen one
        assert all(gc.is_tracked(item) and id(item) not in collectable for item in made)
        gc.disable()
        with kept_for_good():
            pass
        assert not gc.isenabled()  # the state it found is restored
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_exit_without_collecting_leaves_nothing_for_teardown_to_walk():
    try:
        tracked = len(gc.get_objects())
        exit_without_collecting()
        assert gc.get_freeze_count() >= tracked - 100
        assert len(gc.get_objects()) < 100
    finally:
        gc.unfreeze()


# In a bare interpreter: how many full collections making 300,000 kept containers (as many as importing
# the models' code makes) sets off at CPython's thresholds, then after collect_in_larger_steps.
_MAKING = """
import gc, json
from engine.collector import collect_in_larger_steps
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
def full_collections_making(count):
    start = len(full)
    kept = [[index] for index in range(count)]
    return len(full) - start, kept
default, kept = full_collections_making(300_000)
collect_in_larger_steps()
larger, kept_too = full_collections_making(300_000)
print(json.dumps({"default": default, "larger": larger, "threshold": gc.get_threshold()}))
"""


def test_collecting_in_larger_steps_makes_no_full_collection_while_modules_load():
    done = subprocess.run([sys.executable, "-c", _MAKING], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["default"] >= 2, figures  # the cost it removes: each walks every tracked object
    assert figures["larger"] == 0, figures
    assert figures["threshold"][0] == YOUNG_COLLECTION_EVERY, figures


# Runs `python -m engine settings` (which imports torch) and writes what the collector did: full
# collections during it, objects frozen and objects still tracked once the command is done.
_COMMAND = """
import gc, json, runpy, sys
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
sys.argv = ["engine", *json.loads(sys.argv[1])]
try:
    runpy.run_module("engine", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write(json.dumps({"full": len(full), "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def _command_collections(*arguments: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _COMMAND, json.dumps(arguments)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_the_command_line_imports_without_full_collections_and_exits_with_everything_frozen():
    figures = _command_collections("settings")
    assert figures["full"] == 0, figures  # importing torch alone runs several where the collector is left on
    assert figures["frozen"] > 50_000 and figures["tracked"] < 1_000, figures


def test_a_run_loads_its_models_code_without_full_collections(tmp_path):
    # one iteration with the tiny models: the run imports transformers' CLIP and Grounding DINO code,
    # which ran four full collections before collect_in_larger_steps
    figures = _command_collections(
        "stylize", "sample:lamp", "--prompt", "red base, yellow tube, blue shade", "--preset", "preview",
        "--iterations", "1", "--models", "tiny", "--device", "cpu", "--relief", "none", "--quiet",
        "--out", str(tmp_path / "out"))
    assert figures["full"] == 0, figures
    assert (tmp_path / "out" / "result.npz").is_file()
