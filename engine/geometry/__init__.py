"""Mesh-side analysis that needs no model: the simplified copy a large mesh is optimized on, the
local thickness that bounds relief, the self-intersection check, and the over-segmentation into
patches that localization settles its labels on. Below ``grounding/``, the training loop and
``relief.py``, which use it; numpy only."""

from .intersections import intersecting_pairs, new_intersections
from .patches import Patches, segment_patches
from .simplify import Proxy, cluster_vertices, simplified_copy
from .thickness import LocalThickness, local_thickness

__all__ = ["LocalThickness", "Patches", "Proxy", "cluster_vertices", "intersecting_pairs", "local_thickness",
           "new_intersections", "segment_patches", "simplified_copy"]
