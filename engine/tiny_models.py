"""Tiny stand-in models that need no download: small configs, project-generated tokenizers.

They exercise exactly the code paths of the real models (same classes, same preprocessing), fast
enough for tests and offline demos. Their weights are fixed by a seed, so every machine builds
the same model.
"""

from __future__ import annotations

import torch

from .compat import GROUNDING_DELIMITER_IDS

# The words the tiny tokenizer knows as whole tokens; anything else is spelled in byte tokens,
# so no text is ever unknown. Grouped as the prompts of the project use them.
TINY_VOCABULARY: tuple[str, ...] = (
    # colors
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "gold", "silver", "bronze", "copper",
    # materials and patterns
    "wood", "wooden", "oak", "marble", "stone", "brick", "metal", "steel", "glass", "ceramic", "pottery",
    "linen", "cloth", "leather", "velvet", "plastic", "rust", "rusty", "moss", "fur", "glazed", "woven",
    "striped", "checkered", "dotted", "plain", "shiny", "matte", "rough", "smooth", "carved", "painted",
    # objects and parts
    "lamp", "base", "tube", "shade", "chair", "seat", "back", "legs", "leg", "mug", "handle", "body",
    "sphere", "cube", "cone", "cylinder", "torus", "vase", "table", "top", "object",
    # function words
    "a", "an", "the", "of", "with", "made", "and", "3d", "render", "rendering",
)


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2/CLIP): one character per byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def tiny_clip_vocabulary(words: tuple[str, ...] = TINY_VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merge list in which every word of ``words`` is one token.

    Returns ``(vocab, merges)`` as CLIPTokenizer takes them. Merges build each word left to right
    (``r e`` -> ``re``, ``re d</w>`` -> ``red</w>``), so the tokenizer reproduces whole words and
    falls back to single bytes for everything else. Special tokens come last.
    """
    alphabet = byte_level_alphabet()
    vocab: dict[str, int] = {}
    for symbol in alphabet + [a + "</w>" for a in alphabet]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in words:
        pieces = [*list(word[:-1]), word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tiny_clip(
    seed: int = 0,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    projection_dim: int = 64,
):
    """A small randomly initialized ``CLIPModel`` (ViT 224 px / patch 32) and its tokenizer.

    The sizes apply to both towers. Returns ``(model, tokenizer)``; the model is in eval mode.
    The global RNG is left as it was.
    """
    sizes = {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
                 "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads}
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab, merges = tiny_clip_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            **sizes,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**sizes, image_size=224, patch_size=32),
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval(), tokenizer




def tiny_bert_vocabulary(words: tuple[str, ...] = TINY_VOCABULARY) -> dict[str, int]:
    """A WordPiece vocabulary laid out as bert-base-uncased's start, with ``words`` as whole tokens.

    Ids: ``[PAD]`` 0, ``[unused0..98]`` 1-99, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
    ``[MASK]`` 103, ``[unused99..]`` up to 998, then the printable ASCII characters except the
    upper-case letters from 999 (so ``.`` is 1012 and ``?`` is 1029, as in bert-base-uncased), then
    the continuation pieces ``##a``..``##z``, ``##0``..``##9``, then the words. A word the
    vocabulary does not know is split into single letters and ``##`` pieces, so lower-case ASCII
    text never becomes ``[UNK]``.
    """
    vocab: dict[str, int] = {"[PAD]": 0}
    vocab.update({f"[unused{i}]": 1 + i for i in range(99)})
    vocab.update({"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103})
    for i in range(99, 994):
        vocab[f"[unused{i}]"] = len(vocab)
    for code in range(ord("!"), ord("~") + 1):
        if not "A" <= chr(code) <= "Z":
            vocab[chr(code)] = len(vocab)
    for piece in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab["##" + piece] = len(vocab)
    for word in words:
        vocab.setdefault(word, len(vocab))
    assert all(vocab[token] == index for token, index in GROUNDING_DELIMITER_IDS.items())
    return vocab


def build_tiny_grounding_dino(
    seed: int = 0,
    *,
    embed_dim: int = 16,
    depths: tuple[int, int, int, int] = (1, 1, 1, 1),
    text_hidden_size: int = 32,
    text_layers: int = 1,
    d_model: int = 32,
    encoder_layers: int = 1,
    decoder_layers: int = 2,
    ffn_dim: int = 64,
    heads: int = 2,
    num_queries: int = 30,
):
    """A small randomly initialized ``GroundingDinoForObjectDetection`` and its BERT tokenizer.

    Same architecture family as grounding-dino-tiny (Swin backbone with three output stages plus one
    extra level, BERT text encoder, two-stage deformable encoder-decoder), small: by default a few
    layers of width 32 (the sizes are keyword arguments; ``d_model`` must be a multiple of 32 and
    ``decoder_layers`` at least 2). ``two_stage=True``, so the outputs hold the encoder's dense proposals
    (``enc_outputs_class`` [N, S, 256], ``enc_outputs_coord_logits`` [N, S, 4]) beside the decoder's
    ``num_queries`` = 30 queries (``logits`` [N, 30, 256], ``pred_boxes`` [N, 30, 4]). Images need
    at least 30 dense positions (about 96 px and up).

    Returns ``(model, tokenizer)``; the model is in eval mode. The global RNG is left as it was.
    """
    from transformers import BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection

    vocab = tiny_bert_vocabulary()
    # vocab= (a dict) is what builds the WordPiece model; vocab_file= is ignored in transformers 5.
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": embed_dim,
            "depths": list(depths),
            "num_heads": [1, 1, 2, 2] if embed_dim <= 16 else [1, 2, 4, 4],
            "window_size": 4,
            "image_size": 224,
            "out_indices": [2, 3, 4],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(vocab),
            "hidden_size": text_hidden_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "intermediate_size": 2 * text_hidden_size,
            "max_position_embeddings": 256,
            "pad_token_id": vocab["[PAD]"],
        },
        d_model=d_model,  # GroupNorm(32, d_model) in the input projections: a multiple of 32
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,  # the library needs at least 2
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=num_queries,
        max_text_len=256,
        two_stage=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config)
    return model.eval(), tokenizer


def real_size_grounding_config():
    """The architecture of IDEA-Research/grounding-dino-tiny as a ``GroundingDinoConfig`` (no download).

    Swin-T backbone (embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, stages 2-4 out),
    bert-base-uncased text encoder (12 layers, width 768, vocabulary 30522), d_model 256, 6 encoder
    and 6 decoder layers, 900 queries, 256 text tokens, two-stage. These are also the library's
    defaults; they are spelled out so a change of defaults cannot change the benchmark.
    ``GroundingDinoForObjectDetection(real_size_grounding_config())`` has about 172 M parameters.
    """
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "image_size": 224,
            "drop_path_rate": 0.1,
            "out_indices": [2, 3, 4],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
        d_model=256,
        encoder_layers=6,
        decoder_layers=6,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_n_points=4,
        decoder_n_points=4,
        num_feature_levels=4,
        num_queries=900,
        max_text_len=256,
        two_stage=True,
    )


def segmenter_config(
    image_size: int = 1024,
    *,
    embed_dims: tuple[int, int, int, int] = (96, 192, 384, 768),
    blocks: tuple[int, int, int, int] = (1, 2, 7, 2),
    heads: tuple[int, int, int, int] = (1, 2, 4, 8),
    global_blocks: tuple[int, ...] = (5, 7, 9),
    windows: tuple[int, int, int, int] = (8, 4, 14, 7),
    background_window: int = 7,
    hidden_size: int = 256,
    decoder_mlp: int = 2048,
    decoder_heads: int = 8,
    stable_single_mask: bool = True,
):
    """A box-promptable SAM 2 (``Sam2Config``) of the given sizes, built without a download.

    The defaults are the architecture of SAM 2 hiera-tiny (``facebook/sam2-hiera-tiny-hf``: Hiera
    embed 96, blocks 1-2-7-2, 1024 px, FPN and decoder width 256; about 39 M parameters), as the
    benchmark needs it. ``image_size`` is the square input side; the low-resolution masks it gives
    are a quarter of it. ``stable_single_mask=False`` turns off the decoder's fallback from its single
    mask to its multi-mask outputs when the single mask is unstable (the tiny model trains only the
    single mask, so the fallback would pick untrained outputs).
    """
    from transformers import Sam2Config

    return Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": embed_dims[0],
                "embed_dim_per_stage": list(embed_dims),
                "blocks_per_stage": list(blocks),
                "num_attention_heads_per_stage": list(heads),
                "global_attention_blocks": list(global_blocks),
                "window_size_per_stage": list(windows),
                "window_positional_embedding_background_size": [background_window, background_window],
                "image_size": [image_size, image_size],
            },
            "backbone_channel_list": list(reversed(embed_dims)),
            "backbone_feature_sizes": [[image_size // s, image_size // s] for s in (4, 8, 16)],
            "fpn_hidden_size": hidden_size,
        },
        prompt_encoder_config={"hidden_size": hidden_size, "image_size": image_size, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": hidden_size,
            "mlp_dim": decoder_mlp,
            "num_attention_heads": decoder_heads,
            "iou_head_hidden_dim": hidden_size,
            "dynamic_multimask_via_stability": stable_single_mask,
        },
    )


# Sizes of the shipped tiny segmenter (about 1.7 M parameters, 7 MB as float32): 256 px, Hiera 32-64-128-256.
TINY_SEGMENTER_SIZES = {
    "embed_dims": (32, 64, 128, 256),
    "blocks": (1, 1, 3, 1),
    "heads": (1, 1, 2, 4),
    "global_blocks": (3, 4),
    "windows": (8, 4, 8, 4),
    "background_window": 4,
    "hidden_size": 64,
    "decoder_mlp": 256,
    "decoder_heads": 4,
    "stable_single_mask": False,
}


def build_tiny_segmenter(seed: int = 0, image_size: int = 256, **sizes):
    """A small randomly initialized ``Sam2Model`` taking box prompts on ``image_size`` px images.

    ``sizes`` override :data:`TINY_SEGMENTER_SIZES` (see :func:`segmenter_config`). Returns the model
    in eval mode; the global RNG is left as it was.
    """
    from transformers import Sam2Model

    config = segmenter_config(image_size, **{**TINY_SEGMENTER_SIZES, **sizes})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(config)
    return model.eval()
