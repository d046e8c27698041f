"""Grounding DINO wrapper: captions and spans, preprocessing equals the library's, phrase logits, detections."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import SAME_MATH, assert_close

from engine.compat import GROUNDING_DELIMITER_IDS, grounding_delimiter_ids
from engine.errors import ModelFormatError, ModelNotFound, PromptError
from engine.grounding import INVALID_PROPOSAL_LOGIT, GroundingDetector, build_caption, resized_shape, span_mean
from engine.models import DEFAULT_GROUNDING, FETCH_COMMAND, ModelStore
from engine.tiny_models import TINY_VOCABULARY, build_tiny_grounding_dino


@pytest.fixture(scope="module")
def detector():
    return GroundingDetector(ModelStore("tiny").grounding("cpu"))


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: low-frequency content, where resampling filters agree closely."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3))
    return np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0


def random_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- captions -------------------------------------------------------------------------------------


def test_caption_spans_cover_exactly_the_tokens_of_each_phrase(detector):
    tokenizer = detector.tokenizer
    phrases = ["base", "Lamp  Shade", "zebra tube", "xylophone"]
    caption = build_caption(tokenizer, phrases)
    assert caption.text == "base . lamp shade . zebra tube . xylophone ."
    assert caption.phrases == ("base", "lamp shade", "zebra tube", "xylophone")
    ids = caption.input_ids[0].tolist()
    assert caption.input_ids.shape == caption.attention_mask.shape == (1, len(ids))
    assert bool(caption.attention_mask.all())
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    # Words the vocabulary does not know are split into pieces, and the span holds all of them.
    assert "zebra" not in TINY_VOCABULARY and "xylophone" not in TINY_VOCABULARY
    for phrase, (start, end) in zip(caption.phrases, caption.token_spans, strict=True):
        assert tokenizer.decode(ids[start:end]) == phrase
        assert tokens[start - 1] == "." or start == 1  # nothing of the phrase before the span
        assert tokens[end] == "."  # ... nor after it
    zebra = tokens[slice(*caption.token_spans[2])]
    assert zebra[0] == "z" and "##a" in zebra and zebra[-1] == "tube"
    # Everything outside the spans is a delimiter or a special token.
    inside = {i for start, end in caption.token_spans for i in range(start, end)}
    assert {tokens[i] for i in range(len(ids)) if i not in inside} == {"[CLS]", ".", "[SEP]"}


def test_a_single_phrase_and_repeated_words_get_their_own_spans(detector):
    caption = build_caption(detector.tokenizer, ["gold tube", "tube"])
    assert caption.text == "gold tube . tube ."
    assert caption.token_spans == ((1, 3), (4, 5))


@pytest.mark.parametrize("phrases", [[], ["base", "   "], ["base.top"], ["what?"]])
def test_unusable_phrases_are_prompt_errors(detector, phrases):
    with pytest.raises(PromptError):
        build_caption(detector.tokenizer, phrases)


def test_a_caption_longer_than_the_model_reads_is_a_prompt_error(detector):
    caption = build_caption(detector.tokenizer, ["red base"] * 90)  # 3 tokens each: > 256
    with pytest.raises(PromptError, match="at most 256"):
        detector.phrase_logits(random_images(1, 64, 64), caption)


def test_span_mean_averages_each_span_and_ignores_padding():
    values = torch.tensor([[0.0, 1.0, 3.0, 5.0, float("-inf"), float("-inf")]])
    assert torch.equal(span_mean(values, ((1, 3), (3, 4))), torch.tensor([[2.0, 5.0]]))


# --- tiny model -----------------------------------------------------------------------------------


def test_tiny_vocabulary_gives_the_delimiters_the_ids_the_model_splits_at():
    model, tokenizer = build_tiny_grounding_dino()
    delimiters = list(GROUNDING_DELIMITER_IDS)
    assert tuple(tokenizer.convert_tokens_to_ids(delimiters)) == grounding_delimiter_ids(model)
    assert tokenizer.convert_tokens_to_ids(delimiters) == [101, 102, 1012, 1029]
    assert tokenizer.tokenize("a gold lamp shade") == ["a", "gold", "lamp", "shade"]
    ids = tokenizer("quizzical-jumpy 3D vase!")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_tiny_grounding_dino_is_the_same_on_every_build_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    (a, _), (b, _) = build_tiny_grounding_dino(), build_tiny_grounding_dino()
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    (c, _) = build_tiny_grounding_dino(seed=1)
    assert not torch.equal(a.model.level_embed, c.model.level_embed)
    assert a.config.two_stage and a.config.decoder_layers >= 2


# --- preprocessing --------------------------------------------------------------------------------


def test_resized_shape_follows_the_library_rule():
    from transformers.image_transforms import get_size_with_aspect_ratio

    for height in (37, 90, 200, 256, 300, 427, 512, 800, 1333, 2000):
        for width in (41, 90, 256, 333, 640, 801, 1500, 4000):
            for size, max_size in ((800, 1333), (256, 427), (512, 512)):
                expected = get_size_with_aspect_ratio((height, width), size, max_size)
                assert resized_shape(height, width, size, max_size) == tuple(expected), (height, width, size)


@pytest.mark.parametrize("shape", [(256, 256), (300, 400), (512, 200), (90, 120)])
def test_preprocessing_matches_the_grounding_dino_image_processor(detector, shape):
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    image = smooth_image(*shape)
    processor = GroundingDinoImageProcessorPil(size={"shortest_edge": detector.size, "longest_edge": detector.max_size})
    expected = processor(images=Image.fromarray(image), return_tensors="pt")
    pixel_values, pixel_mask = detector.preprocess(as_tensor(image))
    assert pixel_values.shape == expected["pixel_values"].shape
    assert pixel_mask.dtype == expected["pixel_mask"].dtype and torch.equal(pixel_mask, expected["pixel_mask"])
    difference = (pixel_values - expected["pixel_values"]).abs()
    assert float(difference.mean()) < 0.01, float(difference.mean())
    # The processor resizes 8-bit images and rounds to 8 bits; in 0..1 units the two stay within one level.
    std = torch.tensor(detector.bundle.std).view(1, 3, 1, 1)
    assert float((difference * std).max()) * 255 < 1.0, float((difference * std).max()) * 255


def test_preprocessing_is_differentiable_and_size_is_configurable(detector):
    images = random_images(2, 120, 160).requires_grad_(True)
    small = GroundingDetector(detector.bundle, size=96, max_size=1000)
    pixel_values, pixel_mask = small.preprocess(images)
    assert pixel_values.shape == (2, 3, 96, 128) and pixel_mask.shape == (2, 96, 128)
    pixel_values.sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


# --- phrase logits --------------------------------------------------------------------------------


@pytest.mark.parametrize("proposals", [True, False])
def test_phrase_logits_shapes_and_gradient_to_the_image(detector, proposals):
    caption = detector.caption(["base", "lamp shade", "gold tube"])
    images = random_images(2, 256, 256).requires_grad_(True)
    boxes, logits = detector.phrase_logits(images, caption, proposals=proposals)
    # Dense proposals: feature levels at strides 8, 16, 32, 64 of a 256 px image.
    regions = 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 if proposals else detector.model.config.num_queries
    assert boxes.shape == (2, regions, 4) and logits.shape == (2, regions, 3)
    assert bool(torch.isfinite(logits).all()) and bool(((boxes >= 0) & (boxes <= 1)).all())
    logits.sum().backward()  # a loss on raw logits: a sigmoid saturates with random weights
    grad = images.grad
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert float(grad[0].abs().sum()) > 0 and float(grad[1].abs().sum()) > 0


@pytest.mark.parametrize("proposals", [True, False])
def test_phrase_logits_are_span_means_of_the_library_outputs(detector, proposals):
    caption = detector.caption(["base", "lamp shade"])
    images = random_images(1, 200, 240, seed=1)
    with torch.no_grad():
        boxes, logits = detector.phrase_logits(images, caption, proposals=proposals)
        _, scores = detector.phrase_scores(images, caption, proposals=proposals)
        pixel_values, pixel_mask = detector.preprocess(images)
        out = detector.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=caption.input_ids)
    tokens = out.enc_outputs_class if proposals else out.logits
    expected_boxes = out.enc_outputs_coord_logits.sigmoid() if proposals else out.pred_boxes
    assert tokens.shape[-1] == detector.max_text_len  # padded to max_text_len with -inf
    assert bool(torch.isinf(tokens[..., caption.input_ids.shape[1] :]).all())
    assert caption.token_spans == ((1, 2), (3, 5))
    assert_close(logits[..., 0], tokens[..., 1], rel=SAME_MATH, what="one-token span")
    assert_close(logits[..., 1], tokens[..., 3:5].mean(-1), rel=SAME_MATH, what="two-token span")
    assert_close(scores[..., 1], tokens[..., 3:5].sigmoid().mean(-1), rel=SAME_MATH, what="span scores")
    assert_close(boxes, expected_boxes, rel=SAME_MATH, what="boxes")


def test_proposals_the_library_marks_invalid_are_never_scored(detector):
    # At 512 px the finest level is 64 wide: its border cells centre within 1 % of the edge.
    large = GroundingDetector(detector.bundle, size=512, max_size=512)
    caption = large.caption(["base", "tube"])
    images = random_images(1, 512, 512, seed=2)
    with torch.no_grad():
        boxes, logits = large.phrase_logits(images, caption)
        _, scores = large.phrase_scores(images, caption)
        pixel_values, _ = large.preprocess(images)
        out = large.model(pixel_values=pixel_values, input_ids=caption.input_ids)
    invalid = ~torch.isfinite(out.enc_outputs_coord_logits).all(-1)
    assert 0 < int(invalid.sum()) < invalid.numel()
    assert bool((logits[invalid] == INVALID_PROPOSAL_LOGIT).all()) and bool((boxes[invalid] == 0).all())
    assert bool((scores[invalid] == 0).all())
    assert bool((logits[~invalid] > INVALID_PROPOSAL_LOGIT).all()) and bool(torch.isfinite(boxes).all())


def count_calls(module: torch.nn.Module) -> list[int]:
    """A one-element list counting ``module``'s forward calls from now on."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_proposals_give_the_library_image_gradient_without_running_its_decoder():
    """The dense proposals stop before the decoder (``proposals.py``), yet give the library's whole
    forward's values and image gradient."""
    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))  # its own model: hooks stay here
    decoder_calls = count_calls(detector.model.model.decoder)
    caption = detector.caption(["base", "lamp shade"])
    weights = torch.linspace(-1.0, 1.0, 2)  # a loss that weighs the phrases differently

    theirs = random_images(2, 160, 192, seed=4).requires_grad_(True)
    pixel_values, pixel_mask = detector.preprocess(theirs)
    out = detector.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=caption.input_ids.expand(2, -1))
    assert decoder_calls == [1]
    valid = torch.isfinite(out.enc_outputs_coord_logits).all(-1)  # the rest score INVALID_PROPOSAL_LOGIT
    library = span_mean(out.enc_outputs_class, caption.token_spans)[valid]
    (library * weights).sum().backward()

    ours = theirs.detach().clone().requires_grad_(True)
    _, logits = detector.phrase_logits(ours, caption)
    assert decoder_calls == [1]
    assert_close(logits[valid], library, rel=SAME_MATH, what="proposal logits")
    (logits[valid] * weights).sum().backward()
    assert_close(ours.grad, theirs.grad, rel=SAME_MATH, what="image gradient")


def test_proposals_of_padded_images_are_the_library_forwards():
    """Images of one batch are never padded here, so the encoder's layers are given no image mask (the
    library's masking would change nothing: ``ImageLayout.padded`` is False). A layout with padding
    still gets the library's masks and its values."""
    from engine.grounding.proposals import encode_images, encode_text, encoder_proposals

    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))
    caption = detector.caption(["base", "lamp shade"])
    pixel_values, pixel_mask = detector.preprocess(random_images(2, 128, 160, seed=9))
    pixel_mask = pixel_mask.clone()
    pixel_mask[1, :, 96:] = 0  # the second image's right side is padding
    input_ids = caption.input_ids.expand(2, -1)
    with torch.no_grad():
        out = detector.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids)
        encoding = encode_images(detector.model.model, pixel_values, pixel_mask)
        text = encode_text(detector.model.model, input_ids, torch.ones_like(input_ids))
        coord_logits, token_logits = encoder_proposals(detector.model.model, encoding, text)
        unpadded = encode_images(detector.model.model, pixel_values, torch.ones_like(pixel_mask))
    assert encoding.layout.padded and not unpadded.layout.padded
    valid = torch.isfinite(out.enc_outputs_coord_logits).all(-1)
    assert not bool(valid.all())  # the padded positions' proposals are invalid
    assert torch.equal(torch.isfinite(coord_logits).all(-1), valid)
    assert_close(coord_logits[valid], out.enc_outputs_coord_logits[valid], rel=SAME_MATH, what="proposal boxes")
    scored = torch.isfinite(out.enc_outputs_class)
    assert_close(token_logits[scored], out.enc_outputs_class[scored], rel=SAME_MATH, what="proposal logits")


def test_one_image_encoding_serves_several_captions():
    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))
    backbone_calls = count_calls(detector.model.model.backbone.conv_encoder.model)  # the image backbone (Swin)
    images = random_images(2, 128, 128, seed=5)
    captions = [detector.caption(["base", "shade"]), detector.caption(["pottery base", "linen shade"])]
    with torch.no_grad():
        separately = [detector.phrase_scores(images, caption) for caption in captions]
        assert backbone_calls == [2]
        encoding = detector.encode_images(images)
        shared = [detector.phrase_scores(encoding, caption) for caption in captions]
    assert backbone_calls == [3]
    for (boxes, scores), (shared_boxes, shared_scores) in zip(separately, shared, strict=True):
        assert torch.equal(boxes, shared_boxes) and torch.equal(scores, shared_scores)
    with pytest.raises(ValueError, match="decoder's queries need the images"):
        detector.phrase_scores(encoding, captions[0], proposals=False)


def count_method_calls(monkeypatch, owner, name: str) -> list[int]:
    """A one-element list counting calls of ``owner``'s method ``name`` from now on (the method
    still runs)."""
    calls, method = [0], getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_frozen_models_image_layout_is_computed_once_per_batch_shape_and_changes_nothing(monkeypatch):
    """The feature levels' masks and position embeddings, the encoder's reference points and the
    proposals' anchors do not depend on the pixels: a grounding step after the first takes them from
    the first (``ImageLayout``), with the same proposals and gradient."""
    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))
    positions = count_calls(detector.model.model.backbone.position_embedding)
    references = count_method_calls(monkeypatch, detector.model.model.encoder, "get_reference_points")
    anchors = count_method_calls(monkeypatch, detector.model.model, "generate_encoder_output_proposals")
    levels = detector.model.config.num_feature_levels
    caption = detector.caption(["pottery base", "linen shade"])
    images = random_images(2, 128, 128, seed=7)
    steps = []
    for _ in range(2):
        x = images.clone().requires_grad_(True)
        boxes, scores = detector.phrase_scores(detector.encode_images(x), caption)
        scores.square().sum().backward()
        steps.append((boxes, scores.detach(), x.grad))
    assert positions == [levels]  # the first step's; the second took its layout
    assert references == [1] and anchors == [1]
    assert all(torch.equal(first, second) for first, second in zip(*steps, strict=True))
    detector.encode_images(random_images(1, 128, 128, seed=8))  # another batch shape: a layout of its own
    assert positions == [2 * levels]
    # a model that takes gradients (one being trained) could change its level embeddings: nothing kept
    detector.model.requires_grad_(True)
    try:
        learning = GroundingDetector(detector.bundle)
        for _ in range(2):
            learning.encode_images(images)
        assert positions == [4 * levels]
        detector.encode_images(images)  # nor is a layout kept before used once the model takes gradients
        assert positions == [5 * levels]
    finally:
        detector.model.requires_grad_(False)


def test_a_caption_encoded_once_gives_the_same_proposals():
    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"))
    text_calls = count_calls(detector.model.model.text_backbone)
    images = random_images(2, 128, 128, seed=6).requires_grad_(True)
    caption = detector.caption(["pottery base", "linen shade"])
    fresh = detector.phrase_scores(images, caption)
    assert text_calls == [1]
    text = detector.encode_caption(caption, 2)
    assert text_calls == [2] and not text.features.requires_grad
    again = [detector.phrase_scores(images, caption, text=text) for _ in range(3)]
    assert text_calls == [2]  # the text backbone ran for none of them
    assert len(text._positions) == 1  # nor the text position embeddings, float32 in every fusion layer
    assert len(text._blocked_scores) == 1  # nor the text enhancers' attention mask
    for boxes, scores in again:
        assert torch.equal(boxes, fresh[0]) and torch.equal(scores, fresh[1])
    gradients = [torch.autograd.grad(scores.sum(), images)[0] for scores in (fresh[1], again[0][1])]
    assert torch.equal(*gradients) and float(gradients[0].abs().sum()) > 0  # the image gradient is unchanged
    with pytest.raises(ValueError, match="encoded for 2 images, not 1"):
        detector.phrase_scores(images[:1], caption, text=text)
    with pytest.raises(ValueError, match="dense proposals only"):
        detector.phrase_scores(images, caption, proposals=False, text=text)


def test_bfloat16_proposals_are_the_library_forwards_under_the_same_autocast():
    """Under bf16 autocast (a GPU's, or a CPU's with bf16) the kept inputs (image layout, anchors, the
    caption's text position embeddings: one per dtype the fusion layers read) are what the library's
    forward computes in that arithmetic, so the proposals are its own, step after step."""
    detector = GroundingDetector(ModelStore("tiny").grounding("cpu"), bfloat16=True)
    caption = detector.caption(["base", "lamp shade"])
    images = random_images(2, 160, 192, seed=9)
    with torch.no_grad():
        pixel_values, pixel_mask = detector.preprocess(images)
        with torch.autocast("cpu", torch.bfloat16):
            out = detector.model(pixel_values=pixel_values, pixel_mask=pixel_mask,
                                 input_ids=caption.input_ids.expand(2, -1))
        valid = torch.isfinite(out.enc_outputs_coord_logits).all(-1)
        library = span_mean(out.enc_outputs_class.float(), caption.token_spans)[valid]
        text = detector.encode_caption(caption, 2)
        for _ in range(2):  # the second with everything kept
            boxes, logits = detector.phrase_logits(detector.encode_images(images), caption, text=text)
            assert_close(logits[valid], library, rel=SAME_MATH, what="bf16 proposal logits")
            assert_close(boxes[valid], out.enc_outputs_coord_logits.float().sigmoid()[valid], rel=SAME_MATH,
                         what="bf16 boxes")
    assert len(text._positions) == 2  # the first layer reads bf16 text features, the others float32


# --- detection ------------------------------------------------------------------------------------


def test_detections_are_boxes_in_pixels_with_per_phrase_scores(detector):
    images = random_images(2, 180, 300, seed=3)
    phrases = ["base", "lamp shade", "tube"]
    detections = detector.detect(images, phrases, box_threshold=-1.0)  # keep every query
    caption = detector.caption(phrases)
    with torch.no_grad():
        boxes, scores = detector.phrase_scores(images, caption, proposals=False)
    for det, image_boxes, image_scores in zip(detections, boxes, scores, strict=True):
        queries = detector.model.config.num_queries
        assert det.boxes.shape == (queries, 4) and det.scores.shape == (queries, 3)
        assert det.phrases == ("base", "lamp shade", "tube")
        assert bool(((det.scores >= 0) & (det.scores <= 1)).all())
        best = det.scores.max(-1).values
        assert bool((best[:-1] >= best[1:]).all())  # sorted, best first
        order = torch.argsort(image_scores.max(-1).values, descending=True, stable=True)
        cx, cy, w, h = image_boxes[order].unbind(-1)
        size = torch.tensor([300.0, 180.0, 300.0, 180.0])
        expected = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * size
        expected = torch.minimum(expected.clamp(min=0), size)
        assert_close(det.boxes, expected, rel=SAME_MATH, what="boxes in pixels")
        assert_close(det.scores, image_scores[order], rel=SAME_MATH, what="scores")
        x0, y0, x1, y1 = det.boxes.unbind(-1)
        assert bool(((x0 >= 0) & (x0 <= x1) & (x1 <= 300) & (y0 >= 0) & (y0 <= y1) & (y1 <= 180)).all())
        # One phrase's boxes, as the lifting step takes them.
        boxes_1, scores_1 = det.select(1, 0.5)
        assert torch.equal(scores_1, det.scores[det.scores[:, 1] > 0.5, 1])
        assert torch.equal(boxes_1, det.boxes[det.scores[:, 1] > 0.5])


def lamp_views(n: int) -> torch.Tensor:
    """[n, 3, 256, 256] untextured views of the sample lamp, as localization renders them."""
    from engine.cameras import fixed_views
    from engine.config import settings_for
    from engine.grounding.locate import UNTEXTURED_GRAY
    from engine.render import Renderer
    from engine.samples import sample_mesh

    settings = settings_for("fast")
    vertices = torch.from_numpy(sample_mesh("lamp", 3000).unit_vertices())
    faces = torch.from_numpy(sample_mesh("lamp", 3000).faces)
    angles = torch.linspace(0.0, 2.0 * np.pi, n + 1)[:n]
    cameras = fixed_views(torch.full((n,), 0.3), angles, settings.views, settings.render)
    colors = torch.full_like(vertices, UNTEXTURED_GRAY)
    return Renderer(settings.render).render(vertices, faces, cameras, colors=colors, resolution=256).color


def test_detection_threshold_and_determinism(detector):
    images = lamp_views(2)
    first = detector.detect(images, ["base", "tube"], box_threshold=0.25)
    second = detector.detect(images, ["base", "tube"], box_threshold=0.25)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        assert bool((a.scores.max(-1).values > 0.25).all())
    assert sum(len(d.boxes) for d in first) > 0
    for det in detector.detect(images, ["base", "tube"], box_threshold=1.01):
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0, 2)
    assert not any(r.requires_grad for r in (first[0].boxes, first[0].scores))


# --- model store ----------------------------------------------------------------------------------


def test_tiny_store_gives_a_frozen_model_once():
    store = ModelStore("tiny")
    bundle = store.grounding("cpu")
    assert store.grounding("cpu") is bundle
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert not bundle.model.training
    assert bundle.name == "tiny" and bundle.mean == (0.485, 0.456, 0.406)


def test_default_grounding_offline_names_the_model_and_the_fetch_command(tmp_path):
    store = ModelStore("default", allow_download=False, cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFound) as err:
        store.grounding("cpu")
    assert DEFAULT_GROUNDING == "IDEA-Research/grounding-dino-tiny"
    assert DEFAULT_GROUNDING in str(err.value) and FETCH_COMMAND in str(err.value)


def test_fetch_models_fetches_clip_grounding_and_the_segmenter(monkeypatch):
    import engine.models as models
    from engine import downloads

    fetched = []
    monkeypatch.setattr(downloads, "download_models", lambda sources, **kw: fetched.extend(sources) or ["folders"])
    assert models.fetch_models("default") == ["folders"]
    assert [s.repo_id for s in fetched] == [models.DEFAULT_CLIP, DEFAULT_GROUNDING, models.DEFAULT_SEGMENTER]


def test_a_saved_folder_loads_back_with_the_same_outputs(tmp_path, detector):
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    model, tokenizer = build_tiny_grounding_dino()
    folder = tmp_path / "models" / "grounding"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    GroundingDinoImageProcessorPil(size={"shortest_edge": 224, "longest_edge": 400}).save_pretrained(folder)
    bundle = ModelStore(str(tmp_path / "models")).grounding("cpu")
    assert (bundle.size, bundle.max_size) == (224, 400)
    assert not any(p.requires_grad for p in bundle.model.parameters())
    loaded = GroundingDetector(bundle, size=detector.size, max_size=detector.max_size)
    detector = GroundingDetector(dataclasses.replace(bundle, model=model, tokenizer=tokenizer),
                                 size=detector.size, max_size=detector.max_size)
    phrases = ["zebra base", "lamp shade"]
    caption = loaded.caption(phrases)
    assert torch.equal(caption.input_ids, detector.caption(phrases).input_ids)
    images = random_images(1, 200, 200, seed=5)
    with torch.no_grad():
        for proposals in (True, False):
            expected = detector.phrase_logits(images, caption, proposals=proposals)
            got = loaded.phrase_logits(images, caption, proposals=proposals)
            valid = expected[1] > INVALID_PROPOSAL_LOGIT  # the marker's -1e4 is not the logits' scale
            assert torch.equal(got[1] > INVALID_PROPOSAL_LOGIT, valid)
            assert_close(got[0], expected[0], rel=SAME_MATH, what="boxes")
            assert_close(got[1][valid], expected[1][valid], rel=SAME_MATH, what="logits")


def test_a_tokenizer_with_other_delimiter_ids_is_refused(tmp_path):
    from transformers import BertTokenizer

    model, _ = build_tiny_grounding_dino()
    folder = tmp_path / "grounding"
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "base"])}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    with pytest.raises(ModelFormatError, match="splits phrases"):
        ModelStore(str(folder)).grounding("cpu")


def test_views_are_shown_at_the_models_own_size_and_never_enlarged(detector):
    from engine.api import views_detector

    tiny = detector.bundle  # trained at 256 px
    assert views_detector(tiny, 512).size == tiny.size == 256
    assert views_detector(tiny, 128).size == 128
    real = dataclasses.replace(tiny, size=800)  # Grounding DINO's own 800 px
    assert views_detector(real, 512).size == 512


def test_bfloat16_detection_finds_the_same_best_box_of_each_part(detector):
    """localize.precision=bfloat16 runs the model under autocast: each part's best box in each view
    stays where float32 puts it, with about its score.

    Measured worst differences: on a CPU with native bf16 (AVX512-BF16), box IoU above 0.9 and scores
    within 0.05; on one without (AVX2 only, where bf16 is emulated and ``auto`` keeps float32), the
    tube's box in one view had an edge 4.9 px (1.9% of the view) away, IoU 0.83 for that thin box,
    and its score 0.051 higher. Edges are compared in view pixels, not by IoU, which punishes a thin
    part's box for the same shift."""
    images = lamp_views(4)
    half = GroundingDetector(detector.bundle, bfloat16=True)
    parts = ["base", "tube", "shade"]
    pairs = zip(detector.detect(images, parts, box_threshold=0.0), half.detect(images, parts, box_threshold=0.0),
                strict=True)
    for full, low in pairs:
        assert low.scores.dtype == low.boxes.dtype == torch.float32
        for k in range(len(parts)):
            a, b = full.scores[:, k].argmax(), low.scores[:, k].argmax()
            assert float((full.boxes[a] - low.boxes[b]).abs().max()) < 0.03 * images.shape[-1]
            assert abs(float(full.scores[a, k]) - float(low.scores[b, k])) < 0.08


def test_bfloat16_grounding_loss_keeps_the_direction_of_the_image_gradient(detector):
    from engine.guidance.grounding_loss import GroundingPartLoss

    images = lamp_views(2)
    gradients = []
    for bfloat16 in (False, True):
        loss = GroundingPartLoss(GroundingDetector(detector.bundle, bfloat16=bfloat16), ["base", "shade"],
                                 ["pottery base", "linen shade"], threshold=0.1)
        image = images.clone().requires_grad_(True)
        value = loss(image)
        assert value.dtype == torch.float32 and float(value.detach()) > 0
        value.backward()
        gradients.append(image.grad.flatten())
    assert torch.nn.functional.cosine_similarity(*gradients, dim=0) > 0.98
