"""Per-vertex part weights: which vertices the style of each part applies to.

Weights come from the user (per-vertex labels, or Blender vertex groups) or from localization
(``grounding/settle.py``). Each vertex has one weight per named part plus a *rest* weight for
"no part"; the row sums to 1. Vertices whose weight is all rest keep their original color and
shape when a part prompt is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PartNotFound
from .prompt import normalize_part_name


@dataclass(frozen=True)
class PartWeights:
    """Soft assignment of vertices to named parts.

    Attributes:
        names: the K part names, normalized (lower case, single spaces).
        weights: [V, K + 1] float32, rows sum to 1; column K is *rest* (no part).
        confidence: [V] float32 in 0..1: how strongly the evidence supports the assignment
            (1 for user-given parts).
        source: ``labels``, ``vertex groups`` or ``grounding``.
    """

    names: tuple[str, ...]
    weights: np.ndarray
    confidence: np.ndarray
    source: str = "labels"

    def __post_init__(self):
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.names) + 1:
            raise ValueError(f"weights must be [V, {len(self.names) + 1}], got {list(self.weights.shape)}")

    @property
    def num_parts(self) -> int:
        return len(self.names)

    @staticmethod
    def from_labels(labels: np.ndarray, names: tuple[str, ...] | list[str], *, source: str = "labels") -> PartWeights:
        """One-hot weights from [V] integer labels indexing ``names`` (-1 = rest)."""
        labels = np.asarray(labels, dtype=np.int64)
        k = len(names)
        if labels.size and (labels.min() < -1 or labels.max() >= k):
            raise ValueError(f"labels must be in [-1, {k - 1}], got [{labels.min()}, {labels.max()}]")
        weights = np.zeros((labels.shape[0], k + 1), dtype=np.float32)
        weights[np.arange(labels.shape[0]), np.where(labels < 0, k, labels)] = 1.0
        return PartWeights(
            tuple(normalize_part_name(n) for n in names), weights, np.ones(labels.shape[0], np.float32), source
        )

    @staticmethod
    def from_vertex_groups(groups: dict[str, np.ndarray], num_vertices: int) -> PartWeights:
        """Weights from per-part [V] weights in 0..1 (e.g. Blender vertex groups).

        Where a vertex's part weights sum to more than 1 they are scaled to sum to 1; otherwise
        the remainder is its rest weight.
        """
        names = tuple(normalize_part_name(n) for n in groups)
        w = np.zeros((num_vertices, len(names) + 1), dtype=np.float32)
        for i, values in enumerate(groups.values()):
            values = np.asarray(values, dtype=np.float32)
            if values.shape != (num_vertices,):
                raise ValueError(f"group {names[i]!r} has shape {list(values.shape)}, expected [{num_vertices}]")
            w[:, i] = np.clip(values, 0.0, 1.0)
        total = w[:, :-1].sum(1)
        over = total > 1.0
        w[over, :-1] /= total[over, None]
        w[:, -1] = np.clip(1.0 - w[:, :-1].sum(1), 0.0, 1.0)
        return PartWeights(names, w, np.ones(num_vertices, np.float32), "vertex groups")

    def labels(self) -> np.ndarray:
        """[V] int64 index of the strongest part, -1 where rest is strongest."""
        best = self.weights.argmax(1)
        return np.where(best == self.num_parts, -1, best).astype(np.int64)

    def select(self, parts: tuple[str, ...] | list[str]) -> PartWeights:
        """The weights of ``parts`` in that order; other parts fold into rest.

        Raises :class:`PartNotFound` naming the missing parts and the available ones.
        """
        wanted = [normalize_part_name(p) for p in parts]
        missing = [p for p in wanted if p not in self.names]
        if missing:
            raise PartNotFound(
                f"part(s) {', '.join(repr(m) for m in missing)} not among the given parts "
                f"({', '.join(self.names) or 'none'}); rename them in the prompt or add them."
            )
        columns = [self.names.index(p) for p in wanted]
        chosen = self.weights[:, columns]
        rest = np.clip(1.0 - chosen.sum(1, keepdims=True), 0.0, 1.0)
        return PartWeights(
            tuple(wanted), np.concatenate((chosen, rest), 1).astype(np.float32), self.confidence, self.source
        )

    def iou(self, true_labels: np.ndarray, true_names: tuple[str, ...]) -> dict[str, float]:
        """Per-part IoU of :meth:`labels` against ground-truth [V] labels indexing ``true_names``."""
        predicted = self.labels()
        out = {}
        for k, name in enumerate(self.names):
            if name not in true_names:
                continue
            truth = true_labels == true_names.index(name)
            pred = predicted == k
            union = np.logical_or(truth, pred).sum()
            out[name] = float(np.logical_and(truth, pred).sum() / union) if union else 1.0
        return out


# Part colors (sRGB 0..1) for previews; rest is light gray.
PART_PALETTE = np.array(
    [[0.90, 0.30, 0.20], [0.20, 0.60, 0.90], [0.25, 0.75, 0.30], [0.95, 0.75, 0.15], [0.60, 0.35, 0.80],
     [0.95, 0.50, 0.70], [0.20, 0.75, 0.75], [0.55, 0.40, 0.25]], dtype=np.float32)
REST_COLOR = np.array([0.85, 0.85, 0.85], dtype=np.float32)


def part_colors(weights: np.ndarray) -> np.ndarray:
    """[V, K + 1] part weights -> [V, 3] sRGB preview colors (palette blend, rest gray)."""
    k = weights.shape[1] - 1
    palette = np.concatenate((PART_PALETTE[np.arange(k) % len(PART_PALETTE)], REST_COLOR[None]), 0)
    return (weights @ palette).astype(np.float32)
