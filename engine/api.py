"""The door: the one function family that the command line, the Blender add-on and the tests call.

    result = stylize(mesh, StyleRequest("red base, blue shade"), settings=settings_for("fast"), models="tiny")
    result = stylize(mesh, "a wooden chair")            # a plain prompt is a request with nothing else

Everything returned is in the mesh's own object frame and units.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import torch

from .compose import Composition, compose_parts, whole_object
from .config import PRECISION_STAGES, Settings, settings_for
from .devices import mps_fallback_notice, resolve_device, use_bfloat16
from .errors import Cancelled, CheckpointError
from .events import CancelToken, EventSink, NoticeEvent, PreviewEvent, StageEvent, ignore_events
from .field import BASE_COLOR
from .grounding.detector import GroundingDetector
from .grounding.locate import Localization, detector_boxes, locate, rectangle_masks, segmenter_masks
from .grounding.segmenter import BoxSegmenter
from .guidance import ClipGuidance
from .guidance.grounding_loss import GroundingPartLoss
from .memory import check_fits, peak_memory_mb, reporting_out_of_memory
from .mesh import Mesh, Normalization, repeated_positions
from .models import ModelStore
from .parts import PartWeights, part_colors
from .prompt import StylePrompt, check_part_names
from .references import WHOLE, mix_targets
from .relief import relief_bounds
from .request import StyleRequest
from .result import StyleResult
from .shape_measurements import LOCATED_PARTS, THICKNESS, ShapeMeasurements
from .texture.bake import bake_maps, bake_precision
from .texture.unwrap import with_generated_layout
from .train import Objective, StyleTrainer, SurfaceInputs
from .work_mesh import announce as announce_copy
from .work_mesh import working_copy


@reporting_out_of_memory("locating parts")
def locate_parts(
    mesh: Mesh,
    parts: list[str] | tuple[str, ...],
    *,
    settings: Settings | None = None,
    models: ModelStore | str = "tiny",
    device: str | torch.device = "auto",
    on_event: EventSink = ignore_events,
    cancel: CancelToken | None = None,
    on_progress=None,
) -> Localization:
    """Find the named parts on ``mesh`` with the grounding model (METHOD section 5.1).

    Boxes from the grounding model are refined to pixel masks by the segmenter
    (``localize.evidence=masks``, the default) or used as they are (``boxes``); the evidence is
    settled on the mesh's patches. Returns the per-vertex :class:`PartWeights` (exactly *keep*
    where no part won) with the boxes, masks and views they came from. Raises
    :class:`PartNotFound` when a part has no support in any view, :class:`Cancelled` when
    ``cancel`` is set while the model runs. ``on_progress(weights, views done, views)`` receives
    the parts settled from the views seen so far (``grounding.locate.locate``).
    """
    settings = settings or settings_for()
    dev = _run_device(device, on_event)
    store = models if isinstance(models, ModelStore) else ModelStore(models)
    names = check_part_names(parts)
    loc = settings.localize
    use_masks = loc.evidence == "masks"
    on_event(StageEvent("loading models", f"grounding{' and segmenter' if use_masks else ''} ({store.describe()})"))
    bfloat16 = use_bfloat16(loc.precision, dev)
    detector = views_detector(store.grounding(dev), loc.resolution, bfloat16=bfloat16)
    masks = (segmenter_masks(BoxSegmenter(store.segmenter(dev), bfloat16=bfloat16), loc.box_threshold, cancel)
             if use_masks else rectangle_masks(settings))
    on_event(StageEvent("locating parts", ", ".join(names)))
    vertices = torch.from_numpy(mesh.unit_vertices()).to(dev)
    detect = detector_boxes(detector, loc.box_threshold, cancel)
    return locate(vertices, torch.from_numpy(mesh.faces).to(dev), names, detect, masks, settings, on_progress)


@reporting_out_of_memory("stylizing")
def stylize(
    mesh: Mesh,
    request: StyleRequest | str,
    *,
    settings: Settings | None = None,
    models: ModelStore | str = "tiny",
    device: str | torch.device = "auto",
    on_event: EventSink = ignore_events,
    cancel: CancelToken | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
) -> StyleResult:
    """Stylize ``mesh`` so that its renders match the request's prompt.

    Args:
        mesh: the input, object frame; it is never modified. Maps asked for on a mesh without a UV
            layout are baked on one generated for it (``texture/unwrap.py``), which the result's
            ``mesh`` (a copy) carries.
        request: what to do (:class:`StyleRequest`: prompt, given parts, locks, previous result,
            base colors); a plain string is ``StyleRequest(prompt)``.
        settings: all settings (default: the default preset).
        models: a :class:`ModelStore` or a source name for one (``tiny``, ``default``, a folder).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (:func:`engine.devices.resolve_device`).
        on_event: receives progress, preview and notice events.
        cancel: a token to stop the run; raises :class:`Cancelled` (after checkpointing).
        checkpoint: path of a resumable checkpoint to keep while running.
        resume: continue from ``checkpoint``.

    Raises :class:`PromptError` / :class:`InputError` for a request that does not fit the mesh,
    before any model loads.
    """
    started = time.perf_counter()
    on_event, first_preview = _timing_first_preview(on_event, started)
    request = request if isinstance(request, StyleRequest) else StyleRequest(request)
    request.check_mesh(mesh.num_vertices)
    settings = settings or settings_for()
    uv_layout = "the mesh's own"
    if settings.texture.size and mesh.corner_uv is None:  # refused here, before any work, without xatlas
        mesh, uv_layout = with_generated_layout(mesh, settings.texture)
        on_event(NoticeEvent(f"{mesh.name} has no UV layout: the maps use one {uv_layout} (run.json: texture)"))
    if resume and not (checkpoint and os.path.isfile(checkpoint)):
        raise CheckpointError(f"no checkpoint at '{checkpoint}' to resume from; run without --resume to start anew.")
    parsed = request.prompt
    dev = _run_device(device, on_event)
    store = models if isinstance(models, ModelStore) else ModelStore(models)
    loading_before = store.seconds_loading
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)  # run.json's peak is this run's
    normalization = Normalization.fit(mesh.vertices)
    copy = working_copy(mesh, normalization, settings)
    work = mesh if copy is None else copy.mesh(mesh.name)
    if copy is not None:
        on_event(StageEvent(*announce_copy(copy, mesh, settings)))
    check_fits(work.num_vertices, settings, len(request.styled_pairs), dev, models=store.footprint(),
               locating=request.parts is None and not parsed.is_holistic, loaded=store.loaded_roles(dev))
    part_weights = work_weights = None
    seconds_locating = 0.0
    part_confidence: dict[str, float] = {}
    reused: list[str] = []  # measurements taken from an earlier run on this shape (run.json)
    if request.parts is not None:
        part_weights = request.parts.select(parsed.parts)
        work_weights = part_weights if copy is None else copy.reduce_part_weights(part_weights)
    elif not parsed.is_holistic:  # located on the lighter of the mesh and its copy
        locating = time.perf_counter()
        on_copy = work.num_vertices < mesh.num_vertices

        def show_parts(weights, done: int, count: int) -> None:  # the parts found so far, as a live preview
            shown = copy.expand_part_weights(weights) if on_copy else weights
            on_event(PreviewEvent(0, settings.optim.iterations, part_colors(shown.weights),
                                  np.zeros(mesh.num_vertices, np.float32)))

        located, part_confidence = _located_parts(
            work if on_copy else mesh, parsed.parts, settings, store, dev, on_event, cancel, reused,
            on_progress=show_parts if settings.run.preview_every else None)  # no settling unseen
        part_weights = copy.expand_part_weights(located) if on_copy else located
        work_weights = located if on_copy or copy is None else copy.reduce_part_weights(located)
        seconds_locating = time.perf_counter() - locating
    outward, inward = _relief_bounds(mesh, request, settings, store.measurements, on_event, reused, dev)
    carry, carry_bounds = (None, lambda bounds: bounds) if copy is None else (copy.carry, copy.carry_bounds)
    composition = _composition(work.num_vertices, request, work_weights, normalization, carry=carry)
    composition = composition.with_relief(carry_bounds(outward), carry_bounds(inward))

    on_event(StageEvent("loading models", store.describe()))
    guidance = ClipGuidance(store.clip(dev), settings.guidance)
    on_event(StageEvent("encoding text", parsed.full_text()))
    styled = request.styled_pairs
    text_target, part_targets = _targets(guidance, request, settings, on_event)
    objective = Objective(
        text=text_target,
        composition=composition,
        part_names=tuple(pair.part for pair in styled),
        part_texts=part_targets,
        grounding=_grounding_loss(store, dev, styled, settings) if styled else None,
    )
    normals = work.vertex_normals if copy is None else copy.surface_normals(mesh, work)
    surface = SurfaceInputs.of(normalization.to_unit(work.vertices), normals, work.faces, dev)
    fingerprint = run_fingerprint(mesh, parsed, settings, store.describe(), composition,
                                  images=tuple((part, ref.sha256) for part, ref in request.images))
    trainer = StyleTrainer(surface, objective, guidance, settings, fingerprint=fingerprint)
    ready = time.perf_counter()
    trained = trainer.run(
        on_event=on_event, cancel=cancel, checkpoint_path=checkpoint, resume=resume,
        to_object_units=normalization.scale, preview_index=None if copy is None else torch.from_numpy(copy.cluster),
    )
    colors, displacement = trained.colors, trained.displacement
    full = composition
    if copy is not None:  # the field at every original vertex, with the original's own composition
        on_event(StageEvent("transferring", f"the result to all {mesh.num_vertices} vertices"))
        full = _composition(mesh.num_vertices, request, part_weights, normalization).with_relief(outward, inward)
        colors, displacement = trainer.evaluate(
            torch.from_numpy(normalization.to_unit(mesh.vertices)).to(dev), full.to(dev))
    displacement = normalization.length_to_object(displacement.numpy())
    maps = None
    if settings.texture.size:
        size = settings.texture.size
        on_event(StageEvent("baking maps", f"{size} x {size} texels on the mesh's UV layout"))
        try:
            maps = bake_maps(trainer.evaluate_parts, mesh, normalization, full, displacement, settings.texture,
                             device=dev, precision=bake_precision(settings, dev), cancel=cancel)
        except Cancelled:  # the optimization is done: keep it, so --resume goes straight to the bake
            saved = trainer.save_checkpoint(checkpoint) if checkpoint else None
            raise Cancelled("cancelled while baking the maps, after the optimization", checkpoint=saved) from None
    record = {
        "device": str(dev),
        "precision": {name: "bfloat16" if use_bfloat16(getattr(settings, name).precision, dev) else "float32"
                      for name in PRECISION_STAGES},
        "models": store.describe(),
        "model_sources": store.record(),  # each model used: hub repo and pinned revision, or tiny / folder
        "reference_images": {part: ref.record() for part, ref in request.images},  # by content hash
        "steps": trained.steps,
        "skipped_steps": trained.skipped,
        "seconds_setup": round(ready - started, 3),
        "seconds_locating": round(seconds_locating, 3),
        "seconds_optimizing": round(trained.seconds, 3),
        "seconds_to_first_preview": None if not first_preview else round(first_preview[0], 3),
        "seconds_loading_models": round(store.seconds_loading - loading_before, 3),
        "peak_memory_mb": round(peak_memory_mb(dev), 1),
        "normalization": {"center": normalization.center.tolist(), "scale": normalization.scale},
        "optimized_vertices": work.num_vertices,
        "optimized_on": "mesh" if copy is None else copy.kind,
        "reused_from_earlier_run": reused,
        "relief": dict(zip(["whole object"] if parsed.is_holistic else [pair.part for pair in styled],
                           request.relief_fractions, strict=True)),
    }
    if maps is not None:
        record["texture"] = {**maps.record(), "uv_layout": uv_layout}
    if part_confidence:
        record["part_confidence"] = {name: round(value, 4) for name, value in part_confidence.items()}
    return StyleResult(
        mesh=mesh,
        prompt=parsed,
        colors_srgb=colors.numpy(),
        displacement=displacement,
        settings=settings,
        parts=part_weights,
        history=trained.history,
        record=record,
        references=request.images,
        maps=maps,
    )


def _timing_first_preview(on_event: EventSink, started: float) -> tuple[EventSink, list[float]]:
    """``on_event`` passing every event on, and the list it fills with the seconds from ``started``
    to the first :class:`PreviewEvent` (what an artist waits for before seeing anything)."""
    first: list[float] = []

    def forward(event) -> None:
        if not first and isinstance(event, PreviewEvent):
            first.append(time.perf_counter() - started)
        on_event(event)

    return forward, first


def _located_parts(mesh: Mesh, names: tuple[str, ...], settings: Settings, store: ModelStore, device: torch.device,
                   on_event: EventSink, cancel: CancelToken | None, reused: list[str], *, on_progress=None):
    """The parts ``names`` located on ``mesh`` (:func:`locate_parts`): (their :class:`PartWeights`,
    each part's confidence). Located once per shape, names, localization settings and device in the
    store's session: a later run with the same ones (other styles, say) takes them from
    ``store.measurements``, announcing them with one preview (``on_progress``) instead of locating,
    and says so in ``reused``."""
    depends_on = repr((tuple(names), settings.localize, settings.views, settings.render, str(device)))
    kept = store.measurements.known(LOCATED_PARTS, mesh, depends_on)
    if kept is not None:
        reused.append(LOCATED_PARTS)
        on_event(StageEvent("locating parts", f"{', '.join(names)}: as located on this shape earlier"))
        if on_progress is not None:
            on_progress(kept[0], 1, 1)
        return kept[0], dict(kept[1])

    def locate() -> tuple[PartWeights, dict[str, float]]:
        found = locate_parts(mesh, names, settings=settings, models=store, device=device, on_event=on_event,
                             cancel=cancel, on_progress=on_progress)
        for array in (found.weights.weights, found.weights.confidence):
            array.setflags(write=False)  # shared by the runs that reuse them
        return found.weights, dict(found.part_confidence)

    return store.measurements.measured(LOCATED_PARTS, mesh, locate, depends_on)


def _relief_bounds(mesh: Mesh, request: StyleRequest, settings: Settings, measurements: ShapeMeasurements,
                   on_event: EventSink, reused: list[str], device: torch.device):
    """[V, P] outward and inward displacement bounds of each styled part (unit frame); zeros, without
    measuring anything, when no part may move. The thickness is measured once per shape
    (``measurements`` keeps it for the next run on the same shape; ``reused`` says when it did), its
    rays traced on the run's ``device`` when that is a CUDA GPU."""
    fractions = request.relief_fractions
    if not any(fractions) or settings.field.max_displacement <= 0:
        zeros = np.zeros((mesh.num_vertices, len(fractions)), np.float32)
        return zeros, zeros
    if repeated := repeated_positions(mesh.vertices):  # each copy moves along its own face's normal
        on_event(NoticeEvent(
            f"{mesh.name}: {repeated} of its {mesh.num_vertices} vertices repeat another's position (an STL stores "
            "every triangle apart; a UV-mapped file is split at its seams), so relief moves the copies apart and "
            "opens cracks there. Weld them when loading: --merge-vertices (load_mesh(..., merge_vertices=True)), "
            "or use --relief none."))
    if measurements.known(THICKNESS, mesh) is None:
        on_event(StageEvent("measuring thickness", f"{mesh.num_vertices} vertices, for relief bounds"))
    else:
        reused.append(THICKNESS)
    tracer = device if device.type == "cuda" else None  # a GPU traces the rays; else the run's CPU threads share them
    thickness = measurements.measured(
        THICKNESS, mesh, lambda: mesh.local_thickness(workers=torch.get_num_threads(), device=tracer))
    return relief_bounds(thickness, fractions, settings.field.max_displacement)


def _composition(num_vertices: int, request: StyleRequest, part_weights, normalization: Normalization, *,
                 carry=None) -> Composition:
    """The blend of per-part outputs for this request over ``num_vertices`` vertices (holistic: the
    whole mesh is one part). ``carry`` maps the request's per-vertex arrays onto a working copy."""
    if request.prompt.is_holistic:
        return whole_object(num_vertices)
    keep = carry or (lambda values: values)
    if request.base_colors is None:
        original = np.full((num_vertices, 3), BASE_COLOR, np.float32)
    else:
        original = keep(request.base_colors)
    previous = request.previous
    return compose_parts(
        part_weights,
        original_colors=original,
        locked=request.lock,
        previous_colors=None if previous is None else keep(previous.colors_srgb),
        previous_displacement=None if previous is None else keep(previous.displacement) / normalization.scale,
    )


def views_detector(bundle, resolution: int, *, bfloat16: bool = False) -> GroundingDetector:
    """A detector for views rendered at ``resolution`` px: they are shown to the model at its own
    input size (the bundle's shortest edge: 800 for Grounding DINO, 256 for the tiny one), or at
    ``resolution`` where that is smaller - never enlarged, and never larger than the model learned.
    ``bfloat16``: the model runs under bf16 autocast."""
    return GroundingDetector(bundle, size=min(int(resolution), int(bundle.size)), bfloat16=bfloat16)


def _grounding_loss(store: ModelStore, device: torch.device, styled, settings: Settings):
    """The grounding-space part loss when the schedule uses it, else None (no model is loaded)."""
    if settings.guidance.grounding_every <= 0:
        return None
    detector = views_detector(store.grounding(device), settings.guidance.grounding_resolution,
                              bfloat16=use_bfloat16(settings.guidance.precision, device))
    return GroundingPartLoss(detector, [p.part for p in styled], [p.phrase for p in styled],
                             threshold=settings.guidance.grounding_threshold)


def _run_device(device: str | torch.device, on_event: EventSink) -> torch.device:
    """The run's device (:func:`resolve_device`); on an Apple GPU without the CPU fallback, a notice."""
    dev = resolve_device(device)
    if (notice := mps_fallback_notice(dev)) is not None:
        on_event(NoticeEvent(notice))
    return dev


def _targets(guidance: ClipGuidance, request: StyleRequest, settings: Settings, on_event: EventSink):
    """The whole prompt's [D] target and the styled parts' [P, D] ones (None when holistic): their
    words' embeddings, mixed with their reference images' where given (engine/references.py)."""
    parsed, styled = request.prompt, request.styled_pairs
    text = guidance.encode_text([parsed.full_text()])[0]
    parts = guidance.encode_text([pair.phrase for pair in styled]) if styled else None
    if not request.images:
        return text, parts
    on_event(StageEvent("encoding images", ", ".join(part for part, _ in request.images)))
    g = settings.guidance
    names = [pair.part for pair in styled]
    for part, ref in request.images:
        image = guidance.encode_reference(ref.pixels, crops=g.image_crops, seed=settings.run.seed)
        if part == WHOLE:
            text = mix_targets(text, image, g.image_weight)
        else:
            k = names.index(part)
            parts = parts.clone()
            parts[k] = mix_targets(parts[k], image, g.image_weight)
    return text, parts


def run_fingerprint(
    mesh: Mesh, prompt: StylePrompt, settings: Settings, model_name: str, composition: Composition,
    *, images: tuple[tuple[str, str], ...] = (),
) -> str:
    """A hash of everything that determines a run, so a checkpoint resumes only its own run;
    ``images`` are the reference images' ``(part, sha256)``.

    ``optim.iterations`` is left out: a resumed run may be extended; so is ``texture.*``: maps are
    baked after the optimization, which they do not change.
    """
    flat = {key: value for key, value in settings.flat().items() if not key.startswith("texture.")}
    flat.pop("optim.iterations")
    h = hashlib.sha256()
    for array in (mesh.vertices, mesh.faces, *(getattr(composition, name).numpy() for name in
                                                 ("weights", "fixed_colors", "outward", "inward"))):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(json.dumps([repr(prompt), flat, model_name, *([list(images)] if images else [])],
                        sort_keys=True).encode())
    return h.hexdigest()
