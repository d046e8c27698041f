"""The Blender add-on, through its operators, with Blender as the ``bpy`` module and tiny models.

The operators run synchronously here (``execute``, as in ``--background``); the threaded path is
tested through the job API with :func:`addon.jobs.drain` called directly (timers never fire in
the module).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import (
    FAST_OVERRIDES,
    ITERATIONS,
    LOCATE_OVERRIDES,
    PROMPT,
    SEED,
    assert_same_state,
    attribute_values,
    group_weights,
    lamp_arrays,
    make_lamp,
    object_state,
    set_panel,
)
from tolerances import CHANGED, SAME_MATH, assert_close, relative_difference

import addon
from addon import bridge, engine_link, jobs, nodes, runs


def _registered() -> bool:
    return hasattr(bpy.types.Scene, "partstyle")


pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene


def engine_result(obj_name: str, *, overrides=FAST_OVERRIDES):
    """What engine.api.stylize gives for the same object, groups, prompt and settings."""
    from engine.api import stylize
    from engine.config import settings_for
    from engine.mesh import mesh_from_arrays
    from engine.parts import PartWeights
    from engine.request import StyleRequest

    obj = bpy.data.objects[obj_name]
    vertices, faces = bridge.mesh_arrays(obj)
    mesh = mesh_from_arrays(vertices, faces)
    groups = {name[len("part:"):]: w for name, w in group_weights(obj).items() if name.startswith("part:")}
    settings = settings_for("fast", {"run.seed": SEED, "optim.iterations": ITERATIONS, "views.up_axis": "z",
                                     **dict(o.split("=") for o in overrides)})
    parts = PartWeights.from_vertex_groups(groups, mesh.num_vertices)
    return stylize(mesh, StyleRequest(PROMPT, parts=parts), settings=settings, models="tiny", device="cpu")


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
    # The tiny grounding model and segmenter find the parts of the Z-up lamp (Blender's frame reaches
    # the engine), the thin tube included.
    _, _, labels, names = lamp_arrays()
    stacked = np.stack([weights[f"part:{n}"] for n in names], 1)
    located = np.where(stacked.max(1) > 0.5, stacked.argmax(1), -1)
    for k, name in enumerate(names):
        iou = np.sum((located == k) & (labels == k)) / np.sum((located == k) | (labels == k))
        assert iou >= 0.6, (name, iou)
    # Each part's confidence is kept with the mesh, and the next Stylize uses the groups.
    confidence = bridge.read_confidence(obj)
    assert set(confidence) == set(names) and all(0.0 < c <= 1.0 for c in confidence.values()), confidence
    assert bpy.context.scene.partstyle.use_vertex_groups
    assert bpy.ops.partstyle.show_parts() == {'FINISHED'}
    from addon import panels

    shown = [c[1] for c in _draw(panels.PARTSTYLE_PT_parts, bpy.context) if c[0] == "label"]
    assert all(any(re.fullmatch(rf"{name}: \d+%", text) for text in shown) for name in names), shown


def test_a_correction_painted_into_a_located_group_is_respected_by_stylize(scene):
    """Locate, then take the tube out of its group by hand: Stylize leaves the tube exactly as it was."""
    obj = make_lamp(groups=False, user_data=True)
    set_panel(use_groups=False, overrides=(*FAST_OVERRIDES, *LOCATE_OVERRIDES))
    assert bpy.ops.partstyle.locate() == {'FINISHED'}
    tube = obj.vertex_groups["part:tube"]
    tube.remove(list(range(len(obj.data.vertices))))  # the user's correction: no vertex is the tube
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    mesh = obj.data
    _, _, labels, names = lamp_arrays()
    unstyled = labels == names.index("tube")
    for name in ("part:base", "part:shade"):
        unstyled &= group_weights(obj)[name] == 0.0
    assert unstyled.sum() > 0.9 * (labels == names.index("tube")).sum()
    colors = np.empty(len(mesh.vertices) * 4, np.float32)
    mesh.attributes[bridge.COLOR_ATTRIBUTE].data.foreach_get("color", colors)
    np.testing.assert_array_equal(colors.reshape(-1, 4)[unstyled, :3], bridge.user_colors(mesh)[unstyled])
    assert np.all(bridge.read_float(mesh, bridge.DISPLACEMENT_ATTRIBUTE)[unstyled] == 0.0)


def test_stylize_writes_the_engines_result(scene):
    obj = make_lamp()
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    expected = engine_result("Lamp")
    mesh = obj.data
    colors = np.empty(len(mesh.vertices) * 4, np.float32)
    mesh.attributes[bridge.COLOR_ATTRIBUTE].data.foreach_get("color", colors)
    assert_close(colors.reshape(-1, 4)[:, :3], expected.colors_linear, rel=SAME_MATH, what="colors in Blender")
    assert_close(bridge.read_float(mesh, bridge.DISPLACEMENT_ATTRIBUTE), expected.displacement, rel=SAME_MATH,
                 what="displacement in Blender")
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
    assert_close(moved, vertices + 2.0 * expected.displacement[:, None] * normals.reshape(-1, 3), rel=SAME_MATH,
                 what="positions displaced by the modifier")
    np.testing.assert_array_equal(bridge.mesh_arrays(obj)[0], vertices)


def test_rerun_replaces_and_clear_restores_the_users_data(scene):
    obj = make_lamp(user_data=True)
    before = object_state(obj)
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    bpy.context.scene.partstyle.seed = SEED + 1
    assert bpy.ops.partstyle.stylize('INVOKE_DEFAULT') == {'FINISHED'}  # --background: invoke runs synchronously
    after = object_state(obj)
    ours = {bridge.COLOR_ATTRIBUTE, bridge.DISPLACEMENT_ATTRIBUTE}
    assert set(after["attributes"]) - set(before["attributes"]) == ours
    assert after["materials"] == before["materials"], "an object with its own material keeps exactly that"
    assert after["modifiers"] == [(nodes.MODIFIER_NAME, 'NODES')]
    for name, (_, _, values) in before["attributes"].items():
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


def start_until_first_preview(run, timeout: float = 60.0):
    """Start ``run`` on its worker thread and drain its events until the first live preview was shown.

    Returns ``(job, previews, deadline)``: the running job, the PreviewEvents seen, and the time by which
    the test should be done waiting."""
    job = runs.start(run, threaded=True)
    deadline = time.time() + timeout
    previews = []
    while not previews and jobs.drain(job, lambda e: (previews.append(e), run.preview(e))) == jobs.RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    return job, previews, deadline


def test_cancel_during_a_threaded_run_leaves_the_object_unchanged(scene):
    obj = make_lamp(user_data=True)
    set_panel(iterations=200, overrides=(*FAST_OVERRIDES, "run.preview_every=1"))
    before = object_state(obj)
    run = runs.StyleRun(addon.operators.request_from(bpy.context))
    job, previews, deadline = start_until_first_preview(run)
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
    with pytest.raises(RuntimeError, match=r"unknown setting 'optim\.no_such_setting'"):
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
    # the record of what the add-on made survives too: a rerun replaces its own data, adds nothing
    bpy.context.scene.partstyle.seed = SEED + 1
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    again = object_state(bpy.data.objects["Lamp"])
    assert again["attributes"].keys() == saved["attributes"].keys() and again["modifiers"] == saved["modifiers"]
    assert again["materials"] == saved["materials"]


def test_drain_handles_events_results_errors_and_cancel_without_timers():
    from engine.errors import PromptError
    from engine.events import NoticeEvent, PreviewEvent, StageEvent, StepEvent

    def work(on_event, cancel):
        on_event(StageEvent("loading models"))
        for step in (1, 2, 3):
            on_event(StepEvent(step, 3, {"total": 0.5}, 1e-3, 0.1 * step, 0.1 * (3 - step)))
            on_event(PreviewEvent(step, 3, np.full((4, 3), step, np.float32), np.zeros(4, np.float32)))
        on_event(NoticeEvent("a skipped step"))
        return "result"

    job = jobs.Job("Stylize", "Lamp", work).start(threaded=False)
    assert job.state == jobs.RUNNING, "nothing happens on the main thread before drain"
    previews = []
    assert jobs.drain(job, previews.append) == jobs.FINISHED
    assert [p.step for p in previews] == [3], "only the newest preview is shown"
    assert job.result == "result" and job.notices == ["a skipped step"]
    assert (job.progress.step, job.progress.total, job.progress.fraction) == (3, 3, 1.0)

    def failing(on_event, cancel):
        raise PromptError("phrase 2 is empty")

    job = jobs.Job("Stylize", "Lamp", failing).start(threaded=True)
    job.thread.join(10)
    assert jobs.drain(job) == jobs.FAILED and str(job.error) == "phrase 2 is empty"

    def waiting(on_event, cancel):
        while True:
            cancel.raise_if_cancelled()
            time.sleep(0.005)

    job = jobs.Job("Stylize", "Lamp", waiting).start(threaded=True)
    assert jobs.drain(job) == jobs.RUNNING
    job.cancel()
    assert job.cancelling
    job.thread.join(10)
    assert jobs.drain(job) == jobs.CANCELLED


def test_missing_dependencies_are_explained(monkeypatch):
    state = engine_link.EngineStatus("engine", {"numpy": "1.26.4"}, ("torch", "transformers"))
    assert not state.ok
    assert "needs torch, transformers" in state.summary() and "-m pip install" in state.summary()
    assert "reinstall" in engine_link.EngineStatus("").summary()
    monkeypatch.setattr(engine_link, "status", lambda: state)
    with pytest.raises(engine_link.AddonError, match="needs torch"):
        engine_link.load("api")
    assert engine_link.load("prompt", light=True).parse_prompt("red base, blue shade").parts == ("base", "shade")


class _Layout:
    """Records what a draw function asks for and checks that every property and operator exists."""

    def __init__(self, calls):
        self.calls, self.use_property_split, self.ui_units_x = calls, False, 0

    def _child(self, *args, **kwargs):
        return _Layout(self.calls)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        base = name.split("[")[0]
        assert base == "" or base in data.bl_rna.properties, f"no property {name!r} on {data}"
        self.calls.append(("prop", name))

    def operator(self, idname, **kwargs):
        group, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, group), name), f"no operator {idname}"
        self.calls.append(("operator", idname))
        return type("Props", (), {})()

    def label(self, **kwargs):
        self.calls.append(("label", kwargs.get("text", "")))

    def progress(self, **kwargs):
        self.calls.append(("progress", kwargs["factor"], kwargs["text"]))

    def template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kwargs):
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.calls.append(("list", prop))

    def template_ID(self, data, prop, **kwargs):
        assert prop in data.bl_rna.properties, f"no property {prop!r} on {data}"
        for idname in (kwargs.get("new"), kwargs.get("open")):
            if idname:
                group, name = idname.split(".")
                assert hasattr(getattr(bpy.ops, group), name), f"no operator {idname}"
        self.calls.append(("template_ID", prop, kwargs.get("open")))


def _draw(panel_class, context, **attributes):
    calls = []
    panel = type("Fake", (), {"layout": _Layout(calls), **attributes})()
    panel_class.draw(panel, context)
    return calls


def test_the_panel_estimate_counts_the_chosen_models_and_their_localization(scene):
    obj = make_lamp()
    settings = set_panel(use_groups=False, overrides=())

    def gigabytes() -> float:
        return float(re.match(r"Memory: about (\d+\.\d) GB", runs.memory_estimate(obj, settings)).group(1))

    located_tiny = gigabytes()
    settings.models = 'default'  # the real CLIP, Grounding DINO and SAM 2: 1.3 GB of weights, not downloaded
    located_real = gigabytes()
    settings.use_vertex_groups = True  # the parts come from vertex groups: no segmenter, no localization
    grouped_real = gigabytes()
    assert located_real > located_tiny + 1.2
    assert grouped_real < located_real
    settings.preset = 'faithful'  # a grounding step of 3 views instead of 1
    assert gigabytes() > grouped_real + 2.0


def test_panels_and_preferences_draw_existing_properties(scene):
    from addon import panels, preferences

    obj = make_lamp()
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    context = bpy.context
    calls = [c for p in panels.classes[1:] for c in _draw(p, context)]
    assert ("operator", "partstyle.stylize") in calls and ("operator", "partstyle.locate") in calls
    assert ("operator", "partstyle.apply_as_new") in calls and ("prop", "relief") in calls
    bpy.context.scene.partstyle.relief = 'custom'
    assert ("prop", "relief_custom") in _draw(panels.PARTSTYLE_PT_stylize, context)
    assert ("prop", f'["{nodes.strength_key(nodes.displace_modifier(obj))}"]') in calls
    estimate = next(c[1] for c in _draw(panels.PARTSTYLE_PT_stylize, context) if c[0] == "label")
    assert re.fullmatch(r"Memory: about \d+\.\d GB \(optimizing [\d,]+ vertices\)", estimate), estimate
    bpy.context.scene.partstyle.overrides = "field.max_vertices=1000"
    estimate = next(c[1] for c in _draw(panels.PARTSTYLE_PT_stylize, context) if c[0] == "label")
    assert f"a copy of 1,000 of its {len(obj.data.vertices):,} vertices" in estimate, estimate
    job = jobs.claim(jobs.Job("Stylize", "Lamp", lambda on_event, cancel: None))
    try:
        job.progress.step, job.progress.total, job.progress.eta = 30, 300, 65
        calls = _draw(panels.PARTSTYLE_PT_stylize, context)
        assert ("progress", 0.1, "30/300, 1:05 left") in calls and ("operator", "partstyle.cancel") in calls
    finally:
        jobs.release(job)
    row = bpy.context.scene.partstyle.parts[0]
    panels.PARTSTYLE_UL_parts.draw_item(None, context, _Layout(calls := []), None, row, 0, None, "", 0)
    assert ("prop", "style") in calls and ("operator", "partstyle.paint_part") in calls
    assert ("prop", "relief") in calls and ("prop", "relief_custom") not in calls
    row.relief = 'custom'
    panels.PARTSTYLE_UL_parts.draw_item(None, context, _Layout(calls := []), None, row, 0, None, "", 0)
    assert ("prop", "relief_custom") in calls
    prefs = {"model_source": 'folder', "model_folder": "", "allow_download": True, "device": 'auto',
             "bl_rna": preferences.PARTSTYLE_AP_preferences.bl_rna}
    calls = _draw(preferences.PARTSTYLE_AP_preferences, context, **prefs)
    assert any(c[0] == "label" and "torch" in c[1] for c in calls)
    assert any(c[0] == "label" and "Online Access" in c[1] for c in calls)


def test_locked_part_keeps_its_earlier_result(scene):
    obj = make_lamp()
    settings = set_panel()
    settings.parts[0].lock = True  # base
    with pytest.raises(RuntimeError, match="Nothing to keep for the locked part"):
        bpy.ops.partstyle.stylize()
    settings.parts[0].lock = False
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    first = bridge.read_color(obj.data, bridge.COLOR_ATTRIBUTE).copy()
    first_shift = bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE).copy()
    settings.parts[0].lock = True
    settings.parts[2].style = "green"
    settings.seed = SEED + 5
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    base = group_weights(obj)["part:base"] == 1.0
    second = bridge.read_color(obj.data, bridge.COLOR_ATTRIBUTE)
    assert_close(second[base], first[base], rel=SAME_MATH, what="locked colors")
    assert_close(bridge.read_float(obj.data, bridge.DISPLACEMENT_ATTRIBUTE)[base], first_shift[base], rel=SAME_MATH,
                 what="locked displacement")
    assert relative_difference(second[~base], first[~base]) > CHANGED


def test_part_rows_reach_the_engine_as_parsed_pairs(scene):
    """Rows are sent as (part, style) pairs, not re-written as prompt text: a style with a comma, which
    no prompt text could carry for one part, stays one style; a repeated part is refused before work."""
    make_lamp()
    settings = set_panel("red base, blue shade")
    settings.parts[0].style = "black, white marble"
    run = runs.StyleRun(addon.operators.request_from(bpy.context)).prepare(live=False)
    assert [(p.part, p.style) for p in run.style_request.prompt.pairs] == [
        ("base", "black, white marble"), ("shade", "blue")]
    settings.parts[1].part = "Base "
    with pytest.raises(engine_link.user_errors(), match="'base' is given twice"):
        runs.StyleRun(addon.operators.request_from(bpy.context)).prepare(live=False)


def _point_cloud(name: str, count: int):
    """A mesh object of ``count`` loose vertices (vertex groups need no faces)."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(count)
    mesh.vertices.foreach_set("co", np.random.default_rng(0).random(count * 3, dtype=np.float32))
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def test_vertex_groups_are_written_in_linear_time(scene):
    """3 part groups at 300k vertices, written and then refilled. One VertexGroup.add per weight step in
    use (at most 1024), not one per distinct weight scanning every vertex: that took 84 s on the 2-core
    test machine for one write, this about 0.3 s. Weights are the engine's rounded down to 1/1024."""
    count, parts = 300_000, ["base", "tube", "shade"]
    obj = _point_cloud("Cloud", count)
    rng = np.random.default_rng(1)
    weights = rng.random((count, 4)).astype(np.float32)
    weights /= weights.sum(1, keepdims=True)  # a vertex's part weights sum to at most 1, as the engine's
    weights[rng.random(count) < 0.3, 0] = 0.0
    weights[:5, :3] = [[1, 0, 0], [0.99999994, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 0.0004]]
    start = time.perf_counter()
    bridge.write_groups(obj, parts, weights[:, :3])
    bridge.write_groups(obj, parts, weights[:, :3])  # a rerun refills the add-on's own groups
    seconds = time.perf_counter() - start
    assert seconds < 10.0, f"writing 3 vertex groups twice at {count} vertices took {seconds:.1f} s"
    written = group_weights(obj)
    stacked = np.stack([written[f"part:{p}"] for p in parts], 1)
    step = 1.0 / bridge.WEIGHT_STEPS
    assert np.all(stacked <= weights[:, :3] + 1e-6), "never above the engine's weight"
    assert np.all(stacked > weights[:, :3] - step), "less than one step below it"
    assert stacked.sum(1).max() <= 1.0, "a vertex's weights still sum to at most 1"
    np.testing.assert_array_equal(stacked[:5], [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [341 / 1024] * 3, [0, 0, 0]])
    assert sorted(bridge.owned(obj.data)[bridge.GROUPS]) == sorted(f"part:{p}" for p in parts)


def _colors_without_an_active_one(obj) -> None:
    """The user's color attributes as Blender leaves them after deleting the active one and adding
    others: none active, ``Paint`` chosen for rendering."""
    colors = obj.data.color_attributes
    colors.remove(colors["Col"])
    colors.new("Paint", 'FLOAT_COLOR', 'POINT')
    colors.new("Col", 'BYTE_COLOR', 'CORNER')
    colors.render_color_index = colors.find("Paint")
    assert (colors.active_color_name, colors.default_color_name) == ("", "Paint")


def test_cancel_and_failure_give_back_the_active_and_render_colors(scene):
    from engine.errors import PartstyleError
    from engine.events import PreviewEvent

    obj = make_lamp(user_data=True)
    _colors_without_an_active_one(obj)
    set_panel(iterations=200, overrides=(*FAST_OVERRIDES, "run.preview_every=1"))
    before = object_state(obj)
    run = runs.StyleRun(addon.operators.request_from(bpy.context))
    job, _previews, deadline = start_until_first_preview(run)
    assert obj.data.color_attributes.active_color_name == bridge.COLOR_ATTRIBUTE, "the preview switched it"
    job.cancel()
    while jobs.drain(job, run.preview) == jobs.RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    assert runs.conclude(job, run)[0] == 'WARNING' and job.state == jobs.CANCELLED
    assert_same_state(before, object_state(obj))

    count = len(obj.data.vertices)

    def failing(on_event, cancel):
        on_event(PreviewEvent(1, 2, np.full((count, 3), 0.5, np.float32), np.zeros(count, np.float32)))
        raise PartstyleError("the engine gave up")

    run = runs.StyleRun(addon.operators.request_from(bpy.context)).prepare(live=False)
    job = jobs.claim(jobs.Job(run.kind, obj.name, failing)).start(threaded=False)
    assert jobs.drain(job, run.preview) == jobs.FAILED
    assert obj.data.color_attributes.active_color_name == bridge.COLOR_ATTRIBUTE, "the preview switched it"
    assert runs.conclude(job, run) == ('ERROR', "the engine gave up")
    assert_same_state(before, object_state(obj))


def test_deleting_the_object_stops_the_run_and_writes_nothing(scene):
    obj = make_lamp(user_data=True)
    mesh_name = obj.data.name
    set_panel(iterations=200, overrides=(*FAST_OVERRIDES, "run.preview_every=1"))
    colors = obj.data.color_attributes
    before = ({a.name: attribute_values(a) for a in obj.data.attributes}, colors.active_color_name,
              colors.default_color_name, sorted(obj.data.keys()))
    run = runs.StyleRun(addon.operators.request_from(bpy.context))
    job, _previews, deadline = start_until_first_preview(run)
    assert bridge.COLOR_ATTRIBUTE in obj.data.attributes, "a preview was shown"
    bpy.data.objects.remove(obj)
    jobs.drain(job, run.preview)  # the main thread sees that the object is gone and cancels
    assert job.cancel_token.cancelled and "'Lamp' was deleted" in job.stop_reason
    stopped_at = job.progress.step
    while jobs.drain(job, run.preview) == jobs.RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    assert job.state == jobs.CANCELLED and job.progress.step <= stopped_at + 2 < 200, "the engine stopped"
    level, message = runs.conclude(job, run)
    assert level == 'ERROR' and "'Lamp' was deleted" in message and "nothing was written" in message
    assert jobs.current() is None
    mesh = bpy.data.meshes[mesh_name]  # the object's mesh outlives it until the file is saved
    colors = mesh.color_attributes
    after = ({a.name: attribute_values(a) for a in mesh.attributes}, colors.active_color_name,
             colors.default_color_name, sorted(mesh.keys()))
    assert after[0].keys() == before[0].keys() and after[1:] == before[1:]
    for name, values in before[0].items():
        np.testing.assert_array_equal(after[0][name], values, err_msg=name)
