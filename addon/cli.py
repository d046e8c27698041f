"""Headless batch stylization of objects in a .blend file.

With the installed extension (Blender 4.2+ registers the command when the add-on is enabled; a
command consumes every argument after it, so the file is given with ``--blend``)::

    blender -c partstyle --blend file.blend --object NAME --prompt "..." --out result.blend
    blender -c partstyle --blend file.blend --manifest objects.jsonl --out result.blend

From a checkout of the repository, with Blender::

    blender -b file.blend --python-exit-code 1 --python addon/cli.py -- \\
        --object NAME [--object NAME ...] --prompt "pottery base, linen shade" --out result.blend \\
        [--use-groups] [--lock PART] [--preset fast] [--seed 0] [--iterations N] [--texture SIZE] \\
        [--device auto|cpu|cuda] [--models tiny|default|FOLDER] [--allow-download] [--set KEY=VALUE] \\
        [--relief none|subtle|strong|AMOUNT] [--relief PART=LEVEL ...] [--image PART=FILE ...]

With Blender as a Python module (``pip install bpy``), the same options plus ``--blend``::

    python addon/cli.py --blend file.blend -- --object NAME --prompt "..." --out result.blend

``--manifest FILE`` (instead of ``--object`` and ``--prompt``) gives each object its own prompt and
options, one row each (JSONL or CSV; :mod:`.cli_manifest`, docs/blender.md): there one object's
failure does not stop the others, and the file is saved with every result that succeeded.

``--allow-download`` also needs Blender's online access (``blender --online-mode``, or *Allow
Online Access* in the preferences): without it the command refuses before any object runs.

With ``--object``, each object is stylized synchronously (the same run as the panel's Stylize button),
with progress lines on stdout. The result file is written only when every object succeeded; otherwise the
command prints ``error: ...`` on stderr and exits 1 (2 for bad arguments, 130 when interrupted).
Bad arguments are found before any object runs: an ``--out`` that is the input file or could not
be saved, every ``--object`` that is not a mesh object of the file (all of them in one error,
with the mesh objects there), a ``--relief`` level or part the engine would refuse, and an
``--image`` the engine would refuse (a part the prompt does not name, a file it cannot read).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
from typing import NamedTuple

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blender -b FILE.blend --python addon/cli.py --",
        description="Stylize mesh objects of a .blend file with Partstyle and save the result.")
    parser.add_argument("--blend", help="the .blend file to open (with `blender -c partstyle` and with the bpy "
                                        "module; with --python, Blender opens the file given before it)")
    parser.add_argument("--object", action="append", default=[], metavar="NAME",
                        help="a mesh object to stylize (repeat for several); required without --manifest")
    parser.add_argument("--prompt", help='styles per part ("pottery base, linen shade") or one for the whole '
                                         "object; required without --manifest")
    parser.add_argument("--manifest", metavar="FILE",
                        help="a .jsonl or .csv file of objects, one a row with its own prompt and options, instead "
                        "of --object and --prompt; the other options are the rows' defaults (docs/blender.md)")
    parser.add_argument("--out", required=True, help="where to save the resulting .blend file")
    parser.add_argument("--use-groups", action="store_true",
                        help="take the parts from the objects' part:<name> vertex groups instead of locating them")
    parser.add_argument("--lock", action="append", default=[], metavar="PART",
                        help="keep this part's existing Partstyle result (repeatable)")
    parser.add_argument("--preset", default="fast", help="fast, faithful, text2mesh or preview (default fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=0, help="optimization steps (default: the preset's)")
    parser.add_argument("--texture", type=int, default=0, metavar="SIZE",
                        help="also bake base color, normal and displacement maps of SIZE x SIZE texels on each "
                        "object's UV map, packed into the .blend with a material using them (default 0: none)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--models", default="tiny", help="tiny (offline), default (hub models) or a folder")
    parser.add_argument("--allow-download", action="store_true", help="let --models default download")
    parser.add_argument("--relief", action="append", default=[], metavar="LEVEL|PART=LEVEL",
                        help="how far surfaces may move: none, subtle (default), strong or a number, the share of "
                        "the local thickness; PART=LEVEL sets one part's (repeatable), "
                        "e.g. --relief strong --relief tube=none")
    parser.add_argument("--image", action="append", default=[], metavar="PART=FILE",
                        help="a reference picture for a part's look, beside its words (repeatable; whole=FILE for "
                        "the whole object), e.g. --image shade=linen.jpg; its share is --set guidance.image_weight="
                        "W (default 0.5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine setting, e.g. --set views.count=2 (python -m engine settings lists them)")
    return parser


def script_args(argv: list[str]) -> list[str]:
    """The options meant for this script in ``sys.argv``.

    Under Blender everything before ``--`` is Blender's; run as ``python addon/cli.py`` the options
    before ``--`` (``--blend``) are ours too.
    """
    if "--" in argv:
        split = argv.index("--")
        before, after = argv[1:split], argv[split + 1:]
    else:
        before, after = argv[1:], []
    as_script = os.path.splitext(os.path.basename(argv[0] if argv else ""))[0] == "cli"
    return (before if as_script else []) + after


def import_addon():
    """The add-on package this file belongs to (``addon`` in the repository, ``partstyle`` in the
    extension), importable by putting its parent folder on ``sys.path``."""
    here = os.path.dirname(os.path.abspath(__file__))
    root, package = os.path.dirname(here), os.path.basename(here)
    sys.path[:] = [
        p for p in sys.path if os.path.abspath(p or os.curdir) != here
    ]  # `python addon/cli.py` puts it first
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(package)


class ProgressLines:
    """Engine events of one object -> a few lines on stdout (about every tenth of the run)."""

    def __init__(self, name: str, events):
        self.name, self.events = name, events

    def __call__(self, event) -> None:
        e = self.events
        if isinstance(event, e.StageEvent):
            self._line(f"{event.name}: {event.detail}" if event.detail else event.name)
        elif isinstance(event, e.StepEvent):
            every = max(1, event.total // 10)
            if event.step in (1, event.total) or event.step % every == 0:
                loss = event.losses.get("total", float("nan"))
                self._line(f"step {event.step}/{event.total} loss {loss:.4f}, {event.eta:.0f} s left")
        elif isinstance(event, e.NoticeEvent):
            self._line(f"notice: {event.message}")

    def _line(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)


COMMAND = "partstyle"


def execute(argv: list[str]) -> int:
    """Blender's command-line API entry (``blender -c partstyle --blend file.blend ...``): the same
    options as the script, run by the add-on package this module belongs to (no ``sys.path`` change)."""
    return main(list(argv), addon=importlib.import_module(__package__))


def register_command():
    """Register ``-c partstyle`` where the running Blender has the command-line API (4.2+); returns
    the handle for :func:`unregister_command`, or None."""
    import bpy

    register = getattr(bpy.utils, "register_cli_command", None)
    return register(COMMAND, execute) if register else None


def unregister_command(handle) -> None:
    import bpy

    if handle is not None:
        bpy.utils.unregister_cli_command(handle)


def main(argv: list[str] | None = None, *, addon=None) -> int:
    """Run the batch; ``argv`` are the script's options (default: taken from ``sys.argv``).

    ``addon`` is the add-on package (given by :func:`execute`); run as a script from a checkout,
    the package is found next to this file (:func:`import_addon`).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(script_args(sys.argv) if argv is None else argv)
        problem = usage_problem(args)
        if problem:
            parser.error(problem)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    if not args.out.lower().endswith(".blend"):
        print(f"error: --out {args.out}: the result is a Blender file; give a path ending in .blend", file=sys.stderr)
        return EXIT_USAGE
    if args.blend and same_file(args.out, args.blend):
        return _out_is_input(args.out)
    import bpy

    if args.allow_download and not getattr(bpy.app, "online_access", True):
        print("error: --allow-download: Blender's online access is off, so nothing may be downloaded. Start "
              "Blender with --online-mode (or turn on Allow Online Access in Preferences > System > Network), "
              "or fetch the models first (the add-on's preferences: Download models).", file=sys.stderr)
        return EXIT_USAGE
    addon = addon or import_addon()
    engine_link, jobs, runs = addon.engine_link, addon.jobs, addon.runs
    try:  # --image PART=FILE, read as the engine's command line reads it
        image_pairs(args, engine_link)
    except engine_link.user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.blend:
        if not os.path.isfile(args.blend):
            print(f"error: --blend {args.blend}: no such file", file=sys.stderr)
            return EXIT_ERROR
        bpy.ops.wm.open_mainfile(filepath=os.path.abspath(args.blend))
    if bpy.data.filepath and same_file(args.out, bpy.data.filepath):  # blender -b FILE: the open file
        return _out_is_input(args.out)
    if args.manifest:
        return importlib.import_module(f"{addon.__name__}.cli_manifest").run_manifest(args, addon)
    checks = importlib.import_module(f"{addon.__name__}.cli_checks")
    problem = (checks.check_objects(args.object, bpy.data.objects, os.path.basename(bpy.data.filepath) or "the file")
               or checks.check_destination(args.out, engine_link)
               or checks.check_relief(args.relief, args.prompt, engine_link, runs)
               or checks.check_images(args.image, args.prompt, args.lock, engine_link, runs))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    warning = runs.vocabulary_warning(runs.Request(object_name="", prompt=args.prompt, models=args.models),
                                      hint=VOCABULARY_HINT)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    interrupted = _cancel_on_interrupt(jobs)
    try:
        failed = []
        for name in args.object:
            if not stylize_object(name, args, engine_link, jobs, runs):
                failed.append(name)
            if interrupted():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("cancelled: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failed:
        print(
            f"error: {len(failed)} of {len(args.object)} object(s) failed ({', '.join(failed)}); nothing was saved",
            file=sys.stderr,
        )
        return EXIT_ERROR
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=out, check_existing=False)
    print(f"saved {out}", flush=True)
    return 0


VOCABULARY_HINT = ("Use --models default for any words (the real models; fetch them once with --allow-download and "
                   "blender --online-mode, or the add-on's Download models).")


def usage_problem(args) -> str | None:
    """Why the options do not go together (``--manifest`` with ``--object``/``--prompt``, or neither), or None."""
    given = {"--object": bool(args.object), "--prompt": args.prompt is not None}
    if args.manifest and any(given.values()):
        return (f"--manifest names the objects and their prompts; leave out "
                f"{' and '.join(name for name, there in given.items() if there)} (or leave out --manifest to "
                "stylize the --object objects with one --prompt)")
    missing = [name for name, there in given.items() if not there]
    if not args.manifest and missing:
        return f"the following arguments are required: {', '.join(missing)} (or give --manifest FILE)"
    return None


def same_file(a: str, b: str) -> bool:
    """True when the paths name one file (``./x.blend``, an absolute path or a link to it)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _out_is_input(out: str) -> int:
    print(f"error: --out {out} is the input .blend file itself; saving there would overwrite the original. "
          "Give another path for the result.", file=sys.stderr)
    return EXIT_USAGE


def image_pairs(args, engine_link) -> tuple[tuple[str, str], ...]:
    """``--image PART=FILE`` options as ``(part, file)`` pairs (the engine reads the files); raises the
    engine's PromptError for a value that is not PART=FILE."""
    return engine_link.load("references", light=True).image_options(args.image)


def request_for(name: str, args, runs, engine_link):
    """The :class:`runs.Request` for the object ``name`` from the parsed command line."""
    return runs.Request(
        object_name=name,
        prompt=args.prompt,
        lock=tuple(args.lock),
        use_groups=args.use_groups,
        preset=args.preset,
        iterations=args.iterations,
        texture_size=args.texture,
        seed=args.seed,
        device=args.device,
        models=args.models,
        allow_download=args.allow_download,
        overrides=tuple(args.overrides),
        images=image_pairs(args, engine_link),
        **engine_link.load("relief", light=True).relief_options(args.relief),
    )


def _cancel_on_interrupt(jobs):
    """Ctrl-C cancels the running object at its next iteration (a second one stops at once).
    Returns a function that tells whether Ctrl-C was pressed."""

    pressed = []

    def on_interrupt(signum, frame):
        job = jobs.current()
        if pressed or job is None:
            raise KeyboardInterrupt
        pressed.append(True)
        job.cancel()

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGINT, on_interrupt)
    return lambda: bool(pressed)


class Outcome(NamedTuple):
    """How one object's run ended: ``status`` done, failed or cancelled (Ctrl-C: the object is as it was),
    the run's report or error, the engine's seconds, and its device ("" unless it finished)."""

    status: str
    message: str
    seconds: float = 0.0
    device: str = ""


def run_object(request, engine_link, jobs, runs) -> Outcome:
    """Stylize ``request``'s object synchronously, with progress lines on stdout; the engine's and the
    add-on's errors come back as a failed outcome, others (a bug) are raised."""
    name = request.object_name
    run = runs.StyleRun(request)
    try:
        job = runs.start(run, threaded=False, listener=ProgressLines(name, jobs.load_events()))
    except engine_link.user_errors() as exc:
        return Outcome("failed", str(exc))
    jobs.drain(job)
    level, message = runs.conclude(job, run)
    if level == "ERROR":
        return Outcome("failed", message, job.seconds)
    if job.state == jobs.CANCELLED:
        return Outcome("cancelled", message, job.seconds)
    return Outcome("done", message, job.seconds, str(job.result.record.get("device", "")))


def stylize_object(name: str, args, engine_link, jobs, runs) -> bool:
    """Stylize one object; prints its outcome. True unless it failed."""
    outcome = run_object(request_for(name, args, runs, engine_link), engine_link, jobs, runs)
    if outcome.status == "failed":
        print(f"error: {name}: {outcome.message}", file=sys.stderr)
        return False
    print(f"[{name}] {outcome.message} ({outcome.seconds:.1f} s)", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
