"""Box-prompted part masks with a SAM 2-family segmenter (METHOD section 5.1, masks instead of boxes).

A part's box in a view says roughly where the part is; the segmenter says which pixels are the
part. Images are resized (square, bilinear) and normalized inside torch as SAM 2's image processor
does, box prompts are scaled to the resized frame, the image is encoded once and all its boxes are
decoded together, and the low-resolution mask logits (a quarter of the model's input side) are
resized back to the view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..devices import bfloat16_autocast
from ..models import SegmenterBundle


class BoxSegmenter:
    """Pixel masks from box prompts with a frozen SAM 2 / EdgeTAM."""

    def __init__(self, bundle: SegmenterBundle, *, bfloat16: bool = False):
        self.bundle = bundle
        self.bfloat16 = bfloat16  # run the model under bf16 autocast
        self.model = bundle.model
        self.size = int(bundle.size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] RGB in 0..1 -> [N, 3, size, size] normalized pixel values (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W] RGB in 0..1, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)
        mean = torch.as_tensor(self.bundle.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.bundle.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def mask_logits(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits of box prompts, differentiable (for training).

        Args:
            images: [N, 3, H, W] RGB in 0..1 on the model's device.
            boxes: [N, B, 4] ``(x0, y0, x1, y1)`` in pixels of the H x W images, B boxes per image.

        Returns:
            [N, B, size / 4, size / 4] logits (> 0: the prompted object).
        """
        height, width = images.shape[-2:]
        scale = torch.tensor([self.size / width, self.size / height] * 2, dtype=boxes.dtype, device=boxes.device)
        dtype = next(self.model.parameters()).dtype
        with bfloat16_autocast(self.device, self.bfloat16):
            outputs = self.model(pixel_values=self.preprocess(images).to(dtype), input_boxes=boxes * scale,
                                 multimask_output=False)
        return outputs.pred_masks[:, :, 0].float()

    @torch.no_grad()
    def masks(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mask probabilities of each image's boxes at the images' size (no gradient).

        Args:
            images: [N, 3, H, W] RGB in 0..1 on the model's device.
            boxes: per image, [B_i, 4] ``(x0, y0, x1, y1)`` pixel boxes (B_i may be 0).

        Returns:
            per image, [B_i, H, W] float32 in 0..1.
        """
        height, width = images.shape[-2:]
        out = []
        for image, image_boxes in zip(images, boxes, strict=True):
            if len(image_boxes) == 0:
                out.append(torch.zeros(0, height, width, device=images.device))
                continue
            logits = self.mask_logits(image[None], image_boxes[None].to(images.device, torch.float32))[0]
            logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            out.append(logits.sigmoid())
        return out
