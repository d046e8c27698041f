"""The renderer: visibility pass + differentiable fragments + shading, for a batch of views."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cameras import Cameras
from ..config import RenderSettings
from .fragments import Fragments, fragments_from_face_ids, gather_rows
from .raster import rasterize
from .shading import headlight_shade, sample_map

# Albedo of the color-free render that trains displacement on its own (T2M's geometry loss).
GEOMETRY_ALBEDO = 0.7


@dataclass(frozen=True)
class RenderOutput:
    """Images of N views, channels first.

    Attributes:
        color: [N, 3, H, W] shaded vertex colors (or map colors) over the background (None if
            neither was given).
        geometry: [N, 3, H, W] shaded uniform gray over the background (None unless asked for).
        alpha: [N, 1, H, W] coverage, 1 where the mesh is visible.
        face_id: [N, H, W] int64 visible face, -1 for background.
        attributes: [N, C, H, W] interpolated per-vertex attributes, 0 on background (or None).
        fragments: the packed covered pixels, for further per-pixel work.
    """

    color: torch.Tensor | None
    geometry: torch.Tensor | None
    alpha: torch.Tensor
    face_id: torch.Tensor
    attributes: torch.Tensor | None
    fragments: Fragments

    def barycentrics(self) -> torch.Tensor:
        """[N, 3, H, W] perspective-correct barycentrics of ``face_id``'s corners, 0 on background."""
        return self.fragments.to_image(self.fragments.bary)


class Renderer:
    """Renders unit-frame meshes through :class:`Cameras` with the shading of ``settings``."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings

    def render(
        self,
        vertices: torch.Tensor,
        faces: torch.Tensor,
        cameras: Cameras,
        *,
        colors: torch.Tensor | None = None,
        geometry: bool = False,
        attributes: torch.Tensor | None = None,
        resolution: int | None = None,
        face_id: torch.Tensor | None = None,
        texture: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> RenderOutput:
        """Render every camera's view.

        Args:
            vertices: [V, 3] positions, unit frame (may require grad).
            faces: [F, 3] int64.
            cameras: N cameras.
            colors: [V, 3] sRGB vertex colors in 0..1 (may require grad).
            geometry: also render the uniform-gray image used by the geometry loss.
            attributes: [V, C] per-vertex values to interpolate (e.g. part weights).
            resolution: image side; defaults to ``settings.resolution``.
            face_id: [N, H, W] a visibility pass to reuse instead of rasterizing (its size wins).
            texture: (corner_uv [F, 3, 2], map [S, S, 3]): each pixel's color read from an sRGB map
                (bilinear, v up, row 0 at the top) at the pixel's UV, instead of ``colors``.
        """
        size = face_id.shape[-1] if face_id is not None else (resolution or self.settings.resolution)
        xy, depth = cameras.project(vertices, size)
        if face_id is None:
            face_id = rasterize(xy.detach(), depth.detach(), faces, size)
        frags = fragments_from_face_ids(face_id, xy, depth, faces)
        albedo = None  # [K, 3] each covered pixel's color before shading
        if texture is not None:
            corner_uv, image = texture
            albedo = sample_map(image, (gather_rows(corner_uv, frags.face) * frags.bary.unsqueeze(-1)).sum(1))
        elif colors is not None:
            albedo = frags.interpolate(colors)
        need_shade = albedo is not None or geometry
        shade = (
            headlight_shade(
                frags, vertices, cameras.forward, ambient=self.settings.ambient, diffuse=self.settings.diffuse
            )
            if need_shade
            else None
        )
        background = torch.tensor(self.settings.background, dtype=vertices.dtype, device=vertices.device)
        color = frags.to_image(albedo * shade, background) if albedo is not None else None
        gray = frags.to_image((GEOMETRY_ALBEDO * shade).expand(-1, 3), background) if geometry else None
        attrs = frags.to_image(frags.interpolate(attributes)) if attributes is not None else None
        return RenderOutput(
            color=color, geometry=gray, alpha=frags.coverage(), face_id=face_id, attributes=attrs, fragments=frags
        )
