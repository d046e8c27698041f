"""Results to files and back: a :class:`StyleResult` as GLB, npz, preview and loss images and the run
record; a localization as ``parts.npz``; and the readers of those npz files (``--parts-from``,
``--previous``), which check every array before the engine uses it.

All files of a result are first written into a hidden staging folder inside the output folder
and moved into place only when every one of them was written, so a failed export never leaves a
half-written result and never damages an earlier one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import tempfile

import numpy as np
import torch

from . import __version__
from .cameras import ring_views
from .config import RenderSettings
from .errors import InputError, OutputError
from .field import BASE_COLOR
from .files import STAGING_PREFIX, commit_staged
from .glb import write_glb
from .grounding.locate import Localization
from .images import image_grid, plot_curves, save_png
from .mesh import Mesh, Normalization, vertex_normals
from .parts import PART_PALETTE, PartWeights, part_colors
from .ply import write_ply
from .render import Renderer
from .result import StyleResult, SurfaceStyle
from .texture.texels import per_vertex_uv

RESULT_FILES = ("stylized.glb", "stylized.ply", "result.npz", "preview.png", "losses.png", "run.json")
# The baked maps, beside them when ``texture.size`` asked for maps (engine/texture, docs/textures.md).
TEXTURE_FILES = ("base_color.png", "displacement.png", "normal.png")
LOCATE_FILES = ("parts.npz", "parts.ply", "preview.png")
PREVIEW_VIEWS = 4
PREVIEW_SIZE = 256
# Albedo of the untextured input in the preview's "before" row: the neutral gray that vertices outside
# every styled part keep, so an untouched part looks the same before and after.
BEFORE_GRAY = BASE_COLOR


def _staged(out_dir: str, names: tuple[str, ...], write) -> dict[str, str]:
    """Run ``write(staging_folder)`` and move ``names`` into ``out_dir`` only if it succeeded."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir)
    except OSError as exc:
        raise OutputError(f"cannot write into {out_dir} ({exc.strerror or exc}); nothing was changed there.") \
            from None
    try:
        try:
            write(staging)
            return commit_staged(staging, out_dir, names)
        except OSError as exc:  # a full disk, a quota, a folder removed under us
            raise OutputError(
                f"writing the results into {out_dir} failed ({exc.strerror or exc}); the earlier results there "
                "are unchanged. Free some space or choose another folder."
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_result(result: StyleResult, out_dir: str, *, extra_record: dict | None = None) -> dict[str, str]:
    """Write every result file into ``out_dir`` (created if needed); returns name -> path.

    - ``stylized.glb``: displaced vertices (object frame) with their recomputed normals, linear vertex
      colors, the displacement as the custom attribute ``_DISPLACEMENT``;
    - ``stylized.ply``: the same mesh with 8-bit sRGB vertex colors, normals and a ``displacement``
      float property;
    - ``result.npz``: ``colors_linear``, ``colors_srgb`` [V, 3], ``displacement`` [V] (object
      units), ``vertices`` (displaced) [V, 3], ``faces`` [F, 3];
    - ``preview.png``: before/after from four views; ``losses.png``: loss curves;
    - ``run.json``: prompt, settings, versions, loss history, timings.
    """
    names = RESULT_FILES + (TEXTURE_FILES if result.maps is not None else ())
    paths = _staged(out_dir, names, lambda folder: _write_all(result, folder, extra_record or {}))
    if result.maps is None:  # maps of an earlier result, which this one replaces as a whole
        for name in TEXTURE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
    return paths


def write_localization(localization: Localization, mesh: Mesh, out_dir: str) -> dict[str, str]:
    """Write a localization: ``parts.npz`` (``names``, ``weights`` [V, K+1] with rest (keep) last,
    ``labels`` [V] (-1 = rest), ``confidence`` [V], ``part_confidence`` [K]), ``parts.ply`` (the mesh
    colored by part) and ``preview.png`` (each view with its masks and boxes above the mesh colored
    by part)."""

    def write(folder: str) -> None:
        weights = localization.weights
        np.savez_compressed(
            os.path.join(folder, "parts.npz"), names=np.array(weights.names), weights=weights.weights,
            labels=weights.labels(), confidence=weights.confidence,
            part_confidence=np.array([localization.part_confidence.get(n, 0.0) for n in weights.names], np.float32),
        )
        ply = os.path.join(folder, "parts.ply")
        write_ply(ply, mesh.vertices, mesh.faces, colors_srgb=part_colors(weights.weights))
        save_png(os.path.join(folder, "preview.png"), localization_preview(localization, mesh))

    return _staged(out_dir, LOCATE_FILES, write)


def read_part_weights(path: str, num_vertices: int) -> PartWeights:
    """The part weights of a ``parts.npz`` written by :func:`write_localization` (or by hand).

    Needs ``names`` [K] text and ``weights`` [V, K + 1] (rest last) finite, in 0..1, for a mesh
    of ``num_vertices``; ``confidence`` [V] is optional. Raises :class:`InputError` naming the file
    and the array that is wrong. Never unpickles.
    """
    with _npz(path, "a parts.npz written by `python -m engine locate`") as data:
        names = _array(data, path, "names", kind="U", ndim=1)
        weights = _array(data, path, "weights", kind="f", shape=(num_vertices, len(names) + 1), unit=True)
        confidence = (
            _array(data, path, "confidence", kind="f", shape=(num_vertices,), unit=True)
            if "confidence" in data
            else np.ones(num_vertices, np.float32)
        )
    if len(names) == 0 or any(not str(n).strip() for n in names):
        raise InputError(f"{path}: 'names' must list at least one non-empty part name")
    return PartWeights(tuple(str(n) for n in names), weights, confidence, "file")


def read_surface_style(folder: str, num_vertices: int) -> SurfaceStyle:
    """The look of an earlier run from its output ``folder`` (``result.npz``: ``colors_srgb`` [V, 3]
    in 0..1 and ``displacement`` [V], object units), for a mesh of ``num_vertices``.

    Raises :class:`InputError` naming the file and the array that is wrong.
    """
    path = os.path.join(folder, "result.npz")
    with _npz(path, "the output folder of an earlier `stylize` run") as data:
        colors = _array(data, path, "colors_srgb", kind="f", shape=(num_vertices, 3), unit=True)
        displacement = _array(data, path, "displacement", kind="f", shape=(num_vertices,))
    return SurfaceStyle(colors, displacement)


def _npz(path: str, expected: str):
    """``np.load`` of an npz without pickles, or :class:`InputError` saying what was expected."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {expected}).")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path} is not a readable npz file ({exc}); expected {expected}.") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds one array, not an npz archive; expected {expected}.")
    return data


def _array(
    data, path: str, key: str, *, kind: str, ndim: int | None = None, shape: tuple | None = None, unit: bool = False
) -> np.ndarray:
    """``data[key]`` checked: its dtype kind (``f`` floating or integer, ``U`` text), shape, finiteness
    and, with ``unit``, values in 0..1. float arrays come back as float32."""
    if key not in data.files:
        raise InputError(f"{path} has no '{key}' array (it has: {', '.join(data.files) or 'nothing'}).")
    try:
        array = data[key]
    except ValueError as exc:  # object arrays need pickles, which are refused
        raise InputError(f"{path}: '{key}' cannot be read without unpickling ({exc}); it is refused.") from None
    if kind == "U":
        if array.dtype.kind not in "US":
            raise InputError(f"{path}: '{key}' must hold text, not {array.dtype}.")
    elif array.dtype.kind not in "fiu":
        raise InputError(f"{path}: '{key}' must hold numbers, not {array.dtype}.")
    if (ndim is not None and array.ndim != ndim) or (shape is not None and array.shape != shape):
        wanted = list(shape) if shape is not None else f"{ndim} dimension(s)"
        raise InputError(f"{path}: '{key}' has shape {list(array.shape)}, expected {wanted} for this mesh.")
    if kind == "U":
        return array
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{path}: '{key}' holds NaN or infinite values.")
    if unit and array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise InputError(f"{path}: '{key}' must lie in 0..1, found {array.min():.3g}..{array.max():.3g}.")
    return array


def localization_preview(localization: Localization, mesh: Mesh, *, size: int = 256) -> np.ndarray:
    """uint8 image: the detector's views with each part's mask tinted and the box it came from drawn
    (with its score), above the mesh colored by the settled parts."""
    from PIL import Image, ImageDraw

    images = localization.images
    scale = size / images.shape[1]
    palette = np.array([PART_PALETTE[k % len(PART_PALETTE)] for k in range(localization.masks.shape[1])])
    top = []
    for view, image in enumerate(images):
        mask = localization.masks[view]  # [K, H, W]
        if len(mask):
            strength = 0.5 * mask.max(0)[..., None]
            tint = palette[mask.argmax(0)]
            image = image * (1.0 - strength) + tint * strength
        pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        draw = ImageDraw.Draw(pil)
        for k, part in enumerate(localization.boxes[view]):
            if not len(part.scores) or not mask[k].any():  # the box the evidence came from, if any
                continue
            best = int(np.argmax(part.scores))
            box, color = part.boxes[best], tuple(int(c * 255) for c in PART_PALETTE[k % len(PART_PALETTE)])
            draw.rectangle([float(v) * scale for v in box], outline=color, width=2)
            draw.text((float(box[0]) * scale + 3, float(box[1]) * scale + 2),
                      f"{localization.weights.names[k]} {part.scores[best]:.2f}", fill=color)
        top.append(np.asarray(pil))
    vertices = torch.from_numpy(mesh.unit_vertices())
    colors = torch.from_numpy(part_colors(localization.weights.weights))
    with torch.no_grad():
        out = Renderer(RenderSettings()).render(
            vertices, torch.from_numpy(mesh.faces), localization.cameras, colors=colors, resolution=size
        )
    bottom = [image.permute(1, 2, 0).numpy() for image in out.color]
    count = min(len(top), len(bottom))
    return image_grid([top[:count], bottom[:count]], row_labels=["masks and boxes", "parts"])


def _write_all(result: StyleResult, folder: str, extra_record: dict) -> None:
    mesh = result.mesh
    displaced = result.displaced_vertices()
    normals = vertex_normals(displaced, mesh.faces)  # of the displaced surface, as renderers shade it
    colors_linear = result.colors_linear
    textures, extra_record = None, dict(extra_record)
    if result.maps is not None:
        textures, extra_record["texture_files"] = _write_maps(result.maps, folder)
    if textures:  # glTF keeps one uv per vertex: vertices on a UV seam are split (same position, normal)
        source, faces, uv = per_vertex_uv(mesh.faces, mesh.corner_uv)
        write_glb(os.path.join(folder, "stylized.glb"), displaced[source], faces, normals=normals[source],
                  extra_attributes={"displacement": result.displacement[source]}, uv=uv, textures=textures)
    else:
        write_glb(os.path.join(folder, "stylized.glb"), displaced, mesh.faces, colors_linear=colors_linear,
                  normals=normals, extra_attributes={"displacement": result.displacement})
    write_ply(os.path.join(folder, "stylized.ply"), displaced, mesh.faces, normals=normals,
              colors_srgb=result.colors_srgb, properties={"displacement": result.displacement})
    parts = {}
    if result.parts is not None:
        parts = {"part_names": np.array(result.parts.names), "part_weights": result.parts.weights}
    np.savez_compressed(
        os.path.join(folder, "result.npz"),
        colors_linear=colors_linear,
        colors_srgb=result.colors_srgb,
        displacement=result.displacement,
        vertices=displaced,
        faces=mesh.faces,
        **parts,
    )
    save_png(os.path.join(folder, "preview.png"), before_after_grid(result))
    curves = {k: v for k, v in result.history.items() if k != "learning_rate"}
    save_png(os.path.join(folder, "losses.png"), plot_curves(curves, title=f"losses: {result.prompt.full_text()}"))
    with open(os.path.join(folder, "run.json"), "w", encoding="utf-8") as fh:
        json.dump(run_record(result, extra_record), fh, indent=2)


def _write_maps(maps, folder: str) -> tuple[dict[str, bytes], dict]:
    """Write the baked maps' PNGs into ``folder``; returns the textures the GLB embeds and the
    files' record for run.json (the displacement's encoding)."""
    from .texture.maps import DISPLACEMENT_ZERO, png_displacement, png_normals, png_rgb8

    base_color, normal = png_rgb8(maps.base_color), png_normals(maps.normal)
    displacement, units_per_step = png_displacement(maps.displacement)
    for name, data in zip(TEXTURE_FILES, (base_color, displacement, normal), strict=True):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    record = {
        "base_color.png": "8-bit sRGB",
        "displacement.png": {"zero": DISPLACEMENT_ZERO, "units_per_step": units_per_step,
                             "meaning": "object units along the undisplaced normal = (pixel - zero) * units_per_step"},
        "normal.png": "8-bit tangent space, OpenGL convention (+Y toward +v), the detail beyond the vertices' "
                      "displacement",
    }
    return {"baseColor": base_color, "normal": normal}, record


def before_after_grid(result: StyleResult, *, views: int = PREVIEW_VIEWS, size: int = PREVIEW_SIZE) -> np.ndarray:
    """uint8 image: the input (gray), the parts styled (each in a palette color, unchanged vertices gray;
    only for a part prompt), the result, and with baked maps the result textured with its base-color
    map (its look between vertices), from ``views`` views around the object."""
    settings = result.settings
    mesh = result.mesh
    normalization = Normalization.fit(mesh.vertices)
    cameras = ring_views(views, settings.views, settings.render)
    renderer = Renderer(settings.render)
    faces = torch.from_numpy(mesh.faces)
    gray = torch.full((mesh.num_vertices, 3), BEFORE_GRAY)
    displaced = result.displaced_vertices()
    shown = [("before", mesh.vertices, {"colors": gray})]  # (label, vertices, how the renderer colors them)
    if result.parts is not None:
        shown.append(("parts", mesh.vertices, {"colors": torch.from_numpy(part_colors(result.parts.weights))}))
    shown.append(("after", displaced, {"colors": torch.from_numpy(result.colors_srgb)}))
    if result.maps is not None:
        texture = (torch.from_numpy(mesh.corner_uv), torch.from_numpy(result.maps.base_color))
        shown.append(("maps", displaced, {"texture": texture}))
    rows = []
    for _, vertices, look in shown:
        unit = torch.from_numpy(normalization.to_unit(vertices))
        with torch.no_grad():
            out = renderer.render(unit, faces, cameras, resolution=size, **look)
        rows.append([image.permute(1, 2, 0).numpy() for image in out.color])
    labels = [label for label, _, _ in shown]
    if result.references:  # the pictures the run followed, as thumbnails, in prompt order
        rows.append([thumbnail(ref.pixels, size) for _, ref in result.references])
        labels.append("image: " + ", ".join(part for part, _ in result.references))
    return image_grid(rows, row_labels=labels)


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """[size, size, 3] float32: ``pixels`` ([H, W, 3], 0..1) fitted inside the square on white."""
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    fitted = torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear", align_corners=False,
                                             antialias=True)[0].permute(1, 2, 0).numpy()
    out = np.ones((size, size, 3), np.float32)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = fitted
    return out


def run_record(result: StyleResult, extra: dict) -> dict:
    """The JSON-serializable record of a run."""
    import transformers

    prompt = result.prompt
    return {
        "prompt": prompt.full_text(),
        "parts": [{"part": p.part, "style": p.style} for p in prompt.pairs],
        "parts_source": None if result.parts is None else result.parts.source,
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
        "losses": {k: [None if math.isnan(v) else v for v in series] for k, series in result.history.items()},
    }
