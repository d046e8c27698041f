"""``python -m engine bench --batch``: a batch of sample assets with the local executor and with Ray
workers on this machine: assets per minute, and Ray's overhead per asset (docs/performance.md)."""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from typing import TextIO

from .batch.manifest import Defaults, check_rows
from .batch.ray_executor import RayExecutor, import_ray
from .batch.run import LocalExecutor, run_batch
from .samples import ALL_SAMPLES, sample_mesh

COLORS = ("red", "blue", "green", "yellow")


def bench_rows(count: int) -> list[tuple[int, dict]]:
    """``count`` manifest rows over the samples (again from the start, with another seed, past the
    seventh), each part of a sample with its own color, parts from the sample's labels."""
    rows = []
    for k in range(count):
        name = ALL_SAMPLES[k % len(ALL_SAMPLES)]
        parts = sample_mesh(name, 2000).label_names
        prompt = ", ".join(f"{part}: {COLORS[i % len(COLORS)]}" for i, part in enumerate(parts))
        rows.append((k + 1, {"id": f"{name}-{k}", "mesh": f"sample:{name}", "prompt": prompt, "parts": "labels",
                             "seed": k}))
    return rows


def run_batch_benchmark(*, assets: int = 8, workers: int = 2, preset: str = "preview", quick: bool = False,
                        out: TextIO = sys.stdout) -> None:
    """Print the batch figures: the same ``assets`` with the local executor (this process's threads)
    and with ``workers`` one-thread Ray workers (a local Ray started for the run)."""
    defaults = Defaults(preset=preset, iterations=2 if quick else None)
    batch = check_rows(bench_rows(assets), os.getcwd(), defaults, where="the benchmark's manifest")
    iterations = ", 2 iterations" if quick else ""
    report_line(out, f"# batch: {assets} sample assets ({preset} preset{iterations}, parts from labels), "
                     "tiny models, cpu")
    report_line(out, f"{'executor':<28} {'wall s':>7} {'assets/min':>10} {'asset s (worker)':>16} {'startup s':>9} "
                f"{'overhead/asset s':>16}")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        local = run_batch(batch, os.path.join(folder, "local"), LocalExecutor("tiny", device="cpu"), models="tiny")
        wall = time.perf_counter() - started
        local_seconds = [o.seconds for o in local.outcomes.values()]
        _row(out, f"local ({_threads()} threads)", wall, local_seconds, None, None)
        import_ray()
        ray = RayExecutor(address="auto", models="tiny", device="cpu", workers=workers, threads=1)
        started = time.perf_counter()
        run_batch(batch, os.path.join(folder, "ray"), ray, models="tiny")
        ray_wall = time.perf_counter() - started
        trips = ray.round_trips
        overheads = [t.seconds - t.worker_seconds for t in trips if not t.first] or [math.nan]
        starts = [t.seconds - t.worker_seconds for t in trips if t.first]
        _row(out, f"ray ({workers} workers x 1 thread)", ray_wall, [t.worker_seconds for t in trips],
             ray.startup_seconds, statistics.mean(overheads))
    report_line(out, f"ray / local throughput: {wall / ray_wall:.2f}x. Ray's overhead per asset (round trip minus the "
                f"worker's time), each worker's first asset aside: mean {statistics.mean(overheads):.3f} s, "
                f"max {max(overheads):.3f} s (target <= 1 s); a worker's first asset also waits for its process "
                f"to start: {statistics.mean(starts):.1f} s")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _row(out: TextIO, name: str, wall: float, seconds: list[float], startup, overhead) -> None:
    startup_text = "-" if startup is None else f"{startup:.1f}"
    overhead_text = "-" if overhead is None else f"{overhead:.3f}"
    report_line(out, f"{name:<28} {wall:>7.1f} {len(seconds) / wall * 60:>10.1f} {statistics.mean(seconds):>16.2f} "
                f"{startup_text:>9} {overhead_text:>16}")


def report_line(out: TextIO, text: str) -> None:
    """One line of a benchmark's report on ``out`` (the command's stdout), written at once."""
    out.write(text + "\n")
    out.flush()
