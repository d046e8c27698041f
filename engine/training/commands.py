"""The command-line commands that train the shipped tiny models (``python -m engine train-tiny-...``).

Each trains from a seed, shows a progress bar, prints the held-out evaluation at the end and writes
the model folder with a ``training.json`` record (seed, steps, time, loss, held-out figures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny")


def add_training_commands(sub) -> None:
    """Register ``train-tiny-clip`` and ``train-tiny-grounding`` on an argparse sub-parser set."""
    p = sub.add_parser("train-tiny-clip", help="train the shipped tiny CLIP on synthetic renders (CPU, ~25 min)")
    _common(p, os.path.join(ASSETS, "clip"), steps=1200, batch="64 images")
    p.set_defaults(handler=cmd_train_tiny_clip)

    p = sub.add_parser("train-tiny-grounding",
                       help="train the shipped tiny Grounding DINO on synthetic part boxes (CPU, ~50 min)")
    _common(p, os.path.join(ASSETS, "grounding"), steps=GROUNDING_STEPS, batch="8 images")
    p.set_defaults(handler=cmd_train_tiny_grounding)


GROUNDING_STEPS = 5000


def _common(p: argparse.ArgumentParser, out: str, *, steps: int, batch: str) -> None:
    p.add_argument("--out", default=out, help="where to write the model folder (default: the shipped location)")
    p.add_argument("--steps", type=int, default=steps, help=f"training steps of {batch} (default {steps})")
    p.add_argument("--minutes", type=float, default=120.0, help="stop earlier when this time is spent")
    p.add_argument("--seed", type=int, default=0)


def _progress_bar(total: int):
    """A tqdm bar on stderr and the ``on_progress(step, loss, seconds)`` callback that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(step: int, loss: float, seconds: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(step - bar.n)

    return bar, progress


def _write_record(folder: str, record: dict) -> None:
    with open(os.path.join(folder, "training.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)


def cmd_train_tiny_clip(args: argparse.Namespace) -> int:
    from .train_clip import color_accuracy, save_clip, train_tiny_clip

    bar, progress = _progress_bar(args.steps)
    started = time.perf_counter()
    model, tokenizer, steps, loss = train_tiny_clip(seed=args.seed, minutes=args.minutes, max_steps=args.steps,
                                                    on_progress=progress)
    bar.close()
    trained = time.perf_counter() - started
    accuracy = color_accuracy(model, tokenizer)
    save_clip(model, tokenizer, args.out)
    _write_record(args.out, {"seed": args.seed, "steps": steps, "batch": 64, "seconds": round(trained, 1),
                             "final_loss": round(loss, 4), "held_out_color_accuracy": accuracy})
    print(f"trained {steps} steps in {trained / 60:.1f} min, loss {loss:.3f}; "
          f"held-out zero-shot color accuracy {accuracy:.1%}; wrote {args.out}")
    return 0


def cmd_train_tiny_grounding(args: argparse.Namespace) -> int:
    from .train_grounding import BATCH_SIZE, grounding_recall, save_grounding, train_tiny_grounding

    bar, progress = _progress_bar(args.steps)
    started = time.perf_counter()
    model, tokenizer, steps, loss = train_tiny_grounding(seed=args.seed, minutes=args.minutes, max_steps=args.steps,
                                                         on_progress=progress)
    bar.close()
    trained = time.perf_counter() - started
    evaluation = grounding_recall(model, tokenizer)
    save_grounding(model, tokenizer, args.out)
    _write_record(args.out, {"seed": args.seed, "steps": steps, "batch": BATCH_SIZE, "seconds": round(trained, 1),
                             "final_loss": round(loss, 4), "held_out_recall_iou50": evaluation.recall,
                             "held_out_recall_by_object": evaluation.recall_by_object,
                             "held_out_recall_by_part": evaluation.recall_by_part,
                             "held_out_absent_part_box_rate": evaluation.false_positive_rate,
                             "held_out_boxes": evaluation.boxes})
    by_object = ", ".join(f"{name} {value:.1%}" for name, value in evaluation.recall_by_object.items())
    print(f"trained {steps} steps in {trained / 60:.1f} min, loss {loss:.3f}; held-out part recall at IoU 0.5 "
          f"{evaluation.recall:.1%} ({by_object}; {evaluation.boxes} boxes), boxes for absent parts "
          f"{evaluation.false_positive_rate:.1%}; wrote {args.out}")
    return 0
