"""The words the tiny models know, and the words of a prompt they do not (listed before a run).

The built-in ``tiny`` models learned a small world (:mod:`engine.training.vocabulary`); a prompt
word outside it steers nothing, and the run silently ignores it. :func:`unknown_words` names such
words so the command line and the Blender add-on can say so before a run starts.

What "known" means here: a word the tiny models were *trained on*, not a word their tokenizers
hold as one token. Neither tokenizer ever loses a word: the tiny CLIP's byte-level BPE spells an
unknown word in smaller pieces down to single bytes (``xylophone`` -> ``x y l o p h o n e</w>``),
and the tiny Grounding DINO's WordPiece vocabulary splits it into letters and ``##`` pieces, never
``[UNK]`` for lower-case ASCII (``engine.tiny_models.tiny_bert_vocabulary``). And "one token"
fails both ways: both tokenizers hold whole tokens for words the training never used
(``TINY_VOCABULARY`` has ``gold``, ``pottery``, ``linen`` ...; their embeddings are still random),
while the shipped CLIP tokenizer splits some trained words (``green`` -> ``g re e n</w>``: an
earlier merge wins), which the model learned as those pieces. So the training captions are the
honest list: the CLIP's (``engine.training.synthetic.random_scene``) use the colors, the patterns
``striped``/``checkered``/``dotted`` (``plain`` is never written), the objects, their parts,
``a`` and ``and``; the Grounding DINO's (``engine.training.grounding_data``) the part names.
tests/test_vocabulary.py checks that list against the captions and the tokenizers.

Light: only the standard library and :mod:`engine.training.vocabulary` (numpy) are imported, so
the add-on can load this module before torch is installed and call it while drawing a panel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from .prompt import StylePrompt
from .training.vocabulary import COLORS, OBJECT_PARTS, PART_OBJECTS, PATTERNS, PRIMITIVE_PARTS, PRIMITIVES

#: Words the training captions use besides colors, patterns, objects and parts.
CAPTION_WORDS: tuple[str, ...] = ("a", "and")
#: Words that name nothing, never listed as unknown: the articles the prompt grammar drops and the
#: joining words of "a lamp made of gold" or "a mug with ..." (whole tokens of both tokenizers).
FILLER_WORDS: frozenset[str] = frozenset({"a", "an", "the", "and", "of", "with", "made"})
#: The fix the command line offers (the add-on passes its own to :func:`unknown_words_message`).
CLI_HINT = ("List them with `python -m engine vocabulary`; for any words use --models default (the real models; "
            "fetch them once with `python -m engine fetch-models`).")
_WORD = re.compile(r"[^\W_]+")


@cache
def known_words() -> tuple[str, ...]:
    """The words the tiny models were trained on, lower case, in a fixed order: colors, patterns,
    objects, parts, then ``a`` and ``and``."""
    words = [*COLORS, *(p for p in PATTERNS if p != "plain"), *PART_OBJECTS, *PRIMITIVES]
    words += [part for parts in (*OBJECT_PARTS.values(), PRIMITIVE_PARTS) for part in parts]
    words += CAPTION_WORDS
    return tuple(dict.fromkeys(words))


@cache
def _known() -> frozenset[str]:
    return frozenset(known_words()) | FILLER_WORDS


def _source(models) -> str | None:
    """The model source's name: a ``ModelStore``'s ``source`` or the text itself (no import of models.py)."""
    source = getattr(models, "source", models)
    return source if isinstance(source, str) else None


def unknown_words(prompt: str | StylePrompt | Iterable[str], models="tiny") -> tuple[str, ...]:
    """The words of ``prompt`` that the ``models`` do not know, lower case, in prompt order, once each.

    Args:
        prompt: prompt text (parts' names and styles, or a whole-object style), a parsed
            :class:`StylePrompt` (its parts and styles, as :meth:`StylePrompt.full_text` orders
            them), or part names (``locate``). Text is not parsed, so a prompt the grammar refuses
            still gets an answer (its error comes when the run starts).
        models: a model source name (``tiny``, ``default``, a folder) or a ``ModelStore``.

    Returns ``()`` for every source but ``tiny``: the real models and model folders read open
    vocabulary. Words are letter-and-digit runs (``dark-blue`` is ``dark`` and ``blue``); filler
    words (:data:`FILLER_WORDS`) are never listed. Pure Python on a cached set: microseconds.
    """
    if _source(models) != "tiny":
        return ()
    if isinstance(prompt, StylePrompt):
        text = prompt.full_text()
    elif isinstance(prompt, str):
        text = prompt
    else:
        text = " ".join(str(name) for name in prompt)
    known = _known()
    found = (word for word in _WORD.findall(text.lower()) if word not in known)
    return tuple(dict.fromkeys(found))


def unknown_words_message(words: Iterable[str], *, hint: str = CLI_HINT) -> str:
    """One line that names the unknown ``words``, what that means, and the fix (``hint``; the
    command line's by default, the add-on passes its own); ``""`` for no words."""
    words = list(words)
    if not words:
        return ""
    return (f"the tiny models do not know: {', '.join(words)}; they were trained on {len(known_words())} words "
            f"only, so these steer nothing. {hint}")
