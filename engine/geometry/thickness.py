"""Local thickness of a shape at each vertex, inside and outside (a shape-diameter function).

Inside: rays leave the vertex in a cone around the *inverted* normal; each ray's distance to the
nearest surface, times the cosine of its angle to the cone's axis (so a flat wall of thickness w
reads w from every ray), is one estimate; their median is robust to rays that slip through a gap
or graze a neighbouring part. Outside: the same along the normal, but the smallest estimate, since
it measures the room in front of the surface - the gap between a mug's handle and its body, an arm
and a torso, a concave crease's other side - and relief must not close any of it. Both are then
kept from changing faster than the distance along the surface (a local feature size), so the end
cap of a long thin tube reads the tube's width, not its length.
Relief is bounded by them (``engine/relief.py``): a surface may move inward by a fraction of the
inside thickness and outward by a fraction of the smaller of the two, so opposite walls cannot
cross, gaps cannot close and thin parts cannot swell.

Every hit counts, whichever way the surface it hits faces: a mesh with flipped or missing faces,
or parts that interpenetrate (a lamp's tube pushed into its base), then reads thinner, never
thicker, which only makes relief more careful there.

Frame: the unit frame (the mesh fills the unit sphere); distances are in unit-frame units.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from .graph import VertexGraph
from .triangle_tree import TriangleTree, morton_codes

#: Ray directions per vertex and side: the axis, then rings of (angle from it in degrees, rays).
CONE_RINGS = ((45.0, 8),)
#: Rays leave at most this many vertices (spread evenly over the vertex order's Morton curve);
#: the others take their nearest sampled neighbour's value. Keeps a 100k-face mesh to seconds.
MAX_ORIGINS = 8_000
#: Rays go this far (unit-frame units: the object's radius); a longer thickness reads as this.
MAX_DISTANCE = 1.0
#: Neighbour-averaging rounds; each vertex keeps the smaller of its own and the smoothed value.
SMOOTHING_ROUNDS = 2


@dataclass(frozen=True)
class LocalThickness:
    """Per-vertex room for relief, unit-frame units, each in (0, ``MAX_DISTANCE``].

    Attributes:
        inside: [V] thickness of the shape behind the vertex (towards the inverted normal).
        outside: [V] free space in front of the vertex (along the normal), capped at MAX_DISTANCE.
        bend: [V] radius over which the surface turns: the smallest ``|edge| / |n_u - n_v|`` of the
            vertex's edges (a sphere of radius R reads R; a sharp crease reads about its edge
            length). Moving a surface along its normals by more than this folds it.
    """

    inside: np.ndarray
    outside: np.ndarray
    bend: np.ndarray


def local_thickness(
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    *,
    tree: TriangleTree | None = None,
    max_origins: int = MAX_ORIGINS,
    workers: int = 1,
    device=None,
) -> LocalThickness:
    """The local thickness at ``vertices`` [V, 3] (unit frame) of the mesh (``faces`` [F, 3]) with
    unit vertex ``normals`` [V, 3].

    Rays leave at most ``max_origins`` vertices, evenly spread along a Morton curve through the
    vertices; the others take the value of the nearest sampled vertex along the vertex graph.
    ``workers`` threads trace the rays; or, with a torch ``device`` (a run's GPU), torch traces them
    there (``device_trace.py``). The result depends on neither.
    """
    vertices = np.asarray(vertices, np.float64)
    tree = tree or TriangleTree.build(vertices, faces)
    chosen = np.arange(len(vertices))
    if len(vertices) > max_origins:
        curve = np.argsort(morton_codes(vertices), kind="stable")
        chosen = np.sort(curve[np.linspace(0, len(vertices) - 1, max_origins).round().astype(np.int64)])
    directions, cosines = _cone(np.asarray(normals, np.float64)[chosen])  # [S, K, 3], [K]
    start = np.repeat(vertices[chosen], directions.shape[1], axis=0)
    min_distance = 1e-6
    if device is None:
        trace = partial(tree.nearest_hits, workers=workers)
    else:
        from .device_trace import DeviceTree  # torch, imported only for a device

        trace = DeviceTree(tree, device).nearest_hits
    sides = []
    for sign, pool in ((-1.0, np.median), (1.0, np.min)):
        rays = (sign * directions).reshape(-1, 3)
        hits = trace(start, rays, MAX_DISTANCE, min_distance).reshape(len(chosen), -1)
        sides.append(pool(np.minimum(hits * cosines, MAX_DISTANCE), axis=1))
    graph = VertexGraph(np.asarray(faces, np.int64), len(vertices))
    lengths = np.linalg.norm(vertices[graph.source] - vertices[graph.target], axis=1)
    inside, outside = (_lipschitz(_spread(values, chosen, graph), graph, lengths) for values in sides)
    bend = bend_radius(np.asarray(normals, np.float64), graph, lengths)
    return LocalThickness(*(values.astype(np.float32) for values in (inside, outside, bend)))


def bend_radius(normals: np.ndarray, graph: VertexGraph, lengths: np.ndarray) -> np.ndarray:
    """[V] the radius over which the surface turns at each vertex, made 1-Lipschitz along the surface.

    The smallest |edge| / |change of the unit normal along it| over each vertex's edges, in
    (0, MAX_DISTANCE]; ``normals`` [V, 3] unit, ``lengths`` [E'] of ``graph``'s directed edges."""
    return _lipschitz(_edge_radius(normals, graph, lengths), graph, lengths)


def _edge_radius(normals: np.ndarray, graph: VertexGraph, lengths: np.ndarray) -> np.ndarray:
    """[V] smallest |edge| / |change of the unit normal along it| over each vertex's edges."""
    turn = np.linalg.norm(normals[graph.source] - normals[graph.target], axis=1)
    radius = np.minimum(lengths / np.maximum(turn, 1e-12), MAX_DISTANCE)
    out = np.full(graph.num_vertices, MAX_DISTANCE)
    np.minimum.at(out, graph.target, radius)
    return np.maximum(out, 1e-6)


def _cone(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[S, 3] unit axes -> ([S, K, 3] unit directions in a cone around each axis, [K] cosines)."""
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(normals, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = np.cross(normals, u)
    directions, cosines = [normals], [1.0]
    for degrees, count in CONE_RINGS:
        tilt = np.radians(degrees)
        for k in range(count):
            phase = 2.0 * np.pi * k / count
            directions.append(np.cos(tilt) * normals + np.sin(tilt) * (np.cos(phase) * u + np.sin(phase) * w))
            cosines.append(np.cos(tilt))
    return np.stack(directions, 1), np.array(cosines)


def _spread(values: np.ndarray, chosen: np.ndarray, graph: VertexGraph) -> np.ndarray:
    """Sampled values -> [V]: unsampled vertices take the mean of their filled neighbours (growing
    outwards), then a few rounds of neighbour averaging, each vertex keeping the smaller of its
    own and the averaged value."""
    known = np.zeros(graph.num_vertices, bool)
    known[chosen] = True
    filled = np.zeros((graph.num_vertices, 1))
    filled[chosen, 0] = values
    raw = graph.fill(filled, known, unreached=np.array([MAX_DISTANCE]))
    out = raw
    for _ in range(SMOOTHING_ROUNDS):
        out = graph.mean_of_neighbours(out)
    return np.maximum(np.minimum(raw, out)[:, 0], 1e-6)


def _lipschitz(values: np.ndarray, graph: VertexGraph, lengths: np.ndarray) -> np.ndarray:
    """The largest values <= ``values`` that change by at most an edge's length across each edge.

    Thickness is a local feature size: it cannot grow faster than one moves along the surface. The
    end cap of a long thin tube measures the whole tube along its normal; here it reads the tube's
    width plus the distance to its rim, so relief there stays in proportion to the tube."""
    source, target = graph.source, graph.target
    out = values.copy()
    while True:  # rounds of relaxation, each one edge further; stops when nothing changes
        reach = np.full_like(out, np.inf)
        np.minimum.at(reach, target, out[source] + lengths)
        lowered = np.minimum(out, reach)
        if np.array_equal(lowered, out):
            return out
        out = lowered
