"""What a stylization leaves on a mesh: :class:`SurfaceStyle` (the per-vertex look) and
:class:`StyleResult` (that look with everything needed to report, export or reuse the run).

Both are in the mesh's own object frame and units. Their file forms are written and read by
:mod:`engine.export` (``result.npz``); this module needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .colors import srgb_to_linear
from .config import Settings
from .errors import InputError
from .mesh import Mesh
from .parts import PartWeights
from .prompt import StylePrompt


@dataclass(frozen=True)
class SurfaceStyle:
    """A per-vertex look: colors and displacement, object frame.

    What ``--lock`` keeps of an earlier run, and what the Blender add-on reads back from an object.

    Attributes:
        colors_srgb: [V, 3] float32 in 0..1.
        displacement: [V] float32 signed offset along the mesh's vertex normals, object units.

    Raises :class:`InputError` when the arrays do not have these shapes or hold non-finite values
    or colors outside 0..1.
    """

    colors_srgb: np.ndarray
    displacement: np.ndarray

    def __post_init__(self):
        colors = np.asarray(self.colors_srgb, dtype=np.float32)
        displacement = np.asarray(self.displacement, dtype=np.float32)
        if colors.ndim != 2 or colors.shape[1] != 3 or displacement.shape != (colors.shape[0],):
            raise InputError(
                f"a surface style needs colors [V, 3] and displacement [V], got {list(colors.shape)} and "
                f"{list(displacement.shape)}"
            )
        if not (np.isfinite(colors).all() and np.isfinite(displacement).all()):
            raise InputError("a surface style holds NaN or infinite values; it cannot be reused")
        if colors.size and (colors.min() < 0.0 or colors.max() > 1.0):
            raise InputError(f"surface colors must lie in 0..1, found {colors.min():.3g}..{colors.max():.3g}")
        object.__setattr__(self, "colors_srgb", colors)
        object.__setattr__(self, "displacement", displacement)

    @property
    def num_vertices(self) -> int:
        return int(self.colors_srgb.shape[0])


@dataclass(frozen=True)
class StyleResult:
    """A finished stylization, per vertex of the input mesh, object frame.

    Attributes:
        mesh: the input mesh (unchanged).
        prompt: the prompt as parsed (holistic style, or part/style pairs).
        colors_srgb: [V, 3] float32 in 0..1.
        displacement: [V] float32 signed offset along ``mesh.vertex_normals``, object units.
        settings: the settings used (seed included).
        parts: the part weights the styles were applied with (None for a holistic prompt).
        history: loss name -> value per iteration.
        record: facts about the run for reports (device, models, timings, steps, skipped steps).
        references: the reference images the run used, ``((part or "whole", ReferenceImage), ...)``.
        maps: the field baked on the mesh's UV layout (``engine.texture.bake.BakedMaps``), when
            ``texture.size`` asked for maps; None otherwise.
    """

    mesh: Mesh
    prompt: StylePrompt
    colors_srgb: np.ndarray
    displacement: np.ndarray
    settings: Settings
    parts: PartWeights | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    references: tuple = ()
    maps: object | None = None

    @property
    def colors_linear(self) -> np.ndarray:
        """[V, 3] float32 linear colors (what Blender and glTF store)."""
        return srgb_to_linear(self.colors_srgb)

    @property
    def surface(self) -> SurfaceStyle:
        """The look alone, e.g. to keep some parts of it in a later run (``StyleRequest.previous``)."""
        return SurfaceStyle(self.colors_srgb, self.displacement)

    def displaced_vertices(self, strength: float = 1.0) -> np.ndarray:
        """[V, 3] float32 vertex positions with ``strength`` x the displacement, object frame."""
        offset = (strength * self.displacement)[:, None] * self.mesh.vertex_normals
        return (self.mesh.vertices + offset).astype(np.float32)
