"""engine.mesh: loading every supported format, validation errors, repairs, normals, normalization."""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tolerances import ROUNDED, SAME_MATH, assert_close

from engine.errors import MeshError, PartstyleError
from engine.mesh import Mesh, MeshWarning, Normalization, load_mesh, mesh_from_arrays
from engine.samples import sample_mesh

FORMATS = ("obj", "ply", "glb", "stl", "off")


@functools.cache
def _mug() -> Mesh:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return sample_mesh("mug", 5000)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The mug written through trimesh in every format: {suffix: path}."""
    mug = _mug()
    folder = tmp_path_factory.mktemp("formats")
    paths = {}
    for suffix in FORMATS:
        path = folder / f"mug.{suffix}"
        trimesh.Trimesh(mug.vertices, mug.faces, process=False).export(path)
        paths[suffix] = path
    return paths


def _triangles(mesh: Mesh) -> np.ndarray:
    """[F, 3, 3] float64 corner positions of every face."""
    return mesh.vertices[mesh.faces].astype(np.float64)


def _assert_same_triangle_set(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    """Order-independent match of two [F, 3, 3] triangle soups (winding kept, start corner free).

    Every triangle of ``got`` is paired with the ``want`` triangle of the nearest centroid; the
    pairing must be one-to-one and the corners must agree up to a cyclic rotation.
    """
    assert got.shape == want.shape
    g, w = torch.from_numpy(got), torch.from_numpy(want)
    gc, wc = g.mean(1), w.mean(1)
    match = torch.cat([torch.cdist(chunk, wc).argmin(1) for chunk in gc.split(1024)])
    assert len(torch.unique(match)) == len(match), "two loaded faces matched the same original face"
    paired = w[match]
    rotations = torch.stack([paired.roll(k, dims=1) for k in range(3)])  # [3, F, 3, 3]
    err = (rotations - g).abs().amax(dim=(2, 3)).amin(0)  # best rotation per face
    assert float(err.max()) <= atol, f"worst corner mismatch {float(err.max()):.3g}"


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("suffix", FORMATS)
def test_load_every_format_keeps_the_triangles(exported, suffix):
    mug = _mug()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)  # nothing of the mug needs repairing
        loaded = load_mesh(exported[suffix])
    assert isinstance(loaded, Mesh)
    assert loaded.name == "mug"
    assert loaded.vertices.dtype == np.float32 and loaded.vertices.shape[1] == 3
    assert loaded.faces.dtype == np.int64 and loaded.faces.shape[1] == 3
    assert loaded.num_faces == mug.num_faces
    # text formats print a limited number of digits: allow a tiny fraction of the 0.1 m mug
    _assert_same_triangle_set(_triangles(loaded), _triangles(mug), atol=1e-6)


def test_stl_stores_every_triangle_separately_and_merge_welds_it(exported):
    mug = _mug()
    soup = load_mesh(exported["stl"])
    assert soup.num_vertices == 3 * mug.num_faces
    welded = load_mesh(exported["stl"], merge_vertices=True)
    obj = load_mesh(exported["obj"])
    # the mug's parts have their own vertices and no two of them share a position
    distinct_positions = len(np.unique(mug.vertices, axis=0))
    assert welded.num_vertices < soup.num_vertices
    assert welded.num_vertices == distinct_positions == obj.num_vertices
    assert welded.num_faces == mug.num_faces
    _assert_same_triangle_set(_triangles(welded), _triangles(mug), atol=0.0)
    # welding joins the triangles: each vertex is used by several faces, as in the original
    assert np.array_equal(np.unique(welded.faces), np.arange(welded.num_vertices))


def test_quad_obj_is_triangulated(tmp_path):
    path = tmp_path / "quads.obj"
    path.write_text(
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nv 2 1 0\n"
        "f 1 2 3 4\nf 2 5 6 3\n"
    )
    mesh = load_mesh(path)
    assert mesh.num_faces == 4
    assert mesh.name == "quads"
    tri = _triangles(mesh)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    # both quads lie in z = 0 with counter-clockwise corners seen from +Z: the triangles keep that
    assert np.allclose(cross[:, :2], 0.0) and (cross[:, 2] > 0).all()
    assert np.isclose(0.5 * cross[:, 2].sum(), 2.0)  # two unit quads, covered exactly once
    first_quad = {0, 1, 2, 3}
    second_quad = {1, 4, 5, 2}
    sets = [set(f) for f in mesh.faces.tolist()]
    assert sum(s <= first_quad for s in sets) == 2
    assert sum(s <= second_quad for s in sets) == 2


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path):
    path = tmp_path / "absent.obj"
    with pytest.raises(MeshError, match="no such file") as info:
        load_mesh(path)
    assert str(path) in str(info.value)


def test_unsupported_suffix_names_the_supported_formats(tmp_path):
    path = tmp_path / "model.fbx"
    path.write_bytes(b"Kaydara FBX Binary  \x00")
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    message = str(info.value)
    assert ".fbx" in message and "unsupported" in message
    for suffix in (".obj", ".ply", ".glb", ".gltf", ".stl", ".off"):  # the docstring's formats
        assert suffix in message


def test_file_without_faces(tmp_path):
    path = tmp_path / "points.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    with pytest.raises(MeshError, match="no triangle faces") as info:
        load_mesh(path)
    assert "points.obj" in str(info.value)


def test_unreadable_file_is_a_mesh_error(tmp_path):
    path = tmp_path / "broken.ply"
    path.write_bytes(b"this is not a ply file")
    with pytest.raises(MeshError, match="cannot read") as info:
        load_mesh(path)
    assert "broken.ply" in str(info.value)


def test_mesh_error_is_a_partstyle_error():
    assert issubclass(MeshError, PartstyleError)


def test_empty_arrays():
    with pytest.raises(MeshError, match="empty"):
        mesh_from_arrays(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    with pytest.raises(MeshError, match="empty"):
        mesh_from_arrays(np.eye(3, dtype=np.float32), np.zeros((0, 3), np.int64))


def test_wrong_shapes():
    with pytest.raises(MeshError, match="vertices must have shape"):
        mesh_from_arrays(np.zeros((4, 2)), np.array([[0, 1, 2]]))
    with pytest.raises(MeshError, match="triangulate"):
        mesh_from_arrays(np.zeros((4, 3)), np.array([[0, 1, 2, 3]]))


def test_nan_coordinates_give_the_count():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    v[1, 2] = np.nan
    v[3, 0] = np.inf
    v[4, :] = np.nan
    f = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4]])
    with pytest.raises(MeshError) as info:
        mesh_from_arrays(v, f)
    message = str(info.value)
    assert re.search(r"\b3 vertices\b", message), message
    assert "NaN" in message
    assert "index 1" in message  # the first offending vertex


def test_face_indices_out_of_range():
    v = np.eye(3, dtype=np.float32)
    with pytest.raises(MeshError, match="out of range") as info:
        mesh_from_arrays(v, np.array([[0, 1, 3]]))
    assert "3 vertices" in str(info.value)
    with pytest.raises(MeshError, match="out of range"):
        mesh_from_arrays(v, np.array([[0, -1, 2]]))


def test_non_integer_faces():
    with pytest.raises(MeshError, match="integers"):
        mesh_from_arrays(np.eye(3), np.array([[0.0, 1.0, 2.0]]))


def test_all_faces_degenerate():
    v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]], np.float32)  # 0, 1, 2 collinear
    f = np.array([[0, 1, 2], [0, 0, 3], [3, 1, 3]])
    with pytest.raises(MeshError, match="degenerate") as info:
        mesh_from_arrays(v, f)
    assert "all 3 faces" in str(info.value)


def test_degenerate_faces_are_dropped_with_a_counted_warning():
    v = np.array(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 0, 0], [0.5, 0, 0]], np.float32
    )
    f = np.array(
        [
            [0, 1, 2],  # good
            [0, 0, 1],  # repeated index
            [1, 3, 2],  # good
            [0, 1, 4],  # collinear: zero area
            [2, 2, 2],  # all repeated
            [0, 5, 1],  # collinear, distinct indices
            [1, 4, 3],  # good
        ]
    )
    with pytest.warns(MeshWarning) as record:
        mesh = mesh_from_arrays(v, f, name="repairs")
    messages = [str(w.message) for w in record if issubclass(w.category, MeshWarning)]
    assert len(messages) == 1
    assert re.search(r"\b4 degenerate\b", messages[0]), messages[0]
    assert "repairs" in messages[0]
    assert np.array_equal(mesh.faces, f[[0, 2, 6]])
    assert np.array_equal(mesh.vertices, v)  # vertices are kept as given


def test_clean_mesh_has_no_warning():
    v = np.eye(3, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = mesh_from_arrays(v, np.array([[0, 1, 2]], np.int32))
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.num_vertices == 3 and mesh.num_faces == 1


def test_labels_must_match_the_vertices():
    v, f = np.eye(3), np.array([[0, 1, 2]])
    mesh = mesh_from_arrays(v, f, labels=[0, 1, 1], label_names=("a", "b"))
    assert mesh.labels.dtype == np.int64 and mesh.labels.tolist() == [0, 1, 1]
    assert mesh.label_names == ("a", "b")
    with pytest.raises(MeshError, match="labels"):
        mesh_from_arrays(v, f, labels=[0, 1])


# ---------------------------------------------------------------------------------------------
# Vertex normals


def test_vertex_normals_are_unit_length():
    n = _mug().vertex_normals
    assert n.shape == _mug().vertices.shape and n.dtype == np.float32
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)


def test_icosphere_normals_point_outward():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    centre = np.array([0.3, -1.0, 5.0])
    mesh = mesh_from_arrays(sphere.vertices + centre, sphere.faces)
    radial = (mesh.vertices - centre) / np.linalg.norm(mesh.vertices - centre, axis=1, keepdims=True)
    dots = (mesh.vertex_normals * radial).sum(axis=1)
    assert dots.min() > 0.99


def test_flipped_winding_flips_the_normals():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    out = mesh_from_arrays(sphere.vertices, sphere.faces).vertex_normals
    inward = mesh_from_arrays(sphere.vertices, sphere.faces[:, ::-1]).vertex_normals
    assert_close(out, -inward, rel=SAME_MATH)


def test_normals_are_area_weighted():
    # vertex 0 is shared by a big triangle facing +Z and a small one facing +X
    v = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, -1], [0, 1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 3, 4]])
    n = mesh_from_arrays(v, f).vertex_normals[0].astype(np.float64)
    big = np.array([0, 0, 16.0 / 2])  # area 8 along +Z
    small = np.array([0.5, 0, 0])  # area 0.5 along +X  ((0,0,-1) x (0,1,0) = (1,0,0))
    want = (big + small) / np.linalg.norm(big + small)
    assert_close(n, want, rel=SAME_MATH)


def test_unreferenced_vertex_gets_a_finite_unit_normal():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5], [2.5, 2.5, 2.5]], np.float32)
    f = np.array([[0, 1, 2]])
    n = mesh_from_arrays(v, f).vertex_normals
    assert np.isfinite(n).all()
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    assert_close(n[:3], np.broadcast_to([0.0, 0.0, 1.0], (3, 3)), rel=SAME_MATH)
    # vertex 3 is off-centre: it points away from the bounding-box centre (2.5, 2.5, 2.5)
    assert_close(n[3], np.ones(3) / np.sqrt(3), rel=SAME_MATH)
    # vertex 4 is exactly the bounding-box centre: still a finite unit vector
    assert np.isclose(np.linalg.norm(n[4]), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Normalization


@pytest.mark.parametrize("center", ["bbox", "mean"])
def test_fit_puts_the_mesh_in_the_unit_sphere(center):
    v = _mug().vertices * 7.0 + np.array([10.0, -3.0, 0.5], np.float32)
    norm = Normalization.fit(v, center=center)
    unit = norm.to_unit(v).astype(np.float64)
    radii = np.linalg.norm(unit, axis=1)
    assert_close(radii.max(), 1.0, rel=ROUNDED)  # float32 unit coordinates: rounded once; none beyond
    if center == "bbox":
        assert_close((unit.min(0) + unit.max(0)) / 2.0, 0.0, rel=ROUNDED, scale=1.0)
    else:
        assert_close(unit.mean(0), 0.0, rel=ROUNDED, scale=1.0)
    assert norm.to_unit(v).dtype == np.float32


def test_fit_center_definitions():
    v = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [4, 2, 0]], np.float64)
    box = Normalization.fit(v, center="bbox")
    assert np.allclose(box.center, [2, 1, 0]) and box.scale == pytest.approx(np.sqrt(5))
    mean = Normalization.fit(v, center="mean")
    assert np.allclose(mean.center, [1, 0.5, 0])
    assert mean.scale == pytest.approx(np.linalg.norm([3, 1.5, 0]))
    with pytest.raises(ValueError, match="center"):
        Normalization.fit(v, center="median")


def test_length_to_object_scales_by_scale():
    norm = Normalization(center=np.array([1.0, 2.0, 3.0]), scale=2.5)
    lengths = np.array([0.0, 0.1, -0.04, 1.0])
    got = norm.length_to_object(lengths)
    assert got.dtype == np.float32
    assert_close(got, lengths * 2.5, rel=ROUNDED)  # float32: rounded once
    # lengths ignore the centre, positions do not
    assert np.allclose(norm.to_object(np.zeros(3)), [1, 2, 3])


def test_single_point_mesh_cannot_be_normalized():
    v = np.tile(np.array([[1.5, -2.0, 0.25]], np.float32), (6, 1))
    for center in ("bbox", "mean"):
        with pytest.raises(MeshError, match="same point"):
            Normalization.fit(v, center=center)


_coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    points=arrays(np.float32, st.tuples(st.integers(2, 40), st.just(3)), elements=_coord),
    center=st.sampled_from(["bbox", "mean"]),
)
def test_unit_round_trip(points, center):
    assume(len(np.unique(points, axis=0)) >= 2)
    norm = Normalization.fit(points, center=center)
    unit = norm.to_unit(points)
    assert np.linalg.norm(unit.astype(np.float64), axis=1).max() <= 1.0 + 1e-5
    back = norm.to_object(unit).astype(np.float64)
    # float32 unit coordinates carry ~1e-7 of the radius; the result ~1e-7 of its own magnitude
    tol = 1e-5 * max(float(np.abs(points).max()), norm.scale)
    assert np.abs(back - points).max() <= tol
