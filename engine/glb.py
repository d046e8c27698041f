"""A minimal binary glTF 2.0 (``.glb``) writer: one scene, node, mesh and triangle primitive.

Dependency-free apart from numpy. The file holds one buffer laid out as: POSITION, NORMAL,
TEXCOORD_0, COLOR_0, the custom attributes in the order given, the uint32 indices, then the
embedded PNG images (base colour first, then the normal map); every bufferView starts on a 4-byte
boundary, and the images' views have no ``target`` since they are not vertex data. Vertex colours
are stored as float VEC3 in *linear* space, which is what glTF defines COLOR_0 to be. Texture
coordinates are taken in the OpenGL / Blender / OBJ convention (origin bottom-left, v up) and
stored in glTF's (origin top-left, v down) as ``(u, 1 - v)``.

The single material is double-sided, with a white base colour factor, metallic 0 and roughness 1.
Without textures it is named ``vertex_colors`` and makes viewers show the vertex colours as they
are. With a base colour image it is named ``baked`` and holds that image as
``pbrMetallicRoughness.baseColorTexture``; a normal map goes in ``normalTexture``. Each image has
one ``images`` entry (``image/png``) and one ``textures`` entry, all sharing one sampler (linear
filtering with mipmaps, repeat wrapping), and reads texture coordinate set 0.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from .files import atomic_writer

GLB_MAGIC = 0x46546C67  # b"glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A  # b"JSON"
CHUNK_BIN = 0x004E4942  # b"BIN\0"

_FLOAT = 5126  # componentType FLOAT
_UINT = 5125  # componentType UNSIGNED_INT
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_TRIANGLES = 4
_LINEAR = 9729  # sampler magFilter LINEAR
_LINEAR_MIPMAP_LINEAR = 9987  # sampler minFilter LINEAR_MIPMAP_LINEAR
_REPEAT = 10497  # sampler wrapS / wrapT REPEAT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXTURE_SLOTS = ("baseColor", "normal")  # the keys ``textures`` accepts, in the order they are stored


def write_glb(
    path: str | os.PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    colors_linear: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    extra_attributes: dict[str, np.ndarray] | None = None,
    uv: np.ndarray | None = None,
    textures: dict[str, bytes] | None = None,
    mesh_name: str = "partstyle",
) -> None:
    """Write a triangle mesh to ``path`` as binary glTF 2.0.

    Args:
        path: destination file; written to a temporary file in the same folder first and moved
            into place with :func:`os.replace`, so a failure never leaves a partial file there.
        vertices: [V, 3] float, finite; stored as float32 POSITION with its min/max.
        faces: [F, 3] integer indices into ``vertices``; stored as uint32 indices.
        colors_linear: optional [V, 3] float in 0..1, *linear* RGB; stored as float COLOR_0.
        normals: optional [V, 3] float, finite and non-zero; renormalized to unit length (glTF
            requires unit normals) and stored as float32 NORMAL.
        extra_attributes: optional ``name -> [V] float`` per-vertex scalars, stored as float32
            custom attributes named ``"_" + name.upper()``, e.g. ``displacement`` ->
            ``_DISPLACEMENT``.
        uv: optional [V, 2] float, finite texture coordinates in the OpenGL / Blender / OBJ
            convention (origin at the image's bottom-left, v up); stored as float32 TEXCOORD_0
            in glTF's convention (v down), i.e. as ``(u, 1 - v)``.
        textures: optional ``slot -> PNG bytes``, each embedded in the file and read through
            ``uv`` (which it therefore needs). Slots: ``"baseColor"`` becomes the material's
            ``baseColorTexture`` (sRGB-encoded colour, as glTF defines it) and names the material
            ``baked``; ``"normal"`` becomes its ``normalTexture``, a tangent-space normal map in
            the OpenGL convention (+Y, green, points toward increasing v in the v-up convention),
            which is glTF's too. glTF multiplies COLOR_0 with the base colour texture, so pass
            ``colors_linear`` together with a ``"baseColor"`` texture only if that tint is meant;
            both are written as given.
        mesh_name: name given to the mesh and its node.

    Raises:
        ValueError: wrong shapes, non-finite values, indices out of range, colours outside
            0..1, zero-length normals, an empty mesh, clashing attribute names, textures without
            ``uv``, an unknown texture slot or an image that is not PNG. Nothing is written in
            that case.
    """
    verts = _float_array("vertices", vertices, (3,), None)
    num_v = verts.shape[0]
    if num_v == 0:
        raise ValueError("vertices is empty; a glTF mesh needs at least one vertex")
    tris = _index_array(faces, num_v)

    attributes: list[tuple[str, np.ndarray, str]] = [("POSITION", verts, "VEC3")]
    if normals is not None:
        n = _float_array("normals", normals, (3,), num_v).astype(np.float64)
        length = np.linalg.norm(n, axis=1, keepdims=True)
        if np.any(length <= 1e-12):
            raise ValueError("normals has zero-length rows; glTF needs unit normals")
        attributes.append(("NORMAL", (n / length).astype(np.float32), "VEC3"))
    if uv is not None:
        _float_array("uv", uv, (2,), num_v)  # shape and finiteness, with the usual messages
        flipped = np.array(uv, dtype=np.float64)
        flipped[:, 1] = 1.0 - flipped[:, 1]
        attributes.append(("TEXCOORD_0", flipped.astype(np.float32), "VEC2"))
    images = _png_images(textures or {}, has_uv=uv is not None)
    if colors_linear is not None:
        c = _float_array("colors_linear", colors_linear, (3,), num_v)
        if c.min() < 0.0 or c.max() > 1.0:
            raise ValueError(
                f"colors_linear must lie in 0..1, got {c.min():g}..{c.max():g}; clip it first"
            )
        attributes.append(("COLOR_0", c, "VEC3"))
    for name, values in (extra_attributes or {}).items():
        if not isinstance(name, str) or not (name.isascii() and name.replace("_", "a").isalnum()):
            raise ValueError(f"extra attribute name {name!r} must be a non-empty identifier")
        semantic = "_" + name.upper()
        if any(semantic == s for s, _, _ in attributes):
            raise ValueError(f"extra attribute {name!r} clashes with another as {semantic}")
        values = _float_array(f"extra_attributes[{name!r}]", values, (), num_v)
        attributes.append((semantic, values, "SCALAR"))

    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []
    offset = 0

    def add_view(raw: bytes, target: int | None) -> int:
        nonlocal offset
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        views.append(view)
        padded = raw + b"\x00" * (-len(raw) % 4)
        blobs.append(padded)
        offset += len(padded)
        return len(views) - 1

    def add(data: np.ndarray, type_: str, component: int, target: int) -> int:
        raw = np.ascontiguousarray(data).astype("<" + data.dtype.str[1:], copy=False).tobytes()
        accessors.append({"bufferView": add_view(raw, target), "componentType": component,
                          "count": int(data.shape[0]), "type": type_})
        return len(accessors) - 1

    prim_attributes: dict[str, int] = {}
    for semantic, data, type_ in attributes:
        prim_attributes[semantic] = add(data, type_, _FLOAT, _ARRAY_BUFFER)
    pos = accessors[prim_attributes["POSITION"]]
    pos["min"] = [float(x) for x in verts.min(axis=0)]
    pos["max"] = [float(x) for x in verts.max(axis=0)]
    index_accessor = add(tris.reshape(-1), "SCALAR", _UINT, _ELEMENT_ARRAY_BUFFER)

    image_entries = [{"bufferView": add_view(png, None), "mimeType": "image/png"} for _, png in images]
    texture_of = {slot: i for i, (slot, _) in enumerate(images)}
    pbr: dict = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}
    material: dict = {"name": "vertex_colors", "doubleSided": True, "pbrMetallicRoughness": pbr}
    if "baseColor" in texture_of:
        material["name"] = "baked"
        pbr["baseColorTexture"] = {"index": texture_of["baseColor"], "texCoord": 0}
    if "normal" in texture_of:
        material["normalTexture"] = {"index": texture_of["normal"], "texCoord": 0}

    binary = b"".join(blobs)
    gltf = {
        "asset": {"version": "2.0", "generator": "Partstyle"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": str(mesh_name)}],
        "meshes": [{"name": str(mesh_name), "primitives": [{
            "attributes": prim_attributes, "indices": index_accessor,
            "material": 0, "mode": _TRIANGLES}]}],
        "materials": [material],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    if images:  # glTF forbids empty top-level arrays, so these appear only with textures
        gltf["images"] = image_entries
        gltf["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                             "wrapS": _REPEAT, "wrapT": _REPEAT}]
        gltf["textures"] = [{"sampler": 0, "source": i} for i in range(len(images))]
    text = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    out = b"".join([
        struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
        struct.pack("<II", len(text), CHUNK_JSON), text,
        struct.pack("<II", len(binary), CHUNK_BIN), binary,
    ])
    with atomic_writer(path) as fh:
        fh.write(out)


def _float_array(name: str, value, tail: tuple[int, ...], count: int | None) -> np.ndarray:
    """``value`` as a finite float32 array of shape [count, *tail] (any count if None)."""
    arr = np.asarray(value)
    wrong_count = count is not None and arr.ndim > 0 and arr.shape[0] != count
    if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail or wrong_count:
        want = "[" + ", ".join(["V" if count is None else str(count), *map(str, tail)]) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf) as float32")
    return arr


def _png_images(textures: dict, *, has_uv: bool) -> list[tuple[str, bytes]]:
    """The ``(slot, png bytes)`` pairs of ``textures`` in :data:`TEXTURE_SLOTS` order, checked."""
    if not isinstance(textures, dict):
        raise ValueError(f"textures must be a dict of slot -> PNG bytes, got {type(textures).__name__}")
    unknown = [key for key in textures if key not in TEXTURE_SLOTS]
    if unknown:
        raise ValueError(f"textures has unknown slot(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(map(repr, TEXTURE_SLOTS))}")
    if textures and not has_uv:
        raise ValueError(f"textures {', '.join(map(repr, textures))} need uv (texture coordinates); pass uv=")
    images = []
    for slot in TEXTURE_SLOTS:
        if slot not in textures:
            continue
        data = textures[slot]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"textures[{slot!r}] must be PNG-encoded bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"textures[{slot!r}] is not a PNG (it lacks the PNG signature); encode it as PNG")
        images.append((slot, data))
    return images


def _index_array(faces, num_vertices: int) -> np.ndarray:
    """``faces`` as a [F, 3] uint32 array with every index in 0..num_vertices-1."""
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"faces must have shape [F, 3] with F >= 1, got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"faces must hold integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_vertices:
        raise ValueError(f"faces index {arr.min()}..{arr.max()} outside 0..{num_vertices - 1}")
    return arr.astype(np.uint32)
