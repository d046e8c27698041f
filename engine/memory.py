"""How much memory a run will need, and how much the device has free: checked before work starts.

The estimate (:func:`estimate_memory`) adds what a run holds at its heaviest moment, modelled from
the settings and the models' footprint (``engine/footprint.py``), with constants measured on the
2-core CPU machine by counting the bytes of the tensors a run allocates (``python -m engine bench
--memory``; docs/performance.md, "Memory"):

- the process itself (Python and the libraries; on a GPU, the allocator's rounding);
- the weights of the models the run loads;
- what the run keeps throughout (text targets, the surface, the field and its optimizer);
- the larger of localization (every view's render and evidence, and the mesh's patches) and one
  optimization step: the field's activations (about 13.5 KB per optimized vertex with the default
  field), plus the larger of a CLIP step (its renders and images) and a grounding step (its
  renders and Grounding DINO's activations).

Needs no torch, so the Blender add-on can show the estimate before the engine's heavy modules load.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

from .config import Settings
from .errors import ResourceError
from .footprint import ModelFootprint, model_footprint

#: The process before any run: Python, PyTorch and transformers resident on the CPU (with the heap's
#: fragmentation over a run); on a GPU, the caching allocator's rounding (the libraries' workspaces are
#: the first run's: :data:`GPU_WORKSPACE_BYTES`).
PROCESS_BYTES = {"cpu": 640 * 2**20, "gpu": 256 * 2**20}
#: What a run keeps from start to end besides the field: text targets, surface arrays, the segmenter's
#: cached position encoding (measured 64-128 MB with the real-size models).
RUN_STATE_BYTES = 128 * 2**20
#: On a GPU, the libraries' workspaces (cuBLAS, cuDNN) that the process's first run allocates through
#: the caching allocator: the first preset of ``bench --memory --device cuda`` held 98 MB more while
#: locating than the same localization after it (an H200, 2026-11-30).
GPU_WORKSPACE_BYTES = 128 * 2**20
#: Measured peak bytes per optimized vertex / 4 bytes per float of the field per vertex (13.5 KB /
#: 10.25 KB with the default field).
AUTOGRAD_OVERHEAD = 1.35
#: A rendered view with its gradients, per pixel (fragments, color and geometry images).
RENDER_BYTES_PER_PIXEL = 250
#: Localization per view pixel (each view's render, boxes' masks and evidence, kept until settling),
#: and per vertex of the located mesh (its patches and their graph): 10 views at 512 px took 578 MB
#: plus about 3.8 KB per vertex.
LOCATE_BYTES_PER_PIXEL = 240
LOCATE_BYTES_PER_VERTEX = 4096


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's expected peak memory by part, bytes (see the module's docstring)."""

    process: int
    weights: int
    run_state: int
    locating: int
    step: int

    @property
    def total(self) -> int:
        return self.process + self.weights + self.run_state + max(self.locating, self.step)


def field_floats_per_vertex(settings: Settings, parts: int = 1) -> int:
    """float32 values the field holds per vertex in one forward pass (features, trunk, heads)."""
    f = settings.field
    return (3 + 2 * f.fourier_features) + f.width * (f.trunk_depth + 2 * f.head_depth) + 4 * parts


def clip_images_per_step(settings: Settings, parts: int) -> int:
    """Images CLIP scores in one step: each view's augmented copies, crops and gray crops, and each
    styled part's crops (``parts`` 0 for a holistic run)."""
    g = settings.guidance
    return settings.views.count * (g.global_augmentations + g.local_crops + g.geometry_crops) + g.part_crops * parts


def estimate_memory(
    num_vertices: int, settings: Settings, parts: int = 0, *, models: ModelFootprint | str = "tiny",
    locating: bool = False, device_type: str = "cpu", loaded: tuple[str, ...] = (),
) -> MemoryEstimate:
    """The expected peak memory of a run, by part.

    Args:
        num_vertices: vertices optimized (and located on): the mesh's, or its working copy's.
        settings: the run's settings.
        parts: styled parts (0: a holistic run, which has no part crops and no grounding steps).
        models: the models' :class:`ModelFootprint`, or a model source to read it from.
        locating: whether the run locates its parts (loads the grounding model and the segmenter).
        device_type: ``cpu``, or anything else for a GPU (where the process's libraries are not on it,
            but the first run allocates their workspaces, and CLIP and Grounding DINO keep bf16
            copies of their image paths' weights).
        loaded: roles whose models are in memory already (a Blender session's earlier run): their
            weights are not counted again.
    """
    footprint = models if isinstance(models, ModelFootprint) else model_footprint(models)
    on_gpu = device_type != "cpu"
    grounding_steps = parts > 0 and settings.guidance.grounding_every > 0
    roles = ["clip"] + (["grounding"] if locating or grounding_steps else [])
    roles += ["segmenter"] if locating and settings.localize.evidence == "masks" else []
    loc = settings.localize
    locate = loc.views * loc.resolution**2 * LOCATE_BYTES_PER_PIXEL + num_vertices * LOCATE_BYTES_PER_VERTEX
    field = 4 * AUTOGRAD_OVERHEAD * field_floats_per_vertex(settings, max(parts, 1)) * num_vertices
    side = settings.render.resolution
    renders = settings.views.count * side**2 * RENDER_BYTES_PER_PIXEL
    clip_step = renders + clip_images_per_step(settings, parts) * footprint.clip_image
    grounding_step = 0.0
    if grounding_steps:
        g = settings.guidance
        shown = min(g.grounding_resolution, footprint.grounding_side)
        per_view = g.grounding_resolution**2 * RENDER_BYTES_PER_PIXEL + shown**2 * footprint.grounding_pixel
        grounding_step = g.grounding_views * per_view
    return MemoryEstimate(
        process=PROCESS_BYTES["gpu" if on_gpu else "cpu"],
        weights=sum(footprint.weights[role] for role in roles if role not in loaded)
        + (footprint.clip_bf16_copies if on_gpu and "clip" not in loaded else 0)
        + (footprint.grounding_bf16_copies if on_gpu and "grounding" in roles and "grounding" not in loaded else 0),
        run_state=RUN_STATE_BYTES + (GPU_WORKSPACE_BYTES if on_gpu else 0),
        locating=int(locate) if locating else 0,
        step=int(field + max(clip_step, grounding_step)),
    )


def estimate_peak_bytes(num_vertices: int, settings: Settings, parts: int = 0, **run) -> int:
    """The expected peak memory of a run, bytes: :meth:`MemoryEstimate.total` of :func:`estimate_memory`
    (``run``: its ``models``, ``locating`` and ``device_type``)."""
    return estimate_memory(num_vertices, settings, parts, **run).total


def available_bytes(device) -> int | None:
    """Free memory on ``device`` in bytes: the GPU's free memory, or the system's available memory
    (Linux ``MemAvailable``, else free physical pages); None where it cannot be known."""
    if device.type == "cuda":
        import torch  # only here: the estimate itself needs no torch (the add-on's panel shows it)

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(num_vertices: int, settings: Settings, parts: int, device, **run) -> int:
    """Raise :class:`ResourceError` when a run optimizing ``num_vertices`` vertices would need more memory
    than ``device`` (a torch.device) has free (``parts`` and ``run`` as for :func:`estimate_memory`);
    returns the estimate in bytes. The running process itself is not counted: it holds its memory already."""
    estimate = estimate_memory(num_vertices, settings, parts, device_type=device.type, **run)
    need, free = estimate.total - estimate.process, available_bytes(device)
    if free is None or need <= free:
        return need
    base = estimate_memory(0, settings, parts, device_type=device.type, **run).total - estimate.process
    per_vertex = (need - base) / max(num_vertices, 1)
    budget = int((0.8 * free - base) / per_vertex) if per_vertex > 0 else 0  # the vertices 80% of it holds
    fixes = [f"optimize on a smaller copy (--set field.max_vertices={budget // 1000 * 1000})"] if budget >= 1000 else []
    fixes += ["use a lighter preset (--preset preview) or a device with more memory, or close other programs"]
    fix = "; ".join(fixes)
    raise ResourceError(
        f"this run would need about {gigabytes(need)} ({num_vertices} vertices optimized, "
        f"{gigabytes(estimate.weights)} of it the models' weights) but {device} has {gigabytes(free)} free. "
        f"{fix[0].upper()}{fix[1:]}."
    )


def gigabytes(count: int) -> str:
    return f"{count / 2**30:.1f} GB"


def peak_memory_mb(device) -> float:
    """The peak memory so far, MB: allocated on ``device`` when it is a CUDA GPU (since the last
    ``torch.cuda.reset_peak_memory_stats``), else this process's peak resident memory; NaN where
    the system does not report it."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


#: What the CPU allocator says when it cannot allocate (a RuntimeError, not torch.OutOfMemoryError).
CPU_ALLOCATION_FAILED = "can't allocate memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device or the system running out of memory: ``torch.OutOfMemoryError``
    (CUDA, MPS), the CPU allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and (type(exc).__name__ == "OutOfMemoryError"
                                              or CPU_ALLOCATION_FAILED in str(exc))


def out_of_memory_message(exc: BaseException, what: str, *, checkpoint: str | None = None) -> str:
    """One paragraph for a run that ran out of memory while doing ``what``: the library's own first
    line, that nothing was lost, whether ``checkpoint`` (a file the run kept) can be resumed, and the
    ways to need less (the CPU among them where a GPU ran out)."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    on_gpu = type(exc).__name__ == "OutOfMemoryError"  # torch's, raised by the GPU allocators
    kept = f", and its checkpoint ({checkpoint}) can be resumed (--resume)" if checkpoint else ""
    ways = ["a lighter preset (--preset preview)", "fewer vertices optimized (a smaller --set field.max_vertices)",
            "a smaller grounding step (--set guidance.grounding_views=1 --set guidance.grounding_resolution=384)"]
    ways += ["the CPU (--device cpu)"] if on_gpu else []
    return (
        f"ran out of memory while {what} ({said[:300]}); the mesh and earlier results are as they were{kept}. "
        f"Need less memory with {', '.join(ways[:-1])} or {ways[-1]}; or close other programs using that memory."
    )


def reporting_out_of_memory(what: str):
    """Decorator: a run that runs out of memory raises :class:`ResourceError` (:func:`out_of_memory_message`,
    naming the run's ``checkpoint`` keyword argument where that file exists) instead of the library's
    error. The failed run's tensors are released first (its frames go with the original error, which is
    not chained), and a CUDA cache is emptied, so the process can go on (a Blender session keeps working)."""

    def decorate(run):
        @functools.wraps(run)
        def wrapper(*args, **kwargs):
            try:
                return run(*args, **kwargs)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                checkpoint = kwargs.get("checkpoint")
                message = out_of_memory_message(
                    exc, what, checkpoint=checkpoint if checkpoint and os.path.isfile(checkpoint) else None)
            _empty_device_caches()
            raise ResourceError(message)

        return wrapper

    return decorate


def _empty_device_caches() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
