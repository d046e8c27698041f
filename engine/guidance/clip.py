"""CLIP guidance (METHOD section 6): global, local and geometry losses of rendered views.

Every augmented image of an iteration goes through CLIP in one batch. Within each group the
image embeddings are averaged and compared with the text embedding (T2M's view averaging);
a group's loss is ``1 - cosine similarity`` (0 when the renders match the text perfectly).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import GuidanceSettings
from ..devices import bfloat16_autocast, use_bfloat16
from ..models import ClipBundle
from .augment import crop_boxes, cycling_sources, grid_base, perspective_grid, resample
from .clip_image import image_embeddings
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
        self._grid_bases: dict[torch.device, torch.Tensor] = {}  # device -> augment.grid_base at the model size
        self._loss_weights: dict[tuple, torch.Tensor] = {}  # (device, weights) -> [S] weights (_weighted_sum)

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    @functools.cached_property
    def bfloat16(self) -> bool:
        """Whether the steps' CLIP forwards run under bf16 autocast (``guidance.precision`` on the model's device)."""
        return use_bfloat16(self.settings.precision, self.device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """[T] texts -> [T, D] unit-norm embeddings."""
        tokens = self.bundle.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return F.normalize(_pooled(self.bundle.model.get_text_features(**tokens)), dim=-1)

    @torch.no_grad()
    def encode_reference(self, pixels, *, crops: int, seed: int) -> torch.Tensor:
        """A reference picture ([H, W, 3] sRGB 0..1) -> [D] unit-norm target: the mean embedding of
        ``crops`` augmented crops (engine.references.augmented_views), so its look, not its framing."""
        from ..references import augmented_views

        views = augmented_views(pixels, count=crops, size=self.bundle.image_size, seed=seed).to(self.device)
        return F.normalize(self.encode_images(views).mean(0), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] RGB in 0..1 at the model size -> [B, D] unit-norm embeddings (differentiable)."""
        pixels = normalize(images, self.bundle.mean, self.bundle.std)
        return F.normalize(image_embeddings(self.bundle.model, pixels), dim=-1)

    def augment(
        self, color: torch.Tensor, geometry: torch.Tensor | None, generator: torch.Generator, *, local: bool = True
    ) -> AugmentedBatch:
        """Build the iteration's augmented images from [N, 3, H, W] renders (0..1, white background).

        - ``global``: each view resized to the model size, perspective-distorted
          ``global_augmentations`` times;
        - ``local``: ``local_crops`` crops per view at ``local_crop_area``, each distorted too
          (skipped when ``local`` is False: part prompts crop the parts instead);
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
            grid = self._perspective_grids(count, generator, color.device)
            add("global", resample(whole, cycling_sources(count, n), grid))
        if local and s.local_crops:
            add("local", self._crops(color, s.local_crops, generator))
        if geometry is not None and s.geometry_crops:
            add("geometry", self._crops(geometry, s.geometry_crops, generator))
        return AugmentedBatch(images=torch.cat(parts), groups=groups)

    def losses(
        self,
        color: torch.Tensor,
        geometry: torch.Tensor | None,
        text: torch.Tensor,
        generator: torch.Generator,
        *,
        local: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Scalar losses per group plus ``total`` (geometry weighted by ``geometry_weight``).

        Args:
            color: [N, 3, H, W] shaded color renders in 0..1.
            geometry: [N, 3, H, W] gray renders, or None to skip the geometry loss.
            text: [D] unit-norm text embedding.
            local: include the local crops.
        """
        batch = self.augment(color, geometry, generator, local=local)
        return self._group_losses(self._step_embeddings(batch.images), batch.groups, text)

    def part_losses(
        self, color: torch.Tensor, masks: torch.Tensor, texts: torch.Tensor, generator: torch.Generator
    ) -> list[torch.Tensor | None]:
        """One loss per part: its crops, isolated on white by its mask, against its style phrase.

        Args:
            color: [N, 3, H, W] shaded color renders in 0..1.
            masks: [N, P, H, W] per-part weights rendered to pixels (0..1, no gradient needed).
            texts: [P, D] unit-norm embeddings of the parts' style phrases.
        Returns:
            per part, ``1 - cos(mean crop embedding, text)``, or None where no view shows the part.
        """
        crops = self.part_crops(color, masks, generator)
        if crops is None:
            return [None] * masks.shape[1]
        return self._per_part_losses(self._step_embeddings(crops[0]), crops[1], texts)

    def step_losses(
        self,
        color: torch.Tensor,
        geometry: torch.Tensor | None,
        text: torch.Tensor,
        generator: torch.Generator,
        *,
        masks: torch.Tensor | None = None,
        part_texts: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor | None] | None]:
        """An optimization step's CLIP losses with every image in one forward: :meth:`losses` (with
        local crops when no ``masks`` are given) and, for a part prompt (``masks`` [N, P, H, W] and
        ``part_texts`` [P, D]), :meth:`part_losses`, drawing from ``generator`` in that order.

        Returns (group losses with ``total``, per-part losses or None without a part prompt). Here
        ``total`` also counts each part's loss, weighted by ``part_weight``: the step's whole CLIP loss,
        all of it one weighted sum of one [S] vector of losses (:func:`segment_losses`)."""
        batch = self.augment(color, geometry, generator, local=masks is None)
        crops = None if masks is None else self.part_crops(color, masks, generator)
        embeddings = self._step_embeddings(batch.images if crops is None else torch.cat((batch.images, crops[0])))
        parts = None if masks is None else [None] * masks.shape[1]
        if crops is None:
            return self._group_losses(embeddings, batch.groups, text), parts
        count = batch.images.shape[0]
        shown = _part_rows(crops[1], masks.shape[1], start=count)  # part -> its rows, for the parts some view shows
        group_names = list(batch.groups)
        values = segment_losses(embeddings, [*batch.groups.values(), *shown.values()],
                                torch.cat((text.expand(len(group_names), -1), *_rows_of(part_texts, shown))))
        weights = [*self._group_weights(group_names), *[self.settings.part_weight] * len(shown)]
        losses = dict(zip(group_names, values[:len(group_names)], strict=True))
        losses["total"] = self._weighted_sum(values, weights)
        for index, part in enumerate(shown, start=len(group_names)):
            parts[part] = values[index]
        return losses, parts

    def _step_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_images` in the arithmetic ``guidance.precision`` gives, as float32 [B, D]."""
        with bfloat16_autocast(self.device, self.bfloat16):
            return self.encode_images(images).float()

    def _group_losses(self, embeddings: torch.Tensor, groups: dict[str, slice], text: torch.Tensor):
        """Per group ``1 - cos(mean embedding, text)``, plus their weighted ``total``."""
        names = list(groups)
        values = segment_losses(embeddings, list(groups.values()), text.expand(len(names), -1))
        out = dict(zip(names, values, strict=True))
        out["total"] = self._weighted_sum(values, self._group_weights(names))
        return out

    def _per_part_losses(self, embeddings: torch.Tensor, owner: torch.Tensor, texts: torch.Tensor):
        """[B, D] part-crop embeddings with their [B] part index (on the CPU, grouped by part in
        increasing order, as :meth:`part_crops` returns them) -> per part a loss, or None."""
        shown = _part_rows(owner, texts.shape[0])
        losses: list[torch.Tensor | None] = [None] * texts.shape[0]
        if shown:
            values = segment_losses(embeddings, list(shown.values()), torch.cat(_rows_of(texts, shown)))
            for index, part in enumerate(shown):
                losses[part] = values[index]
        return losses

    def _group_weights(self, names: list[str]) -> list[float]:
        """Each group's weight in the total: ``geometry_weight`` for the geometry group, else 1."""
        return [self.settings.geometry_weight if name == "geometry" else 1.0 for name in names]

    def _weighted_sum(self, values: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """``sum(weights * values)`` for [S] ``values``; the weights' tensor is made once per device and
        weights (a copy to a GPU made at every step would wait for it)."""
        key = (values.device, tuple(weights))
        if key not in self._loss_weights:
            self._loss_weights[key] = torch.tensor(weights, dtype=values.dtype, device=values.device)
        return (values * self._loss_weights[key]).sum()

    def part_crops(
        self, color: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``part_crops`` crops of each part, each from a random view that shows it:
        ([B, 3, S, S] images, [B] part index).

        Each crop is the part's mask box with a margin (aspect ratio at most 2:1, so thin parts
        are not lost in background), jittered in scale and position, perspective-distorted, and
        resampled to the model size; pixels outside the part's mask blend to white. A part no
        view shows with ``part_min_pixels`` pixels gets no crop.
        """
        s = self.settings
        hard = (masks.detach() > 0.5).cpu()  # [N, P, H, W]: one read from the device, for the counts and the boxes
        counts = hard.flatten(2).sum(-1)  # [N, P]
        views, parts = [], []
        for part in range(masks.shape[1]):
            showing = (counts[:, part] >= s.part_min_pixels).nonzero().squeeze(1)
            if showing.numel():
                pick = torch.randint(showing.numel(), (s.part_crops,), generator=generator)
                views.append(showing[pick])
                parts.append(torch.full((s.part_crops,), part, dtype=torch.int64))
        if not views:
            return None
        views, parts = torch.cat(views), torch.cat(parts)
        boxes = _mask_boxes(hard[views, parts])  # [B, 4] centre x, centre y, half w, half h (normalized)
        count = boxes.shape[0]
        scale = 1.1 + 0.2 * torch.rand(count, generator=generator)
        shift = (torch.rand(count, 2, generator=generator) * 2.0 - 1.0) * 0.1
        half = boxes[:, 2:] * scale[:, None]
        half = torch.maximum(half, half.amax(1, keepdim=True) / 2.0).clamp(max=1.0)  # aspect <= 2:1
        centre = boxes[:, :2] + shift * half
        grid = self._perspective_grids(count, generator, color.device)
        centre, half = centre.to(color.device), half.to(color.device)
        grid = centre[:, None, None, :] + half[:, None, None, :] * grid
        on_device = views.to(color.device), parts.to(color.device)
        mask_channel = masks.detach().to(color.device)[on_device].unsqueeze(1)  # [B, 1, H, W]
        picked = torch.cat((color.index_select(0, on_device[0]), mask_channel.to(color.dtype)), 1)
        sampled = resample(picked, None, grid, fill=0.0)  # crop i samples picked image i
        rgb, alpha = sampled[:, :3], sampled[:, 3:].clamp(0.0, 1.0)
        return rgb * alpha + (1.0 - alpha), parts

    def _perspective_grids(self, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """[count, S, S, 2] :func:`perspective_grid` s at the model size S on ``device``, with this
        guidance's settings; the pixel centres they map (``grid_base``) are made once per device."""
        s, size = self.settings, self.bundle.image_size
        if device not in self._grid_bases:
            self._grid_bases[device] = grid_base(size, device=device)
        return perspective_grid(count, size, p=s.perspective_p, distortion=s.perspective_distortion,
                                generator=generator, device=device, base=self._grid_bases[device])

    def _crops(self, images: torch.Tensor, per_view: int, generator: torch.Generator) -> torch.Tensor:
        """``per_view`` random crops of each image, perspective-distorted, at the model size."""
        s = self.settings
        count = images.shape[0] * per_view
        boxes = crop_boxes(count, area=s.local_crop_area, generator=generator)
        grid = self._perspective_grids(count, generator, images.device)
        boxes = boxes.to(images.device)
        grid = boxes[:, None, None, :2] + boxes[:, None, None, 2:] * grid
        return resample(images, cycling_sources(count, images.shape[0]), grid)


def segment_losses(embeddings: torch.Tensor, segments: list[slice], targets: torch.Tensor) -> torch.Tensor:
    """[S] ``1 - cos(mean of a segment's embeddings, its target)``, for every segment at once.

    Args:
        embeddings: [B, D] image embeddings.
        segments: S slices of ``embeddings``' rows (a loss group, or one part's crops).
        targets: [S, D] unit-norm text embeddings, one per segment.

    Each segment's mean is its own reduction, as the losses computed one by one had it; the
    normalization and the cosine are one operation each for all segments, and so is their backward:
    a step's losses are some 50 operations, forward and backward, instead of about 150.
    """
    means = torch.stack([embeddings[rows].mean(0) for rows in segments])  # slices: no index copied over
    return 1.0 - (F.normalize(means, dim=-1) * targets).sum(-1)


def _part_rows(owner: torch.Tensor, parts: int, *, start: int = 0) -> dict[int, slice]:
    """Part -> the slice of its rows, for the parts with at least one, from the [B] part index of
    rows grouped by part in increasing order (on the CPU) that begin at row ``start``."""
    counts = torch.bincount(owner, minlength=parts).tolist()
    if not torch.equal(owner, torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))):
        raise ValueError("part crops must come grouped by part, in increasing part order")
    rows: dict[int, slice] = {}
    for part, count in enumerate(counts):
        if count:
            rows[part] = slice(start, start + count)
        start += count
    return rows


def _rows_of(table: torch.Tensor, indices) -> list[torch.Tensor]:
    """[1, ...] views of ``table``'s rows at ``indices``, to concatenate: unlike indexing with a list,
    no index is copied to the table's device (on a GPU, a copy that waits for it)."""
    return [table[index:index + 1] for index in indices]


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[C, S, S] bool masks (non-empty, square images) -> [C, 4] (cx, cy, half w, half h) in
    grid_sample's normalized coordinates, covering the mask's pixels. Columns and rows are handled
    together, as [C, 2, S] (x, y): fewer operations, each an operation a step waits for on its host."""
    size = masks.shape[-1]
    lines = torch.stack((masks.any(1), masks.any(2)), dim=1)  # [C, 2, S]: columns and rows with a pixel
    index = torch.arange(size)
    low = torch.where(lines, index, size).amin(-1)  # [C, 2]: x0, y0
    high = torch.where(lines, index, -1).amax(-1) + 1  # x1, y1
    to_unit = 2.0 / size
    return torch.cat(((low + high) * 0.5 * to_unit - 1.0, (high - low) * 0.5 * to_unit), dim=1).float()


def _pooled(output) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, an output in 5)."""
    return output if torch.is_tensor(output) else output.pooler_output
