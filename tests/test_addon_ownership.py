"""The add-on replaces and removes only what it made, recognized by its record (the custom property
``partstyle_owned``) and the tag on its node group and material, never by the name: the user's data
that happens to carry the add-on's default names survives Stylize, Locate parts, Show parts and
Clear results untouched, and the add-on's own data goes to free names (``Partstyle.001``).
"""

from __future__ import annotations

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import (
    LOCATE_OVERRIDES,
    SEED,
    assert_same_state,
    group_weights,
    make_lamp,
    object_state,
    set_panel,
)
from tolerances import SAME_MATH, assert_close

from addon import bridge, jobs, nodes

pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene


def _users_node_group() -> bpy.types.GeometryNodeTree:
    """A pass-through Geometry Nodes group of the user's, named like the add-on's."""
    group = bpy.data.node_groups.new("Partstyle Displace", 'GeometryNodeTree')
    group.interface.new_socket(name="Geometry", in_out='INPUT', socket_type='NodeSocketGeometry')
    group.interface.new_socket(name="Geometry", in_out='OUTPUT', socket_type='NodeSocketGeometry')
    group_in, group_out = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
    group.links.new(group_in.outputs["Geometry"], group_out.inputs["Geometry"])
    return group


def _with_users_data_named_like_the_add_ons(obj, modifier_type: str) -> None:
    """A color attribute ``Partstyle`` (the render color), a float attribute ``Partstyle Displacement``
    and a modifier ``Partstyle Displace`` that leaves the shape as it is, all the user's."""
    mesh = obj.data
    count = len(mesh.vertices)
    colors = mesh.color_attributes.new(bridge.COLOR_ATTRIBUTE, 'FLOAT_COLOR', 'POINT')
    colors.data.foreach_set("color", np.tile([0.9, 0.1, 0.5, 1.0], count).astype(np.float32))
    mesh.color_attributes.render_color_index = mesh.color_attributes.find(bridge.COLOR_ATTRIBUTE)
    shift = mesh.attributes.new(bridge.DISPLACEMENT_ATTRIBUTE, 'FLOAT', 'POINT')
    shift.data.foreach_set("value", np.full(count, 0.25, np.float32))
    modifier = obj.modifiers.new(nodes.MODIFIER_NAME, modifier_type)
    if modifier_type == 'NODES':
        modifier.node_group = _users_node_group()
    else:
        modifier.strength = 0.0  # a Displace modifier that moves nothing
    assert modifier.name == nodes.MODIFIER_NAME


def _evaluated_positions(obj) -> np.ndarray:
    obj.update_tag()
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    positions = np.empty(len(evaluated.data.vertices) * 3, np.float32)
    evaluated.data.vertices.foreach_get("co", positions)
    return positions.reshape(-1, 3)


@pytest.mark.parametrize("modifier_type", ['DISPLACE', 'NODES'])
def test_users_data_named_like_the_add_ons_survives_stylize_and_clear(scene, modifier_type):
    obj = make_lamp(user_data=True)
    _with_users_data_named_like_the_add_ons(obj, modifier_type)
    mesh = obj.data
    before = object_state(obj)
    settings = set_panel()
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    settings.seed = SEED + 1
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}

    after = object_state(obj)
    for name, (_, _, values) in before["attributes"].items():
        np.testing.assert_array_equal(after["attributes"][name][2], values, err_msg=f"the user's {name} changed")
    color, shift = bridge.COLOR_ATTRIBUTE + ".001", bridge.DISPLACEMENT_ATTRIBUTE + ".001"
    assert set(after["attributes"]) - set(before["attributes"]) == {color, shift}
    assert bridge.owned_attribute(mesh, bridge.COLOR) == color
    assert bridge.owned_attribute(mesh, bridge.DISPLACEMENT) == shift
    assert mesh.color_attributes.active_color_name == color
    assert after["render_color"] == bridge.COLOR_ATTRIBUTE, "the user's render color stays chosen"
    ours = nodes.displace_modifier(obj)
    assert ours.name == nodes.MODIFIER_NAME + ".001"
    assert after["modifiers"] == [*before["modifiers"], (ours.name, 'NODES')], "one modifier, after the user's"
    assert after["modifier_groups"][0] == before["modifier_groups"][0], "the user's modifier keeps its node group"
    assert sum(nodes.is_ours(m.node_group) for m in obj.modifiers if m.type == 'NODES') == 1

    # The displacement is applied once, and it is the add-on's, not the user's attribute of the default name.
    vertices, _ = bridge.mesh_arrays(obj)
    normals = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("normal", normals)
    expected = vertices + bridge.read_float(mesh, shift)[:, None] * normals.reshape(-1, 3)
    assert_close(_evaluated_positions(obj), expected, rel=SAME_MATH, what="positions displaced once")

    assert bpy.ops.partstyle.clear() == {'FINISHED'}
    assert_same_state(before, object_state(obj))
    if modifier_type == 'NODES':
        assert obj.modifiers[nodes.MODIFIER_NAME].node_group.name == "Partstyle Displace"
    assert not any(nodes.is_ours(g) for g in bpy.data.node_groups)


def test_users_material_and_parts_attribute_named_like_the_add_ons_survive(scene):
    users = bpy.data.materials.new(nodes.MATERIAL_NAME)
    users.diffuse_color = (0.3, 0.9, 0.1, 1.0)
    obj = make_lamp()  # no material slot: the add-on adds its own material
    count = len(obj.data.vertices)
    parts_view = obj.data.attributes.new(bridge.PARTS_ATTRIBUTE, 'FLOAT_COLOR', 'POINT')
    parts_view.data.foreach_set("color", np.tile([0.0, 0.0, 1.0, 1.0], count).astype(np.float32))
    before = object_state(obj)
    set_panel()
    assert bpy.ops.partstyle.show_parts() == {'FINISHED'}
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    np.testing.assert_array_equal(object_state(obj)["attributes"][bridge.PARTS_ATTRIBUTE][2],
                                  before["attributes"][bridge.PARTS_ATTRIBUTE][2], err_msg="the user's parts view")
    assert bridge.owned_attribute(obj.data, bridge.PARTS) == bridge.PARTS_ATTRIBUTE + ".001"
    ours = obj.data.materials[0]
    assert nodes.is_ours(ours) and ours.name == nodes.MATERIAL_NAME + ".001"
    assert not nodes.is_ours(users) and tuple(users.diffuse_color) == pytest.approx((0.3, 0.9, 0.1, 1.0))
    assert bpy.ops.partstyle.clear() == {'FINISHED'}
    assert_same_state(before, object_state(obj))
    assert bpy.data.materials.get(nodes.MATERIAL_NAME) == users


def test_clear_keeps_the_users_part_groups_and_removes_located_ones(scene):
    painted = make_lamp("Painted")  # part:<name> groups of the user's ("Use my vertex groups")
    before = object_state(painted)
    set_panel(use_groups=True)
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    assert bpy.ops.partstyle.clear() == {'FINISHED'}  # Keep part groups off
    assert_same_state(before, object_state(painted))

    located = make_lamp("Located", groups=False, user_data=True)
    before = object_state(located)
    set_panel(use_groups=False, overrides=LOCATE_OVERRIDES)
    assert bpy.ops.partstyle.locate() == {'FINISHED'}
    assert sorted(bridge.owned_groups(located)) == ["part:base", "part:shade", "part:tube"]
    bpy.context.scene.partstyle.use_vertex_groups = True
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    assert bpy.ops.partstyle.clear(keep_groups=True) == {'FINISHED'}
    assert sorted(bridge.owned_groups(located)) == ["part:base", "part:shade", "part:tube"]
    assert bpy.ops.partstyle.clear() == {'FINISHED'}
    assert_same_state(before, object_state(located))


def test_locating_never_overwrites_the_users_part_groups(scene):
    obj = make_lamp()  # hand-painted part:base, part:tube, part:shade
    before = object_state(obj)
    set_panel(use_groups=False, overrides=LOCATE_OVERRIDES)
    with pytest.raises(RuntimeError, match="'part:base', 'part:tube', 'part:shade', which Partstyle did not write"):
        bpy.ops.partstyle.locate()
    with pytest.raises(RuntimeError, match="Turn on 'Use my vertex groups'"):
        bpy.ops.partstyle.stylize()
    assert_same_state(before, object_state(obj))
    assert jobs.current() is None
    weights = group_weights(obj)
    assert all(weights[f"part:{p}"].max() == 1.0 for p in ("base", "tube", "shade"))


def _as_an_earlier_version_wrote_it(obj) -> None:
    """Rename the add-on's attributes to the names earlier versions gave them (with spaces), as a file
    saved by such a version has them: the record and the modifier's Attribute input name them."""
    mesh = obj.data
    for role, old in ((bridge.DISPLACEMENT, "Partstyle Displacement"), (bridge.PARTS, "Partstyle Parts")):
        mesh.attributes[bridge.owned_attribute(mesh, role)].name = old
        bridge.claim(mesh, role, old)
    nodes.ensure_modifier(obj, "Partstyle Displacement")  # the modifier reads the attribute it names
    assert nodes.modifier_inputs(nodes.displace_modifier(obj)) == (1.0, "Partstyle Displacement")


def test_results_under_the_earlier_names_with_spaces_are_still_the_add_ons(scene):
    """The default names have no spaces now (USD keeps them); an object styled by an earlier version,
    with ``Partstyle Displacement`` and ``Partstyle Parts``, is still recognized by its record: the
    modifier still displaces, a rerun refills those attributes (adding none), Clear removes them."""
    assert (bridge.COLOR_ATTRIBUTE, bridge.DISPLACEMENT_ATTRIBUTE, bridge.PARTS_ATTRIBUTE) == (
        "Partstyle", "Partstyle_Displacement", "Partstyle_Parts")
    assert not any(" " in name for name, _ in bridge.ATTRIBUTES.values())
    obj = make_lamp(user_data=True)
    mesh = obj.data
    before = object_state(obj)
    settings = set_panel()
    assert bpy.ops.partstyle.show_parts() == {'FINISHED'}
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    _as_an_earlier_version_wrote_it(obj)
    old = {"Partstyle", "Partstyle Displacement", "Partstyle Parts"}
    assert set(object_state(obj)["attributes"]) - set(before["attributes"]) == old
    assert bridge.owned_attribute(mesh, bridge.DISPLACEMENT) == "Partstyle Displacement"
    assert bridge.owned_attributes(mesh) == old
    vertices, _ = bridge.mesh_arrays(obj)
    normals = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("normal", normals)
    shift = bridge.read_float(mesh, "Partstyle Displacement")
    assert_close(_evaluated_positions(obj), vertices + shift[:, None] * normals.reshape(-1, 3), rel=SAME_MATH,
                 what="positions displaced through the earlier name")

    settings.seed = SEED + 1
    assert bpy.ops.partstyle.stylize() == {'FINISHED'}
    assert bpy.ops.partstyle.show_parts() == {'FINISHED'}
    assert set(object_state(obj)["attributes"]) - set(before["attributes"]) == old, "refilled, nothing added"
    assert bridge.owned_attribute(mesh, bridge.DISPLACEMENT) == "Partstyle Displacement"
    assert not np.array_equal(bridge.read_float(mesh, "Partstyle Displacement"), shift), "the rerun wrote there"

    assert bpy.ops.partstyle.clear(keep_groups=True) == {'FINISHED'}
    assert_same_state(before, object_state(obj))
    assert not any(nodes.is_ours(g) for g in bpy.data.node_groups)
