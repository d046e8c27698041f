"""Large meshes (issue 17, item 1): optimized on a simplified copy, carried back to every original
vertex; a run that would not fit in memory is refused before it starts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import trimesh

import engine.memory
from engine.api import stylize
from engine.config import settings_for
from engine.errors import ResourceError, SettingsError
from engine.events import PreviewEvent, StageEvent
from engine.geometry import cluster_vertices
from engine.memory import estimate_memory, estimate_peak_bytes
from engine.mesh import mesh_from_arrays
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh

TINY_RUN = {"optim.iterations": 2, "views.count": 2, "render.resolution": 64, "field.width": 64,
            "run.preview_every": 1}


def sphere(count: int = 120):
    s = trimesh.creation.uv_sphere(count=[count, count])
    return mesh_from_arrays(s.vertices, s.faces, name="sphere")


def test_clustering_keeps_the_budget_and_maps_every_vertex():
    mesh = sphere()
    proxy = cluster_vertices(mesh.vertices, mesh.faces, 2000)
    assert 1000 < len(proxy.vertices) <= 2000
    assert proxy.cluster.shape == (mesh.num_vertices,) and proxy.cluster.max() == len(proxy.vertices) - 1
    assert proxy.faces.min() >= 0 and proxy.faces.max() < len(proxy.vertices)
    assert np.all(proxy.faces[:, 0] != proxy.faces[:, 1]) and np.all(proxy.faces[:, 1] != proxy.faces[:, 2])
    # each proxy vertex is the mean of its cluster, so it lies near the sphere
    assert np.abs(np.linalg.norm(proxy.vertices, axis=1) - 1.0).max() < 0.05
    again = cluster_vertices(mesh.vertices, mesh.faces, 2000)
    assert np.array_equal(again.cluster, proxy.cluster) and np.array_equal(again.faces, proxy.faces)
    weights = np.random.default_rng(0).dirichlet(np.ones(3), mesh.num_vertices)
    assert np.allclose(proxy.carry(weights).sum(1), 1.0, atol=1e-5)


def test_a_large_mesh_is_optimized_on_a_copy_and_carried_back_to_every_vertex():
    lamp = sample_mesh("lamp", 20000)
    settings = settings_for("preview", {**TINY_RUN, "field.max_vertices": 2000})
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    events = []
    result = stylize(lamp, StyleRequest("red base, blue shade", parts=parts), settings=settings, models="tiny",
                     device="cpu", on_event=events.append)
    assert result.record["optimized_vertices"] <= 2000 < lamp.num_vertices
    assert result.colors_srgb.shape == (lamp.num_vertices, 3) and result.parts.weights.shape[0] == lamp.num_vertices
    assert "simplifying" in [e.name for e in events if isinstance(e, StageEvent)]
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert previews and all(e.colors_srgb.shape == (lamp.num_vertices, 3) for e in previews)
    tube = lamp.labels == lamp.label_names.index("tube")  # unnamed: exactly as it was, per original vertex
    assert np.all(result.displacement[tube] == 0) and np.all(result.colors_srgb[tube] == np.float32(0.5))
    styled = ~tube
    assert np.abs(result.colors_srgb[styled] - 0.5).max() > 1e-4
    # the field is evaluated at every original vertex: neighbours within one cluster still differ
    proxy = cluster_vertices(lamp.vertices, lamp.faces, 2000)
    same_cluster = proxy.cluster == proxy.cluster[np.flatnonzero(styled)[0]]
    assert same_cluster.sum() > 1 and len(np.unique(result.colors_srgb[same_cluster], axis=0)) > 1


def test_the_copy_is_used_only_above_the_budget():
    mug = sample_mesh("mug", 2000)
    settings = settings_for("preview", {**TINY_RUN, "field.max_vertices": 1000 + mug.num_vertices})
    result = stylize(mug, "a red mug", settings=settings, models="tiny", device="cpu")
    assert result.record["optimized_vertices"] == mug.num_vertices


def test_max_vertices_is_checked():
    settings_for("fast", {"field.max_vertices": 0})
    with pytest.raises(SettingsError, match=r"field\.max_vertices"):
        settings_for("fast", {"field.max_vertices": 10})


def test_a_run_that_would_not_fit_is_refused_before_it_starts(monkeypatch):
    """Refused with the vertex budget that fits in 80% of the free memory, before any model loads."""
    mesh = sphere(200)  # the field's share outweighs what does not grow with the mesh
    settings = settings_for("preview", {"field.max_vertices": 0})
    estimate = estimate_memory(mesh.num_vertices, settings, 0, models="tiny")
    base = estimate_memory(0, settings, 0, models="tiny")
    need, fixed = estimate.total - estimate.process, base.total - base.process  # the process holds its own
    free = (fixed + 0.5 * (need - fixed)) / 0.8  # room for about half of the vertices
    monkeypatch.setattr(engine.memory, "available_bytes", lambda device: int(free))
    with pytest.raises(ResourceError, match=r"would need about .* GB .*--set field\.max_vertices=(\d+)") as refused:
        stylize(mesh, "a red sphere", settings=settings, models="tiny", device="cpu")
    budget = int(re.search(r"max_vertices=(\d+)", str(refused.value)).group(1))
    assert 0.4 * mesh.num_vertices < budget <= 0.5 * mesh.num_vertices
    fits = estimate_memory(budget, settings, 0, models="tiny")
    assert fits.total - fits.process <= free


def test_the_estimate_follows_the_measured_growth():
    """docs/performance.md: ~13.5 KB per optimized vertex with the default field; with the tiny models
    and no localization, under 1 GB besides (process, weights, the run's state, a step's renders)."""
    settings = settings_for("preview")
    per_vertex = (estimate_peak_bytes(200_000, settings) - estimate_peak_bytes(100_000, settings)) / 100_000
    assert 12_000 < per_vertex < 15_000
    assert 0.6 * 2**30 < estimate_peak_bytes(0, settings) < 1.0 * 2**30
    smaller = settings_for("preview", {"field.width": 64})
    assert estimate_peak_bytes(100_000, smaller) < estimate_peak_bytes(100_000, settings)
