"""A model folder that cannot be loaded raises the model error (ModelFormatError), naming the folder."""

from __future__ import annotations

import os
import shutil

import pytest

from engine.errors import ModelFormatError
from engine.models import TINY_CLIP_FOLDER, TINY_GROUNDING_FOLDER, ModelStore


def _copy(tmp_path, folder, role):
    target = tmp_path / role
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize("role, folder", [("clip", TINY_CLIP_FOLDER), ("grounding", TINY_GROUNDING_FOLDER)])
def test_a_config_that_is_not_json_is_a_model_error(tmp_path, role, folder):
    target = _copy(tmp_path, folder, role)
    (target / "config.json").write_text("{ not json")
    with pytest.raises(ModelFormatError, match=f"'{target}' does not hold a loadable"):
        getattr(ModelStore(str(tmp_path)), role)("cpu")


def test_truncated_weights_are_a_model_error(tmp_path):
    target = _copy(tmp_path, TINY_CLIP_FOLDER, "clip")
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFormatError, match="CLIP model"):
        ModelStore(str(tmp_path)).clip("cpu")


def test_a_preprocessor_config_that_is_not_an_object_is_a_model_error(tmp_path):
    target = _copy(tmp_path, TINY_GROUNDING_FOLDER, "grounding")
    (target / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ModelFormatError, match="does not hold a JSON object"):
        ModelStore(str(tmp_path)).grounding("cpu")


def test_weights_of_another_model_are_refused_not_run_random(tmp_path):
    """CLIP's config with the grounding model's weights loads "newly initialized" in the library."""
    target = _copy(tmp_path, TINY_CLIP_FOLDER, "clip")
    shutil.copy(os.path.join(TINY_GROUNDING_FOLDER, "model.safetensors"), target / "model.safetensors")
    with pytest.raises(ModelFormatError, match=r"do not belong to its config\.json .*missing .*unexpected"):
        ModelStore(str(tmp_path)).clip("cpu")


def test_swapped_role_folders_are_refused(tmp_path):
    shutil.copytree(TINY_GROUNDING_FOLDER, tmp_path / "clip")
    shutil.copytree(TINY_CLIP_FOLDER, tmp_path / "grounding")
    store = ModelStore(str(tmp_path))
    with pytest.raises(ModelFormatError):
        store.clip("cpu")
    with pytest.raises(ModelFormatError):
        store.grounding("cpu")


@pytest.mark.parametrize("corrupt", ["renamed", "dev_zero", "empty"])
def test_corrupt_weight_files_are_model_errors(tmp_path, corrupt):
    target = _copy(tmp_path, TINY_CLIP_FOLDER, "clip")
    weights = target / "model.safetensors"
    if corrupt == "renamed":
        weights.rename(target / "weights.safetensors")
    elif corrupt == "dev_zero":
        weights.unlink()
        weights.symlink_to("/dev/zero")
    else:
        weights.write_bytes(b"")
    with pytest.raises(ModelFormatError, match=str(target)):
        ModelStore(str(tmp_path)).clip("cpu")
