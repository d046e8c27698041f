"""engine.samples: face budgets, exact labels, closed outward parts, placement and spec parsing."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from engine.errors import MeshError
from engine.samples import ALL_SAMPLES, SAMPLE_NAMES, parse_sample_spec, sample_mesh

PARTS = {"lamp": ("base", "tube", "shade"), "chair": ("seat", "back", "legs"), "mug": ("body", "handle"),
         "figure": ("head", "torso", "arms", "legs"), "vase": ("body",), "rod": ("block", "rod"), "cup": ("wall",)}
COMPONENTS = {"lamp": (1, 1, 1), "chair": (1, 1, 4), "mug": (1, 1), "figure": (1, 1, 2, 2), "vase": (1,),
              "rod": (1, 1), "cup": (1,)}
HEIGHT = {"lamp": 0.55, "chair": 0.9, "mug": 0.1, "figure": 1.7, "vase": 0.3, "rod": 0.35, "cup": 0.09}


def _build(name, faces=20_000):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a MeshWarning (dropped degenerate faces) fails the test
        return sample_mesh(name, faces)


@functools.cache
def _default(name):
    return _build(name)


def _components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """[V] connected-component id per vertex (the smallest vertex index in it), by min-propagation."""
    comp = np.arange(num_vertices)
    while True:
        low = comp[faces].min(axis=1)
        new = comp.copy()
        for k in range(3):
            np.minimum.at(new, faces[:, k], low)
        new = new[new]  # pointer jumping speeds convergence
        if np.array_equal(new, comp):
            return comp
        comp = new


def _part_bounds(mesh, part):
    v = mesh.vertices[mesh.labels == mesh.label_names.index(part)]
    return v.min(axis=0), v.max(axis=0)


@pytest.mark.parametrize("name", ALL_SAMPLES)
@pytest.mark.parametrize("target", [5_000, 12_345, 20_000, 80_000, 320_000])
def test_face_count_within_tolerance(name, target):
    mesh = _build(name, target)
    assert abs(mesh.num_faces - target) <= 0.15 * target, (name, target, mesh.num_faces)


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_minimum_request_builds_without_warnings(name):
    mesh = _build(name, 500)
    assert mesh.num_faces >= 400
    assert set(np.unique(mesh.labels)) == set(range(len(PARTS[name])))


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_labels_exact_and_parts_disjoint(name):
    mesh = _default(name)
    assert mesh.name == name
    assert mesh.label_names == PARTS[name]
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.labels.shape == (mesh.num_vertices,) and mesh.labels.dtype == np.int64
    assert mesh.labels.min() == 0 and mesh.labels.max() == len(PARTS[name]) - 1
    assert np.all(np.bincount(mesh.labels) > 0)
    face_labels = mesh.labels[mesh.faces]
    assert np.all(face_labels == face_labels[:, :1]), "a face joins vertices of two parts"
    assert np.bincount(face_labels[:, 0], minlength=len(PARTS[name])).min() > 0
    assert np.unique(mesh.faces).size == mesh.num_vertices, "unused vertices"


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_parts_are_closed_outward_manifolds(name):
    mesh = _default(name)
    v, f = mesh.vertices.astype(np.float64), mesh.faces
    # every directed edge once and its reverse once: closed, consistently oriented 2-manifold
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = directed[:, 0] * mesh.num_vertices + directed[:, 1]
    assert np.unique(key).size == key.size, "a directed edge is used twice (flipped or non-manifold)"
    assert np.isin(directed[:, 1] * mesh.num_vertices + directed[:, 0], key).all(), "open boundary"
    comp = _components(f, mesh.num_vertices)
    face_comp = comp[f[:, 0]]
    tri = v[f]
    signed = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    for i, _ in enumerate(PARTS[name]):
        ids = np.unique(comp[mesh.labels == i])
        assert ids.size == COMPONENTS[name][i]
        for c in ids:
            volume = signed[face_comp == c].sum()
            assert volume > 0, (name, i, c, volume)  # divergence theorem: outward normals


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_no_duplicate_points_within_a_part(name):
    """Poles are single centre vertices, not collapsed rings; box seams are welded."""
    mesh = _default(name)
    for i, _ in enumerate(PARTS[name]):
        pts = mesh.vertices[mesh.labels == i]
        assert np.unique(pts, axis=0).shape[0] == pts.shape[0]


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_triangle_sizes_similar_across_parts(name):
    mesh = _default(name)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / 2
    part = mesh.labels[mesh.faces[:, 0]]
    means = np.array([area[part == i].mean() for i in range(len(PARTS[name]))])
    assert means.max() / means.min() < 2.0, means


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_deterministic(name):
    a, b = _build(name, 7_000), _build(name, 7_000)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_frame_and_size(name):
    mesh = _default(name)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    assert abs(lo[1]) < 1e-6, "must rest on y = 0"
    assert hi[1] == pytest.approx(HEIGHT[name], rel=0.08)
    assert hi[1] >= max(hi[0] - lo[0], hi[2] - lo[2]) * 0.5  # Y is up, not lying on its side
    plo, phi = _part_bounds(mesh, PARTS[name][0])  # the main part is centred on the Y axis
    for axis in (0, 2):
        assert abs(plo[axis] + phi[axis]) < 0.05 * (phi[axis] - plo[axis])


def test_lamp_placement():
    m = _default("lamp")
    (blo, bhi), (tlo, thi), (slo, shi) = (_part_bounds(m, p) for p in PARTS["lamp"])
    assert blo[1] == pytest.approx(0.0, abs=1e-6) and bhi[1] < 0.06
    assert bhi[0] - blo[0] > 5 * (bhi[1] - blo[1]) * 0.5  # wide and flat
    assert tlo[1] < bhi[1] and thi[1] > slo[1]  # the pole joins base and shade
    assert (thi[0] - tlo[0]) < 0.1 * (thi[1] - tlo[1])  # thin and vertical
    assert slo[1] > bhi[1] and shi[1] == pytest.approx(0.55, abs=0.01)
    shade = m.vertices[m.labels == 2]
    radius = np.hypot(shade[:, 0], shade[:, 2])
    assert radius[shade[:, 1] < slo[1] + 1e-3].max() > radius[shade[:, 1] > shi[1] - 1e-3].max()


def test_chair_placement():
    m = _default("chair")
    (slo, shi), (blo, bhi), (llo, lhi) = (_part_bounds(m, p) for p in PARTS["chair"])
    assert llo[1] == pytest.approx(0.0, abs=1e-6) and lhi[1] <= shi[1]
    assert llo[0] >= slo[0] and lhi[0] <= shi[0] and llo[2] >= slo[2] and lhi[2] <= shi[2]
    assert blo[1] > slo[1] and bhi[1] > shi[1] + 0.3  # back rises above the seat
    assert (blo[2] + bhi[2]) / 2 < slo[2] + 0.25 * (shi[2] - slo[2])  # on the rear (-z) side


def test_mug_placement():
    m = _default("mug")
    (blo, bhi), (hlo, hhi) = (_part_bounds(m, p) for p in PARTS["mug"])
    assert hhi[0] > bhi[0] + 0.02 and hlo[0] > 0.0  # beside the body, on +x
    assert blo[1] < hlo[1] and hhi[1] < bhi[1]
    body = m.vertices[m.labels == 0]
    axis = np.hypot(body[:, 0], body[:, 2]) < 1e-6
    np.testing.assert_allclose(np.sort(body[axis, 1]), [0.0, 0.007], atol=1e-6)  # two pole centres: open-top cup


@pytest.mark.parametrize("bad", ["teapot", "Lamps", ""])
def test_unknown_name_lists_available(bad):
    with pytest.raises(MeshError) as info:
        sample_mesh(bad)
    for name in SAMPLE_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("faces", [0, 499, 2_000_001, 10**9])
def test_face_count_out_of_range(faces):
    with pytest.raises(MeshError, match="500") as info:
        sample_mesh("mug", faces)
    assert "2000000" in str(info.value)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("lamp", ("lamp", 20_000)),
        ("lamp@80k", ("lamp", 80_000)),
        ("chair@5000", ("chair", 5_000)),
        ("mug@1.5k", ("mug", 1_500)),
        ("  mug @ 2M ", ("mug", 2_000_000)),
        ("LAMP@10K", ("lamp", 10_000)),
    ],
)
def test_parse_sample_spec(spec, expected):
    assert parse_sample_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "@5k", "lamp@", "lamp@abc", "lamp@-5", "lamp@5kk", "lamp:5k", "la mp", "lamp@0.5"]
)
def test_bad_spec_shows_example(spec):
    with pytest.raises(MeshError, match="lamp@80k"):
        parse_sample_spec(spec)


def test_spec_unknown_name_or_range():
    with pytest.raises(MeshError, match="chair"):
        parse_sample_spec("sofa@10k")
    with pytest.raises(MeshError, match="500"):
        parse_sample_spec("lamp@100")
