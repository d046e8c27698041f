"""engine.geometry: the triangle tree's ray and box queries, local thickness, self-intersections."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch

from engine.geometry.intersections import face_components, intersecting_pairs, new_intersections
from engine.geometry.thickness import MAX_DISTANCE, local_thickness
from engine.geometry.triangle_tree import TriangleTree, ray_triangle_distances
from engine.mesh import Normalization
from engine.samples import sample_mesh


@functools.cache
def _mesh(name: str, faces: int = 3000):
    return sample_mesh(name, faces)


def _unit(mesh):
    return mesh.unit_vertices().astype(np.float64)


def test_nearest_hits_match_brute_force():
    mesh = _mesh("mug", 1500)
    vertices = _unit(mesh)
    tree = TriangleTree.build(vertices, mesh.faces)
    rng = np.random.default_rng(0)
    origins = rng.uniform(-0.8, 0.8, (300, 3))
    directions = rng.normal(size=(300, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    got, faces = tree.nearest_faces(origins, directions, max_distance=0.9)
    np.testing.assert_array_equal(tree.nearest_hits(origins, directions, max_distance=0.9), got)
    corners = vertices[mesh.faces]
    expected = np.full(len(origins), np.inf)
    expected_faces = np.full(len(origins), -1)
    for i in range(len(origins)):
        t = ray_triangle_distances(np.repeat(origins[i:i + 1], len(corners), 0),
                                   np.repeat(directions[i:i + 1], len(corners), 0), corners)
        t = np.where((t >= 0.0) & (t <= 0.9), t, np.inf)
        if np.isfinite(t).any():
            expected[i], expected_faces[i] = t.min(), t.argmin()
    assert np.isfinite(expected).sum() > 50, "the check needs rays that hit"
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    hit = np.isfinite(expected)
    np.testing.assert_allclose(got[hit], expected[hit], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(faces, expected_faces)


def test_overlapping_pairs_match_brute_force():
    mesh = _mesh("lamp", 800)
    vertices = _unit(mesh)
    corners = vertices[mesh.faces]
    lows, highs = corners.min(1), corners.max(1)
    query, found = TriangleTree.build(vertices, mesh.faces).overlapping_pairs(lows[:200], highs[:200])
    got = set(zip(query.tolist(), found.tolist(), strict=True))
    overlap = np.all((lows[:200, None] <= highs[None]) & (highs[:200, None] >= lows[None]), axis=2)
    assert got == set(zip(*np.nonzero(overlap), strict=True))


def test_threads_share_the_queries_with_the_same_results_bit_for_bit(monkeypatch):
    from engine.geometry import triangle_tree

    mesh = _mesh("lamp", 6000)
    vertices = _unit(mesh)
    assert 3 * mesh.num_vertices > 2 * triangle_tree.CHUNK  # several chunks of rays and of boxes
    threads = set()
    trace = TriangleTree._trace

    def recording(self, *args):
        threads.add(threading.get_ident())
        return trace(self, *args)

    monkeypatch.setattr(TriangleTree, "_trace", recording)
    alone = local_thickness(vertices, mesh.faces, mesh.vertex_normals, max_origins=mesh.num_vertices)
    assert len(threads) == 1
    shared = local_thickness(vertices, mesh.faces, mesh.vertex_normals, max_origins=mesh.num_vertices, workers=3)
    assert len(threads) > 2, "the rays were traced on the calling thread only"
    for field in ("inside", "outside", "bend"):
        np.testing.assert_array_equal(getattr(shared, field), getattr(alone, field))
    pairs = intersecting_pairs(vertices, mesh.faces)
    assert len(pairs) > 0 and mesh.num_faces > triangle_tree.CHUNK  # the tube passes into the base
    np.testing.assert_array_equal(intersecting_pairs(vertices, mesh.faces, workers=3), pairs)


def _cone_rays(mesh, vertices, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The thickness's rays from ``count`` random vertices: [R, 3] origins and unit directions, both sides."""
    from engine.geometry.thickness import _cone

    chosen = np.random.default_rng(seed).choice(mesh.num_vertices, count, replace=False)
    directions, _ = _cone(np.asarray(mesh.vertex_normals, np.float64)[chosen])
    origins = np.repeat(vertices[chosen], directions.shape[1], axis=0)
    rays = directions.reshape(-1, 3)
    return np.concatenate((origins, origins)), np.concatenate((-rays, rays))


def _device_trace_matches_numpy(device: str, *, chunk: int | None = None) -> None:
    from engine.geometry.device_trace import DEVICE_CHUNK, DeviceTree

    for name, faces in (("lamp", 6000), ("chair", 4000)):
        mesh = _mesh(name, faces)
        vertices = _unit(mesh)
        tree = TriangleTree.build(vertices, mesh.faces)
        origins, directions = _cone_rays(mesh, vertices, 600, seed=faces)
        for near, far in ((1e-6, MAX_DISTANCE), (0.05, 0.3)):
            expected = tree.nearest_hits(origins, directions, far, near)
            assert 0 < np.isfinite(expected).sum() < len(expected)  # hits and misses
            got = DeviceTree(tree, device).nearest_hits(origins, directions, far, near, chunk=chunk or DEVICE_CHUNK)
            np.testing.assert_array_equal(got, expected)


def test_torch_traces_the_trees_rays_to_the_same_distances_bit_for_bit():
    """The device traversal (device_trace.py) runs numpy's operations in numpy's precisions: on the
    CPU its distances are numpy's exactly, in one chunk or several."""
    _device_trace_matches_numpy("cpu")
    _device_trace_matches_numpy("cpu", chunk=1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to PyTorch here")
def test_a_gpu_traces_the_trees_rays_to_numpys_distances():
    _device_trace_matches_numpy("cuda")


def test_the_thickness_traced_by_torch_is_numpys():
    mesh = _mesh("lamp", 6000)
    vertices = _unit(mesh)
    on_threads = local_thickness(vertices, mesh.faces, mesh.vertex_normals, workers=2)
    by_torch = local_thickness(vertices, mesh.faces, mesh.vertex_normals, device=torch.device("cpu"))
    for field in ("inside", "outside", "bend"):
        np.testing.assert_array_equal(getattr(by_torch, field), getattr(on_threads, field))


def _part_median(mesh, values, part):
    return float(np.median(values[mesh.labels == mesh.label_names.index(part)]))


def test_thickness_reads_walls_and_tubes():
    """The lamp's shade is a 3 mm wall, its tube 18 mm across; the cup's wall 1.5 mm."""
    lamp = _mesh("lamp", 8000)
    scale = Normalization.fit(lamp.vertices).scale
    inside = lamp.local_thickness().inside * scale  # object units (metres)
    assert _part_median(lamp, inside, "shade") == pytest.approx(0.003, rel=0.1)
    assert 0.009 <= _part_median(lamp, inside, "tube") <= 0.018  # between the radius and the diameter
    assert _part_median(lamp, inside, "base") > 2 * _part_median(lamp, inside, "tube")  # 35 mm tall
    cup = _mesh("cup", 8000)
    cup_inside = cup.local_thickness().inside * Normalization.fit(cup.vertices).scale
    assert float(np.median(cup_inside)) == pytest.approx(0.0015, rel=0.15)


def test_outside_room_sees_the_gap_between_handle_and_body():
    mug = _mesh("mug", 6000)
    scale = Normalization.fit(mug.vertices).scale
    outside = mug.local_thickness().outside * scale
    handle = mug.labels == mug.label_names.index("handle")
    facing_body = handle & (mug.vertices[:, 0] < 0.055) & (np.abs(mug.vertices[:, 2]) < 0.002)
    assert facing_body.any()
    assert outside[facing_body].max() < 0.03  # the handle's inner side looks at the body ~2-3 cm away
    radius = np.linalg.norm(mug.vertices[:, [0, 2]], axis=1)
    away = ~handle & (mug.vertices[:, 0] < -0.02) & (radius > 0.038) & (mug.vertices[:, 1] > 0.01)
    assert np.median(outside[away]) > 0.05  # the body's outer wall, away from the handle, faces open space


@pytest.mark.parametrize("name", ["lamp", "chair", "figure"])
def test_thickness_changes_no_faster_than_the_surface(name):
    mesh = _mesh(name)
    thickness = mesh.local_thickness()
    vertices = _unit(mesh)
    f = mesh.faces
    for a, b in ((0, 1), (1, 2), (2, 0)):
        length = np.linalg.norm(vertices[f[:, a]] - vertices[f[:, b]], axis=1)
        for values in (thickness.inside, thickness.outside, thickness.bend):
            step = np.abs(values[f[:, a]].astype(np.float64) - values[f[:, b]])
            assert (step <= length + 1e-6).all()
    for values in (thickness.inside, thickness.outside, thickness.bend):
        assert values.dtype == np.float32 and (values > 0).all() and (values <= MAX_DISTANCE).all()


def test_sampled_origins_agree_with_every_vertex():
    mesh = _mesh("lamp", 6000)
    every = local_thickness(_unit(mesh), mesh.faces, mesh.vertex_normals, max_origins=mesh.num_vertices)
    sampled = local_thickness(_unit(mesh), mesh.faces, mesh.vertex_normals, max_origins=mesh.num_vertices // 4)
    for part in mesh.label_names:
        assert _part_median(mesh, sampled.inside, part) == pytest.approx(_part_median(mesh, every.inside, part),
                                                                         rel=0.15)


def _triangles(*corners):
    vertices = np.array([c for tri in corners for c in tri], np.float64)
    return vertices, np.arange(len(vertices)).reshape(-1, 3)


def test_crossing_triangles_are_found_and_touching_ones_are_not():
    vertices, faces = _triangles([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0.2, 0.2, -1), (0.2, 0.2, 1), (0.3, 1.5, 0)])
    assert intersecting_pairs(vertices, faces).tolist() == [[0, 1]]
    apart = vertices.copy()
    apart[3:, 0] += 5.0
    assert len(intersecting_pairs(apart, faces)) == 0
    shared = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float64)
    assert len(intersecting_pairs(shared, np.array([[0, 1, 2], [0, 3, 4]]))) == 0  # a shared corner


def test_new_intersections_ignore_contacts_the_input_already_had():
    lamp = _mesh("lamp")
    before = _unit(lamp)
    assert len(intersecting_pairs(before, lamp.faces)) > 0, "the tube is pushed into the base by design"
    pieces = face_components(lamp.faces)
    assert pieces.max() + 1 == 3
    after = before.copy()
    tube = lamp.labels == lamp.label_names.index("tube")
    after[tube, 1] -= 0.01  # the tube sinks a little deeper into the base: nothing new went wrong
    assert len(new_intersections(before, after, lamp.faces)) == 0
    shade = lamp.labels == lamp.label_names.index("shade")
    outer = shade & (np.einsum("ij,ij->i", lamp.vertex_normals[:, [0, 2]], before[:, [0, 2]]) > 0) & (before[:, 0] > 0)
    pushed = before.copy()
    pushed[outer] -= 0.05 * lamp.vertex_normals[outer]  # half the outer wall pushed through the inner one
    assert len(new_intersections(before, pushed, lamp.faces)) > 0
