"""The test command's runner (build.py test): lint, then the newest- and lowest-versions suites side
by side, each on half of the CPUs, the command failing when either fails.

The suites are replaced by small Python commands: the real ones are what the test command runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def build(monkeypatch, tmp_path):
    """build.py as a module, its set-up steps stubbed and its suites replaced by ``suites[venv]``:
    Python source run as each suite, which sees its own venv name in ``VENV``."""
    spec = importlib.util.spec_from_file_location("partstyle_build", os.path.join(ROOT, "build.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    module.suites = {}
    monkeypatch.setattr(module, "LOWEST_LOG", str(tmp_path / "lowest.log"))
    monkeypatch.setattr(module, "ensure_venv", lambda *args, **kwargs: "newest")
    monkeypatch.setattr(module, "lowest_venv", lambda: "lowest")
    monkeypatch.setattr(module, "lint", lambda python: None)
    monkeypatch.setattr(module, "prepare_extension_wheels", lambda python: {})
    monkeypatch.setattr(module, "pytest_command",
                        lambda python, args: [sys.executable, "-c", f"VENV = {python!r}\n" + module.suites[python]])
    return module


SAYS_ITS_THREADS = "import os; print(VENV, 'threads', os.environ['OMP_NUM_THREADS'], flush=True)"


@pytest.mark.parametrize("failing", ["newest", "lowest"])
def test_the_command_fails_when_either_suite_fails(build, capfd, failing):
    build.suites = {venv: SAYS_ITS_THREADS + (f"\nraise SystemExit({3 if venv == failing else 0})")
                    for venv in ("newest", "lowest")}
    with pytest.raises(SystemExit) as stopped:
        build.task_test([])
    assert stopped.value.code == 3
    printed = capfd.readouterr().out
    assert f"stage {2 if failing == 'newest' else 3}/3" in printed and printed.count("failed") == 1


def test_both_suites_pass_run_at_once_and_the_lowest_output_follows(build, capfd, monkeypatch, tmp_path):
    """Each suite waits for the other to have started: run one after the other they would never see
    each other and fail. Each gets half of the CPUs' threads."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    meets = ("import os, time\n"
             f"folder = {str(tmp_path)!r}\n"
             "open(os.path.join(folder, VENV), 'w').close()\n"
             "other = os.path.join(folder, 'lowest' if VENV == 'newest' else 'newest')\n"
             "deadline = time.monotonic() + 30\n"
             "while not os.path.exists(other) and time.monotonic() < deadline:\n"
             "    time.sleep(0.05)\n"
             "raise SystemExit(0 if os.path.exists(other) else 1)\n")
    build.suites = {"newest": SAYS_ITS_THREADS + "\n" + meets, "lowest": SAYS_ITS_THREADS + "\n" + meets}
    build.task_test([])  # no SystemExit: both passed
    printed = capfd.readouterr().out
    half = str(build.suite_threads())
    assert printed.index(f"newest threads {half}") < printed.index("3/3: the lowest versions' run")
    assert printed.index("3/3: the lowest versions' run") < printed.index(f"lowest threads {half}")
    assert "failed" not in printed


def test_each_suite_gets_half_the_cpus_unless_omp_num_threads_says(build, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert build.suite_threads() == max(1, cpus // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert build.suite_threads() == 3
