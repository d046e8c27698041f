"""Mesh-side analysis that needs no model: simplification for large meshes (more to come: local
thickness, self-intersection checks). Below ``grounding/`` and the training loop, which use it."""

from .simplify import Proxy, cluster_vertices

__all__ = ["Proxy", "cluster_vertices"]
