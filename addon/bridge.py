"""Moves numpy arrays between Blender meshes and the engine. Main thread only.

What the add-on reads is always the object's *base* mesh (``obj.data``): vertex positions in the
object's local frame and its faces triangulated (``loop_triangles``). Modifiers are not applied:
results are per vertex of the base mesh, so they stay attached to the mesh the user edits, and
modifiers that change topology (Subdivision, Remesh...) cannot shift vertex indices under them.

What it writes is new, named data that :func:`clear` removes again:

- ``Partstyle``: a FLOAT_COLOR attribute on points, linear RGB (alpha 1), made the active color;
- ``Partstyle Displacement``: a FLOAT attribute on points, signed, object units along the normal,
  read by the ``Partstyle Displace`` Geometry Nodes modifier (see :mod:`.nodes`);
- ``Partstyle Parts``: a FLOAT_COLOR attribute showing each part's weights in its row's color;
- one vertex group ``part:<name>`` per part.

The user's positions, color attributes, vertex groups and materials are never changed.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import engine_link
from .engine_link import AddonError

COLOR_ATTRIBUTE = "Partstyle"
DISPLACEMENT_ATTRIBUTE = "Partstyle Displacement"
PARTS_ATTRIBUTE = "Partstyle Parts"
OUR_ATTRIBUTES = (COLOR_ATTRIBUTE, DISPLACEMENT_ATTRIBUTE, PARTS_ATTRIBUTE)
GROUP_PREFIX = "part:"
#: Mesh custom property: the user's active color attribute before the add-on made its own active.
PREVIOUS_ACTIVE_KEY = "partstyle_previous_active_color"
REST_GRAY = (0.2, 0.2, 0.2)


def normalize_part(name: str) -> str:
    """Part names as the engine normalizes them (``engine.prompt.normalize_part_name``)."""
    return engine_link.load("prompt", light=True).normalize_part_name(name)


def group_name(part: str) -> str:
    """The vertex group of a part: ``part:<name>``."""
    return GROUP_PREFIX + normalize_part(part)


def mesh_object(name: str) -> bpy.types.Object:
    """The mesh object called ``name``, or :class:`AddonError` saying what is wrong."""
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise AddonError(f"There is no object named '{name}' any more (it was deleted or renamed).")
    if obj.type != 'MESH':
        raise AddonError(f"'{name}' is a {obj.type.lower()} object; Partstyle works on mesh objects.")
    if obj.mode == 'EDIT':
        raise AddonError(f"'{name}' is in Edit Mode; switch to Object Mode first (Tab).")
    return obj


def mesh_arrays(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """The base mesh: vertices [V, 3] float32 (object frame) and triangles [F, 3] int64."""
    mesh = obj.data
    vertices = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", vertices)
    mesh.calc_loop_triangles()
    triangles = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", triangles)
    return vertices.reshape(-1, 3), triangles.reshape(-1, 3).astype(np.int64)


# --- vertex groups -------------------------------------------------------------------------------

def part_groups(obj: bpy.types.Object) -> dict[str, str]:
    """Part name -> vertex group name, for every ``part:<name>`` group of ``obj``."""
    return {normalize_part(g.name[len(GROUP_PREFIX):]): g.name for g in obj.vertex_groups
            if g.name.lower().startswith(GROUP_PREFIX) and g.name[len(GROUP_PREFIX):].strip()}


def read_groups(obj: bpy.types.Object, parts: list[str]) -> dict[str, np.ndarray]:
    """Part -> [V] float32 weights of its ``part:<name>`` group (0 where a vertex is not in it).

    Raises :class:`AddonError` naming the parts without a group and the groups there are.
    """
    available = part_groups(obj)
    wanted = [normalize_part(p) for p in parts]
    missing = [p for p in wanted if p not in available]
    if missing:
        have = ", ".join(sorted(available.values())) or "none"
        raise AddonError(
            f"'{obj.name}' has no vertex group {', '.join(repr(group_name(p)) for p in missing)} "
            f"(part groups there: {have}); run Locate parts, or create and paint the group, "
            "or turn off 'Use my vertex groups'.")
    index = {obj.vertex_groups[available[p]].index: k for k, p in enumerate(wanted)}
    weights = np.zeros((len(wanted), len(obj.data.vertices)), np.float32)
    for vertex in obj.data.vertices:
        for element in vertex.groups:
            k = index.get(element.group)
            if k is not None:
                weights[k, vertex.index] = element.weight
    return {p: weights[k] for k, p in enumerate(wanted)}


def write_groups(obj: bpy.types.Object, parts: list[str], weights: np.ndarray) -> None:
    """One ``part:<name>`` group per part from [V, K] weights (existing part groups are refilled)."""
    count = len(obj.data.vertices)
    for k, part in enumerate(parts):
        name = group_name(part)
        group = obj.vertex_groups.get(name) or obj.vertex_groups.new(name=name)
        group.remove(list(range(count)))
        column = np.asarray(weights[:, k], np.float32)
        values, inverse = np.unique(column, return_inverse=True)
        for u, value in enumerate(values):
            if value > 0.0:
                group.add(np.flatnonzero(inverse == u).tolist(), float(value), 'REPLACE')
    if parts:
        obj.vertex_groups.active_index = obj.vertex_groups[group_name(parts[0])].index


# --- attributes ----------------------------------------------------------------------------------

def _point_attribute(mesh: bpy.types.Mesh, name: str, data_type: str):
    """The POINT attribute ``name`` of ``data_type``, (re)created when missing or of another kind."""
    attribute = mesh.attributes.get(name)
    if attribute is not None and (attribute.domain != 'POINT' or attribute.data_type != data_type):
        mesh.attributes.remove(attribute)
        attribute = None
    return attribute or mesh.attributes.new(name, data_type, 'POINT')


def write_color(mesh: bpy.types.Mesh, name: str, linear: np.ndarray, *, make_active: bool = True) -> None:
    """[V, 3] linear RGB -> the FLOAT_COLOR POINT attribute ``name`` (alpha 1), made active."""
    rgba = np.ones((len(mesh.vertices), 4), np.float32)
    rgba[:, :3] = linear
    _point_attribute(mesh, name, 'FLOAT_COLOR').data.foreach_set("color", rgba.ravel())
    if make_active:
        set_active_color(mesh, name)
    mesh.update()


def write_float(mesh: bpy.types.Mesh, name: str, values: np.ndarray) -> None:
    """[V] float32 -> the FLOAT POINT attribute ``name``."""
    _point_attribute(mesh, name, 'FLOAT').data.foreach_set("value", np.asarray(values, np.float32).ravel())
    mesh.update()


def read_color(mesh: bpy.types.Mesh, name: str) -> np.ndarray | None:
    """[V, 3] linear RGB per vertex of the color attribute ``name`` (corners averaged), or None."""
    attribute = mesh.attributes.get(name)
    if attribute is None or attribute.data_type not in ('FLOAT_COLOR', 'BYTE_COLOR'):
        return None
    rgba = np.empty(len(attribute.data) * 4, np.float32)
    attribute.data.foreach_get("color", rgba)
    rgb = rgba.reshape(-1, 4)[:, :3]
    if attribute.domain == 'POINT':
        return rgb
    if attribute.domain != 'CORNER':
        return None
    corner_vertex = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vertex)
    total = np.zeros((len(mesh.vertices), 3), np.float64)
    np.add.at(total, corner_vertex, rgb)
    count = np.bincount(corner_vertex, minlength=len(mesh.vertices))[:, None]
    return np.where(count > 0, total / np.maximum(count, 1), 0.8).astype(np.float32)


def read_float(mesh: bpy.types.Mesh, name: str) -> np.ndarray | None:
    """[V] float32 of the FLOAT POINT attribute ``name``, or None."""
    attribute = mesh.attributes.get(name)
    if attribute is None or attribute.domain != 'POINT' or attribute.data_type != 'FLOAT':
        return None
    values = np.empty(len(attribute.data), np.float32)
    attribute.data.foreach_get("value", values)
    return values


def user_colors(mesh: bpy.types.Mesh) -> np.ndarray | None:
    """[V, 3] linear colors of the user's own color attribute (render default, else active), or None.

    Vertices outside every styled part keep these colors in the result.
    """
    group = mesh.color_attributes
    for name in (group.default_color_name, group.active_color_name, mesh.get(PREVIOUS_ACTIVE_KEY, "")):
        if name and name not in OUR_ATTRIBUTES and name in group:
            return read_color(mesh, name)
    return None


def set_active_color(mesh: bpy.types.Mesh, name: str) -> None:
    """Make ``name`` the active color attribute, remembering the user's choice to give it back."""
    current = mesh.color_attributes.active_color_name
    if current and current not in OUR_ATTRIBUTES:
        mesh[PREVIOUS_ACTIVE_KEY] = current
    mesh.color_attributes.active_color = mesh.color_attributes[name]


def remove_attribute(mesh: bpy.types.Mesh, name: str) -> bool:
    """Remove the attribute ``name`` if present; True when something was removed."""
    attribute = mesh.attributes.get(name)
    if attribute is None:
        return False
    mesh.attributes.remove(attribute)
    return True


def give_back_active_color(mesh: bpy.types.Mesh) -> None:
    """After removing the add-on's colors: the user's active color attribute as it was."""
    previous = mesh.get(PREVIOUS_ACTIVE_KEY)
    if previous is not None:
        if previous in mesh.color_attributes:
            mesh.color_attributes.active_color = mesh.color_attributes[previous]
        del mesh[PREVIOUS_ACTIVE_KEY]


def parts_colors(weights: np.ndarray, swatches: np.ndarray) -> np.ndarray:
    """[V, K + 1] part weights (last column rest) and [K, 3] swatches -> [V, 3] linear colors."""
    palette = np.concatenate([np.asarray(swatches, np.float32).reshape(-1, 3), [REST_GRAY]], 0)
    return (weights[:, : len(palette)] @ palette).astype(np.float32)


# --- undoing a run that did not finish -----------------------------------------------------------

class ColorSnapshot:
    """What a live preview changes on a mesh (the ``Partstyle`` colors, the active color), kept so
    that a cancelled or failed run can put it back exactly."""

    def __init__(self, mesh: bpy.types.Mesh):
        self.mesh_name = mesh.name
        self.active = mesh.color_attributes.active_color_name
        self.previous_key = mesh.get(PREVIOUS_ACTIVE_KEY)
        attribute = mesh.attributes.get(COLOR_ATTRIBUTE)
        self.kind = None if attribute is None else (attribute.domain, attribute.data_type)
        self.raw = None
        if attribute is not None and attribute.data_type in ('FLOAT_COLOR', 'BYTE_COLOR'):
            self.raw = np.empty(len(attribute.data) * 4, np.float32)
            attribute.data.foreach_get("color", self.raw)

    def restore(self) -> None:
        """Put the mesh back as it was when the snapshot was taken (if the mesh still exists)."""
        mesh = bpy.data.meshes.get(self.mesh_name)
        if mesh is None:
            return
        attribute = mesh.attributes.get(COLOR_ATTRIBUTE)
        if self.kind is None:
            remove_attribute(mesh, COLOR_ATTRIBUTE)
        elif self.raw is not None:
            if attribute is None or (attribute.domain, attribute.data_type) != self.kind:
                remove_attribute(mesh, COLOR_ATTRIBUTE)
                attribute = mesh.attributes.new(COLOR_ATTRIBUTE, self.kind[1], self.kind[0])
            if len(attribute.data) * 4 == len(self.raw):
                attribute.data.foreach_set("color", self.raw)
        if self.active and self.active in mesh.color_attributes:
            mesh.color_attributes.active_color = mesh.color_attributes[self.active]
        if self.previous_key is None:
            mesh.pop(PREVIOUS_ACTIVE_KEY, None)
        else:
            mesh[PREVIOUS_ACTIVE_KEY] = self.previous_key
        mesh.update()
