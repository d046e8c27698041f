"""A minimal binary PLY writer: positions, normals, 8-bit sRGB colors and extra float properties.

PLY is what point-cloud and mesh tools (MeshLab, CloudCompare, Open3D, trimesh, Blender's importer)
read with per-vertex colors and any number of named per-vertex values, so a result's displacement
travels with it as a property. Dependency-free apart from numpy; written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_writer


def write_ply(
    path: str | os.PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    normals: np.ndarray | None = None,
    colors_srgb: np.ndarray | None = None,
    properties: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a triangle mesh to ``path`` as binary little-endian PLY.

    Args:
        vertices: [V, 3] float positions (stored as float32 ``x y z``).
        faces: [F, 3] integer indices (stored as ``vertex_indices``, a uchar-counted int list).
        normals: optional [V, 3] unit normals (``nx ny nz``).
        colors_srgb: optional [V, 3] sRGB in 0..1 (stored as uchar ``red green blue``, rounded).
        properties: optional ``name -> [V]`` floats, stored as float32 properties of that name
            (an identifier: letters, digits and underscores).

    Raises ValueError for wrong shapes, non-finite values or a bad property name; nothing is written.
    """
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int64)
    count = len(v)
    if v.ndim != 2 or v.shape[1] != 3 or count == 0:
        raise ValueError(f"vertices must have shape [V, 3] with V >= 1, got {list(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or (f.size and (f.min() < 0 or f.max() >= count)):
        raise ValueError(f"faces must be [F, 3] indices into {count} vertices")
    columns: list[tuple[str, str, np.ndarray]] = [(name, "float", v[:, i]) for i, name in enumerate("xyz")]
    if normals is not None:
        n = _rows(normals, count, 3, "normals")
        columns += [(name, "float", n[:, i]) for i, name in enumerate(("nx", "ny", "nz"))]
    if colors_srgb is not None:
        c = np.clip(np.round(_rows(colors_srgb, count, 3, "colors_srgb") * 255.0), 0, 255).astype(np.uint8)
        columns += [(name, "uchar", c[:, i]) for i, name in enumerate(("red", "green", "blue"))]
    for name, values in (properties or {}).items():
        if not (isinstance(name, str) and name.isascii() and name.replace("_", "a").isalnum()):
            raise ValueError(f"property name {name!r} must be an identifier (letters, digits, underscores)")
        columns.append((name, "float", _rows(values, count, None, name)))
    if not np.isfinite(v).all():
        raise ValueError("vertices holds non-finite values")

    dtype = np.dtype([(name, "<f4" if kind == "float" else "u1") for name, kind, _ in columns])
    table = np.empty(count, dtype)
    for name, _, values in columns:
        table[name] = values
    face_table = np.empty(len(f), np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
    face_table["n"] = 3
    face_table["i"] = f
    header = ["ply", "format binary_little_endian 1.0", "comment written by Partstyle", f"element vertex {count}"]
    header += [f"property {kind} {name}" for name, kind, _ in columns]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    with atomic_writer(path) as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(table.tobytes())
        fh.write(face_table.tobytes())


def _rows(values, count: int, width: int | None, what: str) -> np.ndarray:
    array = np.asarray(values, np.float32)
    shape = (count,) if width is None else (count, width)
    if array.shape != shape:
        raise ValueError(f"{what} must have shape {list(shape)}, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds non-finite values")
    return array
