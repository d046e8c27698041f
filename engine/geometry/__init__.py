"""Mesh-side analysis that needs no model: the simplified copy a large mesh is optimized on.
Below ``grounding/`` and the training loop, which use it."""

from .simplify import Proxy, cluster_vertices, simplified_copy

__all__ = ["Proxy", "cluster_vertices", "simplified_copy"]
