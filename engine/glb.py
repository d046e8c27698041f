"""A minimal binary glTF 2.0 (``.glb``) writer: one scene, node, mesh and triangle primitive.

Dependency-free apart from numpy. The file holds one buffer laid out as: POSITION, NORMAL,
COLOR_0, the custom attributes in the order given, then the uint32 indices; every bufferView
starts on a 4-byte boundary. Vertex colours are stored as float VEC3 in *linear* space, which is
what glTF defines COLOR_0 to be. A single material (double-sided, white base colour, metallic 0,
roughness 1) makes viewers show the vertex colours as they are.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from .files import atomic_writer

GLB_MAGIC = 0x46546C67  # b"glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A  # b"JSON"
CHUNK_BIN = 0x004E4942  # b"BIN\0"

_FLOAT = 5126  # componentType FLOAT
_UINT = 5125  # componentType UNSIGNED_INT
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_TRIANGLES = 4


def write_glb(
    path: str | os.PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    colors_linear: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    extra_attributes: dict[str, np.ndarray] | None = None,
    mesh_name: str = "partstyle",
) -> None:
    """Write a triangle mesh to ``path`` as binary glTF 2.0.

    Args:
        path: destination file; written to a temporary file in the same folder first and moved
            into place with :func:`os.replace`, so a failure never leaves a partial file there.
        vertices: [V, 3] float, finite; stored as float32 POSITION with its min/max.
        faces: [F, 3] integer indices into ``vertices``; stored as uint32 indices.
        colors_linear: optional [V, 3] float in 0..1, *linear* RGB; stored as float COLOR_0.
        normals: optional [V, 3] float, finite and non-zero; renormalized to unit length (glTF
            requires unit normals) and stored as float32 NORMAL.
        extra_attributes: optional ``name -> [V] float`` per-vertex scalars, stored as float32
            custom attributes named ``"_" + name.upper()``, e.g. ``displacement`` ->
            ``_DISPLACEMENT``.
        mesh_name: name given to the mesh and its node.

    Raises:
        ValueError: wrong shapes, non-finite values, indices out of range, colours outside
            0..1, zero-length normals, an empty mesh or clashing attribute names. Nothing is
            written in that case.
    """
    verts = _float_array("vertices", vertices, (3,), None)
    num_v = verts.shape[0]
    if num_v == 0:
        raise ValueError("vertices is empty; a glTF mesh needs at least one vertex")
    tris = _index_array(faces, num_v)

    attributes: list[tuple[str, np.ndarray, str]] = [("POSITION", verts, "VEC3")]
    if normals is not None:
        n = _float_array("normals", normals, (3,), num_v).astype(np.float64)
        length = np.linalg.norm(n, axis=1, keepdims=True)
        if np.any(length <= 1e-12):
            raise ValueError("normals has zero-length rows; glTF needs unit normals")
        attributes.append(("NORMAL", (n / length).astype(np.float32), "VEC3"))
    if colors_linear is not None:
        c = _float_array("colors_linear", colors_linear, (3,), num_v)
        if c.min() < 0.0 or c.max() > 1.0:
            raise ValueError(
                f"colors_linear must lie in 0..1, got {c.min():g}..{c.max():g}; clip it first"
            )
        attributes.append(("COLOR_0", c, "VEC3"))
    for name, values in (extra_attributes or {}).items():
        if not isinstance(name, str) or not (name.isascii() and name.replace("_", "a").isalnum()):
            raise ValueError(f"extra attribute name {name!r} must be a non-empty identifier")
        semantic = "_" + name.upper()
        if any(semantic == s for s, _, _ in attributes):
            raise ValueError(f"extra attribute {name!r} clashes with another as {semantic}")
        values = _float_array(f"extra_attributes[{name!r}]", values, (), num_v)
        attributes.append((semantic, values, "SCALAR"))

    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []
    offset = 0

    def add(data: np.ndarray, type_: str, component: int, target: int) -> int:
        nonlocal offset
        raw = np.ascontiguousarray(data).astype("<" + data.dtype.str[1:], copy=False).tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": target})
        padded = raw + b"\x00" * (-len(raw) % 4)
        blobs.append(padded)
        offset += len(padded)
        accessors.append({"bufferView": len(views) - 1, "componentType": component,
                          "count": int(data.shape[0]), "type": type_})
        return len(accessors) - 1

    prim_attributes: dict[str, int] = {}
    for semantic, data, type_ in attributes:
        prim_attributes[semantic] = add(data, type_, _FLOAT, _ARRAY_BUFFER)
    pos = accessors[prim_attributes["POSITION"]]
    pos["min"] = [float(x) for x in verts.min(axis=0)]
    pos["max"] = [float(x) for x in verts.max(axis=0)]
    index_accessor = add(tris.reshape(-1), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER)

    binary = b"".join(blobs)
    gltf = {
        "asset": {"version": "2.0", "generator": "Partstyle"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": str(mesh_name)}],
        "meshes": [{"name": str(mesh_name), "primitives": [{
            "attributes": prim_attributes, "indices": index_accessor,
            "material": 0, "mode": _TRIANGLES}]}],
        "materials": [{"name": "vertex_colors", "doubleSided": True, "pbrMetallicRoughness": {
            "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
            "roughnessFactor": 1.0}}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    out = b"".join([
        struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
        struct.pack("<II", len(text), CHUNK_JSON), text,
        struct.pack("<II", len(binary), CHUNK_BIN), binary,
    ])
    with atomic_writer(path) as fh:
        fh.write(out)


def _float_array(name: str, value, tail: tuple[int, ...], count: int | None) -> np.ndarray:
    """``value`` as a finite float32 array of shape [count, *tail] (any count if None)."""
    arr = np.asarray(value)
    wrong_count = count is not None and arr.ndim > 0 and arr.shape[0] != count
    if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail or wrong_count:
        want = "[" + ", ".join(["V" if count is None else str(count), *map(str, tail)]) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf) as float32")
    return arr


def _index_array(faces, num_vertices: int) -> np.ndarray:
    """``faces`` as a [F, 3] uint32 array with every index in 0..num_vertices-1."""
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"faces must have shape [F, 3] with F >= 1, got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"faces must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_vertices:
        raise ValueError(f"faces index {arr.min()}..{arr.max()} outside 0..{num_vertices - 1}")
    return arr.astype(np.uint32)
