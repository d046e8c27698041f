"""Synthetic captioned renders for training the tiny CLIP, made with the project's own renderer.

A *scene* is an object (a procedural sample with parts, or a primitive) whose parts get colors and
patterns from the vocabulary. Each scene gives images the way guidance shows them to CLIP: whole
views perspective-distorted on white with the whole caption (``a red mug``, ``red base, blue tube
and green shade``), and part crops isolated on white with the part's phrase (``red base``).
Everything is drawn from an explicit generator, so a seed fixes the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import trimesh

from ..cameras import fixed_views
from ..config import GuidanceSettings, settings_for
from ..guidance.augment import perspective_grid, resample
from ..guidance.clip import ClipGuidance
from ..mesh import mesh_from_arrays
from ..render import Renderer
from ..samples import sample_mesh
from .vocabulary import COLORS, PART_OBJECTS, PATTERNS, PRIMITIVE_PARTS, PRIMITIVES, nearest_color

SCENE_FACES = 5000
IMAGE_SIZE = 224


@dataclass(frozen=True)
class SceneMesh:
    """A unit-frame mesh with per-vertex part labels. vertices [V, 3], faces [F, 3], labels [V]."""

    name: str
    vertices: torch.Tensor
    faces: torch.Tensor
    labels: torch.Tensor
    part_names: tuple[str, ...]


@cache
def scene_mesh(name: str) -> SceneMesh:
    """The object ``name`` normalized to the unit sphere (cached)."""
    if name in PART_OBJECTS:
        mesh = sample_mesh(name, SCENE_FACES)
        labels, parts = mesh.labels, mesh.label_names
    else:
        shapes = {
            "sphere": lambda: trimesh.creation.icosphere(subdivisions=4),
            "cube": lambda: trimesh.creation.box(extents=(1.4, 1.4, 1.4)).subdivide().subdivide().subdivide(),
            "cone": lambda: trimesh.creation.cone(radius=0.8, height=1.6, sections=64),
            "cylinder": lambda: trimesh.creation.cylinder(radius=0.7, height=1.4, sections=64),
            "torus": lambda: trimesh.creation.torus(major_radius=0.8, minor_radius=0.3),
        }
        shape = shapes[name]()
        mesh = mesh_from_arrays(shape.vertices, shape.faces, name=name)
        labels, parts = np.zeros(mesh.num_vertices, np.int64), PRIMITIVE_PARTS
    unit = mesh.unit_vertices()
    return SceneMesh(name, torch.from_numpy(unit), torch.from_numpy(mesh.faces), torch.from_numpy(labels), tuple(parts))


def pattern_colors(
    vertices: torch.Tensor, pattern: str, color: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """[V, 3] colors of ``pattern`` in ``color`` over white, from unit-frame positions [V, 3]."""
    white = torch.tensor(
        COLORS["white"] if not torch.allclose(color, torch.tensor(COLORS["white"])) else COLORS["gray"]
    )
    if pattern == "plain":
        return color.expand(vertices.shape[0], 3)
    freq = 3.0 + 4.0 * float(torch.rand((), generator=generator))
    axis = torch.nn.functional.normalize(torch.randn(3, generator=generator), dim=0)
    if pattern == "striped":
        on = torch.sin(freq * torch.pi * (vertices @ axis)) > 0
    elif pattern == "checkered":
        cells = torch.floor(vertices * freq).sum(-1)
        on = (cells % 2) == 0
    else:  # dotted
        cell = vertices * freq
        on = (cell - cell.round()).norm(dim=-1) < 0.3
    return torch.where(on[:, None], color.expand(vertices.shape[0], 3), white.expand(vertices.shape[0], 3))


def striped_picture(color: str = "blue", *, seed: int = 1, size: int = 224) -> np.ndarray:
    """[size, size, 3] float32 sRGB: a ``color``-striped cylinder on white from the front, drawn as the
    tiny models' training pictures are (a reference picture the tiny CLIP can read)."""
    from ..cameras import ring_views

    cylinder = scene_mesh("cylinder")
    colors = pattern_colors(cylinder.vertices.float(), "striped", torch.tensor(COLORS[color]),
                            torch.Generator().manual_seed(seed))
    settings = settings_for("fast")
    cameras = ring_views(1, settings.views, settings.render)
    rendered = Renderer(settings.render).render(cylinder.vertices.float(), cylinder.faces, cameras, colors=colors,
                                                resolution=size)
    return rendered.color[0].permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class Scene:
    """One colored object: its mesh, per-vertex colors [V, 3], and captions."""

    mesh: SceneMesh
    colors: torch.Tensor
    caption: str
    part_phrases: tuple[str, ...]


def random_scene(generator: torch.Generator, objects: tuple[str, ...] = PART_OBJECTS + PRIMITIVES) -> Scene:
    """One of ``objects`` with a color (and pattern) per part, captioned like the prompts guidance scores."""
    names = objects
    mesh = scene_mesh(names[int(torch.randint(len(names), (1,), generator=generator))])
    color_names = list(COLORS)
    same = len(mesh.part_names) == 1 or float(torch.rand((), generator=generator)) < 0.35
    k = 1 if same else len(mesh.part_names)
    chosen = [color_names[int(i)] for i in torch.randperm(len(color_names), generator=generator)[:k]]
    chosen = chosen * len(mesh.part_names) if same else chosen
    plain = float(torch.rand((), generator=generator)) < 0.6
    patterns = ["plain" if plain else PATTERNS[1 + int(torch.randint(3, (1,), generator=generator))] for _ in chosen]
    colors = torch.zeros(mesh.vertices.shape[0], 3)
    bases = [_part_color(color, generator) for color in chosen[: 1 if same else len(chosen)]]
    bases = bases * len(mesh.part_names) if same else bases
    chosen = [nearest_color(base.numpy()) for base in bases]
    for part, (base, pattern) in enumerate(zip(bases, patterns, strict=True)):
        rows = mesh.labels == part
        colors[rows] = pattern_colors(mesh.vertices[rows], pattern, base, generator)
    words = [f"{p} {c}" if p != "plain" else c for c, p in zip(chosen, patterns, strict=True)]
    if same:
        caption = f"a {words[0]} {mesh.name}"
        phrases = tuple(f"{words[0]} {part}" for part in mesh.part_names)
    else:
        phrases = tuple(f"{w} {part}" for w, part in zip(words, mesh.part_names, strict=True))
        caption = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    return Scene(mesh, colors, caption, phrases)


def _part_color(name: str, generator: torch.Generator) -> torch.Tensor:
    """An sRGB color for a part: half the time the vocabulary color ``name`` with a little jitter,
    half the time uniform in the RGB cube. Captions name the nearest vocabulary color, so the model
    learns the whole color space (optimization starts from gray and moves through it), not only
    the vocabulary's points."""
    if float(torch.rand((), generator=generator)) < 0.5:
        return torch.rand(3, generator=generator)
    jitter = (torch.rand(3, generator=generator) - 0.5) * 0.08
    return (torch.tensor(COLORS[name]) + jitter).clamp(0, 1)


class SyntheticBatches:
    """Endless batches of (images [B, 3, 224, 224] in 0..1, captions [B]) from seeded scenes."""

    def __init__(self, seed: int, *, views_per_scene: int = 2, part_crop_share: float = 0.5):
        self.generator = torch.Generator().manual_seed(seed)
        self.views_per_scene = views_per_scene
        self.part_crop_share = part_crop_share
        settings = settings_for("fast")
        self.render_settings, self.view_settings = settings.render, settings.views
        self.renderer = Renderer(settings.render)
        self.cropper = ClipGuidance(_CropOnly(), GuidanceSettings(part_crops=1, part_min_pixels=32))

    def scene_images(self, scene: Scene) -> tuple[torch.Tensor, list[str]]:
        """Images of one scene and their captions."""
        g = self.generator
        n = self.views_per_scene
        elevation = (torch.rand(n, generator=g, dtype=torch.float64) * 70.0 - 20.0).deg2rad()
        azimuth = (torch.rand(n, generator=g, dtype=torch.float64) * 360.0).deg2rad()
        cameras = fixed_views(elevation, azimuth, self.view_settings, self.render_settings)
        weights = torch.nn.functional.one_hot(scene.mesh.labels, len(scene.mesh.part_names)).float()
        with torch.no_grad():
            out = self.renderer.render(
                scene.mesh.vertices,
                scene.mesh.faces,
                cameras,
                colors=scene.colors,
                attributes=weights,
                resolution=IMAGE_SIZE,
            )
        if float(torch.rand((), generator=g)) < self.part_crop_share and len(scene.mesh.part_names) > 1:
            found = self.cropper.part_crops(out.color, out.attributes, g)
            if found is not None:
                images, owner = found
                return images, [scene.part_phrases[int(i)] for i in owner]
        grid = perspective_grid(n, IMAGE_SIZE, p=0.8, distortion=0.5, generator=g, device=out.color.device)
        return resample(out.color, None, grid), [scene.caption] * n

    def batch(self, size: int) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        while sum(i.shape[0] for i in images) < size:
            scene_images, scene_captions = self.scene_images(random_scene(self.generator))
            images.append(scene_images)
            captions += scene_captions
        return torch.cat(images)[:size], captions[:size]


class _CropOnly:
    """Stands in for a CLIP bundle where only the image size is read (part crops)."""

    image_size = IMAGE_SIZE
