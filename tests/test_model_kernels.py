"""The CPU kernels of engine/model_kernels.py compute what the library's kernels compute."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from tolerances import MODEL_REORDERED, SAME_MATH, assert_close

from engine.bench_operations import OperationCounter
from engine.grounding import INVALID_PROPOSAL_LOGIT, GroundingDetector
from engine.guidance.clip_image import image_embeddings
from engine.model_kernels import (
    DeformableBags,
    FusedProjections,
    KeptShiftMasks,
    LinearWithBfloat16Copy,
    PatchMatmul,
    adapt_clip_to_device,
    adapt_grounding_to_device,
    fuse_attention_projections,
    is_patch_embedding,
    keep_shift_masks,
    swin_backbone,
)
from engine.models import ModelStore
from engine.tiny_models import build_tiny_clip, build_tiny_grounding_dino


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


def test_fused_projections_give_each_layers_output_from_one_product_over_the_layers_own_memory():
    generator = torch.Generator().manual_seed(5)
    layers = [torch.nn.Linear(8, out) for out in (8, 8, 4)]
    inputs = torch.randn(2, 3, 8, generator=generator)
    with torch.no_grad():
        expected = [layer(inputs) for layer in layers]
        fused = FusedProjections(layers)
        assert_close(fused(inputs), torch.cat(expected, -1), rel=SAME_MATH)
        for layer, output in zip(layers, expected, strict=True):  # each layer still computes alone
            assert isinstance(layer.weight, torch.nn.Parameter) and torch.equal(layer(inputs), output)
    # the layers' parameters are rows of the stack: one copy of the weights, not two
    assert layers[1].weight.data_ptr() == fused.weight.data_ptr() + 8 * 8 * fused.weight.element_size()
    assert layers[2].bias.data_ptr() == fused.bias.data_ptr() + 16 * fused.bias.element_size()
    with pytest.raises(ValueError, match="only some have a bias"):
        FusedProjections([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8, bias=False)])


def test_a_clip_with_fused_projections_keeps_its_state_and_does_two_products_fewer_a_layer():
    model, _ = build_tiny_clip(num_hidden_layers=3)
    with pytest.raises(ValueError, match="frozen"):  # the products would not reach the parameters
        fuse_attention_projections(model)
    model.requires_grad_(False)
    library = copy.deepcopy(model)
    assert fuse_attention_projections(model) == 3
    assert {k: v.tolist() for k, v in model.state_dict().items()} == {k: v.tolist() for k, v in
                                                                     library.state_dict().items()}
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    products = []
    for m in (library, model):
        with OperationCounter() as counter:
            image_embeddings(m, images)
        products.append(counter.by_name["addmm"] + counter.by_name["bmm"])  # the linear products with a bias
    assert products[0] - products[1] == 2 * 3  # q, k and v in one product, in every layer (the last one too)
    upstream = torch.zeros(2, library.config.projection_dim)
    assert_close(image_embeddings(model, images), _features_and_gradient(library, images, upstream)[0], rel=SAME_MATH)


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
    assert all(isinstance(layer.self_attn.qkv_proj, FusedProjections) for layer in adapted.vision_model.encoder.layers)
    assert list(adapted.state_dict()) == list(model.state_dict())  # saved models keep their keys
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 224, 224, generator=generator)
    upstream = torch.randn(3, model.config.projection_dim, generator=generator)
    (expected, expected_grad), (actual, actual_grad) = (
        _features_and_gradient(m, images, upstream) for m in (model, adapted))
    assert_close(actual, expected, rel=SAME_MATH)
    assert_close(actual_grad, expected_grad, rel=SAME_MATH)


def test_other_devices_keep_the_librarys_kernels(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a GPU without bf16
    model, _ = build_tiny_clip()
    model.requires_grad_(False)
    assert model.config.vision_config._attn_implementation == "sdpa"
    adapt_clip_to_device(model, "cuda")  # only the device's type is read: no GPU needed
    assert isinstance(model.vision_model.embeddings.patch_embedding, torch.nn.Conv2d)
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert not any(isinstance(m, LinearWithBfloat16Copy) for m in model.modules())
    assert isinstance(model.vision_model.encoder.layers[0].self_attn.qkv_proj, FusedProjections)  # every device


def _clip_image_path_under(model, images: torch.Tensor, bfloat16: bool):
    """CLIP's image embeddings of ``images`` and their gradient, under bf16 autocast or in float32."""
    images = images.clone().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
        embeddings = image_embeddings(model, images)
    embeddings.float().square().sum().backward()
    return embeddings.detach(), images.grad


def test_a_gpu_with_bf16_keeps_bf16_copies_of_clips_image_path_that_compute_what_autocast_does(monkeypatch):
    """The copies are the values autocast's casts make: the same embeddings and image gradient, bit for
    bit, under bf16 autocast (here a CPU's) and in float32, with two operations fewer a linear layer."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    model = ModelStore("tiny").clip("cpu").model  # the CPU's kernels too: the copies are about the linear layers
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = {bfloat16: _clip_image_path_under(model, images, bfloat16) for bfloat16 in (True, False)}
    with OperationCounter() as before, torch.autocast("cpu", torch.bfloat16):
        image_embeddings(model, images)
    keys = model.state_dict().keys()
    # in place, on the same parameters: float32 products of a copy in other memory may differ in the last bit
    adapt_clip_to_device(model, "cuda")  # only the device's type is read: no GPU needed
    copies = {name for name, m in model.named_modules() if isinstance(m, LinearWithBfloat16Copy)}
    layers = model.config.vision_config.num_hidden_layers
    assert len(copies) == 6 * layers + 1 and "visual_projection" in copies  # q, k, v, out, fc1, fc2 a layer
    assert all(name.startswith(("vision_model.", "visual_projection")) for name in copies)  # not the text tower
    assert model.state_dict().keys() == keys  # the copies are not saved
    for bfloat16 in (True, False):
        actual, actual_grad = _clip_image_path_under(model, images, bfloat16)
        assert torch.equal(actual, expected[bfloat16][0]) and torch.equal(actual_grad, expected[bfloat16][1])
    for layer in model.vision_model.encoder.layers:  # the fused projection's copy is the three layers' copies
        attention = layer.self_attn
        assert attention.qkv_proj.weight_bf16.data_ptr() == attention.q_proj.weight_bf16.data_ptr()
        assert torch.equal(attention.qkv_proj.weight_bf16[-len(attention.v_proj.weight_bf16):],
                           attention.v_proj.weight.to(torch.bfloat16))
    with OperationCounter() as after, torch.autocast("cpu", torch.bfloat16):
        image_embeddings(model, images)
    counts = [before.total, after.total]
    # the weight and the bias of every linear product (the fused q, k, v one, out, fc1 and fc2 a layer, and
    # the projection, which has no bias) were cast on each forward
    assert counts[0] - counts[1] == 2 * (4 * layers + 1) - 1


def test_a_gpu_with_bf16_keeps_bf16_copies_of_the_grounding_models_image_path(monkeypatch):
    """As CLIP's: a grounding step's loss and image gradient are the same bit for bit, under bf16 autocast
    and in float32, with two operations fewer a call of each linear layer of the image path."""
    from engine.footprint import GROUNDING_IMAGE_PATH
    from engine.grounding import GroundingDetector
    from engine.guidance.grounding_loss import GroundingPartLoss
    from engine.model_kernels import adapt_grounding_to_device

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    bundle = ModelStore("tiny").grounding("cpu")
    model = bundle.model
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))

    def step(bfloat16: bool):
        loss = GroundingPartLoss(GroundingDetector(bundle, bfloat16=bfloat16), ["base", "shade"],
                                 ["pottery base", "linen shade"], threshold=0.0)
        loss.caption_texts(2)  # as from a run's second grounding step on
        pixels = images.clone().requires_grad_(True)
        with OperationCounter() as counter:
            value = loss(pixels)
            value.backward()
        return value.detach(), pixels.grad, counter.total

    for bfloat16 in (True, False):
        step(bfloat16)  # the Swin layers' shift masks are made once per dtype (KeptShiftMasks): before counting
    expected = {bfloat16: step(bfloat16) for bfloat16 in (True, False)}
    keys = model.state_dict().keys()
    adapt_grounding_to_device(model, "cuda")  # only the device's type is read: no GPU needed
    copies = [name for name, m in model.named_modules() if isinstance(m, LinearWithBfloat16Copy)]
    assert copies and all(name.startswith(GROUNDING_IMAGE_PATH) for name in copies)  # not the text backbone or decoder
    assert not any(isinstance(m, LinearWithBfloat16Copy) for m in model.model.text_backbone.modules())
    assert model.state_dict().keys() == keys  # the copies are not saved
    for bfloat16 in (True, False):
        value, gradient, operations = step(bfloat16)
        assert torch.equal(value, expected[bfloat16][0]) and torch.equal(gradient, expected[bfloat16][1])
        if bfloat16:
            assert operations < expected[True][2] - len(copies)  # each copied layer runs once or more a step
        else:
            assert operations == expected[False][2]  # float32 uses the parameters, as before


def test_the_store_adapts_clip_on_a_cpu():
    bundle = ModelStore("tiny").clip("cpu")
    assert isinstance(bundle.model.vision_model.embeddings.patch_embedding, PatchMatmul)


def test_the_benchmark_times_the_kernels_a_run_uses():
    from engine.bench import benchmark_clip

    bundle = benchmark_clip("tiny", torch.device("cpu"))
    assert isinstance(bundle.model.vision_model.embeddings.patch_embedding, PatchMatmul)


# --- Grounding DINO's multi-scale deformable attention ----------------------------------------------

LEVELS = [(12, 10), (6, 5), (3, 3)]  # (h, w) of 3 levels: not square, odd sizes


def _deformable_inputs(seed: int, batch: int = 2, queries: int = 40, heads: int = 4, channels: int = 8,
                       points: int = 3):
    generator = torch.Generator().manual_seed(seed)
    rows = sum(h * w for h, w in LEVELS)
    value = torch.randn(batch, rows, heads, channels, generator=generator)
    # Locations from -0.2 to 1.2: corners outside every border, and whole points outside a level.
    locations = torch.rand(batch, queries, heads, len(LEVELS), points, 2, generator=generator) * 1.4 - 0.2
    attention = torch.randn(batch, queries, heads, len(LEVELS) * points, generator=generator).softmax(-1)
    upstream = torch.randn(batch, queries, heads * channels, generator=generator)
    return value, locations, attention.view(batch, queries, heads, len(LEVELS), points), upstream


def _sampled(module, value, locations, attention, upstream):
    inputs = [t.clone().requires_grad_(True) for t in (value, locations, attention)]
    out = module(inputs[0], torch.tensor(LEVELS), LEVELS, None, inputs[1], inputs[2], 64)
    (out * upstream).sum().backward()
    return [out.detach()] + [t.grad for t in inputs]


def test_deformable_bags_give_the_librarys_sampling_and_gradients():
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    value, locations, attention, upstream = _deformable_inputs(seed=2)
    expected = _sampled(MultiScaleDeformableAttention(), value, locations, attention, upstream)
    actual = _sampled(DeformableBags(), value, locations, attention, upstream)
    assert actual[0].shape == expected[0].shape == (2, 40, 32)
    for name, got, want in zip(("output", "value gradient", "location gradient", "attention gradient"),
                               actual, expected, strict=True):
        assert_close(got, want, rel=SAME_MATH, what=name)
    # A point whose 4 corners all fall outside its map (half a pixel past the border, 1/6 of the
    # 3-pixel level) reads nothing: its attention weight gets no gradient.
    outside = (locations < -1 / 6 - 0.01).any(-1) | (locations > 1 + 1 / 6 + 0.01).any(-1)
    assert outside.any() and (actual[3][outside] == 0).all() and (actual[3][~outside] != 0).any()


def test_deformable_bags_are_deterministic():
    """Same inputs, same bits: the table's gradient is a fixed-order sum, not a scatter in thread order."""
    inputs = _deformable_inputs(seed=3, queries=300)
    first, second = (_sampled(DeformableBags(), *inputs) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_deformable_bags_return_float32_under_cpu_autocast_as_the_library_does():
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    value, locations, attention, _ = _deformable_inputs(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = MultiScaleDeformableAttention()(value.bfloat16(), None, LEVELS, None, locations, attention, 64)
        actual = DeformableBags()(value.bfloat16(), None, LEVELS, None, locations, attention, 64)
    assert actual.dtype == expected.dtype == torch.float32
    assert_close(actual, expected, rel=SAME_MATH)


def _with_the_librarys_kernel(model):
    """A copy of an adapted Grounding DINO with the library's deformable attention, its Swin
    backbone's default attention (``sdpa``) and shifted-window masks made at every forward back in place."""
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    restored = copy.deepcopy(model)
    for module in restored.modules():
        if isinstance(getattr(module, "attn", None), DeformableBags):
            module.attn = MultiScaleDeformableAttention()
        module.__dict__.pop("get_attn_mask", None)  # the class's method again
    swin_backbone(restored).set_attn_implementation("sdpa")
    return restored


def _scores_and_gradient(detector, images, caption, weights):
    """Proposal logits and their image gradient (what a grounding step uses), and the decoder's
    boxes and scores (what detection uses)."""
    x = images.clone().requires_grad_(True)
    _, logits = detector.phrase_logits(x, caption)
    valid = logits > INVALID_PROPOSAL_LOGIT
    (logits[valid] * weights[valid.nonzero()[:, -1]]).sum().backward()
    with torch.no_grad():
        boxes, scores = detector.phrase_scores(images, caption, proposals=False)
    return logits.detach(), x.grad, boxes, scores


def test_an_adapted_grounding_dino_gives_the_same_detections_and_image_gradients():
    """The store's Grounding DINO (the shipped tiny model, adapted on a CPU) against the same weights
    with the library's kernel: the proposals a grounding step scores, their image gradient, and the
    decoder's boxes and scores."""
    adapted = ModelStore("tiny").grounding("cpu")
    replaced = [m for m in adapted.model.modules() if isinstance(m, DeformableBags)]
    config = adapted.model.config
    assert len(replaced) == config.encoder_layers + config.decoder_layers
    library = dataclasses.replace(adapted, model=_with_the_librarys_kernel(adapted.model))
    # the Swin backbone's window attention runs eager on a CPU; the library's default is sdpa
    assert swin_backbone(adapted.model).config._attn_implementation == "eager"
    assert swin_backbone(library.model).config._attn_implementation == "sdpa"
    assert list(library.model.state_dict()) == list(adapted.model.state_dict())  # saved models keep their keys
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    weights = torch.tensor([1.0, -0.5])  # a loss that weighs the phrases differently
    results = []
    for bundle in (library, adapted):
        detector = GroundingDetector(bundle)
        results.append(_scores_and_gradient(detector, images, detector.caption(["base", "lamp shade"]), weights))
    expected, actual = results
    assert expected[1].abs().max() > 0  # the gradient reaches the image through the encoder
    for name, got, want in zip(("proposal logits", "image gradient", "boxes", "scores"), actual, expected,
                               strict=True):
        assert_close(got, want, rel=MODEL_REORDERED, what=name)


def test_the_swin_backbones_shift_masks_are_the_librarys_made_once_per_size():
    """Each shifted-window layer's attention mask depends on the feature map's size alone: it is made
    once (by the library's method) and handed back after, on every device."""
    model = copy.deepcopy(ModelStore("tiny").grounding("cpu").model)  # the shipped tiny model has shifted windows
    for module in model.modules():
        module.__dict__.pop("get_attn_mask", None)  # as the library made it, before any adaptation
    backbone = swin_backbone(model)
    library = copy.deepcopy(model)
    assert keep_shift_masks(model) > 0 and keep_shift_masks(model) == 0  # once: kept masks stay kept
    layers = [m for m in backbone.modules() if isinstance(m.__dict__.get("get_attn_mask"), KeptShiftMasks)]
    shifted = next(layer for layer in layers if layer.shift_size > 0)
    made = shifted.get_attn_mask(16, 16, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(made, type(shifted).get_attn_mask(shifted, 16, 16, dtype=torch.float32, device="cpu"))
    assert bool((made == -100.0).any()) and bool((made == 0.0).any())
    assert shifted.get_attn_mask(16, 16, dtype=torch.float32, device=torch.device("cpu")) is made
    assert shifted.get_attn_mask(24, 16, dtype=torch.float32, device=torch.device("cpu")) is not made
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for _ in range(2):  # the second forward reads the kept masks
            kept = backbone(images).feature_maps
            made_each_time = swin_backbone(library)(images).feature_maps
            assert all(torch.equal(a, b) for a, b in zip(kept, made_each_time, strict=True))
    adapted, _ = build_tiny_grounding_dino()
    adapt_grounding_to_device(adapted, "cuda")  # only the device's type is read: no GPU needed
    assert any(isinstance(m.__dict__.get("get_attn_mask"), KeptShiftMasks) for m in adapted.modules())


def test_grounding_dino_on_other_devices_keeps_the_librarys_kernel():
    model, _ = build_tiny_grounding_dino()
    adapt_grounding_to_device(model, "cuda")  # only the device's type is read: no GPU needed
    assert not any(isinstance(m, DeformableBags) for m in model.modules())
    assert swin_backbone(model).config._attn_implementation == "sdpa"


def test_the_store_and_the_benchmark_adapt_grounding_dino_on_a_cpu():
    from engine.bench import benchmark_grounding

    for bundle in (ModelStore("tiny").grounding("cpu"), benchmark_grounding("tiny", torch.device("cpu"))):
        assert any(isinstance(m, DeformableBags) for m in bundle.model.modules())
