"""``python -m engine bench --first-use``: what a run pays once, the first time each kernel and
library is used in a process, and in which operations.

On the H200 a whole `fast` command paid about 10 s inside its loop that later runs in the same
process did not: a first iteration of 2.6 s and a first grounding step of 7.9 s, against 0.05 s and
0.17 s later (docs/performance.md, "CUDA"). Which kernels, libraries or imports those seconds go
to decides what can take them out of the user's wait (a warm-up beside the setup's CPU work, other
kernels, nothing). This benchmark answers it in one short command: in a fresh process it builds
the `fast` 3-part trainers on the 40k-face lamp (real-size architectures, random weights) and runs a
part CLIP step and a grounding step twice each, under the profiler; the one-time cost of a step is
its first run less its second, and each operation's share of it is its own time on the host (where
the first use of a kernel loads it, plans it or builds it) in the first run less the second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import TextIO

import torch
from torch.profiler import ProfilerActivity, profile

from .bench import ITERATION_FACES, benchmark_clip, benchmark_grounding, part_trainers, seconds_of
from .bench_batch import report_line
from .devices import resolve_device

STEPS = ("part CLIP step", "grounding step")
# Operations listed per step, the largest one-time costs first.
LISTED_OPERATIONS = 10


def run_first_use_benchmark(
    *, device: str = "auto", clip: str = "vit-b-32", faces: int = ITERATION_FACES, out: TextIO = sys.stdout
) -> dict:
    """Print and return the one-time costs of a `fast` 3-part run's steps in this process.

    Meaningful as the first work of a fresh process (``python -m engine bench --first-use``): what
    ran before in the process has already paid its part. Returns ``setup`` (seconds building the
    models and the trainers, the prompt's text encoded) and, per step of :data:`STEPS`, ``first``,
    ``second`` and ``one_time`` seconds, ``outside`` (the seconds of each run that no operation
    accounts for: Python, imports, waits, as ``(first, second)``) and ``operations``: ``(name, one-time
    ms, first ms, second ms)`` by one-time cost, the largest :data:`LISTED_OPERATIONS`.
    """

    say = partial(report_line, out)
    dev = resolve_device(device)
    say(f"# first use: a fast 3-part run's first CLIP step and first grounding step, lamp {faces} faces, "
        f"{clip} models, device {dev} (run it as a fresh process's first work)")
    trainers = []
    figures: dict = {"setup": seconds_of(dev, lambda: trainers.extend(part_trainers(
        "fast", dev, clip=benchmark_clip(clip, dev), grounding=benchmark_grounding(clip, dev), faces=faces)))}
    parts = trainers[0]
    say(f"models built and on the device, trainers made, the prompt encoded: {figures['setup']:.2f} s")
    _profiled(dev, lambda: torch.ones(8, device=dev).sum())  # the profiler's own first use stays out of the steps
    every = parts.settings.guidance.grounding_every
    say(f"{'':<16}{'first s':>10}{'second s':>10}{'one-time s':>12}   outside operations, first / second s")
    for step, index in ((STEPS[0], 0), (STEPS[1], every - 1)):
        runs = []
        for _ in range(2):
            parts.step_index = index
            runs.append(_profiled(dev, parts.step))
        (first, first_ops), (second, second_ops) = runs
        outside = (first - sum(first_ops.values()) / 1e3, second - sum(second_ops.values()) / 1e3)
        operations = sorted(
            ((name, ms - second_ops.get(name, 0.0), ms, second_ops.get(name, 0.0)) for name, ms in first_ops.items()),
            key=lambda row: -row[1])[:LISTED_OPERATIONS]
        figures[step] = {"first": first, "second": second, "one_time": first - second, "outside": outside,
                         "operations": operations}
        say(f"{step:<16}{first:>10.3f}{second:>10.3f}{first - second:>12.3f}   {outside[0]:.3f} / {outside[1]:.3f}")
    say("(the first grounding step also encodes the two captions, once a run: their work is in its one-time cost)")
    for step in STEPS:
        say(f"# {step}: the operations with the largest one-time cost (their own time on the host, ms)")
        say(f"{'operation':<44}{'one-time':>10}{'first':>10}{'second':>10}")
        for name, once, first_ms, second_ms in figures[step]["operations"]:
            say(f"{name[:43]:<44}{once:>10.1f}{first_ms:>10.1f}{second_ms:>10.1f}")
    return figures


def _profiled(device: torch.device, work: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """Seconds of ``work()`` (the device synchronized after it) and its operations' own time on the
    host by name, ms (their time in the operations they call left out)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        seconds = seconds_of(device, work)
    own: dict[str, float] = {}
    for event in prof.key_averages():
        if event.self_cpu_time_total > 0:
            own[event.key] = own.get(event.key, 0.0) + event.self_cpu_time_total / 1e3
    return seconds, own
