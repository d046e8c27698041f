"""``python -m engine eval-relief``: issue 11's relief targets, printed case by case (evaluate_relief.py)."""

from __future__ import annotations

import argparse

from .cli_progress import silence_library_progress
from .errors import SettingsError


def add_relief_evaluation(sub) -> None:
    """Register ``eval-relief`` on an argparse sub-parser set."""
    p = sub.add_parser("eval-relief", help="does relief keep each sample's thickness and appear where asked?")
    p.add_argument("--faces", type=int, default=20_000, help="faces of each sample (default 20000)")
    p.add_argument("--iterations", type=int, default=None, help="override the presets' iterations (a quicker look)")
    p.add_argument("--only", default="", help="comma-separated case names or samples, e.g. 'lamp,figure fast'")
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="tiny", help="tiny, default or a folder (as for stylize)")
    p.set_defaults(handler=cmd_eval_relief)


def cmd_eval_relief(args: argparse.Namespace) -> int:
    """Run the chosen cases; exit status 1 when one misses a target."""
    from .evaluate_relief import CASES, evaluate_relief, format_score
    from .models import ModelStore

    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    cases = [c for c in CASES if not wanted or c.sample in wanted or c.name in wanted]
    if not cases:
        raise SettingsError(f"--only {args.only!r} matches no case; cases: {', '.join(c.name for c in CASES)}.")
    silence_library_progress()
    missed = 0
    for score in evaluate_relief(cases, models=ModelStore(args.models), device=args.device, faces=args.faces,
                                 iterations=args.iterations):
        print("\n".join(format_score(score)), flush=True)
        missed += bool(score.failures)
    print(f"{len(cases) - missed} of {len(cases)} cases meet their targets")
    return 1 if missed else 0
