"""engine.prompt: the part-style grammar, its errors, and format/parse round trips."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import PartstyleError, PromptError
from engine.prompt import PartStyle, StylePrompt, format_pairs, parse_prompt


def pairs_of(text, **kw):
    return [(p.part, p.style) for p in parse_prompt(text, **kw).pairs]


# --- the METHOD examples and the grammar ---------------------------------------------------------

def test_comma_list_last_word_is_the_part():
    p = parse_prompt("pottery base, gold tube, linen shade")
    assert not p.is_holistic and p.holistic_style is None
    assert p.parts == ("base", "tube", "shade")
    assert pairs_of("pottery base, gold tube, linen shade") == [
        ("base", "pottery"), ("tube", "gold"), ("shade", "linen")]
    assert p.pairs[0].phrase == "pottery base"
    assert p.full_text() == "pottery base, gold tube and linen shade"


def test_and_separates_phrases_and_styles_keep_several_words():
    assert pairs_of("red velvet seat and carved oak legs") == [
        ("seat", "red velvet"), ("legs", "carved oak")]
    assert pairs_of("red velvet seat AND carved oak legs") == pairs_of("red velvet seat and carved oak legs")
    # "and" inside a word is not a separator
    assert pairs_of("sandstone base, candy shade") == [("base", "sandstone"), ("shade", "candy")]


@pytest.mark.parametrize("text", ["shade: linen", "shade:linen", "shade = linen", "shade=linen",
                                  "  Shade :   linen. "])
def test_single_explicit_phrase_is_a_one_part_prompt(text):
    p = parse_prompt(text)
    assert not p.is_holistic
    assert p.pairs == (PartStyle("shade", "linen"),)
    assert p.full_text() == "linen shade"


def test_explicit_equals_and_multi_word_parts():
    assert pairs_of("base = glazed pottery") == [("base", "glazed pottery")]
    assert pairs_of("lamp shade: woven linen") == [("lamp shade", "woven linen")]
    assert parse_prompt("lamp shade: woven linen").pairs[0].phrase == "woven linen lamp shade"
    # only the first separator counts
    assert pairs_of("base: ratio 1:2 = fine") == [("base", "ratio 1:2 = fine")]


def test_mixed_explicit_and_implicit():
    assert pairs_of("lamp shade: woven linen, gold tube and base = glazed pottery") == [
        ("lamp shade", "woven linen"), ("tube", "gold"), ("base", "glazed pottery")]
    assert pairs_of("red velvet seat, legs = carved oak") == [("seat", "red velvet"), ("legs", "carved oak")]


def test_and_inside_an_explicit_style_is_kept():
    assert pairs_of("base: black and white marble, gold tube") == [
        ("base", "black and white marble"), ("tube", "gold")]
    assert pairs_of("base: black and white marble") == [("base", "black and white marble")]
    # ... unless a second explicit phrase follows it
    assert pairs_of("base: marble and shade: linen") == [("base", "marble"), ("shade", "linen")]
    assert pairs_of("salt and pepper shaker: chrome, oak base") == [
        ("salt and pepper shaker", "chrome"), ("base", "oak")]
    assert pairs_of("shade: linen and gold tube") == [("shade", "linen and gold tube")]


def test_semicolons_and_oxford_comma():
    assert pairs_of("pottery base; gold tube; linen shade") == [
        ("base", "pottery"), ("tube", "gold"), ("shade", "linen")]
    assert pairs_of("pottery base, gold tube, and linen shade") == [
        ("base", "pottery"), ("tube", "gold"), ("shade", "linen")]


def test_normalization_of_case_space_articles_and_punctuation():
    p = parse_prompt("  A  Red   Velvet SEAT,\tthe Lamp  Shade :  Woven   Linen. ")
    assert pairs_of("  A  Red   Velvet SEAT,\tthe Lamp  Shade :  Woven   Linen. ") == [
        ("seat", "Red Velvet"), ("lamp shade", "Woven Linen")]
    assert p.full_text() == "Red Velvet seat and Woven Linen lamp shade"


def test_single_implicit_phrase_is_holistic():
    for text, style in [("a lamp made of gold", "a lamp made of gold"), ("A yellow mug.", "A yellow mug"),
                        ("  gold  ", "gold"), ("red velvet seat", "red velvet seat")]:
        p = parse_prompt(text)
        assert p.is_holistic and p.pairs == () and p.parts == ()
        assert p.holistic_style == style == p.full_text()


def test_holistic_flag_keeps_commas_and_and():
    p = parse_prompt("  a lamp of gold, silver and   glass ", holistic=True)
    assert p.is_holistic and p.pairs == ()
    assert p.holistic_style == "a lamp of gold, silver and glass"
    assert parse_prompt("shade: linen", holistic=True).holistic_style == "shade: linen"


def test_dataclasses_are_frozen_and_normalize():
    ps = PartStyle("  Lamp   Shade ", " woven  Linen ")
    assert (ps.part, ps.style) == ("lamp shade", "woven Linen")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ps.part = "x"
    with pytest.raises(PromptError):
        StylePrompt()
    with pytest.raises(PromptError):
        StylePrompt(pairs=(ps,), holistic_style="gold")


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", "\n\t", " . "])
def test_empty_text(text):
    with pytest.raises(PromptError, match="empty"):
        parse_prompt(text)
    with pytest.raises(PromptError, match="empty"):
        parse_prompt(text, holistic=True)


@pytest.mark.parametrize("text, position", [
    ("base, , shade", 2), ("red base, blue shade,", 3), (", red base", 1), ("red base;; oak legs", 2),
    ("red seat and and oak legs", 2), ("red seat and", 2)])
def test_empty_phrase_names_its_position(text, position):
    with pytest.raises(PromptError, match=f"phrase {position} is empty") as e:
        parse_prompt(text)
    assert repr(" ".join(text.split()).strip(" .")) in str(e.value)


def test_single_word_phrase_in_a_list_has_no_style():
    with pytest.raises(PromptError) as e:
        parse_prompt("gold tube, shade")
    msg = str(e.value)
    assert "'shade'" in msg and "no style" in msg and "shade: <style>" in msg and "--whole" in msg
    with pytest.raises(PromptError, match="'the base' has no style"):
        parse_prompt("the base and gold tube")


@pytest.mark.parametrize("text, phrase, what", [
    ("shade:", "shade:", "no style"), ("shade =  ", "shade =", "no style"),
    ("gold tube, shade: .", "shade:", "no style"),
    (": linen", ": linen", "no part"), ("gold tube; = linen", "= linen", "no part"),
    ("the: linen", "the: linen", "no part")])
def test_explicit_phrase_missing_a_side(text, phrase, what):
    with pytest.raises(PromptError, match=what) as e:
        parse_prompt(text)
    assert repr(phrase) in str(e.value)


def test_duplicated_part_names_part_and_both_phrases():
    with pytest.raises(PromptError) as e:
        parse_prompt("red base, blue Base")
    msg = str(e.value)
    assert "'base'" in msg and "'red base'" in msg and "'blue Base'" in msg
    with pytest.raises(PromptError, match="'lamp shade'"):
        parse_prompt("lamp shade: linen; Lamp  Shade = silk")


def test_prompt_error_is_a_partstyle_error_and_text_must_be_str():
    assert issubclass(PromptError, PartstyleError)
    with pytest.raises(PromptError):
        parse_prompt(None)


# --- format_pairs and round trips ---------------------------------------------------------------

def test_format_pairs_is_explicit_and_reads_back():
    pairs = parse_prompt("base: black and white marble, gold tube, lamp shade = woven Linen").pairs
    text = format_pairs(pairs)
    assert text == "base: black and white marble; tube: gold; lamp shade: woven Linen"
    assert parse_prompt(text).pairs == pairs
    assert format_pairs([("Base", "gold")]) == "base: gold"
    assert format_pairs([]) == ""


@pytest.mark.parametrize("pairs", [[("base", "a; b")], [("base", "gold, silver")], [("base", "gold.")],
                                   [("base", "gold and shade: linen")], [("base", "x"), ("Base", "y")],
                                   [("", "gold")]])
def test_format_pairs_refuses_pairs_that_do_not_read_back(pairs):
    with pytest.raises(PromptError):
        format_pairs(pairs)


_RESERVED = {"and", "a", "an", "the"}
_word = st.text(st.characters(whitelist_categories=("Lu", "Ll")), min_size=1, max_size=8).filter(
    lambda w: w.lower() not in _RESERVED and w.lower() == w.lower().strip())
_pair = st.tuples(st.lists(_word, min_size=1, max_size=3).map(" ".join),
                  st.lists(_word, min_size=1, max_size=4).map(" ".join))


def _distinct(pairs):
    return len({" ".join(p.lower().split()) for p, _ in pairs}) == len(pairs)


@settings(max_examples=200, deadline=None)
@given(st.lists(_pair, min_size=1, max_size=5).filter(_distinct))
def test_format_then_parse_round_trips(raw):
    pairs = tuple(PartStyle(p, s) for p, s in raw)
    text = format_pairs(pairs)
    assert parse_prompt(text).pairs == pairs
    assert format_pairs(parse_prompt(text).pairs) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_word, _word), min_size=2, max_size=5).filter(_distinct))
def test_implicit_single_word_list_round_trips(raw):
    text = ", ".join(f"{s} {p}" for p, s in raw)
    assert parse_prompt(text).pairs == tuple(PartStyle(p, s) for p, s in raw)


@pytest.mark.parametrize("text", ["black and white mug", "a lamp made of gold and silver", "salt and pepper"])
def test_and_inside_one_description_is_holistic(text):
    parsed = parse_prompt(text)
    assert parsed.is_holistic and parsed.holistic_style == text


def test_and_between_whole_phrases_still_splits():
    parsed = parse_prompt("red velvet seat and carved oak legs")
    assert [(p.part, p.style) for p in parsed.pairs] == [("seat", "red velvet"), ("legs", "carved oak")]
