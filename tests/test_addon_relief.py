"""Relief levels in the add-on (issue 11): the panel's run-wide Relief and the part rows' own reach the
engine's StyleRequest, ``none`` leaves the shape exactly as it was, and bad values are refused before a
run starts. The headless command's ``--relief`` options are in tests/test_addon_cli.py."""

from __future__ import annotations

import re

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import (
    assert_same_state,
    group_weights,
    make_lamp,
    object_state,
    set_panel,
)

import addon
from addon import bridge, engine_link, jobs, properties, runs

pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene


def _style_request():
    """The StyleRequest the panel's state would send, without running anything."""
    return runs.StyleRun(addon.operators.request_from(bpy.context)).prepare(live=False).style_request


def _evaluated_positions(obj) -> np.ndarray:
    obj.update_tag()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    positions = np.empty(len(evaluated.data.vertices) * 3, np.float32)
    evaluated.data.vertices.foreach_get("co", positions)
    return positions.reshape(-1, 3)


def test_relief_levels_match_the_engine():
    from engine.relief import DEFAULT_RELIEF, MAX_RELIEF, RELIEF_LEVELS

    assert runs.RELIEF_LEVELS == RELIEF_LEVELS and runs.RELIEF_DEFAULT == DEFAULT_RELIEF
    assert runs.RELIEF_MAX == MAX_RELIEF
    assert [item[0] for item in properties.RELIEF_ITEMS] == [*RELIEF_LEVELS, "custom"]
    settings = properties.PARTSTYLE_PG_settings.bl_rna.properties
    assert settings["relief"].default == DEFAULT_RELIEF
    assert settings["relief_custom"].hard_max == pytest.approx(MAX_RELIEF)
    row = properties.PARTSTYLE_PG_part.bl_rna.properties
    assert row["relief"].default == 'run' and row["relief"].enum_items["run"].name == "Same as the run"
    assert all(item.description for item in row["relief"].enum_items)


def test_run_and_row_relief_reach_the_style_request(scene):
    make_lamp()
    settings = set_panel()  # rows base, tube, shade
    request = addon.operators.request_from(bpy.context)
    assert (request.relief, request.part_relief) == ("subtle", ()), "default: subtle, no part sets its own"
    default = _style_request()
    assert default.relief == pytest.approx(0.1) and default.part_relief == ()

    settings.relief = 'strong'
    settings.parts[1].relief = 'none'  # tube
    settings.parts[2].relief = 'custom'  # shade
    settings.parts[2].relief_custom = 0.3
    request = addon.operators.request_from(bpy.context)
    assert request.relief == "strong"
    assert request.part_relief == (("tube", "none"), ("shade", pytest.approx(0.3))), "only the rows that override"
    style = _style_request()
    assert style.relief == pytest.approx(0.25)
    assert dict(style.part_relief) == {"tube": 0.0, "shade": pytest.approx(0.3)}
    assert style.relief_fractions == pytest.approx((0.25, 0.0, 0.3))

    settings.relief = 'custom'
    settings.relief_custom = 0.2
    settings.parts[1].relief = settings.parts[2].relief = 'run'
    style = _style_request()
    assert style.relief == pytest.approx(0.2) and style.part_relief == ()
    settings.relief_custom = 5.0  # the panel clamps it to the engine's range
    assert settings.relief_custom == pytest.approx(runs.RELIEF_MAX) and _style_request().relief <= runs.RELIEF_MAX


def test_parsing_again_keeps_the_rows_relief(scene):
    settings = set_panel("pottery base, gold tube")
    settings.parts[1].relief = 'custom'
    settings.parts[1].relief_custom = 0.05
    settings.prompt = "pottery base, brushed gold tube, linen shade"
    assert bpy.ops.partstyle.parse_prompt() == {'FINISHED'}
    assert [(r.part, r.relief) for r in settings.parts] == [("base", "run"), ("tube", "custom"), ("shade", "run")]
    assert settings.parts[1].relief_custom == pytest.approx(0.05)


def test_relief_none_keeps_the_shape_and_a_row_can_turn_it_off(scene):
    """A real (short) run: ``none`` for the run gives a displacement of exactly zero, so the displayed
    positions are bit-identical to the input; ``strong`` with the tube row at ``none`` moves the other
    parts and leaves the tube exactly in place."""
    obj = make_lamp()
    settings = set_panel()
    base_positions = bridge.mesh_arrays(obj)[0].copy()
    settings.relief = 'none'
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)
    assert shift is not None and np.all(shift == 0.0)
    np.testing.assert_array_equal(_evaluated_positions(obj), base_positions)
    np.testing.assert_array_equal(bridge.mesh_arrays(obj)[0], base_positions)
    colors = bridge.read_color(obj.data, bridge.COLOR_ATTRIBUTE)
    assert colors is not None and np.ptp(colors, 0).max() > 0.01, "colors are still styled"

    settings.relief = 'strong'
    settings.parts[1].relief = 'none'  # tube
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)
    weights = group_weights(obj)
    tube = weights["part:tube"] == 1.0
    assert tube.any() and np.all(shift[tube] == 0.0), "the tube row's 'None' keeps the tube in place"
    assert np.abs(shift[~tube]).max() > 0.0, "the other parts may move"


def test_bad_relief_is_refused_before_the_run(scene):
    obj = make_lamp()
    set_panel()
    before = object_state(obj)
    request = addon.operators.request_from(bpy.context)
    cases = [
        ({"relief": "huge"}, rf"relief 'huge' is not understood; use none, subtle, strong or a number from 0 to "
                             rf"{re.escape(str(runs.RELIEF_MAX))}"),
        ({"relief": 0.9}, r"relief 0\.9 is not understood"),
        ({"part_relief": (("tube", "-1"),)}, r"relief '-1' is not understood"),
        ({"part_relief": (("handle", "none"),)}, r"relief is set for 'handle', which the prompt does not name"),
    ]
    for change, message in cases:
        bad = runs.Request(**{**request.__dict__, **change})
        with pytest.raises(engine_link.user_errors(), match=message):
            runs.start(runs.StyleRun(bad), threaded=False)
        assert jobs.current() is None, "no job was started"
    holistic = runs.Request(object_name=obj.name, prompt="a lamp made of gold", part_relief=(("tube", "none"),),
                            models="tiny", device="cpu")
    with pytest.raises(engine_link.AddonError, match="describes the whole object and names no parts"):
        runs.start(runs.StyleRun(holistic), threaded=False)
    assert jobs.current() is None
    assert_same_state(before, object_state(obj))
