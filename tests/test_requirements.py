"""The engine's declared requirements (engine/requirements.py): the version check the add-on's status
makes, and the pins its fallback install command uses."""

from __future__ import annotations

import os
import re

import pytest

from engine.requirements import REQUIREMENTS, TESTED_TORCH, requirement_specs, version_key, version_problems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("text,key", [("2.13.0+cpu", (2, 13, 0)), ("5.0.0rc1", (5, 0, 0)), ("1.26.4", (1, 26, 4)),
                                      ("v4", (4,)), ("installed", ())])
def test_version_key_reads_the_leading_numbers(text, key):
    assert version_key(text) == key


def test_versions_inside_the_ranges_are_fine():
    assert version_problems({"torch": "2.13.0+cpu", "transformers": "5.23", "numpy": "1.24.3",
                             "huggingface_hub": "2.4.0", "safetensors": "0.8.0"}) == []


def test_too_old_and_too_new_are_named_with_the_range():
    problems = {p.name: p.describe() for p in version_problems(
        {"transformers": "5.22.1", "torch": "2.11.0+cu130", "numpy": "2.3.0", "safetensors": "1.0"})}
    assert set(problems) == {"transformers", "torch"}
    assert problems["transformers"] == "transformers 5.22.1 is older than 5.23, the lowest the engine supports"
    assert "torch 2.11.0+cu130 is older than 2.13" in problems["torch"]
    newer = version_problems({"transformers": "6.0.0"})
    assert [p.describe() for p in newer] == ["transformers 6.0.0 is newer than the engine supports "
                                             "(it needs transformers < 6)"]


def test_unknown_and_missing_versions_are_left_to_the_caller():
    assert version_problems({"torch": "installed"}) == []
    assert version_problems({}) == []


def test_install_specs_pin_torch_and_numpy_and_keep_the_ranges():
    specs = requirement_specs(numpy_version="1.26.4")
    assert specs[0] == f"torch=={TESTED_TORCH}"
    assert "numpy==1.26.4" in specs and "transformers>=5.23,<6" in specs
    assert {re.match(r"[A-Za-z0-9_]+", s).group(0) for s in specs} == set(REQUIREMENTS)
    assert "numpy>=1.24" in requirement_specs()


def test_the_tested_torch_is_the_one_build_py_installs():
    with open(os.path.join(ROOT, "build.py"), encoding="utf-8") as fh:
        pinned = re.search(r'"PARTSTYLE_TORCH", "torch==([^"]+)"', fh.read())
    assert pinned and pinned.group(1) == TESTED_TORCH


def test_the_lowest_torch_declared_is_the_tested_one():
    """Only TESTED_TORCH runs the suite (both stages of `build.py test` install it), so the range starts there:
    a lower bound below it would claim releases no test has run."""
    lowest, _below = REQUIREMENTS["torch"]
    assert version_key(lowest) == version_key(TESTED_TORCH)[:len(version_key(lowest))]
