"""A :class:`StyleResult` to files: GLB, npz, preview and loss images, and the run record.

All files of a result are first written into a hidden staging folder inside the output folder
and moved into place only when every one of them was written, so a failed export never leaves a
half-written result and never damages an earlier one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile

import numpy as np
import torch

from . import __version__
from .api import StyleResult
from .cameras import ring_views
from .glb import write_glb
from .images import image_grid, plot_curves, save_png
from .mesh import Normalization
from .render import Renderer

RESULT_FILES = ("stylized.glb", "result.npz", "preview.png", "losses.png", "run.json")
PREVIEW_VIEWS = 4
PREVIEW_SIZE = 256
BEFORE_GRAY = 0.75  # albedo of the untextured input in the preview's "before" row


def write_result(result: StyleResult, out_dir: str, *, extra_record: dict | None = None) -> dict[str, str]:
    """Write every result file into ``out_dir`` (created if needed); returns name -> path.

    - ``stylized.glb``: displaced vertices (object frame) with linear vertex colors, the
      displacement as the custom attribute ``_DISPLACEMENT``;
    - ``result.npz``: ``colors_linear``, ``colors_srgb`` [V, 3], ``displacement`` [V] (object
      units), ``vertices`` (displaced) [V, 3], ``faces`` [F, 3];
    - ``preview.png``: before/after from four views; ``losses.png``: loss curves;
    - ``run.json``: prompt, settings, versions, loss history, timings.
    """
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partstyle-", dir=out_dir)
    try:
        _write_all(result, staging, extra_record or {})
        paths = {}
        for name in RESULT_FILES:
            target = os.path.join(out_dir, name)
            os.replace(os.path.join(staging, name), target)
            paths[name] = target
        return paths
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_all(result: StyleResult, folder: str, extra_record: dict) -> None:
    mesh = result.mesh
    displaced = result.displaced_vertices()
    colors_linear = result.colors_linear
    write_glb(
        os.path.join(folder, "stylized.glb"),
        displaced,
        mesh.faces,
        colors_linear=colors_linear,
        extra_attributes={"displacement": result.displacement},
    )
    np.savez_compressed(
        os.path.join(folder, "result.npz"),
        colors_linear=colors_linear,
        colors_srgb=result.colors_srgb,
        displacement=result.displacement,
        vertices=displaced,
        faces=mesh.faces,
    )
    save_png(os.path.join(folder, "preview.png"), before_after_grid(result))
    curves = {k: v for k, v in result.history.items() if k != "learning_rate"}
    save_png(os.path.join(folder, "losses.png"), plot_curves(curves, title=f"losses: {result.prompt}"))
    with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as fh:
        json.dump(run_record(result, extra_record), fh, indent=2)


def before_after_grid(result: StyleResult, *, views: int = PREVIEW_VIEWS, size: int = PREVIEW_SIZE) -> np.ndarray:
    """uint8 image: the input (gray) above the result, from ``views`` views around the object."""
    settings = result.settings
    mesh = result.mesh
    normalization = Normalization.fit(mesh.vertices)
    cameras = ring_views(views, settings.views, settings.render)
    renderer = Renderer(settings.render)
    faces = torch.from_numpy(mesh.faces)
    gray = torch.full((mesh.num_vertices, 3), BEFORE_GRAY)
    rows = []
    for vertices, colors in (
        (mesh.vertices, gray),
        (result.displaced_vertices(), torch.from_numpy(result.colors_srgb)),
    ):
        unit = torch.from_numpy(normalization.to_unit(vertices))
        with torch.no_grad():
            out = renderer.render(unit, faces, cameras, colors=colors, resolution=size)
        rows.append([image.permute(1, 2, 0).numpy() for image in out.color])
    return image_grid(rows, row_labels=["before", "after"])


def run_record(result: StyleResult, extra: dict) -> dict:
    """The JSON-serializable record of a run."""
    import transformers

    return {
        "prompt": result.prompt,
        "seed": result.settings.run.seed,
        "mesh": {"name": result.mesh.name, "vertices": result.mesh.num_vertices, "faces": result.mesh.num_faces},
        **extra,
        **result.record,
        "settings": result.settings.to_dict(),
        "versions": {
            "partstyle": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "losses": result.history,
    }
