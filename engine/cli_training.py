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
from collections.abc import Callable

from .models import TINY_CLIP_FOLDER, TINY_GROUNDING_FOLDER, TINY_SEGMENTER_FOLDER

CLIP_STEPS, GROUNDING_STEPS, SEGMENTER_STEPS = 1200, 5000, 6000


def add_training_commands(sub) -> None:
    """Register ``train-tiny-clip``, ``train-tiny-grounding`` and ``train-tiny-segmenter`` on an argparse
    sub-parser set."""
    p = sub.add_parser("train-tiny-clip", help="train the shipped tiny CLIP on synthetic renders (CPU, ~25 min)")
    _common(p, TINY_CLIP_FOLDER, steps=CLIP_STEPS, batch="64 images")
    p.set_defaults(handler=cmd_train_tiny_clip)

    p = sub.add_parser("train-tiny-grounding",
                       help="train the shipped tiny Grounding DINO on synthetic part boxes (CPU, ~56 min)")
    _common(p, TINY_GROUNDING_FOLDER, steps=GROUNDING_STEPS, batch="8 images")
    p.set_defaults(handler=cmd_train_tiny_grounding)

    p = sub.add_parser("train-tiny-segmenter",
                       help="train the shipped tiny box-prompted segmenter on synthetic part masks (CPU, ~45 min)")
    _common(p, TINY_SEGMENTER_FOLDER, steps=SEGMENTER_STEPS, batch="8 images x 2 boxes")
    p.set_defaults(handler=cmd_train_tiny_segmenter)


def _common(p: argparse.ArgumentParser, out: str, *, steps: int, batch: str) -> None:
    p.add_argument("--out", default=out, help="where to write the model folder (default: the shipped location)")
    p.add_argument("--steps", type=int, default=steps, help=f"training steps of {batch} (default {steps})")
    p.add_argument("--minutes", type=float, default=120.0, help="stop earlier when this time is spent")
    p.add_argument("--seed", type=int, default=0)


def _train_and_report(args: argparse.Namespace, train: Callable, evaluate: Callable, save: Callable,
                      batch: int, figures: Callable[[object], tuple[dict, str]]) -> int:
    """Train with a progress bar, evaluate on held-out data, save, write training.json, print a summary.

    ``figures(evaluation)`` gives the record's held-out entries and the summary's held-out words.
    """
    from tqdm import tqdm

    bar = tqdm(total=args.steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(step: int, loss: float, seconds: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(step - bar.n)

    started = time.perf_counter()
    model, tokenizer, steps, loss = train(seed=args.seed, minutes=args.minutes, max_steps=args.steps,
                                          on_progress=progress)
    bar.close()
    trained = time.perf_counter() - started
    held_out, summary = figures(evaluate(model, tokenizer))
    save(model, tokenizer, args.out)
    record = {"seed": args.seed, "steps": steps, "batch": batch, "seconds": round(trained, 1),
              "final_loss": round(loss, 4), **held_out}
    with open(os.path.join(args.out, "training.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)
    print(f"trained {steps} steps in {trained / 60:.1f} min, loss {loss:.3f}; {summary}; wrote {args.out}")
    return 0


def cmd_train_tiny_clip(args: argparse.Namespace) -> int:
    from .training.train_clip import BATCH_SIZE, color_accuracy, save_clip, train_tiny_clip

    def figures(accuracy: float) -> tuple[dict, str]:
        return {"held_out_color_accuracy": accuracy}, f"held-out zero-shot color accuracy {accuracy:.1%}"

    return _train_and_report(args, train_tiny_clip, color_accuracy, save_clip, BATCH_SIZE, figures)


def cmd_train_tiny_grounding(args: argparse.Namespace) -> int:
    from .training.train_grounding import BATCH_SIZE, grounding_recall, save_grounding, train_tiny_grounding

    def figures(evaluation) -> tuple[dict, str]:
        record = {"held_out_recall_iou50": evaluation.recall,
                  "held_out_recall_by_object": evaluation.recall_by_object,
                  "held_out_recall_by_part": evaluation.recall_by_part,
                  "held_out_absent_part_box_rate": evaluation.false_positive_rate,
                  "held_out_boxes": evaluation.boxes}
        by_object = ", ".join(f"{name} {value:.1%}" for name, value in evaluation.recall_by_object.items())
        return record, (f"held-out part recall at IoU 0.5 {evaluation.recall:.1%} ({by_object}; "
                        f"{evaluation.boxes} boxes), boxes for absent parts {evaluation.false_positive_rate:.1%}")

    return _train_and_report(args, train_tiny_grounding, grounding_recall, save_grounding, BATCH_SIZE, figures)


def cmd_train_tiny_segmenter(args: argparse.Namespace) -> int:
    from .training.train_segmenter import BATCH_SIZE, save_segmenter, segmenter_iou, train_tiny_segmenter

    def figures(evaluation) -> tuple[dict, str]:
        record = {"held_out_mask_iou": evaluation.miou,
                  "held_out_mask_iou_by_object": evaluation.miou_by_object,
                  "held_out_mask_iou_by_part": evaluation.miou_by_part,
                  "held_out_masks": evaluation.masks}
        by_object = ", ".join(f"{name} {value:.3f}" for name, value in evaluation.miou_by_object.items())
        return record, f"held-out mask IoU {evaluation.miou:.3f} ({by_object}; {evaluation.masks} masks)"

    return _train_and_report(args, train_tiny_segmenter, segmenter_iou, save_segmenter, BATCH_SIZE, figures)
