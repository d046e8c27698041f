"""Parse a part-style prompt into (part, style) pairs (METHOD section 2).

Grammar, in the order it is applied:

1. Whitespace anywhere is collapsed to single spaces; surrounding punctuation (``.!?`` and
   quotes) is stripped from the text, from every phrase and from every part and style.
   Empty or whitespace-only text is an error.
2. ``holistic=True``: the whole normalized text is one style for the whole object; nothing is
   split (commas are kept).
3. The text is split into *pieces* on ``,`` and ``;``. A piece that is empty is an error
   ("phrase N is empty"). A leading ``and`` after a comma (Oxford comma) is dropped.
4. A piece with no explicit separator (``:`` or ``=``) is split further on the word ``and``
   (case-insensitive, whole word, between spaces) into phrases.
   A piece with an explicit separator is one explicit phrase whose style may contain ``and``
   (``base: black and white marble``), except that an ``and`` splits it when the text after it
   holds a separator and the text before it is a whole phrase, explicit or of two or more words
   (``base: marble and shade: linen``, ``gold tube and base = pottery``; but
   ``salt and pepper shaker: chrome`` is one phrase).
5. Explicit phrase ``part: style`` or ``part = style`` (spaces optional; only the first
   separator counts): the part may be several words (``lamp shade: woven linen``).
6. Implicit phrase (no separator): the last word is the part, the words before it the style
   (``red velvet seat`` -> part ``seat``, style ``red velvet``).
7. A leading article (a/an/the) is dropped from implicit styles and from all parts.
   Parts are lower-cased; styles keep their case.
8. A text that is one implicit phrase, with no ``,`` ``;`` or ``and`` at all (``a yellow mug``,
   ``a lamp made of gold``), is holistic: nothing in it says that it names a part. So is a text
   with no ``,`` ``;`` ``:`` or ``=`` whose ``and`` split leaves a phrase without a style
   (``black and white mug``, ``a lamp made of gold and silver``): there the ``and`` joins
   words of one description, not parts. A single explicit phrase (``shade: linen``) is a
   one-part prompt.
9. Errors (:class:`PromptError`, naming the phrase): an empty phrase, a phrase with no part or
   no style (a single word in a list, ``shade:``, ``: linen``), a part given twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import PromptError

_ARTICLES = {"a", "an", "the"}
_PUNCT = " .!?\"'`\u201c\u201d\u2018\u2019"
_LIST_SEP = re.compile(r"[,;]")
_AND = re.compile(r"(?<!\S)and(?!\S)", re.IGNORECASE)
_LEADING_AND = re.compile(r"^and\s+", re.IGNORECASE)
_EXPLICIT = re.compile(r"^(.*?)\s*[:=]\s*(.*)$")
_WHOLE_HINT = "or pass holistic (--whole) if the whole text describes the object"
#: The longest prompt accepted, in characters after whitespace is collapsed (CLIP reads 77 tokens).
MAX_PROMPT_CHARACTERS = 300


def normalize_part_name(name: str) -> str:
    """A part name as the engine compares it: lower case, single spaces, no surrounding spaces.

    The one rule for part names everywhere: prompts, given part weights, locks, Blender's
    ``part:<name>`` vertex groups.
    """
    return " ".join(str(name).lower().split())


def _clean(text: str) -> str:
    """Collapse whitespace and strip surrounding punctuation."""
    return " ".join(str(text).split()).strip(_PUNCT)


def _drop_article(text: str) -> str:
    words = text.split(" ")
    if len(words) > 1 and words[0].lower() in _ARTICLES:
        words = words[1:]
    elif len(words) == 1 and words[0].lower() in _ARTICLES:
        words = []
    return " ".join(words)


@dataclass(frozen=True)
class PartStyle:
    """One part of the object and the style it should get."""

    part: str  #: lower-case, single spaces, stripped, e.g. "lamp shade"
    style: str  #: single spaces, stripped, case kept, e.g. "glazed pottery"

    def __post_init__(self):
        part, style = normalize_part_name(self.part), " ".join(str(self.style).split())
        if not part or not style:
            raise PromptError(f"part {self.part!r} with style {self.style!r}: both must be non-empty")
        object.__setattr__(self, "part", part)
        object.__setattr__(self, "style", style)

    @property
    def phrase(self) -> str:
        """``style part``, e.g. "glazed pottery base": what CLIP and the grounding model read."""
        return f"{self.style} {self.part}"


@dataclass(frozen=True)
class StylePrompt:
    """A parsed prompt: either (part, style) pairs or one style for the whole object."""

    pairs: tuple[PartStyle, ...] = ()
    holistic_style: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "pairs", tuple(self.pairs))
        if bool(self.pairs) == (self.holistic_style is not None):
            raise PromptError("a prompt has either (part, style) pairs or one holistic style")

    @property
    def is_holistic(self) -> bool:
        return self.holistic_style is not None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p.part for p in self.pairs)

    def full_text(self) -> str:
        """The holistic style, or the phrases as a sentence: "pottery base, gold tube and linen shade"."""
        if self.holistic_style is not None:
            return self.holistic_style
        phrases = [p.phrase for p in self.pairs]
        return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _split_explicit_piece(piece: str) -> list[str]:
    """Split a piece with a separator on ``and`` only before an explicit phrase (step 4)."""
    subs = [s.strip() for s in _AND.split(piece)]
    groups = [subs[0]]
    for sub in subs[1:]:
        left = groups[-1]
        if _EXPLICIT.match(sub) and (_EXPLICIT.match(left) or len(left.split()) > 1):
            groups.append(sub)
        else:
            groups[-1] = f"{groups[-1]} and {sub}"
    return groups


def _phrases(text: str) -> list[str]:
    """Split normalized text into raw phrases (grammar steps 3-4); empty phrases are errors."""
    out: list[str] = []
    for i, piece in enumerate(_LIST_SEP.split(text)):
        piece = _clean(piece)
        if i > 0:
            piece = _LEADING_AND.sub("", piece)
        subs = _split_explicit_piece(piece) if _EXPLICIT.match(piece) else _AND.split(piece)
        for sub in subs:
            sub = _clean(sub)
            if not sub:
                raise PromptError(
                    f"phrase {len(out) + 1} is empty in {text!r}: remove the extra separator "
                    "(',', ';' or 'and') or write a phrase there")
            out.append(sub)
    return out


def _parse_phrase(phrase: str) -> PartStyle:
    """One phrase (explicit or implicit) -> its pair."""
    m = _EXPLICIT.match(phrase)
    if m:
        part, style = _drop_article(_clean(m.group(1))), _clean(m.group(2))
        if not part:
            raise PromptError(f"phrase {phrase!r} has no part: write it as 'part: {style or 'style'}'")
        if not style:
            raise PromptError(f"phrase {phrase!r} has no style: write it as '{part}: <style>'")
        return PartStyle(part, style)
    words = phrase.split(" ")
    part, style = _clean(words[-1]), _drop_article(_clean(" ".join(words[:-1])))
    if not style:
        raise PromptError(
            f"phrase {phrase!r} has no style: write it as '{part}: <style>' (or '<style> {part}'), "
            + _WHOLE_HINT)
    return PartStyle(part, style)


def parse_prompt(text: str, *, holistic: bool = False) -> StylePrompt:
    """Parse ``text`` into a :class:`StylePrompt` following the grammar in the module docstring."""
    if not isinstance(text, str):
        raise PromptError(f"the prompt must be text, not {type(text).__name__}")
    clean = _clean(text)
    if not clean:
        raise PromptError("the prompt is empty: describe the style, e.g. 'pottery base, linen shade'")
    if holistic:
        return StylePrompt(holistic_style=clean)
    phrases = _phrases(clean)
    if len(phrases) == 1 and not _EXPLICIT.match(phrases[0]):
        return StylePrompt(holistic_style=clean)
    only_and = not _LIST_SEP.search(clean) and not any(_EXPLICIT.match(p) for p in phrases)
    if only_and and any(len(p.split(" ")) < 2 for p in phrases):
        return StylePrompt(holistic_style=clean)
    parsed = [_parse_phrase(p) for p in phrases]
    seen: dict[str, str] = {}
    for phrase, pair in zip(phrases, parsed, strict=True):
        if pair.part in seen:
            raise PromptError(
                f"part {pair.part!r} is given twice, in {seen[pair.part]!r} and {phrase!r}: "
                "give each part one phrase")
        seen[pair.part] = phrase
    return StylePrompt(pairs=tuple(parsed))


def check_prompt(prompt: str | StylePrompt, *, holistic: bool = False) -> StylePrompt:
    """A prompt ready for a run: text is parsed (see :func:`parse_prompt`), a parsed prompt (e.g.
    the Blender add-on's part rows) is checked the same way.

    Raises :class:`PromptError` for a prompt over :data:`MAX_PROMPT_CHARACTERS`, a part given twice,
    or anything :func:`parse_prompt` refuses. ``holistic`` applies to text only.
    """
    if isinstance(prompt, StylePrompt):
        parsed = prompt
    elif isinstance(prompt, str):
        parsed = None
    else:
        raise PromptError(f"the prompt must be text or a parsed StylePrompt, not {type(prompt).__name__}")
    text = parsed.full_text() if parsed is not None else " ".join(prompt.split())
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise PromptError(
            f"the prompt has {len(text)} characters; keep it under {MAX_PROMPT_CHARACTERS} "
            "(CLIP reads at most 77 tokens)."
        )
    if parsed is None:
        return parse_prompt(text, holistic=holistic)
    if parsed.pairs:
        check_part_names(parsed.parts)
    return parsed


def check_part_names(names: Iterable[str]) -> list[str]:
    """Part names to look for, normalized (:func:`normalize_part_name`); :class:`PromptError` for none, an
    empty one, one named twice, or more than :data:`MAX_PROMPT_CHARACTERS` together."""
    names = [normalize_part_name(n) for n in names]
    if not names or any(not n for n in names):
        raise PromptError("give at least one part name, e.g. \"base, tube, shade\".")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PromptError(f"part {repeated[0]!r} is given twice: name each part once.")
    if len(", ".join(names)) > MAX_PROMPT_CHARACTERS:
        raise PromptError(f"the part names have {len(', '.join(names))} characters together; keep them under "
                          f"{MAX_PROMPT_CHARACTERS} (the models read a limited text).")
    return names


def format_pairs(pairs: Iterable[PartStyle | tuple[str, str]]) -> str:
    """Canonical text for ``pairs`` ("base: glazed pottery; shade: linen") that
    :func:`parse_prompt` reads back to the same pairs; "" for no pairs.

    Accepts :class:`PartStyle` or ``(part, style)`` tuples. Raises :class:`PromptError` when a
    pair cannot be written so that it reads back the same (e.g. a style holding ``;`` or ``,``).
    """
    norm = tuple(p if isinstance(p, PartStyle) else PartStyle(*p) for p in pairs)
    if not norm:
        return ""
    text = "; ".join(f"{p.part}: {p.style}" for p in norm)
    try:
        back = parse_prompt(text).pairs
    except PromptError as e:
        raise PromptError(f"these pairs cannot be written as one prompt: {e}") from None
    if back != norm:
        bad = next((a for a, b in zip(norm, back, strict=False) if a != b), norm[-1])
        raise PromptError(
            f"the pair {bad.part!r}: {bad.style!r} does not read back the same; avoid ',' ';' "
            "and surrounding punctuation in styles, and ':' '=' in parts")
    return text
