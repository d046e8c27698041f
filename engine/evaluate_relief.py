"""``python -m engine eval-relief``: does relief keep each shape's own thickness, and appear where asked?

Each case stylizes a procedural sample (exact part labels) through the door, as a user would -
parts located by the models' grounding, the relief level the case names - and measures the result
against the input:

- thickness change per labelled part: the wall behind each vertex (along its inverted normal, to
  the first surface met) changes by the vertex's displacement plus that surface point's; as a
  share of the wall's thickness, median and 95th percentile (:func:`wall_change`);
- the lamp's tube: how far its side vertices moved from the tube's axis, as a share of its radius;
- new self-intersections (``geometry/intersections.py``) and faces turned inside out;
- mean |displacement| as a share of the object's radius (the unit frame's unit);
- the largest change of any vertex position (``relief none`` must leave them bit-identical).

Targets (issue 11) are checked per case and printed with the figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from .api import stylize
from .config import settings_for
from .geometry.intersections import new_intersections
from .geometry.thickness import MAX_DISTANCE
from .geometry.triangle_tree import TriangleTree
from .mesh import Normalization
from .models import ModelStore
from .request import StyleRequest
from .samples import sample_mesh

#: Thickness may change by at most this share at the 95th-percentile vertex of a part (subtle).
THICKNESS_TARGET = 0.25
#: Mean |displacement| a relief prompt reaches under ``strong``, as a share of the object's radius.
RELIEF_TARGET = 0.005
LAMP_TUBE_RADIUS = 0.009  # engine/samples.py: the lamp's tube


@dataclass(frozen=True)
class ReliefCase:
    """One stylization to measure. ``keep_thickness``: parts whose thickness must hold (25%);
    ``wants_relief``: the case must reach RELIEF_TARGET; ``still``: positions must not move."""

    name: str
    sample: str
    prompt: str
    relief: str = "subtle"
    preset: str = "fast"
    holistic: bool = False
    keep_thickness: tuple[str, ...] = ()
    wants_relief: bool = False
    still: bool = False


CASES = (
    ReliefCase("lamp demo", "lamp", "red base, yellow tube, blue shade", keep_thickness=("base", "tube")),
    ReliefCase("lamp none", "lamp", "red base, yellow tube, blue shade", relief="none", still=True),
    ReliefCase("chair", "chair", "red seat, blue back, green legs", keep_thickness=("seat", "back", "legs")),
    ReliefCase("mug", "mug", "blue body, red handle", keep_thickness=("body", "handle")),
    ReliefCase("rod", "rod", "a red rod on a block", holistic=True, keep_thickness=("rod",)),
    ReliefCase("cup", "cup", "a red cup", holistic=True, keep_thickness=("wall",)),
    ReliefCase("figure preview", "figure", "a red figure", preset="preview", holistic=True,
               keep_thickness=("arms", "legs")),
    ReliefCase("figure fast", "figure", "a red figure", holistic=True, keep_thickness=("arms", "legs")),
    ReliefCase("vase bark", "vase", "a vase made of tree bark", relief="strong", holistic=True, wants_relief=True),
)


@dataclass(frozen=True)
class ReliefScore:
    """The figures of one case; :attr:`failures` lists the targets it misses."""

    case: ReliefCase
    thickness_change: dict[str, tuple[float, float]]
    new_intersections: int
    flipped_faces: int
    mean_displacement: float
    max_position_change: float
    seconds: float
    tube_radius_change: float | None = None
    failures: tuple[str, ...] = ()


def evaluate_relief(
    cases=CASES, *, models: ModelStore | str = "tiny", device: str = "auto", faces: int = 20_000,
    iterations: int | None = None, seed: int = 0,
) -> Iterator[ReliefScore]:
    """Run and measure each case (``iterations`` overrides the presets', for a quicker look)."""
    for case in cases:
        mesh = sample_mesh(case.sample, faces)
        overrides = {"run.seed": seed, **({"optim.iterations": iterations} if iterations else {})}
        started = time.perf_counter()
        result = stylize(mesh, StyleRequest(case.prompt, holistic=case.holistic, relief=case.relief),
                         settings=settings_for(case.preset, overrides), models=models, device=device)
        yield score_relief(case, mesh, result.displaced_vertices(), time.perf_counter() - started,
                           workers=torch.get_num_threads())


def score_relief(
    case: ReliefCase, mesh, displaced: np.ndarray, seconds: float = 0.0, *, workers: int = 1
) -> ReliefScore:
    """The figures of ``case`` for ``mesh`` moved to ``displaced`` [V, 3] (object frame); ``workers``
    threads share the ray and box queries (the figures do not depend on it)."""
    normalization = Normalization.fit(mesh.vertices)
    before = normalization.to_unit(mesh.vertices)
    after = normalization.to_unit(displaced)
    moved = np.linalg.norm(after - before, axis=1)
    ratio = wall_change(before, after, mesh.faces, mesh.vertex_normals, workers=workers)
    changes = {}
    for k, name in enumerate(mesh.label_names):
        part = ratio[(mesh.labels == k) & np.isfinite(ratio)]
        changes[name] = (float(np.median(part)), float(np.percentile(part, 95))) if part.size else (0.0, 0.0)
    tube = _tube_radius_change(mesh, displaced) if mesh.name == "lamp" else None
    fresh = new_intersections(before, after, mesh.faces, workers=workers)
    score = ReliefScore(
        case, changes, len(fresh), flipped_faces(before, after, mesh.faces), float(moved.mean()),
        float(np.abs(displaced - mesh.vertices).max()), seconds, tube,
    )
    return replace(score, failures=tuple(_misses(score)))


def wall_change(before: np.ndarray, after: np.ndarray, faces: np.ndarray, normals: np.ndarray, *,
                workers: int = 1) -> np.ndarray:
    """[V] how much the wall behind each vertex changed, as a share of its thickness.

    The wall is measured along the vertex's inverted normal [V, 3] on the input ``before`` [V, 3]
    (unit frame): from the vertex to the first surface the ray meets. It gets thicker by the vertex's
    own displacement along its normal plus the displacement of the point it meets (interpolated
    over that face), both counted outward; the result is ``|sum| / thickness``, nan where the ray
    meets nothing. ``workers``: threads tracing the rays."""
    faces = np.asarray(faces, np.int64)
    normals = np.asarray(normals, np.float64)
    along = np.einsum("ij,ij->i", after - before, normals)
    tree = TriangleTree.build(before, faces)
    distance, face = tree.nearest_faces(before, -normals, MAX_DISTANCE, 1e-6, workers=workers)
    hit = face >= 0
    corners = faces[face[hit]]
    weights = _barycentric(before[hit] - distance[hit, None] * normals[hit], before[corners])
    out = np.full(len(before), np.nan)
    out[hit] = np.abs(along[hit] + (weights * along[corners]).sum(1)) / distance[hit]
    return out


def _barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """[N, 3] barycentric weights of [N, 3] points (in their triangles' planes) in [N, 3, 3] triangles."""
    a = triangles[:, 0]
    ab, ac, ap = triangles[:, 1] - a, triangles[:, 2] - a, points - a
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
    determinant = d00 * d11 - d01 * d01
    determinant = np.where(np.abs(determinant) > 0, determinant, 1.0)
    v = (d11 * d20 - d01 * d21) / determinant
    w = (d00 * d21 - d01 * d20) / determinant
    return np.stack((1.0 - v - w, v, w), axis=1)


def _misses(score: ReliefScore) -> list[str]:
    case = score.case
    misses = []
    for part in case.keep_thickness:
        if score.thickness_change[part][1] > THICKNESS_TARGET:
            misses.append(f"{part} thickness changed {score.thickness_change[part][1]:.0%} (target <= 25%)")
    if score.tube_radius_change is not None and case.keep_thickness and score.tube_radius_change > THICKNESS_TARGET:
        misses.append(f"tube radius changed {score.tube_radius_change:.0%} (target <= 25%)")
    if score.new_intersections:
        misses.append(f"{score.new_intersections} new self-intersecting face pairs (target 0)")
    if score.flipped_faces:
        misses.append(f"{score.flipped_faces} faces turned inside out (target 0)")
    if case.wants_relief and score.mean_displacement < RELIEF_TARGET:
        misses.append(f"mean relief {score.mean_displacement:.2%} of the radius (target >= {RELIEF_TARGET:.1%})")
    if case.still and score.max_position_change != 0.0:
        misses.append(f"positions moved by up to {score.max_position_change:.3g} (target: bit-identical)")
    return misses


def _tube_radius_change(mesh, displaced: np.ndarray) -> float:
    """The lamp's tube: the largest change of a side vertex's distance from the Y axis, as a share of
    the tube's radius (side vertices: those at the radius, not on the end caps)."""
    tube = mesh.labels == mesh.label_names.index("tube")
    radius_before = np.linalg.norm(mesh.vertices[tube][:, [0, 2]], axis=1)
    side = np.abs(radius_before - LAMP_TUBE_RADIUS) < 0.05 * LAMP_TUBE_RADIUS
    radius_after = np.linalg.norm(displaced[tube][side][:, [0, 2]], axis=1)
    return float(np.abs(radius_after - radius_before[side]).max() / LAMP_TUBE_RADIUS)


def flipped_faces(before: np.ndarray, after: np.ndarray, faces: np.ndarray) -> int:
    """How many faces turned inside out (their normal turned by more than 90 degrees) between
    ``before`` and ``after`` [V, 3]."""
    def normals(v):
        tri = v[faces].astype(np.float64)
        return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])

    return int((np.einsum("ij,ij->i", normals(before), normals(after)) < 0).sum())


def format_score(score: ReliefScore) -> list[str]:
    """The printed lines of one case."""
    case = score.case
    parts = ", ".join(f"{name} {median:.1%}/{p95:.1%}" for name, (median, p95) in score.thickness_change.items())
    lines = [
        f"{case.name:<15} relief {case.relief:<7} {case.preset:<8} {score.seconds:6.1f} s",
        f"    thickness change (median/p95): {parts}",
        f"    new self-intersections {score.new_intersections}, inside-out faces {score.flipped_faces}, "
        f"mean |displacement| {score.mean_displacement:.3%} of the radius, "
        f"largest move {score.max_position_change:.3g}",
    ]
    if score.tube_radius_change is not None:
        lines.append(f"    tube: side vertices moved from the axis by up to {score.tube_radius_change:.1%} "
                     "of its radius")
    lines.append("    " + ("target met" if not score.failures else "MISSED: " + "; ".join(score.failures)))
    return lines
