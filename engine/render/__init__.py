"""Pure-PyTorch differentiable rasterizer (CPU and CUDA)."""

from .fragments import Fragments, fragments_from_face_ids
from .raster import rasterize
from .renderer import Renderer, RenderOutput

__all__ = ["Fragments", "RenderOutput", "Renderer", "fragments_from_face_ids", "rasterize"]
