"""``python -m engine bench --bake``: the time to bake maps (docs/performance.md, "Baking").

A 40k-face sample lamp with a generated layout (every face its own island) is stylized for one
iteration and baked at each size; the figure is the bake alone (``run.json``'s ``texture.seconds``:
texels, field evaluation, normals, padding), not the run before it.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .api import stylize
from .bench_batch import report_line
from .config import settings_for
from .mesh import mesh_from_arrays
from .samples import sample_mesh
from .texture.atlas import face_atlas

BAKE_SIZES = (1024, 2048)


def run_bake_benchmark(*, faces: int = 40_000, sizes: tuple[int, ...] = BAKE_SIZES, device: str = "auto",
                       out: TextIO = sys.stdout) -> None:
    """Print the bake's seconds and texels per second for each size."""
    import torch

    lamp = sample_mesh("lamp", faces)
    mesh = mesh_from_arrays(lamp.vertices, lamp.faces, name="lamp", corner_uv=face_atlas(lamp.num_faces))
    report_line(out, f"# bake: sample lamp, {mesh.num_faces} faces, every face its own UV island; fast preset field; "
                f"{torch.get_num_threads()} threads")
    report_line(out, f"{'size':>6} {'texels covered':>15} {'bake s':>8} {'texels/s':>12}")
    for size in sizes:
        settings = settings_for("fast", ["optim.iterations=1", "views.count=1", f"texture.size={size}"])
        result = stylize(mesh, "a red lamp", settings=settings, models="tiny", device=device)
        texture = result.record["texture"]
        texels = round(texture["covered"] * size * size)
        report_line(out, f"{size:>6} {texels:>15,} {texture['seconds']:>8.2f} {texels / texture['seconds']:>12,.0f}")

