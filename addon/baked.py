"""Baked maps in the .blend file: three packed images and a material that uses them. Main thread only.

With *Maps* on (the engine's ``texture.size``), the engine bakes the style field on the object's UV
map (``engine.texture.bake.BakedMaps``). :func:`write_maps` turns them into

- three images packed into the .blend, named after the object (made unique):
  ``<object>_Partstyle_base_color`` (8-bit, sRGB), ``<object>_Partstyle_normal`` (8-bit, Non-Color,
  tangent space, OpenGL convention) and ``<object>_Partstyle_detail`` (float, Non-Color: the
  displacement the vertices do not carry, in object units as they are);
- a material ``<object>_Partstyle_maps``: a copy of the user's material in the object's first slot
  (the user's own is never edited), else a new one with a Principled BSDF. The base color image
  feeds the Principled BSDF's Base Color; the normal image goes through a Normal Map node (tangent
  space, the baked UV map) into its Normal; the detail image goes through a Displacement node
  (Midlevel 0, Scale 1, Object space) into the Material Output's Displacement, and the material
  displaces *and* bumps (``displacement_method = 'BOTH'``). The image nodes read the baked UV map.

The material takes the first slot (a new slot where there is none); what the slot held before is
recorded (the user's material as a pointer in the object's ``partstyle_replaced_material``, which
also keeps it in the file while no slot uses it), and :func:`remove_maps` (Clear results, or a
later run) puts it back and removes the material and the images. The rest is recorded on the
object (``partstyle_owned``, see :mod:`.bridge`); the material and the images carry the add-on's
tag (:data:`.nodes.OWNER_KEY`), the material also :data:`BAKED_KEY`.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import bridge, nodes

#: The object's record (bridge.OWNED_KEY): role -> the name of the add-on's image of that map.
IMAGE_ROLES = ("map_base_color", "map_normal", "map_detail")
MATERIAL = "map_material"  # the baked material's name
#: Object custom property: the user's material that was in the first slot, as a pointer, which keeps
#: it alive (a material without users is not saved) and finds it whatever it is renamed to.
REPLACED = "partstyle_replaced_material"
EMPTY_SLOT = "map_empty_slot"  # 1: the first slot was there, without a material
#: Custom property of the add-on's baked material (besides nodes.OWNER_KEY).
BAKED_KEY = nodes.BAKED_KEY
SUFFIX = "_Partstyle"


def _rgba(rgb: np.ndarray) -> np.ndarray:
    """[S, S, 3] (or [S, S]) rows top first -> flat RGBA float32, rows bottom first (Blender's order)."""
    rgb = np.asarray(rgb, np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    size = rgb.shape[0]
    pixels = np.ones((size, rgb.shape[1], 4), np.float32)
    pixels[:, :, :3] = rgb
    return np.ascontiguousarray(pixels[::-1]).ravel()


def _image(name: str, values: np.ndarray, *, float_buffer: bool, colorspace: str) -> bpy.types.Image:
    """A new image ``name`` (or a free name) with ``values`` (rows top first), packed into the .blend."""
    size = values.shape[0]
    image = bpy.data.images.new(bridge.free_name(name, bpy.data.images.keys()), size, values.shape[1],
                                alpha=False, float_buffer=float_buffer)
    image[nodes.OWNER_KEY] = True
    image.colorspace_settings.name = colorspace
    if float_buffer:
        image.use_half_precision = False
    image.pixels.foreach_set(_rgba(values))
    image.update()
    image.pack()
    return image


def write_images(obj: bpy.types.Object, maps) -> dict[str, bpy.types.Image]:
    """The three images of ``maps`` (BakedMaps), packed and recorded on ``obj``; role -> image."""
    base = obj.name + SUFFIX
    normal = np.clip(np.asarray(maps.normal, np.float32) * 0.5 + 0.5, 0.0, 1.0)
    images = {
        "map_base_color": _image(f"{base}_base_color", np.clip(maps.base_color, 0.0, 1.0), float_buffer=False,
                                 colorspace='sRGB'),
        "map_normal": _image(f"{base}_normal", normal, float_buffer=False, colorspace='Non-Color'),
        "map_detail": _image(f"{base}_detail", maps.detail, float_buffer=True, colorspace='Non-Color'),
    }
    for role, image in images.items():
        bridge.claim(obj, role, image.name)
    return images


def baked_material(obj: bpy.types.Object) -> bpy.types.Material | None:
    """The add-on's baked material recorded on ``obj`` (never a user's material), or None."""
    name = bridge.owned(obj).get(MATERIAL)
    material = bpy.data.materials.get(name) if isinstance(name, str) and name else None
    return material if is_baked(material) else None


def is_baked(material) -> bool:
    return nodes.is_ours(material) and bool(material.get(BAKED_KEY, False))


def _node(tree, idname: str, location, **properties):
    node = tree.nodes.new(idname)
    node.location = location
    for key, value in properties.items():
        setattr(node, key, value)
    return node


def _output(tree) -> bpy.types.Node:
    outputs = [n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial"]
    return next((n for n in outputs if n.is_active_output), None) or (outputs[0] if outputs else
                                                                       tree.nodes.new("ShaderNodeOutputMaterial"))


def _principled(tree, output) -> bpy.types.Node:
    """The Principled BSDF the output shows (else the first one; else a new one wired to the output)."""
    surface = output.inputs["Surface"]
    shown = surface.links[0].from_node if surface.is_linked else None
    if shown is not None and shown.bl_idname == "ShaderNodeBsdfPrincipled":
        return shown
    shader = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if shader is None:
        shader = _node(tree, "ShaderNodeBsdfPrincipled", (output.location.x - 300, output.location.y))
        tree.links.new(shader.outputs["BSDF"], surface)
    return shader


def _material(obj: bpy.types.Object, user: bpy.types.Material | None) -> bpy.types.Material:
    """A copy of ``user`` (or a new material), named after ``obj`` and tagged as the add-on's."""
    name = bridge.free_name(obj.name + SUFFIX + "_maps", bpy.data.materials.keys())
    material = user.copy() if user is not None else bpy.data.materials.new(name)
    material.name = name
    for key in (nodes.OWNER_KEY, BAKED_KEY):
        material[key] = True
    if material.node_tree is None or (bpy.app.version < (5, 0, 0) and not material.use_nodes):  # Blender < 5
        material.use_nodes = True
    return material


def _wire(material: bpy.types.Material, images: dict, uv_name: str) -> None:
    """Base color -> Principled Base Color, normal -> Normal Map -> Normal, detail -> Displacement ->
    Material Output Displacement, all reading the UV map ``uv_name``; displacement and bump."""
    tree = material.node_tree
    output = _output(tree)
    shader = _principled(tree, output)
    x, y = shader.location.x - 700, shader.location.y
    uv = _node(tree, "ShaderNodeUVMap", (x - 250, y - 200), uv_map=uv_name, label="Partstyle UV")
    textures = {}
    for k, role in enumerate(IMAGE_ROLES):
        textures[role] = _node(tree, "ShaderNodeTexImage", (x, y - 300 * k), image=images[role],
                               label=f"Partstyle {role[4:].replace('_', ' ')}")
        tree.links.new(uv.outputs["UV"], textures[role].inputs["Vector"])
    normal_map = _node(tree, "ShaderNodeNormalMap", (x + 350, y - 300), space='TANGENT', uv_map=uv_name)
    displacement = _node(tree, "ShaderNodeDisplacement", (output.location.x, output.location.y - 250), space='OBJECT')
    displacement.inputs["Midlevel"].default_value = 0.0
    displacement.inputs["Scale"].default_value = 1.0
    links = tree.links
    links.new(textures["map_base_color"].outputs["Color"], shader.inputs["Base Color"])
    links.new(textures["map_normal"].outputs["Color"], normal_map.inputs["Color"])
    links.new(normal_map.outputs["Normal"], shader.inputs["Normal"])
    links.new(textures["map_detail"].outputs["Color"], displacement.inputs["Height"])
    links.new(displacement.outputs["Displacement"], output.inputs["Displacement"])
    if hasattr(material, "displacement_method"):  # Blender 4.1+
        material.displacement_method = 'BOTH'
    else:
        material.cycles.displacement_method = 'BOTH'


def write_maps(obj: bpy.types.Object, maps, uv_name: str) -> bpy.types.Material:
    """Replace any earlier maps of ``obj`` by ``maps``: images, the material in the first slot (module
    docstring); returns the material."""
    remove_maps(obj)
    slots = obj.material_slots
    current = slots[0].material if len(slots) else None
    user = current if current is not None and not nodes.is_ours(current) else None
    images = write_images(obj, maps)
    material = _material(obj, user)
    _wire(material, images, uv_name)
    bridge.claim(obj, MATERIAL, material.name)
    if user is not None:
        obj[REPLACED] = user
    elif len(slots) and current is None:
        bridge.claim(obj, EMPTY_SLOT, 1)
    if len(slots):
        slots[0].material = material
        if current is not None and current is not user and current.users == 0:  # the add-on's own, now unused
            bpy.data.materials.remove(current)
    else:
        obj.data.materials.append(material)
    return material


def remove_maps(obj: bpy.types.Object) -> list[str]:
    """Remove the add-on's baked material from ``obj`` (what its slot held comes back) and the material
    and images once nothing else uses them; returns what was removed, for the report."""
    record = bridge.owned(obj)
    material = baked_material(obj)
    previous = obj.get(REPLACED)
    previous = previous if isinstance(previous, bpy.types.Material) else None
    removed = []
    if material is not None:
        for index in reversed(range(len(obj.material_slots))):
            slot = obj.material_slots[index]
            if slot.material != material:
                continue
            if previous is not None or record.get(EMPTY_SLOT):
                slot.material = previous
            elif slot.link == 'DATA':
                obj.data.materials.pop(index=index)
            else:
                slot.material = None
        removed.append(f"material {material.name}")
        if material.users == 0:
            bpy.data.materials.remove(material)
    for role in IMAGE_ROLES:
        name = record.get(role)
        image = bpy.data.images.get(name) if isinstance(name, str) and name else None
        if nodes.is_ours(image) and image.users == 0:
            removed.append(f"image {image.name}")
            bpy.data.images.remove(image)
    for role in (*IMAGE_ROLES, MATERIAL, EMPTY_SLOT):
        bridge.disown(obj, role)
    obj.pop(REPLACED, None)
    return removed
