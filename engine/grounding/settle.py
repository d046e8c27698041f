"""Settling part labels from pixel evidence (METHOD section 5.1): votes -> faces -> patches -> labels.

1. **Votes.** Every pixel of every view that shows the mesh (the visibility pass names its face)
   votes for each part with that part's mask value, and for *keep* (no part: leave the surface as
   it is) with one minus the largest mask value. A face's votes are divided by the pixels that
   showed it in the views that count, so a face seen large or often counts no more than one seen
   small or rarely. The views that count: those where every part that claims the face was found
   (a part the detector missed in some views is judged by the views that found it, against its
   rivals in the same views), else, per column, the views where that part was found.
2. **Patches.** Faces' shares are pooled per patch of the mesh's over-segmentation
   (:mod:`engine.geometry.patches`), area-weighted over the faces each column counted.
3. **Labels.** Each patch takes one label, part or keep, minimizing the unary cost (minus the log
   of its pooled share, times its seen area) plus a Potts cost on patch boundaries (their length,
   discounted along creases, so boundaries settle on creases): iterated conditional modes over the
   patch graph from the best unary label, sweeps in patch order until nothing changes.
   Patches no view saw take their neighbours' labels; a piece no view saw at all is kept.
4. **Weights.** Vertices take the area-weighted majority label of their faces. Weights are one-hot,
   except in a band of ``band`` edges on each side of a boundary between two *styled* parts,
   where they are averaged over the band. A vertex that keep wins gets weight exactly 0 for every
   part: its color and position stay bit-identical to the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.graph import VertexGraph
from ..geometry.patches import Patches
from ..parts import PartWeights

# Floor of a share inside the log of the unary cost (a share of 0 costs -log(EPS) per unit area).
EPS = 1e-3
# A part claims a face where its mask covers at least this share of the face's pixels in the views
# where the part was found (face_votes compares the claimants in the views that found them all).
CLAIM = 0.1
# A boundary along a sharp crease still costs this share of its length, so patches no view saw
# (the underside of a base behind its rim) follow their neighbours across creases too.
CREASE_FLOOR = 0.05


@dataclass(frozen=True)
class FaceVotes:
    """Per-face evidence, one column per part and a last one for keep.

    Attributes:
        votes: [F, K + 1] summed mask values (keep: summed ``1 - max mask``).
        pixels: [F, K + 1] how many pixels showed the face in the views that count for the column: for a
            part, the views where it has evidence at all (a box was found); for keep, every view.
    """

    votes: np.ndarray
    pixels: np.ndarray

    def shares(self) -> np.ndarray:
        """[F, K + 1] each column's votes per pixel, in 0..1 (0 where the column saw no pixel of the face)."""
        return np.where(self.pixels > 0, self.votes / np.maximum(self.pixels, 1e-12), 0.0)

    @property
    def seen(self) -> np.ndarray:
        """[F] bool: some view showed the face."""
        return self.pixels[:, -1] > 0


def face_votes(face_id: np.ndarray, masks: np.ndarray, num_faces: int) -> FaceVotes:
    """Votes of the views' pixels for their faces.

    Which views count, per face: the parts that claim it (a share of at least :data:`CLAIM` in the
    views where they were found) are compared in the views where *all* of them were found, so a mug's
    handle, found in a few views, is not outvoted by the body's mask spilling over it in the views
    where no handle box was found. A face no such view shows falls back to each part's own views (a
    view where a part has no box neither votes for nor counts against it) and keep's all views. A
    part no mask claims anywhere (one the prompt does not name) gets keep's votes.

    Args:
        face_id: [N, H, W] int, the face each pixel shows (-1: background).
        masks: [N, K, H, W] float32 in 0..1, each part's evidence per pixel (same H x W).
    """
    n, k = masks.shape[:2]
    found = masks.reshape(n, k, -1).max(-1) > 0  # [N, K]: the part has evidence in the view
    per_view_votes = np.zeros((n, num_faces, k + 1))
    per_view_pixels = np.zeros((n, num_faces))
    for view in range(n):
        shown = face_id[view] >= 0
        faces = face_id[view][shown]
        columns = [*masks[view][:, shown], 1.0 - masks[view][:, shown].max(0) if k else np.ones(len(faces))]
        per_view_votes[view] = np.stack([np.bincount(faces, weights=c, minlength=num_faces) for c in columns], 1)
        per_view_pixels[view] = np.bincount(faces, minlength=num_faces)
    # Fallback views: per part, the views where it was found; for keep, every view.
    own = np.concatenate((found, np.ones((n, 1), bool)), 1).astype(np.float64)  # [N, K + 1]
    own_votes = np.einsum("nfc,nc->fc", per_view_votes, own)
    own_pixels = np.einsum("nf,nc->fc", per_view_pixels, own)
    claims = np.where(own_pixels[:, :k] > 0, own_votes[:, :k] / np.maximum(own_pixels[:, :k], 1e-12), 0.0) >= CLAIM
    missing = claims.astype(np.float64) @ (~found).T.astype(np.float64) > 0  # [F, N]: a claimant was not found
    common = (per_view_pixels.T > 0) & ~missing  # [F, N]
    use_common = common.any(1)
    common_votes = np.einsum("nfc,fn->fc", per_view_votes, common.astype(np.float64))
    common_pixels = (per_view_pixels.T * common).sum(1)
    votes = np.where(use_common[:, None], common_votes, own_votes)
    pixels = np.where(use_common[:, None], common_pixels[:, None], own_pixels)
    return FaceVotes(votes, pixels)


@dataclass(frozen=True)
class Settled:
    """The settled localization: ``weights`` (with per-vertex confidence: the pooled share of the
    evidence for the vertex's label, 0 where no view saw it), ``face_labels`` [F] (part index, -1
    keep), and ``part_confidence`` per part name (0..1: the mean share of the evidence for the part
    over the seen faces it got, area-weighted)."""

    weights: PartWeights
    face_labels: np.ndarray
    part_confidence: dict[str, float]


def settle_labels(
    votes: FaceVotes,
    patches: Patches,
    vertices: np.ndarray,
    faces: np.ndarray,
    names: tuple[str, ...],
    *,
    smoothness: float,
    band: int,
    source: str = "grounding",
) -> Settled:
    """Part weights for the mesh ``vertices`` [V, 3] / ``faces`` [F, 3] from per-face ``votes``.

    ``smoothness``: the Potts weight (a boundary of length L costs ``smoothness`` x L x the mean
    edge length, in the unary's area units); ``band``: edges of soft weights on each side of a
    boundary between two styled parts.
    """
    k = len(names)
    corners = np.asarray(vertices, np.float64)[faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1) / 2
    shares = votes.shares()
    seen_area = np.where(votes.seen, area, 0.0)
    patch_area = np.bincount(patches.face_patch, weights=seen_area, minlength=patches.count)
    pooled = np.zeros((patches.count, k + 1))
    for j in range(k + 1):  # each column's area-weighted mean over the faces it counted
        counted_area = np.where(votes.pixels[:, j] > 0, area, 0.0)
        total = np.bincount(patches.face_patch, weights=shares[:, j] * counted_area, minlength=patches.count)
        pooled[:, j] = total / np.maximum(np.bincount(patches.face_patch, weights=counted_area,
                                                      minlength=patches.count), 1e-30)
    unary = -np.log(pooled + EPS) * patch_area[:, None]
    unary -= unary.min(1, keepdims=True)

    a, b, cut_cost, mean_edge = _patch_boundaries(patches, vertices)
    labels = _iterated_modes(unary, patch_area > 0, a, b, smoothness * mean_edge * cut_cost, patches.count)
    face_labels = labels[patches.face_patch]
    vertex_labels = _vertex_majority(face_labels, faces, area, len(vertices), k)
    weights = _one_hot_with_band(vertex_labels, faces, len(vertices), k, band)

    face_share = pooled[patches.face_patch, np.where(face_labels < 0, k, face_labels)]
    confidence = np.zeros(len(vertices))
    np.maximum.at(confidence, faces.reshape(-1), np.repeat(face_share, 3))
    part_confidence = {}
    for j, name in enumerate(names):
        seen_area_of_part = seen_area[face_labels == j].sum()
        part_confidence[name] = (float((face_share * seen_area)[face_labels == j].sum() / seen_area_of_part)
                                 if seen_area_of_part > 0 else 0.0)
    return Settled(PartWeights(names, weights.astype(np.float32), confidence.astype(np.float32), source),
                   face_labels.astype(np.int64), part_confidence)


def _patch_boundaries(patches: Patches, vertices: np.ndarray):
    """Adjacent patch pairs ``a``, ``b`` [P'] with their crease-discounted boundary length [P'], and
    the mesh's mean edge length."""
    graph = patches.graph
    edge_length = np.linalg.norm(vertices[graph.edges[:, 0]] - vertices[graph.edges[:, 1]], axis=1)
    pa, pb = patches.face_patch[graph.pairs[:, 0]], patches.face_patch[graph.pairs[:, 1]]
    across = pa != pb
    lo, hi = np.minimum(pa, pb)[across], np.maximum(pa, pb)[across]
    key = lo * patches.count + hi
    unique, inverse = np.unique(key, return_inverse=True)
    discount = CREASE_FLOOR + (1.0 - CREASE_FLOOR) * patches.crease
    cost = np.bincount(inverse, weights=(edge_length * discount)[across], minlength=len(unique))
    mean_edge = float(edge_length.mean()) if len(edge_length) else 0.0
    return unique // patches.count, unique % patches.count, cost, mean_edge


def _iterated_modes(unary: np.ndarray, seen: np.ndarray, a: np.ndarray, b: np.ndarray, cost: np.ndarray,
                    count: int) -> np.ndarray:
    """[P] labels in -1 (keep) .. K-1 minimizing ``unary`` [P, K + 1] plus Potts ``cost`` on the
    patch pairs (a, b); unseen patches start undecided and take their neighbours' labels."""
    k = unary.shape[1] - 1
    labels = np.where(seen, unary.argmin(1), -2)  # -2: undecided; column k is keep
    neighbours: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    for p, q, c in zip(a.tolist(), b.tolist(), cost.tolist(), strict=True):
        neighbours[p].append((q, c))
        neighbours[q].append((p, c))
    rows = unary.tolist()
    for _ in range(50):
        changed = False
        for p in range(count):
            total = list(rows[p]) if seen[p] else [0.0] * (k + 1)
            decided = False
            for q, c in neighbours[p]:
                label = labels[q]
                if label == -2:
                    continue
                decided = True
                for j in range(k + 1):
                    if j != label:
                        total[j] += c
            if not seen[p] and not decided:
                continue
            best = min(range(k + 1), key=lambda j: (total[j], j != k))  # ties go to keep
            if best != labels[p]:
                labels[p] = best
                changed = True
        if not changed:
            break
    labels = np.where(labels < 0, k, labels)  # a piece no view saw keeps its look
    return np.where(labels == k, -1, labels).astype(np.int64)


def _vertex_majority(face_labels: np.ndarray, faces: np.ndarray, area: np.ndarray, num_vertices: int,
                     k: int) -> np.ndarray:
    """[V] each vertex's label (-1 keep): the one its faces carry with the largest total area."""
    column = np.where(face_labels < 0, k, face_labels)
    score = np.zeros((num_vertices, k + 1))
    for corner in range(3):
        np.add.at(score, (faces[:, corner], column), area + 1e-30)
    best = score.argmax(1)
    return np.where(best == k, -1, best)


def _one_hot_with_band(labels: np.ndarray, faces: np.ndarray, num_vertices: int, k: int, band: int) -> np.ndarray:
    """[V, K + 1] one-hot weights (keep last), averaged over ``band`` rounds of neighbours among
    styled vertices near boundaries between two styled parts; keep vertices stay exactly keep."""
    weights = np.zeros((num_vertices, k + 1))
    weights[np.arange(num_vertices), np.where(labels < 0, k, labels)] = 1.0
    styled = labels >= 0
    if band <= 0 or k < 2 or not styled.any():
        return weights
    graph = VertexGraph(np.asarray(faces, np.int64), num_vertices)
    near = np.zeros(num_vertices, bool)  # styled vertices within `band` edges of another styled part
    other = styled[graph.source] & styled[graph.target] & (labels[graph.source] != labels[graph.target])
    near[graph.source[other]] = True
    for _ in range(band - 1):
        grown = near.copy()
        grown[graph.source[near[graph.target] & styled[graph.source]]] = True
        near = grown
    parts = weights[:, :k]
    for _ in range(band):
        parts = np.where(near[:, None], graph.mean_of_neighbours(parts, mask=styled), parts)
    weights[:, :k] = np.where(styled[:, None], parts / np.maximum(parts.sum(1, keepdims=True), 1e-12), 0.0)
    return weights
