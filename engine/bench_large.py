"""The large-mesh benchmark (``python -m engine bench --large``): peak memory and time per iteration by
mesh size, each size in a process of its own (a process's peak memory is its own), with the
engine's estimate beside the measured peak.

    faces  vertices  optimized  s/iteration  peak GB  estimate GB
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

LARGE_FACES = (200_000, 500_000, 1_000_000, 2_000_000)


def large_mesh_run(faces: int, preset: str, max_vertices: int, iterations: int = 3) -> dict:
    """One holistic run on a UV sphere of about ``faces`` faces, in this process; the figures as a dict."""
    import torch
    import trimesh

    from .api import stylize
    from .config import settings_for
    from .events import StepEvent
    from .memory import estimate_peak_bytes, peak_memory_mb
    from .mesh import mesh_from_arrays

    side = max(8, round((faces / 4) ** 0.5))  # a UV sphere of n x n has about 4 n^2 faces
    sphere = trimesh.creation.uv_sphere(count=[side, side])
    mesh = mesh_from_arrays(sphere.vertices, sphere.faces, name="sphere")
    settings = settings_for(preset, {"optim.iterations": iterations, "field.max_vertices": max_vertices,
                                     "run.preview_every": 0})
    steps: list[float] = []
    started = time.perf_counter()
    result = stylize(mesh, "a red sphere", settings=settings, models="tiny", device="cpu",
                     on_event=lambda e: steps.append(time.perf_counter()) if isinstance(e, StepEvent) else None)
    optimized = result.record["optimized_vertices"]
    return {
        "faces": len(mesh.faces), "vertices": mesh.num_vertices, "optimized_vertices": optimized,
        "seconds_per_iteration": (steps[-1] - steps[0]) / max(len(steps) - 1, 1),
        "seconds_total": time.perf_counter() - started,
        "peak_gb": peak_memory_mb(torch.device("cpu")) / 1024,
        "estimate_gb": estimate_peak_bytes(optimized, settings) / 2**30,
    }


LARGE_HEADER = (f"{'faces':>9} {'vertices':>9} {'optimized':>9} {'s/it':>7} {'total s':>8} {'peak GB':>8} "
                f"{'est. GB':>8}")


def large_mesh_rows(*, preset: str = "preview", max_vertices: int | None = None, sizes=LARGE_FACES):
    """:func:`large_mesh_run`'s figures for each size, each measured in a process of its own, yielded
    as they come (``max_vertices`` None: the preset's). A size that failed yields
    ``{"faces": F, "error": "..."}``."""
    from .config import settings_for

    limit = settings_for(preset).field.max_vertices if max_vertices is None else max_vertices
    with tempfile.TemporaryDirectory(prefix="partstyle-bench-") as folder:
        for faces in sizes:
            path = os.path.join(folder, f"{faces}.json")
            code = ("import json, sys; from engine.bench_large import large_mesh_run; "
                    f"json.dump(large_mesh_run({faces}, {preset!r}, {limit}), open(sys.argv[1], 'w'))")
            done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
            if done.returncode or not os.path.isfile(path):
                lines = done.stderr.strip().splitlines()
                yield {"faces": faces, "error": lines[-1] if lines else f"exit code {done.returncode}"}
                continue
            with open(path, encoding="utf-8") as fh:
                yield json.load(fh)


def format_large_row(row: dict) -> str:
    """One row of :data:`LARGE_HEADER`'s table."""
    if "error" in row:
        return f"{row['faces']:>9} failed: {row['error']}"
    return (f"{row['faces']:>9} {row['vertices']:>9} {row['optimized_vertices']:>9} "
            f"{row['seconds_per_iteration']:>7.2f} {row['seconds_total']:>8.1f} {row['peak_gb']:>8.2f} "
            f"{row['estimate_gb']:>8.2f}")
