"""A batch from start to end: which assets run (shard, resume rules), an executor runs them, the
summary is kept current, and a report says how each asset ended.

Resume rules (docs/batch.md): an asset whose folder holds a result of the same fingerprint is
skipped; one whose last attempt at the same fingerprint failed is skipped too unless
``retry_failed``; any change of its inputs or settings runs it again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import InputError
from ..events import CancelToken, EventSink, ignore_events
from .manifest import BatchAsset
from .state import AssetOutcome, AssetState, asset_fingerprint, read_state, write_summary


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` slices of a manifest (0-based): rows ``index, index + count, ...``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> Shard; :class:`InputError` naming the form otherwise."""
        index, sep, count = text.partition("/")
        if sep and index.strip().isdigit() and count.strip().isdigit() and 0 <= int(index) < int(count):
            return cls(int(index), int(count))
        raise InputError(f"--shard {text!r}: write I/N with 0 <= I < N, e.g. --shard 0/4 for the first of four "
                         "slices (Kubernetes' JOB_COMPLETION_INDEX; for Slurm use --array=0-3).")

    def holds(self, position: int) -> bool:
        return position % self.count == self.index


@dataclass(frozen=True)
class PlannedAsset:
    """An asset with its fingerprint ("" for another shard's), its state before this invocation, and
    whether it runs now."""

    asset: BatchAsset
    fingerprint: str
    before: AssetState
    runs: bool
    in_shard: bool = True


@dataclass(frozen=True)
class AssetEvent:
    """An asset started (``outcome`` None) or ended, with the batch's count so far."""

    asset_id: str
    finished: int
    total: int
    outcome: AssetOutcome | None = None


class Executor(Protocol):
    """Runs assets and reports each outcome as it arrives (``local``: :class:`LocalExecutor`;
    ``ray``: :class:`engine.batch.ray_executor.RayExecutor`)."""

    def execute(self, jobs: list[PlannedAsset], out_dir: str, *, on_outcome: Callable[[AssetOutcome], None],
                on_event: EventSink, stop: CancelToken, cancel: CancelToken) -> None:
        """Run ``jobs`` (results written into ``out_dir``); start no new asset once ``stop`` is set,
        and cut the running ones short once ``cancel`` is."""


@dataclass
class BatchReport:
    """How this invocation went: every planned asset of its shard, with this run's outcome (None:
    skipped or not reached), and the path of the summary."""

    planned: list[PlannedAsset]
    outcomes: dict[str, AssetOutcome] = field(default_factory=dict)
    summary_path: str = ""

    def status(self, planned: PlannedAsset) -> str:
        """``done``, ``failed``, ``cancelled`` or ``not run`` for this invocation, or ``skipped (done)`` /
        ``skipped (failed before)`` for an asset the resume rules kept."""
        outcome = self.outcomes.get(planned.asset.id)
        if outcome is not None:
            return outcome.status
        if not planned.runs:
            return f"skipped ({'done' if planned.before.status == 'done' else 'failed before'})"
        return "not run"

    @property
    def failed(self) -> list[PlannedAsset]:
        """The assets of this shard whose latest attempt failed (now, or earlier and not retried)."""
        return [p for p in self.planned if self.status(p) in ("failed", "skipped (failed before)")]

    @property
    def stopped(self) -> bool:
        return any(self.status(p) in ("cancelled", "not run") for p in self.planned)


def plan_batch(assets: list[BatchAsset], out_dir: str, *, models: str, retry_failed: bool = False,
               shard: Shard = Shard()) -> list[PlannedAsset]:
    """Every asset of the manifest with its state in ``out_dir`` and, for the shard's own, its
    fingerprint; ``runs`` says whether this invocation runs it (its shard's, and not done / not a
    failure kept). Another shard's asset shows what its folder last recorded."""
    planned = []
    for position, asset in enumerate(assets):
        in_shard = shard.holds(position)
        fingerprint = asset_fingerprint(asset, models) if in_shard else ""  # other shards' files are not read
        before = read_state(out_dir, asset, fingerprint or None)
        runs = in_shard and (before.status == "pending" or (before.status == "failed" and retry_failed))
        planned.append(PlannedAsset(asset, fingerprint, before, runs, in_shard))
    return planned


def run_batch(assets: list[BatchAsset], out_dir: str, executor: Executor, *, models: str, retry_failed: bool = False,
              shard: Shard = Shard(), on_event: EventSink = ignore_events, stop: CancelToken | None = None,
              cancel: CancelToken | None = None) -> BatchReport:
    """Run the batch: plan, execute what must run, keep ``out_dir/summary.jsonl`` current.

    ``stop`` ends the batch after the running assets (finished ones stay); ``cancel`` also cuts the
    running ones short (their checkpoints are kept for the next invocation).
    """
    os.makedirs(out_dir, exist_ok=True)
    everything = plan_batch(assets, out_dir, models=models, retry_failed=retry_failed, shard=shard)
    report = BatchReport([p for p in everything if p.in_shard])
    jobs = [p for p in report.planned if p.runs]
    report.summary_path = write_summary(out_dir, _summary_rows(everything, report))
    total = len(jobs)

    def on_outcome(outcome: AssetOutcome) -> None:
        report.outcomes[outcome.id] = outcome
        write_summary(out_dir, _summary_rows(everything, report))
        on_event(AssetEvent(outcome.id, len(report.outcomes), total, outcome))

    if jobs:
        executor.execute(jobs, out_dir, on_outcome=on_outcome, on_event=on_event, stop=stop or CancelToken(),
                         cancel=cancel or CancelToken())
    return report


def _summary_rows(everything: list[PlannedAsset], report: BatchReport) -> list[dict]:
    rows = []
    for planned in everything:
        asset, outcome = planned.asset, report.outcomes.get(planned.asset.id)
        state = planned.before if outcome is None else AssetState(
            outcome.status if outcome.status != "cancelled" else "pending", outcome.seconds, outcome.device,
            outcome.error)
        rows.append({
            "id": asset.id, "line": asset.line, "mesh": asset.mesh, "prompt": asset.prompt, "status": state.status,
            "this_run": report.status(planned) if planned.in_shard else "another shard's",
            "seconds": state.seconds, "device": state.device, "error": state.error,
        })
    return rows


class LocalExecutor:
    """Runs the assets one after another in this process, models loaded once for the whole batch;
    each asset's own events (stages, steps) go to ``on_event`` between the :class:`AssetEvent` s."""

    def __init__(self, models: str = "tiny", *, device: str = "auto", allow_download: bool = False):
        self.models, self.device, self.allow_download = models, device, allow_download

    def execute(self, jobs, out_dir, *, on_outcome, on_event, stop, cancel) -> None:
        from .runner import AssetRunner

        runner = AssetRunner(self.models, device=self.device, allow_download=self.allow_download)
        for done, planned in enumerate(jobs):
            if stop.cancelled or cancel.cancelled:
                return
            on_event(AssetEvent(planned.asset.id, done, len(jobs)))
            outcome = runner.run(planned.asset, out_dir, planned.fingerprint, on_event=on_event, cancel=cancel)
            on_outcome(outcome)
