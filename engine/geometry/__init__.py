"""Mesh-side analysis that needs no model: the simplified copy a large mesh is optimized on, the
local thickness that bounds relief, and the self-intersection check. Below ``grounding/``, the
training loop and ``relief.py``, which use it; numpy only."""

from .intersections import intersecting_pairs, new_intersections
from .simplify import Proxy, cluster_vertices, simplified_copy
from .thickness import LocalThickness, local_thickness

__all__ = ["LocalThickness", "Proxy", "cluster_vertices", "intersecting_pairs", "local_thickness",
           "new_intersections", "simplified_copy"]
