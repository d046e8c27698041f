"""Synthetic detection data for the tiny Grounding DINO: renders of objects with parts, the box of
every visible part, and captions of part names (``tube . base . shade .``) as localization and the
grounding loss write them.

A sample is one view of a procedural object with parts (lamp, chair, mug), stretched at random
along its axes, either untextured gray (what localization shows the detector) or colored and
patterned (what the grounding loss shows it during stylization). A part's box is the pixel extent
of its visible vertices (:func:`engine.grounding.views.boxes_from_labels`, the same ideal boxes
``eval-localization`` scores as ``ideal boxes``). Captions list the object's parts in random order, sometimes with part
names of other objects that have no box (negatives), sometimes leaving some of the object's own
parts out (their boxes are then not labelled either, as a prompt that names only some parts
must not find the others). Everything is drawn from an explicit
generator, so a seed fixes the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cameras import fixed_views
from ..config import settings_for
from ..grounding.locate import UNTEXTURED_GRAY
from ..grounding.views import Visibility, boxes_from_labels, visibility
from ..render import Renderer
from .synthetic import Scene, SceneMesh, random_scene, scene_mesh
from .vocabulary import PART_OBJECTS

# Square render side: the tiny model's input size (models.TINY_GROUNDING_SIZE), so nothing is resized.
DETECTION_SIZE = 256
# A visible part whose box is smaller than this (pixels, either side) is not labelled.
MIN_BOX_PIXELS = 4
GRAY_SHARE = 0.4  # untextured samples, as localization renders them
NEGATIVE_SHARE = 0.5  # captions that also name 1-2 parts the object does not have
SUBSET_SHARE = 0.3  # captions that leave out some of the object's parts (prompts often name a few)
STRETCH = (0.75, 1.3)  # per-axis scale range of the shape augmentation
ELEVATION_DEGREES = (-20.0, 55.0)


@dataclass(frozen=True)
class DetectionSample:
    """One image with its caption phrases and labelled boxes.

    Attributes:
        image: [3, S, S] RGB in 0..1.
        phrases: the caption's phrases, in caption order.
        class_labels: [K] int64, the phrase index of each box.
        boxes: [K, 4] float32 ``(cx, cy, w, h)`` normalized to 0..1 (the library's label format).
        object_name: the object shown.
    """

    image: torch.Tensor
    phrases: tuple[str, ...]
    class_labels: torch.Tensor
    boxes: torch.Tensor
    object_name: str


def all_part_names() -> tuple[str, ...]:
    """Every part name of the procedural objects, in a fixed order."""
    names: list[str] = []
    for name in PART_OBJECTS:
        names += [p for p in scene_mesh(name).part_names if p not in names]
    return tuple(names)


class DetectionSamples:
    """Seeded detection samples of the procedural objects with parts."""

    def __init__(self, seed: int, *, size: int = DETECTION_SIZE, gray_share: float = GRAY_SHARE,
                 negative_share: float = NEGATIVE_SHARE, subset_share: float = SUBSET_SHARE):
        self.generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.gray_share = gray_share
        self.negative_share = negative_share
        self.subset_share = subset_share
        settings = settings_for("fast")
        self.render_settings, self.view_settings = settings.render, settings.views
        self.renderer = Renderer(settings.render)
        self.part_names = all_part_names()

    def _uniform(self, low: float, high: float, n: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _stretched(self, mesh: SceneMesh) -> torch.Tensor:
        """[V, 3] vertices scaled per axis at random, then back inside the unit sphere."""
        scaled = mesh.vertices * self._uniform(*STRETCH, 3).to(mesh.vertices.dtype)
        return scaled / scaled.norm(dim=-1).max()

    def sample(self) -> DetectionSample:
        return self.batch(1)[0]

    def batch(self, size: int) -> list[DetectionSample]:
        """``size`` samples of one object under one caption: views, stretches and colors differ.

        One caption per batch because the library's classification target assumes it: its loss
        offsets each image's phrase indices by the phrase count of that image, not of the images
        before it (transformers 5.x ``GroundingDinoImageLoss._get_target_classes_one_hot``), which
        picks the right token map only when every image of the batch has the same caption.
        """
        name = PART_OBJECTS[int(torch.randint(len(PART_OBJECTS), (1,), generator=self.generator))]
        phrases = self._caption(scene_mesh(name))
        return [self._render(random_scene(self.generator, (name,)), phrases) for _ in range(size)]

    def _caption(self, mesh: SceneMesh) -> tuple[str, ...]:
        """The object's parts in random order, sometimes a subset, sometimes with absent parts added."""
        g = self.generator
        phrases = list(mesh.part_names)
        if float(torch.rand((), generator=g)) < self.subset_share:
            keep = 1 + int(torch.randint(len(phrases) - 1, (1,), generator=g))
            phrases = [phrases[int(i)] for i in torch.randperm(len(phrases), generator=g)[:keep]]
        if float(torch.rand((), generator=g)) < self.negative_share:
            others = [p for p in self.part_names if p not in mesh.part_names]
            count = 1 + int(torch.randint(2, (1,), generator=g))
            phrases += [others[int(i)] for i in torch.randperm(len(others), generator=g)[:count]]
        order = torch.randperm(len(phrases), generator=g).tolist()
        return tuple(phrases[i] for i in order)

    def random_view(self, scene: Scene) -> tuple[torch.Tensor, Visibility]:
        """One random view of ``scene``, stretched, gray or colored: (image [3, S, S], its visibility)."""
        g = self.generator
        mesh = scene.mesh
        vertices = self._stretched(mesh)
        gray = float(torch.rand((), generator=g)) < self.gray_share
        colors = torch.full_like(scene.colors, UNTEXTURED_GRAY) if gray else scene.colors
        cameras = fixed_views(self._uniform(*ELEVATION_DEGREES).deg2rad(), self._uniform(0.0, 360.0).deg2rad(),
                              self.view_settings, self.render_settings)
        seen = visibility(vertices, mesh.faces, cameras, self.size)
        with torch.no_grad():
            image = self.renderer.render(vertices, mesh.faces, cameras, colors=colors, face_id=seen.face_id).color[0]
        return image, seen

    def _render(self, scene: Scene, phrases: tuple[str, ...]) -> DetectionSample:
        """One random view of ``scene`` with the boxes of its named parts."""
        mesh = scene.mesh
        image, seen = self.random_view(scene)
        labels, boxes = [], []
        for part, part_boxes in enumerate(boxes_from_labels(seen, mesh.labels.numpy(), len(mesh.part_names))[0]):
            if len(part_boxes.boxes) == 0 or mesh.part_names[part] not in phrases:
                continue
            x0, y0, x1, y1 = (float(v) for v in part_boxes.boxes[0])
            if min(x1 - x0, y1 - y0) < MIN_BOX_PIXELS:
                continue
            labels.append(phrases.index(mesh.part_names[part]))
            boxes.append(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
        box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) / self.size
        return DetectionSample(image, phrases, torch.tensor(labels, dtype=torch.int64), box_tensor, mesh.name)
