"""`python -m engine` as a user runs it: files written, clear errors, Ctrl-C and --resume."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import trimesh
from tolerances import SAME_MATH, assert_close

from engine.colors import srgb_to_linear
from engine.export import RESULT_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "views.count=2", "--set", "render.resolution=64", "--set", "field.width=64"]


def engine(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = engine("stylize", "sample:mug@5k", "--prompt", "a blue mug", "--out", str(out), "--iterations", "3",
                  "--seed", "7", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_stylize_writes_every_result_file(finished):
    out, proc = finished
    assert sorted(os.listdir(out)) == sorted(RESULT_FILES)
    assert f"wrote {len(RESULT_FILES)} files" in proc.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["prompt"] == "a blue mug" and record["seed"] == 7 and record["preset"] == "fast"
    assert record["settings"]["optim"]["iterations"] == 3 and record["settings"]["views"]["count"] == 2
    assert len(record["losses"]["total"]) == 3 and record["steps"] == 3
    assert {"torch", "transformers", "python"} <= set(record["versions"])


def test_result_files_agree_with_each_other(finished):
    out, _ = finished
    data = np.load(out / "result.npz")
    assert_close(data["colors_linear"], srgb_to_linear(data["colors_srgb"]), rel=SAME_MATH, what="linear colors")
    glb = trimesh.load(out / "stylized.glb", force="mesh", process=False)
    assert_close(np.asarray(glb.vertices), data["vertices"], rel=SAME_MATH, what="GLB vertices")
    assert np.array_equal(np.asarray(glb.faces), data["faces"])
    assert data["displacement"].shape == (data["vertices"].shape[0],)


def test_progress_bar_and_stages_go_to_stderr(finished):
    _, proc = finished
    assert "optimizing: 3 iterations" in proc.stderr
    assert "3/3" in proc.stderr  # the progress bar reached the end


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample:mug@5k", "--prompt", "x", "--set", "optim.iters=3"], "unknown setting 'optim.iters'"),
        (["missing.obj", "--prompt", "x"], "missing.obj: no such file"),
        (["sample:sofa", "--prompt", "x"], "lamp, chair, mug"),
        (["sample:mug@5k", "--prompt", "  "], "the prompt is empty"),
        (["sample:mug@5k", "--prompt", "x", "--device", "cuda:7"], "cuda"),
        (["sample:mug@5k", "--prompt", "x", "--models", "/nonexistent/models"], "does not exist"),
    ],
)
def test_bad_input_exits_with_one_clear_line(tmp_path, args, message):
    proc = engine("stylize", *args, "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_failed_run_leaves_earlier_results_untouched(finished, tmp_path):
    out, _ = finished
    before = {name: (out / name).read_bytes() for name in RESULT_FILES}
    proc = engine("stylize", "sample:mug@5k", "--prompt", "a red mug", "--out", str(out), "--resume", "--quiet", *SMALL)
    assert proc.returncode == 1 and "no checkpoint" in proc.stderr
    assert {name: (out / name).read_bytes() for name in RESULT_FILES} == before


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT, which Windows delivers differently")
def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "out"
    args = ["stylize", "sample:mug@5k", "--prompt", "a green mug", "--out", str(out), *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "engine", *args, "--iterations", "100000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_for(proc, re.compile(r"\b[1-9]\d*/100000"), timeout=180)  # an iteration finished
        assert seen, "the run never reported a finished iteration"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    checkpoint = out / "checkpoint.pt"
    step = int(torch.load(checkpoint, weights_only=True)["step"])
    assert step >= 1
    resumed = engine(*args, "--iterations", str(step + 2), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "run.json").read_text())
    assert len(record["losses"]["total"]) == step + 2
    assert not checkpoint.exists()


def wait_for(proc: subprocess.Popen, pattern: re.Pattern, timeout: float) -> bool:
    """Read the process's stderr (progress bars end lines with \\r, not \\n) until ``pattern`` shows."""
    text, deadline = "", time.time() + timeout
    fd = proc.stderr.fileno()
    while time.time() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            text += os.read(fd, 4096).decode(errors="replace")
            if pattern.search(text):
                return True
    return False


def test_settings_and_info_commands():
    settings = engine("settings", "--preset", "faithful")
    assert settings.returncode == 0 and "optim.iterations = 1500" in settings.stdout
    assert "guidance.grounding_every = 2" in settings.stdout
    info = engine("info")
    assert info.returncode == 0 and "torch" in info.stdout and "tiny" in info.stdout
