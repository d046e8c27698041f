"""The model store: tiny models offline, real models only from disk, safetensors only."""

from __future__ import annotations

import os

import pytest
import torch
from tolerances import SAME_MATH, assert_close

from engine.errors import ModelFormatError, ModelNotFound
from engine.models import DEFAULT_CLIP, FETCH_COMMAND, ModelStore
from engine.tiny_models import TINY_VOCABULARY, build_tiny_clip


def test_tiny_tokenizer_knows_whole_words_and_never_gives_unknown():
    _, tokenizer = build_tiny_clip()
    tokens = tokenizer.tokenize("a red lamp with a gold shade")
    assert tokens == ["a</w>", "red</w>", "lamp</w>", "with</w>", "a</w>", "gold</w>", "shade</w>"]
    assert all(word in TINY_VOCABULARY for word in ("red", "gold", "shade"))
    ids = tokenizer("zebra-striped!")["input_ids"]
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "zebra-striped!"


def test_tiny_clip_is_the_same_on_every_build_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    (a, _), (b, _) = build_tiny_clip(), build_tiny_clip()
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_tiny_store_gives_a_frozen_model():
    bundle = ModelStore("tiny").clip("cpu")
    assert bundle.image_size == 224
    assert not any(p.requires_grad for p in bundle.model.parameters())


def test_default_models_offline_name_the_model_and_the_fetch_command(tmp_path):
    store = ModelStore("default", allow_download=False, cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFound) as err:
        store.clip("cpu")
    assert DEFAULT_CLIP in str(err.value) and FETCH_COMMAND in str(err.value)


def test_the_segmenter_is_taken_at_its_pinned_revision(tmp_path, monkeypatch):
    from engine import downloads, models

    asked = []

    def download_models(sources, **kwargs):
        asked.append([(s.repo_id, s.revision) for s in sources])
        return [str(tmp_path)]

    monkeypatch.setattr(downloads, "download_models", download_models)
    monkeypatch.setattr(models, "download_models", download_models)
    assert models.hub_folder(models.DEFAULT_SEGMENTER, allow_download=True, cache_dir=str(tmp_path)) == str(tmp_path)
    assert asked == [[(models.DEFAULT_SEGMENTER, models.DEFAULT_SEGMENTER_REVISION)]]
    assert len(models.DEFAULT_SEGMENTER_REVISION) == 40


def test_a_saved_folder_loads_back_with_the_same_embeddings(tmp_path):
    model, tokenizer = build_tiny_clip()
    folder = tmp_path / "models" / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    bundle = ModelStore(str(tmp_path / "models")).clip("cpu")
    tokens = tokenizer(["a blue mug"], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(**tokens).pooler_output
        got = bundle.model.get_text_features(**tokens).pooler_output
    assert_close(got, expected, rel=SAME_MATH, what="text embeddings")


def test_pickled_weights_are_refused(tmp_path):
    model, _ = build_tiny_clip()
    folder = tmp_path / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            os.rename(folder / name, folder / "pytorch_model.bin")
    with pytest.raises(ModelFormatError, match=r"pytorch_model\.bin"):
        ModelStore(str(folder)).clip("cpu")


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        ModelStore(str(tmp_path / "nope")).clip("cpu")
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        ModelStore(str(tmp_path)).clip("cpu")
