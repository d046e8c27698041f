"""The CPU kernels of engine/model_kernels.py compute what the library's kernels compute."""

from __future__ import annotations

import copy

import pytest
import torch
from tolerances import SAME_MATH, assert_close

from engine.model_kernels import PatchMatmul, adapt_clip_to_device, is_patch_embedding
from engine.models import ModelStore
from engine.tiny_models import build_tiny_clip


@pytest.mark.parametrize("bias", [False, True])
def test_patch_matmul_gives_the_convolutions_output_and_image_gradient(bias):
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
        if bias:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))
    # 36 x 44: not whole patches, so the convolution drops the last rows and columns
    images = torch.rand(2, 3, 36, 44, generator=generator)
    upstream = torch.randn(2, 16, 4, 5, generator=generator)
    results = []
    for module in (conv, PatchMatmul(conv)):
        x = images.clone().requires_grad_(True)
        out = module(x)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad))
    (conv_out, conv_grad), (matmul_out, matmul_grad) = results
    assert matmul_out.shape == conv_out.shape == (2, 16, 4, 5)
    assert_close(matmul_out, conv_out, rel=SAME_MATH)
    assert_close(matmul_grad, conv_grad, rel=SAME_MATH)
    assert matmul_grad[..., 32:, :].abs().max() == 0 and matmul_grad[..., 40:].abs().max() == 0


def test_only_a_patch_embedding_is_rewritten():
    assert is_patch_embedding(torch.nn.Conv2d(3, 8, 4, 4))
    conv = torch.nn.Conv2d
    not_patches = (conv(3, 8, 4, 2), conv(3, 8, 4, 4, padding=1), conv(3, 6, 4, 4, groups=3))
    for module in not_patches:
        assert not is_patch_embedding(module)
        with pytest.raises(ValueError, match="not a patch embedding"):
            PatchMatmul(module)


def _features_and_gradient(model, images, upstream):
    x = images.clone().requires_grad_(True)
    features = model.get_image_features(pixel_values=x)
    features = getattr(features, "pooler_output", features)
    (features * upstream).sum().backward()
    return features.detach(), x.grad


def test_an_adapted_clip_gives_the_same_embeddings_and_image_gradients():
    model, _ = build_tiny_clip()
    model.requires_grad_(False)
    adapted = copy.deepcopy(model)
    adapt_clip_to_device(adapted, "cpu")
    assert isinstance(adapted.vision_model.embeddings.patch_embedding, PatchMatmul)
    assert adapted.config.vision_config._attn_implementation == "eager"
    assert list(adapted.state_dict()) == list(model.state_dict())  # saved models keep their keys
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 224, 224, generator=generator)
    upstream = torch.randn(3, model.config.projection_dim, generator=generator)
    (expected, expected_grad), (actual, actual_grad) = (
        _features_and_gradient(m, images, upstream) for m in (model, adapted))
    assert_close(actual, expected, rel=SAME_MATH)
    assert_close(actual_grad, expected_grad, rel=SAME_MATH)


def test_other_devices_keep_the_librarys_kernels():
    model, _ = build_tiny_clip()
    assert model.config.vision_config._attn_implementation == "sdpa"
    adapt_clip_to_device(model, "cuda")  # only the device's type is read: no GPU needed
    assert isinstance(model.vision_model.embeddings.patch_embedding, torch.nn.Conv2d)
    assert model.config.vision_config._attn_implementation == "sdpa"


def test_the_store_adapts_clip_on_a_cpu():
    bundle = ModelStore("tiny").clip("cpu")
    assert isinstance(bundle.model.vision_model.embeddings.patch_embedding, PatchMatmul)


def test_the_benchmark_times_the_kernels_a_run_uses():
    from engine.bench import benchmark_clip

    bundle = benchmark_clip("tiny", torch.device("cpu"))
    assert isinstance(bundle.model.vision_model.embeddings.patch_embedding, PatchMatmul)
