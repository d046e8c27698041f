"""Grounding DINO's dense proposals without its decoder, with one image pass for several captions.

The grounding-space loss (METHOD section 5.2) reads only the encoder's dense proposals: their
class logits (``enc_outputs_class``) and boxes (``enc_outputs_coord_logits``). The library's
forward computes them on the way to the decoder, which then refines the ``num_queries`` best ones;
the decoder's output is not used for proposals, yet it costs about a seventh of each forward
(0.28 s of 2.0 s at 512 px on a 2-core CPU, real-size model). And a grounding step scores the
same renders under two captions (the part names without gradient, the style phrases with it),
while the image backbone (Swin) does not read the caption.

So the forward is split at the one place the caption enters the image path, the encoder's fusion:
- :func:`encode_images`: backbone, projections to the model width and flattening of the feature
  levels; depends on the images alone.
- :func:`encode_text`: the text backbone (BERT) and its projection to the model width; depends on
  the caption alone, so a run that scores the same captions at every grounding step computes it
  once (without gradient: the model is frozen and the gradient goes to the images).
- :func:`encoder_proposals`: the fusion encoder and the proposal heads; runs once per caption on
  the same :class:`ImageEncoding`, and never the decoder.

Both call the library's own submodules in the order its ``GroundingDinoModel.forward`` does, so the
arithmetic is the library's; ``tests/test_grounding_detector.py`` checks the outputs and the
image gradient against the library's whole forward in each supported transformers version.
Images are never padded here (a batch shares one size), so every pixel is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, eq=False)
class ImageEncoding:
    """The caption-independent half of a Grounding DINO forward, for N images.

    Attributes:
        features: [N, S, D] the L feature levels' projected features, flattened and concatenated
            (S = sum of h_l * w_l; D = the model width).
        padding: [N, S] bool, True where a position is padding (never, for unpadded images).
        position: [N, S, D] position embeddings plus each level's learned embedding.
        shapes: the L levels' ``(h_l, w_l)``.
        valid_ratios: [N, L, 2] the unpadded share of each level, ``(width, height)``.
    """

    features: torch.Tensor
    padding: torch.Tensor
    position: torch.Tensor
    shapes: tuple[tuple[int, int], ...]
    valid_ratios: torch.Tensor

    @property
    def spatial_shapes(self) -> torch.Tensor:
        """[L, 2] int64 the levels' ``(h_l, w_l)``."""
        return torch.as_tensor(self.shapes, dtype=torch.long, device=self.features.device)

    @property
    def level_start_index(self) -> torch.Tensor:
        """[L] int64 where each level starts in S."""
        sizes = self.spatial_shapes.prod(1)
        return torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))


def encode_images(model: nn.Module, pixel_values: torch.Tensor,
                  pixel_mask: torch.Tensor) -> ImageEncoding:
    """Backbone features of ``pixel_values`` [N, 3, h, w] (``pixel_mask`` [N, h, w], 1 = valid),
    projected to the model width at every feature level and flattened; differentiable.

    ``model`` is a transformers ``GroundingDinoModel`` (``GroundingDinoForObjectDetection.model``).
    """
    backbone_levels, positions = model.backbone(pixel_values, pixel_mask)
    # One projection per feature level; the backbone gives the first few levels.
    maps = [project(source) for project, (source, _) in zip(model.input_proj_vision, backbone_levels, strict=False)]
    masks = [mask for _, mask in backbone_levels]
    positions = list(positions)
    # Levels past the backbone's: stride-2 convolutions on the last backbone map, then on each other.
    for level in range(len(maps), model.config.num_feature_levels):
        source = model.input_proj_vision[level](backbone_levels[-1][0] if level == len(backbone_levels) else maps[-1])
        mask = F.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
        maps.append(source)
        masks.append(mask)
        positions.append(model.backbone.position_embedding(source, mask).to(source.dtype))
    features = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    padding = ~torch.cat([m.flatten(1) for m in masks], 1)
    position = torch.cat([p.flatten(2).transpose(1, 2) + model.level_embed[level].view(1, 1, -1)
                          for level, p in enumerate(positions)], 1)
    valid_ratios = torch.stack([model.get_valid_ratio(m, dtype=features.dtype) for m in masks], 1)
    return ImageEncoding(features, padding, position, tuple((m.shape[-2], m.shape[-1]) for m in maps), valid_ratios)


@dataclass(frozen=True, eq=False)
class TextEncoding:
    """The image-independent half of a Grounding DINO forward: one caption, for N images.

    Attributes:
        features: [N, T, D] the text backbone's last hidden state projected to the model width.
        token_mask: [N, T] bool, True at the caption's tokens.
        self_attention: [N, T, T] bool, True where token i reads token j (within one phrase).
        position_ids: [N, T] int64 token positions, restarting at each phrase.
    """

    features: torch.Tensor
    token_mask: torch.Tensor
    self_attention: torch.Tensor
    position_ids: torch.Tensor

    @property
    def images(self) -> int:
        """N, the number of images this encoding serves."""
        return int(self.features.shape[0])


def encode_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoding:
    """The caption half of a forward, from ``input_ids`` and ``attention_mask`` [N, T] (T <=
    ``max_text_len``); ``model`` as for :func:`encode_images`."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        generate_masks_with_special_tokens_and_transfer_map,
    )

    self_attention, position_ids = generate_masks_with_special_tokens_and_transfer_map(
        input_ids, special_tokens=model.special_tokens
    )
    text = model.text_backbone(input_ids, self_attention[:, None], torch.zeros_like(input_ids), position_ids,
                               return_dict=True).last_hidden_state
    return TextEncoding(model.text_projection(text), attention_mask.bool(), self_attention, position_ids)


def encoder_proposals(model: nn.Module, encoding: ImageEncoding,
                      text: TextEncoding) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense proposals of ``encoding``'s N images for one caption (``text``, for the same N).

    Returns:
        coord_logits: [N, S, 4] ``(cx, cy, w, h)`` before the sigmoid; ``inf`` where the library
            marks a proposal invalid (as ``enc_outputs_coord_logits``).
        token_logits: [N, S, max_text_len] per text token, ``-inf`` past the caption (as
            ``enc_outputs_class``).
    """
    encoded = model.encoder(
        vision_features=encoding.features,
        vision_attention_mask=encoding.padding,
        vision_position_embedding=encoding.position,
        spatial_shapes=encoding.spatial_shapes,
        spatial_shapes_list=list(encoding.shapes),
        level_start_index=encoding.level_start_index,
        valid_ratios=encoding.valid_ratios,
        text_features=text.features,
        text_attention_mask=~text.token_mask,
        text_position_embedding=None,
        text_self_attention_masks=~text.self_attention,
        text_position_ids=text.position_ids,
        return_dict=True,
    )
    queries, anchors = model.generate_encoder_output_proposals(
        encoded.last_hidden_state_vision, encoding.padding, list(encoding.shapes)
    )
    token_logits = model.encoder_output_class_embed(queries, encoded.last_hidden_state_text, text.token_mask)
    return model.encoder_output_bbox_embed(queries) + anchors, token_logits
