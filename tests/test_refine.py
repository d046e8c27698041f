"""The subdivided copy a coarse mesh is optimized on (engine/geometry/refine.py, engine/work_mesh.py):
it lies on the original's surface, has no cracks, keeps the original's vertices first, keeps the
budget, and is chosen only where it helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from tolerances import SAME_MATH, assert_close

from engine.cameras import ring_views
from engine.config import settings_for
from engine.geometry.refine import refine_edges
from engine.mesh import Normalization, mesh_from_arrays
from engine.parts import PartWeights
from engine.render import Renderer
from engine.samples import sample_mesh
from engine.work_mesh import median_edge_pixels, pixel_length, working_copy


def edge_lengths(vertices, faces):
    return np.linalg.norm(vertices[faces] - vertices[np.roll(faces, -1, axis=1)], axis=-1)


def edge_uses(faces) -> dict[tuple[int, int], int]:
    """How many faces use each undirected edge."""
    keys = np.sort(np.stack([faces, np.roll(faces, -1, axis=1)], axis=-1).reshape(-1, 2), axis=1)
    unique, counts = np.unique(keys, axis=0, return_counts=True)
    return dict(zip(map(tuple, unique.tolist()), counts.tolist(), strict=True))


def surface_area(vertices, faces) -> float:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)


def face_normals(vertices, faces):
    n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def lamp():
    return sample_mesh("lamp", 1500)


def test_the_copy_lies_on_the_surface_without_cracks(lamp):
    target = 0.5 * float(np.median(edge_lengths(lamp.vertices, lamp.faces)))
    copy = refine_edges(lamp.vertices, lamp.faces, target, 1_000_000)
    v = copy.vertices.astype(np.float64)
    # every edge is now within the target, and the originals come first, unchanged
    assert edge_lengths(v, copy.faces).max() <= target * (1 + SAME_MATH)
    assert np.array_equal(copy.vertices[: lamp.num_vertices], lamp.vertices)
    # each vertex is the barycentric point of its source face that it claims to be
    on_face = (lamp.vertices[lamp.faces[copy.source_face]] * copy.source_bary[..., None]).sum(1)
    assert_close(on_face, copy.vertices, rel=SAME_MATH)
    assert np.all(copy.source_bary >= 0)
    assert_close(copy.source_bary.sum(1), np.ones(len(v)), rel=SAME_MATH)
    # the faces tile the original's: the same total area
    original = lamp.vertices.astype(np.float64)
    assert_close(surface_area(v, copy.faces), surface_area(original, lamp.faces), rel=SAME_MATH)
    # no cracks: an edge used once in the copy lies on an edge used once in the original (its
    # boundary), and every other edge is shared by two faces exactly as on the original
    uses, original_uses = edge_uses(copy.faces), edge_uses(lamp.faces)
    original_boundary_length = sum(np.linalg.norm(original[a] - original[b])
                                   for (a, b), count in original_uses.items() if count == 1)
    boundary_length = sum(np.linalg.norm(v[a] - v[b]) for (a, b), count in uses.items() if count == 1)
    assert abs(boundary_length - original_boundary_length) <= 1e-6 * max(original_boundary_length, 1.0)
    assert max(uses.values()) <= max(original_uses.values())
    # each face lies in its parent face (its corners' barycentrics there are >= 0), and faces the same way
    tri = original[lamp.faces[copy.face_parent]]
    for corner in range(3):  # barycentrics in the parent's plane
        vertex = copy.faces[:, corner]
        d0, d1, d2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], v[vertex] - tri[:, 0]
        g00, g01, g11 = (d0 * d0).sum(1), (d0 * d1).sum(1), (d1 * d1).sum(1)
        r0, r1 = (d2 * d0).sum(1), (d2 * d1).sum(1)
        det = g00 * g11 - g01 * g01
        b1, b2 = (g11 * r0 - g01 * r1) / det, (g00 * r1 - g01 * r0) / det
        # float32 positions round ~1e-7 of their size, ~1e-6 of a small face's: a wrong parent is off by ~1
        assert min(b1.min(), b2.min(), (1 - b1 - b2).min()) > -1e-4
    agree = (face_normals(v, copy.faces) * face_normals(original, lamp.faces)[copy.face_parent]).sum(1)
    assert np.all(agree > 1 - 1e-6)


def test_values_carried_to_the_copy_are_the_original_faces_blend(lamp):
    copy = refine_edges(lamp.vertices, lamp.faces, 0.5 * float(np.median(edge_lengths(lamp.vertices, lamp.faces))),
                        1_000_000)
    # a linear function of position is reproduced exactly at every new vertex
    linear = lamp.vertices @ np.array([0.3, -1.2, 2.0], np.float32)
    assert_close(copy.carry(linear), copy.vertices @ np.array([0.3, -1.2, 2.0], np.float32), rel=SAME_MATH,
                 scale=float(np.abs(linear).max()))
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    carried = copy.reduce_part_weights(parts)
    assert_close(carried.weights.sum(1), np.ones(len(copy.vertices)), rel=SAME_MATH)
    assert np.array_equal(carried.weights[: lamp.num_vertices], parts.weights)
    assert np.array_equal(copy.expand_part_weights(carried).weights, parts.weights)
    # the copy moves along the original's smooth normals, not its own flat faces'
    normals = copy.surface_normals(lamp, copy.mesh(lamp.name))
    assert_close(np.linalg.norm(normals, axis=1), np.ones(len(normals)), rel=SAME_MATH)
    assert np.array_equal(normals[: lamp.num_vertices], lamp.vertex_normals)


def test_the_budget_splits_the_longest_edges_first(lamp):
    budget = lamp.num_vertices + 50
    copy = refine_edges(lamp.vertices, lamp.faces, 1e-6, budget)
    assert len(copy.vertices) == budget
    # the 50 new vertices are the midpoints of the original's 50 longest edges
    keys = np.unique(np.sort(np.stack([lamp.faces, np.roll(lamp.faces, -1, axis=1)], axis=-1).reshape(-1, 2), 1),
                     axis=0)
    points = lamp.vertices.astype(np.float64)
    lengths = np.linalg.norm(points[keys[:, 0]] - points[keys[:, 1]], axis=1)
    longest = keys[np.argsort(-lengths, kind="stable")[:50]]
    midpoints = points[longest].mean(1).astype(np.float32)
    new = copy.vertices[lamp.num_vertices:]

    def rows(a):
        return a[np.lexsort(a.T[::-1])]

    assert_close(rows(new), rows(midpoints), rel=SAME_MATH)
    again = refine_edges(lamp.vertices, lamp.faces, 1e-6, budget)
    assert np.array_equal(again.faces, copy.faces) and np.array_equal(again.vertices, copy.vertices)


def test_auto_subdivides_only_a_coarse_mesh_whose_maps_keep_the_detail(lamp):
    fine = sample_mesh("lamp", 40000)
    textured = settings_for("fast", ["texture.size=512"])
    norm = Normalization.fit(lamp.vertices)
    assert median_edge_pixels(lamp, norm, textured.render) > 2 * textured.field.subdivide_pixels
    copy = working_copy(lamp, norm, textured)
    assert copy is not None and copy.kind == "subdivided copy"
    assert len(copy.vertices) == textured.field.subdivide_max_vertices  # this lamp needs more: the budget binds
    unbounded = settings_for("fast", ["texture.size=512", "field.subdivide_max_vertices=100000"])
    longest = unbounded.field.subdivide_pixels * pixel_length(unbounded.render) * norm.scale
    fine_copy = working_copy(lamp, norm, unbounded)
    assert edge_lengths(fine_copy.vertices, fine_copy.faces).max() <= longest * (1 + SAME_MATH)
    # no maps: the detail would have nowhere to go; a mesh as fine as the renders: nothing to gain
    assert working_copy(lamp, norm, settings_for("fast")) is None
    assert working_copy(fine, Normalization.fit(fine.vertices), textured) is None
    # the setting overrides the choice both ways
    assert working_copy(lamp, norm, settings_for("fast", ["field.optimize_on=subdivided"])) is not None
    assert working_copy(lamp, norm, settings_for("fast", ["texture.size=512", "field.optimize_on=mesh"])) is None
    # a mesh over field.max_vertices is simplified, whatever optimize_on says
    big = settings_for("fast", ["field.optimize_on=subdivided", "field.max_vertices=1000"])
    assert working_copy(sample_mesh("lamp", 5000), norm, big).kind == "simplified copy"


def test_a_single_triangle_splits_into_conforming_halves():
    tri = mesh_from_arrays(np.array([[0, 0, 0], [4, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]]))
    copy = refine_edges(tri.vertices, tri.faces, 2.5, 100)
    assert edge_lengths(copy.vertices, copy.faces).max() <= 2.5
    # open: its boundary is split, not cracked - the edges used once add up to the perimeter
    uses = edge_uses(copy.faces)
    rim = sum(np.linalg.norm(copy.vertices[a] - copy.vertices[b]) for (a, b), count in uses.items() if count == 1)
    assert abs(rim - (4 + 1 + 17 ** 0.5)) < 1e-5 and max(uses.values()) == 2
    assert np.all(face_normals(copy.vertices.astype(np.float64), copy.faces)[:, 2] > 0.999)


# -- a coarse mesh stylized on its copy: the maps show what the guidance model was shown ---------------

def textured_views(mesh, base_color: np.ndarray, settings) -> torch.Tensor:
    """[6, 3, H, W] ring views of ``mesh`` shaded like the guidance renders, each pixel's color read
    from the ``base_color`` map at the pixel's UV."""
    unit = torch.from_numpy(Normalization.fit(mesh.vertices).to_unit(mesh.vertices))
    texture = (torch.from_numpy(mesh.corner_uv), torch.from_numpy(base_color))
    cameras = ring_views(6, settings.views, settings.render)
    return Renderer(settings.render).render(unit, torch.from_numpy(mesh.faces), cameras, texture=texture).color


def test_maps_of_a_coarse_mesh_show_the_pattern_only_when_it_was_optimized_on_its_copy():
    """A 64-face cylinder styled after a picture of stripes: the guidance model judges six views
    textured with the baked base color. On the mesh itself the field between vertices is never seen
    while optimizing, so its maps match the picture worse than the maps of a run on the subdivided
    copy, whose texels carry the pattern inside each face."""
    from engine.api import stylize
    from engine.guidance import ClipGuidance
    from engine.guidance.clip import center_crop, resize_shortest_side
    from engine.models import ModelStore
    from engine.request import StyleRequest
    from engine.texture.atlas import face_atlas
    from engine.texture.texels import sample_texels
    from engine.training.synthetic import striped_picture

    shape = trimesh.creation.cylinder(radius=0.5, height=2.0, sections=16)
    cylinder = mesh_from_arrays(shape.vertices, shape.faces, name="cylinder", corner_uv=face_atlas(len(shape.faces)))
    picture, store = striped_picture(), ModelStore("tiny")
    request = StyleRequest("a plain cylinder", images={"whole": picture})
    results = {}
    for mode in ("mesh", "subdivided"):
        settings = settings_for("fast", ["optim.iterations=60", "run.preview_every=0", "texture.size=256",
                                         "guidance.image_weight=1.0", f"field.optimize_on={mode}",
                                         "field.subdivide_max_vertices=3000"])
        results[mode] = stylize(cylinder, request, settings=settings, models=store, device="cpu")
    assert results["mesh"].record["optimized_on"] == "mesh"
    assert results["subdivided"].record["optimized_on"] == "subdivided copy"
    assert results["subdivided"].record["optimized_vertices"] == 3000
    assert results["subdivided"].colors_srgb.shape == (cylinder.num_vertices, 3)

    guidance = ClipGuidance(store.clip(torch.device("cpu")), settings_for("fast").guidance)
    target = guidance.encode_reference(picture, crops=8, seed=0)

    def likeness(images: torch.Tensor) -> float:
        size = guidance.bundle.image_size
        with torch.no_grad():
            embedded = guidance.encode_images(center_crop(resize_shortest_side(images, size), size))
        return float((embedded @ target).mean())

    scores = {mode: likeness(textured_views(cylinder, result.maps.base_color, settings_for("fast")))
              for mode, result in results.items()}
    assert scores["subdivided"] > scores["mesh"] + 0.05, scores
    # the subdivided run's texels differ from what its vertex colors interpolate to: detail inside faces
    texels = sample_texels(cylinder.corner_uv, 256)
    result = results["subdivided"]
    inside = result.maps.base_color[texels.rows, texels.cols] - texels.interpolate(result.colors_srgb, cylinder.faces)
    assert np.abs(inside).max(1).mean() > 0.05
