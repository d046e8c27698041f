"""``python -m engine bench --bake``: the time to bake maps (docs/performance.md, "Baking").

A 40k-face sample lamp is stylized for one iteration and baked at each size, on two layouts: every
face its own UV island (the worst case for the bake's shared samples, ``texture/shared.py``: most
texels lie near an island's border) and the charts xatlas cuts (an artist's kind of layout; when the
``unwrap`` extra is installed). Each is baked with ``texture.precision=float32`` and, at the largest
size, ``bfloat16`` too (about 2x on CPUs with native bf16, slower on others). The figure is
the bake alone (``run.json``'s ``texture.seconds``: texels, field evaluation, normals, padding),
not the run before it.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TextIO

from .api import stylize
from .bench_batch import report_line
from .config import settings_for
from .mesh import Mesh, mesh_from_arrays
from .samples import sample_mesh
from .texture.atlas import face_atlas

BAKE_SIZES = (1024, 2048)


def bake_layouts(faces: int, size: int) -> list[tuple[str, Mesh]]:
    """The sample lamp with each layout the benchmark bakes on (xatlas's when it is installed)."""
    lamp = sample_mesh("lamp", faces)
    layouts = [("face islands", mesh_from_arrays(lamp.vertices, lamp.faces, name="lamp",
                                                 corner_uv=face_atlas(lamp.num_faces)))]
    if importlib.util.find_spec("xatlas") is not None:
        from .texture.unwrap import with_generated_layout

        charted, _ = with_generated_layout(lamp, settings_for("fast", [f"texture.size={size}"]).texture)
        layouts.append(("xatlas charts", charted))
    return layouts


def run_bake_benchmark(*, faces: int = 40_000, sizes: tuple[int, ...] = BAKE_SIZES, device: str = "auto",
                       out: TextIO = sys.stdout) -> list[dict]:
    """Print (and return) each bake's seconds, the share of texels evaluated and texels per second."""
    import torch

    layouts = bake_layouts(faces, max(sizes))
    report_line(out, f"# bake: sample lamp, {layouts[0][1].num_faces} faces; fast preset field; "
                f"{torch.get_num_threads()} threads")
    report_line(out, f"{'layout':<14} {'size':>6} {'precision':>9} {'texels':>11} {'evaluated':>9} {'bake s':>8} "
                f"{'texels/s':>11}")
    rows = []
    for name, mesh in layouts:
        runs = [(size, "float32") for size in sizes] + [(max(sizes), "bfloat16")]
        for size, precision in runs:
            settings = settings_for("fast", ["optim.iterations=1", "views.count=1", f"texture.size={size}",
                                             f"texture.precision={precision}"])
            texture = stylize(mesh, "a red lamp", settings=settings, models="tiny", device=device).record["texture"]
            texels = round(texture["covered"] * size * size)
            row = {"layout": name, "size": size, "precision": precision, "texels": texels,
                   "evaluated": texture["evaluated"], "seconds": texture["seconds"]}
            rows.append(row)
            report_line(out, f"{name:<14} {size:>6} {precision:>9} {texels:>11,} {texture['evaluated']:>9.2f} "
                        f"{texture['seconds']:>8.2f} {texels / texture['seconds']:>11,.0f}")
    return rows
