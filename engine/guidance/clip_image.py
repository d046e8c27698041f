"""CLIP's image embedding, with the vision tower's layers written out: the last one computed for the
class token only, and each layer's query, key and value projections as one product where the model
has them fused.

CLIP's image embedding reads a single token of the vision tower's last layer: the class token,
normalized (``post_layernorm``) and projected (``visual_projection``). The library's forward still
runs that layer for every token (50 for ViT-B/32 at 224 px), and a step's backward runs back
through all of them, with a zero gradient for every token but one. In the last layer the other
tokens are needed only as keys and values of the class token's attention, so
:func:`image_embeddings` computes them only that far: the same arithmetic for the one row that is
read, and about 1/12 less of the vision tower's work, forward and backward (docs/performance.md).

Each layer's queries, keys and values are three linear products of the same normalized input. Where
the model was given ``self_attn.qkv_proj`` (``model_kernels.fuse_attention_projections``, which
every run's CLIP gets) they are one product of the three weights stacked: the same sums for each
value, and on a GPU a third of the launches (under bf16 autocast also one cast of the input, and of
its gradient, instead of three). A model without it computes them one by one, as the library does.

The pieces are ``CLIPModel``'s (``vision_model.embeddings``, ``pre_layrnorm``, ``encoder.layers``,
``post_layernorm`` and ``visual_projection``; each layer's ``layer_norm1``, ``self_attn`` with its
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``num_heads``, ``scale`` and ``config``,
``layer_norm2`` and ``mlp``), so whatever kernels the model was given (engine/model_kernels.py) and
autocast apply to them as to the library's forward. The attention is the formula the model's
``config._attn_implementation`` names: ``eager`` (the library's softmax of scaled products, the
CPU's choice) or else PyTorch's fused ``scaled_dot_product_attention`` (the library's ``sdpa``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_embeddings(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """A ``CLIPModel``'s projected image embeddings, as ``model.get_image_features(pixel_values)``.

    Args:
        model: a ``transformers.CLIPModel`` (frozen or not).
        pixel_values: [B, 3, S, S] normalized images at the model's input size.

    Returns:
        [B, D] embeddings in CLIP's joint space (not unit-normalized), differentiable.
    """
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))  # [B, T, C], the class token first
    *layers, last = vision.encoder.layers
    for layer in layers:
        hidden = encoder_layer(layer, hidden)
    return model.visual_projection(vision.post_layernorm(class_token_of_layer(last, hidden)))


def encoder_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One ``CLIPEncoderLayer``'s output, as ``layer(hidden, None)``: pre-norm attention over every token
    (no mask), then pre-norm MLP, each with its residual. [B, T, C] -> [B, T, C]."""
    attention = layer.self_attn
    queries, keys, values = _queries_keys_values(attention, layer.layer_norm1(hidden))
    hidden = hidden + attention.out_proj(_attend(attention, queries, keys, values))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def class_token_of_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One ``CLIPEncoderLayer``'s output for the class token alone.

    Every token's keys and values are computed (the class token's attention reads them), and every
    token's queries too (with a fused projection they are the same product: 49 query rows unused,
    some 0.7% of the vision tower's work, for fewer operations); the attention, output projection and
    MLP for the class token only.

    Args:
        layer: the encoder layer (pre-norm attention, then pre-norm MLP, each with its residual).
        hidden: [B, T, C] the layer's input, the class token at index 0.

    Returns:
        [B, C] what the layer's output holds at token 0.
    """
    attention = layer.self_attn
    queries, keys, values = _queries_keys_values(attention, layer.layer_norm1(hidden))
    token = hidden[:, :1] + attention.out_proj(_attend(attention, queries[:, :, :1], keys, values))
    token = token + layer.mlp(layer.layer_norm2(token))
    return token[:, 0]


def _queries_keys_values(attention: nn.Module, normed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """An attention's queries, keys and values of [B, T, C] normalized states, each [B, heads, T, C /
    heads]: one product where the attention has ``qkv_proj``, else one per projection."""
    fused = getattr(attention, "qkv_proj", None)
    if fused is None:
        projected = [projection(normed) for projection in (attention.q_proj, attention.k_proj, attention.v_proj)]
    else:
        projected = fused(normed).chunk(3, dim=-1)
    return tuple(_heads(states, attention.num_heads) for states in projected)


def _heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads] (a view)."""
    batch, tokens, channels = states.shape
    return states.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def _attend(attention: nn.Module, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[B, heads, Q, d] queries over [B, heads, T, d] keys and values, by the formula the model's attention
    implementation names -> [B, Q, heads * d], ready for ``out_proj``."""
    if attention.config._attn_implementation == "eager":
        # the library's eager formula: scaled products, softmax in float32, weights in the values' dtype
        weights = torch.softmax(queries @ keys.transpose(-1, -2) * attention.scale, dim=-1, dtype=torch.float32)
        mixed = weights.to(values.dtype) @ values
    else:
        mixed = F.scaled_dot_product_attention(queries, keys, values, scale=attention.scale)
    batch, _, rows, _ = mixed.shape
    return mixed.transpose(1, 2).reshape(batch, rows, -1)
