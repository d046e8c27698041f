"""The triangle mesh value, its validation, loading, and the unit-sphere normalization.

Frames:
- *object frame*: the coordinates as the user's file (or Blender object) holds them, in the
  user's units. Every result the engine returns is in this frame.
- *unit frame*: the object frame moved to its centre and divided by its largest radius, so the
  mesh fits the unit sphere. Cameras, the style field and displacement limits live here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import MeshError

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")


class MeshWarning(UserWarning):
    """Something was repaired on load (degenerate faces dropped, ...); the run goes on."""


@dataclass(frozen=True, eq=False)
class Mesh:
    """A validated triangle mesh.

    Attributes:
        vertices: [V, 3] float32, object frame.
        faces: [F, 3] int64, indices into ``vertices``, counter-clockwise seen from outside.
        labels: optional [V] int64 ground-truth part index per vertex (procedural samples),
            -1 where a vertex belongs to no named part.
        label_names: names of the parts that ``labels`` index.
        name: a human-readable name (file stem or sample name), used in records only.
        corner_uv: optional [F, 3, 2] float32 texture coordinates of each face's corners (the
            mesh's own UV layout; a vertex on a UV seam has one per face around it, as Blender's
            loops do), OpenGL / Blender / OBJ convention: origin at the image's bottom-left, v up.
            None without a layout.
    """

    vertices: np.ndarray
    faces: np.ndarray
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = ()
    name: str = "mesh"
    corner_uv: np.ndarray | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def unit_vertices(self) -> np.ndarray:
        """[V, 3] float32 vertices in the unit frame (see :class:`Normalization`)."""
        return Normalization.fit(self.vertices).to_unit(self.vertices)

    @cached_property
    def vertex_normals(self) -> np.ndarray:
        """[V, 3] float32 unit normals, area-weighted average of the adjacent face normals.

        A vertex that no face uses, or whose faces cancel out, gets the direction from the
        bounding-box centre instead, so displacement along it stays defined.
        """
        return vertex_normals(self.vertices, self.faces)

    def local_thickness(self, workers: int = 1, device=None):
        """The shape's :class:`~engine.geometry.thickness.LocalThickness` at each vertex, unit frame:
        measured on first use (a few seconds at 100k faces on one CPU core; ``workers`` threads
        share its rays, or a torch ``device`` traces them, with the same result), then kept with the
        mesh."""
        from .geometry.thickness import local_thickness

        if (measured := self.__dict__.get("_local_thickness")) is None:  # the frozen dataclass's own cache
            measured = local_thickness(self.unit_vertices(), self.faces, self.vertex_normals, workers=workers,
                                       device=device)
            self.__dict__["_local_thickness"] = measured
        return measured


def mesh_from_arrays(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    label_names: tuple[str, ...] = (),
    name: str = "mesh",
    corner_uv: np.ndarray | None = None,
) -> Mesh:
    """Validate raw arrays and build a :class:`Mesh` (``corner_uv``: [F, 3, 2] texture coordinates
    of the faces' corners, v up; dropped faces drop theirs).

    Raises :class:`MeshError` for an empty mesh, non-finite coordinates, indices out of range
    or a mesh whose faces are all degenerate. Degenerate faces (repeated indices or zero area)
    are dropped with a :class:`MeshWarning` that gives their count.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(f"{name}: vertices must have shape [V, 3], got {list(vertices.shape)}.")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshError(
            f"{name}: faces must be triangles of shape [F, 3], got {list(faces.shape)}; "
            "triangulate the mesh first."
        )
    if vertices.shape[0] == 0 or faces.shape[0] == 0:
        raise MeshError(
            f"{name}: the mesh is empty ({vertices.shape[0]} vertices, {faces.shape[0]} faces); "
            "select or export an object that has faces."
        )
    bad = ~np.isfinite(np.asarray(vertices, dtype=np.float64)).all(axis=1)
    if bad.any():
        raise MeshError(
            f"{name}: {int(bad.sum())} vertices have NaN or infinite coordinates "
            f"(first at index {int(np.flatnonzero(bad)[0])}); fix or delete them in your modeller."
        )
    _check_float32_range(np.asarray(vertices, dtype=np.float64), name)
    vertices = vertices.astype(np.float32, copy=False)
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshError(f"{name}: face indices must be integers, got {faces.dtype}.")
    faces = faces.astype(np.int64, copy=False)
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise MeshError(
            f"{name}: face indices out of range [{lo}, {hi}] for {vertices.shape[0]} vertices; "
            "the file is corrupt or was written with a different vertex list."
        )
    if corner_uv is not None:
        corner_uv = np.asarray(corner_uv, dtype=np.float32)
        if corner_uv.shape != (faces.shape[0], 3, 2):
            raise MeshError(f"{name}: corner_uv must have shape [{faces.shape[0]}, 3, 2], got {list(corner_uv.shape)}.")
        if not np.isfinite(corner_uv).all():
            raise MeshError(f"{name}: its UV layout has NaN or infinite coordinates; unwrap it again.")
    keep = ~_degenerate_faces(vertices, faces)
    dropped = int((~keep).sum())
    if dropped == faces.shape[0]:
        reach = float(np.abs(vertices).max())
        hint = (f" Its coordinates reach {reach:.3g}: too far from the origin for float32 (the engine's precision) "
                "to tell its vertices apart; move it near the origin." if reach > MAX_OFFSET_RATIO else "")
        raise MeshError(
            f"{name}: all {dropped} faces are degenerate (zero area or repeated vertices); "
            f"the mesh has no surface to stylize.{hint}"
        )
    if dropped:
        warnings.warn(
            f"{name}: dropped {dropped} degenerate face(s) of {faces.shape[0]}.",
            MeshWarning,
            stacklevel=2,
        )
        faces = faces[keep]
        corner_uv = None if corner_uv is None else corner_uv[keep]
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (vertices.shape[0],):
            raise MeshError(f"{name}: labels must have shape [{vertices.shape[0]}], got {list(labels.shape)}.")
    return Mesh(
        vertices=np.ascontiguousarray(vertices),
        faces=np.ascontiguousarray(faces),
        labels=labels,
        label_names=tuple(label_names),
        name=name,
        corner_uv=None if corner_uv is None else np.ascontiguousarray(corner_uv),
    )


def load_mesh(path: str | os.PathLike, *, merge_vertices: bool = False) -> Mesh:
    """Load OBJ, PLY, GLB/GLTF, STL or OFF as one triangulated :class:`Mesh` (object frame).

    Scenes are flattened with their node transforms applied. Vertices are kept as the file stores
    them; ``merge_vertices=True`` welds vertices at equal positions (useful for STL, which stores
    every triangle separately, and for a UV-mapped file, which the loader splits at its UV seams,
    so displacement does not open cracks); the UV layout is kept per face corner either way.
    """
    import trimesh

    path = os.fspath(path)
    name = os.path.basename(path)
    if os.path.isdir(path):
        raise MeshError(f"{path} is a folder, not a mesh file; name one of the mesh files in it.")
    if not os.path.isfile(path):
        raise MeshError(f"{path}: no such file.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshError(
            f"{name}: unsupported mesh format '{suffix or '(none)'}'; use one of {', '.join(MESH_SUFFIXES)}."
        )
    if os.path.getsize(path) == 0:
        raise MeshError(f"{name}: the file is empty (0 bytes); export the mesh again.")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise MeshError(f"{name}: cannot read the file ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.vertices) == 0 or len(loaded.faces) == 0:
        raise MeshError(_no_faces_reason(path, name, suffix))
    # a file's UV layout: trimesh splits vertices at UV seams and keeps one uv per vertex, v up (OBJ's way)
    uv = getattr(loaded.visual, "uv", None)
    if uv is not None and (np.shape(uv) != (len(loaded.vertices), 2) or not np.isfinite(uv).all()):
        warnings.warn(f"{name}: its UV layout is incomplete or holds NaN; it is left out (textures need one).",
                      MeshWarning, stacklevel=2)
        uv = None
    vertices, faces = np.asarray(loaded.vertices), np.asarray(loaded.faces)
    corner_uv = None if uv is None else np.asarray(uv)[faces]  # per face corner: welding keeps it
    if merge_vertices:
        vertices, faces = weld_equal_positions(vertices, faces)
    return mesh_from_arrays(vertices, faces, name=os.path.splitext(name)[0], corner_uv=corner_uv)


def weld_equal_positions(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per distinct position ([V', 3], in the file's order of first appearance) and ``faces``
    renumbered (per-corner data such as UVs stays as it is)."""
    unique, first, inverse = np.unique(vertices, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # keep the file's order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return unique[order], rank[inverse.reshape(-1)][faces]


def repeated_positions(vertices: np.ndarray) -> int:
    """How many of the [V, 3] ``vertices`` repeat an earlier one's position: 0 for a welded mesh, and
    what :func:`weld_equal_positions` would remove."""
    return len(vertices) - len(np.unique(vertices, axis=0))


@dataclass(frozen=True)
class Normalization:
    """The map between the object frame and the unit frame: ``unit = (object - center) / scale``.

    Attributes:
        center: [3] float64, object frame.
        scale: object units per unit-frame unit (the largest distance from ``center``).
    """

    center: np.ndarray
    scale: float

    @staticmethod
    def fit(vertices: np.ndarray, *, center: str = "bbox") -> Normalization:
        """Fit to [V, 3] object-frame vertices; ``center`` is ``"bbox"`` or ``"mean"``."""
        v = np.asarray(vertices, dtype=np.float64)
        if center == "bbox":
            c = (v.min(axis=0) + v.max(axis=0)) / 2.0
        elif center == "mean":
            c = v.mean(axis=0)
        else:
            raise ValueError(f"center must be 'bbox' or 'mean', got {center!r}")
        radius = float(np.linalg.norm(v - c, axis=1).max())
        if radius <= 0.0:
            raise MeshError("all vertices are at the same point; the mesh has no extent.")
        return Normalization(center=c, scale=radius)

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        """[..., 3] object frame -> [..., 3] float32 unit frame."""
        return ((np.asarray(points, dtype=np.float64) - self.center) / self.scale).astype(np.float32)

    def to_object(self, points: np.ndarray) -> np.ndarray:
        """[..., 3] unit frame -> [..., 3] float32 object frame."""
        return (np.asarray(points, dtype=np.float64) * self.scale + self.center).astype(np.float32)

    def length_to_object(self, lengths: np.ndarray) -> np.ndarray:
        """Distances in the unit frame (e.g. displacement) -> float32 object units."""
        return (np.asarray(lengths, dtype=np.float64) * self.scale).astype(np.float32)


def _no_faces_reason(path: str, name: str, suffix: str) -> str:
    """Why a file gave no triangles: it holds points or lines only, or it is not a readable mesh file."""
    import trimesh

    try:
        plain = trimesh.load(path, process=False)
    except Exception:  # any failure here means the same: not a readable file
        plain = None
    geometry = list(plain.geometry.values()) if isinstance(plain, trimesh.Scene) else [plain]
    if any(len(getattr(g, "vertices", ())) and not len(getattr(g, "faces", ())) for g in geometry):
        return f"{name}: the file holds no triangle faces (point clouds and lines cannot be stylized)."
    return f"{name}: no mesh could be read from it; it is not a valid {suffix} file, or it holds no geometry."


#: How far from the origin, in multiples of its own size, a mesh may lie: float32 (the engine's
#: precision, 24 bits) keeps about 16 steps across a mesh 1e6 times its size away from the origin.
MAX_OFFSET_RATIO = 1e6


def _check_float32_range(vertices: np.ndarray, name: str) -> None:
    """Refuse [V, 3] float64 coordinates that float32 cannot hold or cannot resolve."""
    reach = float(np.abs(vertices).max())
    extent = float(np.ptp(vertices, axis=0).max())
    if reach > float(np.finfo(np.float32).max) / 16:
        raise MeshError(f"{name}: coordinates reach {reach:.3g}, beyond what float32 (the engine's precision) "
                        "holds; scale the mesh down in your modeller.")
    if extent > 0 and reach > MAX_OFFSET_RATIO * extent:
        raise MeshError(
            f"{name}: the mesh is {extent:.3g} across but lies {reach:.3g} from the origin; float32 (the engine's "
            "precision) cannot resolve it there. Move it near the origin (e.g. apply a translation) first."
        )


def _degenerate_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] bool: repeated indices, or area below 1e-12 of the squared bounding-box diagonal."""
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    tri = vertices[faces].astype(np.float64)
    doubled_area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    diag = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    return repeated | (doubled_area <= 1e-12 * max(diag, 1e-30) ** 2)


def barycentric_blend(values: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Per-vertex ``values`` [V, ...] at surface points given as a ``face`` [N] of ``faces`` [F, 3] and
    barycentrics ``bary`` [N, 3] there -> [N, ...], in ``values``' dtype."""
    corners = values[faces[face]]  # [N, 3, ...]
    weights = bary.reshape(bary.shape + (1,) * (values.ndim - 1))
    return (weights * corners).sum(axis=1).astype(values.dtype, copy=False)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces].astype(np.float64)
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    normals = np.zeros(vertices.shape, dtype=np.float64)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    radial = vertices - (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    radial_len = np.linalg.norm(radial, axis=1, keepdims=True)
    fallback = np.where(radial_len > 0, radial / np.maximum(radial_len, 1e-30), np.array([0.0, 1.0, 0.0]))
    ok = length[:, 0] > 1e-20
    normals = np.where(ok[:, None], normals / np.maximum(length, 1e-30), fallback)
    return normals.astype(np.float32)
