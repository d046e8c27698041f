"""The grounding-space part-level style loss (METHOD section 5.2, 3DStyleGLIP).

On a stylized render, the grounding model runs twice over its dense encoder proposals, which sit
at fixed image positions: once with the part caption (``base . tube .``, no gradient) to select
the regions that show part k (score above a threshold), once with the style caption
(``pottery base . gold tube .``) with gradient to the image. The loss is the mean over views and
selected (region, part) pairs of (1 - style score)^2: wherever the model sees "tube", it should
also see "gold tube".
"""

from __future__ import annotations

import torch

from ..grounding.detector import GroundingDetector


class GroundingPartLoss:
    """``[N, 3, H, W] renders (0..1) -> scalar`` grounding-space loss for fixed part/style phrases."""

    def __init__(self, detector: GroundingDetector, parts: list[str], phrases: list[str], *, threshold: float = 0.25):
        if len(parts) != len(phrases) or not parts:
            raise ValueError("give one style phrase per part, and at least one part")
        self.detector = detector
        self.part_caption = detector.caption(parts)
        self.style_caption = detector.caption(phrases)
        self.threshold = threshold

    def selection(self, images: torch.Tensor) -> torch.Tensor:
        """[N, Q, P] bool: proposals that show each part (part caption, no gradient)."""
        with torch.no_grad():
            _, scores = self.detector.phrase_scores(images.detach(), self.part_caption, proposals=True)
        return scores > self.threshold

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        selected = self.selection(images)
        _, style = self.detector.phrase_scores(images, self.style_caption, proposals=True)
        if not bool(selected.any()):
            return style.sum() * 0.0  # nothing shows a part: no signal, but a well-formed graph
        return ((1.0 - style[selected]) ** 2).mean()
