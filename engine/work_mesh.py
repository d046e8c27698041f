"""Which surface a run optimizes on: the mesh itself, or a copy of it.

- A **simplified copy** (``geometry/simplify.py``) when the mesh has more vertices than
  ``field.max_vertices``: time and memory per iteration follow the copy's size.
- A **subdivided copy** (``geometry/refine.py``) when the mesh is coarser than the guidance renders
  and the detail between its vertices has somewhere to go (maps baked on its UVs): the field is then
  optimized at points a few pixels apart, instead of at vertices many pixels apart whose colors the
  renderer interpolates across each face.

Both copies offer the same few methods (``mesh``, ``carry``, ``carry_bounds``, part weights both
ways, ``surface_normals``, ``cluster``), so the run treats them alike; the field, a function of
position, is evaluated at the original's vertices and texels afterwards either way.
"""

from __future__ import annotations

import math

import numpy as np

from .config import RenderSettings, Settings
from .geometry import Proxy, simplified_copy
from .geometry.refine import Refinement, refine_edges
from .mesh import Mesh, Normalization

WorkingCopy = Proxy | Refinement


def pixel_length(render: RenderSettings) -> float:
    """The unit-frame length one pixel of a guidance render spans at the object's centre."""
    return 2.0 * render.camera_radius * math.tan(math.radians(render.fov_degrees) / 2.0) / render.resolution


def median_edge_pixels(mesh: Mesh, normalization: Normalization, render: RenderSettings) -> float:
    """The mesh's median edge length in guidance-render pixels: its density as the renders see it."""
    unit = normalization.to_unit(mesh.vertices)
    edges = np.linalg.norm(unit[mesh.faces] - unit[np.roll(mesh.faces, -1, axis=1)], axis=-1)
    return float(np.median(edges)) / pixel_length(render)


def wants_subdivision(mesh: Mesh, normalization: Normalization, settings: Settings) -> bool:
    """Whether ``field.optimize_on`` asks for a subdivided copy of ``mesh`` (``auto``: maps are baked
    and the median edge spans more than twice ``field.subdivide_pixels``)."""
    f = settings.field
    if f.optimize_on != "auto":
        return f.optimize_on == "subdivided"
    coarse = median_edge_pixels(mesh, normalization, settings.render) > 2.0 * f.subdivide_pixels
    return bool(settings.texture.size) and coarse


def working_copy(mesh: Mesh, normalization: Normalization, settings: Settings) -> WorkingCopy | None:
    """The copy a run optimizes on instead of ``mesh``, or None to optimize on the mesh itself.

    A mesh over ``field.max_vertices`` is simplified (whatever ``field.optimize_on`` says); else one
    that :func:`wants_subdivision` is refined until no edge spans more than ``field.subdivide_pixels``
    pixels, within ``field.subdivide_max_vertices`` (None when no edge is that long).
    """
    proxy = simplified_copy(mesh, settings.field.max_vertices)
    if proxy is not None or not wants_subdivision(mesh, normalization, settings):
        return proxy
    f = settings.field
    longest = float(normalization.length_to_object(f.subdivide_pixels * pixel_length(settings.render)))
    refined = refine_edges(mesh.vertices, mesh.faces, longest, f.subdivide_max_vertices)
    return None if len(refined.vertices) == mesh.num_vertices else refined


def announce(copy: WorkingCopy, mesh: Mesh, settings: Settings) -> tuple[str, str]:
    """The progress stage (name, detail) that announces the copy."""
    f = settings.field
    if copy.kind == Refinement.kind:
        return ("subdividing", f"{mesh.num_vertices} -> {len(copy.vertices)} vertices to optimize on, so the "
                               f"field's detail between vertices reaches the maps (field.optimize_on={f.optimize_on})")
    return ("simplifying", f"{mesh.num_vertices} -> {len(copy.vertices)} vertices to optimize on "
                           f"(field.max_vertices={f.max_vertices})")
