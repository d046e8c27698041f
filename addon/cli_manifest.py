"""The headless command's manifest of objects: each object of the .blend file with its own prompt.

::

    blender -c partstyle --blend scene.blend --manifest objects.jsonl --out styled.blend [options]

``objects.jsonl`` has one row per object (or ``objects.csv``: a header, then one row per object)::

    {"object": "Lamp", "prompt": "pottery base, linen shade", "use_groups": true}
    {"object": "Vase", "prompt": "a vase made of gold", "seed": 3, "relief": "strong"}

The rows are read by the engine's batch manifest reader (``engine.batch.manifest.read_rows``): line
numbers, blank lines, ``#`` comments in JSONL, and list fields (a JSON list, or text with ``;``
between the values) work as in ``python -m engine batch``. The fields are :data:`FIELDS`: ``object``
and ``prompt`` are required; what a row does not give comes from the command line's options (a
row's ``set`` comes after the command line's ``--set``; ``--device``, ``--models`` and
``--allow-download`` are the whole batch's). ``image`` paths are read from the manifest's folder.

Every row is checked before any object runs (the object is a mesh object of the file and on no
other row, the fields, prompt, settings, relief and images as the engine reads them); bad rows end
the command with one error that names each (``line N: ...``), nothing run, nothing saved. Then the
failure rules are the engine's batch's: an object's error is reported and the others go on; the
file is saved with every object that succeeded (a failed one is left as it was in the input); a
summary ``<out without .blend>.summary.jsonl`` records every row; the exit code is 1 when any
object failed. The first Ctrl-C cancels the running object (it is left as it was), the objects
that finished are saved, the rest are ``not run``, and the exit code is 130.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

import bpy

from . import cli, cli_checks

FIELDS = ("object", "prompt", "use_groups", "lock", "preset", "seed", "iterations", "set", "relief", "image",
          "texture")
DONE, FAILED, NOT_RUN = "done", "failed", "not run"


@dataclass(frozen=True)
class Row:
    """One checked row: its line in the manifest, its object, and the command line's options with the
    row's values in their place (what :func:`cli.request_for` reads)."""

    line: int
    name: str
    options: argparse.Namespace


@dataclass
class RowResult:
    """How one row ended, as the summary records it."""

    row: Row
    status: str = NOT_RUN
    seconds: float = 0.0
    device: str = ""
    error: str = ""

    def record(self) -> dict:
        return {"object": self.row.name, "line": self.row.line, "status": self.status,
                "seconds": round(self.seconds, 3), "device": self.device, "error": self.error}


def summary_path(out: str) -> str:
    """``result.blend`` -> ``result.summary.jsonl`` (next to it)."""
    return os.path.splitext(os.path.abspath(out))[0] + ".summary.jsonl"


def run_manifest(args, addon) -> int:
    """The manifest mode of :func:`cli.main`, with the .blend file open: check every row, stylize each
    object, save, write the summary; returns the exit code."""
    engine_link, jobs, runs = addon.engine_link, addon.jobs, addon.runs
    where = os.path.basename(bpy.data.filepath) or "the file"
    try:
        rows = read_objects(args, bpy.data.objects, where, engine_link, runs)
    except engine_link.user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    problem = cli_checks.check_destination(args.out, engine_link)
    if problem is None and cli.same_file(summary_path(args.out), args.manifest):
        problem = (f"--out {args.out}: its summary {summary_path(args.out)} would overwrite the manifest; "
                   "give another --out")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return cli.EXIT_USAGE
    for row in rows:
        warning = runs.vocabulary_warning(runs.Request(object_name=row.name, prompt=row.options.prompt,
                                                       models=args.models), hint=cli.VOCABULARY_HINT)
        if warning:
            print(f"warning: {row.name} (line {row.line}): {warning}", file=sys.stderr)
    results, interrupted = run_rows(rows, engine_link, jobs, runs)
    out = os.path.abspath(args.out)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=out, check_existing=False)
        saved = True
    except (OSError, RuntimeError) as exc:
        print(f"error: the result could not be saved to {out}: {exc}", file=sys.stderr)
        saved = False
    summary = write_summary(summary_path(out), results, engine_link)
    print_table(results)
    if saved:
        print(f"saved {out}", flush=True)
    print(f"summary {summary}", flush=True)
    failed = [r.row.name for r in results if r.status == FAILED]
    done = sum(r.status == DONE for r in results)
    if interrupted:
        print(f"cancelled: interrupted; {done} finished object(s) {'saved' if saved else 'not saved'}, "
              f"{sum(r.status == NOT_RUN for r in results)} not run", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    if failed:
        print(f"error: {len(failed)} of {len(results)} object(s) failed ({', '.join(failed)}); "
              f"{f'saved the {done} that succeeded' if saved else 'nothing was saved'}", file=sys.stderr)
        return cli.EXIT_ERROR
    return cli.EXIT_ERROR if not saved else 0


def read_objects(args, objects, where: str, engine_link, runs) -> list[Row]:
    """The checked rows of ``args.manifest`` for the file's ``objects``; raises the engine's
    ManifestError naming every bad row (``line N: ...``), or the file when it cannot be read."""
    manifest = engine_link.load("batch.manifest", light=True)  # the engine batch's reader
    base = os.path.dirname(os.path.abspath(args.manifest))
    rows, problems, seen, unknown_objects = [], [], {}, False
    for line, fields in manifest.read_rows(args.manifest):
        try:
            name, options = _row_options(fields, args, base, manifest, engine_link)
        except engine_link.user_errors() as exc:
            problems.append(f"line {line}: {exc}")
            continue
        found = row_problems(name, options, objects, engine_link, runs)
        unknown_objects = unknown_objects or cli_checks.object_problem(name, objects) is not None
        if name in seen:
            found.insert(0, f"'{name}' is already on line {seen[name]}; give each object one row")
        seen.setdefault(name, line)
        if found:
            problems.append(f"line {line}: {'; '.join(found)}")
        else:
            rows.append(Row(line, name, options))
    if problems:
        there = f"\n  Mesh objects in {where}: {cli_checks.mesh_names(objects)}." if unknown_objects else ""
        raise manifest.ManifestError(
            f"{args.manifest}: {len(problems)} bad row(s); nothing was run.\n  " + "\n  ".join(problems) + there)
    if not rows:
        raise manifest.ManifestError(f"{args.manifest}: no rows; write one row per object ({', '.join(FIELDS)}).")
    return rows


def _row_options(fields, args, base: str, manifest, engine_link) -> tuple[str, argparse.Namespace]:
    """A row's object name and options (the command line's, with the row's in their place); raises
    ManifestError (and the engine's kin) for a row whose fields cannot be read."""
    if isinstance(fields, str):  # the reader's reason why the line is no row
        raise manifest.ManifestError(fields)
    if not isinstance(fields, dict):
        raise manifest.ManifestError(f"a row is an object with fields ({', '.join(FIELDS)}), "
                                     f"not {type(fields).__name__}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise manifest.ManifestError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    name, prompt = manifest.text_field(fields, "object", None), manifest.text_field(fields, "prompt", None)
    missing = [key for key, value in (("object", name), ("prompt", prompt)) if not value]
    if missing:
        raise manifest.ManifestError(f"{' and '.join(missing)} missing; every row needs an object and a prompt")
    options = argparse.Namespace(**vars(args))
    options.object, options.prompt, options.manifest = [name], prompt, None
    options.preset = manifest.text_field(fields, "preset", args.preset)
    options.seed = manifest.integer_field(fields, "seed", args.seed)
    options.iterations = manifest.integer_field(fields, "iterations", args.iterations)
    options.texture = manifest.integer_field(fields, "texture", args.texture)
    options.overrides = [*args.overrides, *manifest.list_field(fields, "set")]
    if "use_groups" in fields:
        options.use_groups = manifest.flag_field(fields, "use_groups")
    if "lock" in fields:
        options.lock = manifest.list_field(fields, "lock")
    if "relief" in fields:
        options.relief = manifest.list_field(fields, "relief")
    if "image" in fields:
        pairs = engine_link.load("references", light=True).image_options(manifest.list_field(fields, "image"))
        options.image = [f"{part}={os.path.join(base, os.path.expanduser(path))}" for part, path in pairs]
    return name, options


def row_problems(name: str, options, objects, engine_link, runs) -> list[str]:
    """Why the row's object cannot run (not a mesh object of the file, a prompt, setting, relief or
    image the engine refuses), each once; empty when it can."""
    problems = [cli_checks.object_problem(name, objects),
                cli_checks.check_relief(options.relief, options.prompt, engine_link, runs, option="relief"),
                cli_checks.check_images(options.image, options.prompt, options.lock, engine_link, runs, option="image",
                                 lock_option="lock")]
    if problems[1] is None:  # the relief reads: the whole request can be built
        request = cli.request_for(name, options, runs, engine_link)
        for what, check in (("prompt", request.parsed_prompt), ("settings", lambda: request.settings(live=False))):
            try:
                check()
            except engine_link.user_errors() as exc:
                problems.append(f"{what}: {exc}")
    return [p for p in problems if p]


def run_rows(rows: list[Row], engine_link, jobs, runs) -> tuple[list[RowResult], bool]:
    """Stylize each row's object in turn; an object's failure is recorded and the next one runs.
    Returns every row's result and whether Ctrl-C ended the batch early."""
    results = [RowResult(row) for row in rows]
    previous = signal.getsignal(signal.SIGINT)
    pressed = cli._cancel_on_interrupt(jobs)
    interrupted = False
    current = None
    try:
        for result in results:
            current, started = result, time.perf_counter()
            run_row(result, engine_link, jobs, runs)
            result.seconds = time.perf_counter() - started
            current = None
            if pressed():
                interrupted = True
                break
    except KeyboardInterrupt:  # a second Ctrl-C, or one between objects: stop now
        interrupted = True
        jobs.release()
        if current is not None:
            current.status, current.error = NOT_RUN, "interrupted (Ctrl-C) while running; left as it was"
            current.seconds = time.perf_counter() - started
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return results, interrupted


def run_row(result: RowResult, engine_link, jobs, runs) -> None:
    """Stylize one row's object (as ``--object`` does) and record how it ended in ``result``."""
    name = result.row.name
    try:
        outcome = cli.run_object(cli.request_for(name, result.row.options, runs, engine_link), engine_link, jobs,
                                 runs)
    except Exception as exc:  # one object's failure, whatever it is, must not end the batch
        jobs.log.error("Partstyle: stylizing %s failed", name, exc_info=exc)
        jobs.release()
        outcome = cli.Outcome("failed", f"{type(exc).__name__}: {exc}")
    result.device = outcome.device
    if outcome.status == "done":
        result.status = DONE
        print(f"[{name}] {outcome.message} ({outcome.seconds:.1f} s)", flush=True)
    elif outcome.status == "cancelled":
        result.status, result.error = NOT_RUN, "cancelled (Ctrl-C) while running; left as it was"
        print(f"[{name}] {outcome.message}", flush=True)
    else:
        result.status, result.error = FAILED, outcome.message
        print(f"error: {name} (line {result.row.line}): {outcome.message}", file=sys.stderr, flush=True)


def write_summary(path: str, results: list[RowResult], engine_link) -> str:
    """One JSON line per row (object, line, status, seconds, device, error) at ``path``, replaced all
    at once (the engine's atomic writer); returns it."""
    with engine_link.load("files", light=True).atomic_writer(path) as fh:
        fh.write("".join(json.dumps(result.record()) + "\n" for result in results).encode())
    return path


def print_table(results: list[RowResult], width: int = 100) -> None:
    """The rows' outcomes as a table on stdout (errors cut to ``width``; the summary has them whole)."""
    errors = [" ".join(r.error.split()) for r in results]
    table = [("object", "status", "seconds", "error")] + [
        (r.row.name, r.status, f"{r.seconds:.1f}", error if len(error) <= width else error[:width - 3] + "...")
        for r, error in zip(results, errors, strict=True)]
    widths = [max(len(cells[k]) for cells in table) for k in range(3)]
    for cells in table:
        line = "  ".join(cells[k].ljust(widths[k]) for k in range(3)) + "  " + cells[3]
        print(line.rstrip(), flush=True)
