"""Grounding DINO on rendered images (METHOD section 5): captions, preprocessing, phrase scores.

A caption is the part names joined as ``base . tube . shade .``. The model gives every text
token a logit per image region; a phrase's value for a region is the mean over the phrase's
tokens, whose positions (token spans) come from the tokenizer's offset mapping.

Two kinds of regions:
- the encoder's dense proposals (two-stage): one per feature-map position over all levels, at fixed
  image positions (GLIP's anchors in all but name); used with gradient for the part-level style
  loss. They are computed without the decoder, and one image pass can serve several captions
  (:meth:`GroundingDetector.encode_images`, ``proposals.py``).
- the decoder's queries: the ``num_queries`` best proposals refined by the decoder; they depend on
  the caption; used without gradient for detection (localization of the parts).

Images are resized and normalized inside torch (as ``GroundingDinoImageProcessor`` does), so
gradients reach the rendered image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..devices import bfloat16_autocast
from ..errors import PromptError
from ..models import GroundingBundle
from .proposals import ImageEncoding, ImageLayout, TextEncoding, encode_images, encode_text, encoder_proposals

# Logit given to dense proposals the library itself marks invalid (on padding, or centred within 1 %
# of the image border: their coordinate logits are +inf). Finite, so sums and products stay finite;
# its sigmoid is 0, so such a proposal is never selected.
INVALID_PROPOSAL_LOGIT = -1.0e4
# Characters at which the model splits a caption into phrases (its delimiter tokens).
_DELIMITERS = (".", "?")


@dataclass(frozen=True, eq=False)
class Caption:
    """A tokenized caption and where each phrase lies in it.

    Attributes:
        text: the caption, phrases joined as ``"base . tube . shade ."``.
        token_spans: per phrase, ``(start, end)``: the phrase's tokens are ``input_ids[0, start:end]``.
        input_ids: [1, T] token ids, ``[CLS]`` first and ``[SEP]`` last.
        attention_mask: [1, T] ones.
        phrases: the phrases as they appear in ``text`` (lower case, single spaces).
    """

    text: str
    token_spans: tuple[tuple[int, int], ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    phrases: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Detections:
    """The detections of one image.

    Attributes:
        boxes: [M, 4] ``(x0, y0, x1, y1)`` in pixels of the input image, clipped to it.
        scores: [M, P] per phrase: mean sigmoid over the phrase's tokens, in 0..1. Rows are sorted
            by their best score, highest first.
        phrases: the P phrases, in the order of the score columns.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    phrases: tuple[str, ...]

    def select(self, phrase: int, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The boxes [K, 4] and scores [K] of phrase number ``phrase`` where its score is above ``threshold``."""
        keep = self.scores[:, phrase] > threshold
        return self.boxes[keep], self.scores[keep, phrase]


def build_caption(tokenizer, phrases: list[str]) -> Caption:
    """Join ``phrases`` into a caption and find each phrase's tokens.

    Phrases are lower-cased (as the library's processor does) and their whitespace collapsed. The
    token spans come from the tokenizer's offset mapping: a phrase's tokens are those whose
    characters lie inside the phrase, so words the vocabulary splits into pieces are covered whole.

    Raises:
        PromptError: no phrases, an empty phrase, a phrase holding ``.`` or ``?`` (the model would
            split it in two), or a phrase that gives no tokens.
    """
    if isinstance(phrases, str):
        phrases = [phrases]
    cleaned = [" ".join(str(p).split()).lower() for p in phrases]
    if not cleaned:
        raise PromptError("no phrases to ground: give at least one part name.")
    for original, phrase in zip(phrases, cleaned, strict=True):
        if not phrase:
            raise PromptError("an empty phrase cannot be grounded; remove it or give it a name.")
        bad = [d for d in _DELIMITERS if d in phrase]
        if bad:
            raise PromptError(
                f"the phrase {original!r} contains {' and '.join(repr(b) for b in bad)}, which the grounding model "
                "reads as the end of a phrase; remove it from the phrase."
            )
    char_spans = []
    text = ""
    for phrase in cleaned:
        char_spans.append((len(text), len(text) + len(phrase)))
        text += phrase + " . "
    text = text.rstrip()

    encoding = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding["offset_mapping"][0].tolist()
    token_spans = []
    for phrase, (c0, c1) in zip(cleaned, char_spans, strict=True):
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= c0 and e <= c1]
        if not inside:
            raise PromptError(f"the phrase {phrase!r} gives no tokens; use letters or digits in part names.")
        start, end = inside[0], inside[-1] + 1
        if inside != list(range(start, end)):  # cannot happen with a WordPiece tokenizer
            raise PromptError(f"the tokens of the phrase {phrase!r} are not contiguous in the caption.")
        token_spans.append((start, end))
    return Caption(
        text=text,
        token_spans=tuple(token_spans),
        input_ids=encoding["input_ids"],
        attention_mask=encoding["attention_mask"],
        phrases=tuple(cleaned),
    )


def resized_shape(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """The processor's output size: shortest edge ``size``, longest at most ``max_size``, aspect kept.

    The same rule as transformers' ``get_size_with_aspect_ratio``: when the longest edge would pass
    ``max_size``, the shortest edge becomes ``round(max_size * short / long)``; the other edge is
    floored; an image whose shortest edge already has the target length is not resized.
    """
    target = size
    raw = None
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            raw = max_size * short / long
            target = round(raw)
    if (height <= width and height == target) or (width <= height and width == target):
        return height, width
    scale = raw if raw is not None else target
    if width < height:
        return int(scale * height / width), target
    return target, int(scale * width / height)


def span_mean(token_values: torch.Tensor, spans: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[..., T'] per-token values -> [..., P]: the mean over each span ``[start, end)``.

    Only the first ``max(end)`` positions are read, so padded positions (-inf in the model's
    logits) never enter the mean.
    """
    length = max(end for _, end in spans)
    weights = torch.zeros(length, len(spans), dtype=token_values.dtype, device=token_values.device)
    for p, (start, end) in enumerate(spans):
        weights[start:end, p] = 1.0 / (end - start)
    return token_values[..., :length] @ weights


class GroundingDetector:
    """Grounds phrases in images with a frozen Grounding DINO.

    ``size`` / ``max_size`` override the bundle's resize rule (shortest edge / longest-edge cap);
    a smaller ``size`` is faster and coarser. ``bfloat16`` runs the model under bf16 autocast
    (its outputs are returned as float32).
    """

    def __init__(self, bundle: GroundingBundle, *, size: int | None = None, max_size: int | None = None,
                 bfloat16: bool = False):
        self.bundle = bundle
        self.bfloat16 = bfloat16
        self.model = bundle.model
        self.tokenizer = bundle.tokenizer
        self.size = int(size if size is not None else bundle.size)
        self.max_size = int(max_size if max_size is not None else bundle.max_size)
        self.max_text_len = int(self.model.config.max_text_len)
        # batch shape [N, 3, h, w] -> the ImageLayout of such a batch (proposals.py): a frozen model's
        # grounding steps encode images of one shape each time, and their layout does not change
        self._layouts: dict[tuple[int, ...], ImageLayout] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def caption(self, phrases: list[str]) -> Caption:
        """:func:`build_caption` with this model's tokenizer."""
        return build_caption(self.tokenizer, phrases)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] RGB in 0..1 -> (pixel_values [N, 3, h, w], pixel_mask [N, h, w]), differentiable.

        Matches ``GroundingDinoImageProcessor``: bilinear resize with antialiasing (PIL's BILINEAR
        filter) to :func:`resized_shape`, then ImageNet normalization. All images of a batch share
        one size, so nothing is padded and ``pixel_mask`` is all ones (int64, as the processor's).
        """
        _check_images(images)
        n, _, height, width = images.shape
        h, w = resized_shape(height, width, self.size, self.max_size)
        if (h, w) != (height, width):
            images = F.interpolate(images, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.as_tensor(self.bundle.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.bundle.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        pixel_values = (images - mean) / std
        pixel_mask = torch.ones(n, h, w, dtype=torch.int64, device=images.device)
        return pixel_values, pixel_mask

    def encode_images(self, images: torch.Tensor) -> ImageEncoding:
        """The caption-independent half of a forward over ``images`` [N, 3, H, W] (RGB in 0..1, on the
        model's device), differentiable; pass it to :meth:`phrase_logits` / :meth:`phrase_scores` in
        place of the images to score them under several captions with one backbone pass."""
        pixel_values, pixel_mask = self._model_inputs(images)
        batch_shape = tuple(pixel_values.shape)
        # frozen: the layout is the same each time; a model that takes gradients could change its level embeddings
        frozen = not any(parameter.requires_grad for parameter in self.model.parameters())
        with bfloat16_autocast(self.device, self.bfloat16):
            encoding = encode_images(self.model.model, pixel_values, pixel_mask,
                                     self._layouts.get(batch_shape) if frozen else None)
        if frozen:
            self._layouts.setdefault(batch_shape, encoding.layout)
        return encoding

    def _model_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`preprocess`, with the pixel values in the model's parameter dtype."""
        pixel_values, pixel_mask = self.preprocess(images)
        return pixel_values.to(next(self.model.parameters()).dtype), pixel_mask

    def _caption_inputs(self, caption: Caption, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption's ``input_ids`` and ``attention_mask`` [n, T], on the model's device."""
        self._check_length(caption)
        return caption.input_ids.to(self.device).expand(n, -1), caption.attention_mask.to(self.device).expand(n, -1)

    def _check_length(self, caption: Caption) -> None:
        length = caption.input_ids.shape[-1]
        if length > self.max_text_len:
            raise PromptError(
                f"the caption has {length} tokens but the grounding model reads at most {self.max_text_len}; "
                "use fewer or shorter part names."
            )

    @torch.no_grad()
    def encode_caption(self, caption: Caption, images: int) -> TextEncoding:
        """The caption half of a dense-proposals forward over ``images`` images (no gradient: it does
        not depend on the images). The same for every call with this caption, so a caller that scores
        one caption many times (the grounding loss, every grounding step of a run) computes it once
        and hands it to :meth:`phrase_scores` / :meth:`phrase_logits` as ``text``."""
        input_ids, attention_mask = self._caption_inputs(caption, images)
        with bfloat16_autocast(self.device, self.bfloat16):
            return encode_text(self.model.model, input_ids, attention_mask)

    def _run(
        self, source: torch.Tensor | ImageEncoding, caption: Caption, proposals: bool, text: TextEncoding | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes [N, Q, 4] (cx, cy, w, h in 0..1), token logits [N, Q, L], valid regions [N, Q] bool."""
        self._check_length(caption)
        if proposals:
            return self._proposals(source, caption, text)
        if text is not None:
            raise ValueError("a precomputed caption encoding serves the dense proposals only (proposals=True)")
        if isinstance(source, ImageEncoding):
            raise ValueError("the decoder's queries need the images, not an ImageEncoding (proposals=True reads one)")
        pixel_values, pixel_mask = self._model_inputs(source)
        input_ids, attention_mask = self._caption_inputs(caption, source.shape[0])
        with bfloat16_autocast(self.device, self.bfloat16):
            outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                                 attention_mask=attention_mask, return_dict=True)
        boxes = outputs.pred_boxes.float()
        return boxes, outputs.logits.float(), torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)

    def _proposals(
        self, source: torch.Tensor | ImageEncoding, caption: Caption, text: TextEncoding | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_run` for the encoder's dense proposals: the library's forward up to them, no decoder."""
        if not self.model.config.two_stage:
            raise ValueError("this Grounding DINO has two_stage=False: it gives no dense proposals.")
        encoding = source if isinstance(source, ImageEncoding) else self.encode_images(source)
        images = encoding.features.shape[0]
        if text is None:
            text = self.encode_caption(caption, images)
        elif text.images != images:
            raise ValueError(f"the caption was encoded for {text.images} images, not {images}; "
                             "encode it again with encode_caption(caption, images)")
        with bfloat16_autocast(self.device, self.bfloat16):
            coord_logits, token_logits = encoder_proposals(self.model.model, encoding, text)
        coord_logits = coord_logits.float()
        valid = torch.isfinite(coord_logits).all(-1)
        boxes = torch.where(valid[..., None], coord_logits.sigmoid(), 0.0)
        return boxes, token_logits.float(), valid

    def phrase_logits(
        self, images: torch.Tensor | ImageEncoding, caption: Caption, *, proposals: bool = True,
        text: TextEncoding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes and per-phrase raw logits of every region, differentiable w.r.t. ``images``.

        Args:
            images: [N, 3, H, W] RGB in 0..1, on the model's device; or, for proposals, their
                :meth:`encode_images` (several captions, one backbone pass).
            caption: from :meth:`caption` / :func:`build_caption`.
            proposals: True: the encoder's dense proposals (``enc_outputs_class`` /
                ``enc_outputs_coord_logits``; Q = sum over the 4 feature levels of h_l * w_l),
                computed without the decoder (``proposals.py``).
                False: the decoder's queries (``logits`` / ``pred_boxes``; Q = ``num_queries``).
            text: for proposals, ``caption``'s :meth:`encode_caption` for these N images, computed
                once by a caller that scores the same caption again and again (None: computed here).

        Returns:
            boxes: [N, Q, 4] ``(cx, cy, w, h)`` normalized to 0..1 of the image.
            logits: [N, Q, P] per phrase: the mean of the raw token logits over its token span.
            Proposals the library marks invalid get zero boxes and :data:`INVALID_PROPOSAL_LOGIT`.
        """
        boxes, token_logits, valid = self._run(images, caption, proposals, text)
        logits = span_mean(token_logits, caption.token_spans)
        logits = torch.where(valid[..., None], logits, INVALID_PROPOSAL_LOGIT)
        return boxes, logits

    def phrase_scores(
        self, images: torch.Tensor | ImageEncoding, caption: Caption, *, proposals: bool = True,
        text: TextEncoding | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`phrase_logits`, with scores [N, Q, P] = mean sigmoid over each phrase's tokens (0..1).

        METHOD's phrase score. Invalid proposals score 0. Differentiable, but a saturated sigmoid
        passes (almost) no gradient.
        """
        boxes, token_logits, valid = self._run(images, caption, proposals, text)
        scores = span_mean(token_logits.sigmoid(), caption.token_spans)
        return boxes, scores * valid[..., None].to(scores.dtype)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, phrases: list[str], *, box_threshold: float = 0.25) -> list[Detections]:
        """Detect ``phrases`` in each image with the decoder's queries (no gradient).

        Keeps the queries whose best phrase score is above ``box_threshold``.

        Args:
            images: [N, 3, H, W] RGB in 0..1, on the model's device.

        Returns:
            per image, :class:`Detections` with boxes [M, 4] in pixels of the H x W input and
            scores [M, P].
        """
        caption = self.caption(phrases)
        boxes, scores = self.phrase_scores(images, caption, proposals=False)
        height, width = images.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        limit = scale.clone()
        cx, cy, w, h = boxes.unbind(-1)
        corners = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * scale
        corners = torch.minimum(corners.clamp(min=0), limit)
        results = []
        for image_boxes, image_scores in zip(corners, scores, strict=True):
            best = image_scores.max(-1).values
            keep = torch.nonzero(best > box_threshold).flatten()
            order = torch.argsort(best[keep], descending=True, stable=True)
            keep = keep[order]
            results.append(Detections(image_boxes[keep], image_scores[keep], caption.phrases))
        return results


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images [N, 3, H, W] RGB in 0..1, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected floating-point images in 0..1, got {images.dtype}")
