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
from .config import Settings, settings_for
from .errors import DeviceError, PromptError
from .events import CancelToken, EventSink, StageEvent, ignore_events
from .guidance import ClipGuidance
from .mesh import Mesh, Normalization
from .models import ModelStore
from .train import StyleTrainer, SurfaceInputs

MAX_PROMPT_CHARACTERS = 300


@dataclass(frozen=True)
class StyleResult:
    """A finished stylization, per vertex of the input mesh, object frame.

    Attributes:
        mesh: the input mesh (unchanged).
        prompt: the text the result was optimized for.
        colors_srgb: [V, 3] float32 in 0..1.
        displacement: [V] float32 signed offset along ``mesh.vertex_normals``, object units.
        settings: the settings used (seed included).
        history: loss name -> value per iteration.
        record: facts about the run for reports (device, models, timings, steps, skipped steps).
    """

    mesh: Mesh
    prompt: str
    colors_srgb: np.ndarray
    displacement: np.ndarray
    settings: Settings
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


def check_prompt(prompt: str) -> str:
    """The prompt stripped; empty or overlong prompts raise :class:`PromptError`."""
    text = " ".join(str(prompt).split())
    if not text:
        raise PromptError("the prompt is empty; describe the style, e.g. --prompt \"a wooden chair\".")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise PromptError(
            f"the prompt has {len(text)} characters; keep it under {MAX_PROMPT_CHARACTERS} "
            "(CLIP reads at most 77 tokens)."
        )
    return text


def stylize(
    mesh: Mesh,
    prompt: str,
    *,
    settings: Settings | None = None,
    models: ModelStore | str = "tiny",
    device: str | torch.device = "auto",
    on_event: EventSink = ignore_events,
    cancel: CancelToken | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
) -> StyleResult:
    """Stylize ``mesh`` so that its renders match ``prompt``.

    Args:
        mesh: the input, object frame; it is never modified.
        prompt: the style text.
        settings: all settings (default: the default preset).
        models: a :class:`ModelStore` or a source name for one (``tiny``, ``default``, a folder).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        on_event: receives progress, preview and notice events.
        cancel: a token to stop the run; raises :class:`Cancelled` (after checkpointing).
        checkpoint: path of a resumable checkpoint to keep while running.
        resume: continue from ``checkpoint``.
    """
    settings = settings or settings_for()
    prompt = check_prompt(prompt)
    dev = resolve_device(device)
    store = models if isinstance(models, ModelStore) else ModelStore(models)
    started = time.perf_counter()

    on_event(StageEvent("loading models", store.describe()))
    bundle = store.clip(dev)
    guidance = ClipGuidance(bundle, settings.guidance)
    on_event(StageEvent("encoding text", prompt))
    text = guidance.encode_text([prompt])[0]

    normalization = Normalization.fit(mesh.vertices)
    surface = SurfaceInputs(
        vertices=torch.from_numpy(normalization.to_unit(mesh.vertices)).to(dev),
        normals=torch.from_numpy(mesh.vertex_normals).to(dev),
        faces=torch.from_numpy(mesh.faces).to(dev),
    )
    trainer = StyleTrainer(surface, text, guidance, settings, fingerprint=run_fingerprint(mesh, prompt, settings, bundle.name))
    ready = time.perf_counter()
    trained = trainer.run(
        on_event=on_event, cancel=cancel, checkpoint_path=checkpoint, resume=resume, to_object_units=normalization.scale
    )
    record = {
        "device": str(dev),
        "models": bundle.name,
        "steps": trained.steps,
        "skipped_steps": trained.skipped,
        "seconds_setup": round(ready - started, 3),
        "seconds_optimizing": round(trained.seconds, 3),
        "normalization": {"center": normalization.center.tolist(), "scale": normalization.scale},
    }
    return StyleResult(
        mesh=mesh,
        prompt=prompt,
        colors_srgb=trained.colors.numpy(),
        displacement=normalization.length_to_object(trained.displacement.numpy()),
        settings=settings,
        history=trained.history,
        record=record,
    )


def run_fingerprint(mesh: Mesh, prompt: str, settings: Settings, model_name: str) -> str:
    """A hash of everything that determines a run, so a checkpoint resumes only its own run.

    ``optim.iterations`` is left out: a resumed run may be extended.
    """
    flat = settings.flat()
    flat.pop("optim.iterations")
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mesh.vertices).tobytes())
    h.update(np.ascontiguousarray(mesh.faces).tobytes())
    h.update(json.dumps([prompt, flat, model_name], sort_keys=True).encode())
    return h.hexdigest()
