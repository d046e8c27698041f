"""Training the tiny CLIP on synthetic renders, evaluating it, and saving it as safetensors.

The loss is CLIP's symmetric contrastive loss, adapted to batches in which several images share a
caption (two views of a scene): image -> text is a cross-entropy over the batch's distinct
captions, text -> image averages the log-probability of all the caption's images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..guidance.preprocess import normalize
from ..models import CLIP_MEAN, CLIP_STD
from .loop import train_loop
from .synthetic import Scene, SyntheticBatches, pattern_colors, scene_mesh
from .vocabulary import COLORS, PART_OBJECTS, PRIMITIVES

# Architecture of the shipped tiny CLIP (small enough for CPUs, large enough for the vocabulary).
TRAINED_CLIP_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "projection_dim": 128,
}
EVAL_SEED = 10_000  # held-out scenes come from a seed range training never uses
BATCH_SIZE = 64  # images per training step


@dataclass(frozen=True)
class ClipTrainReport:
    steps: int
    seconds: float
    final_loss: float
    color_accuracy: float


def contrastive_loss(
    image_embeddings: torch.Tensor, captions: list[str], encode_text: Callable, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss with shared captions. image_embeddings: [B, D] unit norm."""
    unique = sorted(set(captions))
    target = torch.tensor([unique.index(c) for c in captions])
    text = encode_text(unique)  # [U, D] unit norm
    logits = scale * image_embeddings @ text.T  # [B, U]
    image_to_text = F.cross_entropy(logits, target)
    log_prob = logits.T.log_softmax(dim=1)  # [U, B]: each caption over the images
    positive = F.one_hot(target, len(unique)).T.float()  # [U, B]
    text_to_image = -((log_prob * positive).sum(1) / positive.sum(1)).mean()
    return (image_to_text + text_to_image) / 2.0


def embed_images(model, images: torch.Tensor) -> torch.Tensor:
    features = model.get_image_features(pixel_values=normalize(images, CLIP_MEAN, CLIP_STD))
    return F.normalize(features if torch.is_tensor(features) else features.pooler_output, dim=-1)


def embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    features = model.get_text_features(**tokens)
    return F.normalize(features if torch.is_tensor(features) else features.pooler_output, dim=-1)


def train_tiny_clip(
    *,
    seed: int = 0,
    minutes: float = 30.0,
    max_steps: int = 100_000,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = 1e-3,
    on_progress: Callable[[int, float, float], None] | None = None,
):
    """Train a tiny CLIP from scratch for ``minutes`` (or ``max_steps``). Returns (model, tokenizer, steps, loss)."""
    from ..tiny_models import build_tiny_clip

    model, tokenizer = build_tiny_clip(seed=seed, **TRAINED_CLIP_SIZES)
    model.train()
    data = SyntheticBatches(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)

    def batch_loss() -> torch.Tensor:
        images, captions = data.batch(batch_size)
        return contrastive_loss(
            embed_images(model, images),
            captions,
            lambda texts: embed_texts(model, tokenizer, texts),
            model.logit_scale.exp().clamp(max=100),
        )

    steps, loss = train_loop(
        model,
        optimizer,
        batch_loss,
        learning_rate=learning_rate,
        max_steps=max_steps,
        minutes=minutes,
        warmup=50,
        smoothing=0.95,
        on_progress=on_progress,
    )
    return model.eval(), tokenizer, steps, loss


@torch.no_grad()
def color_accuracy(model, tokenizer, *, scenes: int = 200, seed: int = EVAL_SEED) -> float:
    """Zero-shot top-1 accuracy of naming the color of held-out plain single-color objects.

    Each scene: a random object in one vocabulary color, one random view; the prediction is the
    color whose ``a {color} {object}`` caption scores highest.
    """
    generator = torch.Generator().manual_seed(seed)
    data = SyntheticBatches(seed, views_per_scene=1, part_crop_share=0.0)
    names = PART_OBJECTS + PRIMITIVES
    color_names = list(COLORS)
    correct = 0
    for _ in range(scenes):
        mesh = scene_mesh(names[int(torch.randint(len(names), (1,), generator=generator))])
        truth = color_names[int(torch.randint(len(color_names), (1,), generator=generator))]
        colors = pattern_colors(mesh.vertices, "plain", torch.tensor(COLORS[truth]), generator)
        images, _ = data.scene_images(Scene(mesh, colors, "", ()))
        text = embed_texts(model, tokenizer, [f"a {c} {mesh.name}" for c in color_names])
        scores = embed_images(model, images) @ text.T
        correct += int(color_names[int(scores[0].argmax())] == truth)
    return correct / scenes


def save_clip(model, tokenizer, folder: str) -> None:
    """Write the model (safetensors + config) and tokenizer files into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
