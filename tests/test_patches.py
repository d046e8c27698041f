"""The mesh's over-segmentation into patches (engine/geometry/patches.py): pure, structural, deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import trimesh

from engine.geometry.patches import FaceGraph, segment_patches
from engine.samples import ALL_SAMPLES, sample_mesh

PURE = 0.95


def covered_by_pure_patches(patches, face_labels) -> dict[int, float]:
    """Per label: the share of its faces that lie in patches of >= 95% purity."""
    purity = patches.purity(face_labels)
    return {int(k): float((purity[patches.face_patch[face_labels == k]] >= PURE).mean())
            for k in np.unique(face_labels)}


def dense_polyline(points: np.ndarray, spacing: float) -> np.ndarray:
    out = []
    for a, b in itertools.pairwise(points):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / spacing)))
        out.append(a + (b - a) * np.linspace(0, 1, n, endpoint=False)[:, None])
    return np.vstack([*out, points[-1:]])


def welded_stand(fillet: float):
    """One closed surface of revolution: a disc (radius 0.11, 3 cm high) and a thin tube (radius 1 cm,
    40 cm tall) standing on it, joined by a sharp concave seam (fillet 0) or a smooth fillet of that
    radius. Returns (vertices, faces, [F] labels: 1 tube, 0 base), Z up."""
    radius, height, tube, top = 0.11, 0.03, 0.01, 0.4
    t = np.linspace(0, np.pi / 2, 12)
    blend = (np.stack([tube + fillet - fillet * np.sin(t), height + fillet - fillet * np.cos(t)], 1) if fillet
             else np.array([[tube, height]]))
    profile = np.vstack([[0, 0], [radius, 0], [radius, height], blend, [tube, top], [0, top]])
    mesh = trimesh.creation.revolve(dense_polyline(profile, 0.004), sections=48)
    centre = mesh.vertices[mesh.faces].mean(1)
    is_tube = (centre[:, 2] > height + fillet - 1e-9) & (np.hypot(centre[:, 0], centre[:, 1]) < tube * 1.01)
    assert mesh.is_watertight
    return mesh.vertices / np.abs(mesh.vertices).max(), mesh.faces, is_tube.astype(np.int64)


@pytest.mark.parametrize("name", ALL_SAMPLES)
def test_every_part_of_every_sample_is_covered_by_pure_patches(name):
    mesh = sample_mesh(name, 20_000)
    patches = segment_patches(mesh.unit_vertices(), mesh.faces)
    coverage = covered_by_pure_patches(patches, mesh.labels[mesh.faces[:, 0]])
    assert min(coverage.values()) >= PURE, coverage
    assert patches.count >= 64  # an over-segmentation: parts are split further
    assert np.array_equal(np.unique(patches.face_patch), np.arange(patches.count))


@pytest.mark.parametrize("fillet", [0.0, 0.01, 0.03], ids=["sharp seam", "fillet 1 cm", "fillet 3 cm"])
def test_a_thin_tube_welded_to_a_disc_is_its_own_patch(fillet):
    """One connected surface: the seam (a concave crease) or, where a fillet smooths it, the change
    of the surface's radius separates the tube from the disc."""
    vertices, faces, labels = welded_stand(fillet)
    patches = segment_patches(vertices, faces)
    coverage = covered_by_pure_patches(patches, labels)
    assert coverage[0] >= PURE and coverage[1] >= PURE, coverage


def test_no_patch_crosses_a_box_edge():
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.3)).subdivide().subdivide().subdivide()
    normals = np.round(box.face_normals, 6)
    side = np.unique(normals, axis=0, return_inverse=True)[1].reshape(-1)
    patches = segment_patches(box.vertices, box.faces)
    assert patches.purity(side).min() == 1.0
    assert set(np.unique(patches.crease[side[patches.graph.pairs[:, 0]] != side[patches.graph.pairs[:, 1]]])) == {0.0}


def test_patches_are_deterministic_and_follow_the_face_order():
    mesh = sample_mesh("chair", 8_000)
    a = segment_patches(mesh.unit_vertices(), mesh.faces)
    b = segment_patches(mesh.unit_vertices().copy(), mesh.faces.copy())
    assert np.array_equal(a.face_patch, b.face_patch)
    first_face = np.array([np.flatnonzero(a.face_patch == p)[0] for p in range(a.count)])
    assert np.all(np.diff(first_face) > 0)  # numbered by first face


def test_face_graph_links_faces_that_share_an_edge_once():
    faces = np.array([[0, 1, 2], [2, 1, 3], [3, 1, 4], [5, 6, 7]])
    graph = FaceGraph.build(faces)
    assert sorted(map(tuple, graph.pairs.tolist())) == [(0, 1), (1, 2)]
    assert sorted(map(tuple, graph.edges.tolist())) == [(1, 2), (1, 3)]
