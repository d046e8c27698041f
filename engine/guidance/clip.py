"""CLIP guidance (METHOD section 6): global, local and geometry losses of rendered views.

Every augmented image of an iteration goes through CLIP in one batch. Within each group the
image embeddings are averaged and compared with the text embedding (T2M's view averaging);
a group's loss is ``1 - cosine similarity`` (0 when the renders match the text perfectly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import GuidanceSettings
from ..models import ClipBundle
from .augment import crop_boxes, perspective_grid, resample
from .preprocess import center_crop, normalize, resize_shortest_side


@dataclass(frozen=True)
class AugmentedBatch:
    """The augmented images of one iteration and which loss group each belongs to.

    Attributes:
        images: [B, 3, S, S] RGB in 0..1 at the model's input size.
        groups: loss name -> slice of ``images``.
    """

    images: torch.Tensor
    groups: dict[str, slice]


class ClipGuidance:
    """Scores renders against a text with a frozen CLIP."""

    def __init__(self, bundle: ClipBundle, settings: GuidanceSettings):
        self.bundle = bundle
        self.settings = settings

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """[T] texts -> [T, D] unit-norm embeddings."""
        tokens = self.bundle.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return F.normalize(_pooled(self.bundle.model.get_text_features(**tokens)), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] RGB in 0..1 at the model size -> [B, D] unit-norm embeddings (differentiable)."""
        pixels = normalize(images, self.bundle.mean, self.bundle.std)
        return F.normalize(_pooled(self.bundle.model.get_image_features(pixel_values=pixels)), dim=-1)

    def augment(
        self, color: torch.Tensor, geometry: torch.Tensor | None, generator: torch.Generator
    ) -> AugmentedBatch:
        """Build the iteration's augmented images from [N, 3, H, W] renders (0..1, white background).

        - ``global``: each view resized to the model size, perspective-distorted
          ``global_augmentations`` times;
        - ``local``: ``local_crops`` crops per view at ``local_crop_area``, each distorted too;
        - ``geometry``: the same kind of crops of the gray render, ``geometry_crops`` per view.
        """
        s = self.settings
        size = self.bundle.image_size
        n = color.shape[0]
        parts: list[torch.Tensor] = []
        groups: dict[str, slice] = {}

        def add(name: str, images: torch.Tensor) -> None:
            start = sum(p.shape[0] for p in parts)
            parts.append(images)
            groups[name] = slice(start, start + images.shape[0])

        if s.global_augmentations:
            whole = center_crop(resize_shortest_side(color, size), size)
            count = n * s.global_augmentations
            grid = perspective_grid(count, size, p=s.perspective_p, distortion=s.perspective_distortion, generator=generator)
            add("global", resample(whole, torch.arange(count) % n, grid))
        if s.local_crops:
            add("local", self._crops(color, s.local_crops, generator))
        if geometry is not None and s.geometry_crops:
            add("geometry", self._crops(geometry, s.geometry_crops, generator))
        return AugmentedBatch(images=torch.cat(parts), groups=groups)

    def losses(
        self, color: torch.Tensor, geometry: torch.Tensor | None, text: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Scalar losses per group plus ``total`` (geometry weighted by ``geometry_weight``).

        Args:
            color: [N, 3, H, W] shaded color renders in 0..1.
            geometry: [N, 3, H, W] gray renders, or None to skip the geometry loss.
            text: [D] unit-norm text embedding.
        """
        batch = self.augment(color, geometry, generator)
        embeddings = self.encode_images(batch.images)
        out: dict[str, torch.Tensor] = {}
        for name, rows in batch.groups.items():
            mean = F.normalize(embeddings[rows].mean(0), dim=-1)
            out[name] = 1.0 - (mean * text).sum()
        total = sum(v * (self.settings.geometry_weight if k == "geometry" else 1.0) for k, v in out.items())
        out["total"] = total
        return out

    def _crops(self, images: torch.Tensor, per_view: int, generator: torch.Generator) -> torch.Tensor:
        """``per_view`` random crops of each image, perspective-distorted, at the model size."""
        s = self.settings
        size = self.bundle.image_size
        count = images.shape[0] * per_view
        boxes = crop_boxes(count, area=s.local_crop_area, generator=generator)
        grid = perspective_grid(count, size, p=s.perspective_p, distortion=s.perspective_distortion, generator=generator)
        grid = boxes[:, None, None, :2] + boxes[:, None, None, 2:] * grid
        return resample(images, torch.arange(count) % images.shape[0], grid)


def _pooled(output) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output in 5)."""
    return output if torch.is_tensor(output) else output.pooler_output
