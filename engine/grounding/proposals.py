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
  levels; depends on the images alone. Its masks, position embeddings, the encoder's reference
  points and the proposals' anchors (:class:`ImageLayout`) depend only on the batch's shape, so a
  caller that encodes batches of one shape keeps them.
- :func:`encode_text`: the text backbone (BERT) and its projection to the model width; depends on
  the caption alone, so a run that scores the same captions at every grounding step computes it
  once (without gradient: the model is frozen and the gradient goes to the images).
- :func:`encoder_proposals`: the fusion encoder's layers and the proposal heads; runs once per
  caption on the same :class:`ImageEncoding`, and never the decoder. The text position embeddings
  its layers add are kept with the caption's encoding.

Both call the library's own submodules in the order its ``GroundingDinoModel.forward`` does, so the
arithmetic is the library's; ``tests/test_grounding_detector.py`` checks the outputs and the
image gradient against the library's whole forward in each supported transformers version.
Images are never padded here (a batch shares one size), so every pixel is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """What an :class:`ImageEncoding` holds besides the features: it depends on how many images
    there are, their size and the frozen model, not on their pixels (images are never padded here).
    So a caller that encodes images of one size again and again (a run's grounding steps) computes
    it once (:class:`~engine.grounding.detector.GroundingDetector` keeps one per batch shape).

    Attributes:
        padding: [N, S] bool, True where a position is padding (never, for unpadded images).
        position: [N, S, D] position embeddings plus each level's learned embedding.
        shapes: the L levels' ``(h_l, w_l)`` (S = sum of h_l * w_l).
        valid_ratios: [N, L, 2] the unpadded share of each level, ``(width, height)``.
        spatial_shapes: [L, 2] int64 the levels' ``(h_l, w_l)``.
        level_start_index: [L] int64 where each level starts in S.
        reference_points: [N, S, L, 2] where each position's deformable attention samples around, in
            0..1 of each level (the library's ``GroundingDinoEncoder.get_reference_points``).
    """

    padding: torch.Tensor
    position: torch.Tensor
    shapes: tuple[tuple[int, int], ...]
    valid_ratios: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    reference_points: torch.Tensor
    # encoder output dtype -> ([N, S, 4] anchors, [N, S, 1] bool True where a proposal is invalid)
    _anchors: dict = field(default_factory=dict, repr=False)

    @cached_property
    def padded(self) -> bool:
        """Whether :attr:`padding` is True anywhere (read from the device once). Where it is not, the
        encoder's layers are given no image mask: the library's masking with it would change nothing."""
        return bool(self.padding.any())

    def anchors(self, model: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position's anchor box, ``(cx, cy, w, h)`` before the sigmoid ([N, S, 4], ``inf`` where
        a proposal is invalid: padded, or an anchor at the image's border), and [N, S, 1] bool, True
        there, for an encoder output of ``dtype``. They depend on the layout alone, so they are the
        library's ``generate_encoder_output_proposals`` of a zero output, computed once per dtype
        (under the caller's autocast, as the library computes them in its forward)."""
        if dtype not in self._anchors:
            zeros = torch.zeros(*self.padding.shape, self.position.shape[-1], dtype=dtype, device=self.padding.device)
            with torch.no_grad():
                _, anchors = model.generate_encoder_output_proposals(zeros, self.padding, list(self.shapes))
            self._anchors[dtype] = (anchors, torch.isinf(anchors[..., :1]))
        return self._anchors[dtype]


@dataclass(frozen=True, eq=False)
class ImageEncoding:
    """The caption-independent half of a Grounding DINO forward, for N images.

    Attributes:
        features: [N, S, D] the L feature levels' projected features, flattened and concatenated
            (S = sum of h_l * w_l; D = the model width); differentiable.
        layout: the rest, which does not depend on the pixels (:class:`ImageLayout`).
    """

    features: torch.Tensor
    layout: ImageLayout


def encode_images(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                  layout: ImageLayout | None = None) -> ImageEncoding:
    """Backbone features of ``pixel_values`` [N, 3, h, w] (``pixel_mask`` [N, h, w], 1 = valid),
    projected to the model width at every feature level and flattened; differentiable.

    ``model`` is a transformers ``GroundingDinoModel`` (``GroundingDinoForObjectDetection.model``).
    ``layout``: the :class:`ImageLayout` an earlier call returned for images of this count and size
    (the feature levels' masks and position embeddings are then not computed again), or None.
    """
    if layout is None:
        backbone_levels, positions = model.backbone(pixel_values, pixel_mask)
        feature_maps = [source for source, _ in backbone_levels]
    else:  # the backbone's image model alone: its levels' masks and positions are the layout's
        feature_maps = model.backbone.conv_encoder.model(pixel_values, return_dict=True).feature_maps
    # One projection per feature level; the backbone gives the first few levels.
    maps = [project(source) for project, source in zip(model.input_proj_vision, feature_maps, strict=False)]
    # Levels past the backbone's: stride-2 convolutions on the last backbone map, then on each other.
    for level in range(len(maps), model.config.num_feature_levels):
        maps.append(model.input_proj_vision[level](feature_maps[-1] if level == len(feature_maps) else maps[-1]))
    features = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    if layout is None:
        masks, positions = [mask for _, mask in backbone_levels], list(positions)
        for source in maps[len(masks):]:
            mask = F.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
            masks.append(mask)
            positions.append(model.backbone.position_embedding(source, mask).to(source.dtype))
        layout = _layout(model, masks, positions, features.dtype)
    return ImageEncoding(features, layout)


def _layout(model: nn.Module, masks: list[torch.Tensor], positions: list[torch.Tensor],
            dtype: torch.dtype) -> ImageLayout:
    """The :class:`ImageLayout` of the L levels' [N, h_l, w_l] masks and [N, D, h_l, w_l] position
    embeddings (the library's ``GroundingDinoModel.forward`` flattens them so)."""
    padding = ~torch.cat([m.flatten(1) for m in masks], 1)
    position = torch.cat([p.flatten(2).transpose(1, 2) + model.level_embed[level].view(1, 1, -1)
                          for level, p in enumerate(positions)], 1)
    valid_ratios = torch.stack([model.get_valid_ratio(m, dtype=dtype) for m in masks], 1)
    shapes = tuple((m.shape[-2], m.shape[-1]) for m in masks)
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=padding.device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    reference_points = model.encoder.get_reference_points(shapes, valid_ratios, padding.device)
    return ImageLayout(padding, position, shapes, valid_ratios, spatial_shapes, level_start_index, reference_points)


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
    # dtype of the text features a fusion layer reads -> their [N, T, D] sine position embeddings
    _positions: dict = field(default_factory=dict, repr=False)
    # dtype of the text features the text enhancer reads -> its [N, 1, T, T] additive attention mask
    _blocked_scores: dict = field(default_factory=dict, repr=False)

    @property
    def images(self) -> int:
        """N, the number of images this encoding serves."""
        return int(self.features.shape[0])

    def position_embedding(self, layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """[N, T, D] the sine embedding of :attr:`position_ids` that the fusion encoder's ``layer``
        adds to text ``features`` (the library's ``get_text_position_embeddings``, which computes it
        in the features' dtype, again in every layer of every forward): computed once per dtype
        (under the caller's autocast), since it depends on the caption alone."""
        if features.dtype not in self._positions:
            with torch.no_grad():
                self._positions[features.dtype] = layer.get_text_position_embeddings(features, None, self.position_ids)
        return self._positions[features.dtype]

    def blocked_scores(self, features: torch.Tensor) -> torch.Tensor:
        """[N, 1, T, T] what the fusion encoder's text enhancers add to their attention scores (every
        head alike) over text ``features``: the dtype's lowest value where token i may not read token j,
        0 where it may. The library makes it from :attr:`self_attention` in every layer of every forward
        (two inversions, a repeat over the heads, a cast and two products); it depends on the caption
        alone, so it is made once per dtype, by the same arithmetic."""
        if features.dtype not in self._blocked_scores:
            readable = self.self_attention[:, None].to(features.dtype)
            self._blocked_scores[features.dtype] = (1.0 - readable) * torch.finfo(features.dtype).min
        return self._blocked_scores[features.dtype]


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
    layout = encoding.layout
    vision, words = encoding.features, text.features
    text_padding = ~text.token_mask  # as the fusion layers take it
    # Without padded images, the library's masking of padded positions (in the fusion layer's attention
    # and on the deformable attention's values) changes nothing: no mask is handed in.
    image_padding = layout.padding if layout.padded else None
    image_valid = ~layout.padding if layout.padded else None
    for layer in model.encoder.layers:  # GroundingDinoEncoder.forward's, each layer's forward written out
        text_position = text.position_embedding(layer, words)
        (vision, _), (words, _) = layer.fusion_layer(
            vision_features=vision, text_features=words,
            attention_mask_vision=image_padding, attention_mask_text=text_padding,
        )
        words, _ = layer.text_enhancer_layer(
            hidden_states=words, attention_masks=text.blocked_scores(words),
            position_embeddings=text_position,
        )
        vision, _ = layer.deformable_layer(
            hidden_states=vision,
            attention_mask=image_valid,
            position_embeddings=layout.position,
            reference_points=layout.reference_points,
            spatial_shapes=layout.spatial_shapes,
            spatial_shapes_list=list(layout.shapes),
            level_start_index=layout.level_start_index,
        )
    # the library's generate_encoder_output_proposals, its anchors kept: each position is a query
    anchors, invalid = layout.anchors(model, vision.dtype)
    queries = model.enc_output_norm(model.enc_output(vision.masked_fill(invalid, 0.0)))
    token_logits = model.encoder_output_class_embed(queries, words, text.token_mask)
    return model.encoder_output_bbox_embed(queries) + anchors, token_logits
