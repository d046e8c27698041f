"""The node trees the add-on owns: the ``Partstyle`` material and the ``Partstyle Displace``
Geometry Nodes group with its modifier. Main thread only.

Both data-blocks carry the custom property ``partstyle`` so the add-on recognizes its own and never
edits or removes a material or node group of the user's that happens to share the name.

Materials: an object without any material slot gets one slot with the ``Partstyle`` material
(Color Attribute ``Partstyle`` -> Base Color), so the colors show in Material Preview and renders.
An object that has material slots keeps them untouched; the colors are still the active color
attribute, which Solid shading shows with *Color: Attribute*, and a user who wants them in their
own material adds a Color Attribute node reading ``Partstyle`` (docs/blender.md).
"""

from __future__ import annotations

import bpy

from .bridge import COLOR_ATTRIBUTE, DISPLACEMENT_ATTRIBUTE

MATERIAL_NAME = "Partstyle"
GROUP_NAME = "Partstyle Displace"
MODIFIER_NAME = "Partstyle Displace"
STRENGTH = "Strength"
OWNER_KEY = "partstyle"
#: Node groups' ``interface`` (sockets: ``new_socket``, ``items_tree``) exists from this Blender on;
#: the legacy add-on loads in older ones (3.4+) to show the panel, without Stylize.
NODE_INTERFACE_VERSION = (4, 0, 0)


def has_node_interface() -> bool:
    """True where the displacement node group can be built (Blender 4.0+)."""
    return bpy.app.version >= NODE_INTERFACE_VERSION


def is_ours(datablock) -> bool:
    """True for a data-block the add-on created."""
    return datablock is not None and bool(datablock.get(OWNER_KEY, False))


# --- material ------------------------------------------------------------------------------------

def _material() -> bpy.types.Material:
    """The add-on's material (created once per file)."""
    for material in bpy.data.materials:
        if is_ours(material):
            return material
    material = bpy.data.materials.new(MATERIAL_NAME)
    material[OWNER_KEY] = True
    if material.node_tree is None:  # Blender < 5 creates the node tree on demand
        material.use_nodes = True
    tree = material.node_tree
    shader = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if shader is None:
        shader = tree.nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial"), None)
        output = output or tree.nodes.new("ShaderNodeOutputMaterial")
        tree.links.new(shader.outputs["BSDF"], output.inputs["Surface"])
    colors = tree.nodes.new("ShaderNodeVertexColor")
    colors.layer_name = COLOR_ATTRIBUTE
    colors.location = (shader.location.x - 300, shader.location.y)
    tree.links.new(colors.outputs["Color"], shader.inputs["Base Color"])
    return material


def ensure_material(obj: bpy.types.Object) -> bool:
    """Give ``obj`` the Partstyle material if it has no material slot at all; True if it did."""
    if len(obj.material_slots) > 0:
        return False
    obj.data.materials.append(_material())
    return True


def remove_material(obj: bpy.types.Object) -> bool:
    """Remove the add-on's material slots from ``obj`` (and the material once unused)."""
    mesh = obj.data
    removed = False
    for index in reversed(range(len(mesh.materials))):
        material = mesh.materials[index]
        if is_ours(material):
            mesh.materials.pop(index=index)
            removed = True
            if material.users == 0:
                bpy.data.materials.remove(material)
    return removed


# --- displacement --------------------------------------------------------------------------------

def _build_group() -> bpy.types.GeometryNodeTree:
    """Set Position with offset = Normal x ``Partstyle Displacement`` x Strength."""
    group = bpy.data.node_groups.new(GROUP_NAME, 'GeometryNodeTree')
    group[OWNER_KEY] = True
    face = group.interface
    face.new_socket(name="Geometry", in_out='INPUT', socket_type='NodeSocketGeometry')
    face.new_socket(name="Geometry", in_out='OUTPUT', socket_type='NodeSocketGeometry')
    strength = face.new_socket(name=STRENGTH, in_out='INPUT', socket_type='NodeSocketFloat')
    strength.default_value = 1.0
    strength.description = "Scale of the displacement Partstyle found (1: as found, 0: none, negative: inverted)"
    nodes, links = group.nodes, group.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    move = nodes.new("GeometryNodeSetPosition")
    normal = nodes.new("GeometryNodeInputNormal")
    amount = nodes.new("GeometryNodeInputNamedAttribute")
    amount.data_type = 'FLOAT'
    amount.inputs["Name"].default_value = DISPLACEMENT_ATTRIBUTE
    times = nodes.new("ShaderNodeMath")
    times.operation = 'MULTIPLY'
    offset = nodes.new("ShaderNodeVectorMath")
    offset.operation = 'SCALE'
    for node, x, y in ((group_in, -700, 0), (amount, -700, -200), (normal, -500, -350), (times, -450, -150),
                       (offset, -250, -200), (move, 0, 0), (group_out, 250, 0)):
        node.location = (x, y)
    links.new(group_in.outputs["Geometry"], move.inputs["Geometry"])
    links.new(move.outputs["Geometry"], group_out.inputs["Geometry"])
    links.new(amount.outputs["Attribute"], times.inputs[0])
    links.new(group_in.outputs[STRENGTH], times.inputs[1])
    links.new(normal.outputs["Normal"], offset.inputs["Vector"])
    links.new(times.outputs["Value"], offset.inputs["Scale"])
    links.new(offset.outputs["Vector"], move.inputs["Offset"])
    return group


def _group() -> bpy.types.GeometryNodeTree:
    for group in bpy.data.node_groups:
        if is_ours(group) and group.bl_idname == "GeometryNodeTree":
            return group
    return _build_group()


def strength_key(modifier: bpy.types.Modifier) -> str | None:
    """The ID-property key of the modifier's Strength input (``Socket_2``...), or None."""
    group = modifier.node_group
    if group is None or not has_node_interface():
        return None
    for item in group.interface.items_tree:
        if getattr(item, "in_out", None) == 'INPUT' and item.name == STRENGTH:
            return item.identifier
    return None


def displace_modifier(obj: bpy.types.Object) -> bpy.types.Modifier | None:
    """The add-on's Geometry Nodes modifier on ``obj``, or None."""
    modifier = obj.modifiers.get(MODIFIER_NAME)
    return modifier if modifier is not None and modifier.type == 'NODES' else None


def ensure_modifier(obj: bpy.types.Object) -> bpy.types.Modifier:
    """The ``Partstyle Displace`` modifier, added last in the stack if missing (its Strength is kept)."""
    modifier = displace_modifier(obj)
    if modifier is None:
        modifier = obj.modifiers.new(MODIFIER_NAME, 'NODES')
    if modifier.node_group is None or not is_ours(modifier.node_group):
        modifier.node_group = _group()
    return modifier


def remove_modifier(obj: bpy.types.Object) -> bool:
    """Remove the add-on's modifier (and its node group once unused)."""
    modifier = displace_modifier(obj)
    if modifier is None:
        return False
    group = modifier.node_group
    obj.modifiers.remove(modifier)
    if is_ours(group) and group.users == 0:
        bpy.data.node_groups.remove(group)
    return True
