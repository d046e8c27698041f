"""Reference images (engine/references.py): reading a picture from a file, PIL or an array, the
request's checks, the target it becomes, and what a run records and shows of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import InputError, PromptError
from engine.export import before_after_grid
from engine.references import WHOLE, augmented_views, image_options, load_reference, mix_targets
from engine.request import StyleRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "views.count=2", "--set", "render.resolution=64", "--set", "field.width=64"]


def picture(height=24, width=32) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_same_picture_has_one_hash_from_a_file_pil_or_an_array(tmp_path):
    pixels = picture()
    path = tmp_path / "ref.png"
    Image.fromarray(pixels).save(path)
    from_file, from_pil = load_reference(str(path)), load_reference(Image.fromarray(pixels))
    from_array, from_float = load_reference(pixels), load_reference(pixels.astype(np.float32) / 255)
    assert from_file.sha256 == from_pil.sha256 == from_array.sha256 == from_float.sha256
    assert from_file.source == str(path) and from_array.source == "array"
    assert from_file.pixels.shape == (24, 32, 3) and from_file.pixels.dtype == np.float32
    assert np.allclose(from_file.pixels * 255, pixels, atol=1e-3)
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert load_reference(other).sha256 != from_array.sha256


def test_gray_and_rgba_arrays_become_rgb():
    gray = np.full((8, 8), 128, np.uint8)
    assert load_reference(gray).pixels.shape == (8, 8, 3)
    rgba = np.zeros((8, 8, 4), np.float32)
    assert load_reference(rgba).pixels.shape == (8, 8, 3)


@pytest.mark.parametrize("make,says", [
    (lambda d: str(d / "missing.png"), "does not exist"),
    (lambda d: (d / "notes.txt").write_text("x") and str(d / "notes.txt"), "not a supported image"),
    (lambda d: (d / "broken.png").write_bytes(b"not a png") and str(d / "broken.png"), "could not be read"),
    (lambda d: np.zeros((4, 4, 5), np.uint8), "not an image"),
    (lambda d: np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (lambda d: np.zeros((4, 4, 3), np.int64), "not understood"),
    (lambda d: 42, "not an image"),
])
def test_unusable_pictures_are_refused_with_the_reason_and_the_part(tmp_path, make, says):
    with pytest.raises(InputError, match=says) as err:
        StyleRequest("red base, blue shade", images={"shade": make(tmp_path)})
    assert "the image for 'shade'" in str(err.value)


def test_the_request_checks_which_part_an_image_is_for():
    with pytest.raises(PromptError, match=r"'lid', which the prompt does not name \(its parts: base, shade\)"):
        StyleRequest("red base, blue shade", images={"lid": picture()})
    with pytest.raises(PromptError, match="does not name"):
        StyleRequest("a red lamp", images={"base": picture()})
    request = StyleRequest("red base, blue shade", images={"Shade": picture(), WHOLE: picture(8, 8)})
    assert [part for part, _ in request.images] == [WHOLE, "shade"]
    assert [part for part, _ in StyleRequest("a red lamp", images={"whole": picture()}).images] == [WHOLE]


def test_image_options_read_part_equals_file():
    assert image_options(["shade=linen.jpg", " whole = a=b.png "]) == (("shade", "linen.jpg"), ("whole", "a=b.png"))
    for bad in ("shade", "=x.png", "shade="):
        with pytest.raises(PromptError, match="PART=FILE"):
            image_options([bad])


def test_augmented_views_are_the_whole_picture_then_seeded_crops():
    pixels = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    views = augmented_views(pixels, count=6, size=32, seed=5)
    assert views.shape == (6, 3, 32, 32)
    whole = torch.nn.functional.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None], size=(32, 32),
                                            mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(views[0], whole[0])
    assert torch.equal(views, augmented_views(pixels, count=6, size=32, seed=5))
    assert not torch.equal(views[1:], augmented_views(pixels, count=6, size=32, seed=6)[1:])


def test_mixed_targets_go_from_the_words_to_the_picture():
    text, image = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    assert torch.allclose(mix_targets(text, image, 0.0), text, atol=1e-6)
    assert torch.allclose(mix_targets(text, image, 1.0), image, atol=1e-6)
    half = mix_targets(text, image, 0.5)
    assert torch.isclose(half.norm(), torch.tensor(1.0)) and torch.isclose(half @ text, half @ image, atol=1e-5)


def test_a_run_records_the_picture_by_hash_and_shows_it(tmp_path):
    """The command line's --image reaches the run: run.json names the picture by its content hash
    and path, and the preview gains a row of reference thumbnails."""
    path = tmp_path / "swatch.png"
    Image.fromarray(np.full((20, 30, 3), (200, 30, 30), np.uint8)).save(path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "engine", "stylize", "sample:lamp@5k", "--prompt",
                           "red base, blue shade", "--parts-from", "labels", "--image", f"base={path}",
                           "--iterations", "2", "--out", str(out), *SMALL], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["reference_images"]["base"] == {"sha256": load_reference(str(path)).sha256,
                                                  "source": str(path), "size": [30, 20]}
    plain = subprocess.run([sys.executable, "-m", "engine", "stylize", "sample:lamp@5k", "--prompt",
                            "red base, blue shade", "--parts-from", "labels", "--image", "base",
                            "--out", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "PART=FILE" in plain.stderr


def test_the_preview_shows_the_reference_thumbnails():
    from engine.api import stylize
    from engine.config import settings_for
    from engine.parts import PartWeights
    from engine.samples import sample_mesh

    lamp = sample_mesh("lamp", 2000)
    parts = PartWeights.from_labels(lamp.labels, lamp.label_names)
    settings = settings_for("preview", ["optim.iterations=1", "views.count=2", "render.resolution=64"])
    red = np.zeros((10, 40, 3), np.float32)
    red[..., 0] = 1.0
    with_image = stylize(lamp, StyleRequest("red base, blue shade", parts=parts, images={"base": red}),
                         settings=settings, device="cpu")
    without = stylize(lamp, StyleRequest("red base, blue shade", parts=parts), settings=settings, device="cpu")
    grid, plain = before_after_grid(with_image, views=2, size=48), before_after_grid(without, views=2, size=48)
    assert grid.shape[0] > plain.shape[0]  # one more row
    last_row = grid[-(48 + 4):-4]
    reddish = (last_row[..., 0] > 200) & (last_row[..., 1] < 60) & (last_row[..., 2] < 60)
    assert reddish.sum() >= 48 * 10  # the thumbnail: the picture fitted in a 48 px square
