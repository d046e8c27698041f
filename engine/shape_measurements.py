"""What runs measure on a mesh's shape, kept for the next run on the same shape.

A run measures two things on the shape before it optimizes: its local thickness when it has relief
(``geometry/thickness.py``: seconds on a CPU for tens of thousands of faces), and, for a part prompt
without given parts, where the parts are (``grounding/locate.py``: the grounding model on 10 views,
most of a minute on a CPU). Each depends on the shape and a few settings only, and an artist restyles
the same object again and again, often with the same part names and other styles; but each run
builds its :class:`~engine.mesh.Mesh` afresh (the add-on from Blender's data, a batch job from its
file), so the mesh's own cache (:meth:`Mesh.local_thickness`) is gone by then.
:class:`ShapeMeasurements` keeps the measurements by the shape's content and what else they depend
on, for as long as whoever holds it lives (the :class:`~engine.models.ModelStore` of a Blender
session, of a batch or of a command).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from .mesh import Mesh

#: Measurements kept (the most recently used): a thickness takes 12 bytes a vertex, located parts
#: 4 bytes a vertex and part.
KEPT_MEASUREMENTS = 16
THICKNESS = "local thickness"
LOCATED_PARTS = "located parts"

T = TypeVar("T")


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
    """The last :data:`KEPT_MEASUREMENTS` measurements made, each by its kind (:data:`THICKNESS`,
    :data:`LOCATED_PARTS`), the shape's :func:`shape_key` and ``depends_on``: a text naming whatever
    else the measurement depends on (settings, part names, device), which the caller composes.

    Safe to share between threads (the add-on's runs work on a thread of their own)."""

    def __init__(self, capacity: int = KEPT_MEASUREMENTS):
        self.capacity = capacity
        self._kept: OrderedDict[tuple[str, bytes, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, kind: str, mesh: Mesh, depends_on: str = ""):
        """The measurement of ``kind`` made earlier for ``mesh``'s shape and ``depends_on``, or None."""
        key = (kind, shape_key(mesh), depends_on)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
            return kept

    def measured(self, kind: str, mesh: Mesh, measure: Callable[[], T], depends_on: str = "") -> T:
        """The measurement :meth:`known` has, or ``measure()`` (made outside the lock; kept unless it
        raises)."""
        kept = self.known(kind, mesh, depends_on)
        if kept is not None:
            return kept
        value = measure()
        with self._lock:
            self._kept[(kind, shape_key(mesh), depends_on)] = value
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return value
