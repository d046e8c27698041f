"""Image-space guidance: CLIP losses with in-torch preprocessing and augmentations."""

from .clip import AugmentedBatch, ClipGuidance

__all__ = ["AugmentedBatch", "ClipGuidance"]
