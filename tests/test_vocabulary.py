"""The tiny models' vocabulary: which prompt words they do not know, and the warning before a run."""

from __future__ import annotations

import re
import time

import pytest
import torch
from test_cli import SMALL, engine
from transformers import AutoTokenizer

from engine.models import TINY_CLIP_FOLDER, TINY_GROUNDING_FOLDER, ModelStore
from engine.prompt import parse_prompt
from engine.samples import sample_mesh
from engine.tiny_models import TINY_VOCABULARY
from engine.training.grounding_data import all_part_names
from engine.training.synthetic import random_scene
from engine.training.vocabulary import OBJECT_PARTS
from engine.vocabulary import FILLER_WORDS, known_words, unknown_words, unknown_words_message

UNKNOWN_PROMPT = "Pottery base, gold tube and LINEN shade; pottery handle"


def test_known_words_are_the_training_captions_words():
    """The list is what the tiny models were trained on: every word of the CLIP's captions and the
    grounding model's part names, nothing more."""
    generator = torch.Generator().manual_seed(0)
    seen = {word for _ in range(300) for word in re.findall(r"\w+", random_scene(generator).caption)}
    seen |= set(all_part_names())
    assert seen == set(known_words())


def test_object_parts_are_the_samples_labels():
    for name, parts in OBJECT_PARTS.items():
        assert sample_mesh(name, 500).label_names == parts


def test_one_token_is_not_what_known_means():
    """Why the training list and not the tokenizers: both hold whole tokens for words the training
    never used, and the shipped CLIP tokenizer splits some trained words (learned as pieces)."""
    clip, grounding = (AutoTokenizer.from_pretrained(f) for f in (TINY_CLIP_FOLDER, TINY_GROUNDING_FOLDER))
    untrained = ("pottery", "linen", "gold")
    assert set(untrained) <= set(TINY_VOCABULARY) and not set(untrained) & set(known_words())
    for word in untrained:
        assert len(clip.tokenize(word)) == 1 and len(grounding.tokenize(word)) == 1
    assert clip.tokenize("green") == ["g", "re", "e", "n</w>"]
    for word in known_words():  # the grounding model reads every known word (it learned the part names) whole
        assert len(grounding.tokenize(word)) == 1, (word, grounding.tokenize(word))


@pytest.mark.parametrize("prompt", ["red base, blue shade", "a striped green mug", "seat: dotted black; legs: white",
                                    "the red and white lamp", parse_prompt("checkered purple body, orange handle")])
def test_a_prompt_of_known_words_has_none_unknown(prompt):
    assert unknown_words(prompt, "tiny") == ()


def test_unknown_words_in_prompt_order_once_each_any_case():
    assert unknown_words(UNKNOWN_PROMPT, "tiny") == ("pottery", "gold", "linen")
    assert unknown_words(UNKNOWN_PROMPT) == ("pottery", "gold", "linen")  # tiny is the default source
    assert unknown_words(parse_prompt("shade: woven linen and base: pottery"), "tiny") == ("woven", "linen", "pottery")
    assert unknown_words(parse_prompt("a lamp made of gold", holistic=True), "tiny") == ("gold",)
    assert unknown_words(["base", "lamp shade", "Foot"], "tiny") == ("foot",)  # part names, as `locate` gives them
    assert unknown_words("dark-blue mug", "tiny") == ("dark",)


def test_filler_words_are_never_listed():
    assert unknown_words(" ".join(sorted(FILLER_WORDS)) + " mug", "tiny") == ()


def test_a_prompt_the_grammar_refuses_still_gets_an_answer():
    """The add-on asks while the user types: half a prompt must not raise."""
    assert unknown_words("pottery base, , shade:", "tiny") == ("pottery",)


@pytest.mark.parametrize("models", ["default", "/some/model/folder", ModelStore("default")])
def test_real_models_know_any_word(models):
    assert unknown_words(UNKNOWN_PROMPT, models) == ()


def test_a_model_store_is_judged_by_its_source():
    assert unknown_words(UNKNOWN_PROMPT, ModelStore("tiny")) == ("pottery", "gold", "linen")


def test_the_message_names_the_words_and_the_fix():
    message = unknown_words_message(("pottery", "gold"))
    assert message.startswith("the tiny models do not know: pottery, gold;")
    assert f"trained on {len(known_words())} words" in message
    assert "python -m engine vocabulary" in message and "--models default" in message
    assert "python -m engine fetch-models" in message and "\n" not in message
    assert unknown_words_message(()) == ""
    assert unknown_words_message(["gold"], hint="Pick Hugging Face models.").endswith("Pick Hugging Face models.")


def test_it_is_fast_enough_to_call_while_drawing():
    unknown_words(UNKNOWN_PROMPT, "tiny")
    start = time.perf_counter()
    for _ in range(100):
        unknown_words(UNKNOWN_PROMPT, "tiny")
    assert (time.perf_counter() - start) / 100 < 0.05


def test_stylize_warns_before_the_run_and_still_runs(tmp_path):
    proc = engine("stylize", "sample:mug@2k", "--prompt", "pottery body, gold handle", "--out", str(tmp_path / "out"),
                  "--iterations", "2", *SMALL)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    warnings = [i for i, line in enumerate(lines) if line.startswith("warning: the tiny models do not know:")]
    assert len(warnings) == 1 and "pottery, gold;" in lines[warnings[0]], proc.stderr
    assert warnings[0] < next(i for i, line in enumerate(lines) if line.startswith("loading models")), proc.stderr


def test_known_words_give_no_warning_and_unknown_parts_warn_in_locate(tmp_path):
    """Both stop at the device check (cheap); the warning, if any, comes before it."""
    proc = engine("stylize", "sample:mug@2k", "--prompt", "red body, blue handle", "--out", str(tmp_path / "a"),
                  "--device", "cuda:7", "--quiet")
    assert proc.returncode == 1 and "warning:" not in proc.stderr, proc.stderr
    proc = engine("locate", "sample:mug@2k", "--parts", "body, spout", "--out", str(tmp_path / "b"),
                  "--device", "cuda:7")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and lines[0].startswith("warning: the tiny models do not know: spout;"), proc.stderr
    assert lines[-1].startswith("error:"), proc.stderr


def test_default_models_give_no_warning(tmp_path):
    proc = engine("stylize", "sample:mug@2k", "--prompt", "pottery body, gold handle", "--out", str(tmp_path / "a"),
                  "--models", "default", "--device", "cuda:7", "--quiet")
    assert proc.returncode == 1 and "warning:" not in proc.stderr, proc.stderr


def test_the_vocabulary_command_lists_the_words():
    proc = engine("vocabulary")
    assert proc.returncode == 0, proc.stderr
    assert f"know {len(known_words())} words" in proc.stdout
    assert ", ".join(known_words()) in proc.stdout
