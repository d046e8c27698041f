"""``python -m engine bench --operations``: the operations a `fast` step dispatches, counted here.

On a GPU a step waits on the host issuing its kernels, about one per computing operation
(docs/performance.md, "CUDA"), so a change meant for the GPU is measured by this count, which any
machine can take (``bench_operations.OperationCounter``). Three steps of the `fast` preset on the
40k-face lamp (real-size architectures, random weights): a holistic step, a 3-part CLIP step and a
3-part grounding step, each counted after one uncounted step of its kind (the first grounding step
also encodes the captions, once a run). Counted twice (and the part CLIP step, as a GPU runs it, by
the engine function that dispatched each operation: ``bench_operations.OperationsByFunction``):

- as this CPU runs them: the CPU's kernels, ``auto`` precision (float32 without native bf16);
- as a CUDA GPU with bf16 runs them: the library's kernels, bf16 autocast and the bf16 weight
  copies of the models' image paths (:func:`bench.like_cuda_gpu`). Where the CPU has no native
  bf16 this is emulated and slow (minutes), but the count is the same.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import TextIO

import torch

from .bench import ITERATION_FACES, benchmark_clip, benchmark_grounding, part_trainers
from .bench_batch import report_line
from .bench_operations import operations_by_function, operations_of
from .config import PRECISION_STAGES

STEPS = ("holistic step", "part CLIP step", "grounding step")
#: Engine functions listed for the part CLIP step, those that dispatch most first.
LISTED_FUNCTIONS = 25


def run_launch_benchmark(*, clip: str = "vit-b-32", faces: int = ITERATION_FACES, out: TextIO = sys.stdout) -> dict:
    """Print and return, per way of running (``cpu``, ``cuda``), the operations of each of :data:`STEPS`."""

    say = partial(report_line, out)
    say(f"# operations a `fast` step dispatches (about one GPU kernel each), lamp {faces} faces, {clip} models")
    say(f"{'as run by':<26}" + "".join(f"{step:>16}" for step in STEPS))
    figures = {}
    cpu = torch.device("cpu")
    for key, label, like_cuda in (("cpu", "this CPU", False), ("cuda", "a CUDA GPU with bf16", True)):
        overrides = tuple(f"{stage}.precision=bfloat16" for stage in PRECISION_STAGES) if like_cuda else ()
        parts, holistic = part_trainers(
            "fast", cpu, clip=benchmark_clip(clip, cpu, like_cuda=like_cuda),
            grounding=benchmark_grounding(clip, cpu, like_cuda=like_cuda), faces=faces, overrides=overrides)
        every = parts.settings.guidance.grounding_every
        counts = {}
        for step, trainer, index in ((STEPS[0], holistic, 0), (STEPS[1], parts, 0), (STEPS[2], parts, every - 1)):
            trainer.step_index = index
            trainer.step()  # uncounted: what a run does once (the captions' encoding) stays out
            trainer.step_index = index
            counts[step] = operations_of(trainer.step)
        figures[key] = counts
        say(f"{label:<26}" + "".join(f"{counts[step]:>16,}" for step in STEPS))
        if like_cuda:
            parts.step_index = 0
            figures["cuda_part_step_by_function"] = operations_by_function(parts.step).by_function
    by_function = figures["cuda_part_step_by_function"]
    say(f"# where a part CLIP step's {sum(by_function.values()):,} operations come from, as a CUDA GPU with bf16 "
        f"dispatches them: the engine function that dispatched each (a backward's: the function whose forward "
        f"made its node), the {LISTED_FUNCTIONS} that dispatch most")
    for function, count in by_function.most_common(LISTED_FUNCTIONS):
        say(f"{count:>8,}  {function}")
    return figures
