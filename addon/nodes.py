"""The node trees the add-on owns: the ``Partstyle`` material and the ``Partstyle Displace``
Geometry Nodes group with its modifier. Main thread only.

Both data-blocks carry the custom property ``partstyle`` so the add-on recognizes its own and never
edits or removes a material or node group of the user's that happens to share the name. The
modifier is the add-on's when it runs the add-on's node group; its name is recorded on the object
(``partstyle_owned``, see :mod:`.bridge`), and it is ``Partstyle Displace.001``... where the user
has a modifier called ``Partstyle Displace``. The node group reads the displacement attribute whose
name the modifier gives it (its ``Attribute`` input), so it finds ``Partstyle_Displacement.001``
where the user's own attribute has the default name.

Materials: an object without any material slot gets one slot with the ``Partstyle`` material
(Color Attribute ``Partstyle`` -> Base Color), so the colors show in Material Preview and renders.
An object that has material slots keeps them untouched; the colors are still the active color
attribute, which Solid shading shows with *Color: Attribute*, and a user who wants them in their
own material adds a Color Attribute node reading ``Partstyle`` (docs/blender.md).
"""

from __future__ import annotations

import bpy

from . import bridge
from .bridge import COLOR_ATTRIBUTE, DISPLACEMENT_ATTRIBUTE

MATERIAL_NAME = "Partstyle"
GROUP_NAME = "Partstyle Displace"
MODIFIER_NAME = "Partstyle Displace"
STRENGTH = "Strength"
ATTRIBUTE = "Attribute"  # the node group's input: the name of the displacement attribute to read
MODIFIER = "modifier"  # its role in the object's record (bridge.OWNED_KEY)
OWNER_KEY = "partstyle"
BAKED_KEY = "partstyle_maps"  # also on the baked maps' material (addon/baked.py), which is not this module's to switch
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

def _reads(material: bpy.types.Material) -> str | None:
    """The color attribute the add-on's material shows."""
    tree = material.node_tree
    node = None if tree is None else next((n for n in tree.nodes if n.bl_idname == "ShaderNodeVertexColor"), None)
    return None if node is None else node.layer_name


def _material(color_name: str = COLOR_ATTRIBUTE) -> bpy.types.Material:
    """The add-on's material showing the color attribute ``color_name`` (one per name and file)."""
    for material in bpy.data.materials:
        if is_ours(material) and _reads(material) == color_name:
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
    colors.layer_name = color_name
    colors.location = (shader.location.x - 300, shader.location.y)
    tree.links.new(colors.outputs["Color"], shader.inputs["Base Color"])
    return material


def ensure_material(obj: bpy.types.Object, color_name: str = COLOR_ATTRIBUTE) -> bool:
    """Give ``obj`` the Partstyle material showing ``color_name`` if it has no material slot at all
    (True if it did); the add-on's material already in a slot is switched to ``color_name``."""
    mesh = obj.data
    if len(obj.material_slots) == 0:
        mesh.materials.append(_material(color_name))
        return True
    for index, material in enumerate(mesh.materials):
        if is_ours(material) and not material.get(BAKED_KEY, False) and _reads(material) != color_name:
            mesh.materials[index] = _material(color_name)
            if material.users == 0:
                bpy.data.materials.remove(material)
    return False


def remove_material(obj: bpy.types.Object) -> list[str]:
    """Remove the add-on's material slots from ``obj`` (and the material once unused); returns the
    names of the materials taken off."""
    mesh = obj.data
    removed = []
    for index in reversed(range(len(mesh.materials))):
        material = mesh.materials[index]
        if is_ours(material):
            removed.append(material.name)
            mesh.materials.pop(index=index)
            if material.users == 0:
                bpy.data.materials.remove(material)
    return removed


# --- displacement --------------------------------------------------------------------------------

def _build_group() -> bpy.types.GeometryNodeTree:
    """Set Position with offset = Normal x the attribute named by the Attribute input x Strength."""
    group = bpy.data.node_groups.new(GROUP_NAME, 'GeometryNodeTree')
    group[OWNER_KEY] = True
    face = group.interface
    face.new_socket(name="Geometry", in_out='INPUT', socket_type='NodeSocketGeometry')
    face.new_socket(name="Geometry", in_out='OUTPUT', socket_type='NodeSocketGeometry')
    strength = face.new_socket(name=STRENGTH, in_out='INPUT', socket_type='NodeSocketFloat')
    strength.default_value = 1.0
    strength.description = "Scale of the displacement Partstyle found (1: as found, 0: none, negative: inverted)"
    attribute = face.new_socket(name=ATTRIBUTE, in_out='INPUT', socket_type='NodeSocketString')
    attribute.default_value = DISPLACEMENT_ATTRIBUTE
    attribute.description = "The point attribute with Partstyle's displacement (object units along the normal)"
    nodes, links = group.nodes, group.links
    group_in, group_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    move = nodes.new("GeometryNodeSetPosition")
    normal = nodes.new("GeometryNodeInputNormal")
    amount = nodes.new("GeometryNodeInputNamedAttribute")
    amount.data_type = 'FLOAT'
    times = nodes.new("ShaderNodeMath")
    times.operation = 'MULTIPLY'
    offset = nodes.new("ShaderNodeVectorMath")
    offset.operation = 'SCALE'
    for node, x, y in ((group_in, -700, 0), (amount, -700, -200), (normal, -500, -350), (times, -450, -150),
                       (offset, -250, -200), (move, 0, 0), (group_out, 250, 0)):
        node.location = (x, y)
    links.new(group_in.outputs["Geometry"], move.inputs["Geometry"])
    links.new(move.outputs["Geometry"], group_out.inputs["Geometry"])
    links.new(group_in.outputs[ATTRIBUTE], amount.inputs["Name"])
    links.new(amount.outputs["Attribute"], times.inputs[0])
    links.new(group_in.outputs[STRENGTH], times.inputs[1])
    links.new(normal.outputs["Normal"], offset.inputs["Vector"])
    links.new(times.outputs["Value"], offset.inputs["Scale"])
    links.new(offset.outputs["Vector"], move.inputs["Offset"])
    return group


def _inputs(group) -> dict[str, str]:
    """Input name -> identifier (the modifier's ID-property key, ``Socket_2``...) of a node group."""
    if group is None or not has_node_interface():
        return {}
    return {item.name: item.identifier for item in group.interface.items_tree
            if getattr(item, "item_type", "SOCKET") == 'SOCKET' and getattr(item, "in_out", None) == 'INPUT'}


def _current(group) -> bool:
    """The add-on's node group as this version builds it (earlier ones read a fixed attribute name)."""
    return is_ours(group) and group.bl_idname == "GeometryNodeTree" and ATTRIBUTE in _inputs(group)


def _group() -> bpy.types.GeometryNodeTree:
    for group in bpy.data.node_groups:
        if _current(group):
            return group
    return _build_group()


def strength_key(modifier: bpy.types.Modifier) -> str | None:
    """The ID-property key of the modifier's Strength input (``Socket_2``...), or None."""
    return _inputs(modifier.node_group).get(STRENGTH)


def modifier_inputs(modifier: bpy.types.Modifier) -> tuple[float, str | None]:
    """What the add-on's displacement ``modifier`` does: its Strength (the node group's default where
    the modifier has none) and the name of the point attribute it reads (None where it names none)."""
    inputs = _inputs(modifier.node_group)
    strength = modifier.get(inputs.get(STRENGTH, ""))
    if not isinstance(strength, (int, float)):
        socket = next((item for item in modifier.node_group.interface.items_tree
                       if getattr(item, "identifier", None) == inputs.get(STRENGTH)), None)
        strength = getattr(socket, "default_value", 1.0)
    attribute = modifier.get(inputs.get(ATTRIBUTE, ""))
    return float(strength), attribute if isinstance(attribute, str) and attribute else None


def _is_displace(modifier) -> bool:
    return modifier is not None and modifier.type == 'NODES' and is_ours(modifier.node_group)


def displace_modifier(obj: bpy.types.Object) -> bpy.types.Modifier | None:
    """The add-on's Geometry Nodes modifier on ``obj`` (the one recorded, else one running the
    add-on's node group), or None. A user's modifier is never returned, whatever its name."""
    recorded = bridge.owned(obj).get(MODIFIER)
    modifier = obj.modifiers.get(recorded) if isinstance(recorded, str) and recorded else None
    if _is_displace(modifier):
        return modifier
    return next((m for m in obj.modifiers if _is_displace(m)), None)


def ensure_modifier(obj: bpy.types.Object, attribute: str = DISPLACEMENT_ATTRIBUTE) -> bpy.types.Modifier:
    """The add-on's displacement modifier reading the point attribute ``attribute``: added last in
    the stack (``Partstyle Displace``, or a free name) if missing; its Strength is kept."""
    modifier = displace_modifier(obj)
    if modifier is None:
        name = bridge.free_name(MODIFIER_NAME, [m.name for m in obj.modifiers])
        modifier = obj.modifiers.new(name, 'NODES')
        modifier.node_group = _group()
    elif not _current(modifier.node_group):  # an earlier version's group: same Strength, new group
        old = modifier.node_group
        strength = modifier.get(strength_key(modifier) or "")
        modifier.node_group = _group()
        if isinstance(strength, (int, float)):
            modifier[strength_key(modifier)] = float(strength)
        if old.users == 0:
            bpy.data.node_groups.remove(old)
    modifier[_inputs(modifier.node_group)[ATTRIBUTE]] = attribute
    bridge.claim(obj, MODIFIER, modifier.name)
    return modifier


def remove_modifier(obj: bpy.types.Object) -> bool:
    """Remove the add-on's modifier (and its node group once unused)."""
    modifier = displace_modifier(obj)
    bridge.disown(obj, MODIFIER)
    if modifier is None:
        return False
    group = modifier.node_group
    obj.modifiers.remove(modifier)
    if is_ours(group) and group.users == 0:
        bpy.data.node_groups.remove(group)
    return True
