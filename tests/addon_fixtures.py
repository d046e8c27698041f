"""Helpers for the add-on tests (Blender as the ``bpy`` module): the add-on registered for a test
module, a procedural lamp object, the test's fast settings, and a full description of an object's
state for before/after comparisons."""

from __future__ import annotations

import hashlib

import bpy
import numpy as np

from engine.samples import sample_mesh

#: Small renders, two views, no grounding-space loss: a few seconds per run on a 2-core CPU.
FAST_OVERRIDES = ("guidance.grounding_every=0", "render.resolution=96", "views.count=2")
LOCATE_OVERRIDES = ("localize.resolution=256",)  # the tiny model's own input size: no resize
PROMPT = "red base, yellow tube, blue shade"
ITERATIONS, SEED = 4, 3

_WIDTH = {"FLOAT": 1, "INT": 1, "INT8": 1, "BOOLEAN": 1, "FLOAT_VECTOR": 3, "FLOAT2": 2, "INT32_2D": 2,
          "FLOAT_COLOR": 4, "BYTE_COLOR": 4, "QUATERNION": 4, "FLOAT4X4": 16}
_PROP = {"FLOAT": "value", "INT": "value", "INT8": "value", "BOOLEAN": "value", "FLOAT_VECTOR": "vector",
         "FLOAT2": "vector", "INT32_2D": "value", "FLOAT_COLOR": "color", "BYTE_COLOR": "color",
         "QUATERNION": "value", "FLOAT4X4": "value"}


def registered_addon():
    """Generator for a module-scoped fixture: the add-on registered (and torch on one thread) for
    the module's tests, unregistered after."""
    import torch

    import addon

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these runs are tiny; on a busy 2-core machine more threads only contend
    registered = hasattr(bpy.types.Scene, "partstyle")
    if not registered:
        addon.register()
    yield
    if hasattr(bpy.types.Scene, "partstyle"):
        addon.unregister()
    torch.set_num_threads(threads)


def lamp_arrays(faces: int = 2000):
    """The sample lamp turned Z-up (Blender's frame): vertices [V, 3], faces [F, 3], labels, names."""
    mesh = sample_mesh("lamp", faces)
    vertices = np.stack([mesh.vertices[:, 0], -mesh.vertices[:, 2], mesh.vertices[:, 1]], 1).astype(np.float32)
    return vertices, mesh.faces, mesh.labels, mesh.label_names


def make_lamp(name: str = "Lamp", *, groups: bool = True, user_data: bool = False) -> bpy.types.Object:
    """A lamp object made active; ``groups``: part:<name> groups from the sample's labels;
    ``user_data``: a user color attribute, vertex group and material, which must survive untouched."""
    vertices, faces, labels, names = lamp_arrays()
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    if groups:
        for k, part in enumerate(names):
            group = obj.vertex_groups.new(name=f"part:{part}")
            group.add(np.flatnonzero(labels == k).tolist(), 1.0, 'REPLACE')
    if user_data:
        colors = mesh.color_attributes.new("Col", 'BYTE_COLOR', 'CORNER')
        colors.data.foreach_set("color", np.tile([0.2, 0.6, 0.3, 1.0], len(colors.data)).astype(np.float32))
        mesh.color_attributes.active_color = colors
        group = obj.vertex_groups.new(name="Mine")
        group.add(list(range(0, len(vertices), 3)), 0.25, 'REPLACE')
        material = bpy.data.materials.new("UserMaterial")
        material.diffuse_color = (0.1, 0.2, 0.9, 1.0)
        mesh.materials.append(material)
    return obj


def reset_scene() -> None:
    """An empty scene (registered classes and properties stay)."""
    bpy.ops.wm.read_homefile(use_empty=True)


def set_panel(prompt: str = PROMPT, *, use_groups: bool = True, iterations: int = ITERATIONS, seed: int = SEED,
              overrides=FAST_OVERRIDES, parse: bool = True):
    """Fill the scene's Partstyle settings as a user would in the panel."""
    settings = bpy.context.scene.partstyle
    settings.prompt = prompt
    settings.models = 'tiny'
    settings.device = 'cpu'
    settings.preset = 'fast'
    settings.iterations = iterations
    settings.seed = seed
    settings.use_vertex_groups = use_groups
    settings.overrides = " ".join(overrides)
    if parse:
        assert bpy.ops.partstyle.parse_prompt() == {'FINISHED'}
    return settings


def attribute_values(attribute) -> np.ndarray | None:
    """Raw values of any attribute (None for strings)."""
    prop = _PROP.get(attribute.data_type)
    if prop is None:
        return None
    integer = {"BOOLEAN": bool, "INT": np.int64, "INT8": np.int64, "INT32_2D": np.int64}
    dtype = integer.get(attribute.data_type, np.float64)
    values = np.empty(len(attribute.data) * _WIDTH[attribute.data_type], dtype)
    attribute.data.foreach_get(prop, values)
    return values


def group_weights(obj) -> dict[str, np.ndarray]:
    out = {g.name: np.zeros(len(obj.data.vertices)) for g in obj.vertex_groups}
    index = {g.index: g.name for g in obj.vertex_groups}
    for vertex in obj.data.vertices:
        for element in vertex.groups:
            out[index[element.group]][vertex.index] = element.weight
    return out


def _value(socket):
    value = getattr(socket, "default_value", None)
    try:
        return tuple(value)
    except TypeError:
        return value


def material_state(material) -> tuple:
    """A material's name, viewport color, nodes with their input values, and link count."""
    if material is None:
        return (None,)
    tree = material.node_tree
    nodes = () if tree is None else tuple(sorted(
        (n.bl_idname, n.name, repr([_value(i) for i in n.inputs])) for n in tree.nodes))
    return (material.name, tuple(material.diffuse_color), nodes, 0 if tree is None else len(tree.links))


def object_state(obj) -> dict:
    """Everything the add-on could touch on ``obj``: attributes with their values, vertex groups
    with their weights, materials with their nodes, modifiers, the active color, custom properties."""
    mesh = obj.data
    return {
        "attributes": {a.name: (a.domain, a.data_type, attribute_values(a)) for a in mesh.attributes},
        "groups": group_weights(obj),
        "group_order": [g.name for g in obj.vertex_groups],
        "materials": [material_state(m) for m in mesh.materials],
        "modifiers": [(m.name, m.type) for m in obj.modifiers],
        "modifier_groups": [getattr(getattr(m, "node_group", None), "name", None) for m in obj.modifiers],
        "active_color": mesh.color_attributes.active_color_name,
        "render_color": mesh.color_attributes.default_color_name,
        "mesh_props": sorted(mesh.keys()),
        "object_props": sorted(obj.keys()),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    assert before["attributes"].keys() == after["attributes"].keys(), "attribute names differ"
    for name, (domain, kind, values) in before["attributes"].items():
        domain2, kind2, values2 = after["attributes"][name]
        assert (domain, kind) == (domain2, kind2), name
        if values is not None:
            np.testing.assert_array_equal(values, values2, err_msg=f"attribute {name} changed")
    assert before["groups"].keys() == after["groups"].keys()
    for name in before["groups"]:
        np.testing.assert_array_equal(before["groups"][name], after["groups"][name], err_msg=f"group {name}")
    for key in ("group_order", "materials", "modifiers", "modifier_groups", "active_color", "render_color",
                "mesh_props", "object_props"):
        assert before[key] == after[key], key


def file_digest(path) -> str:
    """sha256 of a file's bytes: the input .blend is never written."""
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()
