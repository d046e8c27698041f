"""What runs measure on a mesh's shape, kept for the next run on the same shape.

A run with relief measures the shape's local thickness first (``geometry/thickness.py``: seconds on
a CPU for tens of thousands of faces, a run's largest setup cost after the models' load). The
measurement depends on the vertices and faces alone, and an artist restyles the same object again
and again; but each run builds its :class:`~engine.mesh.Mesh` afresh (the add-on from Blender's data,
a batch job from its file), so the mesh's own cache (:meth:`Mesh.local_thickness`) is gone by then.
:class:`ShapeMeasurements` keeps the measurements by the shape's content, for as long as whoever
holds it (the :class:`~engine.models.ModelStore` of a Blender session, a batch or a command) lives.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from .geometry.thickness import LocalThickness
from .mesh import Mesh

#: Shapes whose measurements are kept (the most recently used): 12 bytes a vertex each.
KEPT_SHAPES = 8


def shape_key(mesh: Mesh) -> bytes:
    """A digest of ``mesh``'s vertices and faces (values, dtypes and shapes): equal for equal shapes
    whatever object holds them, different as soon as one coordinate or index differs."""
    digest = hashlib.blake2b(digest_size=20)
    for array in (mesh.vertices, mesh.faces):
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape};".encode())
        digest.update(contiguous.data)
    return digest.digest()


class ShapeMeasurements:
    """The local thickness of the last :data:`KEPT_SHAPES` shapes measured, by :func:`shape_key`.

    Safe to share between threads (the add-on's runs work on a thread of their own)."""

    def __init__(self, capacity: int = KEPT_SHAPES):
        self.capacity = capacity
        self._thickness: OrderedDict[bytes, LocalThickness] = OrderedDict()
        self._lock = threading.Lock()

    def known_thickness(self, mesh: Mesh) -> LocalThickness | None:
        """The thickness measured earlier for ``mesh``'s shape, or None."""
        key = shape_key(mesh)
        with self._lock:
            kept = self._thickness.get(key)
            if kept is not None:
                self._thickness.move_to_end(key)
            return kept

    def local_thickness(self, mesh: Mesh, *, workers: int = 1) -> LocalThickness:
        """``mesh``'s :meth:`~engine.mesh.Mesh.local_thickness`, measured only when no shape equal to
        it was measured before (``workers`` threads share the rays then)."""
        kept = self.known_thickness(mesh)
        if kept is not None:
            return kept
        measured = mesh.local_thickness(workers=workers)  # outside the lock: seconds of work
        with self._lock:
            self._thickness[shape_key(mesh)] = measured
            while len(self._thickness) > self.capacity:
                self._thickness.popitem(last=False)
        return measured
