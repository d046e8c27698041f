"""``python -m engine`` keeps freed memory for reuse (glibc's malloc): once a few steps have run, a
typical step's large blocks (tests/page_faults.py: a Grounding DINO feed-forward layer's 44 MB activations)
cost no page faults, where a process left as it is maps and faults each of them afresh every step.
Ray's workers do the same (tests/test_batch_ray.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from page_faults import BLOCK_PAGES, GLIBC, NOT_GLIBC

from engine.allocator import KEEP_FREED_MEMORY_VARIABLE, keep_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
pytestmark = pytest.mark.skipif(not GLIBC, reason=NOT_GLIBC)

# Writes (to stderr, last line) the steady workload's page faults a step (median) after: "plain"
# nothing, "cli" a whole `python -m engine settings`.
_FAULTS = """
import json, runpy, sys
mode, tests = sys.argv[1:]
if mode == "cli":
    sys.argv = ["engine", "settings"]
    try:
        runpy.run_module("engine", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
sys.path.insert(0, tests)
from page_faults import steady_step_faults
sys.stderr.write(json.dumps(steady_step_faults()))
"""


def steady_faults(mode: str, **env: str) -> float:
    environment = {k: v for k, v in os.environ.items() if k != KEEP_FREED_MEMORY_VARIABLE} | env
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode, TESTS], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_a_plain_process_faults_the_large_blocks_every_step():
    """The cost being removed: glibc unmaps each freed block, so the next step's pages fault again."""
    assert steady_faults("plain") > BLOCK_PAGES


def test_the_command_line_keeps_freed_memory():
    """`python -m engine` calls keep_freed_memory first thing: the blocks are served again without faults."""
    assert steady_faults("cli") < BLOCK_PAGES // 10


def test_the_variable_leaves_malloc_as_it_is(monkeypatch):
    assert steady_faults("cli", **{KEEP_FREED_MEMORY_VARIABLE: "0"}) > BLOCK_PAGES
    monkeypatch.setenv(KEEP_FREED_MEMORY_VARIABLE, "0")
    assert keep_freed_memory() is False  # and does nothing in this process
