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

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from .mesh import Mesh

#: Measurements kept at most (the most recently used), and the bytes of their arrays at most: a
#: thickness takes 12 bytes a vertex, located parts 4 bytes a vertex and part (8 MB and 16 MB for a
#: 3-part run on a 1M-vertex mesh), so a Blender session that styles many large objects stays small.
KEPT_MEASUREMENTS = 16
KEPT_BYTES = 256 * 2**20
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
    """The last measurements made (at most ``capacity`` of them, whose arrays take at most
    ``max_bytes``; the newest is always kept), each by its kind (:data:`THICKNESS`,
    :data:`LOCATED_PARTS`), the shape's :func:`shape_key` and ``depends_on``: a text naming whatever
    else the measurement depends on (settings, part names, device), which the caller composes.

    Safe to share between threads (the add-on's runs work on a thread of their own)."""

    def __init__(self, capacity: int = KEPT_MEASUREMENTS, max_bytes: int = KEPT_BYTES):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._kept: OrderedDict[tuple[str, bytes, str], tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        """The bytes of the kept measurements' arrays."""
        with self._lock:
            return sum(size for _value, size in self._kept.values())

    def known(self, kind: str, mesh: Mesh, depends_on: str = ""):
        """The measurement of ``kind`` made earlier for ``mesh``'s shape and ``depends_on``, or None."""
        return self._lookup((kind, shape_key(mesh), depends_on))

    def measured(self, kind: str, mesh: Mesh, measure: Callable[[], T], depends_on: str = "") -> T:
        """The measurement :meth:`known` has, or ``measure()`` (made outside the lock; kept unless it
        raises)."""
        key = (kind, shape_key(mesh), depends_on)
        kept = self._lookup(key)
        if kept is not None:
            return kept
        value = measure()
        with self._lock:
            self._kept[key] = (value, array_bytes(value))
            while len(self._kept) > 1 and (len(self._kept) > self.capacity or
                                           sum(size for _value, size in self._kept.values()) > self.max_bytes):
                self._kept.popitem(last=False)
        return value

    def _lookup(self, key: tuple[str, bytes, str]):
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            self._kept.move_to_end(key)
            return kept[0]


def array_bytes(value) -> int:
    """The bytes of the numpy arrays ``value`` holds: itself, or in its dataclass fields, tuple or list
    items and dict values, at any depth."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(array_bytes(getattr(value, field.name)) for field in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return sum(array_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(array_bytes(item) for item in value.values())
    return 0
