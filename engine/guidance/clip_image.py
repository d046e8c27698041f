"""CLIP's image embedding, with the vision tower's last layer computed for the class token only.

CLIP's image embedding reads a single token of the vision tower's last layer: the class token,
normalized (``post_layernorm``) and projected (``visual_projection``). The library's forward still
runs that layer for every token (50 for ViT-B/32 at 224 px), and a step's backward runs back
through all of them, with a zero gradient for every token but one. In the last layer the other
tokens are needed only as keys and values of the class token's attention, so
:func:`image_embeddings` computes them only that far: the same arithmetic for the one row that is
read, and about 1/12 less of the vision tower's work, forward and backward (docs/performance.md).

The pieces are ``CLIPModel``'s (``vision_model.embeddings``, ``pre_layrnorm``, ``encoder.layers``,
``post_layernorm`` and ``visual_projection``; each layer's ``layer_norm1``, ``self_attn`` with its
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``num_heads`` and ``scale``, ``layer_norm2`` and
``mlp``), so whatever kernels the model was given (engine/model_kernels.py) and autocast apply to
them as to the library's forward.
"""

from __future__ import annotations

import torch
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
        hidden = layer(hidden, None)  # no attention mask: every image token sees every other
    return model.visual_projection(vision.post_layernorm(class_token_of_layer(last, hidden)))


def class_token_of_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One ``CLIPEncoderLayer``'s output for the class token alone.

    Args:
        layer: the encoder layer (pre-norm attention, then pre-norm MLP, each with its residual).
        hidden: [B, T, C] the layer's input, the class token at index 0.

    Returns:
        [B, C] what the layer's output holds at token 0.
    """
    attention = layer.self_attn
    batch, channels = hidden.shape[0], hidden.shape[-1]
    heads = attention.num_heads
    normed = layer.layer_norm1(hidden)

    def split(states: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, heads, N, C / heads]
        return states.view(batch, states.shape[1], heads, channels // heads).transpose(1, 2)

    query = split(attention.q_proj(normed[:, :1]))
    keys, values = split(attention.k_proj(normed)), split(attention.v_proj(normed))
    # the library's eager formula: scaled products, softmax in float32, weights in the values' dtype
    weights = torch.softmax(query @ keys.transpose(-1, -2) * attention.scale, dim=-1, dtype=torch.float32)
    mixed = (weights.to(values.dtype) @ values).transpose(1, 2).reshape(batch, 1, channels)
    token = hidden[:, :1] + attention.out_proj(mixed)
    token = token + layer.mlp(layer.layer_norm2(token))
    return token[:, 0]
