"""Map images: padding past UV island borders, the tangent-space normal map of a height map, and
the PNG encodings the files use (8-bit sRGB color, 8-bit normals, 16-bit signed displacement)."""

from __future__ import annotations

import io

import numpy as np

# A 16-bit displacement PNG: pixel = DISPLACEMENT_ZERO + displacement / units_per_step.
DISPLACEMENT_ZERO = 32768
_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]


def padding_sources(covered: np.ndarray, texels: int) -> np.ndarray:
    """[S, S] int64: for each texel within ``texels`` rings (8-neighbourhood) of a ``covered`` one, the
    flat index of the covered texel it copies (itself where covered), -1 beyond. Each ring copies a
    neighbour of the previous one, so a padded texel repeats its island's nearest border texel."""
    size_r, size_c = covered.shape
    source = np.where(covered, np.arange(covered.size).reshape(covered.shape), -1)
    for _ in range(texels):
        padded = np.pad(source, 1, constant_values=-1)
        grown = source.copy()
        for dr, dc in _NEIGHBOURS:  # a fixed order: the same map every time
            neighbour = padded[1 + dr:1 + dr + size_r, 1 + dc:1 + dc + size_c]
            take = (grown < 0) & (neighbour >= 0)
            grown[take] = neighbour[take]
        if np.array_equal(grown, source):
            break
        source = grown
    return source


def pad_islands(image: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``image`` [S, S, ...] with the texels past the islands filled from :func:`padding_sources`
    (so mipmaps and bilinear lookups near an island's border read the island, not the background)."""
    flat = image.reshape(sources.size, *image.shape[2:])
    out = flat.copy()
    fill = sources.reshape(-1) >= 0
    out[fill] = flat[sources.reshape(-1)[fill]]
    return out.reshape(image.shape)


def tangent_normals(height: np.ndarray, covered: np.ndarray, tangent_length: np.ndarray,
                    bitangent_length: np.ndarray) -> np.ndarray:
    """The tangent-space unit normals [S, S, 3] of a surface raised by ``height`` [S, S] (object units)
    along its normal; OpenGL convention: x along +u, y along +v (v up), z out of the surface.

    ``tangent_length`` / ``bitangent_length`` [S, S]: object units per UV unit along u and v at each
    texel (``|dP/du|``, ``|dP/dv|``). Slopes use central differences where both neighbours are
    covered, one-sided ones where one is, and 0 where none is (a flat normal).
    """
    size = height.shape[0]
    step = 1.0 / size  # UV units between texel centres
    du = _slope(height, covered, axis=1) / step  # columns grow with u
    dv = -_slope(height, covered, axis=0) / step  # rows grow downward, v upward
    x = -du / np.maximum(tangent_length, 1e-12)
    y = -dv / np.maximum(bitangent_length, 1e-12)
    normal = np.stack([x, y, np.ones_like(x)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[~covered] = (0.0, 0.0, 1.0)
    return normal.astype(np.float32)


def _slope(values: np.ndarray, covered: np.ndarray, axis: int) -> np.ndarray:
    """d values / d index along ``axis`` (per texel step), from covered neighbours only."""
    ahead, behind = np.roll(values, -1, axis), np.roll(values, 1, axis)
    has_ahead, has_behind = np.roll(covered, -1, axis), np.roll(covered, 1, axis)
    last = [slice(None)] * 2
    last[axis] = -1
    has_ahead[tuple(last)] = False  # no wrapping around the map's edge
    first = [slice(None)] * 2
    first[axis] = 0
    has_behind[tuple(first)] = False
    central = (ahead - behind) / 2.0
    forward, backward = ahead - values, values - behind
    return np.where(has_ahead & has_behind, central,
                    np.where(has_ahead, forward, np.where(has_behind, backward, 0.0))) * covered


def png_rgb8(image: np.ndarray) -> bytes:
    """[S, S, 3] values in 0..1 -> an 8-bit RGB PNG."""
    from PIL import Image

    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return _png(Image.fromarray(pixels, "RGB"))


def png_normals(normals: np.ndarray) -> bytes:
    """[S, S, 3] unit tangent-space normals -> an 8-bit RGB normal map PNG ((n + 1) / 2)."""
    return png_rgb8((normals + 1.0) * 0.5)


def png_displacement(displacement: np.ndarray) -> tuple[bytes, float]:
    """[S, S] signed displacement (object units) -> (a 16-bit grayscale PNG, its units per step):
    ``displacement = (pixel - 32768) * units_per_step``; the largest magnitude uses the full range."""
    from PIL import Image, PngImagePlugin

    largest = float(np.abs(displacement).max()) if displacement.size else 0.0
    units_per_step = largest / 32767.0 if largest > 0 else 1.0
    pixels = np.clip(np.round(displacement / units_per_step) + DISPLACEMENT_ZERO, 0, 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("partstyle:displacement", f"object units = (pixel - {DISPLACEMENT_ZERO}) * {units_per_step!r}")
    return _png(Image.fromarray(pixels), pnginfo=info), units_per_step


def _png(image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()
