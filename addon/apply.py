"""Apply as new object: a plain copy of a styled object that every exporter keeps as it looks. Main thread only.

A Partstyle result lives in data most exporters do not run: the displacement is a point attribute
read by the ``Partstyle Displace`` Geometry Nodes modifier, and the colors are a color attribute
that is the *active* one but not necessarily the one chosen for rendering. :func:`apply_as_new`
makes a new object from the styled one where both are plain mesh data:

- positions: the base mesh's, plus displacement x Strength x the base mesh's vertex normal, which
  is what the modifier computes (Set Position, offset = Normal x attribute x Strength; see
  :mod:`.nodes`); all in the object's local frame and object units;
- colors: the Partstyle color attribute, kept and made the active and the *render* color attribute
  (the one glTF, FBX and USD export by default);
- no Partstyle modifier; the applied displacement attribute and the parts view are not copied
  along (exporters would write them as extra attributes or vertex colors). The user's other data
  (attributes, vertex groups, materials, modifiers, transform, parent) comes along as it is.

The copy is called ``<object> styled`` (or ``<object> styled.001``...), sits in the original's
collections, and becomes the only selected and the active object. The original is not changed.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import bridge, nodes
from .engine_link import AddonError

SUFFIX = " styled"


def styled_colors(obj: bpy.types.Object) -> str | None:
    """The name of the add-on's color attribute on ``obj`` (its result), or None."""
    return bridge.owned_attribute(obj.data, bridge.COLOR) if obj is not None and obj.type == 'MESH' else None


def vertex_normals(mesh: bpy.types.Mesh) -> np.ndarray:
    """[V, 3] float32 unit vertex normals of the base mesh, object frame (the Normal the modifier reads
    on points when it is the first modifier that changes the mesh)."""
    normals = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("normal", normals)
    return normals.reshape(-1, 3)


def displacement_offsets(obj: bpy.types.Object) -> tuple[np.ndarray, list[str]]:
    """[V, 3] float32 offsets, object frame and units, that the add-on's modifier adds to ``obj``'s base
    positions (zeros without one), and notes for the user about what could not be matched exactly."""
    mesh = obj.data
    zeros = np.zeros((len(mesh.vertices), 3), np.float32)
    modifier = nodes.displace_modifier(obj)
    if modifier is None:
        return zeros, [f"'{obj.name}' has no Partstyle displacement modifier, so the shape was copied as it is."]
    if not modifier.show_viewport:
        return zeros, [f"The modifier '{modifier.name}' is turned off in the viewport, so the shape was copied "
                       "as it shows, without the displacement."]
    strength, name = nodes.modifier_inputs(modifier)
    shift = bridge.read_float(mesh, name)
    if shift is None:
        return zeros, [f"The modifier '{modifier.name}' reads no displacement attribute of '{mesh.name}', so the "
                       "shape was copied as it is."]
    notes = []
    before = [m.name for m in obj.modifiers[: list(obj.modifiers).index(modifier)] if m.show_viewport]
    if before:
        notes.append(f"The displacement was applied to the base mesh, so it now comes before the modifier(s) "
                     f"{', '.join(before)}, which the copy keeps.")
    amount = shift * np.float32(strength)  # the node group's Math (float) node, then Vector Math's Scale
    return vertex_normals(mesh) * amount[:, None], notes


def _place(copy: bpy.types.Object, original: bpy.types.Object, context) -> None:
    """Link ``copy`` where ``original`` is and make it the only selected object and the active one."""
    collections = [c for c in original.users_collection if c.library is None] or [context.scene.collection]
    for collection in collections:
        collection.objects.link(copy)
    view_layer = context.view_layer
    for other in view_layer.objects:
        if other.select_get(view_layer=view_layer):
            other.select_set(False, view_layer=view_layer)
    if view_layer.objects.get(copy.name) is not None:
        copy.select_set(True, view_layer=view_layer)
        view_layer.objects.active = copy


def apply_as_new(obj: bpy.types.Object, context) -> tuple[bpy.types.Object, list[str]]:
    """A new object from the styled ``obj`` (module docstring); returns it and notes for the report.

    Raises :class:`AddonError` when ``obj`` has no Partstyle colors.
    """
    color = styled_colors(obj)
    if color is None:
        raise AddonError(f"'{obj.name}' has no Partstyle result yet; Stylize it first.")
    offsets, notes = displacement_offsets(obj)
    copy = obj.copy()
    copy.data = obj.data.copy()
    copy.name = bridge.free_name(obj.name + SUFFIX, bpy.data.objects.keys())
    copy.data.name = copy.name
    mesh = copy.data
    nodes.remove_modifier(copy)
    positions = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", positions)
    mesh.vertices.foreach_set("co", (positions.reshape(-1, 3) + offsets).ravel())
    for key in mesh.shape_keys.key_blocks if mesh.shape_keys else ():  # each shape moves with the surface
        shape = np.empty(len(key.data) * 3, np.float32)
        key.data.foreach_get("co", shape)
        key.data.foreach_set("co", (shape.reshape(-1, 3) + offsets).ravel())
    for role in (bridge.DISPLACEMENT, bridge.PARTS):  # applied, and a view: not part of the result
        name = bridge.owned_attribute(mesh, role)
        if name is not None:
            bridge.remove_attribute(mesh, name)
        bridge.disown(mesh, role)
    colors = mesh.color_attributes
    bridge.set_active_color(mesh, color)
    colors.render_color_index = colors.find(color)
    mesh.update()
    _place(copy, obj, context)
    return copy, notes
