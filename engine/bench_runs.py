"""``python -m engine bench --runs``: whole commands as a user types them, with the real-size
architectures.

A model folder with the real-size CLIP ViT-B/32, Grounding DINO tiny and SAM 2 hiera-tiny
architectures and random weights (cost does not depend on the weights; the tiny models'
tokenizers, whose ids fit the real vocabularies) is built once and kept. Each run is
``python -m engine stylize`` in a child process on the 40k-face sample lamp; its wall time covers
process start, imports, model loading, optimization and export, and the child's run.json gives the
phases (model loading, setup, optimization, first preview, peak memory).

Random weights cannot locate parts: their boxes and masks carry no information, so settling finds
no part and a located run stops at "could not find". The stylize runs therefore take their parts
from the sample's labels, and localization is timed on its own in this process, on the same mesh
with the same settings, models loaded fresh, to its end (every view detected, segmented and
settled; the verdict that follows is ignored). A located run costs the labelled run plus that
localization, less the grounding model's load where the labelled run already paid it for its
grounding steps (every preset locates with the same ``localize`` settings). Random weights also
score nothing above the usual thresholds, so every run sets ``localize.box_threshold`` and
``guidance.grounding_threshold`` to 0 (every box and proposal counts: the cost of a real run's worst
case).

Runs whose full schedule would take hours on a CPU (``faithful``, ``text2mesh``) are cut at
``CPU_ITERATIONS`` there, and the full run is estimated from their seconds per iteration.

``--warm`` also runs each twice in this process through ``api.stylize`` with one model store, as a
Blender session or a batch runs them, recording when each iteration ends: what the first run pays
once (the first iteration, the first grounding step: on a GPU, the first use of each kernel) and
what the second costs with everything loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TextIO

from .bench_batch import report_line
from .config import ALL_FLOAT32, settings_for
from .devices import native_bfloat16, resolve_device

RUN_MESH = "sample:lamp@40000"
PART_PROMPT = "red base, yellow tube, blue shade"
HOLISTIC_PROMPT = "a lamp made of gold"
ZERO_THRESHOLDS = ("localize.box_threshold=0", "guidance.grounding_threshold=0")
# Iterations of the GPU presets' runs on a CPU (their full schedule there takes hours).
CPU_ITERATIONS = 20
FOLDER_VERSION = "real-size random weights, seed 0, v1"


@dataclass(frozen=True)
class WholeRun:
    """One benchmarked command: a name, its preset, prompt and extra arguments; ``cut_on_cpu``:
    run at most ``cpu_iterations`` of the preset's schedule on a CPU, and estimate the rest."""

    name: str
    preset: str
    prompt: str
    extra: tuple[str, ...] = ()
    cut_on_cpu: bool = False

    def full_iterations(self) -> int:
        return settings_for(self.preset).optim.iterations


BY_LABEL = ("--parts-from", "labels")
SET_FLOAT32 = tuple(arg for override in ALL_FLOAT32 for arg in ("--set", override))

RUNS = (
    WholeRun("fast, 3 parts", "fast", PART_PROMPT, BY_LABEL),
    WholeRun("fast, 3 parts, float32", "fast", PART_PROMPT, (*BY_LABEL, *SET_FLOAT32)),
    WholeRun("preview, 3 parts", "preview", PART_PROMPT, BY_LABEL),
    WholeRun("faithful, 3 parts", "faithful", PART_PROMPT, BY_LABEL, cut_on_cpu=True),
    WholeRun("text2mesh, holistic", "text2mesh", HOLISTIC_PROMPT, cut_on_cpu=True),
)


@dataclass(frozen=True)
class Goal:
    """One of the whole-command goals (docs/performance.md): on ``device`` ("cpu" or "cuda"), the
    ``measure`` of the run named ``run`` takes at most ``seconds``. Measures: ``located`` (the run with
    its parts located, estimated as the benchmark prints it), ``full run`` (its whole command, estimated
    where cut) and ``first parts`` (a located run's first preview, the parts found in the first view,
    from the start of localization, models loading included)."""

    device: str
    run: str
    measure: str
    seconds: float

    def label(self) -> str:
        return f"{self.run}, {self.measure} <= {self.seconds:g} s"


GOALS = (
    Goal("cpu", "fast, 3 parts", "located", 300.0),
    Goal("cpu", "fast, 3 parts", "first parts", 10.0),
    Goal("cuda", "fast, 3 parts", "located", 10.0),
    Goal("cuda", "faithful, 3 parts", "located", 60.0),
    Goal("cuda", "text2mesh, holistic", "full run", 40.0),
)


def goal_verdicts(figures: dict, device: str, goals: tuple[Goal, ...] = GOALS) -> list[tuple[Goal, float, bool]]:
    """``(goal, measured seconds, met)`` for each goal of ``device`` ("cpu" or "cuda") whose run is in
    ``figures`` (:func:`run_whole_commands`'s)."""
    rows = {row["name"]: row for row in figures["runs"]}
    verdicts = []
    for goal in goals:
        if goal.device != device or goal.run not in rows:
            continue
        if goal.measure == "located":
            measured = figures["located"].get(goal.run)
        elif goal.measure == "full run":
            measured = rows[goal.run]["full_run"]
        elif goal.measure == "first parts":  # the localization of the run's precision
            measured = figures["localization"].get(rows[goal.run]["precision"], {}).get("first_progress")
        else:
            raise ValueError(f"unknown goal measure {goal.measure!r}")
        if measured is not None:
            verdicts.append((goal, measured, measured <= goal.seconds))
    return verdicts


def real_size_model_folder(root: str) -> str:
    """``root`` holding ``clip/``, ``grounding/`` and ``segmenter/`` with the real-size
    architectures and random weights (seeded), built unless an earlier call left it complete."""
    marker = os.path.join(root, "partstyle-bench.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as fh:
            if json.load(fh).get("version") == FOLDER_VERSION:
                return root
    import torch
    from transformers import CLIPConfig, CLIPModel, GroundingDinoForObjectDetection, Sam2Model

    from .tiny_models import build_tiny_clip, build_tiny_grounding_dino, real_size_grounding_config, segmenter_config

    os.makedirs(root, exist_ok=True)
    builds = (
        ("clip", lambda: CLIPModel(CLIPConfig()), build_tiny_clip()[1]),  # CLIPConfig's defaults are ViT-B/32
        ("grounding", lambda: GroundingDinoForObjectDetection(real_size_grounding_config()),
         build_tiny_grounding_dino()[1]),
        ("segmenter", lambda: Sam2Model(segmenter_config()), None),
    )
    for role, build, tokenizer in builds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build().eval()
        folder = os.path.join(root, role)
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    with open(marker, "w", encoding="utf-8") as fh:
        json.dump({"version": FOLDER_VERSION}, fh)
    return root


def default_folder() -> str:
    """Where the benchmark keeps its model folder between runs."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "partstyle", "bench-real-size")


def run_whole_commands(
    *, device: str = "cpu", models: str | None = None, runs: tuple[WholeRun, ...] = RUNS, mesh: str = RUN_MESH,
    cpu_iterations: int = CPU_ITERATIONS, cut_iterations: int | None = None, warm: bool = False,
    out: TextIO = sys.stdout,
) -> dict:
    """Time each of ``runs`` on ``mesh`` as a child process on ``device``, and the localization of
    its 3 parts (once per precision of the part runs); print tables to ``out`` and return
    ``{"runs": [one dict per run], "localization": {precision: phases}, "located": {run name: estimated
    seconds of the run with its parts located}}`` (part runs only). ``models``: the real-size folder's place (None:
    the default cache), or ``tiny`` for the project's own models (a smoke run). The long runs (``cut_on_cpu``)
    stop after ``cut_iterations`` on any device where it is given, else after ``cpu_iterations`` on a CPU, and
    their full runs are estimated from their seconds per iteration. ``warm``: also each run twice in this
    process (:func:`time_in_one_process`), under ``"warm"`` (one dict per run)."""
    source = models if models == "tiny" else real_size_model_folder(models or default_folder())
    on_cpu = device == "cpu" or (device == "auto" and not _cuda_visible())
    kind = "the project's tiny models" if source == "tiny" else f"{source} (real-size, random weights)"
    report_line(out, f"# whole commands: {mesh}, models {kind}, device {device}; parts from the labels")
    report_line(out, f"{'run':<24} {'it.':>5} {'wall s':>8} {'load s':>7} {'setup s':>8} {'optim s':>8} "
                     f"{'s/it.':>7} {'preview s':>9} {'peak MB':>8} {'full run s':>10}")
    # where `auto` resolves to float32 (no native bf16), a float32 run repeats its `auto` twin: not run again
    auto_is_float32 = not native_bfloat16(resolve_device(device))
    rows, measured = [], {}
    for run in runs:
        full = run.full_iterations()
        cut = cut_iterations if cut_iterations is not None else (cpu_iterations if on_cpu else None)
        iterations = min(full, cut) if cut is not None and run.cut_on_cpu else full
        twin = (run.preset, run.prompt, iterations, _without_float32(run.extra) if auto_is_float32 else run.extra)
        repeated = twin in measured
        if not repeated:
            measured[twin] = _time_run(run, iterations, source, mesh, device)
        row = dict(measured[twin])
        per_iteration = row["seconds_optimizing"] / max(row["steps"], 1)
        row.update(name=run.name, iterations=iterations, full_iterations=full, per_iteration=per_iteration,
                   full_run=row["wall"] + per_iteration * (full - row["steps"]), repeated=repeated,
                   precision=_precision(run))
        rows.append(row)
        note = ("" if iterations == full else " (est.)") + (" (= auto: no native bf16 here; not run again)"
                                                            if repeated else "")
        report_line(out, f"{run.name:<24} {iterations:>5} {row['wall']:>8.1f} {row['seconds_loading_models']:>7.1f} "
                         f"{row['seconds_setup']:>8.1f} {row['seconds_optimizing']:>8.1f} {per_iteration:>7.3f} "
                         f"{_or_dash(row['seconds_to_first_preview']):>9} {row['peak_memory_mb']:>8.0f} "
                         f"{row['full_run']:>10.1f}{note}")
    figures = {"runs": rows, "localization": {}, "located": {}}
    part_runs = [(run, row) for run, row in zip(runs, rows, strict=True) if run.prompt == PART_PROMPT]
    if part_runs:
        report_line(out, f"# localization of '{PART_PROMPT}' on {mesh} (the localize settings, every preset's), in "
                         "this process, models loaded fresh: seconds")
        report_line(out, f"  {'precision':<9} {'load':>6} {'grounding':>9} {'first parts preview':>19} {'total':>7}")
    for precision in dict.fromkeys(_precision(run) for run, _row in part_runs):
        repeated = precision == "float32" and auto_is_float32 and "auto" in figures["localization"]
        phases = (figures["localization"]["auto"] if repeated
                  else time_localization(source, mesh, device, () if precision == "auto" else ALL_FLOAT32))
        figures["localization"][precision] = phases
        report_line(out, f"  {precision:<9} {phases['load']:>6.1f} {phases['grounding_load']:>9.1f} "
                         f"{phases['first_progress']:>19.1f} {phases['total']:>7.1f}"
                         + (" (= auto)" if repeated else ""))
    if part_runs:
        report_line(out, "# the same runs with their parts located (est.: the run by label plus the localization, "
                         "less the grounding model's load where the run by label paid it): seconds")
    for run, row in part_runs:
        phases = figures["localization"][_precision(run)]
        paid = phases["grounding_load"] if settings_for(run.preset).guidance.grounding_every > 0 else 0.0
        located = row["full_run"] - paid + phases["total"]
        figures["located"][run.name] = located
        report_line(out, f"  {run.name:<24} {located:>10.1f}")
    verdicts = goal_verdicts(figures, "cpu" if on_cpu else "cuda")
    if verdicts:
        report_line(out, f"# the goals on this device ({'a CPU' if on_cpu else 'a CUDA GPU'}; docs/performance.md)")
    for goal, measured, met in verdicts:
        report_line(out, f"  {goal.label():<44} {measured:>8.1f} s  "
                         + ("met" if met else f"not met ({measured / goal.seconds:.1f}x the goal)"))
    if warm:
        figures["warm"] = _report_warm(runs, rows, source, mesh, device, out)
    return figures


def _report_warm(runs, rows, models: str, mesh: str, device: str, out: TextIO) -> list[dict]:
    """:func:`time_in_one_process` for each run not repeated, at its measured iterations, printed."""
    report_line(out, "# the same runs twice in one process, one model store (as a Blender session or a batch): "
                     "seconds, and ms a step")
    report_line(out, f"{'run':<24} {'first s':>8} {'1st step s':>10} {'1st grounding s':>15} {'CLIP ms':>8} "
                     f"{'grounding ms':>12} {'again s':>8} {'again preview s':>15}")
    timed = []
    for run, row in zip(runs, rows, strict=True):
        if row["repeated"]:
            continue
        warm = {"name": run.name, **time_in_one_process(run, row["iterations"], models, mesh, device)}
        timed.append(warm)
        report_line(out, f"{run.name:<24} {warm['first_run']:>8.1f} {warm['first_step']:>10.2f} "
                         f"{_or_dash(warm['first_grounding_step'], '.2f'):>15} {warm['clip_step'] * 1e3:>8.1f} "
                         f"{_or_dash(warm['grounding_step'], '.1f', 1e3):>12} {warm['second_run']:>8.1f} "
                         f"{warm['second_preview']:>15.2f}")
    return timed


def time_in_one_process(run: WholeRun, iterations: int, models: str, mesh: str, device: str) -> dict:
    """``run`` (parts by label or holistic; its ``--set`` overrides kept) twice through ``api.stylize`` in
    this process with one model store. Seconds: ``first_run`` and ``second_run`` in all (mesh loading
    and export left out), ``second_preview`` to the second run's first preview; the first run's
    ``first_step`` (its first iteration) and ``first_grounding_step`` (None without one); medians of
    the later iterations: ``clip_step`` and ``grounding_step`` (None without grounding steps)."""
    import statistics

    from .api import stylize
    from .events import PreviewEvent, StageEvent, StepEvent
    from .inputs import load_input_mesh, load_part_weights
    from .models import ModelStore
    from .request import StyleRequest

    overrides = [*ZERO_THRESHOLDS, f"optim.iterations={iterations}",
                 *(run.extra[i + 1] for i, arg in enumerate(run.extra) if arg == "--set")]
    settings = settings_for(run.preset, overrides)
    target = load_input_mesh(mesh)
    parts = load_part_weights("labels", target) if run.extra[:2] == BY_LABEL else None
    store = ModelStore(models)
    every = settings.guidance.grounding_every if parts is not None else 0
    figures: dict = {}
    for label in ("first", "second"):
        ends, previews, optimizing = [], [], []
        started = time.perf_counter()

        def record(event, started=started, ends=ends, previews=previews, optimizing=optimizing):
            now = time.perf_counter() - started
            if isinstance(event, StepEvent):
                ends.append((event.step, now))
            elif isinstance(event, PreviewEvent):
                previews.append(now)
            elif isinstance(event, StageEvent) and event.name == "optimizing":
                optimizing.append(now)

        stylize(target, StyleRequest(run.prompt, holistic=parts is None, parts=parts), settings=settings,
                models=store, device=device, on_event=record)
        figures[f"{label}_run"] = time.perf_counter() - started
        if label == "first":
            steps = [(step, end - before) for (step, end), (_, before) in zip(ends[1:], ends[:-1], strict=False)]
            grounding = [seconds for step, seconds in steps if every and step % every == 0]
            clip = [seconds for step, seconds in steps if not (every and step % every == 0)]
            figures["first_step"] = ends[0][1] - optimizing[0]
            figures["first_grounding_step"] = grounding[0] if grounding else None
            figures["clip_step"] = statistics.median(clip) if clip else float("nan")
            figures["grounding_step"] = statistics.median(grounding[1:]) if len(grounding) > 1 else None
        else:
            figures["second_preview"] = previews[0] if previews else float("nan")
    return figures


def _precision(run: WholeRun) -> str:
    """``float32`` for a run whose extra arguments force every stage to float32, else ``auto``."""
    return "float32" if _without_float32(run.extra) != run.extra else "auto"


def _without_float32(extra: tuple[str, ...]) -> tuple[str, ...]:
    """A run's extra arguments less the ``--set`` pairs that force every stage to float32."""
    forced = {i for i in range(len(extra) - 1) if extra[i] == "--set" and extra[i + 1] in ALL_FLOAT32}
    return tuple(arg for i, arg in enumerate(extra) if i not in forced and i - 1 not in forced)


def time_localization(models: str, mesh: str, device: str, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds to locate the 3 parts of :data:`PART_PROMPT` on ``mesh`` with ``fast``'s settings
    (plus ``overrides``) and a fresh model store: ``total`` (loading included), ``load`` (both
    models), ``grounding_load`` (the grounding model alone), ``first_progress`` (to the first parts
    settled from the views so far: the first live preview of a located run)."""
    import torch

    from .api import locate_parts, resolve_device
    from .errors import PartNotFound
    from .inputs import load_input_mesh
    from .models import ModelStore
    from .prompt import parse_prompt

    settings = settings_for("fast", [*ZERO_THRESHOLDS, *overrides])
    target = load_input_mesh(mesh)
    dev = resolve_device(device)
    store = ModelStore(models)
    progress: list[float] = []
    started = time.perf_counter()
    with contextlib.suppress(PartNotFound):  # random weights locate nothing, found once every view is settled
        locate_parts(target, parse_prompt(PART_PROMPT).parts, settings=settings, models=store, device=dev,
                     on_progress=lambda *_: progress.append(time.perf_counter() - started))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    total = time.perf_counter() - started
    return {"total": total, "load": store.seconds_loading, "grounding_load": store.load_seconds["grounding"],
            "first_progress": progress[0] if progress else float("nan")}


def _time_run(run: WholeRun, iterations: int, models: str, mesh: str, device: str) -> dict:
    """Wall seconds of one ``stylize`` command in a child process, with its run.json's figures."""
    with tempfile.TemporaryDirectory(prefix="partstyle-bench-") as scratch:
        out_dir = os.path.join(scratch, "out")
        command = [sys.executable, "-m", "engine", "stylize", mesh, "--prompt", run.prompt, "--preset", run.preset,
                   "--iterations", str(iterations), "--models", models, "--device", device, "--out", out_dir,
                   "--quiet", *run.extra]
        for override in ZERO_THRESHOLDS:
            command += ["--set", override]
        path = os.pathsep.join(filter(None, [_engine_root(), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"'{' '.join(command)}' failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        with open(os.path.join(out_dir, "run.json"), encoding="utf-8") as fh:
            record = json.load(fh)
    keys = ("steps", "seconds_setup", "seconds_locating", "seconds_optimizing", "seconds_to_first_preview",
            "seconds_loading_models", "peak_memory_mb", "precision", "device")
    return {"wall": wall, **{key: record.get(key) for key in keys}}


def _engine_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _or_dash(value, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:{spec}}"
