"""``python -m engine bench``: performance figures, printed (docs/performance.md records them).

1. Rendering alone: 5 views of the sample lamp at 5k-320k faces, 224 and 512 px, forward and
   backward (gradients to vertex positions and colors).
2. One optimization iteration on the lamp at ~40k faces, 5 views at 224 px, with the real-size
   CLIP ViT-B/32 architecture (random weights: no download; cost does not depend on the weights),
   split into its phases, next to a whole ``StyleTrainer.step()`` measured in the same run; the
   ratio of the whole iteration to the guidance forward+backward alone tells how much the
   rest of the pipeline adds to the unavoidable CLIP cost.
3. Part prompts (3 parts) with ``fast`` and ``faithful``: a CLIP step and a grounding step (the
   real-size Grounding DINO tiny architecture), averaged over the preset's schedule, next to a
   holistic iteration of the same preset measured in the same run.
4. Localization: 10 views of the lamp rendered, grounded (the real-size Grounding DINO tiny), refined to
   masks (the real-size SAM 2 hiera-tiny) and settled on the mesh's patches, at 512 and 800 px, phase
   by phase, with the box-only path beside it.

Figures are medians over repetitions after a warm-up. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np
import torch

from .api import resolve_device
from .bench_operations import operations_of
from .cameras import sample_views
from .compose import compose_parts, whole_object
from .config import ALL_FLOAT32, settings_for
from .devices import use_bfloat16
from .geometry.intersections import intersecting_pairs
from .geometry.patches import segment_patches
from .geometry.thickness import local_thickness
from .grounding.detector import GroundingDetector
from .grounding.locate import detector_boxes, rectangle_masks, render_views, segmenter_masks, settle_masks
from .grounding.segmenter import BoxSegmenter
from .guidance import ClipGuidance
from .guidance.grounding_loss import GroundingPartLoss
from .memory import peak_memory_mb
from .model_kernels import BF16_COPIES_ON_CUDA, ON_EVERY_DEVICE, keep_bfloat16_weights
from .models import (
    CLIP_MEAN,
    CLIP_STD,
    GROUNDING_MEAN,
    GROUNDING_STD,
    SEGMENTER_SIZE,
    TINY_SEGMENTER_SIZE,
    ClipBundle,
    GroundingBundle,
    SegmenterBundle,
    frozen_on_device,
)
from .parts import PartWeights
from .prompt import parse_prompt
from .render import Renderer
from .samples import sample_mesh
from .tiny_models import build_tiny_grounding_dino, build_tiny_segmenter, real_size_grounding_config, segmenter_config
from .train import Objective, StyleTrainer, SurfaceInputs, seeded_generator

PHASES = ("field_forward", "render_forward", "guidance_forward", "guidance_backward",
          "render_backward", "field_backward", "optimizer")
LOCATE_VIEWS = 10
LOCATE_PHASES = ("render", "detect", "segment", "patches", "settle")
RENDER_FACES = (5_000, 20_000, 80_000, 320_000)
RENDER_SIZES = (224, 512)
ITERATION_FACES = 40_000


def run_benchmarks(
    *, quick: bool = False, device: str = "auto", clip: str = "vit-b-32", out: TextIO = sys.stdout
) -> dict:
    """Run every benchmark, print a report to ``out`` and return the figures as a dict.

    ``clip`` picks the architectures timed: ``vit-b-32`` (the real-size CLIP and Grounding DINO
    tiny, random weights) or ``tiny`` (the built-in test models, for a smoke run).
    """
    dev = resolve_device(device)
    reps = 2 if quick else 5
    figures: dict = {"device": str(dev), "threads": torch.get_num_threads()}
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731 - the CLI's printer
    say(f"device {dev}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")

    say("\n# rendering: sample lamp, 5 views, forward + backward (ms, median)")
    say(f"{'faces':>8} {'px':>5} {'forward':>9} {'backward':>9} {'total':>9}")
    figures["render"] = []
    for faces in RENDER_FACES[:2] if quick else RENDER_FACES:
        for size in RENDER_SIZES:
            fwd, bwd = render_timing(faces, size, dev, reps)
            figures["render"].append({"faces": faces, "size": size, "forward_ms": fwd, "backward_ms": bwd})
            say(f"{faces:>8} {size:>5} {fwd:>9.1f} {bwd:>9.1f} {fwd + bwd:>9.1f}")
    figures["peak_rss_mb_after_render"] = peak_memory_mb(torch.device("cpu"))
    say(f"peak process memory so far: {figures['peak_rss_mb_after_render']:.0f} MB")

    models = BenchmarkModels(clip, dev)
    faces = 20_000 if quick else ITERATION_FACES
    variants = [("fast", ())] if quick else [("text2mesh", ()), ("fast", ()), ("fast", ALL_FLOAT32)]
    figures["iteration"] = {}
    for preset, overrides in variants:
        result = iteration_timing(preset, dev, reps, models=models, faces=faces, overrides=overrides)
        label = preset + "".join(f" --set {o}" for o in overrides)
        figures["iteration"][label] = result
        say(
            f"\n# one iteration, preset '{label}': lamp {result['faces']} faces, {result['views']} views at 224 px, "
            f"{result['images']} CLIP images ({clip}), ms (median)"
        )
        for phase in PHASES:
            say(f"  {phase:<18} {result[phase]:>9.1f}")
        say(f"  {'sum of phases':<18} {result['sum_of_phases']:>9.1f}")
        say(f"  {'whole step()':<18} {result['whole_step']:>9.1f}")
        say(f"  ratio whole step / guidance forward+backward = {result['ratio']:.3f}")
        say(f"  operations a step (about one GPU kernel each) = {result['operations']}")

    say(
        f"\n# part prompts: 'pottery base, gold tube, linen shade' on the lamp ({faces} faces), parts given by "
        "label; ms per iteration (median), averaged over the grounding schedule"
    )
    say(
        f"  {'preset':<10} {'holistic':>9} {'CLIP step':>10} {'grounding':>10} {'every':>6} {'average':>9} {'ratio':>6}"
    )
    figures["parts"] = {}
    for preset in ("fast",) if quick else ("fast", "faithful"):
        result = parts_timing(preset, dev, max(1, reps - 2), models=models, faces=faces)
        figures["parts"][preset] = result
        say(
            f"  {preset:<10} {result['holistic_step']:>9.1f} {result['clip_step']:>10.1f} "
            f"{result['grounding_step']:>10.1f} {result['grounding_every']:>6} {result['average']:>9.1f} "
            f"{result['ratio']:>6.2f}"
        )
        say(f"  {'':<10} operations a CLIP step {result['clip_step_operations']}, "
            f"a grounding step {result['grounding_step_operations']}")

    say(f"\n# localization: {LOCATE_VIEWS} views of the lamp (20k faces), 3 parts, seconds per phase")
    say(f"  {'px':>4} " + " ".join(f"{p:>8}" for p in LOCATE_PHASES) + f" {'masks':>8} {'boxes':>8}")
    figures["localization"] = {}
    for size in (256,) if quick else (512, 800):
        phases = localization_timing(size, dev, models=models)
        figures["localization"][size] = phases
        say(f"  {size:>4} " + " ".join(f"{phases[p]:>8.2f}" for p in LOCATE_PHASES)
            + f" {phases['masks']:>8.2f} {phases['boxes']:>8.2f}")

    say("\n# relief's mesh analysis (CPU, numpy): local thickness and the self-intersection check (s), on one "
        "thread and on the run's")
    figures["geometry"] = {}
    for count in (20_000,) if quick else (20_000, 100_000):
        figures["geometry"][count] = {}
        for workers in sorted({1, torch.get_num_threads()}):
            thickness, check = geometry_timing(count, workers)
            figures["geometry"][count][workers] = {"thickness_s": thickness, "intersections_s": check}
            say(f"  lamp {count:>7} faces  {workers:>2} threads  thickness {thickness:>6.2f}  "
                f"self-intersections {check:>6.2f}")
        if dev.type == "cuda":  # what a run on this GPU measures instead: the rays traced there
            first, again = device_thickness_timing(count, dev)
            figures["geometry"][count]["device_thickness_s"] = {"first": first, "again": again}
            say(f"  lamp {count:>7} faces  traced on {dev}: thickness {first:>6.2f} first, {again:>6.2f} again")

    figures["peak_rss_mb"] = peak_memory_mb(torch.device("cpu"))
    say(f"\npeak process memory: {figures['peak_rss_mb']:.0f} MB")
    if dev.type == "cuda":
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        say(f"peak CUDA memory: {figures['peak_cuda_mb']:.0f} MB")
    return figures


def render_timing(faces: int, size: int, device: torch.device, reps: int) -> tuple[float, float]:
    """Median (forward ms, backward ms) for 5 views of the lamp with ``faces`` faces at ``size`` px."""
    settings = settings_for("text2mesh")
    mesh = sample_mesh("lamp", faces)
    vertices = torch.from_numpy(mesh.unit_vertices()).to(device)
    face_tensor = torch.from_numpy(mesh.faces).to(device)
    renderer = Renderer(settings.render)
    cameras = sample_views(5, settings.views, settings.render, torch.Generator().manual_seed(0), device=device)
    weights = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    forward, backward = [], []
    for _ in range(reps + 1):
        v = vertices.clone().requires_grad_(True)
        colors = torch.full_like(v, 0.5).requires_grad_(True)
        t0 = _now(device)
        image = renderer.render(v, face_tensor, cameras, colors=colors, resolution=size).color
        t1 = _now(device)
        (image * weights).sum().backward()
        t2 = _now(device)
        forward.append(t1 - t0)
        backward.append(t2 - t1)
    return statistics.median(forward[1:]) * 1e3, statistics.median(backward[1:]) * 1e3


def with_relief(composition):
    """``composition`` with uniform relief bounds, so an iteration does what a run with relief does
    (the geometry render and the smoothness term); the timing does not depend on their values."""
    bounds = np.full(tuple(composition.weights.shape), 0.01, np.float32)
    return composition.with_relief(bounds, bounds)


def lamp_surface(faces: int, device: torch.device) -> tuple:
    """(mesh, SurfaceInputs) of the sample lamp with ``faces`` faces, unit frame."""
    mesh = sample_mesh("lamp", faces)
    surface = SurfaceInputs.of(mesh.unit_vertices(), mesh.vertex_normals, mesh.faces, device)
    return mesh, surface


def iteration_timing(
    preset: str,
    device: torch.device,
    reps: int,
    *,
    models: BenchmarkModels,
    faces: int,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Phase split of one holistic iteration and the whole ``StyleTrainer.step()``, medians in ms."""
    settings = settings_for(preset, list(overrides))
    guidance = ClipGuidance(models.clip, settings.guidance)
    mesh, surface = lamp_surface(faces, device)
    text = guidance.encode_text(["a lamp made of gold"])[0]
    trainer = StyleTrainer(surface, Objective(text, with_relief(whole_object(mesh.num_vertices))), guidance, settings)
    phases: dict[str, list[float]] = {}
    sampling = seeded_generator(0, "bench")
    for rep in range(reps + 1):
        record = (lambda name, seconds: phases.setdefault(name, []).append(seconds)) if rep else (lambda *_: None)
        trainer.optimizer.zero_grad(set_to_none=True)
        colors, displacement = _timed(device, record, "field_forward", lambda: trainer.outputs())
        leaf_colors = colors.detach().requires_grad_(True)
        leaf_displacement = displacement.detach().requires_grad_(True)

        def render():
            positions = surface.vertices + leaf_displacement.unsqueeze(-1) * surface.normals
            cams = sample_views(settings.views.count, settings.views, settings.render, sampling, device=device)
            return trainer.renderer.render(
                positions, surface.faces, cams, colors=leaf_colors, geometry=settings.guidance.geometry_crops > 0
            )

        out = _timed(device, record, "render_forward", render)
        color_in = out.color.detach().requires_grad_(True)
        geometry_in = out.geometry.detach().requires_grad_(True) if out.geometry is not None else None
        loss = _timed(
            device, record, "guidance_forward", lambda: guidance.losses(color_in, geometry_in, text, sampling)["total"]
        )
        _timed(device, record, "guidance_backward", loss.backward)
        grads = [(out.color, color_in.grad)] + ([(out.geometry, geometry_in.grad)] if geometry_in is not None else [])
        _timed(
            device,
            record,
            "render_backward",
            lambda: torch.autograd.backward([g[0] for g in grads], [g[1] for g in grads]),
        )
        _timed(
            device,
            record,
            "field_backward",
            lambda: torch.autograd.backward([colors, displacement], [leaf_colors.grad, leaf_displacement.grad]),
        )
        _timed(device, record, "optimizer", trainer.optimizer.step)
        _timed(device, record, "whole_step", trainer.step)
    result = {name: statistics.median(values) * 1e3 for name, values in phases.items()}
    result["operations"] = operations_of(trainer.step)  # after the timing: counting slows the step
    g = settings.guidance
    images = settings.views.count * (g.global_augmentations + g.local_crops + g.geometry_crops)
    result["sum_of_phases"] = sum(result[phase] for phase in PHASES)
    result["ratio"] = result["whole_step"] / (result["guidance_forward"] + result["guidance_backward"])
    result.update(faces=mesh.num_faces, views=settings.views.count, images=images)
    return result


def part_trainers(preset: str, device: torch.device, *, clip: ClipBundle, grounding: GroundingBundle, faces: int,
                  overrides: tuple[str, ...] = ()) -> tuple[StyleTrainer, StyleTrainer]:
    """Trainers of ``preset`` on the lamp with ``faces`` faces: (3 parts by label with grounding steps,
    holistic), both with relief, as a run has them."""
    settings = settings_for(preset, list(overrides))
    guidance = ClipGuidance(clip, settings.guidance)
    mesh, surface = lamp_surface(faces, device)
    prompt = parse_prompt("pottery base, gold tube, linen shade")
    weights = PartWeights.from_labels(mesh.labels, mesh.label_names).select(prompt.parts)
    composition = with_relief(compose_parts(weights, original_colors=np.full((mesh.num_vertices, 3), 0.5, np.float32)))
    detector = GroundingDetector(grounding, size=settings.guidance.grounding_resolution,
                                 bfloat16=use_bfloat16(settings.guidance.precision, device))
    objective = Objective(
        text=guidance.encode_text([prompt.full_text()])[0],
        composition=composition,
        part_names=prompt.parts,
        part_texts=guidance.encode_text([p.phrase for p in prompt.pairs]),
        grounding=GroundingPartLoss(detector, list(prompt.parts), [p.phrase for p in prompt.pairs]),
    )
    holistic_objective = Objective(objective.text, with_relief(whole_object(mesh.num_vertices)))
    return (StyleTrainer(surface, objective, guidance, settings),
            StyleTrainer(surface, holistic_objective, guidance, settings))


def parts_timing(preset: str, device: torch.device, reps: int, *, models: BenchmarkModels, faces: int) -> dict:
    """A 3-part iteration of ``preset`` (CLIP steps and grounding steps) next to a holistic one, ms."""
    parts, holistic = part_trainers(preset, device, clip=models.clip, grounding=models.grounding, faces=faces)
    every = max(parts.settings.guidance.grounding_every, 1)
    clip_steps, grounding_steps, holistic_steps = [], [], []
    for rep in range(reps + 1):
        parts.step_index = every * rep  # the coming iteration is a CLIP step (unless every == 1)
        clip = seconds_of(device, parts.step) if every > 1 else float("nan")
        parts.step_index = every * (rep + 1) - 1  # the coming iteration is a grounding step
        ground = seconds_of(device, parts.step)
        whole = seconds_of(device, holistic.step)
        if rep:
            clip_steps.append(clip)
            grounding_steps.append(ground)
            holistic_steps.append(whole)
    parts.step_index = 0  # a CLIP step (unless every == 1), then a grounding step
    clip_operations = operations_of(parts.step) if every > 1 else 0
    parts.step_index = every - 1
    grounding_operations = operations_of(parts.step)
    clip_ms = statistics.median(clip_steps) * 1e3 if every > 1 else 0.0
    ground_ms = statistics.median(grounding_steps) * 1e3
    average = ((every - 1) * clip_ms + ground_ms) / every
    holistic_ms = statistics.median(holistic_steps) * 1e3
    return {
        "holistic_step": holistic_ms,
        "clip_step": clip_ms,
        "grounding_step": ground_ms,
        "grounding_every": every,
        "average": average,
        "ratio": average / holistic_ms,
        "clip_step_operations": clip_operations,
        "grounding_step_operations": grounding_operations,
    }


def geometry_timing(faces: int, workers: int) -> tuple[float, float]:
    """Seconds for the lamp's local thickness (what a run with relief measures once per mesh) and for
    its self-intersection check (what eval-relief runs twice per case), on ``workers`` threads."""
    mesh = sample_mesh("lamp", faces)
    vertices = mesh.unit_vertices()
    started = time.perf_counter()
    local_thickness(vertices, mesh.faces, mesh.vertex_normals, workers=workers)
    middle = time.perf_counter()
    intersecting_pairs(vertices, mesh.faces, workers=workers)
    return middle - started, time.perf_counter() - middle


def device_thickness_timing(faces: int, device: torch.device) -> tuple[float, float]:
    """Seconds for the lamp's local thickness with its rays traced by torch on ``device``, as a run
    there measures it: the first time in this process (which pays its kernels' first use, as a fresh
    command does) and again."""
    mesh = sample_mesh("lamp", faces)
    vertices = mesh.unit_vertices()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        local_thickness(vertices, mesh.faces, mesh.vertex_normals, device=device)  # returns on the host: waited for
        seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]


def localization_timing(size: int, device: torch.device, *, models: BenchmarkModels) -> dict[str, float]:
    """Seconds per phase to locate 3 parts on the 20k-face lamp from ``LOCATE_VIEWS`` views at ``size``
    px (:data:`LOCATE_PHASES`), and the totals of the mask path (all phases) and the box-only path
    (no segmenter)."""
    settings = settings_for(
        "fast", [f"localize.views={LOCATE_VIEWS}", f"localize.resolution={size}", "localize.box_threshold=0"]
    )
    _mesh, surface = lamp_surface(20_000, device)
    bfloat16 = use_bfloat16(settings.localize.precision, device)
    detect = detector_boxes(GroundingDetector(models.grounding, size=size, bfloat16=bfloat16), 0.0)
    segment = segmenter_masks(BoxSegmenter(models.segmenter, bfloat16=bfloat16), 0.0)
    vertices, faces = surface.vertices.cpu().numpy(), surface.faces.cpu().numpy()
    parts = ("base", "tube", "shade")
    times: dict[str, float] = {}
    record = times.__setitem__
    views = _timed(device, record, "render", lambda: render_views(surface.vertices, surface.faces, settings))
    boxes = _timed(device, record, "detect", lambda: detect(views.images, list(parts)))
    masks = _timed(device, record, "segment", lambda: segment(views.images, boxes))
    patches = _timed(device, record, "patches", lambda: segment_patches(vertices, faces))
    _timed(device, record, "settle", lambda: settle_masks(views, masks, vertices, faces, parts, settings, patches))
    times["masks"] = sum(times[p] for p in LOCATE_PHASES)
    rectangles = rectangle_masks(settings)
    start = _now(device)
    settle_masks(views, rectangles(views.images, boxes), vertices, faces, parts, settings, patches)
    times["boxes"] = times["masks"] - times["segment"] - times["settle"] + _now(device) - start
    return times


class BenchmarkModels:
    """The CLIP, Grounding DINO and segmenter bundles a benchmark times (random weights; built once)."""

    def __init__(self, name: str, device: torch.device):
        self.clip = benchmark_clip(name, device)
        self.grounding = benchmark_grounding(name, device)
        self.segmenter = benchmark_segmenter(name, device)


def benchmark_clip(name: str, device: torch.device, *, like_cuda: bool = False) -> ClipBundle:
    """The real-size ViT-B/32 CLIP architecture with random weights (``vit-b-32``) or ``tiny``; with
    ``like_cuda``, as a CUDA GPU with bf16 has it (:func:`like_cuda_gpu`) wherever it is."""
    from transformers import CLIPConfig, CLIPModel

    from .tiny_models import build_tiny_clip

    tiny_model, tokenizer = build_tiny_clip()
    if name == "tiny":
        model = tiny_model
    elif name == "vit-b-32":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIPModel(CLIPConfig()).eval()  # the defaults are ViT-B/32's architecture
    else:
        raise ValueError(f"unknown benchmark CLIP '{name}'; use vit-b-32 or tiny")
    model = like_cuda_gpu(model, device, "clip") if like_cuda else frozen_on_device(model, device, "clip")
    return ClipBundle(model, tokenizer, model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD, name)


def benchmark_grounding(name: str, device: torch.device, *, like_cuda: bool = False) -> GroundingBundle:
    """The real-size Grounding DINO tiny architecture with random weights (``vit-b-32``) or ``tiny``;
    ``like_cuda`` as for :func:`benchmark_clip`."""
    from transformers import GroundingDinoForObjectDetection

    tiny_model, tokenizer = build_tiny_grounding_dino()
    if name == "tiny":
        model, size, max_size = tiny_model, 256, 427
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = GroundingDinoForObjectDetection(real_size_grounding_config()).eval()
        size, max_size = 800, 1333
    model = (like_cuda_gpu(model, device, "grounding") if like_cuda
             else frozen_on_device(model, device, "grounding"))  # as a run prepares it (kernels included)
    return GroundingBundle(model, tokenizer, size, max_size, GROUNDING_MEAN, GROUNDING_STD, name)


def like_cuda_gpu(model: torch.nn.Module, device: torch.device, role: str) -> torch.nn.Module:
    """``model`` (of ``role``) frozen on ``device`` as the model store prepares it for a CUDA GPU with
    bf16: the library's kernels and the bf16 weight copies, so a CPU can count what such a GPU dispatches."""
    model = frozen_on_device(model, device, role, device_kernels=False)
    keep_bfloat16_weights(model, BF16_COPIES_ON_CUDA.get(role, ()))  # none for the segmenter
    if role in ON_EVERY_DEVICE:
        ON_EVERY_DEVICE[role](model)  # after the copies, as the adapters do
    return model


def benchmark_segmenter(name: str, device: torch.device) -> SegmenterBundle:
    """The real-size SAM 2 hiera-tiny architecture at 1024 px with random weights (``vit-b-32``), or
    the tiny segmenter's (``tiny``)."""
    from transformers import Sam2Model

    if name == "tiny":
        model, size = build_tiny_segmenter(), TINY_SEGMENTER_SIZE
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Sam2Model(segmenter_config()).eval()
        size = SEGMENTER_SIZE
    return SegmenterBundle(frozen_on_device(model, device, "segmenter"), size, GROUNDING_MEAN, GROUNDING_STD, name)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def seconds_of(device: torch.device, fn: Callable) -> float:
    start = _now(device)
    fn()
    return _now(device) - start


def _timed(device: torch.device, record: Callable[[str, float], None], name: str, fn: Callable):
    start = _now(device)
    value = fn()
    record(name, _now(device) - start)
    return value
