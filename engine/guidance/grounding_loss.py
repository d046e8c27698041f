"""The grounding-space part-level style loss (METHOD section 5.2, 3DStyleGLIP).

On a stylized render, the grounding model scores its dense encoder proposals, which sit at fixed
image positions, under two captions: the part caption (``base . tube .``, no gradient) selects the
regions that show part k (score above a threshold), the style caption (``pottery base . gold tube
.``) scores them with gradient to the image. The loss is the mean over views and selected (region,
part) pairs of (1 - style score)^2: wherever the model sees "tube", it should also see "gold tube".
Both captions read one pass of the image backbone, which does not depend on the caption, and the
captions' half of the forward (the text backbone), which does not depend on the images, is computed
once for the run.
"""

from __future__ import annotations

import torch

from ..grounding.detector import GroundingDetector
from ..grounding.proposals import ImageEncoding, TextEncoding


class GroundingPartLoss:
    """``[N, 3, H, W] renders (0..1) -> scalar`` grounding-space loss for fixed part/style phrases."""

    def __init__(self, detector: GroundingDetector, parts: list[str], phrases: list[str], *, threshold: float = 0.25):
        if len(parts) != len(phrases) or not parts:
            raise ValueError("give one style phrase per part, and at least one part")
        self.detector = detector
        self.part_caption = detector.caption(parts)
        self.style_caption = detector.caption(phrases)
        self.threshold = threshold
        self._texts: dict[int, tuple[TextEncoding, TextEncoding]] = {}  # images per call -> (part, style)

    def caption_texts(self, images: int) -> tuple[TextEncoding, TextEncoding]:
        """The part and style captions' :meth:`GroundingDetector.encode_caption` for ``images`` images,
        computed on first use and kept (a run's grounding steps all render the same number of views)."""
        if images not in self._texts:
            self._texts[images] = (self.detector.encode_caption(self.part_caption, images),
                                   self.detector.encode_caption(self.style_caption, images))
        return self._texts[images]

    def selection(self, images: torch.Tensor | ImageEncoding) -> torch.Tensor:
        """[N, Q, P] bool: proposals that show each part (part caption, no gradient); ``images`` [N, 3,
        H, W] in 0..1 or their :meth:`GroundingDetector.encode_images`."""
        with torch.no_grad():
            encoding = images if isinstance(images, ImageEncoding) else self.detector.encode_images(images)
            _, scores = self.detector.phrase_scores(encoding, self.part_caption, proposals=True,
                                                    text=self.caption_texts(encoding.features.shape[0])[0])
        return scores > self.threshold

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        encoding = self.detector.encode_images(images)
        selected = self.selection(encoding)
        style_text = self.caption_texts(encoding.features.shape[0])[1]
        _, style = self.detector.phrase_scores(encoding, self.style_caption, proposals=True, text=style_text)
        if not bool(selected.any()):
            return style.sum() * 0.0  # nothing shows a part: no signal, but a well-formed graph
        return ((1.0 - style[selected]) ** 2).mean()
