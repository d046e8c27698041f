"""Reference images: a picture as a part's style target, beside or instead of its words.

CLIP embeds images and text in one space, so a reference image becomes a target exactly as a
phrase does. The target is the average embedding of many augmented crops of the picture (random
resized crops and mirror images), so that it is the picture's look - its colors, its texture - and
not its framing. With words too, the part's target is the normalized mix
``(1 - w) * text + w * image`` (``guidance.image_weight`` = w).

A :class:`ReferenceImage` is identified by the hash of its pixels (not its path): the run record
names the picture that was used, wherever it was read from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError, PromptError

#: What a reference may be read from (Pillow's readers for these).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".tga")
#: The key that gives the whole object (the prompt as a whole) a reference.
WHOLE = "whole"


@dataclass(frozen=True, eq=False)
class ReferenceImage:
    """A reference picture, sRGB.

    Attributes:
        pixels: [H, W, 3] float32 sRGB in 0..1, rows first (top row first).
        source: where it came from: a file path, ``"array"`` or ``"PIL image"``.
        sha256: the hash of its 8-bit pixels and their shape: the same picture gives the same hash
            from a file or from memory.
    """

    pixels: np.ndarray
    source: str
    sha256: str

    def record(self) -> dict[str, object]:
        """What a run record keeps of it."""
        height, width = self.pixels.shape[:2]
        return {"sha256": self.sha256, "source": self.source, "size": [width, height]}


def image_options(values) -> tuple[tuple[str, str], ...]:
    """Command-line ``--image PART=FILE`` values -> ``((part, path), ...)`` for ``StyleRequest(images=...)``.

    Raises :class:`PromptError` for a value that is not ``PART=FILE``.
    """
    pairs = []
    for value in values:
        part, sep, path = value.partition("=")
        if not sep or not part.strip() or not path.strip():
            raise PromptError(f"--image {value!r}: write PART=FILE (e.g. --image shade=linen.jpg, or {WHOLE}=FILE "
                              "for the whole object)")
        pairs.append((part.strip(), path.strip()))
    return tuple(pairs)


def load_reference(value, *, what: str = "the reference image") -> ReferenceImage:
    """A :class:`ReferenceImage` from a file path, a PIL image or an array.

    Arrays are [H, W, 3|4] (alpha dropped) or [H, W] gray, uint8 0..255 or float 0..1 sRGB.
    Raises :class:`InputError` naming ``what``, the problem and the fix: a missing or unreadable
    file, an unsupported format, an empty or wrongly shaped array.
    """
    if isinstance(value, ReferenceImage):
        return value
    if isinstance(value, (str, os.PathLike)):
        return _from_file(os.fspath(value), what)
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return _from_array(np.asarray(value.convert("RGB")), "PIL image", what)
    if isinstance(value, np.ndarray):
        return _from_array(value, "array", what)
    raise InputError(f"{what}: a {type(value).__name__} is not an image; give a file path, a PIL image or an "
                     f"[H, W, 3] array")


def _from_file(path: str, what: str) -> ReferenceImage:
    if not os.path.isfile(path):
        raise InputError(f"{what}: '{path}' does not exist; check the path (relative paths start from the "
                         f"current folder)")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{what}: '{path}' is not a supported image ({suffix or 'no extension'}); use "
                         f"{', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{what}: '{path}' could not be read as an image ({exc}); re-save it as PNG or "
                         f"JPEG") from None
    return _from_array(rgb, os.path.abspath(path), what)


def _from_array(array: np.ndarray, source: str, what: str) -> ReferenceImage:
    values = np.asarray(array)
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    if values.ndim != 3 or values.shape[2] not in (3, 4) or min(values.shape[:2]) < 1:
        raise InputError(f"{what}: an array of shape {values.shape} is not an image; give [H, W, 3] RGB")
    values = values[:, :, :3]
    if values.dtype == np.uint8:
        pixels = values.astype(np.float32) / 255.0
    elif np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InputError(f"{what}: the array holds NaN or infinite values")
        pixels = np.clip(values, 0.0, 1.0).astype(np.float32)
    else:
        raise InputError(f"{what}: pixels of type {values.dtype} are not understood; give uint8 0..255 or "
                         f"float 0..1")
    quantized = np.round(pixels * 255.0).astype(np.uint8)
    digest = hashlib.sha256(repr(quantized.shape).encode() + np.ascontiguousarray(quantized).tobytes())
    return ReferenceImage(np.ascontiguousarray(pixels), source, digest.hexdigest())


def augmented_views(pixels: np.ndarray, *, count: int, size: int, seed: int):
    """[count, 3, size, size] float32 crops of ``pixels`` ([H, W, 3], 0..1): the whole picture
    first, then random resized crops (20-100% of the area, aspect 3:4 to 4:3), half of them mirrored."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    height, width = pixels.shape[:2]
    generator = torch.Generator().manual_seed(seed)
    crops = [F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)]
    for _ in range(max(0, count - 1)):
        area = float(torch.empty(()).uniform_(0.2, 1.0, generator=generator)) * height * width
        aspect = float(torch.exp(torch.empty(()).uniform_(np.log(3 / 4), np.log(4 / 3), generator=generator)))
        h = round(min(height, max(1.0, (area / aspect) ** 0.5)))
        w = round(min(width, max(1.0, (area * aspect) ** 0.5)))
        top = int(torch.randint(0, height - h + 1, (), generator=generator))
        left = int(torch.randint(0, width - w + 1, (), generator=generator))
        crop = image[:, :, top:top + h, left:left + w]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(crops)


def mix_targets(text, image, weight: float):
    """The unit-norm target ``normalize((1 - weight) * text + weight * image)``; [D] or [P, D]."""
    import torch.nn.functional as F

    return F.normalize((1.0 - weight) * text + weight * image, dim=-1)
