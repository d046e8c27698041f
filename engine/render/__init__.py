"""Pure-PyTorch differentiable rasterizer (CPU and CUDA)."""

from .fragments import Fragments, fragments_from_face_ids
from .raster import rasterize
from .renderer import RenderOutput, Renderer

__all__ = ["Fragments", "RenderOutput", "Renderer", "fragments_from_face_ids", "rasterize"]
