"""engine.glb: the GLB bytes read back with an independent parser, and with trimesh."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest
from tolerances import SAME_MATH, assert_close

from engine.glb import write_glb

_DTYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def _parse_glb(path):
    """(json dict, bin bytes, total length from header, file size) of a GLB file."""
    with open(path, "rb") as f:
        raw = f.read()
    magic, version, length = struct.unpack_from("<III", raw, 0)
    assert magic == 0x46546C67 and version == 2
    json_len, json_type = struct.unpack_from("<II", raw, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(raw[20:20 + json_len].decode("utf-8"))
    bin_start = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<II", raw, bin_start)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    assert bin_start + 8 + bin_len == len(raw)
    return doc, raw[bin_start + 8:bin_start + 8 + bin_len], length, len(raw)


def _accessor(doc, binary, index):
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_DTYPES[acc["componentType"]]).newbyteorder("<")
    width = _WIDTH[acc["type"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    assert start + acc["count"] * width * dtype.itemsize <= view["byteOffset"] + view["byteLength"]
    arr = np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start)
    return arr.reshape(acc["count"], width) if width > 1 else arr


@pytest.fixture
def sphere():
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.creation.icosphere(1)
    rng = np.random.default_rng(0)
    v = np.asarray(mesh.vertices, np.float32)
    colors = rng.random((len(v), 3)).astype(np.float32)
    normals = v / np.linalg.norm(v, axis=1, keepdims=True)
    disp = rng.normal(size=len(v)).astype(np.float32)
    return v, np.asarray(mesh.faces, np.int64), colors, normals, disp


def test_round_trip_exact(tmp_path, sphere):
    v, f, colors, normals, disp = sphere
    path = tmp_path / "out.glb"
    write_glb(path, v, f, colors_linear=colors, normals=normals,
              extra_attributes={"displacement": disp}, mesh_name="ball")
    doc, binary, header_len, file_len = _parse_glb(path)
    assert header_len == file_len

    assert doc["asset"]["version"] == "2.0" and doc["asset"]["generator"] == "Partstyle"
    assert len(doc["scenes"]) == len(doc["nodes"]) == len(doc["meshes"]) == 1
    assert doc["scenes"][doc["scene"]]["nodes"] == [0] and doc["nodes"][0]["mesh"] == 0
    (prim,) = doc["meshes"][0]["primitives"]
    assert prim["mode"] == 4 and doc["meshes"][0]["name"] == "ball"
    material = doc["materials"][prim["material"]]
    assert material["doubleSided"] is True
    pbr = material["pbrMetallicRoughness"]
    assert pbr["baseColorFactor"] == [1, 1, 1, 1]
    assert pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 1
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "COLOR_0", "_DISPLACEMENT"}

    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= len(binary)
    assert doc["buffers"][0]["byteLength"] <= len(binary)

    pos_acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert pos_acc["type"] == "VEC3" and pos_acc["componentType"] == 5126
    np.testing.assert_array_equal(pos_acc["min"], v.min(axis=0))
    np.testing.assert_array_equal(pos_acc["max"], v.max(axis=0))
    np.testing.assert_array_equal(_accessor(doc, binary, prim["attributes"]["POSITION"]), v)
    np.testing.assert_array_equal(_accessor(doc, binary, prim["attributes"]["COLOR_0"]), colors)
    np.testing.assert_array_equal(_accessor(doc, binary, prim["attributes"]["_DISPLACEMENT"]), disp)
    assert_close(_accessor(doc, binary, prim["attributes"]["NORMAL"]), normals, rel=SAME_MATH, what="normals")
    idx_acc = doc["accessors"][prim["indices"]]
    assert idx_acc["componentType"] == 5125 and idx_acc["type"] == "SCALAR"
    assert doc["bufferViews"][idx_acc["bufferView"]]["target"] == 34963
    np.testing.assert_array_equal(_accessor(doc, binary, prim["indices"]).reshape(-1, 3), f)
    assert os.listdir(tmp_path) == ["out.glb"]  # no temporary file left over


def test_minimal_mesh_and_odd_sizes_stay_aligned(tmp_path):
    # 1 triangle (36 bytes of indices) and 3 vertices: a 12-byte scalar attribute; the JSON
    # chunk length depends on the name, so try a few to hit every padding remainder.
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    for name in ("a", "ab", "abc", "abcd"):
        path = tmp_path / f"{name}.glb"
        write_glb(path, v, [[0, 1, 2]], extra_attributes={"w": [0.5, 1.5, -2.0]}, mesh_name=name)
        doc, binary, header_len, file_len = _parse_glb(path)
        assert header_len == file_len and file_len % 4 == 0
        assert all(view["byteOffset"] % 4 == 0 for view in doc["bufferViews"])
        prim = doc["meshes"][0]["primitives"][0]
        assert set(prim["attributes"]) == {"POSITION", "_W"}
        np.testing.assert_array_equal(_accessor(doc, binary, prim["attributes"]["_W"]),
                                      np.float32([0.5, 1.5, -2.0]))


def test_trimesh_loads_it(tmp_path, sphere):
    trimesh = pytest.importorskip("trimesh")
    v, f, colors, normals, disp = sphere
    path = tmp_path / "out.glb"
    write_glb(path, v, f, colors_linear=colors, normals=normals,
              extra_attributes={"displacement": disp})
    default = trimesh.load(path, force="mesh")
    assert len(default.vertices) == len(v) and len(default.faces) == len(f)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.vertices.shape == v.shape and loaded.faces.shape == f.shape
    assert_close(loaded.vertices, v, rel=SAME_MATH, what="vertices")
    np.testing.assert_array_equal(loaded.faces, f)


@pytest.mark.parametrize("change", [
    "nan_vertex", "inf_color", "vertices_2d", "faces_4", "face_out_of_range", "colors_short",
    "color_above_one", "zero_normal", "extra_wrong_length", "float_faces", "bad_extra_name",
])
def test_bad_input_raises_and_writes_nothing(tmp_path, change):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    kwargs = {"colors_linear": np.full((4, 3), 0.5, np.float32), "normals": v - 0.25,
              "extra_attributes": {"displacement": np.zeros(4, np.float32)}}
    if change == "nan_vertex":
        v[1, 2] = np.nan
    elif change == "inf_color":
        kwargs["colors_linear"][0, 0] = np.inf
    elif change == "vertices_2d":
        v = v[:, :2]
    elif change == "faces_4":
        f = np.concatenate([f, f[:, :1]], axis=1)
    elif change == "face_out_of_range":
        f[2, 1] = 4
    elif change == "colors_short":
        kwargs["colors_linear"] = kwargs["colors_linear"][:3]
    elif change == "color_above_one":
        kwargs["colors_linear"][3, 1] = 1.01
    elif change == "zero_normal":
        kwargs["normals"][2] = 0.0
    elif change == "extra_wrong_length":
        kwargs["extra_attributes"] = {"displacement": np.zeros(5, np.float32)}
    elif change == "float_faces":
        f = f.astype(np.float64)
    elif change == "bad_extra_name":
        kwargs["extra_attributes"] = {"": np.zeros(4, np.float32)}
    path = tmp_path / "bad.glb"
    with pytest.raises(ValueError):
        write_glb(path, v, f, **kwargs)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    path = tmp_path / "keep.glb"
    path.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_glb(path, v, [[0, 1, 2]])
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.glb"]


def _png(pixels):
    """PNG bytes of an [H, W, 3] uint8 image."""
    image_mod = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    image_mod.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def textured_quad():
    """A unit quad (2 triangles), its v-up uv, a 4x4 colour image (left half red, right half
    blue, one odd pixel so a flip would show) and a 4x4 normal map that varies by row."""
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
    uv[1] = [0.875, 0.125]  # not symmetric in v, so a missing or doubled flip would show
    color = np.zeros((4, 4, 3), np.uint8)
    color[:, :2] = [255, 0, 0]
    color[:, 2:] = [0, 0, 255]
    color[0, 0] = [0, 255, 0]
    normal = np.zeros((4, 4, 3), np.uint8)
    normal[...] = [128, 128, 255]
    normal[:, :, 1] = np.arange(4, dtype=np.uint8)[:, None] * 60 + 10
    return v, f, uv, color, normal


def test_textures_load_in_trimesh(tmp_path, textured_quad):
    trimesh = pytest.importorskip("trimesh")
    v, f, uv, color, normal = textured_quad
    path = tmp_path / "quad.glb"
    write_glb(path, v, f, normals=np.tile([0.0, 0.0, 1.0], (4, 1)), uv=uv,
              textures={"baseColor": _png(color), "normal": _png(normal)})
    mesh = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_array_equal(mesh.faces, f)
    assert mesh.visual.uv.shape == uv.shape
    assert np.allclose(mesh.visual.uv, uv, atol=1e-6), mesh.visual.uv  # trimesh flips v back up
    material = mesh.visual.material
    for image, pixels in ((material.baseColorTexture, color), (material.normalTexture, normal)):
        assert image is not None and image.size == (4, 4)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), pixels)
    assert len(trimesh.load(path, force="mesh").faces) == 2  # default processing copes too


def test_texture_layout_in_the_json(tmp_path, textured_quad):
    v, f, uv, color, normal = textured_quad
    pngs = {"normal": _png(normal), "baseColor": _png(color)}  # stored in slot order regardless
    path = tmp_path / "quad.glb"
    write_glb(path, v, f, colors_linear=np.full((4, 3), 0.5, np.float32), uv=uv, textures=pngs)
    doc, binary, header_len, file_len = _parse_glb(path)
    assert header_len == file_len
    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0
        assert view["byteOffset"] + view["byteLength"] <= doc["buffers"][0]["byteLength"] <= len(binary)

    assert [image["mimeType"] for image in doc["images"]] == ["image/png", "image/png"]
    image_bytes = []
    for image in doc["images"]:
        view = doc["bufferViews"][image["bufferView"]]
        assert "target" not in view
        image_bytes.append(binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]])
    assert image_bytes == [pngs["baseColor"], pngs["normal"]]
    assert doc["samplers"] == [{"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}]

    (prim,) = doc["meshes"][0]["primitives"]
    material = doc["materials"][prim["material"]]
    assert material["name"] == "baked"
    base_ref = material["pbrMetallicRoughness"]["baseColorTexture"]
    normal_ref = material["normalTexture"]
    assert base_ref["texCoord"] == normal_ref["texCoord"] == 0
    for ref, png in ((base_ref, pngs["baseColor"]), (normal_ref, pngs["normal"])):
        assert 0 <= ref["index"] < len(doc["textures"])
        texture = doc["textures"][ref["index"]]
        assert 0 <= texture["sampler"] < len(doc["samplers"])
        assert image_bytes[texture["source"]] == png

    assert {"POSITION", "TEXCOORD_0", "COLOR_0"} <= set(prim["attributes"])  # both kept when asked
    tex_acc = doc["accessors"][prim["attributes"]["TEXCOORD_0"]]
    assert tex_acc["type"] == "VEC2" and tex_acc["componentType"] == 5126
    assert doc["bufferViews"][tex_acc["bufferView"]]["target"] == 34962
    expected = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)
    np.testing.assert_array_equal(_accessor(doc, binary, prim["attributes"]["TEXCOORD_0"]), expected)


def test_uv_alone_and_no_textures(tmp_path, textured_quad):
    v, f, uv, _, _ = textured_quad
    write_glb(tmp_path / "uv.glb", v, f, uv=uv)
    doc, binary, _, _ = _parse_glb(tmp_path / "uv.glb")
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "TEXCOORD_0"}
    assert_close(_accessor(doc, binary, prim["attributes"]["TEXCOORD_0"])[:, 1], 1.0 - uv[:, 1],
                 rel=SAME_MATH, what="flipped v")
    assert doc["materials"][0]["name"] == "vertex_colors"
    assert not {"images", "textures", "samplers"} & set(doc)
    assert "normalTexture" not in doc["materials"][0]
    assert "baseColorTexture" not in doc["materials"][0]["pbrMetallicRoughness"]

    # a normal map alone leaves the material's name and base colour alone
    write_glb(tmp_path / "n.glb", v, f, uv=uv, textures={"normal": _png(np.full((2, 2, 3), 128, np.uint8))})
    doc, _, _, _ = _parse_glb(tmp_path / "n.glb")
    assert doc["materials"][0]["name"] == "vertex_colors"
    assert doc["materials"][0]["normalTexture"] == {"index": 0, "texCoord": 0}
    assert "baseColorTexture" not in doc["materials"][0]["pbrMetallicRoughness"]


@pytest.mark.parametrize(("change", "message"), [
    ("textures_without_uv", "need uv"),
    ("not_png", "not a PNG"),
    ("not_bytes", "PNG-encoded bytes"),
    ("unknown_slot", "'baseColor', 'normal'"),
    ("uv_3_columns", r"uv must have shape \[4, 2\]"),
    ("uv_short", r"uv must have shape \[4, 2\]"),
    ("uv_nan", "uv holds non-finite"),
])
def test_bad_texture_input_raises_and_writes_nothing(tmp_path, textured_quad, change, message):
    v, f, uv, color, normal = textured_quad
    kwargs = {"uv": uv, "textures": {"baseColor": _png(color), "normal": _png(normal)}}
    if change == "textures_without_uv":
        del kwargs["uv"]
    elif change == "not_png":
        kwargs["textures"]["normal"] = b"\xff\xd8\xff\xe0 a JPEG, say"
    elif change == "not_bytes":
        kwargs["textures"]["baseColor"] = color
    elif change == "unknown_slot":
        kwargs["textures"]["roughness"] = _png(color)
    elif change == "uv_3_columns":
        kwargs["uv"] = np.concatenate([uv, uv[:, :1]], axis=1)
    elif change == "uv_short":
        kwargs["uv"] = uv[:3]
    elif change == "uv_nan":
        kwargs["uv"] = uv.copy()
        kwargs["uv"][2, 1] = np.nan
    path = tmp_path / "bad.glb"
    with pytest.raises(ValueError, match=message) as info:
        write_glb(path, v, f, **kwargs)
    if change == "unknown_slot":
        assert "roughness" in str(info.value)
    assert os.listdir(tmp_path) == []
