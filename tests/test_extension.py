"""The Blender extension build (`python build.py extension`): a zip that Blender's own tool builds and
validates, with the add-on at its root and the engine vendored inside it as `engine/`.

The build and validation need Blender's extension tool, which ships inside the `bpy` package; those
tests skip with the reason where bpy is not installed. The checks that build.py makes on its own
(versions, license, absolute engine imports, the staged layout) run everywhere.

Until addon/__init__.py exists the add-on is stood in for by a placeholder package; once it exists,
the real add-on is built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_build():
    spec = importlib.util.spec_from_file_location("partstyle_build", os.path.join(ROOT, "build.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build()

try:
    TOOL, TAGS = build.find_blender_ext(sys.executable)
    NO_TOOL = ""
except build.ExtensionError as exc:
    TOOL, TAGS, NO_TOOL = None, None, str(exc)
needs_tool = pytest.mark.skipif(bool(NO_TOOL), reason=f"Blender's extension tool is unavailable: {NO_TOOL}")

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _fh:
    VERSION = tomllib.load(_fh)["project"]["version"]
JUNK = ("__pycache__/junk.cpython-311.pyc", "stale.pyc", "tests/test_junk.py", ".hidden")


def _addon_source(folder: str) -> str:
    """A copy of addon/ (or a placeholder package while it has no __init__.py) with junk that must not ship."""
    real = os.path.join(ROOT, "addon")
    if os.path.isfile(os.path.join(real, "__init__.py")):
        shutil.copytree(real, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        os.makedirs(folder)
        with open(os.path.join(folder, "__init__.py"), "w", encoding="utf-8") as fh:
            fh.write('"""Placeholder for the Partstyle add-on (addon/__init__.py is not written yet)."""\n\n\n'
                     'def register():\n    pass\n\n\ndef unregister():\n    pass\n')
        with open(os.path.join(folder, "cli.py"), "w", encoding="utf-8") as fh:
            fh.write('"""Placeholder for the add-on\'s command line."""\n')
    for name in JUNK:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"junk\n")
    return folder


def _shipped(folder: str) -> set[str]:
    """Files of ``folder`` that the extension must carry (no caches, tests or dot-files), '/'-separated."""
    found = set()
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "tests") and not d.startswith(".")]
        for name in files:
            if not name.endswith((".pyc", ".pyo")) and not name.startswith("."):
                found.add(os.path.relpath(os.path.join(here, name), folder).replace(os.sep, "/"))
    return found


def _manifest_with(tmp_path, old: str, new: str) -> str:
    with open(build.MANIFEST, encoding="utf-8") as fh:
        text = fh.read()
    assert old in text, f"the test expects {old!r} in blender_manifest.toml"
    path = tmp_path / "blender_manifest.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def addon_dir(tmp_path_factory) -> str:
    return _addon_source(str(tmp_path_factory.mktemp("src") / "addon"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, addon_dir) -> str:
    if NO_TOOL:
        pytest.skip(f"Blender's extension tool is unavailable: {NO_TOOL}")
    return build.build_extension(str(tmp_path_factory.mktemp("dist")), addon_dir=addon_dir)


# ------------------------------------------------------------------------------------------------
# The zip


@needs_tool
def test_zip_is_named_by_id_and_version_and_validates(built):
    assert os.path.basename(built) == f"partstyle-{VERSION}.zip"
    args = ["validate", built, *(["--valid-tags", TAGS] if TAGS else [])]
    done = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


@needs_tool
def test_zip_holds_the_addon_at_its_root_and_the_engine_inside_it(built, addon_dir):
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        manifest = zf.read("blender_manifest.toml")
        weights = zf.read("engine/assets/tiny/clip/model.safetensors")
    for required in ("__init__.py", "blender_manifest.toml", "engine/__init__.py", "engine/api.py",
                     "engine/assets/tiny/clip/model.safetensors", "engine/assets/tiny/clip/config.json"):
        assert required in names, f"{required} missing from the zip"
    assert _shipped(addon_dir) <= names, f"add-on files missing: {sorted(_shipped(addon_dir) - names)}"
    engine = {f"engine/{name}" for name in _shipped(build.ENGINE_DIR)}
    assert engine <= names, f"engine files missing: {sorted(engine - names)}"
    with open(build.MANIFEST, "rb") as fh:
        assert manifest == fh.read()
    with open(os.path.join(build.ENGINE_DIR, "assets", "tiny", "clip", "model.safetensors"), "rb") as fh:
        assert weights == fh.read()


@needs_tool
def test_zip_holds_no_caches_tests_or_dot_files(built):
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if n.startswith("tests/") or "/." in "/" + n]
    assert not [n for n in names if n.endswith(".zip")]


@needs_tool
def test_vendored_engine_imports_as_a_subpackage(built, tmp_path):
    """Extracted like Blender installs it, `<package>.engine` imports and finds its shipped tiny CLIP.

    Runs in a fresh, isolated interpreter (no working folder or PYTHONPATH on sys.path), so the
    project's top-level `engine` is not importable there, and checks none was imported.
    """
    package = tmp_path / "partstyle"
    with zipfile.ZipFile(built) as zf:
        zf.extractall(package)
    code = "\n".join([
        "import os, sys",
        f"sys.path.insert(0, {str(tmp_path)!r})",
        "import partstyle.engine.api as api",
        "from partstyle.engine.models import ModelStore",
        f"assert api.__file__.startswith({str(package)!r}), api.__file__",
        "assert 'engine' not in sys.modules, 'a top-level engine was imported'",
        "bundle = ModelStore('tiny').clip('cpu')",
        "assert 'engine' not in sys.modules, 'a top-level engine was imported'",
        "print('OK', type(bundle).__name__)",
    ])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@needs_tool
def test_blender_installs_and_enables_the_zip(built, tmp_path):
    """Blender 5.0 (the bpy module) installs the zip as a user extension, enables it, and the add-on's
    vendored engine is the one under the installed package. User files go to a temporary folder."""
    code = "\n".join([
        "import importlib, sys",
        "import bpy",
        f"result = bpy.ops.extensions.package_install_files(filepath={built!r}, repo='user_default', "
        "enable_on_install=True)",
        "assert result == {'FINISHED'}, result",
        "name = 'bl_ext.user_default.partstyle'",
        "enabled = [a.module for a in bpy.context.preferences.addons]",
        "assert name in enabled, enabled",
        "engine = importlib.import_module(name + '.engine.api')",
        f"assert engine.__file__.startswith({str(tmp_path / 'user')!r}), engine.__file__",
        "assert 'engine' not in sys.modules, 'a top-level engine was imported'",
        "print('OK', engine.__file__)",
    ])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(BLENDER_USER_RESOURCES=str(tmp_path / "user"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------
# Failures are loud


@needs_tool
@pytest.mark.parametrize("old,new,says", [
    ('id = "partstyle"\n', "", 'missing "id"'),
    ('license = ["SPDX:GPL-3.0-or-later"]', "license = []", "license"),
    ('license = ["SPDX:GPL-3.0-or-later"]', 'license = ["GPL"]', "SPDX"),
    ('blender_version_min = "4.2.0"', 'blender_version_min = "4.2"', "blender_version_min"),
    ('type = "add-on"', 'type = "addon"', "type"),
    ('the user chooses"', 'the user chooses."', "punctuation"),  # a permission's reason ends without a period
], ids=["missing-id", "empty-license", "non-spdx-license", "short-blender-version", "bad-type", "reason-period"])
def test_a_broken_manifest_fails_the_build_with_the_reason(tmp_path, addon_dir, old, new, says):
    manifest = _manifest_with(tmp_path, old, new)
    out = tmp_path / "dist"
    with pytest.raises(build.ExtensionError) as err:
        build.build_extension(str(out), addon_dir=addon_dir, manifest=manifest)
    assert says in str(err.value)
    assert manifest in str(err.value), "the message names the manifest"
    assert not list(out.glob("*.zip")), "a failed build leaves no zip"


def test_manifest_and_pyproject_agree_on_the_version():
    assert build.check_manifest() == VERSION


def test_a_version_mismatch_fails(tmp_path):
    manifest = _manifest_with(tmp_path, f'version = "{VERSION}"', 'version = "9.9.9"')
    with pytest.raises(build.ExtensionError, match=r"version mismatch.*9\.9\.9"):
        build.check_manifest(manifest)


def test_a_non_spdx_license_fails(tmp_path):
    manifest = _manifest_with(tmp_path, '"SPDX:GPL-3.0-or-later"', '"GPL-3.0-or-later"')
    with pytest.raises(build.ExtensionError, match=r"SPDX:GPL-3\.0-or-later"):
        build.check_manifest(manifest)


def test_the_engine_imports_itself_only_relatively():
    build.check_relative_imports()  # raises, listing file:line, on any `import engine` / `from engine...`


@pytest.mark.parametrize("line", ["from engine.mesh import Mesh", "import engine.api", "import engine",
                                  "    from engine import api"])
def test_an_absolute_engine_import_fails_loudly(tmp_path, line):
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "__init__.py").write_text("")
    (engine / "api.py").write_text('"""door"""\nfrom .mesh import Mesh\n')
    body = f"def late():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (engine / "mesh.py").write_text('"""mesh"""\nimport os\n' + body)
    with pytest.raises(build.ExtensionError, match=r"absolute imports of the engine[\s\S]*engine[/\\]mesh\.py:\d"):
        build.check_relative_imports(str(engine))


def test_staging_lays_out_the_extension_without_junk(tmp_path, addon_dir):
    stage = tmp_path / "partstyle"
    assert build.stage_extension(str(stage), addon_dir=addon_dir) == VERSION
    files = _shipped(str(stage))
    assert {"__init__.py", "blender_manifest.toml", "engine/api.py",
            "engine/assets/tiny/clip/model.safetensors"} <= files
    assert not (stage / "tests").exists() and not (stage / "__pycache__").exists()
    assert not (stage / "stale.pyc").exists() and not (stage / ".hidden").exists()


def test_staging_refuses_an_addon_without_init(tmp_path):
    (tmp_path / "addon").mkdir()
    with pytest.raises(build.ExtensionError, match=r"__init__\.py is missing"):
        build.stage_extension(str(tmp_path / "stage"), addon_dir=str(tmp_path / "addon"))


# ------------------------------------------------------------------------------------------------
# The platform zip: the engine's dependencies bundled as wheels, installed by Blender and run offline
#
# `python build.py test` fills the wheel cache for linux-x64 first (a build step, with network) and
# sets PARTSTYLE_EXTENSION_WHEELS=required; the tests build the zip from that cache only (offline).

LINUX = build.ExtensionTarget("linux-x64")
EXTENSION_MODULE = "bl_ext.user_default.partstyle"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory) -> str:
    if NO_TOOL:
        pytest.skip(f"Blender's extension tool is unavailable: {NO_TOOL}")
    if build.this_platform() != LINUX.platform:
        pytest.skip(f"the bundled-wheels zip is installed and run on linux-x64 only (this is "
                    f"{build.this_platform() or 'another platform'})")
    try:
        return build.build_extension(str(tmp_path_factory.mktemp("dist-linux")), target=LINUX, offline=True)
    except build.ExtensionError as exc:
        if os.environ.get("PARTSTYLE_EXTENSION_WHEELS") == "required":
            raise
        pytest.skip(f"the linux-x64 wheel cache is not prepared ({exc}); `python build.py test` prepares it")


def _bpy_dependencies() -> set[str]:
    """bpy and every package it pulls in: what Blender's own site-packages holds, normalized."""
    import importlib.metadata as metadata

    seen, todo = set(), ["bpy"]
    while todo:
        name = build.requirement_name(todo.pop())
        if name in seen:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [r for r in requires if "extra ==" not in r.partition(";")[2]]
    return seen


def _blender_site(folder) -> str:
    """A folder that holds only what Blender's Python holds: bpy and its dependencies (links into
    this environment), standing in for Blender's own site-packages."""
    import importlib.metadata as metadata

    folder.mkdir()
    base = metadata.distribution("bpy").locate_file("")
    tops = {str(f.parts[0]) for name in _bpy_dependencies() for f in metadata.distribution(name).files or []}
    for top in sorted(tops - {"..", "__pycache__"}):
        if os.path.exists(os.path.join(base, top)):
            os.symlink(os.path.join(base, top), folder / top)
    return str(folder)


def _in_blender(site: str, user: str, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter that sees only the standard library and ``site`` (as
    Blender's Python does: no virtual environment, no PYTHONPATH), ``site`` standing as Blender's
    own site-packages, user files under ``user``."""
    code = "\n".join([
        "import site, sys",
        f"sys.path.append({site!r})",
        f"site.getsitepackages = lambda prefixes=None: [{site!r}]",
        "import bpy",
        body,
    ])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(BLENDER_USER_RESOURCES=user, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=user, env=env, capture_output=True,
                          text=True, timeout=900)


@needs_tool
def test_platform_zip_lists_its_wheels_for_its_platform_only(bundled):
    with zipfile.ZipFile(bundled) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert os.path.basename(bundled) == f"partstyle-{VERSION}-linux_x64.zip"
    assert manifest["platforms"] == ["linux-x64"]
    wheels = [w.removeprefix("./") for w in manifest["wheels"]]
    assert sorted(n for n in names if n.startswith("wheels/")) == sorted(wheels)
    dists = {build.requirement_name(os.path.basename(w).split("-")[0]) for w in wheels}
    assert {"torch", "transformers", "safetensors", "huggingface-hub", "tokenizers"} <= dists
    torch = [w for w in wheels if os.path.basename(w).startswith("torch-")]
    assert len(torch) == 1 and "+cpu-cp311-cp311-manylinux" in torch[0], torch
    assert not [w for w in wheels if "win_amd64" in w or "macosx" in w], "another platform's wheel"
    shadowing = dists & (_bpy_dependencies() | set(build.BLENDER_PROVIDES))
    assert not shadowing, f"bundled wheels would shadow Blender's own packages: {sorted(shadowing)}"


@needs_tool
@pytest.mark.slow
def test_blender_installs_the_platform_zip_and_stylizes_offline(bundled, tmp_path):
    """Blender 5.0's extension installer puts the wheels in the extensions' site-packages; in the
    next session (where Blender puts that folder ahead of its own site-packages) torch and
    transformers come from there, numpy is still Blender's, and the installed add-on's own command
    stylizes an object for 2 iterations with the tiny models, nothing downloaded."""
    import bpy
    from addon_fixtures import make_lamp, reset_scene

    reset_scene()
    make_lamp("Lamp")
    blend = str(tmp_path / "lamp.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    reset_scene()
    site, user = _blender_site(tmp_path / "blender-site"), str(tmp_path / "user")
    os.makedirs(user)
    installed = _in_blender(site, user, "\n".join([
        f"result = bpy.ops.extensions.package_install_files(filepath={bundled!r}, repo='user_default', "
        "enable_on_install=True)",
        "assert result == {'FINISHED'}, result",
        "bpy.ops.wm.save_userpref()",
        "print('INSTALLED')",
    ]))
    assert installed.returncode == 0 and "INSTALLED" in installed.stdout, installed.stdout + installed.stderr
    wheels_site = os.path.join(user, "extensions", ".local", "lib", "python3.11", "site-packages")
    out = str(tmp_path / "styled.blend")
    ran = _in_blender(site, user, "\n".join([
        "import importlib, json, addon_utils",
        "import numpy",
        "before = numpy",
        f"addon_utils.enable({EXTENSION_MODULE!r}, default_set=True)",
        f"addon = importlib.import_module({EXTENSION_MODULE!r})",
        "import torch, transformers, numpy",
        "cli = importlib.import_module(addon.__name__ + '.cli')",
        f"code = cli.execute(['--blend', {blend!r}, '--object', 'Lamp', '--prompt', 'red base, blue shade', "
        "'--use-groups', '--iterations', '2', '--models', 'tiny', '--device', 'cpu', '--set', 'views.count=2', "
        f"'--set', 'render.resolution=96', '--set', 'guidance.grounding_every=0', '--out', {out!r}])",
        "status = addon.engine_link.refresh()",
        "print('REPORT', json.dumps({'code': code, 'torch': torch.__file__, 'transformers': transformers.__file__,",
        "    'numpy': numpy.__file__, 'same_numpy': numpy is before, 'path': sys.path, 'ok': status.ok,",
        "    'summary': status.summary(), 'command': addon._command.get('handle') is not None,",
        "    'engine': addon.engine_link.engine_package()}))",
    ]))
    lines = [line for line in ran.stdout.splitlines() if line.startswith("REPORT ")]
    assert ran.returncode == 0 and lines, ran.stdout[-3000:] + ran.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["code"] == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert report["torch"].startswith(wheels_site) and report["transformers"].startswith(wheels_site), report
    assert report["numpy"].startswith(site) and report["same_numpy"], "Blender's numpy was replaced"
    assert report["path"].index(wheels_site) < report["path"].index(site), "the wheels' folder is not ahead"
    assert report["ok"], report["summary"]
    assert report["engine"] == f"{EXTENSION_MODULE}.engine" and report["command"]
    assert "[Lamp] step 2/2" in ran.stdout and f"saved {out}" in ran.stdout
    assert os.path.isfile(out)
