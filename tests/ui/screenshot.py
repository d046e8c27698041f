"""UI smoke test of the add-on in a real Blender window; run by Blender, not by pytest.

    blender --factory-startup -noaudio --enable-event-simulate --python tests/ui/screenshot.py -- \
        --out window.png [--area-out viewport.png] [--report report.json]

What it does, in a window (Xvfb is enough; see docs/blender.md, "A real window"):

1. installs ``addon/`` as the legacy add-on ``partstyle`` (a link in a temporary folder put on
   ``sys.path``) and enables it with ``addon_utils``; the repository root goes on ``sys.path`` too,
   so the engine is the checkout's ``engine`` package (it needs PyTorch only to stylize: without it
   the panel says "Engine not ready");
2. replaces the default cube with the sample lamp (``engine.samples``, numpy only; a lamp of
   primitives if that cannot be imported), with ``part:<name>`` vertex groups, selected and active;
3. fills the prompt ``red base, yellow tube, blue shade``, runs Parse prompt (part rows) and
   Show parts (the lamp colored by the rows' swatches);
4. opens the sidebar, widens it by dragging its edge, and makes "Partstyle" the active tab:
   ``region.active_panel_category`` where Blender has it (4.x), else simulated mouse-wheel events
   over the tab strip (each wheel step shows the next tab; Partstyle, registered last, is the last);
5. checks that the Partstyle panels were drawn in the sidebar (their ``draw`` is wrapped to count
   calls; Blender draws only the active tab's panels), saves the screenshot(s), writes the report
   (JSON: what was checked, ``"ok"``) and quits: exit status 0 when everything held, else 1.

Simulated events need ``--enable-event-simulate`` (Blender then ignores the real mouse and
keyboard). Without it the tab is switched only where ``active_panel_category`` exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import addon_utils
import bpy

REPO = Path(__file__).resolve().parents[2]
ADDON = "partstyle"
CATEGORY = "Partstyle"
PROMPT = "red base, yellow tube, blue shade"
#: The rows' swatches, as the prompt says (a user sets them in the rows; the default is a palette).
SWATCHES = {"base": (0.8, 0.05, 0.03), "tube": (0.95, 0.7, 0.02), "shade": (0.05, 0.2, 0.85)}
PANELS = ("PARTSTYLE_PT_main", "PARTSTYLE_PT_parts", "PARTSTYLE_PT_stylize", "PARTSTYLE_PT_results")
SIDEBAR_WIDTH = 420  # pixels the sidebar is dragged to (at UI scale 1), room for a part row
STEP = 0.4  # seconds between steps: Blender redraws and handles the simulated events in between


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="screenshot.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="PNG of the whole window")
    parser.add_argument("--area-out", help="PNG of the 3D Viewport area only (with its sidebar)")
    parser.add_argument("--report", help="JSON report (default: next to --out, .json)")
    parser.add_argument("--prompt", default=PROMPT)
    return parser.parse_args(argv)


ARGS = parse_args()
REPORT: dict = {"ok": False, "blender": bpy.app.version_string, "python": sys.version.split()[0], "checks": {},
                "errors": []}
DRAWN = dict.fromkeys(PANELS, 0)


def check(name: str, value, expected=True) -> None:
    """Record one check; the report is ok only when every check holds."""
    REPORT["checks"][name] = {"value": value, "ok": value == expected}


# --- the add-on ----------------------------------------------------------------------------------

def install_addon() -> None:
    """``addon/`` as the legacy add-on ``partstyle``: a link (or a copy) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="partstyle-ui-"))
    REPORT["addon_folder"] = str(folder)
    try:
        (folder / ADDON).symlink_to(REPO / "addon", target_is_directory=True)
    except OSError:  # no symlinks (Windows without the privilege): a copy does as well
        shutil.copytree(REPO / "addon", folder / ADDON)
    sys.path[:0] = [str(folder), str(REPO)]
    errors = []
    module = addon_utils.enable(ADDON, default_set=True, handle_error=lambda exc: errors.append(repr(exc)))
    REPORT["errors"] += errors
    check("addon_enabled", module is not None and ADDON in bpy.context.preferences.addons)
    check("addon_bl_info_blender", list(getattr(module, "bl_info", {}).get("blender", ())) <= list(bpy.app.version))
    check("panel_registered", all(hasattr(bpy.types, name) for name in PANELS))
    for name in PANELS:
        spy_on(getattr(bpy.types, name))
    from partstyle import engine_link
    REPORT["engine"] = engine_link.status().summary()


def spy_on(panel) -> None:
    """Count the panel's draws; keep the first error of its draw (Blender only prints those)."""
    draw = panel.draw

    def counted(self, context):
        DRAWN[panel.__name__] += 1
        try:
            return draw(self, context)
        except Exception:
            if len(REPORT["errors"]) < 5:
                REPORT["errors"].append(f"{panel.__name__}.draw: {traceback.format_exc()}")
            raise

    panel.draw = counted


# --- the scene -----------------------------------------------------------------------------------

def lamp_arrays():
    """The sample lamp, Z up: (vertices, faces, {part: vertex indices}), or None without numpy."""
    try:
        import numpy as np

        from engine.samples import sample_mesh
    except ImportError as exc:
        REPORT["lamp_fallback"] = f"engine.samples unavailable ({exc}); a lamp of primitives"
        return None
    mesh = sample_mesh("lamp", 2000)
    v = mesh.vertices
    vertices = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    parts = {name: np.flatnonzero(mesh.labels == k).tolist() for k, name in enumerate(mesh.label_names)}
    return vertices.tolist(), mesh.faces.tolist(), parts


def primitive_lamp():
    """A lamp of three primitives joined into one mesh, when engine.samples cannot be imported."""
    mesh_ops = bpy.ops.mesh
    pieces = []
    for part, add in (
            ("base", lambda: mesh_ops.primitive_cylinder_add(radius=0.5, depth=0.12, location=(0, 0, 0.06))),
            ("tube", lambda: mesh_ops.primitive_cylinder_add(radius=0.05, depth=1.2, location=(0, 0, 0.72))),
            ("shade", lambda: mesh_ops.primitive_cone_add(radius1=0.55, radius2=0.25, depth=0.5,
                                                          end_fill_type='NOTHING', location=(0, 0, 1.4)))):
        add()
        obj = bpy.context.active_object
        obj.vertex_groups.new(name=f"part:{part}").add(list(range(len(obj.data.vertices))), 1.0, 'REPLACE')
        pieces.append(obj)
    for obj in pieces:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = pieces[0]
    bpy.ops.object.join()
    lamp = bpy.context.active_object
    lamp.name = "Lamp"
    return lamp


def make_lamp():
    for obj in list(bpy.data.objects):
        if obj.type == 'MESH':
            bpy.data.objects.remove(obj)
    arrays = lamp_arrays()
    if arrays is None:
        lamp = primitive_lamp()
    else:
        vertices, faces, parts = arrays
        mesh = bpy.data.meshes.new("Lamp")
        mesh.from_pydata(vertices, [], faces)
        mesh.update()
        lamp = bpy.data.objects.new("Lamp", mesh)
        bpy.context.scene.collection.objects.link(lamp)
        for part, indices in parts.items():
            lamp.vertex_groups.new(name=f"part:{part}").add(indices, 1.0, 'REPLACE')
    bpy.context.view_layer.update()
    for obj in bpy.context.scene.objects:
        obj.select_set(obj == lamp)
    bpy.context.view_layer.objects.active = lamp
    return lamp


def fill_panel(context) -> None:
    """The prompt, Parse prompt (rows), the rows' swatches, Show parts: as a user would."""
    settings = context.scene.partstyle
    settings.prompt = ARGS.prompt
    check("parse_prompt", bpy.ops.partstyle.parse_prompt(), {'FINISHED'})
    for row in settings.parts:
        if row.part in SWATCHES:
            row.color = SWATCHES[row.part]
    REPORT["rows"] = [[row.part, row.style] for row in settings.parts]
    check("show_parts", bpy.ops.partstyle.show_parts(), {'FINISHED'})


# --- the window ----------------------------------------------------------------------------------

def view3d(window):
    area = next(a for a in window.screen.areas if a.type == 'VIEW_3D')
    regions = {r.type: r for r in area.regions}
    return area, regions["WINDOW"], regions["UI"]


def widen_sidebar(window, sidebar):
    """Drag the sidebar's left edge to the left; a generator of steps.

    The edge's action zone is a few pixels wide, just inside the region's left side (Blender 3.4:
    x + 4 to x + 12 at UI scale 1); the offsets are tried until the width changes.
    """
    scale = bpy.context.preferences.system.ui_scale
    for offset in (8, 6, 10):
        grow = int(SIDEBAR_WIDTH * scale) - sidebar.width
        if grow <= 0:
            return
        x, y = sidebar.x + round(offset * scale), sidebar.y + sidebar.height // 2
        window.event_simulate(type='MOUSEMOVE', value='NOTHING', x=x, y=y)
        yield
        window.event_simulate(type='LEFTMOUSE', value='PRESS', x=x, y=y)
        yield
        for k in range(1, 4):
            window.event_simulate(type='MOUSEMOVE', value='NOTHING', x=x - grow * k // 3, y=y)
            yield
        window.event_simulate(type='LEFTMOUSE', value='RELEASE', x=x - grow, y=y)
        yield


def open_tab(window, sidebar):
    """Make Partstyle the sidebar's active tab; a generator of steps."""
    if hasattr(sidebar, "active_panel_category"):  # Blender 4.x
        sidebar.active_panel_category = CATEGORY
        REPORT["tab_method"] = "region.active_panel_category"
        yield
        return
    # Blender 3.x: the wheel over the tab strip (the region's outer edge) shows the next tab; past
    # the last one it stays there. Partstyle's panels are registered last, so its tab is the last.
    REPORT["tab_method"] = "mouse wheel over the tab strip (event simulation)"
    x, y = sidebar.x + sidebar.width - 4, sidebar.y + sidebar.height // 2
    window.event_simulate(type='MOUSEMOVE', value='NOTHING', x=x, y=y)
    yield
    for _ in range(12):
        window.event_simulate(type='WHEELDOWNMOUSE', value='PRESS', x=x, y=y)
    yield


def steps():
    """The whole run, one step per timer tick."""
    window = bpy.context.window_manager.windows[0]
    REPORT["window"] = [window.width, window.height]
    install_addon()
    yield
    area, main_region, sidebar = view3d(window)
    with bpy.context.temp_override(window=window, area=area, region=main_region):
        lamp = make_lamp()
        fill_panel(bpy.context)
        bpy.ops.view3d.view_selected()
        bpy.ops.view3d.zoom(delta=-1)
    layer = bpy.context.view_layer
    check("object_selected", [o.name for o in layer.objects if o.select_get()] == [lamp.name]
          and layer.objects.active == lamp)
    area.spaces.active.show_region_ui = True
    yield
    _, _, sidebar = view3d(window)
    REPORT["sidebar_width_before"] = sidebar.width
    yield from widen_sidebar(window, sidebar)
    REPORT["sidebar_width"] = sidebar.width  # cosmetic: not a check
    DRAWN.update(dict.fromkeys(PANELS, 0))
    sidebar.tag_redraw()
    yield
    check("tab_hidden_before", DRAWN["PARTSTYLE_PT_main"] == 0 or hasattr(sidebar, "active_panel_category"))
    yield from open_tab(window, sidebar)
    # Park the pointer over the viewport so no button in the sidebar is highlighted.
    window.event_simulate(type='MOUSEMOVE', value='NOTHING', x=main_region.x + main_region.width // 3,
                          y=main_region.y + 40)
    DRAWN.update(dict.fromkeys(PANELS, 0))
    sidebar.tag_redraw()
    yield
    yield
    REPORT["panels_drawn"] = dict(DRAWN)
    check("partstyle_tab_active", all(DRAWN[name] > 0 for name in PANELS))
    if hasattr(sidebar, "active_panel_category"):
        check("active_panel_category", sidebar.active_panel_category, CATEGORY)
    check("draw_errors", [e for e in REPORT["errors"] if ".draw:" in e], [])
    with bpy.context.temp_override(window=window, screen=window.screen):
        bpy.ops.screen.screenshot(filepath=str(Path(ARGS.out).resolve()))
    check("screenshot_saved", Path(ARGS.out).is_file())
    REPORT["sidebar_rect"] = [sidebar.x, sidebar.y, sidebar.width, sidebar.height]
    REPORT["area_rect"] = [area.x, area.y, area.width, area.height]
    if ARGS.area_out:
        crop(ARGS.out, ARGS.area_out, REPORT["area_rect"])


def crop(source: str, target: str, rect) -> None:
    """Save the window pixels in ``rect`` (x, y from the bottom left, width, height) as a PNG.

    (``screen.screenshot_area`` saved a 1x1 image when called from a timer in Blender 3.4.)
    """
    import numpy as np

    x, y, width, height = rect
    image = bpy.data.images.load(str(Path(source).resolve()))
    pixels = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(pixels)
    part = pixels.reshape(image.size[1], image.size[0], 4)[y:y + height, x:x + width]
    out = bpy.data.images.new("partstyle-crop", width, height)
    out.pixels.foreach_set(np.ascontiguousarray(part).ravel())
    out.filepath_raw = str(Path(target).resolve())
    out.file_format = 'PNG'
    out.save()


def finish(code: int) -> None:
    report = Path(ARGS.report) if ARGS.report else Path(ARGS.out).with_suffix(".json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(REPORT, indent=2, default=str) + "\n")
    if REPORT.get("addon_folder"):
        shutil.rmtree(REPORT["addon_folder"], ignore_errors=True)  # the link only, never addon/
    print(f"partstyle ui: ok={REPORT['ok']} report={report}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # quit_blender() always exits 0; the status says whether the checks held


def run():
    runner = steps()

    def tick():
        try:
            next(runner)
            return STEP
        except StopIteration:
            REPORT["ok"] = all(c["ok"] for c in REPORT["checks"].values()) and not REPORT["errors"]
            finish(0 if REPORT["ok"] else 1)
        except Exception:
            REPORT["errors"].append(traceback.format_exc())
            finish(1)
        return None

    bpy.context.preferences.view.show_splash = False
    bpy.app.timers.register(tick, first_interval=1.0)


run()
