"""Image helpers for records and reports: conversion to uint8, labelled grids, loss plots, PNG.

Built on Pillow's ImageDraw and its default font only (no matplotlib). Every function returns or
takes plain numpy arrays: uint8 [H, W, 3] RGB (or [H, W, 4] RGBA where noted), rows first.
"""

from __future__ import annotations

import colorsys
import math
import os
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_writer

#: RGB colours of the first ten plot series (matplotlib's "tab10"); later ones are generated.
SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def series_color(index: int) -> tuple[int, int, int]:
    """RGB colour of plot series ``index``: tab10 first, then well-spread hues."""
    if index < len(SERIES_COLORS):
        return SERIES_COLORS[index]
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.8)
    return round(r * 255), round(g * 255), round(b * 255)


def to_uint8(image) -> np.ndarray:
    """[H, W, 3|4] uint8 (returned as is) or float in 0..1 (clipped, rounded) -> uint8 [H, W, C]."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image must have shape [H, W, 3] or [H, W, 4], got {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in 0..1, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image holds non-finite values (NaN or inf)")
    return np.rint(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def image_grid(rows, *, row_labels=None, pad: int = 4, background=(255, 255, 255)) -> np.ndarray:
    """Tile images into a grid, one list per row, with an optional text label left of each row.

    Args:
        rows: list of lists of images ([H, W, 3|4], uint8 or float 0..1), all of one H and W.
            Rows may differ in length (short rows are left blank on the right); RGBA images are
            composited over ``background``.
        row_labels: optional one string per row, drawn in the left margin.
        pad: pixels of background around and between the cells (>= 0).
        background: RGB of the padding.

    Returns:
        uint8 [pad + R*(H+pad), L + pad + C*(W+pad), 3] with R rows, C the longest row and
        L = 0 without labels, else the widest label's width plus ``pad``. Cell (r, c) has its
        top-left corner at y = pad + r*(H+pad), x = L + pad + c*(W+pad).
    """
    if pad < 0 or int(pad) != pad:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    bg = np.asarray(background)
    if bg.shape != (3,) or bg.min() < 0 or bg.max() > 255:
        raise ValueError(f"background must be three values in 0..255, got {background!r}")
    cells = [[to_uint8(img) for img in row] for row in rows]
    sizes = {img.shape[:2] for row in cells for img in row}
    if not sizes:
        raise ValueError("image_grid needs at least one image")
    if len(sizes) > 1:
        raise ValueError(f"all images must have the same size, got {sorted(sizes)}")
    if row_labels is not None and len(row_labels) != len(cells):
        raise ValueError(f"got {len(row_labels)} row labels for {len(cells)} rows")
    (h, w), pad = sizes.pop(), int(pad)
    fill = tuple(int(v) for v in bg)
    text_color = (0, 0, 0) if sum(fill) > 382 else (255, 255, 255)
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if row_labels is not None:
        label_w = max(probe.textbbox((0, 0), str(t), font=font)[2] for t in row_labels) + pad
    ncols = max(len(row) for row in cells)
    out = np.empty((pad + len(cells) * (h + pad), label_w + pad + ncols * (w + pad), 3), np.uint8)
    out[...] = fill
    for r, row in enumerate(cells):
        y = pad + r * (h + pad)
        for c, img in enumerate(row):
            if img.shape[2] == 4:
                alpha = img[..., 3:].astype(np.float64) / 255.0
                img = np.rint(img[..., :3] * alpha + bg * (1.0 - alpha)).astype(np.uint8)
            x = label_w + pad + c * (w + pad)
            out[y:y + h, x:x + w] = img
    if row_labels is not None:
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(map(str, row_labels)):
            box = draw.textbbox((0, 0), text, font=font)
            y = pad + r * (h + pad) + (h - box[1] - box[3]) / 2
            draw.text((pad, y), text, fill=text_color, font=font)
        out = np.array(canvas)
    return out


def plot_curves(series, *, width: int = 800, height: int = 400, title: str = "",
                x_label: str = "iteration", y_label: str = "loss") -> np.ndarray:
    """Line plot of one or more curves against their index; returns uint8 [height, width, 3].

    Args:
        series: dict ``name -> sequence of floats`` (value i is plotted at x = i). Non-finite
            values are skipped and break the line; an isolated point is drawn as a dot. Series
            may be empty. Series k is drawn in :func:`series_color` ``(k)``.
        width, height: image size in pixels (at least 160 x 120).
        title, x_label, y_label: texts above the plot and along the axes.
    """
    if width < 160 or height < 120:
        raise ValueError(f"plot size must be at least 160 x 120, got {width} x {height}")
    data = {}
    for name, values in series.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"series {name!r} must be one-dimensional, got {list(arr.shape)}")
        data[str(name)] = np.where(np.isfinite(arr), np.clip(arr, -1e300, 1e300), np.nan)
    finite = np.concatenate([v[np.isfinite(v)] for v in data.values()] + [np.zeros(0)])
    ylo, yhi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    margin = (yhi - ylo) * 0.05 if yhi > ylo else (abs(ylo) * 0.1 or 1.0)
    ylo, yhi = ylo - margin, yhi + margin
    xlo, xhi = 0.0, float(max([len(v) - 1 for v in data.values()] + [1]))
    yticks, xticks = _ticks(ylo, yhi, integer=False), _ticks(xlo, xhi, integer=True)

    font, title_font = _font(11), _font(14)
    img = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    text_h = draw.textbbox((0, 0), "0gy", font=font)[3]
    ylabels = [_fmt(v, yticks) for v in yticks]
    tick_w = max(draw.textlength(t, font=font) for t in ylabels)
    x0 = int(6 + (text_h + 6 if y_label else 0) + tick_w + 6)
    y0 = 10 + (draw.textbbox((0, 0), title, font=title_font)[3] + 6 if title else 0)
    x1, y1 = width - 14, height - (text_h + 10 + (text_h + 6 if x_label else 0))
    if x1 - x0 < 40 or y1 - y0 < 40:
        raise ValueError(f"plot size {width} x {height} leaves no room for the axes")

    def px(x):
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y):
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    for v, text in zip(yticks, ylabels, strict=True):
        draw.line([(x0, py(v)), (x1, py(v))], fill=(225, 225, 225))
        draw.text((x0 - 6, py(v)), text, fill=(0, 0, 0), font=font, anchor="rm")
    for v in xticks:
        draw.line([(px(v), y0), (px(v), y1)], fill=(225, 225, 225))
        draw.text((px(v), y1 + 5), _fmt(v, xticks), fill=(0, 0, 0), font=font, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    if title:
        draw.text(((x0 + x1) / 2, 6), title, fill=(0, 0, 0), font=title_font, anchor="mt")
    if x_label:
        draw.text(((x0 + x1) / 2, height - 4), x_label, fill=(0, 0, 0), font=font, anchor="md")
    if y_label:
        box = draw.textbbox((0, 0), y_label, font=font)
        label = Image.new("RGB", (box[2] + 2, text_h + 2), (255, 255, 255))
        ImageDraw.Draw(label).text((1, 1), y_label, fill=(0, 0, 0), font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (4, int((y0 + y1) / 2 - label.height / 2)))

    for k, values in enumerate(data.values()):
        color, idx = series_color(k), np.flatnonzero(np.isfinite(values))
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []:
            points = [(px(i), py(values[i])) for i in run]
            if len(points) == 1:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2,
                              points[0][1] + 2], fill=color)
            else:
                draw.line(points, fill=color, width=2, joint="curve")

    if data:
        names = list(data)
        row_h = text_h + 4
        box_w = 30 + max(draw.textlength(n, font=font) for n in names)
        lx, ly = x1 - box_w - 8, y0 + 6
        draw.rectangle([lx, ly, x1 - 6, ly + row_h * len(names) + 4], fill=(255, 255, 255),
                       outline=(160, 160, 160))
        for k, name in enumerate(names):
            cy = ly + 4 + row_h * k + row_h / 2
            draw.line([(lx + 4, cy), (lx + 22, cy)], fill=series_color(k), width=3)
            draw.text((lx + 26, cy), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.array(img)


def save_png(path: str | os.PathLike, image) -> None:
    """Write an image ([H, W, 3|4], uint8 or float 0..1) to ``path`` as PNG, atomically."""
    arr = to_uint8(image)
    pil = Image.fromarray(arr)  # uint8 [H, W, 3|4] -> RGB or RGBA
    with atomic_writer(path) as fh:
        pil.save(fh, format="PNG")


@cache
def _font(size: int):
    """Pillow's default font at ``size`` (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, *, integer: bool, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten) inside [lo, hi]."""
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    return [i * step for i in range(first, math.floor(hi / step + 1e-9) + 1)]


def _fmt(value: float, ticks: list[float]) -> str:
    """Tick label: as many decimals as the tick step needs, scientific for extreme values."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    big = max(abs(t) for t in ticks)
    if big >= 1e5 or (0 < big < 1e-3):
        return f"{value:.2e}"
    return f"{0.0 if abs(value) < step * 1e-6 else value:.{max(0, -math.floor(math.log10(step)))}f}"
