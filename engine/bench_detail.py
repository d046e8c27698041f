"""``python -m engine bench --detail``: what optimizing a low-poly mesh on its subdivided copy costs
(docs/performance.md, "Detail between vertices").

The 2k-face sample lamp, with the ``fast`` preset's CLIP step and 3 parts given by label, is timed
on the mesh itself and on the subdivided copy ``field.optimize_on=auto`` picks when maps are baked
(``engine/work_mesh.py``), with the real-size CLIP ViT-B/32 architecture (random weights) and with
the tiny test CLIP. The ratio of the two ``StyleTrainer.step()`` medians is the figure.
"""

from __future__ import annotations

import statistics
import sys
from typing import TextIO

import numpy as np
import torch

from .bench import benchmark_clip, seconds_of, with_relief
from .bench_batch import report_line
from .compose import compose_parts
from .config import settings_for
from .devices import resolve_device
from .guidance import ClipGuidance
from .mesh import Normalization
from .parts import PartWeights
from .prompt import parse_prompt
from .samples import sample_mesh
from .train import Objective, StyleTrainer, SurfaceInputs
from .work_mesh import working_copy

PROMPT = "pottery base, gold tube, linen shade"


def run_detail_benchmark(*, faces: int = 2000, reps: int = 5, clips: tuple[str, ...] = ("vit-b-32", "tiny"),
                         device: str = "auto", out: TextIO = sys.stdout) -> dict:
    """Print the median step of each surface and their ratio, per CLIP architecture."""
    dev = resolve_device(device)
    settings = settings_for("fast", ["texture.size=1024", "guidance.grounding_every=0"])
    lamp = sample_mesh("lamp", faces)
    normalization = Normalization.fit(lamp.vertices)
    copy = working_copy(lamp, normalization, settings)
    if copy is None:
        raise ValueError(f"the {faces}-face lamp is not coarse enough to be subdivided; give fewer faces")
    work = copy.mesh(lamp.name)
    prompt = parse_prompt(PROMPT)
    weights = PartWeights.from_labels(lamp.labels, lamp.label_names).select(prompt.parts)
    surfaces = {
        "mesh": (SurfaceInputs.of(normalization.to_unit(lamp.vertices), lamp.vertex_normals, lamp.faces, dev),
                 weights),
        "subdivided": (SurfaceInputs.of(normalization.to_unit(work.vertices), copy.surface_normals(lamp, work),
                                        work.faces, dev), copy.reduce_part_weights(weights)),
    }
    report_line(out, f"# optimizing on a subdivided copy: sample lamp {lamp.num_faces} faces ({lamp.num_vertices} "
                f"vertices) -> {len(work.faces)} faces ({work.num_vertices} vertices); fast preset CLIP step, "
                f"'{PROMPT}' by label; {dev}, {torch.get_num_threads()} threads; ms per step (median of {reps})")
    report_line(out, f"  {'CLIP':<10} {'mesh':>9} {'subdivided':>11} {'ratio':>6}")
    figures = {"faces": lamp.num_faces, "vertices": lamp.num_vertices, "copy_vertices": work.num_vertices}
    for name in clips:
        guidance = ClipGuidance(benchmark_clip(name, dev), settings.guidance)
        medians = {}
        for label, (surface, part_weights) in surfaces.items():
            composition = with_relief(compose_parts(
                part_weights, original_colors=np.full((len(surface.vertices), 3), 0.5, np.float32)))
            objective = Objective(text=guidance.encode_text([prompt.full_text()])[0], composition=composition,
                                  part_names=prompt.parts,
                                  part_texts=guidance.encode_text([p.phrase for p in prompt.pairs]))
            trainer = StyleTrainer(surface, objective, guidance, settings)
            trainer.step()  # warm-up
            medians[label] = statistics.median(seconds_of(dev, trainer.step) for _ in range(reps)) * 1e3
        ratio = medians["subdivided"] / medians["mesh"]
        figures[name] = {**medians, "ratio": ratio}
        report_line(out, f"  {name:<10} {medians['mesh']:>9.1f} {medians['subdivided']:>11.1f} {ratio:>6.2f}")
    return figures
