"""Maps baked on the mesh's own UV layout (engine/texture): texels, padding, normals from heights,
the encodings, and a stylization with parts whose maps keep each part inside its UV islands."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image
from tolerances import ROUNDED, SAME_MATH, assert_close

from engine.api import stylize
from engine.cli import main
from engine.config import settings_for
from engine.errors import InputError
from engine.export import RESULT_FILES, TEXTURE_FILES, write_result
from engine.field import BASE_COLOR
from engine.mesh import mesh_from_arrays
from engine.parts import PartWeights
from engine.request import StyleRequest
from engine.samples import sample_mesh
from engine.texture.atlas import face_atlas
from engine.texture.maps import DISPLACEMENT_ZERO, pad_islands, padding_sources, png_displacement, tangent_normals
from engine.texture.texels import per_vertex_uv, sample_texels

QUICK = ["optim.iterations=3", "views.count=2", "render.resolution=64", "run.preview_every=0"]


def with_atlas(mesh):
    """The mesh with a generated layout: every face its own island, a seam along every edge."""
    return mesh_from_arrays(mesh.vertices, mesh.faces, labels=mesh.labels, label_names=mesh.label_names,
                            name=f"{mesh.name}-atlas", corner_uv=face_atlas(mesh.num_faces))


@pytest.fixture(scope="module")
def atlas_lamp():
    return with_atlas(sample_mesh("lamp", 2000))


@pytest.fixture(scope="module")
def baked(atlas_lamp):
    request = StyleRequest("red base, blue shade", parts=PartWeights.from_labels(atlas_lamp.labels,
                                                                                 atlas_lamp.label_names))
    settings = settings_for("preview", [*QUICK, "texture.size=128", "texture.padding=2"])
    return stylize(atlas_lamp, request, settings=settings, models="tiny", device="cpu")


# -- the pieces ------------------------------------------------------------------------------------

def test_texel_centres_interpolate_to_their_own_uv():
    uv = np.array([[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]], np.float32)
    texels = sample_texels(uv[None], 32)
    assert 0 < texels.covered.sum() < 32 * 32 / 2
    centres = np.stack([(texels.cols + 0.5) / 32, 1.0 - (texels.rows + 0.5) / 32], -1)
    assert_close(texels.interpolate(uv, np.array([[0, 1, 2]])), centres, rel=SAME_MATH)
    assert np.all(texels.bary >= 0) and np.allclose(texels.bary.sum(1), 1.0)


def test_padding_fills_exactly_the_rings_past_an_island():
    image = np.zeros((16, 16, 3), np.float32)
    covered = np.zeros((16, 16), bool)
    covered[6:9, 6:9] = True
    image[covered] = (0.2, 0.4, 0.6)
    padded = pad_islands(image, padding_sources(covered, 2))
    rows, cols = np.indices((16, 16))
    ring = np.maximum(np.maximum(6 - rows, rows - 8), np.maximum(6 - cols, cols - 8))  # Chebyshev distance
    assert np.allclose(padded[ring <= 2], (0.2, 0.4, 0.6))
    assert np.all(padded[ring > 2] == 0)


def test_normals_of_a_ramp_lean_against_its_slope():
    size = 32
    covered = np.ones((size, size), bool)
    u = (np.arange(size) + 0.5) / size
    length = np.full((size, size), 2.0)  # object units per UV unit
    ramp_u = np.broadcast_to(0.3 * u, (size, size))  # h = 0.3 u
    n = tangent_normals(ramp_u, covered, length, length)
    expected = np.array([-0.3 / 2.0, 0.0, 1.0]) / np.linalg.norm([-0.3 / 2.0, 0.0, 1.0])
    assert_close(n.reshape(-1, 3), np.broadcast_to(expected, (size * size, 3)), rel=SAME_MATH)
    v = 1.0 - (np.arange(size) + 0.5) / size  # rows go down, v goes up
    ramp_v = np.broadcast_to(0.5 * v[:, None], (size, size))
    n = tangent_normals(ramp_v, covered, length, length)
    expected = np.array([0.0, -0.25, 1.0]) / np.linalg.norm([0.0, -0.25, 1.0])
    assert_close(n.reshape(-1, 3), np.broadcast_to(expected, (size * size, 3)), rel=SAME_MATH)


def test_the_displacement_png_holds_signed_values_in_16_bits():
    values = np.linspace(-0.02, 0.01, 64, dtype=np.float32).reshape(8, 8)
    data, step = png_displacement(values)
    image = Image.open(io.BytesIO(data))
    pixels = np.asarray(image).astype(np.float64)
    assert image.size == (8, 8) and pixels.max() > 255  # 16 bits, not 8
    # half a step of rounding, plus the float32 rounding of the values themselves
    assert np.abs((pixels - DISPLACEMENT_ZERO) * step - values).max() <= step / 2 + ROUNDED * np.abs(values).max()
    assert "partstyle:displacement" in image.text


# -- a stylization with maps -----------------------------------------------------------------------------

def test_maps_keep_each_part_inside_its_islands(baked, atlas_lamp):
    maps = baked.maps
    assert maps.base_color.shape == (128, 128, 3) and maps.displacement.shape == (128, 128)
    assert maps.normal.shape == (128, 128, 3) and maps.covered.shape == (128, 128)
    texels = sample_texels(atlas_lamp.corner_uv, 128)
    labels = atlas_lamp.labels[atlas_lamp.faces[texels.face]]  # [T, 3] the texel's face's vertex labels
    names = atlas_lamp.label_names
    tube = (labels == names.index("tube")).all(1)
    base = (labels == names.index("base")).all(1)
    shade = (labels == names.index("shade")).all(1)
    colors = maps.base_color[texels.rows, texels.cols]
    # the unnamed tube keeps the neutral color and no relief, to the bit, in every one of its texels
    assert tube.sum() > 50 and np.all(colors[tube] == np.float32(BASE_COLOR))
    assert np.all(maps.displacement[texels.rows[tube], texels.cols[tube]] == 0.0)
    # the styled parts moved away from it, each toward its own word
    assert np.abs(colors[base] - BASE_COLOR).max() > 1e-3 and np.abs(colors[shade] - BASE_COLOR).max() > 1e-3
    # texels agree with the vertices of their part: the mean color of a part's texels is its vertices'
    for part in (base, shade):
        vertices = np.unique(atlas_lamp.faces[texels.face[part]])
        assert np.abs(colors[part].mean(0) - baked.colors_srgb[vertices].mean(0)).max() < 0.02
    assert baked.record["texture"]["size"] == 128


def test_padding_reaches_past_the_islands_and_no_further(baked):
    maps = baked.maps
    covered = maps.covered
    grown = covered.copy()
    for _ in range(maps.padding):
        grown = grown | np.pad(grown, 1)[2:, 1:-1] | np.pad(grown, 1)[:-2, 1:-1]
        grown = grown | np.pad(grown, 1)[1:-1, 2:] | np.pad(grown, 1)[1:-1, :-2]
    ring = grown & ~covered
    assert ring.sum() > 0
    assert np.all(maps.base_color[ring].max(1) > 0)  # filled from the islands
    assert np.all(maps.base_color[~grown] == 0)  # beyond the padding: the background
    assert np.allclose(np.linalg.norm(maps.normal, axis=-1), 1.0, atol=1e-5)


def test_the_files_and_a_textured_glb(baked, atlas_lamp, tmp_path):
    paths = write_result(baked, str(tmp_path))
    assert sorted(paths) == sorted(RESULT_FILES + TEXTURE_FILES)
    color = Image.open(tmp_path / "base_color.png")
    assert color.size == (128, 128) and color.mode == "RGB"
    assert np.array_equal(np.asarray(color), np.round(baked.maps.base_color * 255).astype(np.uint8))
    record = json.loads((tmp_path / "run.json").read_text())
    encoding = record["texture_files"]["displacement.png"]
    pixels = np.asarray(Image.open(tmp_path / "displacement.png")).astype(np.float64)
    decoded = (pixels - encoding["zero"]) * encoding["units_per_step"]
    assert np.abs(decoded - baked.maps.displacement).max() <= encoding["units_per_step"]
    loaded = trimesh.load(str(tmp_path / "stylized.glb"), force="mesh", process=False)
    assert loaded.visual.material.baseColorTexture.size == (128, 128)
    assert loaded.visual.material.normalTexture.size == (128, 128)
    # each corner's uv comes back: the GLB split the vertices on the seams (and only there)
    corners = np.unique(np.column_stack([atlas_lamp.faces.reshape(-1), atlas_lamp.corner_uv.reshape(-1, 2)]), axis=0)
    assert len(loaded.vertices) == len(corners) > atlas_lamp.num_vertices
    assert_close(loaded.visual.uv[loaded.faces], atlas_lamp.corner_uv, rel=SAME_MATH)
    # a later result without maps replaces them all: no stale maps beside it
    plain = stylize(atlas_lamp, "a red lamp", settings=settings_for("preview", QUICK), models="tiny", device="cpu")
    write_result(plain, str(tmp_path))
    assert not any((tmp_path / name).exists() for name in TEXTURE_FILES)


def test_maps_without_a_uv_layout_are_refused_before_any_work():
    mesh = sample_mesh("mug", 2000)
    with pytest.raises(InputError, match="UV > Smart UV Project"):
        stylize(mesh, "a red mug", settings=settings_for("preview", ["texture.size=64"]), models="tiny")


def test_the_command_bakes_maps_for_a_mesh_file_with_uvs(atlas_lamp, tmp_path, capsys):
    path = tmp_path / "lamp.obj"
    source, faces, uv = per_vertex_uv(atlas_lamp.faces, atlas_lamp.corner_uv)
    trimesh.Trimesh(atlas_lamp.vertices[source], faces, process=False,
                    visual=trimesh.visual.TextureVisuals(uv=uv)).export(str(path))
    out = tmp_path / "out"
    code = main(["stylize", str(path), "--prompt", "a red lamp", "--texture", "64", "--preset", "preview",
                 "--out", str(out), "--quiet", *[a for o in QUICK for a in ("--set", o)]])
    assert code == 0, capsys.readouterr().err
    assert all((out / name).exists() for name in TEXTURE_FILES)
    assert Image.open(out / "normal.png").size == (64, 64)
    assert json.loads((out / "run.json").read_text())["texture"]["size"] == 64


def test_the_bake_benchmark_prints_its_figures():
    from engine.bench_bake import run_bake_benchmark

    out = io.StringIO()
    run_bake_benchmark(faces=2000, sizes=(64,), device="cpu", out=out)
    header, columns, row = out.getvalue().splitlines()
    assert "2048 faces" in header and columns.split() == ["size", "texels", "covered", "bake", "s", "texels/s"]
    size, texels, seconds, rate = row.split()
    texels = int(texels.replace(",", ""))
    assert size == "64" and 0 < texels < 64 * 64 and float(seconds) > 0
    assert float(rate.replace(",", "")) > 0
