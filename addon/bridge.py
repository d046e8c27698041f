"""Moves numpy arrays between Blender meshes and the engine, and reads a part row's reference image
(:func:`image_pixels`). Main thread only.

What the add-on reads is always the object's *base* mesh (``obj.data``): vertex positions in the
object's local frame and its faces triangulated (``loop_triangles``). Modifiers are not applied:
results are per vertex of the base mesh, so they stay attached to the mesh the user edits, and
modifiers that change topology (Subdivision, Remesh...) cannot shift vertex indices under them.

What it writes is new data that :func:`.runs.clear` removes again, by default named

- ``Partstyle``: a FLOAT_COLOR attribute on points, linear RGB (alpha 1), made the active color;
- ``Partstyle_Displacement``: a FLOAT attribute on points, signed, object units along the normal,
  read by the ``Partstyle Displace`` Geometry Nodes modifier (see :mod:`.nodes`);
- ``Partstyle_Parts``: a FLOAT_COLOR attribute showing each part's weights in its row's color;
- one vertex group ``part:<name>`` per located part.

The add-on knows its own data by a record, not by the name: the mesh's custom property
``partstyle_owned`` holds the names of the attributes and vertex groups it made there (the
object's the name of its modifier, :mod:`.nodes`). Where a default name is taken by the user's own
data, a free one is used (``Partstyle.001``). Names have no spaces (USD keeps them); older files'
``Partstyle Displacement`` and ``Partstyle Parts`` are found by the record all the same. The
user's positions, attributes, vertex groups and materials are never changed or removed.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import engine_link
from .engine_link import AddonError

COLOR_ATTRIBUTE = "Partstyle"
DISPLACEMENT_ATTRIBUTE = "Partstyle_Displacement"
PARTS_ATTRIBUTE = "Partstyle_Parts"
GROUP_PREFIX = "part:"
#: Mesh custom property: the user's active color attribute before the add-on made its own active.
PREVIOUS_ACTIVE_KEY = "partstyle_previous_active_color"
#: Custom property of a mesh (attributes, vertex groups) and of an object (the modifier): the names
#: of what the add-on made there. Only what it lists is the add-on's to replace or remove.
OWNED_KEY = "partstyle_owned"
# Mesh custom property: part name -> how strongly the evidence supported the located part (0..1).
CONFIDENCE_KEY = "partstyle_part_confidence"
COLOR, DISPLACEMENT, PARTS, GROUPS = "color", "displacement", "parts", "groups"
#: The add-on's attributes by role: (default name, data type), all on points.
ATTRIBUTES = {COLOR: (COLOR_ATTRIBUTE, 'FLOAT_COLOR'), DISPLACEMENT: (DISPLACEMENT_ATTRIBUTE, 'FLOAT'),
              PARTS: (PARTS_ATTRIBUTE, 'FLOAT_COLOR')}
#: Vertex group weights are written in steps of 1 / WEIGHT_STEPS, rounded down (so a vertex's
#: weights still sum to at most 1): at most one step below the engine's weight, never above it.
WEIGHT_STEPS = 1024
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


def uv_map(mesh: bpy.types.Mesh):
    """The UV map a bake uses: the render-active one (the camera icon in the UV Maps list), else the
    active one; None when the mesh has none."""
    layers = mesh.uv_layers
    return next((layer for layer in layers if layer.active_render), None) or layers.active


def corner_uvs(obj: bpy.types.Object) -> tuple[np.ndarray, str]:
    """[F, 3, 2] float32 UVs of the corners of each of the base mesh's loop triangles (the
    triangles of :func:`mesh_arrays`, in their order), v up, and the UV map's name.

    Raises :class:`AddonError` when the mesh has no UV map.
    """
    mesh = obj.data
    layer = uv_map(mesh)
    if layer is None:
        raise AddonError(f"'{obj.name}' has no UV map; add one (UV > Smart UV Project) or set Maps to Off.")
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    layer.data.foreach_get("uv", uv)
    mesh.calc_loop_triangles()
    loops = np.empty(len(mesh.loop_triangles) * 3, np.int32)
    mesh.loop_triangles.foreach_get("loops", loops)
    return uv.reshape(-1, 2)[loops].reshape(-1, 3, 2), layer.name


# --- what the add-on owns ------------------------------------------------------------------------

def owned(block) -> dict:
    """The record of what the add-on made on ``block`` (a mesh or an object), as a plain dict."""
    record = block.get(OWNED_KEY)
    return record.to_dict() if hasattr(record, "to_dict") else {}


def _store(block, record: dict) -> None:
    record = {key: value for key, value in record.items() if value}
    if record:
        block[OWNED_KEY] = record
    else:
        block.pop(OWNED_KEY, None)


def claim(block, role: str, name: str) -> None:
    """Record that the add-on made ``name`` (its ``role`` data) on ``block``."""
    record = owned(block)
    record[role] = name
    _store(block, record)


def disown(block, role: str) -> None:
    """Forget the add-on's ``role`` data on ``block`` (after removing it)."""
    record = owned(block)
    record.pop(role, None)
    _store(block, record)


def free_name(base: str, taken) -> str:
    """``base``, or ``base.001``, ``base.002``... : the first name not in ``taken``."""
    taken = set(taken)
    number, name = 0, base
    while name in taken:
        number += 1
        name = f"{base}.{number:03d}"
    return name


def owned_attribute(mesh: bpy.types.Mesh, role: str) -> str | None:
    """The name of the add-on's own ``role`` attribute on ``mesh`` (recorded, and still a point
    attribute of its kind), or None: a user's attribute is never returned, whatever its name."""
    name = owned(mesh).get(role)
    attribute = mesh.attributes.get(name) if isinstance(name, str) and name else None
    if attribute is None or (attribute.domain, attribute.data_type) != ('POINT', ATTRIBUTES[role][1]):
        return None
    return name


def owned_attributes(mesh: bpy.types.Mesh) -> set[str]:
    """The names of all the add-on's attributes on ``mesh``."""
    return {name for role in ATTRIBUTES if (name := owned_attribute(mesh, role))}


def attribute_name(obj: bpy.types.Object, role: str) -> str:
    """Where the add-on writes its ``role`` attribute on ``obj``'s mesh: its own attribute, else the
    default name, else ``<default>.001``... when the user's data (an attribute or vertex group) has it."""
    mesh = obj.data
    taken = [a.name for a in mesh.attributes] + [g.name for g in obj.vertex_groups]
    return owned_attribute(mesh, role) or free_name(ATTRIBUTES[role][0], taken)


# --- vertex groups -------------------------------------------------------------------------------

def part_groups(obj: bpy.types.Object) -> dict[str, str]:
    """Part name -> vertex group name, for every ``part:<name>`` group of ``obj``."""
    return {normalize_part(g.name[len(GROUP_PREFIX):]): g.name for g in obj.vertex_groups
            if g.name.lower().startswith(GROUP_PREFIX) and g.name[len(GROUP_PREFIX):].strip()}


def owned_groups(obj: bpy.types.Object) -> list[str]:
    """The vertex groups the add-on wrote on ``obj`` (Locate parts, or grounding inside Stylize)."""
    return [name for name in owned(obj.data).get(GROUPS, ()) if name in obj.vertex_groups]


def check_groups_writable(obj: bpy.types.Object, parts: list[str]) -> None:
    """Raise :class:`AddonError` if writing the groups of ``parts`` would overwrite the user's own
    ``part:<name>`` groups (painted by hand, not written by the add-on)."""
    mine = set(owned_groups(obj))
    available = part_groups(obj)
    theirs = [available[p] for p in dict.fromkeys(normalize_part(p) for p in parts)
              if p in available and available[p] not in mine]
    if theirs:
        raise AddonError(
            f"'{obj.name}' already has the vertex group(s) {', '.join(repr(n) for n in theirs)}, which Partstyle did "
            "not write; locating the parts would overwrite them. Turn on 'Use my vertex groups' to use them, or "
            "rename or delete them to locate those parts again.")


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


def weight_levels(column: np.ndarray) -> list[tuple[float, list[int]]]:
    """[V] weights -> ``(weight, vertex indices)`` per distinct weight, in steps of 1/WEIGHT_STEPS.

    Weights are clipped to 0..1 and rounded down to a step (plus a thousandth of a step, so float32
    noise below a step such as 0.99999994 keeps it), so they never exceed the engine's and a
    vertex's weights still sum to at most 1. Zero weights are left out. One stable sort of the
    integer levels groups the vertices: linear in V up to that sort, whatever the weights.
    """
    values = np.nan_to_num(np.asarray(column, np.float64).ravel(), nan=0.0)
    levels = np.minimum(np.floor(np.clip(values, 0.0, 1.0) * WEIGHT_STEPS + 1e-3), WEIGHT_STEPS).astype(np.uint16)
    order = np.argsort(levels, kind="stable")
    ordered = levels[order]
    starts = np.flatnonzero(np.diff(ordered)) + 1
    return [(float(ordered[chunk_start]) / WEIGHT_STEPS, chunk.tolist())
            for chunk_start, chunk in zip(np.r_[0, starts], np.split(order, starts), strict=True)
            if len(chunk) and ordered[chunk_start] > 0]


def write_groups(obj: bpy.types.Object, parts: list[str], weights: np.ndarray) -> None:
    """One ``part:<name>`` group per part from [V, K] weights (the add-on's own part groups are
    refilled; the user's are never touched: :func:`check_groups_writable` first). The groups are
    recorded as the add-on's. Weights are stored in steps of 1/WEIGHT_STEPS (:func:`weight_levels`):
    one ``VertexGroup.add`` call per step in use, so the time is linear in the vertices."""
    check_groups_writable(obj, parts)
    count = len(obj.data.vertices)
    written = []
    for k, part in enumerate(parts):
        name = group_name(part)
        group = obj.vertex_groups.get(name)
        if group is None:
            group = obj.vertex_groups.new(name=name)
        else:
            group.remove(list(range(count)))
        for weight, indices in weight_levels(weights[:, k]):
            group.add(indices, weight, 'REPLACE')
        written.append(group.name)
    if parts:
        claim(obj.data, GROUPS, list(dict.fromkeys(owned_groups(obj) + written)))
        obj.vertex_groups.active_index = obj.vertex_groups[written[0]].index


def write_confidence(obj: bpy.types.Object, confidence: dict[str, float]) -> None:
    """Record the located parts' confidence on ``obj``'s mesh (merged with earlier parts')."""
    stored = dict(obj.data.get(CONFIDENCE_KEY, {}))
    stored.update({normalize_part(name): float(value) for name, value in confidence.items()})
    obj.data[CONFIDENCE_KEY] = stored


def read_confidence(obj: bpy.types.Object) -> dict[str, float]:
    """Part -> confidence of the parts located on ``obj`` (none for groups painted by hand)."""
    return {str(k): float(v) for k, v in dict(obj.data.get(CONFIDENCE_KEY, {})).items()}


# --- attributes ----------------------------------------------------------------------------------

def _point_attribute(mesh: bpy.types.Mesh, name: str, data_type: str):
    """The POINT attribute ``name`` of ``data_type``, created when missing.

    ``name`` is the add-on's own attribute or a free name (:func:`attribute_name`); one of another
    kind there now is not the add-on's, and is left alone.
    """
    attribute = mesh.attributes.get(name)
    if attribute is None:
        attribute = mesh.attributes.new(name, data_type, 'POINT')
        if attribute is not None and attribute.name != name:  # Blender picked another name
            mesh.attributes.remove(attribute)
            attribute = None
        if attribute is None:
            raise AddonError(f"Could not add the attribute '{name}' to '{mesh.name}' (a vertex group or attribute "
                             "there has that name now); run again.")
    elif (attribute.domain, attribute.data_type) != ('POINT', data_type):
        raise AddonError(f"'{mesh.name}' now has an attribute '{name}' of another kind that Partstyle did not "
                         "make; it was left alone. Run again.")
    return attribute


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


def read_color(mesh: bpy.types.Mesh, name: str | None) -> np.ndarray | None:
    """[V, 3] linear RGB per vertex of the color attribute ``name`` (corners averaged), or None."""
    attribute = mesh.attributes.get(name) if name else None
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


def read_float(mesh: bpy.types.Mesh, name: str | None) -> np.ndarray | None:
    """[V] float32 of the FLOAT POINT attribute ``name``, or None."""
    attribute = mesh.attributes.get(name) if name else None
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
    ours = owned_attributes(mesh)
    for name in (group.default_color_name, group.active_color_name, mesh.get(PREVIOUS_ACTIVE_KEY, "")):
        if name and name not in ours and name in group:
            return read_color(mesh, name)
    return None


def set_active_color(mesh: bpy.types.Mesh, name: str) -> None:
    """Make ``name`` the active color attribute, remembering the user's choice to give it back."""
    current = mesh.color_attributes.active_color_name
    if current and current != name and current not in owned_attributes(mesh):
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


#: Colorspaces whose values are linear light (Blender's names): a byte image in one of them is
#: converted to sRGB like a float image. Every other byte image is read as sRGB values.
LINEAR_COLORSPACES = ("linear", "scene_linear", "acescg", "aces2065-1")


def image_pixels(image: bpy.types.Image, *, what: str) -> np.ndarray:
    """A Blender image's pixels as a reference picture for the engine: [H, W, 3] float32 sRGB in 0..1,
    top row first (``engine.references.load_reference``'s layout). Main thread only.

    ``image.pixels`` is a flat [H * W * channels] array, bottom row first; alpha is dropped, one gray
    channel is repeated. Values: a byte image in the sRGB colorspace (or Non-Color) holds sRGB values
    as they are; a float image (its buffer is Blender's scene linear) or a byte image in a linear
    colorspace ('Linear Rec.709', ...) is converted linear -> sRGB; other colorspaces are read as sRGB.

    Raises :class:`AddonError` starting with ``what`` (e.g. ``"Row 2 (shade)"``) when the image has no
    pixels: its file is missing or unreadable.
    """
    count = len(image.pixels)  # loads the image's buffer from its file if needed
    width, height = image.size
    channels = image.channels
    if count == 0 or width * height == 0 or count != width * height * channels:
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        where = f" from '{path}', which is missing or not a readable image" if path else ""
        raise AddonError(f"{what}: the image '{image.name}' has no pixels{where}. Open the file again (the "
                         "row's folder button) or pick another image for the row.")
    flat = np.empty(count, np.float32)
    image.pixels.foreach_get(flat)
    pixels = flat.reshape(height, width, channels)[::-1]  # top row first
    pixels = np.nan_to_num(pixels[:, :, :3] if channels >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2))
    space = image.colorspace_settings.name.lower()
    if space != "non-color" and (image.is_float or space.startswith(LINEAR_COLORSPACES)):
        pixels = engine_link.load("colors", light=True).linear_to_srgb(pixels)
    return np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
