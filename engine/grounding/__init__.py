"""Grounding: where each part is in a rendered image (METHOD section 5), with Grounding DINO."""

from .detector import (
    INVALID_PROPOSAL_LOGIT,
    Caption,
    Detections,
    GroundingDetector,
    build_caption,
    resized_shape,
    span_mean,
)

__all__ = [
    "INVALID_PROPOSAL_LOGIT",
    "Caption",
    "Detections",
    "GroundingDetector",
    "build_caption",
    "resized_shape",
    "span_mean",
]
