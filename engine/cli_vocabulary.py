"""The command line's side of the tiny models' vocabulary: the ``vocabulary`` command, and the
warning ``stylize`` and ``locate`` print before a run whose prompt has words the tiny models do not
know (see :mod:`engine.vocabulary`). Kept beside ``cli.py``, which stays under 400 lines."""

from __future__ import annotations

import argparse
import sys


def add_vocabulary_command(sub) -> None:
    """Register ``vocabulary`` on the subcommand parsers ``sub``."""
    p = sub.add_parser("vocabulary", help="list the words the tiny models know (the built-in, offline models)")
    p.set_defaults(handler=cmd_vocabulary)


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from .vocabulary import known_words

    words = known_words()
    print(f"the tiny models know {len(words)} words (any words: --models default):")
    print(", ".join(words))
    return 0


def warn_unknown_words(prompt, models) -> None:
    """Print ``warning: the tiny models do not know: ...`` to stderr when ``prompt`` (text, a parsed
    prompt or part names) has words the ``models`` do not know; nothing otherwise."""
    from .vocabulary import unknown_words, unknown_words_message

    words = unknown_words(prompt, models)
    if words:
        print(f"warning: {unknown_words_message(words)}", file=sys.stderr)
