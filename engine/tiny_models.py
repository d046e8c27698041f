"""Tiny stand-in models that need no download: small configs, project-generated tokenizers.

They exercise exactly the code paths of the real models (same classes, same preprocessing), fast
enough for tests and offline demos. Their weights are fixed by a seed, so every machine builds
the same model.
"""

from __future__ import annotations

import torch

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
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tiny_clip(seed: int = 0):
    """A small randomly initialized ``CLIPModel`` (ViT 224 px / patch 32) and its tokenizer.

    Returns ``(model, tokenizer)``; the model is in eval mode. The global RNG is left as it was.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab, merges = tiny_clip_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32
        ),
        projection_dim=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval(), tokenizer
