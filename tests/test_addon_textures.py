"""Baked maps in Blender: the Maps option (the engine's ``texture.size``), the object's UV map sent as
``corner_uv``, and the writeback (addon/baked.py): three packed images and a material wired to them,
a copy of the user's material that Clear results swaps back (docs/blender.md, "Baked maps")."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

try:
    import bpy
except ImportError as exc:  # bpy 5.0.x exists for Python 3.11 only
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from addon_fixtures import FAST_OVERRIDES, make_lamp, material_state, object_state, set_panel

from addon import baked, bridge, cli, cli_manifest, engine_link, operators, runs

pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py: addon_registered, scene

SIZE = 64
MAPS = (*FAST_OVERRIDES, f"texture.size={SIZE}")  # the panel's sizes start at 512: tests bake small maps


def _unwrap(obj) -> str:
    """Smart UV Project on ``obj`` (active, selected); returns the UV map's name."""
    bpy.ops.object.mode_set(mode='EDIT')
    bpy.ops.mesh.select_all(action='SELECT')
    assert bpy.ops.uv.smart_project(island_margin=0.02) == {'FINISHED'}
    bpy.ops.object.mode_set(mode='OBJECT')
    return obj.data.uv_layers.active.name


def _users_material(obj) -> bpy.types.Material:
    """A node material of the user's with a red Principled BSDF, in the object's only slot."""
    material = bpy.data.materials.new("UserMaterial")
    if material.node_tree is None:
        material.use_nodes = True
    shader = next(n for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    shader.inputs["Base Color"].default_value = (0.8, 0.05, 0.05, 1.0)
    shader.inputs["Roughness"].default_value = 0.3
    obj.data.materials.append(material)
    return material


def _pixels(image) -> np.ndarray:
    """[H, W, 4] float32, rows top first (the engine's order)."""
    values = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(values)
    return values.reshape(image.size[1], image.size[0], 4)[::-1]


def _linked(socket):
    """The node feeding ``socket`` (None when unlinked)."""
    return socket.links[0].from_node if socket.is_linked else None


def _images(obj) -> dict[str, bpy.types.Image]:
    record = bridge.owned(obj)
    return {role: bpy.data.images.get(record.get(role, "")) for role in baked.IMAGE_ROLES}


def _stylize(obj, overrides=MAPS):
    set_panel(iterations=2, overrides=overrides)
    return bpy.ops.partstyle.stylize()


def _check_wiring(material, images, uv_name):
    tree = material.node_tree
    output = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial" and n.is_active_output)
    shader = _linked(output.inputs["Surface"])
    assert shader.bl_idname == "ShaderNodeBsdfPrincipled"
    color = _linked(shader.inputs["Base Color"])
    assert color.bl_idname == "ShaderNodeTexImage" and color.image == images["map_base_color"]
    normal_map = _linked(shader.inputs["Normal"])
    assert normal_map.bl_idname == "ShaderNodeNormalMap"
    assert (normal_map.space, normal_map.uv_map) == ('TANGENT', uv_name)
    assert _linked(normal_map.inputs["Color"]).image == images["map_normal"]
    displacement = _linked(output.inputs["Displacement"])
    assert displacement.bl_idname == "ShaderNodeDisplacement" and displacement.space == 'OBJECT'
    assert displacement.inputs["Midlevel"].default_value == 0.0
    assert displacement.inputs["Scale"].default_value == 1.0
    assert _linked(displacement.inputs["Height"]).image == images["map_detail"]
    assert material.displacement_method == 'BOTH'
    for texture in (color, _linked(normal_map.inputs["Color"]), _linked(displacement.inputs["Height"])):
        assert _linked(texture.inputs["Vector"]).uv_map == uv_name  # the baked UV map, whatever is active


def _triangle_uv_centres(obj) -> np.ndarray:
    corner_uv, _ = bridge.corner_uvs(obj)
    return corner_uv.mean(1)


def test_maps_write_packed_images_and_a_wired_copy_of_the_users_material(scene):
    obj = make_lamp()
    uv_name = _unwrap(obj)
    user = _users_material(obj)
    user_before = material_state(user)
    assert _stylize(obj) == {'FINISHED'}

    images = _images(obj)
    assert all(image is not None for image in images.values()), images
    for role, image in images.items():
        assert tuple(image.size) == (SIZE, SIZE), role
        assert image.packed_file is not None, f"{role} is not packed into the .blend"
    assert images["map_base_color"].colorspace_settings.name == 'sRGB'
    assert images["map_normal"].colorspace_settings.name == 'Non-Color'
    assert images["map_detail"].colorspace_settings.name == 'Non-Color'
    assert images["map_detail"].is_float and not images["map_base_color"].is_float

    material = obj.material_slots[0].material
    assert material is not user and material == baked.baked_material(obj)
    assert baked.is_baked(material) and material.name.startswith(obj.name)
    _check_wiring(material, images, uv_name)
    assert material_state(user) == user_before, "the user's material was edited"
    assert user.name not in [m.name for m in obj.data.materials if m is not None]
    assert obj[baked.REPLACED] == user

    # The base color inside the islands is the lamp's colors, not the black background, and it sits
    # where the UVs say (rows flipped into Blender's order): at each triangle's UV centre the map is
    # close to the mean of its corners' Partstyle colors.
    colors = _pixels(images["map_base_color"])[:, :, :3]
    centres = _triangle_uv_centres(obj)
    texel = np.clip(((1.0 - centres[:, 1]) * SIZE).astype(int), 0, SIZE - 1), \
        np.clip((centres[:, 0] * SIZE).astype(int), 0, SIZE - 1)
    sampled = colors[texel]
    assert (sampled.max(1) > 0.02).mean() > 0.95, "the islands are background"
    _, faces = bridge.mesh_arrays(obj)
    linear = bridge.read_color(obj.data, bridge.owned_attribute(obj.data, bridge.COLOR))
    srgb = engine_link.load("colors", light=True).linear_to_srgb(linear)
    expected = srgb[faces].mean(1)
    error = np.abs(sampled - expected).mean(1)
    flipped = np.abs(colors[::-1][texel] - expected).mean(1)
    assert np.median(error) < 0.1, np.median(error)
    assert np.median(error) < np.median(flipped), "the rows are not in Blender's bottom-up order"
    normals = _pixels(images["map_normal"])[:, :, :3] * 2.0 - 1.0
    np.testing.assert_allclose(np.linalg.norm(normals[texel], axis=1), 1.0, atol=0.03)


def test_clear_restores_the_users_material_and_removes_the_maps(scene):
    obj = make_lamp()
    _unwrap(obj)
    user = _users_material(obj)
    before, user_before = object_state(obj), material_state(user)
    images_before = set(bpy.data.images.keys())
    assert _stylize(obj) == {'FINISHED'}
    assert _stylize(obj) == {'FINISHED'}  # a second run replaces the first's maps
    assert sorted(bpy.data.materials.keys()) == sorted([user.name, baked.baked_material(obj).name])
    assert len(set(bpy.data.images.keys()) - images_before) == 3
    assert bpy.ops.partstyle.clear() == {'FINISHED'}
    assert obj.material_slots[0].material == user and len(obj.material_slots) == 1
    assert material_state(user) == user_before
    assert set(bpy.data.images.keys()) == images_before
    assert not any(baked.is_baked(m) for m in bpy.data.materials)
    after = object_state(obj)
    for key in ("materials", "modifiers", "object_props", "mesh_props"):
        assert after[key] == before[key], key


def test_maps_without_a_material_get_a_new_one_and_clear_removes_the_slot(scene):
    obj = make_lamp()
    uv_name = _unwrap(obj)
    assert _stylize(obj) == {'FINISHED'}
    assert len(obj.material_slots) == 1
    material = obj.material_slots[0].material
    assert baked.is_baked(material)
    _check_wiring(material, _images(obj), uv_name)
    assert baked.REPLACED not in obj
    assert bpy.ops.partstyle.clear() == {'FINISHED'}
    assert len(obj.data.materials) == 0
    assert not any(baked.is_baked(m) for m in bpy.data.materials) and len(bpy.data.images) == 0


def test_maps_on_an_object_without_uv_map_is_refused_before_the_run(scene):
    obj = make_lamp()
    _users_material(obj)
    assert len(obj.data.uv_layers) == 0
    before = object_state(obj)
    set_panel(iterations=2, overrides=MAPS)
    with pytest.raises(RuntimeError, match=r"has no UV map; add one .* or set Maps to Off"):
        bpy.ops.partstyle.stylize()
    assert len(bpy.data.images) == 0
    assert not any(baked.is_baked(m) for m in bpy.data.materials)
    after = object_state(obj)
    for key in ("attributes", "materials", "modifiers", "object_props", "mesh_props"):
        assert str(after[key]) == str(before[key]), key


def test_maps_off_writes_no_image_and_keeps_the_material(scene):
    obj = make_lamp()
    _unwrap(obj)
    user = _users_material(obj)
    user_before = material_state(user)
    assert bpy.context.scene.partstyle.maps == '0'
    assert _stylize(obj, FAST_OVERRIDES) == {'FINISHED'}
    assert len(bpy.data.images) == 0
    assert [slot.material for slot in obj.material_slots] == [user]
    assert material_state(user) == user_before
    assert not any(key.startswith("map_") for key in bridge.owned(obj))


def test_the_maps_option_is_the_runs_texture_size(scene):
    make_lamp()
    settings = set_panel(iterations=2, overrides=FAST_OVERRIDES)
    request = operators.request_from(bpy.context)
    assert request.texture_size == 0 and request.settings(live=False).texture.size == 0
    assert all(not item.startswith("texture.") for item in request.overrides)
    settings.maps = '1024'
    request = operators.request_from(bpy.context)
    assert request.texture_size == 1024 and request.settings(live=False).texture.size == 1024
    assert [item.identifier for item in settings.bl_rna.properties["maps"].enum_items] == \
        ['0', '512', '1024', '2048', '4096']


def test_the_command_line_and_manifest_pass_texture():
    args = cli.build_parser().parse_args(["--object", "Lamp", "--prompt", "red base", "--out", "x.blend",
                                          "--texture", "256"])
    request = cli.request_for("Lamp", args, runs, engine_link)
    assert request.texture_size == 256 and request.settings(live=False).texture.size == 256
    plain = cli.build_parser().parse_args(["--object", "Lamp", "--prompt", "red base", "--out", "x.blend"])
    assert cli.request_for("Lamp", plain, runs, engine_link).settings(live=False).texture.size == 0
    manifest = engine_link.load("batch.manifest", light=True)
    args = argparse.Namespace(**{**vars(plain), "manifest": "m.jsonl"})
    row = {"object": "Vase", "prompt": "gold", "texture": 128}
    name, options = cli_manifest._row_options(row, args, ".", manifest, engine_link)
    assert name == "Vase" and cli.request_for(name, options, runs, engine_link).texture_size == 128


def _render(tmp_path, engine: str = 'CYCLES', size: int = 32) -> np.ndarray:
    """A ``size`` px render (Cycles: CPU, 4 samples; or Eevee) of the scene from the front under a
    uniform white sky, transparent film, Standard view: [H, W, 4] top row first."""
    scene = bpy.context.scene
    scene.render.engine = engine
    if engine == 'CYCLES':
        scene.cycles.device = 'CPU'
        scene.cycles.samples = 4
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.view_settings.view_transform = 'Standard'
    scene.render.image_settings.color_mode = 'RGBA'
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    camera.location, camera.rotation_euler = (0.0, -1.0, 0.275), (np.pi / 2, 0.0, 0.0)  # the lamp: z 0..0.55
    scene.camera = camera
    scene.world = bpy.data.worlds.new("White")
    if scene.world.node_tree is None:
        scene.world.use_nodes = True
    background = next(n for n in scene.world.node_tree.nodes if n.bl_idname == "ShaderNodeBackground")
    background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    scene.render.filepath = str(tmp_path / "render.png")
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(scene.render.filepath)
    return _pixels(image)


def test_cycles_renders_the_base_color_map(scene, tmp_path):
    obj = make_lamp()
    _unwrap(obj)
    _users_material(obj)  # red: what the object would show without the map
    assert _stylize(obj) == {'FINISHED'}
    image = _images(obj)["map_base_color"]
    green = np.tile(np.array([0.1, 0.8, 0.1, 1.0], np.float32), SIZE * SIZE)
    image.pixels.foreach_set(green)  # a map with one known color: the render must show it
    image.update()
    pixels = _render(tmp_path)
    inside = pixels[..., 3] > 0.99
    assert inside.sum() > 50, "the lamp is not in view"
    color = np.median(pixels[inside][:, :3], 0)
    assert color[1] > 2.0 * color[0] and color[1] > 2.0 * color[2], color


def test_eevee_renders_each_part_in_its_own_color_from_the_maps(scene, tmp_path):
    """The material wired by the writeback renders in Eevee (Blender's real-time engine) with the
    maps read through the baked UV map: the base map's texels are painted green on the lamp's lower
    faces and blue on its upper ones, and the render shows green below and blue above."""
    from engine.texture.texels import sample_texels

    obj = make_lamp()
    _unwrap(obj)
    assert _stylize(obj) == {'FINISHED'}
    image = _images(obj)["map_base_color"]
    vertices, triangles = bridge.mesh_arrays(obj)
    texels = sample_texels(bridge.corner_uvs(obj)[0], SIZE)
    lower = vertices[triangles[texels.face]].mean(1)[:, 2] < 0.2  # the lamp stands from z 0 to 0.55
    paint = np.zeros((SIZE, SIZE, 4), np.float32)
    paint[texels.rows, texels.cols] = np.where(lower[:, None], [0.1, 0.8, 0.1, 1.0], [0.1, 0.1, 0.8, 1.0])
    image.pixels.foreach_set(paint[::-1].reshape(-1))  # Blender's rows start at the bottom
    image.update()
    pixels = _render(tmp_path, 'BLENDER_EEVEE', size=48)
    inside = pixels[..., 3] > 0.99
    rows = np.nonzero(inside)[0]
    top, bottom = rows.min(), rows.max()
    assert bottom - top > 10, "the lamp is not in view"
    below = inside & (np.arange(48)[:, None] > top + 0.8 * (bottom - top))  # the base (z < 0.11)
    above = inside & (np.arange(48)[:, None] < top + 0.4 * (bottom - top))  # the shade (z > 0.33)
    green, blue = np.median(pixels[below][:, :3], 0), np.median(pixels[above][:, :3], 0)
    assert green[1] > 2.0 * green[0] and green[1] > 2.0 * green[2], green
    assert blue[2] > 2.0 * blue[0] and blue[2] > 2.0 * blue[1], blue


def test_maps_survive_saving_and_a_run_with_maps_off_removes_them(scene, tmp_path):
    obj = make_lamp()
    _unwrap(obj)
    user_name = _users_material(obj).name
    assert _stylize(obj) == {'FINISHED'}
    before = {role: _pixels(image) for role, image in _images(obj).items()}
    path = str(tmp_path / "maps.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    obj = bpy.data.objects["Lamp"]
    for role, image in _images(obj).items():  # packed, and read back as written (the detail as float)
        assert image.packed_file is not None, role
        np.testing.assert_allclose(_pixels(image), before[role], atol=1e-6 if role == "map_detail" else 0.0,
                                   err_msg=role)
    assert np.abs(before["map_detail"]).max() > 0.0  # a detail map of zeros would prove nothing
    assert _stylize(obj, FAST_OVERRIDES) == {'FINISHED'}  # Maps Off: the old maps no longer match
    user = bpy.data.materials[user_name]
    assert [slot.material for slot in obj.material_slots] == [user]
    assert len(bpy.data.images) == 0 and not any(baked.is_baked(m) for m in bpy.data.materials)
