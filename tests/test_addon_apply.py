"""Apply as new object: a plain copy of a styled object, the displacement in its positions and the
Partstyle colors as its render colors, so that Blender's default exporters keep both (checked with
Blender's own glTF exporter and trimesh reading the file back)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import assert_same_state, make_lamp, object_state, set_panel
from tolerances import SAME_MATH, assert_close

from addon import apply, bridge, nodes

#: The displacement of a 4-step test run is about 1e-4 of the lamp's size; a large Strength makes the
#: applied shape differ from the original far beyond any tolerance (the copy must carry the Strength).
STRENGTH = 150.0


pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene


def _positions(mesh) -> np.ndarray:
    """[V, 3] float32 positions of a mesh's vertices, or of a shape key's points."""
    points = mesh.data if isinstance(mesh, bpy.types.ShapeKey) else mesh.vertices
    values = np.empty(len(points) * 3, np.float32)
    points.foreach_get("co", values)
    return values.reshape(-1, 3)


def _evaluated_positions(obj) -> np.ndarray:
    obj.update_tag()
    return _positions(obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data)


def _styled_lamp(**kwargs):
    """A stylized lamp with its modifier's Strength at STRENGTH; returns it and its base positions,
    displacement and linear colors."""
    obj = make_lamp(**kwargs)
    set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    modifier = nodes.displace_modifier(obj)
    modifier[nodes.strength_key(modifier)] = STRENGTH
    mesh = obj.data
    shift = bridge.read_float(mesh, bridge.DISPLACEMENT_ATTRIBUTE)
    assert np.abs(shift).max() * STRENGTH > 1e-3 * np.ptp(_positions(mesh), 0).max(), "a visible displacement"
    return obj, _positions(mesh), shift, bridge.read_color(mesh, bridge.COLOR_ATTRIBUTE)


def _expected(obj, positions, shift) -> np.ndarray:
    """The Partstyle modifier's maths: position + displacement x Strength x vertex normal (float64)."""
    normals = apply.vertex_normals(obj.data).astype(np.float64)
    return positions + (shift.astype(np.float64) * STRENGTH)[:, None] * normals


def test_apply_as_new_bakes_the_displacement_and_keeps_the_original(scene):
    obj, positions, shift, colors = _styled_lamp(user_data=True)
    before = object_state(obj)
    shown = _evaluated_positions(obj)
    scale = np.abs(positions).max()

    assert bpy.ops.partstyle.apply_as_new() == {'FINISHED'}
    copy = bpy.context.view_layer.objects.active
    assert copy is not obj and copy.name == "Lamp styled" and copy.data is not obj.data
    assert copy.select_get() and not obj.select_get()
    assert [o.name for o in bpy.context.view_layer.objects if o.select_get()] == ["Lamp styled"]
    assert [c.name for c in copy.users_collection] == [c.name for c in obj.users_collection]
    assert tuple(copy.matrix_world.col[3]) == tuple(obj.matrix_world.col[3])

    # positions: the modifier's result, in plain mesh data
    moved = _positions(copy.data)
    assert_close(moved, _expected(obj, positions, shift), rel=SAME_MATH, scale=scale, what="applied positions")
    assert_close(moved, shown, rel=SAME_MATH, scale=scale, what="applied positions against the modifier's")
    np.testing.assert_array_equal(_evaluated_positions(copy), moved)  # nothing else moves them
    assert np.abs(moved - positions).max() > 1e-3 * scale
    # no Partstyle modifier, no displacement or parts attribute left to apply twice; the colors render
    assert nodes.displace_modifier(copy) is None
    assert not any(m.type == 'NODES' and nodes.is_ours(m.node_group) for m in copy.modifiers)
    assert bridge.DISPLACEMENT_ATTRIBUTE not in copy.data.attributes
    assert bridge.owned_attribute(copy.data, bridge.DISPLACEMENT) is None
    color_attributes = copy.data.color_attributes
    assert color_attributes.default_color_name == bridge.COLOR_ATTRIBUTE
    assert color_attributes.active_color_name == bridge.COLOR_ATTRIBUTE
    np.testing.assert_array_equal(bridge.read_color(copy.data, bridge.COLOR_ATTRIBUTE), colors)
    # the user's data comes along
    assert "Col" in color_attributes and "Mine" in copy.vertex_groups
    assert [m.name for m in copy.data.materials] == ["UserMaterial"]
    # the original is exactly as it was
    assert_same_state(before, object_state(obj))
    np.testing.assert_array_equal(_positions(obj.data), positions)
    assert_close(_evaluated_positions(obj), shown, rel=SAME_MATH, scale=scale, what="original still displaced")

    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.partstyle.apply_as_new() == {'FINISHED'}
    assert bpy.context.view_layer.objects.active.name == "Lamp styled.001", "a free name"


def test_apply_as_new_needs_a_result(scene):
    make_lamp()
    with pytest.raises(RuntimeError, match="has no Partstyle result yet; Stylize it first"):
        bpy.ops.partstyle.apply_as_new()
    assert [o.name for o in bpy.data.objects] == ["Lamp"]


def test_one_undo_step_removes_the_copy(scene):
    obj, *_ = _styled_lamp()
    before = object_state(obj)
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == 'VIEW_3D')
    with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=area.regions[-1]):
        bpy.ops.ed.undo_push(message="before Apply as new object")  # as in test_addon.py's undo test
        assert bpy.ops.partstyle.apply_as_new() == {'FINISHED'}
        bpy.ops.ed.undo_push(message="Apply as new object")
        assert "Lamp styled" in bpy.data.objects
        bpy.ops.ed.undo()
    assert "Lamp styled" not in bpy.data.objects
    assert_same_state(before, object_state(bpy.data.objects["Lamp"]))


def _gltf_exporter() -> None:
    """Blender's bundled glTF exporter (the io_scene_gltf2 add-on), enabled; skips when it is missing."""
    if not hasattr(bpy.ops.export_scene, "gltf"):
        import addon_utils

        addon_utils.enable("io_scene_gltf2", default_set=True)
    if not hasattr(bpy.ops.export_scene, "gltf"):
        pytest.skip("Blender's glTF exporter (io_scene_gltf2) is not available in this bpy build")


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] distances between the rows of [N, 3] ``a`` and [M, 3] ``b`` (float64)."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _glb_json(path: str) -> dict:
    """The JSON chunk of a .glb file (the binary glTF's first chunk)."""
    with open(path, "rb") as file:
        data = file.read()
    length, kind = struct.unpack("<II", data[12:20])
    assert kind == 0x4E4F534A  # "JSON"
    return json.loads(data[20:20 + length])


def test_default_gltf_export_of_the_copy_keeps_shape_and_colors(scene, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    _gltf_exporter()
    _obj, positions, _shift, colors = _styled_lamp()
    assert bpy.ops.partstyle.apply_as_new() == {'FINISHED'}
    displaced = _positions(bpy.context.view_layer.objects.active.data).astype(np.float64)
    path = str(tmp_path / "styled.glb")
    assert bpy.ops.export_scene.gltf(filepath=path, export_format='GLB', use_selection=True) == {'FINISHED'}

    primitives = [p for mesh in _glb_json(path)["meshes"] for p in mesh["primitives"]]
    assert len(primitives) == 1 and "COLOR_0" in primitives[0]["attributes"], primitives
    scene_ = trimesh.load(path, process=False)
    assert len(scene_.geometry) == 1
    node = scene_.graph.nodes_geometry[0]
    transform, name = scene_.graph[node]
    np.testing.assert_array_equal(transform, np.eye(4))
    exported = scene_.geometry[name]
    y_up = np.asarray(exported.vertices, np.float64)
    got = np.stack([y_up[:, 0], -y_up[:, 2], y_up[:, 1]], 1)  # glTF's +Y up back to Blender's +Z up

    # The exporter splits vertices (per corner normal), so compare sets: every exported position is a
    # displaced vertex, every displaced vertex was exported, and the bounds agree.
    scale = np.abs(displaced).max()
    tolerance = SAME_MATH * scale
    distance = _distances(got, displaced)
    assert distance.min(1).max() <= tolerance, "an exported position is not a displaced vertex"
    assert distance.min(0).max() <= tolerance, "a displaced vertex is missing from the file"
    assert_close(np.stack([got.min(0), got.max(0)]), np.stack([displaced.min(0), displaced.max(0)]), rel=SAME_MATH,
                 scale=scale, what="bounds of the exported mesh")
    original = positions.astype(np.float64)
    assert _distances(got, original).min(1).max() > 100 * tolerance, "the file has the displaced shape, not the input"

    # COLOR_0: the Partstyle colors (linear, as glTF stores them) of the vertex at each position
    rgb = exported.visual.vertex_attributes.get("color") if hasattr(exported.visual, "vertex_attributes") else None
    if rgb is None:
        rgb = np.asarray(exported.visual.vertex_colors, np.float64) / 255.0
    rgb = np.asarray(rgb, np.float64)[:, :3]
    assert rgb.shape == got.shape
    same_place = distance <= tolerance
    color_error = np.where(same_place, np.abs(rgb[:, None, :] - colors[None, :, :]).max(2), np.inf).min(1)
    assert color_error.max() <= 1.5 / 255, f"colors differ by up to {color_error.max() * 255:.2f} / 255"


def test_shape_keys_move_with_the_surface_and_notes_say_what_was_not_applied(scene):
    obj, positions, shift, _colors = _styled_lamp()
    scale = np.abs(positions).max()
    obj.shape_key_add(name="Basis")
    raised = obj.shape_key_add(name="Raised")
    raised.data.foreach_set("co", (positions + np.float32(0.1) * np.eye(3, dtype=np.float32)[2]).ravel())
    users = obj.modifiers.new("Users Displace", 'DISPLACE')
    users.strength = 0.0
    obj.modifiers.move(len(obj.modifiers) - 1, 0)  # before the Partstyle modifier
    copy, notes = apply.apply_as_new(obj, bpy.context)
    assert len(notes) == 1 and "now comes before the modifier(s) Users Displace" in notes[0]
    assert [m.name for m in copy.modifiers] == ["Users Displace"], "the user's modifiers stay"
    offsets = _expected(obj, positions, shift) - positions
    for key in copy.data.shape_keys.key_blocks:
        shape = _positions(key)
        original = _positions(obj.data.shape_keys.key_blocks[key.name])
        assert_close(shape, original + offsets, rel=SAME_MATH, scale=scale, what=f"shape key {key.name}")

    nodes.displace_modifier(obj).show_viewport = False
    copy, notes = apply.apply_as_new(obj, bpy.context)
    assert len(notes) == 1 and "turned off in the viewport" in notes[0]
    np.testing.assert_array_equal(_positions(copy.data), positions)
