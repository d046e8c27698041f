"""engine.images: uint8 conversion, grid layout, curve plots and PNG writing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from engine.images import SERIES_COLORS, image_grid, plot_curves, save_png, series_color, to_uint8


def _color_count(image, color):
    return int(np.all(image == np.asarray(color, np.uint8), axis=-1).sum())


def test_to_uint8_clips_and_rounds():
    img = np.array([[[-0.5, 0.0, 1.0], [1.5, 0.5, 0.25]], [[0.2 / 255, 0.6 / 255, 254.4 / 255],
                                                            [254.6 / 255, 0.999, 0.001]]])
    out = to_uint8(img)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    expected = [[[0, 0, 255], [255, 128, 64]], [[0, 1, 254], [255, 255, 0]]]
    np.testing.assert_array_equal(out, expected)


def test_to_uint8_passes_uint8_and_rgba_through():
    rgba = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_uint8(rgba), rgba)
    assert to_uint8(rgba.astype(np.float32) / 255).shape == (2, 3, 4)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4)), np.zeros((4, 4, 2)), np.zeros((4, 4, 3), np.int32),
    np.full((2, 2, 3), np.nan), np.zeros((0, 4, 3)),
])
def test_to_uint8_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        to_uint8(bad)


def _cells(n, h=10, w=14, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_grid_shape_and_cell_content():
    h, w, pad = 10, 14, 3
    rows = [_cells(3, seed=1), _cells(2, seed=2)]
    grid = image_grid(rows, pad=pad, background=(1, 2, 3))
    assert grid.dtype == np.uint8
    assert grid.shape == (pad + 2 * (h + pad), pad + 3 * (w + pad), 3)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            np.testing.assert_array_equal(grid[y:y + h, x:x + w], img)
    # the missing cell of the short row and the padding are background
    y, x = pad + (h + pad), pad + 2 * (w + pad)
    assert _color_count(grid[y:y + h, x:x + w], (1, 2, 3)) == h * w
    assert _color_count(grid[:pad], (1, 2, 3)) == pad * grid.shape[1]


def test_grid_without_padding_is_plain_tiling():
    rows = [_cells(2, seed=3), _cells(2, seed=4)]
    grid = image_grid(rows, pad=0)
    np.testing.assert_array_equal(grid, np.concatenate([np.concatenate(r, axis=1) for r in rows]))


def test_grid_labels_add_a_left_margin_with_text():
    h, w, pad = 20, 16, 4
    rows = [_cells(2, h, w, seed=5), _cells(2, h, w, seed=6)]
    plain = image_grid(rows, pad=pad)
    labelled = image_grid(rows, pad=pad, row_labels=["before", "after"])
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > pad
    # the cells keep their places relative to the right edge ...
    np.testing.assert_array_equal(labelled[:, margin:], plain)
    # ... and the margin holds dark text on the white background, in each row
    for r in range(2):
        band = labelled[pad + r * (h + pad):pad + r * (h + pad) + h, :margin]
        assert (band.max(axis=-1) < 128).sum() > 5
    assert image_grid(rows, pad=pad, row_labels=["a", "a much longer label"]).shape[1] > \
        image_grid(rows, pad=pad, row_labels=["a", "b"]).shape[1]


def test_grid_float_and_rgba_inputs():
    rgb = np.full((4, 5, 3), 0.5)
    rgba = np.zeros((4, 5, 4), np.uint8)  # fully transparent -> background
    grid = image_grid([[rgb, rgba]], pad=1, background=(10, 20, 30))
    np.testing.assert_array_equal(grid[1:5, 1:6], np.full((4, 5, 3), 128))
    assert _color_count(grid[1:5, 7:12], (10, 20, 30)) == 20


@pytest.mark.parametrize("rows,kwargs", [
    ([], {}), ([[]], {}), ([[np.zeros((4, 4, 3)), np.zeros((4, 5, 3))]], {}),
    ([[np.zeros((4, 4, 3))]], {"row_labels": ["a", "b"]}), ([[np.zeros((4, 4, 3))]], {"pad": -1}),
])
def test_grid_rejects_bad_input(rows, kwargs):
    with pytest.raises(ValueError):
        image_grid(rows, **kwargs)


def test_plot_shape_and_series_colors():
    x = np.linspace(0, 4, 200)
    img = plot_curves({"total": np.exp(-x), "clip": 0.5 * np.exp(-x)}, width=640, height=320,
                      title="loss")
    assert img.shape == (320, 640, 3) and img.dtype == np.uint8
    legend_only = plot_curves({"total": [], "clip": []}, width=640, height=320, title="loss")
    for k in range(2):
        assert _color_count(img, series_color(k)) > _color_count(legend_only, series_color(k)) + 100
    assert series_color(0) == SERIES_COLORS[0] and series_color(1) != series_color(0)
    assert len({series_color(k) for k in range(20)}) == 20
    # dark pixels: axes, ticks and text
    assert (img.max(axis=-1) < 60).sum() > 500


@pytest.mark.parametrize("series", [
    {}, {"empty": []}, {"one": [0.3]}, {"const": [2.0] * 10}, {"zeros": [0.0, 0.0]},
    {"nan": [np.nan, np.nan]}, {"gaps": [1.0, np.nan, 2.0, 3.0, np.inf, 0.5]},
    {"tiny": [1e-9, 2e-9]}, {"huge": [1e12, -1e12]}, {"long": np.arange(100000.0)},
    {"a": [1.0, 2.0], "b": [], "c": [np.nan], "d": [5.0]},
])
def test_plot_is_robust(series):
    img = plot_curves(series, width=300, height=200)
    assert img.shape == (200, 300, 3) and img.dtype == np.uint8


def test_plot_draws_single_points_and_gapped_lines():
    img = plot_curves({"one": [0.3], "gaps": [1.0, np.nan, 2.0, 3.0]}, width=300, height=200)
    legend_only = plot_curves({"one": [], "gaps": []}, width=300, height=200)
    assert _color_count(img, series_color(0)) > _color_count(legend_only, series_color(0))
    assert _color_count(img, series_color(1)) > _color_count(legend_only, series_color(1))


def test_plot_rejects_bad_input():
    with pytest.raises(ValueError):
        plot_curves({"a": [[1.0, 2.0]]})
    with pytest.raises(ValueError):
        plot_curves({"a": [1.0]}, width=50, height=50)


@pytest.mark.parametrize("channels", [3, 4])
def test_save_png_round_trip(tmp_path, channels):
    img = np.random.default_rng(7).integers(0, 256, (9, 13, channels), dtype=np.uint8)
    path = tmp_path / "img.png"
    save_png(path, img)
    with Image.open(path) as pil:
        assert pil.format == "PNG" and pil.mode == ("RGB" if channels == 3 else "RGBA")
        np.testing.assert_array_equal(np.asarray(pil), img)
    save_png(path, img.astype(np.float64) / 255)  # float input, overwriting
    with Image.open(path) as pil:
        np.testing.assert_array_equal(np.asarray(pil), img)
    assert os.listdir(tmp_path) == ["img.png"]


def test_save_png_bad_input_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_png(tmp_path / "x.png", np.zeros((4, 4)))
    assert os.listdir(tmp_path) == []
