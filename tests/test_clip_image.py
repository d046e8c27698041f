"""engine/guidance/clip_image.py computes CLIP's image embeddings as the library's forward does."""

from __future__ import annotations

import pytest
import torch
from tolerances import CHANGED, SAME_MATH, assert_close, relative_difference

from engine.devices import bfloat16_autocast
from engine.guidance.clip_image import class_token_of_layer, encoder_layer, image_embeddings
from engine.model_kernels import adapt_clip_to_device, fuse_attention_projections
from engine.tiny_models import build_tiny_clip


def _frozen_clip(*, adapted: bool, fused: bool = False):
    model, _ = build_tiny_clip(num_hidden_layers=3)
    model.requires_grad_(False)
    if adapted:  # the CPU kernels a run uses (eager attention, the patch embedding as a product), fused
        adapt_clip_to_device(model, "cpu")
    elif fused:  # the library's kernels (sdpa), as a GPU has them, with q, k, v in one product
        fuse_attention_projections(model)
    return model


def _embeddings_and_gradient(embed, images, upstream, *, bfloat16: bool = False):
    x = images.clone().requires_grad_(True)
    with bfloat16_autocast(x.device, bfloat16):
        features = embed(x)
    (features.float() * upstream).sum().backward()
    return features.detach().float(), x.grad


def _library(model):
    return lambda x: model.get_image_features(pixel_values=x).pooler_output


@pytest.mark.parametrize(("adapted", "fused"), [(False, False), (False, True), (True, True)],
                         ids=["library kernels", "library kernels, fused", "cpu kernels"])
def test_image_embeddings_and_their_image_gradient_are_the_librarys(adapted, fused):
    model = _frozen_clip(adapted=adapted, fused=fused)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(4, 3, 224, 224, generator=generator)
    upstream = torch.randn(4, model.config.projection_dim, generator=generator)
    expected, expected_grad = _embeddings_and_gradient(_library(model), images, upstream)
    got, got_grad = _embeddings_and_gradient(lambda x: image_embeddings(model, x), images, upstream)
    assert got.shape == expected.shape == (4, model.config.projection_dim)
    assert_close(got, expected, rel=SAME_MATH, what="embeddings")
    assert_close(got_grad, expected_grad, rel=SAME_MATH, what="image gradient")


@pytest.mark.parametrize("fused", [False, True], ids=["one product each", "q, k, v fused"])
def test_a_layer_and_its_class_token_row_are_the_librarys_and_the_row_reads_every_token(fused):
    model = _frozen_clip(adapted=False, fused=fused)
    layer = model.vision_model.encoder.layers[-1]
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 50, model.config.vision_config.hidden_size, generator=generator)
    whole = layer(hidden, None)
    assert_close(encoder_layer(layer, hidden), whole, rel=SAME_MATH)
    assert_close(class_token_of_layer(layer, hidden), whole[:, 0], rel=SAME_MATH)
    # the other tokens are its attention's keys and values: changing one changes the class token
    nudged = hidden.clone()
    nudged[:, 37] += torch.randn(nudged.shape[-1], generator=generator)  # not a constant: layer_norm1 drops those
    assert relative_difference(class_token_of_layer(layer, nudged), whole[:, 0]) > CHANGED


def test_under_bfloat16_autocast_the_embeddings_keep_the_librarys_direction():
    model = _frozen_clip(adapted=True)
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(4, 3, 224, 224, generator=generator)
    upstream = torch.randn(4, model.config.projection_dim, generator=generator)
    library = _embeddings_and_gradient(_library(model), images, upstream, bfloat16=True)
    ours = _embeddings_and_gradient(lambda x: image_embeddings(model, x), images, upstream, bfloat16=True)
    for name, expected, got in (("embeddings", library[0], ours[0]), ("gradient", library[1], ours[1])):
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
        assert cosine > 0.999, f"bf16 {name} turned away from the library's: cosine {float(cosine):.5f}"
