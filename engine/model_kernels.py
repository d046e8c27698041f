"""Faster ways to run pieces of the frozen models on a CPU, with the same arithmetic.

Two pieces of CLIP's vision tower run far below the CPU's speed in PyTorch's default kernels, in a
guidance step's forward and backward (measured on the real-size ViT-B/32, 2 cores, 9 images,
docs/performance.md):

- The patch embedding, a convolution whose kernel equals its stride: its backward to the image
  takes ~5x longer than the same product written as patches times a matrix. :class:`PatchMatmul`
  computes it that way (identical sums, in another order).
- Attention over CLIP's 50 tokens: the fused CPU kernel (``sdpa``) is slower than the plain
  softmax of products (``eager``) for sequences this short, 5x in bf16. Both are the same formula.

:func:`adapt_clip_to_device` applies them where they were measured faster: on a CPU. On a GPU the
library's kernels are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchMatmul(nn.Module):
    """A patch embedding (``Conv2d`` with kernel = stride, no padding) as one matrix product.

    Holds the convolution's own parameters under the same names (``weight`` [C_out, C_in, p, p],
    optional ``bias`` [C_out]), so state dicts and saved models are unchanged.
    Input [B, C_in, H, W]; output [B, C_out, H // p, W // p], as the convolution's (the rows and
    columns past the last whole patch are dropped, as the convolution drops them).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_patch_embedding(conv):
            raise ValueError(f"{conv} is not a patch embedding (kernel = stride, no padding, dilation or groups)")
        self.patch = int(conv.kernel_size[0])
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch
        rows, cols = h // p, w // p
        patches = images[:, :, : rows * p, : cols * p].reshape(b, c, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * p * p)
        embedded = F.linear(patches, self.weight.reshape(self.weight.shape[0], -1), self.bias)
        return embedded.transpose(1, 2).reshape(b, -1, rows, cols)


def is_patch_embedding(module: nn.Module) -> bool:
    """Whether ``module`` is a square ``Conv2d`` whose kernel equals its stride (no padding, dilation, groups)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size[0] == module.kernel_size[1] == module.stride[0] == module.stride[1]
        and tuple(module.padding) == (0, 0)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def adapt_clip_to_device(model: nn.Module, device: torch.device | str) -> None:
    """Switch a ``CLIPModel`` to the faster kernels above when ``device`` is a CPU (in place): the
    vision tower's patch embedding, and both towers' attention (the text tower's runs a few times a
    run, without gradient; the vision tower's every step). On other devices the model is left as it is."""
    if torch.device(device).type != "cpu":
        return
    embeddings = model.vision_model.embeddings
    if is_patch_embedding(embeddings.patch_embedding):
        embeddings.patch_embedding = PatchMatmul(embeddings.patch_embedding)
    model.set_attn_implementation("eager")
