"""Maps baked on the mesh's own UV layout (engine/texture): texels, padding, normals from heights,
the encodings, and a stylization with parts whose maps keep each part inside its UV islands."""

from __future__ import annotations

import dataclasses
import io
import json
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from tolerances import ROUNDED, SAME_MATH, assert_close

import engine.texture.bake
from engine.api import stylize
from engine.cameras import ring_views
from engine.cli import main
from engine.config import settings_for
from engine.devices import native_bfloat16
from engine.errors import Cancelled, InputError
from engine.events import CancelToken, NoticeEvent, StageEvent, StepEvent
from engine.export import RESULT_FILES, TEXTURE_FILES, before_after_grid, write_result
from engine.field import BASE_COLOR
from engine.mesh import load_mesh, mesh_from_arrays
from engine.parts import PartWeights
from engine.render import Renderer
from engine.render.shading import sample_map
from engine.request import StyleRequest
from engine.samples import sample_mesh
from engine.texture.atlas import face_atlas
from engine.texture.maps import DISPLACEMENT_ZERO, pad_islands, padding_sources, png_displacement, tangent_normals
from engine.texture.shared import share_samples
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

def test_a_map_is_read_bilinearly_at_texel_centres_v_up():
    size = 8
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    ramp = torch.from_numpy(np.stack([cols, rows, np.ones_like(rows)], -1))  # [S, S, 3]: column, row, 1
    uv = torch.tensor([[0.5 / size, 1 - 0.5 / size], [3.5 / size, 1 - 2.5 / size], [0.5, 0.5], [1.0, 0.0]])
    # texel centres read their own texel (row 0 at the top, v up); between them, the linear blend
    expected = torch.tensor([[0.0, 0.0, 1.0], [3.0, 2.0, 1.0], [3.5, 3.5, 1.0], [7.0, 7.0, 1.0]])
    assert_close(sample_map(ramp, uv).numpy(), expected.numpy(), rel=SAME_MATH)


def test_a_textured_render_shows_the_map_where_a_vertex_colored_one_shows_vertex_colors():
    lamp = sample_mesh("lamp", 2000)
    settings = settings_for("preview")
    unit = torch.from_numpy(lamp.unit_vertices())
    faces = torch.from_numpy(lamp.faces)
    cameras = ring_views(2, settings.views, settings.render)
    renderer = Renderer(settings.render)
    color = torch.tensor([0.2, 0.6, 0.9])
    flat = renderer.render(unit, faces, cameras, colors=color.expand(lamp.num_vertices, 3), resolution=64).color
    texture = (torch.from_numpy(face_atlas(lamp.num_faces)), color.expand(16, 16, 3).contiguous())
    mapped = renderer.render(unit, faces, cameras, texture=texture, resolution=64).color
    assert_close(mapped.numpy(), flat.numpy(), rel=SAME_MATH)


def test_a_bake_evaluates_a_quarter_of_a_large_island_and_blends_the_rest_exactly():
    # two triangles side by side in UV, far apart in 3D: blending across their border would mix them
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [6, 0, 0], [5, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    uv = np.array([[[0.02, 0.02], [0.48, 0.02], [0.02, 0.98]], [[0.5, 0.02], [0.98, 0.02], [0.5, 0.98]]],
                  np.float32)
    texels = sample_texels(uv, 128)
    points = texels.interpolate(vertices, faces)
    plan = share_samples(texels, points)
    assert 0.25 < len(plan.evaluated) / plan.count < 0.4
    assert_close(plan.weights.sum(1), np.ones(len(plan.blended)), rel=SAME_MATH)
    # a linear function of position (what the field is at the scale of two texels) comes back exactly
    linear = points @ np.array([0.3, -2.0, 0.7], np.float32)
    assert_close(plan.expand(linear[plan.evaluated]), linear, rel=SAME_MATH, scale=float(np.abs(linear).max()))
    # and nothing is blended from the other island: a texel's sources lie in its own face
    source_faces = texels.face[plan.evaluated][plan.sources]  # [B, 4]
    used = plan.weights > 0
    assert np.all((source_faces == texels.face[plan.blended][:, None]) | ~used)


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


def test_the_bake_precision_changes_the_maps_by_at_most_an_8_bit_step(atlas_lamp, monkeypatch):
    request = StyleRequest("red base, blue shade", parts=PartWeights.from_labels(atlas_lamp.labels,
                                                                                 atlas_lamp.label_names))
    runs = {}
    for precision, native in (("float32", True), ("bfloat16", False), ("auto", True), ("auto", False)):
        monkeypatch.setattr(engine.texture.bake, "native_bfloat16", lambda device, native=native: native)
        settings = settings_for("preview", [*QUICK, "texture.size=128", f"texture.precision={precision}",
                                            "field.precision=float32", "guidance.precision=float32"])
        runs[precision, native] = stylize(atlas_lamp, request, settings=settings, models="tiny", device="cpu")
    used = {key: result.record["texture"]["precision"] for key, result in runs.items()}
    assert used == {("float32", True): "float32", ("bfloat16", False): "bfloat16", ("auto", True): "bfloat16",
                    ("auto", False): "float32"}
    single, half = runs["float32", True], runs["bfloat16", False]
    assert np.array_equal(single.colors_srgb, half.colors_srgb)  # the bake changes the maps only
    assert np.array_equal(runs["auto", True].maps.base_color, half.maps.base_color)
    difference = np.abs(single.maps.base_color - half.maps.base_color)
    assert difference.max() > 0 and difference.max() <= 1 / 255 and difference.mean() <= 0.2 / 255


def test_bfloat16_hardware_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert native_bfloat16(torch.device("cpu"), cpu_flags_path=str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not native_bfloat16(torch.device("cpu"), cpu_flags_path=str(cpuinfo))
    assert not native_bfloat16(torch.device("cpu"), cpu_flags_path=str(tmp_path / "missing"))


def test_a_cancelled_bake_keeps_the_optimization_and_resume_bakes_it(atlas_lamp, tmp_path):
    request = StyleRequest("red base, blue shade", parts=PartWeights.from_labels(atlas_lamp.labels,
                                                                                 atlas_lamp.label_names))
    settings = settings_for("preview", [*QUICK, "texture.size=128"])
    token, checkpoint = CancelToken(), str(tmp_path / "checkpoint.pt")

    def cancel_when_baking(event):
        if isinstance(event, StageEvent) and event.name == "baking maps":
            token.cancel()

    with pytest.raises(Cancelled, match="while baking") as info:
        stylize(atlas_lamp, request, settings=settings, models="tiny", device="cpu", cancel=token,
                on_event=cancel_when_baking, checkpoint=checkpoint)
    assert info.value.checkpoint == checkpoint
    steps = []
    resumed = stylize(atlas_lamp, request, settings=settings, models="tiny", device="cpu", checkpoint=checkpoint,
                      resume=True, on_event=lambda e: steps.append(e) if isinstance(e, StepEvent) else None)
    assert steps == [] and resumed.record["steps"] == 3  # nothing optimized again: straight to the bake
    whole = stylize(atlas_lamp, request, settings=settings, models="tiny", device="cpu")
    assert np.array_equal(resumed.maps.base_color, whole.maps.base_color)
    assert np.array_equal(resumed.colors_srgb, whole.colors_srgb)


def test_the_preview_shows_the_result_textured_with_its_maps(baked):
    with_maps = before_after_grid(baked)
    without = before_after_grid(dataclasses.replace(baked, maps=None))
    assert with_maps.shape[1] == without.shape[1] and with_maps.shape[0] > without.shape[0]  # one more row
    assert np.array_equal(with_maps[: without.shape[0] - 4], without[: without.shape[0] - 4])
    last_row = with_maps[without.shape[0]:]
    assert (np.abs(last_row.astype(int) - 255).sum(-1) > 30).mean() > 0.05  # the lamp is drawn there


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


def test_maps_without_a_uv_layout_or_xatlas_are_refused_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "xatlas", None)  # import xatlas raises ImportError
    mesh = sample_mesh("mug", 2000)
    with pytest.raises(InputError, match=r"partstyle\[unwrap\].*UV > Smart UV Project"):
        stylize(mesh, "a red mug", settings=settings_for("preview", ["texture.size=64"]), models="tiny")


def test_a_mesh_without_uvs_gets_a_generated_layout_that_run_json_names(tmp_path):
    pytest.importorskip("xatlas", reason="the unwrap extra (xatlas) is not installed")
    mug = sample_mesh("mug", 2000)
    notices = []
    settings = settings_for("preview", [*QUICK, "texture.size=128", "texture.padding=2"])
    result = stylize(mug, "a red mug", settings=settings, models="tiny", device="cpu",
                     on_event=lambda e: notices.append(e.message) if isinstance(e, NoticeEvent) else None)
    assert mug.corner_uv is None  # the input is left as it was; the result's mesh is a copy with the layout
    uv = result.mesh.corner_uv
    assert uv.shape == (mug.num_faces, 3, 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    assert np.array_equal(result.mesh.faces, mug.faces) and np.array_equal(result.mesh.vertices, mug.vertices)
    # charts, not one island a face: most edges are shared inside a chart, few are seams
    ends = np.stack([mug.faces, np.roll(mug.faces, -1, axis=1)], -1).reshape(-1, 2)  # each face's edges
    end_uv = np.stack([uv, np.roll(uv, -1, axis=1)], 2).reshape(-1, 2, 2)
    swap = ends[:, 0] > ends[:, 1]  # each edge from its lower vertex, with that vertex's uv first
    ends[swap], end_uv[swap] = ends[swap][:, ::-1], end_uv[swap][:, ::-1]
    _, uses = np.unique(np.column_stack([ends, end_uv.reshape(-1, 4).round(6)]), axis=0, return_counts=True)
    assert (uses == 2).sum() > 0.3 * len(ends)  # edges whose two faces agree on both ends' uvs
    # charts do not overlap: the texels covered are the UV triangles' total area (at 512 px)
    area = 0.5 * np.abs(np.cross(uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0])).sum()
    covered = sample_texels(uv, 512).covered.mean()
    assert abs(covered - area) < 0.05 * area
    assert result.record["texture"]["uv_layout"].startswith("generated by xatlas")
    assert any("has no UV layout" in n for n in notices)
    write_result(result, str(tmp_path))
    assert json.loads((tmp_path / "run.json").read_text())["texture"]["uv_layout"].startswith("generated by xatlas")
    loaded = trimesh.load(tmp_path / "stylized.glb", force="mesh")
    assert loaded.visual.uv is not None and len(loaded.faces) == mug.num_faces
    # the same mesh gets the same layout
    again = stylize(mug, "a red mug", settings=settings, models="tiny", device="cpu")
    assert np.array_equal(again.mesh.corner_uv, uv)


def test_merging_a_uv_mapped_file_welds_its_seams_and_keeps_every_corner_uv(atlas_lamp, tmp_path):
    path = tmp_path / "lamp.obj"
    source, faces, uv = per_vertex_uv(atlas_lamp.faces, atlas_lamp.corner_uv)
    trimesh.Trimesh(atlas_lamp.vertices[source], faces, process=False,
                    visual=trimesh.visual.TextureVisuals(uv=uv)).export(str(path))
    split, welded = load_mesh(path), load_mesh(path, merge_vertices=True)
    assert split.num_vertices > atlas_lamp.num_vertices == welded.num_vertices  # one vertex per position again
    assert_close(welded.corner_uv, split.corner_uv, rel=SAME_MATH)  # each corner keeps its own uv
    assert_close(welded.vertices[welded.faces], split.vertices[split.faces], rel=SAME_MATH)
    # welded: the lamp's surface is connected again (its edges are shared by two faces, not one)
    edges = np.sort(np.stack([welded.faces, np.roll(welded.faces, -1, axis=1)], -1).reshape(-1, 2), 1)
    assert np.unique(edges, axis=0, return_counts=True)[1].min() == 2


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
    rows = run_bake_benchmark(faces=2000, sizes=(64,), device="cpu", out=out)
    header, columns, *lines = out.getvalue().splitlines()
    assert "2048 faces" in header
    assert columns.split() == ["layout", "size", "precision", "texels", "evaluated", "bake", "s", "texels/s"]
    # each layout (xatlas's too, installed with the test extras) in float32, then in bfloat16
    assert [(r["layout"], r["precision"]) for r in rows] == [
        ("face islands", "float32"), ("face islands", "bfloat16"), ("xatlas charts", "float32"),
        ("xatlas charts", "bfloat16")]
    assert len(lines) == len(rows)
    for row, line in zip(rows, lines, strict=True):
        assert line.split()[-4:-2] == [f"{row['texels']:,}", f"{row['evaluated']:.2f}"]
        assert 0 < row["texels"] < 64 * 64 and row["seconds"] > 0 and 0 < row["evaluated"] <= 1
    # an artist's layout has larger islands than one a face: fewer texels are evaluated
    assert rows[2]["evaluated"] < rows[0]["evaluated"]
