"""A model folder that cannot be loaded raises the model error (ModelFormatError), naming the folder."""

from __future__ import annotations

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
