"""What a run's models take in memory, read from their folders without loading them (no torch).

A model's weights take the size of its safetensors files (the engine keeps weights in the precision
they are stored in: float32 for every model it ships or names). What a guidance model holds for the
backward grows with its input and its depth; :class:`ModelFootprint` keeps the two per-input figures
the memory estimate (``engine/memory.py``) needs, derived from the folder's ``config.json`` with
constants measured on the real-size architectures (docs/performance.md, "Memory"):

- CLIP: bytes per image = :data:`CLIP_BYTES_PER_UNIT` x layers x tokens x width of the vision tower;
- Grounding DINO: bytes per input pixel = :data:`GROUNDING_BYTES_PER_UNIT` x encoder layers x
  (model width + feed-forward width), at the model's own input size (its processor's shortest edge).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

#: The project's tiny models, one folder per role (``clip``, ``grounding``, ``segmenter``).
TINY_MODELS_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny")
#: Bytes CLIP holds for the backward per (layer x token x width) of one image (about 13 floats),
#: measured on ViT-B/32 with ``text2mesh``'s 45 images a step at 224 px, float32 (docs/performance.md,
#: "Memory"), with its augmentations.
CLIP_BYTES_PER_UNIT = 52
#: Bytes Grounding DINO holds for the backward per input pixel and per (encoder layer x (width +
#: feed-forward width)), measured on Grounding DINO tiny (1 and 3 views at 512 px, two captions, float32).
GROUNDING_BYTES_PER_UNIT = 0.42
#: The parts of a Grounding DINO (``GroundingDinoForObjectDetection``'s parameter names) every
#: grounding step's forward runs: the image backbone, the fusion encoder and the dense proposals'
#: heads (the text backbone runs once a run, ``grounding/proposals.py``; the decoder only to locate).
GROUNDING_IMAGE_PATH = ("model.backbone.", "model.encoder.", "model.encoder_output_", "model.enc_output")


@dataclass(frozen=True)
class ModelFootprint:
    """Memory figures of one model source, bytes.

    Attributes:
        weights: per role (``clip``, ``grounding``, ``segmenter``), the weights' size.
        clip_image: what CLIP holds for the backward per image of a step.
        grounding_pixel: what Grounding DINO holds for the backward per pixel of its input.
        grounding_side: the shortest edge, in pixels, Grounding DINO's input is resized to (views are
            never enlarged: a smaller render is shown at its own size).
        clip_bf16_copies: what the bf16 copies of the weights of CLIP's vision tower and projection
            take on a GPU (``model_kernels.LinearWithBfloat16Copy``): 2 bytes a weight of their linear layers.
        grounding_bf16_copies: the same for Grounding DINO's :data:`GROUNDING_IMAGE_PATH`.
    """

    weights: dict[str, int]
    clip_image: float
    grounding_pixel: float
    grounding_side: int
    clip_bf16_copies: int
    grounding_bf16_copies: int


#: The real models' (``default``: CLIP ViT-B/32, Grounding DINO tiny, SAM 2 hiera-tiny) figures, from
#: their configs and their float32 weights' files (as ``bench --runs`` saves the same architectures).
REAL_MODELS = ModelFootprint(
    weights={"clip": 605_156_676, "grounding": 689_133_016, "segmenter": 125_802_132},
    clip_image=CLIP_BYTES_PER_UNIT * 12 * 50 * 768,
    grounding_pixel=GROUNDING_BYTES_PER_UNIT * 6 * (256 + 2048),
    grounding_side=800,
    clip_bf16_copies=2 * 85_410_816,
    grounding_bf16_copies=2 * 49_549_124,
)


def model_footprint(source: str) -> ModelFootprint:
    """The footprint of a model source (``tiny``, ``default`` or a folder, as ``ModelStore`` takes
    it). ``default`` gives :data:`REAL_MODELS`; a role whose folder cannot be read keeps its
    :data:`REAL_MODELS` figures (the estimate errs towards the larger models)."""
    if source == "default":
        return REAL_MODELS
    root = TINY_MODELS_FOLDER if source == "tiny" else os.path.abspath(source)
    folders = {role: role_folder(root, role) for role in REAL_MODELS.weights}
    weights = {role: _weights_bytes(folder) or REAL_MODELS.weights[role] for role, folder in folders.items()}
    clip = _config(folders["clip"]).get("vision_config")
    grounding = _config(folders["grounding"])
    clip_image, grounding_pixel, side = REAL_MODELS.clip_image, REAL_MODELS.grounding_pixel, REAL_MODELS.grounding_side
    copies = REAL_MODELS.clip_bf16_copies
    if isinstance(clip, dict):
        tokens = (clip.get("image_size", 224) // clip.get("patch_size", 32)) ** 2 + 1
        clip_image = CLIP_BYTES_PER_UNIT * clip.get("num_hidden_layers", 12) * tokens * clip.get("hidden_size", 768)
        copies = 2 * _vision_linear_weights(clip, _config(folders["clip"]).get("projection_dim", 512))
    if grounding:
        widths = grounding.get("d_model", 256) + grounding.get("encoder_ffn_dim", 2048)
        grounding_pixel = GROUNDING_BYTES_PER_UNIT * grounding.get("encoder_layers", 6) * widths
        side = int((_config(folders["grounding"], "preprocessor_config.json").get("size") or {}).get(
            "shortest_edge", side))
    linear = _linear_weights(folders["grounding"], GROUNDING_IMAGE_PATH)
    grounding_copies = 2 * linear if linear else REAL_MODELS.grounding_bf16_copies
    return ModelFootprint(weights, clip_image, grounding_pixel, side, copies, grounding_copies)


def _linear_weights(folder: str | None, prefixes: tuple[str, ...]) -> int:
    """The weights and biases of the linear layers under ``prefixes``, read from the headers of the
    folder's safetensors files (no weights loaded): every 2-D ``.weight`` there and the ``.bias``
    beside it (0 where no file can be read). Under :data:`GROUNDING_IMAGE_PATH` every 2-D weight is
    a linear layer's (tests/test_memory.py checks it on the real-size architecture)."""
    shapes: dict[str, list[int]] = {}
    for path in _safetensors_files(folder):
        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return 0
        shapes.update({name: entry.get("shape", []) for name, entry in header.items()
                       if name != "__metadata__" and name.startswith(prefixes)})
    count = 0
    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 2:
            bias = shapes.get(name[: -len("weight")] + "bias", [])
            count += shape[0] * shape[1] + (bias[0] if len(bias) == 1 else 0)
    return count


def _vision_linear_weights(vision: dict, projection: int) -> int:
    """The weights and biases of a CLIP vision tower's linear layers (per layer: the attention's four
    width x width products, the MLP's two with its hidden width) and of its projection (no bias)."""
    width, hidden = vision.get("hidden_size", 768), vision.get("intermediate_size", 3072)
    per_layer = 4 * (width * width + width) + 2 * width * hidden + hidden + width
    return vision.get("num_hidden_layers", 12) * per_layer + width * projection


def role_folder(root: str, role: str) -> str | None:
    """The folder of ``role`` under ``root`` (or ``root`` itself when it is one model's folder): where
    the model store loads it from; None when there is none."""
    for candidate in (os.path.join(root, role), root):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    return None


def _weights_bytes(folder: str | None) -> int:
    """Total size of the folder's safetensors files (0 when none)."""
    return sum(os.path.getsize(path) for path in _safetensors_files(folder))


def _safetensors_files(folder: str | None) -> list[str]:
    """The paths of the folder's safetensors files (none when there is no folder)."""
    if folder is None:
        return []
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".safetensors")]


def _config(folder: str | None, name: str = "config.json") -> dict:
    """The folder's JSON file ``name`` as a dict ({} where it is missing or unreadable)."""
    if folder is None:
        return {}
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
