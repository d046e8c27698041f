"""Result files are written all or nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine import export
from engine.config import settings_for
from engine.errors import OutputError
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
