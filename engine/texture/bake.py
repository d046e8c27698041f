"""Baking: the trained style field evaluated at every texel of the mesh's own UV layout.

Each covered texel shows one surface point: the barycentric blend of its face's vertices. The
field is evaluated there with the composition (part weights, fixed colors of the rest and of locked
parts, relief bounds) blended the same way, so a part boundary is exactly as crisp in the map as on
the mesh, and the detail between vertices comes from the field itself, not from interpolated
vertex colors. Maps (docs/textures.md):

- base color: sRGB, what the per-vertex colors are at vertices, with the field's detail between;
- displacement: object units along the undisplaced surface's normal (for a renderer that
  displaces the original mesh, e.g. Cycles);
- normal: tangent space (OpenGL convention), the slope of the displacement the mesh's vertices do
  not carry (the texel's displacement minus the vertices' interpolated one), so that on the
  already displaced ``stylized.glb`` it adds only the finer detail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..compose import Composition
from ..config import Settings, TextureSettings
from ..devices import native_bfloat16
from ..events import CancelToken
from ..mesh import Mesh, Normalization
from .maps import pad_islands, padding_sources, tangent_normals
from .shared import share_samples
from .texels import TexelSamples, sample_texels

# (unit-frame points [N, 3], bfloat16=bool, cancel=CancelToken | None) -> the field's per-part
# outputs ([N, P, 3] sRGB colors, [N, P] relief), as StyleTrainer.evaluate_parts
FieldEvaluator = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BakedMaps:
    """Maps of one result, ``size x size``, row 0 at the top, v up (OpenGL / Blender / OBJ).

    Attributes:
        base_color: [S, S, 3] float32 sRGB in 0..1.
        displacement: [S, S] float32, object units along the undisplaced normal.
        detail: [S, S] float32, object units: the displacement the vertices do not carry (the
            texel's minus the one interpolated from the vertices), for a renderer that displaces
            the already displaced mesh further (Blender's Cycles material).
        normal: [S, S, 3] float32 unit tangent-space normals of the detail beyond the vertices.
        covered: [S, S] bool, the texels a face covers (before padding).
        padding: texels filled past each island's border.
        seconds: the time the bake took.
        evaluated: the share of covered texels at which the field was evaluated (the others blend
            them, ``shared.py``).
        precision: the field's arithmetic in the bake (``float32`` or ``bfloat16``).
    """

    base_color: np.ndarray
    displacement: np.ndarray
    detail: np.ndarray
    normal: np.ndarray
    covered: np.ndarray
    padding: int
    seconds: float
    evaluated: float = 1.0
    precision: str = "float32"

    @property
    def size(self) -> int:
        return int(self.covered.shape[0])

    def record(self) -> dict:
        return {"size": self.size, "padding": self.padding, "covered": round(float(self.covered.mean()), 4),
                "evaluated": round(self.evaluated, 4), "precision": self.precision, "seconds": round(self.seconds, 3)}


def bake_maps(evaluate: FieldEvaluator, mesh: Mesh, normalization: Normalization, composition: Composition,
              vertex_displacement: np.ndarray, settings: TextureSettings, *, device: torch.device,
              precision: str = "float32", cancel: CancelToken | None = None) -> BakedMaps:
    """Bake the field ``evaluate`` into maps on ``mesh.corner_uv``.

    Args:
        evaluate: the trained field's per-part outputs (``StyleTrainer.evaluate_parts``).
        mesh: the input mesh, with a UV layout (``corner_uv``).
        normalization: its object <-> unit frame map.
        composition: the run's composition over ``mesh``'s vertices (any device).
        vertex_displacement: [V] the result's per-vertex displacement, object units.
        settings: the maps' size and padding.
        device: where the field runs.
        precision: ``float32`` or ``bfloat16``, the field's arithmetic (:func:`bake_precision`).
        cancel: checked while the field runs (:class:`~engine.errors.Cancelled`).
    """
    started = time.perf_counter()
    texels = sample_texels(mesh.corner_uv, settings.size)
    points = texels.interpolate(normalization.to_unit(mesh.vertices), mesh.faces)
    plan = share_samples(texels, points)  # about a quarter of the texels inside large islands
    part_colors, part_relief = evaluate(torch.from_numpy(points[plan.evaluated]).to(device),
                                        bfloat16=precision == "bfloat16", cancel=cancel)
    colors, displacement = texel_composition(composition, texels, mesh.faces).apply(
        torch.from_numpy(plan.expand(part_colors.numpy())), torch.from_numpy(plan.expand(part_relief.numpy())))
    displacement = normalization.length_to_object(displacement.numpy())
    detail = displacement - texels.interpolate(vertex_displacement.astype(np.float32), mesh.faces)
    lengths = _uv_stretch(mesh)[texels.face]  # [T, 2] object units per UV unit along u and v
    covered = texels.covered
    normal = tangent_normals(texels.image(detail), covered, texels.image(lengths[:, 0], fill=1.0),
                             texels.image(lengths[:, 1], fill=1.0))
    sources = padding_sources(covered, settings.padding)
    return BakedMaps(
        base_color=pad_islands(texels.image(colors.numpy().astype(np.float32)), sources),
        displacement=pad_islands(texels.image(displacement.astype(np.float32)), sources),
        detail=pad_islands(texels.image(detail.astype(np.float32)), sources),
        normal=pad_islands(normal, sources),
        covered=covered,
        padding=settings.padding,
        seconds=time.perf_counter() - started,
        evaluated=len(plan.evaluated) / max(1, plan.count),
        precision=precision,
    )


def bake_precision(settings: Settings, device: torch.device) -> str:
    """``texture.precision`` resolved for ``device``: ``float32`` or ``bfloat16``."""
    chosen = settings.texture.precision
    if chosen == "auto":
        native = settings.field.precision == "bfloat16" or native_bfloat16(device)  # auto: what the field's auto gives
        chosen = "bfloat16" if native else "float32"
    return chosen


def texel_composition(composition: Composition, texels: TexelSamples, faces: np.ndarray) -> Composition:
    """The per-vertex ``composition`` blended to the texel centres (CPU tensors)."""

    def blend(tensor: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(texels.interpolate(tensor.detach().cpu().numpy(), faces))

    return Composition(weights=blend(composition.weights), fixed_colors=blend(composition.fixed_colors),
                       fixed_displacement=blend(composition.fixed_displacement),
                       outward=blend(composition.outward), inward=blend(composition.inward))


def _uv_stretch(mesh: Mesh) -> np.ndarray:
    """[F, 2] ``|dP/du|`` and ``|dP/dv|`` of each face (object units per UV unit); 1 where its UV
    triangle is degenerate."""
    corners = mesh.vertices[mesh.faces].astype(np.float64)  # [F, 3, 3]
    uv = mesh.corner_uv.astype(np.float64)  # [F, 3, 2]
    edges = corners[:, 1:] - corners[:, :1]  # [F, 2, 3]
    uv_edges = uv[:, 1:] - uv[:, :1]  # [F, 2, 2]: rows are the two edges, columns (du, dv)
    det = uv_edges[:, 0, 0] * uv_edges[:, 1, 1] - uv_edges[:, 0, 1] * uv_edges[:, 1, 0]
    ok = np.abs(det) > 1e-12
    inverse = np.zeros_like(uv_edges)
    inverse[ok, 0, 0], inverse[ok, 1, 1] = uv_edges[ok, 1, 1] / det[ok], uv_edges[ok, 0, 0] / det[ok]
    inverse[ok, 0, 1], inverse[ok, 1, 0] = -uv_edges[ok, 0, 1] / det[ok], -uv_edges[ok, 1, 0] / det[ok]
    # edges = uv_edges @ [dP/du; dP/dv]  =>  [dP/du; dP/dv] = inverse(uv_edges) @ edges
    derivatives = np.einsum("fij,fjk->fik", inverse, edges)  # [F, 2, 3]
    lengths = np.linalg.norm(derivatives, axis=-1)
    lengths[~ok] = 1.0
    return lengths.astype(np.float32)
