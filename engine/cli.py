"""``python -m engine``: the command line over the engine's door (``engine.api``).

Subcommands: ``stylize``, ``locate``, ``batch``, ``info``, ``settings``, ``fetch-models``, ``bench``. Errors print one
line ``error: ...`` and exit 1; bad arguments exit 2; a cancelled run (Ctrl-C) exits 130 and
keeps its checkpoint for ``--resume``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from .cli_batch import add_batch_command
from .cli_eval import add_relief_evaluation
from .cli_progress import ProgressPrinter, install_interrupt, silence_library_progress
from .cli_training import add_training_commands
from .cli_vocabulary import add_vocabulary_command, warn_unknown_words
from .errors import Cancelled, InputError, MeshError, PartstyleError
from .inputs import SAMPLE_PREFIX, load_input_mesh, load_part_weights

EXIT_ERROR = 1
EXIT_CANCELLED = 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Cancelled as exc:
        hint = "; resume with the same command plus --resume" if exc.checkpoint else ""
        print(f"cancelled: {exc}{hint}", file=sys.stderr)
        return EXIT_CANCELLED
    except PartstyleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    from .config import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(prog="python -m engine", description="Partstyle: text-guided mesh stylization.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stylize", help="stylize a mesh from a text prompt")
    p.add_argument(
        "mesh", help="a mesh file (obj, ply, glb, gltf, stl, off) or sample:NAME[@FACES], e.g. sample:lamp@20k"
    )
    p.add_argument(
        "--prompt",
        required=True,
        help='per-part styles, e.g. "pottery base, gold tube, linen shade" or "shade: woven linen", '
        'or one style for the whole object, e.g. "a lamp made of gold"',
    )
    p.add_argument("--whole", action="store_true", help="read the whole prompt as one style for the whole object")
    p.add_argument(
        "--parts-from",
        metavar="SOURCE",
        help="give the parts instead of locating them: a parts.npz written by `locate`, "
        "or 'labels' for the labels a built-in sample carries",
    )
    p.add_argument(
        "--lock",
        action="append",
        default=[],
        metavar="PART",
        help="keep this part's earlier result (from --previous) while restyling the others (repeatable)",
    )
    p.add_argument("--image", action="append", default=[], metavar="PART=FILE",
                   help="a reference picture for a part the prompt names, or whole=FILE (repeatable); mixed with "
                   "the part's words by guidance.image_weight (0.5; 1: the picture only)")
    p.add_argument("--previous", metavar="DIR", help="an earlier output folder of the same mesh, for --lock")
    p.add_argument(
        "--relief",
        action="append",
        default=[],
        metavar="LEVEL|PART=LEVEL",
        help="how far surfaces may move: none, subtle (default), strong or a share of the local thickness "
        "(0..0.3); PART=LEVEL sets one part's (repeatable), e.g. --relief strong --relief tube=none",
    )
    p.add_argument("--out", required=True, help="output folder (created; earlier results are replaced only on success)")
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help=f"settings preset (default {DEFAULT_PRESET})"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same result on the same machine)")
    p.add_argument("--iterations", type=int, default=None, help="shortcut for --set optim.iterations=N")
    p.add_argument("--texture", type=int, default=None, metavar="SIZE",
                   help="also bake SIZE x SIZE base-color, displacement and normal maps on the mesh's own UV layout "
                   "(shortcut for --set texture.size=SIZE; docs/textures.md)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple GPU, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--models", default="tiny", help="tiny (built in, offline), default (real hub models) or a folder")
    p.add_argument("--allow-download", action="store_true", help="let --models default download missing models")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set views.count=3 (see `python -m engine settings`)",
    )
    p.add_argument(
        "--up-axis", choices=["y", "z"], default=None, help="the mesh's up axis (default y; Blender exports z)"
    )
    p.add_argument("--merge-vertices", action="store_true",
                   help="weld vertices at equal positions on load (STL; a UV-mapped file's seams)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoint is in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_stylize)

    p = sub.add_parser("locate", help="find named parts on a mesh and write per-vertex part weights")
    p.add_argument("mesh", help="a mesh file or sample:NAME[@FACES]")
    p.add_argument("--parts", required=True, help='the part names, e.g. "base, tube, shade"')
    p.add_argument("--out", required=True, help="output folder: parts.npz, parts.ply, preview.png")
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="tiny", help="tiny, default or a folder (as for stylize)")
    p.add_argument("--allow-download", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--up-axis", choices=["y", "z"], default=None)
    p.add_argument("--merge-vertices", action="store_true")
    p.set_defaults(handler=cmd_locate)

    p = sub.add_parser("eval-localization",
                       help="mIoU per part of the localization on the procedural samples, and unnamed parts' leakage")
    p.add_argument(
        "--models", default=None,
        help="also score this model source's grounding and segmenter (tiny, default or a folder)"
    )
    p.add_argument("--no-leakage", dest="leakage", action="store_false",
                   help="skip the leakage prompts (each is a short stylization per source)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_eval_localization, up_axis=None)

    add_batch_command(sub)
    add_training_commands(sub)
    add_relief_evaluation(sub)
    add_vocabulary_command(sub)

    p = sub.add_parser("info", help="versions, devices and which models are present")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("settings", help="list every setting with its value in a preset")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    p.set_defaults(handler=cmd_settings)

    p = sub.add_parser("fetch-models", help="download the real models into the Hugging Face cache (needs network)")
    p.add_argument("--models", default="default", help="which models to fetch (default)")
    p.set_defaults(handler=cmd_fetch_models)

    p = sub.add_parser("bench", help="print performance figures (see docs/performance.md)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (a smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--clip",
        default="vit-b-32",
        choices=["vit-b-32", "tiny"],
        help="CLIP architecture to time (random weights either way; default the real-size ViT-B/32)",
    )
    p.add_argument("--large", action="store_true",
                   help="instead: peak memory and time per iteration on meshes of 200k to 2M faces")
    p.add_argument("--max-vertices", type=int, default=None,
                   help="with --large: field.max_vertices for the runs (0: optimize every vertex)")
    p.add_argument("--faces", type=int, action="append", default=None, help="with --large: the sizes to run")
    p.add_argument("--batch", action="store_true",
                   help="instead: 8 sample assets with the local executor and with 2 one-thread Ray workers")
    p.add_argument("--bake", action="store_true", help="instead: the time to bake 1024 and 2048 px maps of 40k faces")
    p.add_argument("--detail", action="store_true",
                   help="instead: a 2k-face lamp's step on its subdivided copy against the mesh itself")
    p.add_argument("--runs", action="store_true",
                   help="instead: whole stylize commands of the presets on the 40k-face lamp with the real-size "
                   "architectures (random weights; a model folder built once)")
    p.add_argument("--memory", action="store_true",
                   help="instead: the memory a located run's tensors take by stage, per preset, next to the estimate "
                   "(real-size architectures, random weights)")
    p.add_argument("--operations", action="store_true",
                   help="instead: the operations a fast step dispatches (about one GPU kernel each), as this CPU runs "
                   "it and as a CUDA GPU with bf16 does, counted here (real-size architectures unless --clip tiny)")
    p.add_argument("--first-use", action="store_true",
                   help="instead: what a fast 3-part run's first CLIP step and first grounding step pay once in a "
                   "process (the first use of each kernel and library), and in which operations; run it alone")
    p.add_argument("--like-cuda", action="store_true",
                   help="with --memory on a CPU: bf16 autocast and the library's kernels, as a CUDA run has them")
    p.add_argument("--models-folder", default=None,
                   help="with --runs or --memory: the model folder (default: the real-size one, kept in "
                   "~/.cache/partstyle; --memory also takes 'tiny')")
    p.add_argument("--only", action="append", default=None, metavar="RUN",
                   help="with --runs or --memory: only the runs (presets) named so, else those whose name starts "
                   "with this (repeatable), e.g. 'fast'")
    p.add_argument("--warm", action="store_true",
                   help="with --runs: also each run twice in this process with its models kept loaded (as in a "
                   "Blender session): the first run's one-time costs and the second run's time")
    p.add_argument("--cut", type=int, default=None, metavar="N",
                   help="with --runs: run the long presets (faithful, text2mesh) for N iterations on any device and "
                   "estimate their full runs (default: a short cut on a CPU, the full schedule elsewhere)")
    p.set_defaults(handler=cmd_bench)
    return parser


def chosen(names: tuple[str, ...], only: list[str] | None) -> tuple[str, ...]:
    """The benchmark runs ``--only`` picks from ``names``, in their order: for each of its values the run
    named exactly, else the runs whose name starts with it; every run without ``--only``. Raises
    :class:`InputError` when it picks none."""
    if not only:
        return names
    wanted = {name for o in only for name in ((o,) if o in names else (n for n in names if n.startswith(o)))}
    picked = tuple(name for name in names if name in wanted)
    if not picked:
        raise InputError(f"--only {', '.join(repr(o) for o in only)} names no run; the runs are: "
                         f"{', '.join(repr(name) for name in names)} (a whole name, or the start of names)")
    return picked


def settings_from_args(args: argparse.Namespace):
    """The preset with --set, --seed, --iterations and --up-axis applied."""
    from .config import settings_for

    overrides = list(args.overrides)
    if getattr(args, "seed", None) is not None:
        overrides.append(f"run.seed={args.seed}")
    if getattr(args, "iterations", None) is not None:
        overrides.append(f"optim.iterations={args.iterations}")
    if getattr(args, "texture", None) is not None:
        overrides.append(f"texture.size={args.texture}")
    if args.up_axis:
        overrides.append(f"views.up_axis={args.up_axis}")
    return settings_for(getattr(args, "preset", None) or "fast", overrides)


def mesh_from_args(args: argparse.Namespace):
    """The input mesh, with load warnings printed; refuses an --out that names the mesh."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = load_input_mesh(args.mesh, merge_vertices=args.merge_vertices)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if not args.mesh.startswith(SAMPLE_PREFIX) and os.path.abspath(args.out) == os.path.abspath(args.mesh):
        raise MeshError("--out names the input mesh itself; choose an output folder.")
    return mesh


def cmd_stylize(args: argparse.Namespace) -> int:
    from .files import check_output_folder, output_lock

    settings = settings_from_args(args)
    mesh = mesh_from_args(args)
    check_output_folder(args.out)
    with output_lock(args.out):
        return _stylize_into(args, settings, mesh)


def _stylize_into(args: argparse.Namespace, settings, mesh) -> int:
    """``stylize`` once the output folder is held: the request, the run, the files."""
    from .api import stylize
    from .errors import CheckpointError
    from .events import CancelToken
    from .export import read_surface_style, write_result
    from .models import ModelStore
    from .references import image_options
    from .relief import relief_options
    from .request import StyleRequest

    request = StyleRequest(
        args.prompt,
        holistic=args.whole,
        parts=load_part_weights(args.parts_from, mesh) if args.parts_from else None,
        lock=tuple(args.lock),
        previous=read_surface_style(args.previous, mesh.num_vertices) if args.previous else None,
        images=image_options(args.image),
        **relief_options(args.relief),
    )
    warn_unknown_words(args.prompt, args.models)  # the text, in the user's word order
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    if os.path.exists(checkpoint) and not args.resume:
        raise CheckpointError(
            f"{args.out} holds the checkpoint of an interrupted run; continue it with the same command plus "
            f"--resume, or delete {checkpoint} to start anew."
        )
    store = ModelStore(args.models, allow_download=args.allow_download)
    cancel = CancelToken()
    progress = ProgressPrinter(quiet=args.quiet)
    if args.quiet:
        silence_library_progress()
    old_handler = install_interrupt(cancel)
    try:
        result = stylize(mesh, request, settings=settings, models=store, device=args.device, on_event=progress,
                         cancel=cancel, checkpoint=checkpoint, resume=args.resume)
    finally:
        progress.close()
        signal.signal(signal.SIGINT, old_handler)
    paths = write_result(result, args.out, extra_record={"preset": args.preset, "input": args.mesh})
    if os.path.exists(checkpoint):  # this run's own: another run's would have stopped this one above
        os.remove(checkpoint)
    print(f"wrote {len(paths)} files to {os.path.abspath(args.out)}: {', '.join(paths)}")
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    from .api import locate_parts
    from .events import CancelToken
    from .export import write_localization
    from .files import check_output_folder, output_lock
    from .models import ModelStore
    from .prompt import parse_prompt

    settings = settings_from_args(args)
    mesh = mesh_from_args(args)
    check_output_folder(args.out)
    names = [p.strip() for p in args.parts.replace(";", ",").split(",")]
    if any(not n for n in names):
        parse_prompt(args.parts)  # raises the prompt grammar's error naming the empty phrase
    warn_unknown_words(names, args.models)
    progress = ProgressPrinter()
    cancel = CancelToken()
    old_handler = install_interrupt(cancel)
    try:
        localization = locate_parts(
            mesh,
            names,
            settings=settings,
            device=args.device,
            on_event=progress,
            cancel=cancel,
            models=ModelStore(args.models, allow_download=args.allow_download),
        )
    finally:
        signal.signal(signal.SIGINT, old_handler)
    with output_lock(args.out):
        paths = write_localization(localization, mesh, args.out)
    counts = localization.weights.labels()
    summary = ", ".join(f"{n}: {int((counts == k).sum())} vertices (confidence {localization.part_confidence[n]:.2f})"
                        for k, n in enumerate(localization.weights.names))
    print(f"{summary}; unchanged (no part): {int((counts < 0).sum())}")
    print(f"wrote {len(paths)} files to {os.path.abspath(args.out)}: {', '.join(paths)}")
    return 0


def cmd_eval_localization(args: argparse.Namespace) -> int:
    from .cli_progress import silence_library_progress
    from .evaluate import LEAKAGE_PROMPTS, evaluate_localization
    from .models import ModelStore

    store = ModelStore(args.models) if args.models else None
    silence_library_progress()
    scores = evaluate_localization(settings_from_args(args), store=store, device=args.device, leakage=args.leakage)
    print(f"{'sample':<7} {'evidence':<12} {'mIoU':>6} {'untouched':>9}  per part")
    for score in scores:
        parts = ", ".join(f"{name} {value:.3f}" for name, value in score.iou.items()) or score.error
        untouched = "-" if score.untouched is None else f"{score.untouched:.1%}"
        print(f"{score.sample:<7} {score.source:<12} {score.miou:>6.3f} {untouched:>9}  {parts}", flush=True)
    if args.leakage:
        print("untouched: share of the unnamed parts' vertices left bit-identical by "
              + "; ".join(f"{k}: {v!r}" for k, v in LEAKAGE_PROMPTS.items()))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numpy
    import torch
    import transformers

    from . import __version__
    from .downloads import MODEL_SOURCES, format_size, models_on_disk

    print(f"partstyle {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}")
    cuda = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    print(f"devices: cpu ({torch.get_num_threads()} threads)" + "".join(f", cuda:{i} {n}" for i, n in enumerate(cuda)))
    for name in ("cpu", *(f"cuda:{i}" for i in range(len(cuda)))):
        print(f"precision: {name} {precision_note(torch.device(name))}")
    print("models: tiny (built in): available")
    on_disk = models_on_disk()
    for s in MODEL_SOURCES:
        state = f"present at {on_disk[s.role]}" if on_disk[s.role] else "missing (`python -m engine fetch-models`)"
        print(f"models: default {s.role} {s.repo_id} revision {s.revision} ({format_size(s.size_bytes)}, {s.license}): "
              f"{state}")
    return 0


def precision_note(device) -> str:
    """What ``auto`` precision runs on ``device`` and why, for ``info`` (docs/settings.md, "Arithmetic")."""
    from .devices import native_bfloat16

    if native_bfloat16(device):
        return "computes bf16 in hardware: `auto` precision runs bf16 (faster, docs/performance.md)"
    return "has no bf16 in hardware: `auto` precision runs float32 (bf16 would be emulated, slower)"


def cmd_settings(args: argparse.Namespace) -> int:
    from .config import settings_for

    for key, value in settings_for(args.preset).flat().items():
        print(f"{key} = {value}")
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from .cli_progress import DownloadBar
    from .events import CancelToken
    from .models import fetch_models

    bar, cancel = DownloadBar(), CancelToken()
    old_handler = install_interrupt(cancel)  # Ctrl-C stops within a megabyte; finished files are kept
    try:
        folders = fetch_models(args.models, on_progress=bar, cancel=cancel)
    finally:
        bar.close()
        signal.signal(signal.SIGINT, old_handler)
    for folder in folders:
        print(f"present: {folder}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bake:
        from .bench_bake import run_bake_benchmark

        silence_library_progress()
        run_bake_benchmark(device=args.device)
        return 0
    if args.memory:
        from .bench_memory import MEMORY_PRESETS, run_memory_benchmark

        silence_library_progress()
        presets = chosen(MEMORY_PRESETS, args.only)
        run_memory_benchmark(device=args.device, models=args.models_folder, like_cuda=args.like_cuda, presets=presets)
        return 0
    if args.operations:
        from .bench_launches import run_launch_benchmark

        silence_library_progress()
        run_launch_benchmark(clip=args.clip, out=sys.stdout)
        return 0
    if args.first_use:
        from .bench_first_use import run_first_use_benchmark

        silence_library_progress()
        run_first_use_benchmark(device=args.device, clip=args.clip, out=sys.stdout)
        return 0
    if args.runs:
        from .bench_runs import RUNS, run_whole_commands

        silence_library_progress()
        names = chosen(tuple(r.name for r in RUNS), args.only)
        runs = tuple(r for r in RUNS if r.name in names)
        run_whole_commands(device=args.device, models=args.models_folder, runs=runs, cut_iterations=args.cut,
                           warm=args.warm, out=sys.stdout)
        return 0
    if args.detail:
        from .bench_detail import run_detail_benchmark

        clips = ("tiny",) if args.clip == "tiny" else ("vit-b-32", "tiny")
        run_detail_benchmark(reps=2 if args.quick else 5, clips=clips, device=args.device, out=sys.stdout)
        return 0
    if args.batch:
        from .bench_batch import run_batch_benchmark

        silence_library_progress()
        run_batch_benchmark(quick=args.quick)
        return 0
    if args.large:
        from .bench_large import LARGE_FACES, LARGE_HEADER, format_large_row, large_mesh_rows
        from .config import settings_for

        limit = settings_for("preview").field.max_vertices if args.max_vertices is None else args.max_vertices
        print(f"# large meshes: preview, field.max_vertices={limit}, one process per size", flush=True)
        print(LARGE_HEADER, flush=True)
        for row in large_mesh_rows(max_vertices=limit, sizes=tuple(args.faces or LARGE_FACES)):
            print(format_large_row(row), flush=True)
        return 0
    from .bench import run_benchmarks

    run_benchmarks(quick=args.quick, device=args.device, clip=args.clip, out=sys.stdout)
    return 0
