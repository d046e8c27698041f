"""Result files are written all or nothing."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from engine import export
from engine.config import settings_for
from engine.errors import OutputError
from engine.parts import PartWeights
from engine.prompt import parse_prompt
from engine.result import StyleResult
from engine.samples import sample_mesh


def fake_result(shade: float) -> StyleResult:
    mesh = sample_mesh("mug", 5000)
    colors = np.full((mesh.num_vertices, 3), shade, dtype=np.float32)
    displacement = np.linspace(-0.001, 0.001, mesh.num_vertices, dtype=np.float32)
    return StyleResult(mesh, parse_prompt("a mug"), colors, displacement, settings_for("preview"),
                       history={"total": [1.0, 0.5]})


def test_export_failure_keeps_the_previous_result(tmp_path, monkeypatch):
    export.write_result(fake_result(0.2), str(tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in export.RESULT_FILES}

    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "plot_curves", broken_plot)
    with pytest.raises(OutputError, match=r"\(disk full\); the earlier results there are unchanged"):
        export.write_result(fake_result(0.9), str(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in export.RESULT_FILES} == before
    assert sorted(os.listdir(tmp_path)) == sorted(export.RESULT_FILES)  # no staging folder left


def test_preview_shows_before_and_after(tmp_path):
    grid = export.before_after_grid(fake_result(0.0), views=2, size=64)
    # Two rows of two 64 px views; the "after" row is darker (black albedo) than the gray "before".
    assert grid.shape[0] >= 2 * 64 and grid.shape[1] >= 2 * 64
    top, bottom = grid[: grid.shape[0] // 2], grid[grid.shape[0] // 2 :]
    assert bottom.mean() < top.mean()


def test_preview_of_a_part_prompt_shows_the_parts_between_before_and_after():
    """Three rows: before, the parts in palette colors (unchanged vertices gray), after."""
    result = fake_result(0.0)
    labels = (np.arange(result.mesh.num_vertices) % 2).astype(np.int64) - 1  # half part 0, half unchanged
    parted = dataclasses.replace(result, parts=PartWeights.from_labels(labels, ("body",)))
    plain, grid = export.before_after_grid(result, views=2, size=64), export.before_after_grid(parted, views=2, size=64)
    assert grid.shape[0] > plain.shape[0] + 60 and grid.shape[1] == plain.shape[1]
    third = grid.shape[0] // 3
    middle = grid[third: 2 * third].reshape(-1, 3).astype(np.int64)
    assert (middle[:, 0] - middle[:, 2] > 40).any() or (middle[:, 2] - middle[:, 0] > 40).any()  # a hue appears


def _ply_vertex_table(path) -> np.ndarray:
    """The vertex element of a binary little-endian PLY as a structured array (read by hand, so the
    check does not depend on how a library maps custom properties)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    assert "format binary_little_endian 1.0" in lines
    count = int(next(line for line in lines if line.startswith("element vertex")).split()[-1])
    kinds = {"float": "<f4", "uchar": "u1"}
    props = []
    for line in lines[lines.index(f"element vertex {count}") + 1:]:
        if not line.startswith("property "):
            break
        _, kind, name = line.split()
        props.append((name, kinds[kind]))
    return np.frombuffer(raw, np.dtype(props), count=count, offset=end)


def test_glb_and_ply_carry_normals_colors_and_displacement(tmp_path):
    """Both files load in trimesh with the displaced positions, the displaced surface's normals and the
    colors; the PLY keeps the displacement as a property."""
    import trimesh

    from engine.mesh import vertex_normals

    result = fake_result(0.25)
    result.colors_srgb[:, 0] = np.linspace(0.0, 1.0, result.mesh.num_vertices)
    export.write_result(result, str(tmp_path))
    displaced = result.displaced_vertices()
    normals = vertex_normals(displaced, result.mesh.faces)
    assert np.abs(normals - result.mesh.vertex_normals).max() > 1e-3  # they are the displaced surface's own

    (glb,) = trimesh.load(tmp_path / "stylized.glb", process=False).geometry.values()  # keeps the file's normals
    assert "vertex_normals" in glb._cache.cache, "trimesh would have computed normals the file lacks"
    np.testing.assert_allclose(glb.vertices, displaced, rtol=0, atol=1e-6 * np.abs(displaced).max())
    np.testing.assert_allclose(glb.vertex_normals, normals, rtol=0, atol=1e-5)
    ply = trimesh.load(tmp_path / "stylized.ply", process=False)
    np.testing.assert_allclose(ply.vertices, displaced, rtol=0, atol=1e-6 * np.abs(displaced).max())
    np.testing.assert_allclose(ply.vertex_normals, normals, rtol=0, atol=1e-5)
    expected = np.round(result.colors_srgb * 255)
    np.testing.assert_array_equal(ply.visual.vertex_colors[:, :3], expected)
    table = _ply_vertex_table(tmp_path / "stylized.ply")
    np.testing.assert_array_equal(table["displacement"], result.displacement)
    np.testing.assert_array_equal(np.stack([table[c] for c in ("red", "green", "blue")], 1), expected)
