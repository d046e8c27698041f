"""A part row's reference image in the Blender add-on: its pixels read for the engine (top row first,
sRGB), the Image weight, a run that gives the engine the picture, a missing file, and the headless
command's ``--image PART=FILE``. Blender as the ``bpy`` module, tiny models.
"""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import FAST_OVERRIDES, PROMPT, make_lamp, reset_scene, set_panel
from test_addon import _draw, _Layout

from addon import engine_link, panels, runs
from addon.cli import build_parser, request_for
from addon.cli import main as cli_main
from addon.operators import request_from
from engine.colors import linear_to_srgb
from engine.references import load_reference

pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene

SIZE = 16
FLAT, TOP = (0.2, 0.6, 0.4), (1.0, 0.0, 0.0)


def reference_image(name: str = "ref", *, float_buffer: bool = False) -> tuple[bpy.types.Image, np.ndarray]:
    """A SIZE x SIZE image in memory, one flat color with its top row red, and the [H, W, 3] array
    (top row first) its pixels hold. Blender stores rows bottom first: the top row is the last."""
    image = bpy.data.images.new(name, SIZE, SIZE, float_buffer=float_buffer)
    rows = np.tile(np.array([*FLAT, 1.0], np.float32), (SIZE, SIZE, 1))
    rows[-1, :, :3] = TOP  # Blender's last row is the picture's top
    image.pixels.foreach_set(rows.ravel())
    top_first = rows[::-1, :, :3]
    if not float_buffer:
        top_first = np.round(top_first * 255.0) / 255.0  # a byte image keeps 8 bits
    return image, np.ascontiguousarray(top_first, dtype=np.float32)


def capture_results(monkeypatch) -> list:
    """The StyleResults runs hand to the writeback, in order."""
    seen = []
    apply = runs.StyleRun.apply

    def recording(self, result):
        seen.append(result)
        return apply(self, result)

    monkeypatch.setattr(runs.StyleRun, "apply", recording)
    return seen


def test_a_rows_image_becomes_a_top_first_srgb_array(scene):
    make_lamp()
    settings = set_panel()
    request = request_from(bpy.context)
    assert request.images == () and not any(o.startswith("guidance.image_weight") for o in request.overrides)
    image, expected = reference_image()
    settings.parts[2].image = image  # shade
    settings.image_weight = 0.25
    settings.overrides = "views.count=2 guidance.image_weight=0.3"
    request = request_from(bpy.context)
    ((part, pixels),) = request.images
    assert part == "shade" and pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    np.testing.assert_allclose(pixels[0], np.tile(TOP, (SIZE, 1)))  # the top row first
    # The weight goes first, so the typed Settings still win (as they do over every field).
    assert request.overrides == ("guidance.image_weight=0.25", "views.count=2", "guidance.image_weight=0.3")
    assert request.settings(live=False).guidance.image_weight == 0.3
    assert request_from(bpy.context, styles=False).images == ()  # Locate parts needs no pictures


def test_a_float_image_is_converted_from_linear_to_srgb(scene):
    make_lamp()
    settings = set_panel()
    image, linear = reference_image("linear", float_buffer=True)
    assert image.is_float and image.colorspace_settings.name != "sRGB"
    settings.parts[0].image = image
    ((part, pixels),) = request_from(bpy.context).images
    assert part == "base"
    np.testing.assert_allclose(pixels, linear_to_srgb(linear), atol=1e-5)
    assert abs(pixels[5, 5, 0] - 0.4845) < 1e-3  # linear 0.2 is sRGB 0.48


def test_a_locked_rows_image_is_not_used(scene):
    make_lamp()
    settings = set_panel()
    settings.parts[1].image, _ = reference_image()
    settings.parts[1].lock = True
    request = request_from(bpy.context)
    assert request.images == () and not any(o.startswith("guidance.image_weight") for o in request.overrides)


def test_an_image_without_pixels_is_refused_naming_the_row_and_the_image(scene, tmp_path):
    from PIL import Image

    make_lamp()
    settings = set_panel()
    path = tmp_path / "linen.png"
    Image.new("RGB", (8, 8), (200, 180, 150)).save(path)
    image = bpy.data.images.load(str(path))
    settings.parts[2].image = image
    assert request_from(bpy.context).images[0][1].shape == (8, 8, 3)
    os.remove(path)
    image.reload()
    message = f"Row 3 (shade): the image 'linen.png' has no pixels from '{path}', which is missing"
    with pytest.raises(engine_link.AddonError, match=re.escape(message)):
        request_from(bpy.context)
    with pytest.raises(RuntimeError, match=re.escape("the image 'linen.png' has no pixels")):  # the operator's report
        bpy.ops.partstyle.stylize()


def test_stylize_gives_the_engine_the_rows_image(scene, monkeypatch):
    obj = make_lamp()
    settings = set_panel(iterations=2)
    image, expected = reference_image()
    settings.parts[2].image = image
    settings.image_weight = 0.75
    seen = capture_results(monkeypatch)
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    (result,) = seen
    assert result.record["steps"] == 2 and result.settings.guidance.image_weight == 0.75
    used = result.record["reference_images"]
    assert list(used) == ["shade"] and used["shade"]["sha256"] == load_reference(expected).sha256
    assert used["shade"]["size"] == [SIZE, SIZE]
    assert "Partstyle" in obj.data.color_attributes


def test_the_panel_shows_the_selected_rows_image_and_the_weight(scene):
    make_lamp()
    settings = set_panel()
    settings.active_part = 1
    calls = _draw(panels.PARTSTYLE_PT_main, bpy.context)
    assert ("template_ID", "image", "image.open") in calls and ("label", "Image for tube:") in calls
    assert ("prop", "image_weight") not in calls
    settings.parts[2].image, _ = reference_image()
    assert ("prop", "image_weight") in _draw(panels.PARTSTYLE_PT_main, bpy.context)
    settings.parts[2].lock = True
    settings.active_part = 2
    assert any(c[0] == "label" and "its image is not used" in c[1] for c in _draw(panels.PARTSTYLE_PT_main,
                                                                                  bpy.context))
    panels.PARTSTYLE_UL_parts.draw_item(None, bpy.context, _Layout(calls := []), None, settings.parts[2], 0, None,
                                        "", 2)
    assert ("prop", "part") in calls
    settings.prompt = "green base, gold tube, linen shade"
    assert bpy.ops.partstyle.parse_prompt() == {'FINISHED'}
    assert settings.parts[2].image is not None and settings.parts[0].image is None  # parsing keeps it


BASE = ["--object", "Lamp", "--prompt", PROMPT, "--out", "r.blend"]


def test_the_commands_image_option_becomes_the_requests_images():
    args = build_parser().parse_args([*BASE, "--image", "shade = /pictures/linen.jpg", "--image", "whole=gold.png"])
    request = request_for("Lamp", args, runs, engine_link)
    assert request.images == (("shade", "/pictures/linen.jpg"), ("whole", "gold.png"))
    assert request_for("Lamp", build_parser().parse_args(BASE), runs, engine_link).images == ()


def test_a_malformed_image_option_is_a_usage_error(capsys):
    assert cli_main([*BASE, "--image", "linen.jpg"]) == 2
    assert "--image 'linen.jpg': write PART=FILE" in capsys.readouterr().err


@pytest.fixture(scope="module")
def blend_file(tmp_path_factory):
    reset_scene()
    make_lamp("Lamp")
    path = str(tmp_path_factory.mktemp("images") / "input.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    reset_scene()
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("pictures") / "linen.png"
    Image.new("RGB", (12, 8), (200, 180, 150)).save(path)
    return str(path)


def test_bad_images_are_refused_before_any_object_runs(blend_file, picture, tmp_path, capsys):
    out = str(tmp_path / "result.blend")
    missing = str(tmp_path / "nowhere.png")
    cases = [
        ([f"handle={picture}"], [], "--image: an image is given for 'handle', which the prompt does not name"),
        ([f"shade={missing}"], [], f"--image: the image for 'shade': '{missing}' does not exist"),
        ([f"shade={picture}", f"Shade={picture}"], [], "--image: two images are given for 'shade'"),
        ([f"shade={picture}"], ["--lock", "shade"], "--image: an image is given for 'shade', which --lock keeps"),
    ]
    try:
        for images, extra, message in cases:
            code = cli_main(["--blend", blend_file, "--object", "Lamp", "--prompt", PROMPT, "--use-groups",
                             "--iterations", "1", "--out", out, *extra,
                             *[a for i in images for a in ("--image", i)]])
            captured = capsys.readouterr()
            lines = captured.err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
                images, captured.err)
            assert "[Lamp]" not in captured.out and not os.path.exists(out), "nothing ran"
    finally:
        reset_scene()


def test_the_commands_image_reaches_the_engine(blend_file, picture, tmp_path, monkeypatch):
    out = str(tmp_path / "result.blend")
    seen = capture_results(monkeypatch)
    handler = signal.getsignal(signal.SIGINT)  # the command makes Ctrl-C cancel its run
    sets = [a for o in FAST_OVERRIDES for a in ("--set", o)]
    try:
        code = cli_main(["--blend", blend_file, "--object", "Lamp", "--prompt", PROMPT, "--use-groups",
                         "--iterations", "2", "--models", "tiny", "--device", "cpu", *sets,
                         "--set", "guidance.image_weight=0.75", "--image", f"shade={picture}", "--out", out])
    finally:
        signal.signal(signal.SIGINT, handler)
        reset_scene()
    assert code == 0 and os.path.isfile(out)
    (result,) = seen
    used = result.record["reference_images"]
    assert list(used) == ["shade"] and used["shade"]["sha256"] == load_reference(picture).sha256
    assert used["shade"]["source"] == picture and result.settings.guidance.image_weight == 0.75
