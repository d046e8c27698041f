"""The library shims of engine/compat.py, each with the versions it covers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch
import transformers
from packaging.version import Version

from engine.compat import (
    GROUNDING_DELIMITER_IDS,
    GROUNDING_MIN_TRANSFORMERS,
    TENSOR_CHECKS_VARIABLE,
    check_caption_batch,
    grounding_delimiter_ids,
    require_grounding_support,
    skip_tensor_checks,
)
from engine.errors import DependencyError, PartstyleError
from engine.tiny_models import build_tiny_grounding_dino


def test_delimiter_ids_of_the_installed_library_are_the_projects_table():
    model, _ = build_tiny_grounding_dino()
    assert grounding_delimiter_ids(model) == tuple(GROUNDING_DELIMITER_IDS.values()) == (101, 102, 1012, 1029)


def test_delimiter_ids_come_from_the_model_where_it_keeps_them():
    inner = types.SimpleNamespace(special_tokens=torch.tensor([7, 8, 9, 10]))
    assert grounding_delimiter_ids(types.SimpleNamespace(model=inner)) == (7, 8, 9, 10)


def test_delimiter_ids_fall_back_to_the_library_constant_without_the_buffer():
    """transformers 5.0 - 5.22 keep the ids only in the module constant SPECIAL_TOKENS."""
    from transformers.models.grounding_dino import modeling_grounding_dino

    bare = types.SimpleNamespace(model=types.SimpleNamespace())
    assert grounding_delimiter_ids(bare) == tuple(modeling_grounding_dino.SPECIAL_TOKENS)


def test_the_installed_transformers_is_supported_for_grounding():
    assert Version(transformers.__version__) >= Version(GROUNDING_MIN_TRANSFORMERS)
    require_grounding_support()  # raises for an unsupported version


@pytest.mark.parametrize("version", ["5.0.0", "5.17.0", "5.22.2", "4.57.1"])
def test_older_transformers_is_refused_for_grounding_with_the_fix(version):
    with pytest.raises(DependencyError, match=r"pip install -U \"transformers>=5\.23,<6\"") as err:
        require_grounding_support(version)
    assert version in str(err.value) and issubclass(DependencyError, PartstyleError)


@pytest.mark.parametrize("version", ["5.23.0", "5.24.0", "5.30.1"])
def test_fixed_transformers_is_accepted(version):
    require_grounding_support(version)


def test_a_training_batch_must_share_one_caption():
    check_caption_batch([("base", "shade"), ("base", "shade")])
    with pytest.raises(ValueError, match="share one caption"):
        check_caption_batch([("base", "shade"), ("shade", "base")])


def test_plain_http_downloads_switch_xet_off_and_read_a_megabyte_at_a_time():
    """The shim's two library details: Xet availability is decided per call from
    ``constants.HF_HUB_DISABLE_XET``, and ``http_get`` reads ``constants.DOWNLOAD_CHUNK_SIZE`` per call
    (tests/test_downloads.py sees the per-megabyte progress through the real library)."""
    import inspect

    from huggingface_hub import constants, file_download

    from engine.compat import DOWNLOAD_CHUNK_BYTES, plain_http_downloads

    before = (file_download.is_xet_available(), constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE)
    with plain_http_downloads():
        assert not file_download.is_xet_available()
        assert constants.DOWNLOAD_CHUNK_SIZE == DOWNLOAD_CHUNK_BYTES == 1 << 20
    assert (file_download.is_xet_available(), constants.HF_HUB_DISABLE_XET, constants.DOWNLOAD_CHUNK_SIZE) == before
    assert "constants.DOWNLOAD_CHUNK_SIZE" in inspect.getsource(file_download.http_get)


def _device_reads_of_a_proposals_forward() -> tuple[int, int]:
    """Values a tiny Grounding DINO's dense-proposals forward reads back from its tensors (each a wait
    for the device on a GPU): ``_local_scalar_dense`` calls, counted; and the model's encoder layers."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.grounding import GroundingDetector
    from engine.models import ModelStore

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Reads.count += func.overloadpacket.__name__ == "_local_scalar_dense"
            return func(*args, **(kwargs or {}))

    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), Reads():
        detector.phrase_logits(images, detector.caption(["base", "shade"]))
    return Reads.count, detector.model.config.encoder_layers


def test_the_switch_skips_grounding_dinos_checks_in_the_installed_transformers(monkeypatch):
    """transformers reads TRANSFORMERS_DISABLE_TORCH_CHECK at each check (5.23 and 5.24): with it, a
    proposals forward reads one value fewer from the device for each deformable attention layer."""
    from transformers.utils.import_utils import torch_compilable_check

    monkeypatch.delenv(TENSOR_CHECKS_VARIABLE, raising=False)
    with pytest.raises(ValueError, match="the check"):
        torch_compilable_check(torch.tensor(False), "the check")
    checked, layers = _device_reads_of_a_proposals_forward()
    monkeypatch.setenv(TENSOR_CHECKS_VARIABLE, "1")
    torch_compilable_check(torch.tensor(False), "the check")  # skipped
    assert checked - _device_reads_of_a_proposals_forward()[0] == layers


def test_skip_tensor_checks_keeps_a_value_the_user_set(monkeypatch):
    monkeypatch.delenv(TENSOR_CHECKS_VARIABLE, raising=False)
    assert skip_tensor_checks() is True and os.environ[TENSOR_CHECKS_VARIABLE] == "1"
    monkeypatch.setenv(TENSOR_CHECKS_VARIABLE, "0")
    assert skip_tensor_checks() is False and os.environ[TENSOR_CHECKS_VARIABLE] == "0"


_SWITCH = """
import json, os, runpy, sys
sys.argv = ["engine", "settings"]
try:
    runpy.run_module("engine", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write(json.dumps(os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")))
"""


def test_the_command_line_skips_the_checks():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != TENSOR_CHECKS_VARIABLE}
    done = subprocess.run([sys.executable, "-c", _SWITCH], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == "1"
