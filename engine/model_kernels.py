"""Faster ways to run pieces of the frozen models, with the same arithmetic: on a CPU above all.

Pieces of the models run far below the CPU's speed in PyTorch's default kernels, in a guidance
step's forward and backward (measured on the real-size architectures, 2 cores, docs/performance.md):

- CLIP's patch embedding, a convolution whose kernel equals its stride: its backward to the image
  takes ~5x longer than the same product written as patches times a matrix. :class:`PatchMatmul`
  computes it that way (identical sums, in another order).
- Attention over CLIP's 50 tokens: the fused CPU kernel (``sdpa``) is slower than the plain
  softmax of products (``eager``) for sequences this short, 5x in bf16. Both are the same formula.
  The same holds, less strongly, for the 49-token windows of Grounding DINO's Swin backbone in bf16
  (a grounding step 7% faster with ``eager``, detection 3%; float32 alike either way).
- Grounding DINO's multi-scale deformable attention: the library samples every level with
  ``grid_sample``, stacks the samples and weights them, materializing [heads, channels, queries,
  levels x points] several times over; about half of a grounding step. :class:`DeformableBags`
  computes the same weighted sum of bilinear samples as one gather with per-row weights
  (``embedding_bag``): about 4x faster forward, 1.5x with the backward, 1.3x a grounding step.

:func:`adapt_clip_to_device` and :func:`adapt_grounding_to_device` apply them where they were
measured faster: on a CPU. On a GPU the library's kernels are kept, and the image paths of CLIP and
Grounding DINO keep a bf16 copy of their linear layers' weights (:class:`LinearWithBfloat16Copy`):
there a step waits on kernel launches, and bf16 autocast otherwise casts each frozen weight again on
every forward.

On every device, each CLIP vision layer's query, key and value projections, three products of the
same input (under bf16 autocast also three casts of it, and of its gradient), become one product of
the three weights stacked (:class:`FusedProjections`, :func:`fuse_attention_projections`): the same
sum for every value, 123 of a bf16 part CLIP step's 1,601 operations fewer as a GPU dispatches them
(kernel launches there), no time either way on a CPU. And each shifted-window layer of Grounding DINO's
Swin backbone makes its attention mask once (:class:`KeptShiftMasks`): it depends on the feature
map's size alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .devices import autocast_dtype, native_bfloat16
from .footprint import GROUNDING_IMAGE_PATH


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


def _linear_with_copies(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module``'s linear product of ``inputs``: with its bf16 copies (``weight_bf16``, ``bias_bf16``)
    under bf16 autocast where it has them, else with its float32 ``weight`` and ``bias``."""
    if module.weight_bf16 is not None and autocast_dtype(inputs.device) == torch.bfloat16:
        return F.linear(inputs, module.weight_bf16, module.bias_bf16)
    return F.linear(inputs, module.weight, module.bias)


class LinearWithBfloat16Copy(nn.Module):
    """An ``nn.Linear`` of a frozen model that also holds its weight and bias in bf16, for bf16 autocast.

    Autocast casts a linear layer's float32 weight and bias to bf16 on every call, unless they take
    gradients (only those are cached): for a frozen model, two casts a layer a forward, each a
    kernel launch on a GPU. Under bf16 autocast this module hands the linear product the copies made
    once, the same values the casts would make (``.to(torch.bfloat16)``); elsewhere (float32, or
    another autocast type) the float32 parameters, as ``nn.Linear``. The parameters keep their names
    (``weight`` [out, in], ``bias`` [out]); the copies are buffers left out of the state dict. Input
    [..., in] -> [..., out].
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias_bf16", bias, persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _linear_with_copies(self, inputs)


def keep_bfloat16_weights(model: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    """Replace each ``nn.Linear`` of ``model`` whose qualified name starts with one of ``prefixes`` by
    :class:`LinearWithBfloat16Copy` (in place); returns how many were replaced."""
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            qualified = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and qualified.startswith(prefixes):
                setattr(parent, name, LinearWithBfloat16Copy(child))
                replaced += 1
    return replaced


class FusedProjections(nn.Module):
    """Linear layers that read the same input (an attention's query, key and value projections), as
    one product: [..., in] -> [..., sum of their outs], the layers' outputs side by side in their order.

    The stacked weight [sum outs, in] and bias are buffers left out of the state dict, and the layers'
    own parameters (and bf16 copies, :class:`LinearWithBfloat16Copy`, where every layer has one)
    become views of them: no second copy in memory, the state dict's keys and values unchanged, and
    the layers still compute alone what they computed (the library's forward keeps working). Under
    bf16 autocast the stacked bf16 copy is used where there is one, as :class:`LinearWithBfloat16Copy`
    does. Made for a frozen model, after it is on its device (moving it again would copy the views
    apart).
    """

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.register_buffer("weight", _stacked(layers, "weight"), persistent=False)
        self.register_buffer("bias", _stacked(layers, "bias"), persistent=False)
        copies = all(getattr(layer, "weight_bf16", None) is not None for layer in layers)
        self.register_buffer("weight_bf16", _stacked(layers, "weight_bf16") if copies else None, persistent=False)
        self.register_buffer("bias_bf16", _stacked(layers, "bias_bf16") if copies else None, persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _linear_with_copies(self, inputs)


def _stacked(layers: list[nn.Module], name: str) -> torch.Tensor | None:
    """The layers' tensors ``name`` stacked along the first dimension, each layer's then re-pointed to its
    rows of the stack (a parameter stays a parameter, a buffer a buffer); None where a layer has none."""
    tensors = [getattr(layer, name) for layer in layers]
    if all(tensor is None for tensor in tensors):
        return None
    if any(tensor is None for tensor in tensors):
        raise ValueError(f"cannot stack layers of which only some have a {name}")
    stacked = torch.cat([tensor.detach() for tensor in tensors])
    for layer, tensor, rows in zip(layers, tensors, stacked.split([t.shape[0] for t in tensors]), strict=True):
        if isinstance(tensor, nn.Parameter):
            setattr(layer, name, nn.Parameter(rows, requires_grad=tensor.requires_grad))
        else:
            setattr(layer, name, rows)  # a registered buffer stays registered
    return stacked


def fuse_attention_projections(model: nn.Module) -> int:
    """Give each attention of a ``CLIPModel``'s vision tower a :class:`FusedProjections` of its query,
    key and value projections, ``self_attn.qkv_proj`` (in place; read by ``guidance/clip_image.py``);
    returns how many. Made again from the three layers where it was made before (after
    :func:`keep_bfloat16_weights`, say, to stack their copies too)."""
    layers = model.vision_model.encoder.layers
    if any(parameter.requires_grad for parameter in layers.parameters()):
        raise ValueError("fuse_attention_projections is for a frozen model: its products would not reach the "
                         "layers' parameters; call model.requires_grad_(False) first")
    for layer in layers:
        attention = layer.self_attn
        attention.qkv_proj = FusedProjections([attention.q_proj, attention.k_proj, attention.v_proj])
    return len(layers)


#: The parts of a ``CLIPModel`` every step's forward runs: the vision tower and its projection.
CLIP_IMAGE_PATH = ("vision_model.", "visual_projection")
#: Per role, the linear layers whose weights a CUDA GPU with bf16 keeps bf16 copies of.
BF16_COPIES_ON_CUDA = {"clip": CLIP_IMAGE_PATH, "grounding": GROUNDING_IMAGE_PATH}


def adapt_clip_to_device(model: nn.Module, device: torch.device | str) -> None:
    """Give a frozen ``CLIPModel`` the kernels that run it fastest on ``device`` (in place). On a CPU the faster
    kernels above: the vision tower's patch embedding, and both towers' attention (the text tower's
    runs a few times a run, without gradient; the vision tower's every step). On a CUDA GPU with
    bf16, the linear layers of the vision tower and its projection keep bf16 copies of their weights
    (every step's forward runs under bf16 autocast by default there; the estimate counts the copies,
    ``footprint.ModelFootprint.clip_bf16_copies``). On every device, the vision tower's query, key and
    value projections become one product (:func:`fuse_attention_projections`)."""
    device = torch.device(device)
    if device.type == "cuda" and native_bfloat16(device):
        keep_bfloat16_weights(model, BF16_COPIES_ON_CUDA["clip"])
    ON_EVERY_DEVICE["clip"](model)  # the projections fused, after the copies to stack them too
    if device.type != "cpu":
        return
    embeddings = model.vision_model.embeddings
    if is_patch_embedding(embeddings.patch_embedding):
        embeddings.patch_embedding = PatchMatmul(embeddings.patch_embedding)
    model.set_attn_implementation("eager")


class _WeightedRows(torch.autograd.Function):
    """``out[n] = sum_k weight[n, k] * table[index[n, k]]``: [R, C] table, [N, K] index and weight -> [N, C].

    The forward is ``embedding_bag``'s. Its backward to the table sorts every index and adds one
    row at a time (two thirds of the whole backward); here the table's gradient is the same weighted sum
    the other way round (each table row gathers the output gradients of the rows that read it),
    again one ``embedding_bag`` over the index sorted once, and deterministic (a stable sort, then
    fixed-order sums).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, index, weight)
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        table, index, weight = ctx.saved_tensors
        grad = grad.contiguous()  # the gathers below read its rows (an expanded gradient has stride 0)
        grad_table = grad_weight = None
        if ctx.needs_input_grad[0]:
            flat = index.flatten()
            keys = flat.to(torch.int32) if table.shape[0] < 2**31 else flat  # int32 sorts 1.5x faster
            order = torch.argsort(keys, stable=True)
            counts = torch.bincount(flat, minlength=table.shape[0])
            starts = torch.cumsum(counts, 0) - counts
            reader = torch.div(order, index.shape[1], rounding_mode="floor")  # the output row each entry feeds
            grad_table = F.embedding_bag(reader, grad, starts, per_sample_weights=weight.flatten()[order], mode="sum")
        if ctx.needs_input_grad[2]:
            with torch.enable_grad():
                weight = weight.detach().requires_grad_(True)
                out = F.embedding_bag(index, table.detach(), per_sample_weights=weight, mode="sum")
                (grad_weight,) = torch.autograd.grad(out, weight, grad)
        return grad_table, None, grad_weight


class DeformableBags(nn.Module):
    """Multi-scale deformable attention's sampling (the library's ``MultiScaleDeformableAttention``,
    same call) as one weighted gather.

    Each query's output is, per head, the attention-weighted sum over levels and points of the
    level's value map sampled bilinearly at the point (``grid_sample``'s ``align_corners=False``
    and zero padding: a corner outside the map adds nothing). A bilinear sample is the weighted sum
    of 4 corners, so the whole output is a sum over levels x points x 4 corners of value rows with
    weights ``attention x bilinear``: one ``embedding_bag`` per call. The gradient reaches the
    values, the attention weights and the sampling locations (through the bilinear weights), as
    the library's does.

    Args of ``forward`` (the library's):
        value: [B, S, H, C] the value rows of the L flattened levels (S = sum of h_l * w_l).
        value_spatial_shapes_list: the L levels' ``(h_l, w_l)``.
        sampling_locations: [B, Q, H, L, P, 2] ``(x, y)`` in 0..1 of each level's map.
        attention_weights: [B, Q, H, L, P].
        (``value_spatial_shapes``, ``level_start_index``, ``im2col_step``: unused.)

    Returns:
        [B, Q, H * C], in the dtype the library's would have: float32 under CPU autocast (which
        runs ``grid_sample`` in float32), the inputs' promoted dtype otherwise. The sums are done in
        float32.
    """

    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                sampling_locations, attention_weights, im2col_step=None):
        b, s, h, c = value.shape
        q, levels = sampling_locations.shape[1], sampling_locations.shape[3]
        device = value.device
        shapes = torch.as_tensor(value_spatial_shapes_list, dtype=torch.long, device=device)  # [L, 2] (h, w)
        sizes = shapes[:, 0] * shapes[:, 1]
        starts = (torch.cumsum(sizes, 0) - sizes).view(levels, 1)
        heights, widths = shapes[:, 0].view(levels, 1), shapes[:, 1].view(levels, 1)
        # Pixel coordinates as grid_sample computes them (align_corners=False: ((2 loc - 1 + 1) w - 1) / 2,
        # the library's grid then grid_sample's own unnormalization, rounded the same). [B, Q, H, L, P]
        grid = 2 * sampling_locations.float() - 1
        x = ((grid[..., 0] + 1) * widths - 1) / 2
        y = ((grid[..., 1] + 1) * heights - 1) / 2
        left, top = x.floor(), y.floor()
        across, down = x - left, y - top
        columns, rows = _neighbour_weights(left, across, widths), _neighbour_weights(top, down, heights)
        corners = rows[..., :, None] * columns[..., None, :] * attention_weights.float()[..., None, None]
        weight = corners.reshape(b * q * h, -1)  # [B * Q * H, L * P * 4]: (top-left, top-right, bottom-left, ...)
        # Rows of value viewed as [B * S * H, C]: (batch * S + position) * H + head, bags ordered (batch,
        # query, head). The top-left corner's row, then the 4 corners' offsets from it on each level.
        batch = torch.arange(b, device=device).view(b, 1, 1, 1, 1) * s
        head = torch.arange(h, device=device).view(1, 1, h, 1, 1)
        top_left = (batch + starts + top.long() * widths + left.long()) * h + head  # [B, Q, H, L, P]
        offsets = torch.stack((torch.zeros_like(widths), torch.ones_like(widths), widths, widths + 1), -1) * h
        index = (top_left[..., None] + offsets).reshape(b * q * h, -1)  # [L, 1, 4] offsets broadcast
        index = index.clamp_(0, b * s * h - 1)  # a corner outside its map (weight 0) reads some row, any
        table = value.float().reshape(b * s * h, c)
        out = _WeightedRows.apply(table, index, weight)
        dtype = torch.float32 if torch.is_autocast_enabled(device.type) else torch.promote_types(
            value.dtype, attention_weights.dtype)
        return out.view(b, q, h * c).to(dtype)


def _neighbour_weights(low: torch.Tensor, fraction: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A bilinear sample's weights along one axis: [..., 2] for the pixels ``low`` and ``low + 1`` (``1 -
    fraction`` and ``fraction``), 0 for a pixel outside ``0 .. size - 1`` (grid_sample's zero padding)."""
    return torch.stack(((1 - fraction) * ((low >= 0) & (low < size)),
                        fraction * ((low >= -1) & (low < size - 1))), -1)


def adapt_grounding_to_device(model: nn.Module, device: torch.device | str) -> None:
    """Give a Grounding DINO the kernels that run it fastest on ``device`` (in place; nothing that
    holds parameters changes, so state dicts are unchanged). On a CPU: the multi-scale deformable
    attention (encoder and decoder) as :class:`DeformableBags`, and the Swin backbone's window
    attention (49 tokens a window) eager, as CLIP's. On a CUDA GPU with bf16, the linear layers of
    :data:`GROUNDING_IMAGE_PATH` keep bf16 copies of their weights, as CLIP's image path does (the
    estimate counts them, ``footprint.ModelFootprint.grounding_bf16_copies``). Elsewhere the model
    is left as it is. On every device the backbone's shifted-window masks are made once
    (:func:`keep_shift_masks`)."""
    device = torch.device(device)
    ON_EVERY_DEVICE["grounding"](model)  # the backbone's shift masks made once
    if device.type == "cuda" and native_bfloat16(device):
        keep_bfloat16_weights(model, BF16_COPIES_ON_CUDA["grounding"])
    if device.type != "cpu":
        return
    for module in model.modules():
        if type(getattr(module, "attn", None)).__name__ == "MultiScaleDeformableAttention":
            module.attn = DeformableBags()
    backbone = swin_backbone(model)
    if backbone is not None:
        backbone.set_attn_implementation("eager")


class KeptShiftMasks:
    """A Swin layer's ``get_attn_mask`` that computes each mask once: the shifted windows' attention
    mask ([windows, tokens, tokens], -100 between tokens of different regions of the cyclic shift)
    depends only on the layer's window and shift sizes, the padded feature map's size, the dtype and the
    device, never on the pixels, yet the library makes it again in every shifted layer of every forward
    (some 20 small operations each: about 120 of a Grounding DINO forward, each a kernel launch on a
    GPU). The mask kept is the library's own, computed by its method the first time; it takes no
    gradient. Set as the layer's instance attribute (:func:`keep_shift_masks`)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.compute = layer.get_attn_mask  # the library's, bound to the layer
        self.kept: dict[tuple, torch.Tensor | None] = {}

    def __call__(self, *args, **kwargs) -> torch.Tensor | None:
        """The library's ``get_attn_mask(height, width, dtype=..., device=...)``, whatever its arguments."""
        key = (int(self.layer.shift_size), int(self.layer.window_size), args, tuple(sorted(kwargs.items())))
        if key not in self.kept:
            with torch.no_grad():
                self.kept[key] = self.compute(*args, **kwargs)
        return self.kept[key]


def keep_shift_masks(model: nn.Module) -> int:
    """Give each shifted-window layer of a Grounding DINO's Swin backbone (:func:`swin_backbone`) a
    :class:`KeptShiftMasks` (in place; nothing that holds parameters changes); returns how many layers
    (0 where the backbone is not transformers' Swin, or is so already)."""
    backbone = swin_backbone(model)
    if backbone is None:
        return 0
    layers = [module for module in backbone.modules()
              if callable(getattr(type(module), "get_attn_mask", None)) and hasattr(module, "shift_size")
              and not isinstance(module.__dict__.get("get_attn_mask"), KeptShiftMasks)]
    for layer in layers:
        layer.get_attn_mask = KeptShiftMasks(layer)
    return len(layers)


#: Per role, what :func:`adapt_clip_to_device` and :func:`adapt_grounding_to_device` apply on every device
#: (after any bf16 copies, which the fused projections then stack too).
ON_EVERY_DEVICE = {"clip": fuse_attention_projections, "grounding": keep_shift_masks}


def swin_backbone(model: nn.Module) -> nn.Module | None:
    """A Grounding DINO's image backbone when it is transformers' Swin (the released checkpoints'),
    else None (a timm backbone, another architecture)."""
    try:
        backbone = model.model.backbone.conv_encoder.model
    except AttributeError:
        return None
    swin = getattr(getattr(backbone, "config", None), "model_type", None) == "swin"
    return backbone if swin and hasattr(backbone, "set_attn_implementation") else None
