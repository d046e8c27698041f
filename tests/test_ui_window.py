"""The add-on in a real Blender window: Debian's Blender 3.4 under Xvfb, the legacy add-on enabled,
the Partstyle sidebar tab opened, a screenshot saved (tests/ui/screenshot.py does the work in
Blender and writes a JSON report of what it checked; this test runs it and reads the report).

The `bpy` module has no window, so this needs a Blender with a display: a launcher script named by
``PARTSTYLE_BLENDER_34`` (or the default one below), which ``sh tests/ui/setup_debian_blender.sh``
writes without root. Without one the test skips; see docs/blender.md, "A real window".
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "ui" / "screenshot.py"
ENV = "PARTSTYLE_BLENDER_34"
DEFAULT_LAUNCHER = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                    / "partstyle" / "debian-blender" / "blender-ui")
SETUP_HINT = (f"set {ENV} to a Blender launcher with a display: 'sh tests/ui/setup_debian_blender.sh' writes "
              f"{DEFAULT_LAUNCHER} (Debian's Blender 3.4 + Xvfb, no root); docs/blender.md, 'A real window'")
ROWS = [["base", "red"], ["tube", "yellow"], ["shade", "blue"]]


def _launcher() -> Path:
    named = os.environ.get(ENV)
    if not named and not DEFAULT_LAUNCHER.exists():
        pytest.skip(f"no Blender with a window: {SETUP_HINT}")
    path = Path(named) if named else DEFAULT_LAUNCHER
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{ENV}={path} is not an executable file; {SETUP_HINT}")
    return path


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One Blender run for the module's tests: (report, window PNG, viewport PNG)."""
    launcher = _launcher()
    folder = tmp_path_factory.mktemp("ui")
    window, viewport, report = folder / "window.png", folder / "viewport.png", folder / "report.json"
    command = [str(launcher), "--factory-startup", "-noaudio", "--enable-event-simulate", "--python", str(SCRIPT),
               "--", "--out", str(window), "--area-out", str(viewport), "--report", str(report)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Blender did not finish in 300 s: {' '.join(command)}\n{(exc.stdout or '')[-3000:]}")
    output = (done.stdout + done.stderr)[-4000:]
    assert report.is_file(), f"no report (exit status {done.returncode}):\n{output}"
    data = json.loads(report.read_text())
    return data, window, viewport, done.returncode, output


def test_addon_enabled_and_its_tab_drawn(run):
    data, _, _, status, output = run
    failed = {name: check["value"] for name, check in data["checks"].items() if not check["ok"]}
    assert data["ok"] and status == 0, f"failed checks {failed}, errors {data['errors']}\n{output}"
    for name in ("addon_enabled", "panel_registered", "object_selected", "tab_hidden_before",
                 "partstyle_tab_active", "draw_errors", "screenshot_saved"):
        assert data["checks"][name]["ok"], name
    assert all(count > 0 for count in data["panels_drawn"].values()), data["panels_drawn"]
    assert data["rows"] == ROWS
    assert "Partstyle engine" in data["engine"]


def test_screenshot_shows_the_sidebar(run):
    data, window, viewport, _, _ = run
    assert _png_size(window) == tuple(data["window"])
    _, _, width, height = data["area_rect"]
    assert _png_size(viewport) == (width, height)
    image = pytest.importorskip("PIL.Image")
    with image.open(window) as png:
        pixels = png.convert("RGB")
        sx, sy, sw, sh = data["sidebar_rect"]
        top = data["window"][1] - (sy + sh)  # Blender counts y from the bottom, images from the top
        sidebar = pixels.crop((sx, top, sx + sw, top + sh))
    colors = sidebar.getcolors(maxcolors=1 << 20)
    background = max(colors)[0] / (sw * sh)
    assert len(colors) > 50 and background < 0.95, (len(colors), background)
