"""The small world the tiny models learn: colors, patterns, objects and their parts.

Every word here is a whole token of the tiny tokenizers (``engine.tiny_models.TINY_VOCABULARY``).
Colors are sRGB; the meaning-dependent tests judge results by the nearest of these colors.
"""

from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.65, 0.20),
    "blue": (0.10, 0.25, 0.85),
    "purple": (0.50, 0.15, 0.65),
    "pink": (0.95, 0.55, 0.75),
    "brown": (0.45, 0.28, 0.12),
    "black": (0.06, 0.06, 0.06),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
# Objects with parts (procedural samples) and without (primitives).
PART_OBJECTS: tuple[str, ...] = ("lamp", "chair", "mug")
PRIMITIVES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder", "torus")
# The parts of each object with parts, as engine.samples labels them, and a primitive's one part.
OBJECT_PARTS: dict[str, tuple[str, ...]] = {
    "lamp": ("base", "tube", "shade"), "chair": ("seat", "back", "legs"), "mug": ("body", "handle")}
PRIMITIVE_PARTS: tuple[str, ...] = ("body",)


def nearest_color(srgb: np.ndarray) -> str:
    """The vocabulary color nearest to an sRGB color [3] (Euclidean distance in sRGB)."""
    names = list(COLORS)
    table = np.array([COLORS[n] for n in names])
    return names[int(np.argmin(np.linalg.norm(table - np.asarray(srgb)[None], axis=1)))]
