"""``python -m engine batch``: many assets from a manifest (or a folder of meshes), resumable, on the
local executor or on Ray (see :mod:`engine.batch` and docs/batch.md).

Exit codes: 0 when every asset of this shard is done, 1 when one failed (now, or before and not
retried with ``--retry-failed``) or the manifest is bad, 130 when stopped before the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

EXIT_FAILED, EXIT_STOPPED = 1, 130


def add_batch_command(sub) -> None:
    """Register ``batch`` on the subcommand parsers ``sub``."""
    from .config import PRESETS

    p = sub.add_parser("batch", help="stylize many assets from a manifest (JSONL/CSV) or a folder of meshes")
    p.add_argument("source", help="a manifest (.jsonl or .csv, one asset a row; docs/batch.md) or a folder of meshes "
                                  "(with --prompt)")
    p.add_argument("--out", required=True, help="output folder: one folder per asset, and summary.jsonl")
    p.add_argument("--prompt", help="with a folder: the prompt for every mesh in it")
    p.add_argument("--whole", action="store_true", help="with a folder: the prompt styles each whole object")
    p.add_argument("--preset", default="fast", choices=list(PRESETS), help="rows without a preset use this")
    p.add_argument("--seed", type=int, default=None, help="rows without a seed use this")
    p.add_argument("--iterations", type=int, default=None, help="rows without iterations use this")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every row (a row's own 'set' comes after it)")
    p.add_argument("--relief", action="append", default=[], metavar="LEVEL|PART=LEVEL",
                   help="relief for every row (a row's own comes after it)")
    p.add_argument("--up-axis", choices=["y", "z"], default=None, help="rows without up_axis use this")
    p.add_argument("--models", default="tiny", help="tiny (built in, offline), default (real hub models) or a folder")
    p.add_argument("--allow-download", action="store_true", help="let --models default download missing models")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (with --ray: auto or cpu/cuda)")
    p.add_argument("--retry-failed", action="store_true", help="run again the assets whose last attempt failed")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only the I-th of N slices (0-based; rows I, I+N, ...), for job arrays")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run on Ray: auto (this machine's cluster, else a new local one) or a cluster address")
    p.add_argument("--workers", type=int, default=None,
                   help="with --ray: how many workers (default: one per GPU, else CPUs / --threads)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads: per Ray worker (default 1), or for the local run (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; one line per finished asset")
    p.set_defaults(handler=cmd_batch, resume=False)


def assets_from_args(args: argparse.Namespace):
    """The checked assets of the manifest or folder the arguments name (raises ManifestError)."""
    from .batch.manifest import Defaults, ManifestError, folder_manifest, read_manifest

    defaults = Defaults(preset=args.preset, seed=args.seed, iterations=args.iterations,
                        overrides=tuple(args.overrides), relief=tuple(args.relief), up_axis=args.up_axis)
    if os.path.isdir(args.source):
        if not args.prompt:
            raise ManifestError(f"{args.source} is a folder: give --prompt for its meshes (or give a manifest).")
        return folder_manifest(args.source, args.prompt, defaults, whole=args.whole)
    if args.prompt or args.whole:
        raise ManifestError("--prompt and --whole are for a folder of meshes; a manifest gives each row's prompt.")
    if not os.path.exists(args.source):
        raise ManifestError(f"{args.source}: no such manifest or folder.")
    return read_manifest(args.source, defaults)


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch.run import LocalExecutor, Shard, run_batch
    from .cli_progress import silence_library_progress
    from .cli_vocabulary import warn_unknown_words
    from .events import CancelToken
    from .files import check_output_folder

    shard = Shard.parse(args.shard) if args.shard else Shard()
    assets = assets_from_args(args)
    check_output_folder(args.out)
    for prompt in dict.fromkeys(asset.prompt for asset in assets):
        warn_unknown_words(prompt, args.models)
    if args.ray:
        from .batch.ray_executor import RayExecutor, import_ray

        import_ray()  # not installed: the way to install it, before anything runs
        executor = RayExecutor(address=args.ray, models=args.models, device=args.device,
                               allow_download=args.allow_download, workers=args.workers, threads=args.threads or 1)
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        executor = LocalExecutor(args.models, device=args.device, allow_download=args.allow_download)
    silence_library_progress()
    stop, cancel = CancelToken(), CancelToken()
    progress = BatchProgress(quiet=args.quiet)
    old_handler = _install_batch_interrupt(stop, cancel, progress)
    try:
        report = run_batch(assets, args.out, executor, models=args.models, retry_failed=args.retry_failed,
                           shard=shard, on_event=progress, stop=stop, cancel=cancel)
    finally:
        progress.close()
        signal.signal(signal.SIGINT, old_handler)
    print(format_report(report))
    if report.failed:
        return EXIT_FAILED
    return EXIT_STOPPED if report.stopped else 0


def _install_batch_interrupt(stop, cancel, progress):
    """Ctrl-C once: start no new asset; twice: cut the running ones short (checkpoints kept); three
    times: interrupt at once."""

    def on_interrupt(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        if stop.cancelled:
            cancel.cancel()
            progress.write("stopping the running asset(s) now; their checkpoints are kept for the next run")
        else:
            stop.cancel()
            progress.write("stopping after the running asset(s); Ctrl-C again to stop them now")

    try:
        return signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGINT)


class BatchProgress:
    """An overall bar over the batch's assets (the running asset's step as its postfix) and one line
    per finished asset, on stderr."""

    def __init__(self, *, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.current = ""

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from .batch.run import AssetEvent
        from .events import NoticeEvent, StepEvent

        if isinstance(event, AssetEvent):
            if self.bar is None and not self.quiet:
                self.bar = tqdm(total=event.total, unit="asset", dynamic_ncols=True, file=sys.stderr)
            if event.outcome is None:
                self.current = event.asset_id
                if self.bar is not None:
                    self.bar.set_postfix_str(event.asset_id)
                return
            outcome = event.outcome
            detail = f": {outcome.error}" if outcome.error else ""
            self.write(f"[{event.finished}/{event.total}] {outcome.id}: {outcome.status} ({outcome.seconds:.1f} s, "
                       f"{outcome.device}){detail}")
            if self.bar is not None:
                self.bar.update(event.finished - self.bar.n)
        elif isinstance(event, NoticeEvent):
            self.write(f"notice: {event.message}")
        elif isinstance(event, StepEvent) and self.bar is not None:
            self.bar.set_postfix_str(f"{self.current} {event.step}/{event.total}")

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_report(report) -> str:
    """The table printed at the end: each asset of this shard with how it ended now."""
    rows = []
    for planned in report.planned:
        status, outcome = report.status(planned), report.outcomes.get(planned.asset.id)
        error = outcome.error if outcome else (planned.before.error if status == "skipped (failed before)" else "")
        rows.append((planned.asset.id, status, f"{outcome.seconds:.1f}" if outcome else "-", error))
    width = max([len("asset"), *(len(row[0]) for row in rows)])
    lines = [f"{'asset':<{width}}  {'status':<24} {'seconds':>8}  error"]
    lines += [f"{name:<{width}}  {status:<24} {seconds:>8}  {error}".rstrip() for name, status, seconds, error in rows]
    counts: dict[str, int] = {}
    for _, status, _, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    lines.append(f"{len(rows)} asset(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
                 + f"; summary: {os.path.abspath(report.summary_path)}")
    if report.failed:
        lines.append("failed assets keep any earlier result; fix them and run the same command (with --retry-failed "
                     "for a failure whose inputs did not change)")
    return "\n".join(lines)
