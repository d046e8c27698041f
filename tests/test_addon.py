"""The Blender add-on, through its operators, with Blender as the ``bpy`` module and tiny models.

The operators run synchronously here (``execute``, as in ``--background``); the threaded path is
tested through the job API with :func:`addon.jobs.drain` called directly (timers never fire in
the module).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

import addon
from addon import bridge, engine_link, jobs, nodes, runs
from addon_fixtures import (FAST_OVERRIDES, ITERATIONS, LOCATE_OVERRIDES, PROMPT, SEED, assert_same_state,
                            group_weights, make_lamp, object_state, reset_scene, set_panel)


def _registered() -> bool:
    return hasattr(bpy.types.Scene, "partstyle")


@pytest.fixture(scope="module", autouse=True)
def registered():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these runs are tiny; on a busy 2-core machine more threads only contend
    if not _registered():
        addon.register()
    yield
    if _registered():
        addon.unregister()
    torch.set_num_threads(threads)


@pytest.fixture
def scene():
    reset_scene()
    yield bpy.context.scene
    jobs.abandon()


def engine_result(obj_name: str, *, overrides=FAST_OVERRIDES):
    """What engine.api.stylize gives for the same object, groups, prompt and settings."""
    from engine.api import stylize
    from engine.config import settings_for
    from engine.mesh import mesh_from_arrays
    from engine.parts import PartWeights

    obj = bpy.data.objects[obj_name]
    vertices, faces = bridge.mesh_arrays(obj)
    mesh = mesh_from_arrays(vertices, faces)
    groups = {name[len("part:"):]: w for name, w in group_weights(obj).items() if name.startswith("part:")}
    settings = settings_for("fast", {"run.seed": SEED, "optim.iterations": ITERATIONS, "views.up_axis": "z",
                                     **dict(o.split("=") for o in overrides)})
    parts = PartWeights.from_vertex_groups(groups, mesh.num_vertices)
    return stylize(mesh, PROMPT, settings=settings, models="tiny", device="cpu", parts=parts)


def test_register_unregister_twice():
    was = _registered()
    if was:
        addon.unregister()
    for _ in range(2):
        addon.register()
        assert _registered() and hasattr(bpy.ops.partstyle, "stylize")
        addon.unregister()
        assert not _registered()
    addon.register()


def test_presets_and_engine_status_match_the_engine():
    from engine.config import PRESETS

    assert sorted(PRESETS) == sorted(runs.PRESETS)
    state = engine_link.refresh()
    assert state.ok and state.package == "engine"
    assert "torch" in state.versions and "transformers" in state.versions
    command = engine_link.install_command()
    assert "-m pip install" in command and "torch" in command


def test_parse_prompt_fills_editable_rows(scene):
    settings = set_panel("pottery base, gold tube, linen shade")
    assert [(r.part, r.style) for r in settings.parts] == [("base", "pottery"), ("tube", "gold"), ("shade", "linen")]
    assert len({tuple(r.color) for r in settings.parts}) == 3
    settings.parts[1].style = "brushed gold"
    settings.parts[1].lock = True
    settings.prompt = "pottery base, linen shade, red tube"
    bpy.ops.partstyle.parse_prompt()
    assert [r.part for r in settings.parts] == ["base", "shade", "tube"] and settings.parts[2].lock
    bpy.ops.partstyle.part_add()
    assert len(settings.parts) == 4
    bpy.ops.partstyle.part_remove(index=0)
    assert [r.part for r in settings.parts] == ["shade", "tube", ""]
    settings.prompt = "a lamp made of gold"
    bpy.ops.partstyle.parse_prompt()
    assert len(settings.parts) == 0
    settings.prompt = "base, , shade"
    with pytest.raises(RuntimeError, match="empty"):
        bpy.ops.partstyle.parse_prompt()


def test_poll_messages_explain_why(scene):
    set_panel(parse=False)
    with pytest.raises(RuntimeError, match="Select a mesh object"):
        bpy.ops.partstyle.stylize()
    make_lamp()
    job = jobs.claim(jobs.Job("Stylize", "Other", lambda on_event, cancel: None))
    try:
        with pytest.raises(RuntimeError, match="running on 'Other'"):
            bpy.ops.partstyle.stylize()
    finally:
        jobs.release(job)
    bpy.context.scene.partstyle.use_vertex_groups = True
    with pytest.raises(RuntimeError, match="Use my vertex groups"):
        bpy.ops.partstyle.locate()


def test_locate_writes_one_group_per_part(scene):
    obj = make_lamp(groups=False, user_data=True)
    set_panel(use_groups=False, overrides=LOCATE_OVERRIDES)
    positions = object_state(obj)["attributes"]["position"][2]
    assert bpy.ops.partstyle.locate() == {'FINISHED'}
    weights = group_weights(obj)
    assert sorted(weights) == sorted(["Mine", "part:base", "part:tube", "part:shade"])
    for name in ("part:base", "part:tube", "part:shade"):
        assert weights[name].min() >= 0.0 and weights[name].max() <= 1.0
    assert (weights["part:base"] + weights["part:tube"] + weights["part:shade"]).max() <= 1.0 + 1e-5
    assert bridge.PARTS_ATTRIBUTE in obj.data.attributes
    np.testing.assert_array_equal(object_state(obj)["attributes"]["position"][2], positions)


def test_stylize_writes_the_engines_result(scene):
    obj = make_lamp()
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    expected = engine_result("Lamp")
    mesh = obj.data
    colors = np.empty(len(mesh.vertices) * 4, np.float32)
    mesh.attributes[bridge.COLOR_ATTRIBUTE].data.foreach_get("color", colors)
    np.testing.assert_allclose(colors.reshape(-1, 4)[:, :3], expected.colors_linear, atol=1e-6)
    np.testing.assert_allclose(bridge.read_float(mesh, bridge.DISPLACEMENT_ATTRIBUTE), expected.displacement, atol=1e-7)
    assert mesh.attributes[bridge.COLOR_ATTRIBUTE].domain == 'POINT'
    assert mesh.color_attributes.active_color_name == bridge.COLOR_ATTRIBUTE
    assert [m.name for m in mesh.materials] == [nodes.MATERIAL_NAME]
    modifier = nodes.displace_modifier(obj)
    key = nodes.strength_key(modifier)
    assert modifier[key] == 1.0
    # the modifier displaces along the normal by the attribute, times Strength; the base mesh stays
    vertices, _ = bridge.mesh_arrays(obj)
    normals = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("normal", normals)
    modifier[key] = 2.0
    obj.update_tag()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    moved = np.array([v.co[:] for v in evaluated.data.vertices], np.float32)
    np.testing.assert_allclose(moved, vertices + 2.0 * expected.displacement[:, None] * normals.reshape(-1, 3),
                               atol=1e-5)
    np.testing.assert_allclose(bridge.mesh_arrays(obj)[0], vertices)


def test_rerun_replaces_and_clear_restores_the_users_data(scene):
    obj = make_lamp(user_data=True)
    before = object_state(obj)
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    bpy.context.scene.partstyle.seed = SEED + 1
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    after = object_state(obj)
    ours = {bridge.COLOR_ATTRIBUTE, bridge.DISPLACEMENT_ATTRIBUTE}
    assert set(after["attributes"]) - set(before["attributes"]) == ours
    assert after["materials"] == before["materials"], "an object with its own material keeps exactly that"
    assert after["modifiers"] == [(nodes.MODIFIER_NAME, 'NODES')]
    for name, (domain, kind, values) in before["attributes"].items():
        np.testing.assert_array_equal(after["attributes"][name][2], values, err_msg=name)
    assert bpy.ops.partstyle.clear(keep_groups=True) == {'FINISHED'}
    assert_same_state(before, object_state(obj))
    assert not any(nodes.is_ours(g) for g in bpy.data.node_groups)


def test_one_undo_step_removes_the_results(scene):
    obj = make_lamp()
    set_panel()
    before = object_state(obj)
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == 'VIEW_3D')
    with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=area.regions[-1]):
        # In the UI Blender pushes the undo step of an operator with bl_options {'UNDO'} when it
        # finishes; asking for that push from a script (C_undo=True) crashes the bpy module, so the
        # test pushes the same step by hand around the one operator call.
        bpy.ops.ed.undo_push(message="before Partstyle")
        assert bpy.ops.partstyle.stylize() == {'FINISHED'}
        bpy.ops.ed.undo_push(message=addon.operators.PARTSTYLE_OT_stylize.bl_label)
        assert bridge.COLOR_ATTRIBUTE in bpy.data.objects["Lamp"].data.attributes
        bpy.ops.ed.undo()
    assert 'UNDO' in addon.operators.PARTSTYLE_OT_stylize.bl_options
    assert_same_state(before, object_state(bpy.data.objects["Lamp"]))


def test_cancel_during_a_threaded_run_leaves_the_object_unchanged(scene):
    obj = make_lamp(user_data=True)
    set_panel(iterations=200, overrides=FAST_OVERRIDES + ("run.preview_every=1",))
    before = object_state(obj)
    run = runs.StyleRun(addon.operators.request_from(bpy.context))
    job = runs.start(run, threaded=True)
    previews = []
    deadline = time.time() + 60
    while not previews and jobs.drain(job, lambda e: (previews.append(e.step), run.preview(e))) == jobs.RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    assert previews and bridge.COLOR_ATTRIBUTE in obj.data.attributes, "a live preview was shown"
    assert job.progress.total == 200 and 0 < job.progress.fraction < 1
    job.cancel()
    while jobs.drain(job, run.preview) == jobs.RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    level, message = runs.conclude(job, run)
    assert job.state == jobs.CANCELLED and level == 'WARNING' and "cancelled" in message
    assert jobs.current() is None
    assert_same_state(before, object_state(obj))


def test_failure_is_reported_and_changes_nothing(scene):
    obj = make_lamp(user_data=True)
    set_panel("red base, blue handle")
    before = object_state(obj)
    with pytest.raises(RuntimeError, match="no vertex group 'part:handle'"):
        bpy.ops.partstyle.stylize()
    bpy.context.scene.partstyle.overrides = "optim.no_such_setting=1"
    with pytest.raises(RuntimeError, match="unknown setting 'optim.no_such_setting'"):
        bpy.ops.partstyle.stylize()
    assert_same_state(before, object_state(obj))
    assert jobs.current() is None


def test_results_survive_save_and_reload(scene, tmp_path):
    obj = make_lamp()
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    saved = object_state(obj)
    path = str(tmp_path / "styled.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert "Lamp" not in bpy.data.objects
    bpy.ops.wm.open_mainfile(filepath=path)
    assert_same_state(saved, object_state(bpy.data.objects["Lamp"]))
    assert bpy.context.scene.partstyle.prompt == PROMPT and len(bpy.context.scene.partstyle.parts) == 3
