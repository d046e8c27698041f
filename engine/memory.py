"""How much memory a run will need, and how much the device has free: checked before work starts.

Measured on the 2-core CPU machine (docs/performance.md, "Large meshes"): peak memory grows by
about 13.5 KB per optimized vertex with the default field (``preview`` and ``fast`` alike; views
and crops add little), on top of about 0.55 GB for Python, PyTorch and the tiny models. The
per-vertex share is the field's activations and their gradients, so it is modelled from the
field's shape and scaled by the measured overhead of autograd. Needs no torch, so the Blender
add-on can show the estimate before the engine's heavy modules load.
"""

from __future__ import annotations

import os
import sys

from .config import Settings
from .errors import ResourceError

#: Python, PyTorch, the tiny models, the renders: measured 0.54 GB with the tiny models.
BASE_BYTES = 600 * 2**20
#: Measured peak bytes per optimized vertex / 4 bytes per float of the field per vertex (13.5 KB /
#: 10.25 KB with the default field).
AUTOGRAD_OVERHEAD = 1.35


def field_floats_per_vertex(settings: Settings, parts: int = 1) -> int:
    """float32 values the field holds per vertex in one forward pass (features, trunk, heads)."""
    f = settings.field
    return (3 + 2 * f.fourier_features) + f.width * (f.trunk_depth + 2 * f.head_depth) + 4 * parts


def estimate_peak_bytes(num_vertices: int, settings: Settings, parts: int = 1) -> int:
    """The expected peak memory of optimizing ``num_vertices`` vertices with ``settings``, bytes."""
    per_vertex = 4 * AUTOGRAD_OVERHEAD * field_floats_per_vertex(settings, parts)
    return int(BASE_BYTES + per_vertex * num_vertices)


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


def check_fits(num_vertices: int, settings: Settings, parts: int, device) -> int:
    """Raise :class:`ResourceError` when optimizing ``num_vertices`` vertices would need more memory than
    ``device`` (a torch.device) has free; returns the estimate in bytes."""
    need = estimate_peak_bytes(num_vertices, settings, parts)
    free = available_bytes(device)
    if free is not None and need > free:
        per_vertex = (need - BASE_BYTES) / max(num_vertices, 1)
        budget = max(1000, int((0.8 * free - BASE_BYTES) / per_vertex))  # what fits in 80% of the free memory
        raise ResourceError(
            f"this run would need about {gigabytes(need)} ({num_vertices} vertices optimized) but {device} has "
            f"{gigabytes(free)} free. Optimize on a smaller copy (--set field.max_vertices={budget // 1000 * 1000}), "
            "use a device with more memory, or close other programs."
        )
    return need


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
