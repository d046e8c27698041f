"""The door: the one function family that the command line, the Blender add-on and the tests call.

    result = stylize(mesh, "a wooden chair", settings=settings_for("fast"), models="tiny")

Everything returned is in the mesh's own object frame and units.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .colors import srgb_to_linear
from .compose import Composition, compose_parts, whole_object
from .config import Settings, settings_for
from .errors import DeviceError, PromptError
from .events import CancelToken, EventSink, StageEvent, ignore_events
from .field import BASE_COLOR
from .grounding.detector import GroundingDetector
from .grounding.locate import Localization, detector_boxes, locate
from .guidance import ClipGuidance
from .guidance.grounding_loss import GroundingPartLoss
from .mesh import Mesh, Normalization
from .models import ModelStore
from .parts import PartWeights
from .prompt import StylePrompt, parse_prompt
from .train import Objective, StyleTrainer, SurfaceInputs

MAX_PROMPT_CHARACTERS = 300


@dataclass(frozen=True)
class StyleResult:
    """A finished stylization, per vertex of the input mesh, object frame.

    Attributes:
        mesh: the input mesh (unchanged).
        prompt: the prompt as parsed (holistic style, or part/style pairs).
        colors_srgb: [V, 3] float32 in 0..1.
        displacement: [V] float32 signed offset along ``mesh.vertex_normals``, object units.
        settings: the settings used (seed included).
        parts: the part weights the styles were applied with (None for a holistic prompt).
        history: loss name -> value per iteration.
        record: facts about the run for reports (device, models, timings, steps, skipped steps).
    """

    mesh: Mesh
    prompt: StylePrompt
    colors_srgb: np.ndarray
    displacement: np.ndarray
    settings: Settings
    parts: PartWeights | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    @property
    def colors_linear(self) -> np.ndarray:
        """[V, 3] float32 linear colors (what Blender and glTF store)."""
        return srgb_to_linear(self.colors_srgb)

    def displaced_vertices(self, strength: float = 1.0) -> np.ndarray:
        """[V, 3] float32 vertex positions with ``strength`` x the displacement, object frame."""
        offset = (strength * self.displacement)[:, None] * self.mesh.vertex_normals
        return (self.mesh.vertices + offset).astype(np.float32)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable device raises :class:`DeviceError`."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; use auto, cpu or cuda.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' asked for, but this PyTorch sees no CUDA GPU; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif dev.type != "cpu":
        raise DeviceError(f"device '{name}' is not supported; use auto, cpu or cuda.")
    return dev


def check_prompt(prompt: str | StylePrompt, *, holistic: bool = False) -> StylePrompt:
    """Parse ``prompt`` (see :mod:`engine.prompt`); overlong prompts raise :class:`PromptError`."""
    if isinstance(prompt, StylePrompt):
        return prompt
    text = " ".join(str(prompt).split())
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise PromptError(
            f"the prompt has {len(text)} characters; keep it under {MAX_PROMPT_CHARACTERS} "
            "(CLIP reads at most 77 tokens)."
        )
    return parse_prompt(text, holistic=holistic)


def locate_parts(
    mesh: Mesh,
    parts: list[str] | tuple[str, ...],
    *,
    settings: Settings | None = None,
    models: ModelStore | str = "tiny",
    device: str | torch.device = "auto",
    on_event: EventSink = ignore_events,
    cancel: CancelToken | None = None,
) -> Localization:
    """Find the named parts on ``mesh`` with the grounding model (METHOD section 5.1).

    Returns the per-vertex :class:`PartWeights` with the boxes and views they came from. Raises
    :class:`PartNotFound` when a part has no support in any view, :class:`Cancelled` when
    ``cancel`` is set while the model runs.
    """
    settings = settings or settings_for()
    dev = resolve_device(device)
    store = models if isinstance(models, ModelStore) else ModelStore(models)
    names = [" ".join(p.lower().split()) for p in parts]
    if not names or any(not n for n in names):
        raise PromptError("give at least one part name to locate, e.g. --parts \"base, tube, shade\".")
    on_event(StageEvent("loading models", f"grounding ({store.describe()})"))
    detector = views_detector(store.grounding(dev), settings.localize.resolution)
    on_event(StageEvent("locating parts", ", ".join(names)))
    vertices = torch.from_numpy(mesh.unit_vertices()).to(dev)
    detect = detector_boxes(detector, settings.localize.box_threshold, cancel)
    return locate(vertices, torch.from_numpy(mesh.faces).to(dev), names, detect, settings)


def stylize(
    mesh: Mesh,
    prompt: str | StylePrompt,
    *,
    settings: Settings | None = None,
    models: ModelStore | str = "tiny",
    device: str | torch.device = "auto",
    holistic: bool = False,
    parts: PartWeights | None = None,
    lock: tuple[str, ...] = (),
    previous: StyleResult | None = None,
    base_colors: np.ndarray | None = None,
    on_event: EventSink = ignore_events,
    cancel: CancelToken | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
) -> StyleResult:
    """Stylize ``mesh`` so that its renders match ``prompt``.

    Args:
        mesh: the input, object frame; it is never modified.
        prompt: a part-style prompt (``"pottery base, gold tube, linen shade"``) or one style for
            the whole object (``"a lamp made of gold"``); see :mod:`engine.prompt`.
        settings: all settings (default: the default preset).
        models: a :class:`ModelStore` or a source name for one (``tiny``, ``default``, a folder).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        holistic: read the whole prompt as one style, without looking for parts.
        parts: per-vertex part weights given by the user (labels, vertex groups): no grounding
            runs. Without them, a part prompt locates its parts with the grounding model.
        lock: parts that keep ``previous``'s result instead of being restyled.
        previous: an earlier result on the same mesh (needed with ``lock``).
        base_colors: [V, 3] sRGB colors that vertices outside every styled part keep
            (default: the field's neutral gray).
        on_event: receives progress, preview and notice events.
        cancel: a token to stop the run; raises :class:`Cancelled` (after checkpointing).
        checkpoint: path of a resumable checkpoint to keep while running.
        resume: continue from ``checkpoint``.
    """
    settings = settings or settings_for()
    parsed = check_prompt(prompt, holistic=holistic)
    dev = resolve_device(device)
    store = models if isinstance(models, ModelStore) else ModelStore(models)
    started = time.perf_counter()
    normalization = Normalization.fit(mesh.vertices)
    part_weights = None
    if not parsed.is_holistic:
        part_weights = (
            parts.select(parsed.parts) if parts is not None
            else locate_parts(mesh, parsed.parts, settings=settings, models=store, device=dev, on_event=on_event,
                              cancel=cancel).weights
        )
    composition = _composition(mesh, parsed, part_weights, lock, previous, base_colors, normalization, parts is not None)

    on_event(StageEvent("loading models", store.describe()))
    guidance = ClipGuidance(store.clip(dev), settings.guidance)
    on_event(StageEvent("encoding text", parsed.full_text()))
    styled = [pair for pair in parsed.pairs if pair.part not in lock]
    objective = Objective(
        text=guidance.encode_text([parsed.full_text()])[0],
        composition=composition,
        part_names=tuple(pair.part for pair in styled),
        part_texts=guidance.encode_text([pair.phrase for pair in styled]) if styled else None,
        grounding=_grounding_loss(store, dev, styled, settings) if styled else None,
    )
    surface = SurfaceInputs(
        vertices=torch.from_numpy(normalization.to_unit(mesh.vertices)).to(dev),
        normals=torch.from_numpy(mesh.vertex_normals).to(dev),
        faces=torch.from_numpy(mesh.faces).to(dev),
    )
    fingerprint = run_fingerprint(mesh, parsed, settings, store.describe(), composition)
    trainer = StyleTrainer(surface, objective, guidance, settings, fingerprint=fingerprint)
    ready = time.perf_counter()
    trained = trainer.run(
        on_event=on_event, cancel=cancel, checkpoint_path=checkpoint, resume=resume, to_object_units=normalization.scale
    )
    record = {
        "device": str(dev),
        "models": store.describe(),
        "steps": trained.steps,
        "skipped_steps": trained.skipped,
        "seconds_setup": round(ready - started, 3),
        "seconds_optimizing": round(trained.seconds, 3),
        "normalization": {"center": normalization.center.tolist(), "scale": normalization.scale},
    }
    return StyleResult(
        mesh=mesh,
        prompt=parsed,
        colors_srgb=trained.colors.numpy(),
        displacement=normalization.length_to_object(trained.displacement.numpy()),
        settings=settings,
        parts=part_weights,
        history=trained.history,
        record=record,
    )


def _composition(mesh, parsed, part_weights, lock, previous, base_colors, normalization, given_parts) -> Composition:
    """The blend of per-part outputs for this request (holistic: the whole mesh is one part)."""
    if parsed.is_holistic:
        if lock:
            raise PromptError("--lock needs a part prompt; a holistic prompt has no parts to keep.")
        if given_parts:
            raise PromptError(
                f"parts were given but the prompt {parsed.full_text()!r} names none; write the styles per part "
                "(e.g. 'red base, blue shade') or leave the parts out."
            )
        return whole_object(mesh.num_vertices)
    unknown = [p for p in lock if p not in parsed.parts]
    if unknown:
        raise PromptError(f"cannot lock {', '.join(map(repr, unknown))}: not a part of the prompt ({', '.join(parsed.parts)}).")
    if lock and previous is None:
        raise PromptError("locked parts keep an earlier result: give the previous result (--previous DIR).")
    if previous is not None and previous.mesh.num_vertices != mesh.num_vertices:
        raise PromptError("the previous result belongs to a mesh with a different vertex count; it cannot be reused.")
    original = np.full((mesh.num_vertices, 3), BASE_COLOR, np.float32) if base_colors is None else base_colors
    return compose_parts(
        part_weights,
        original_colors=original,
        locked=tuple(lock),
        previous_colors=None if previous is None else previous.colors_srgb,
        previous_displacement=None if previous is None else previous.displacement / normalization.scale,
    )


def views_detector(bundle, resolution: int) -> GroundingDetector:
    """A detector for views rendered at ``resolution`` px: they are shown to the model at its own
    input size (the bundle's shortest edge: 800 for Grounding DINO, 256 for the tiny one), or at
    ``resolution`` where that is smaller - never enlarged, and never larger than the model learned."""
    return GroundingDetector(bundle, size=min(int(resolution), int(bundle.size)))


def _grounding_loss(store: ModelStore, device: torch.device, styled, settings: Settings):
    """The grounding-space part loss when the schedule uses it, else None (no model is loaded)."""
    if settings.guidance.grounding_every <= 0:
        return None
    detector = views_detector(store.grounding(device), settings.guidance.grounding_resolution)
    return GroundingPartLoss(detector, [p.part for p in styled], [p.phrase for p in styled],
                             threshold=settings.guidance.grounding_threshold)


def run_fingerprint(mesh: Mesh, prompt: StylePrompt, settings: Settings, model_name: str, composition: Composition) -> str:
    """A hash of everything that determines a run, so a checkpoint resumes only its own run.

    ``optim.iterations`` is left out: a resumed run may be extended.
    """
    flat = settings.flat()
    flat.pop("optim.iterations")
    h = hashlib.sha256()
    for array in (mesh.vertices, mesh.faces, composition.weights.numpy(), composition.fixed_colors.numpy()):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(json.dumps([repr(prompt), flat, model_name], sort_keys=True).encode())
    return h.hexdigest()
