"""Synthetic box-prompt segmentation data for the tiny segmenter: renders of objects with parts, a
box around a visible part, and that part's exact pixel mask.

Views are drawn as for the tiny Grounding DINO (:class:`DetectionSamples`: the procedural objects
with parts, stretched at random, gray as localization renders them or colored and patterned). The
mask of a part is known exactly: the renderer's face id of each pixel names the face, whose vertices
carry the part label. The prompt box is the part's pixel extent with each side moved at random by up
to :data:`BOX_JITTER` of the box's size, as a detector's box would be off; the segmenter learns to
answer "the part this box is about", not "everything inside the box".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .grounding_data import DetectionSamples
from .synthetic import random_scene
from .vocabulary import PART_OBJECTS

SEGMENT_SIZE = 256  # the tiny segmenter's input side (models.TINY_SEGMENTER_SIZE)
MASK_SCALE = 4  # low-resolution masks are a quarter of the input side (SAM 2's mask decoder)
BOX_JITTER = 0.15  # each side of a prompt box moves by up to this share of the box's width / height
WIDEN_SHARE = 0.4  # prompts whose box is first widened across a thin part
WIDEN_RANGE = (0.1, 0.5)  # ... to at least this share of its longer side
MIN_PART_PIXELS = 12
BOXES_PER_IMAGE = 2


@dataclass(frozen=True)
class SegmentationBatch:
    """Images with box prompts and the prompted parts' masks.

    Attributes:
        images: [B, 3, S, S] RGB in 0..1.
        boxes: [B, P, 4] ``(x0, y0, x1, y1)`` pixels of the S x S image.
        masks: [B, P, S / 4, S / 4] float32 in 0..1: each low-resolution pixel's share covered by the part.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def face_labels(faces: torch.Tensor, vertex_labels: torch.Tensor) -> torch.Tensor:
    """[F] the part of each face of [F, 3] ``faces``: the label of its first vertex (parts are not
    welded to each other in the procedural objects, so a face's vertices agree)."""
    return vertex_labels[faces[:, 0]]


def part_map(face_id: torch.Tensor, labels_of_faces: torch.Tensor) -> torch.Tensor:
    """[..., H, W] face ids (-1 background) -> [..., H, W] part labels (-1 background)."""
    return torch.where(face_id >= 0, labels_of_faces[face_id.clamp(min=0)], -1)


def part_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """The pixel extent ``(x0, y0, x1, y1)`` of a [H, W] bool mask (pixel edges, not centres)."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


class SegmentationSamples(DetectionSamples):
    """Seeded segmentation batches of the procedural objects with parts."""

    def __init__(self, seed: int, *, size: int = SEGMENT_SIZE, boxes_per_image: int = BOXES_PER_IMAGE, **kwargs):
        super().__init__(seed, size=size, **kwargs)
        self.boxes_per_image = boxes_per_image

    def segmentation_batch(self, size: int) -> SegmentationBatch:
        images, boxes, masks = [], [], []
        while len(images) < size:
            found = self._segmentation_view()
            if found is not None:
                images.append(found[0])
                boxes.append(found[1])
                masks.append(found[2])
        return SegmentationBatch(torch.stack(images), torch.stack(boxes), torch.stack(masks))

    def _segmentation_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One view with ``boxes_per_image`` prompted parts, or None when no part is visible enough."""
        image, parts, mesh = self._view()
        visible = self._visible_parts(parts, len(mesh.part_names))
        if not visible:
            return None
        picks = torch.randint(len(visible), (self.boxes_per_image,), generator=self.generator)
        chosen = [visible[int(i)] for i in picks]
        boxes = torch.stack([self._prompt_box(parts == k) for k in chosen])
        masks = torch.stack([F.avg_pool2d((parts == k)[None].float(), MASK_SCALE)[0] for k in chosen])
        return image, boxes, masks

    def labelled_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, str] | None:
        """One view and one prompted part: ``(image [3, S, S], box [4], exact mask [S, S] bool, object,
        part)``, or None when no part is visible enough."""
        image, parts, mesh = self._view()
        visible = self._visible_parts(parts, len(mesh.part_names))
        if not visible:
            return None
        k = visible[int(torch.randint(len(visible), (1,), generator=self.generator))]
        return image, self._prompt_box(parts == k), parts == k, mesh.name, mesh.part_names[k]

    def _view(self):
        """A random object, stretch, coloring and view -> (image [3, S, S], part map [S, S], scene mesh)."""
        g = self.generator
        name = PART_OBJECTS[int(torch.randint(len(PART_OBJECTS), (1,), generator=g))]
        scene = random_scene(g, (name,))
        image, seen = self.random_view(scene)
        return image, part_map(seen.face_id[0], face_labels(scene.mesh.faces, scene.mesh.labels)), scene.mesh

    @staticmethod
    def _visible_parts(parts: torch.Tensor, count: int) -> list[int]:
        return [k for k in range(count) if int((parts == k).sum()) >= MIN_PART_PIXELS]

    def _prompt_box(self, mask: torch.Tensor) -> torch.Tensor:
        """[4] the extent of a [S, S] bool mask, sometimes widened across a thin part (WIDEN_SHARE),
        then each side moved at random by up to BOX_JITTER of the box's size."""
        g = self.generator
        x0, y0, x1, y1 = part_box(mask)
        if float(torch.rand((), generator=g)) < WIDEN_SHARE:
            low, high = WIDEN_RANGE
            least = max(x1 - x0, y1 - y0) * (low + (high - low) * float(torch.rand((), generator=g)))
            grow_x, grow_y = max(0.0, least - (x1 - x0)) / 2, max(0.0, least - (y1 - y0)) / 2
            x0, x1, y0, y1 = x0 - grow_x, x1 + grow_x, y0 - grow_y, y1 + grow_y
        w, h = x1 - x0, y1 - y0
        shift = (torch.rand(4, generator=g) * 2.0 - 1.0) * BOX_JITTER * torch.tensor((w, h, w, h))
        return (torch.tensor((x0, y0, x1, y1)) + shift).clamp(0, self.size)
