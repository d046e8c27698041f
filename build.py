"""Partstyle's task runner: one command per job, each doing its own set-up.

    python build.py demo    # stylize the parts of the bundled sample lamp offline -> out/demo/
    python build.py test    # lint, the test suite, and the suite again with the lowest declared versions
    python build.py bench   # print performance figures (docs/performance.md)
    python build.py extension  # build the Blender extension zip -> dist/partstyle-<version>.zip

Each task creates or refreshes the virtual environment ``.venv`` first: it installs
``torch==2.13.0`` on its own (an unpinned torch pulls several GB of CUDA packages onto Linux
machines that only have a CPU), then the dependencies listed in pyproject.toml with torch held at
that version. The environment is reinstalled only when pyproject.toml or this file change.
Works the same on Linux, macOS and Windows (plain Python, no shell scripts).

Environment variables:
    PARTSTYLE_TORCH   the torch requirement to install first (default torch==2.13.0), e.g. a
                      CUDA build's spec on a GPU machine.
    PARTSTYLE_VENV    where to keep the virtual environment (default .venv in this folder).
    PARTSTYLE_VENV_LOWEST  where to keep the lowest-versions environment (default .venv-lowest).
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile

try:
    import tomllib
except ImportError:  # Python < 3.11: say so instead of a traceback
    sys.exit(f"Partstyle needs Python 3.11 or newer to build (found {sys.version.split()[0]}).")

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("PARTSTYLE_VENV", os.path.join(ROOT, ".venv"))
TORCH = os.environ.get("PARTSTYLE_TORCH", "torch==2.13.0")
DEMO_ARGS = [
    "stylize", "sample:lamp",
    "--prompt", "red base, blue shade",  # words the tiny models know; the tube is left exactly as it was
    "--preset", "fast",
    "--seed", "0",
    "--out", os.path.join(ROOT, "out", "demo"),
]


# The lowest-versions environment: every runtime dependency of pyproject.toml (torch aside) at the
# lowest version it declares, so that "supported" means tested at both ends of each range.
LOWEST_VENV = os.environ.get("PARTSTYLE_VENV_LOWEST", os.path.join(ROOT, ".venv-lowest"))
# Test extras that the lowest-versions run leaves out: Blender's module pins its own numpy (its
# tests run in the main environment).
LOWEST_SKIPS = ("bpy",)


def venv_python(venv_dir: str = VENV) -> str:
    folder = "Scripts" if os.name == "nt" else "bin"
    return os.path.join(venv_dir, folder, "python.exe" if os.name == "nt" else "python")


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def _is_torch(requirement: str) -> bool:
    return requirement_name(requirement) == "torch"


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement string, normalized (``Pillow>=10`` -> ``pillow``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements() -> list[str]:
    """pyproject.toml's dependencies (torch aside, installed first) and its test extras.

    One environment serves every task, so alternating ``demo`` and ``test`` never reinstalls.
    """
    project = _project()
    reqs = [r for r in project["dependencies"] if not _is_torch(r)]
    return reqs + project["optional-dependencies"]["test"]


def lowest_version(requirement: str) -> str:
    """``name>=X,<Y`` -> ``name==X``: the lowest version a requirement declares.

    Raises ValueError for a requirement without a lower bound (nothing to test at that end).
    """
    name = requirement_name(requirement)
    match = re.fullmatch(r"\s*[A-Za-z0-9._-]+\s*(?:\[[^\]]*\])?([^;]*)(?:;.*)?", requirement)
    for clause in (match.group(1) if match else "").split(","):
        bound = re.fullmatch(r"\s*(?:>=|==|~=)\s*([0-9][^\s]*)\s*", clause)
        if bound:
            return f"{name}=={bound.group(1)}"
    raise ValueError(f"{requirement!r} declares no lowest version (write {name}>=X in pyproject.toml)")


def lowest_requirements() -> list[str]:
    """The runtime dependencies pinned at their lowest declared versions, plus the test extras
    (without :data:`LOWEST_SKIPS`), for the lowest-versions run."""
    project = _project()
    pinned = [lowest_version(r) for r in project["dependencies"] if not _is_torch(r)]
    tests = [r for r in project["optional-dependencies"]["test"] if requirement_name(r) not in LOWEST_SKIPS]
    return pinned + tests


def ensure_venv(venv_dir: str = VENV, reqs: list[str] | None = None) -> str:
    """Create/refresh a virtual environment holding the pinned torch and ``reqs`` (default:
    :func:`requirements`); returns its python. Reinstalls only when the wanted set changed."""
    reqs = requirements() if reqs is None else reqs
    stamp = os.path.join(venv_dir, "partstyle-installed.txt")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        wanted = hashlib.sha256(fh.read() + TORCH.encode() + repr(sorted(reqs)).encode()).hexdigest()
    python = venv_python(venv_dir)
    if os.path.isfile(python) and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as fh:
            if fh.read().strip() == wanted:
                return python
    if not os.path.isfile(python):
        log(f"creating the virtual environment {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    log(f"installing {TORCH}")
    pip_install(python, [TORCH])
    log("installing " + ", ".join(reqs))
    with tempfile.TemporaryDirectory() as tmp:
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as fh:
            fh.write(TORCH + "\n")
        pip_install(python, ["-c", constraints, *reqs])
    with open(stamp, "w", encoding="utf-8") as fh:
        fh.write(wanted + "\n")
    return python


def pip_install(python: str, args: list[str]) -> None:
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args])


def run(cmd: list[str], env: dict | None = None) -> int:
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code:
        sys.exit(code)
    return code


def log(text: str) -> None:
    print(f"[build] {text}", flush=True)


def task_demo(args: list[str]) -> None:
    python = ensure_venv()
    run([python, "-m", "engine", *DEMO_ARGS, *args])


def task_test(args: list[str]) -> None:
    """The test command: lint, the suite with the newest versions, the suite with the lowest ones.

    ``test``: all three stages, stopping at the first that fails. ``test --lowest [PYTEST ARGS]``:
    only the lowest-versions run. ``test --lint``: only ruff. ``test PYTEST ARGS``: only the main
    suite, with those arguments (e.g. one file).
    """
    if args[:1] == ["--lint"]:
        lint(ensure_venv())
        return
    if args[:1] == ["--lowest"]:
        test_lowest(args[1:])
        return
    python = ensure_venv()
    if args:
        pytest(python, args)
        return
    log("1/3: ruff (the lint rules of pyproject.toml)")
    lint(python)
    log("2/3: the test suite, newest versions")
    pytest(python, [])
    log("3/3: the test suite with the lowest declared versions (docs/installation.md, 'Tested versions')")
    test_lowest([])


def lint(python: str) -> None:
    run([python, "-m", "ruff", "check", "--no-cache", "."])


def pytest(python: str, args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], env=env)


def test_lowest(args: list[str]) -> None:
    python = ensure_venv(LOWEST_VENV, lowest_requirements())
    run([python, "-c", "import numpy, transformers, huggingface_hub, safetensors, trimesh, PIL, tqdm, torch; "
                       "print('[build] lowest versions: ' + ', '.join(f'{m.__name__} {m.__version__}' for m in "
                       "(torch, transformers, huggingface_hub, safetensors, numpy, trimesh, PIL, tqdm)))"])
    pytest(python, args)


def task_bench(args: list[str]) -> None:
    python = ensure_venv()
    run([python, "-m", "engine", "bench", *args])


# -------------------------------------------------------------------------------------------------
# The Blender extension (docs/installation.md, "The Blender extension")
#
# The zip holds the add-on's files at its root and a copy of engine/ inside the add-on package
# (as <package>/engine/), so the installed extension never imports, or collides with, a top-level
# `engine` from anywhere else. Blender's own tool (blender_ext.py, shipped in the bpy wheel and run
# under plain Python) builds the zip from a staged folder and then validates it.

EXTENSION_ID = "partstyle"
ADDON_DIR = os.path.join(ROOT, "addon")
ENGINE_DIR = os.path.join(ROOT, "engine")
MANIFEST = os.path.join(ROOT, "blender_manifest.toml")
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
# Never shipped: caches, tests, dot-files, built archives.
EXTENSION_IGNORE = ("__pycache__", "*.pyc", "*.pyo", ".*", "tests", "*.zip")
# What an extension zip must hold, relative to its root; checked after every build.
EXTENSION_REQUIRED = (
    "__init__.py",
    "blender_manifest.toml",
    "engine/__init__.py",
    "engine/api.py",
    "engine/assets/tiny/clip/config.json",
    "engine/assets/tiny/clip/model.safetensors",
)
BLENDER_EXT = os.path.join("scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")
BLENDER_TAGS = os.path.join("scripts", "modules", "_bpy_internal", "extensions", "tags.py")


class ExtensionError(Exception):
    """The extension could not be built; the message says what was wrong and what to do."""


def _load_toml(path: str, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ExtensionError(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExtensionError(f"{path} is not valid TOML: {exc}") from None


def check_manifest(manifest: str = MANIFEST, pyproject: str = PYPROJECT, engine_dir: str = ENGINE_DIR) -> str:
    """Check the manifest against pyproject.toml; returns the release's version.

    pyproject.toml's version is the release's version: the manifest and engine/__init__.py must
    repeat it. The manifest's license must be pyproject's, written as Blender wants it
    (``["SPDX:GPL-3.0-or-later"]``); Blender's tool checks the rest of the manifest. Raises
    ExtensionError naming what disagrees.
    """
    project = _load_toml(pyproject, "pyproject.toml").get("project", {})
    data = _load_toml(manifest, "The extension manifest")
    version = project.get("version")
    if not version:
        raise ExtensionError(f"{pyproject} has no [project] version")
    found = {os.path.basename(manifest): data.get("version")}
    init = os.path.join(engine_dir, "__init__.py")
    if os.path.isfile(init):
        with open(init, encoding="utf-8") as fh:
            match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", fh.read(), re.M)
        if match:
            found["engine/__init__.py (__version__)"] = match.group(1)
    wrong = {name: value for name, value in found.items() if value != version}
    if wrong:
        listed = ", ".join(f"{name} has {value!r}" for name, value in wrong.items())
        raise ExtensionError(
            f"version mismatch: pyproject.toml has {version!r} but {listed}. pyproject.toml's version is the "
            f"release's version: set the same version in the others."
        )
    licenses = data.get("license")
    wanted = f"SPDX:{project.get('license')}"
    if not (isinstance(licenses, list) and licenses and all(isinstance(x, str) and x.startswith("SPDX:")
                                                              for x in licenses) and wanted in licenses):
        raise ExtensionError(
            f"{manifest}: license is {licenses!r}; it must be a list of SPDX identifiers written "
            f"\"SPDX:<identifier>\" that holds the project's license, e.g. license = [\"{wanted}\"]"
        )
    return version


def check_relative_imports(engine_dir: str = ENGINE_DIR) -> None:
    """Fail if any module of engine/ imports the engine absolutely (`import engine`, `from engine.x ...`).

    The extension vendors the engine as a subpackage of the add-on; an absolute import would load a
    different top-level `engine` (or none) there. Inside engine/ every import of itself is relative.
    """
    problems = []
    for folder, dirs, files in os.walk(engine_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as fh:
                source = fh.read()
            try:
                tree = ast.parse(source, path)
            except SyntaxError as exc:
                raise ExtensionError(f"{path} does not parse: {exc}") from None
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                if any(m == "engine" or m.startswith("engine.") for m in modules):
                    rel = os.path.relpath(path, os.path.dirname(os.path.abspath(engine_dir)))
                    problems.append(f"  {rel}:{node.lineno}: {ast.unparse(node)}")
    if problems:
        raise ExtensionError(
            "absolute imports of the engine inside engine/ (the extension vendors the engine as a subpackage, "
            "where these would import a different or missing top-level `engine`; use relative imports, "
            "e.g. `from .mesh import Mesh`):\n" + "\n".join(problems)
        )


def stage_extension(
    stage: str,
    *,
    addon_dir: str = ADDON_DIR,
    engine_dir: str = ENGINE_DIR,
    manifest: str = MANIFEST,
    pyproject: str = PYPROJECT,
) -> str:
    """Lay out the extension's files in the new folder ``stage``; returns the release's version.

    ``stage`` gets addon/'s files at its root, engine/ as ``stage/engine/`` and the manifest, without
    caches, tests or dot-files. Blender's ``extension build --source-dir STAGE`` zips it as it is.
    """
    if not os.path.isfile(os.path.join(addon_dir, "__init__.py")):
        raise ExtensionError(f"{os.path.join(addon_dir, '__init__.py')} is missing: the add-on package has no "
                             f"__init__.py, so Blender could not load it")
    for clash in ("engine", "blender_manifest.toml"):
        if os.path.exists(os.path.join(addon_dir, clash)):
            raise ExtensionError(f"{os.path.join(addon_dir, clash)} exists, but the build puts the vendored "
                                 f"engine/ and the manifest there: remove it from the add-on folder")
    if not os.path.isfile(os.path.join(engine_dir, "api.py")):
        raise ExtensionError(f"{engine_dir} does not look like the engine (no api.py)")
    version = check_manifest(manifest, pyproject, engine_dir)
    check_relative_imports(engine_dir)
    if os.path.exists(stage) and os.listdir(stage):
        raise ExtensionError(f"the staging folder {stage} exists and is not empty: give a new or empty folder")
    ignore = shutil.ignore_patterns(*EXTENSION_IGNORE)
    shutil.copytree(addon_dir, stage, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(engine_dir, os.path.join(stage, "engine"), ignore=ignore)
    shutil.copyfile(manifest, os.path.join(stage, "blender_manifest.toml"))
    return version


def find_blender_ext(python: str | None = None) -> tuple[str, str | None]:
    """Blender's extension tool (blender_ext.py) and its list of valid tags, from ``python``'s bpy.

    bpy is located with importlib.util.find_spec, which does not import it. Raises ExtensionError
    with the fix when bpy is not installed.
    """
    python = python or sys.executable
    code = ("import importlib.util as u; s = u.find_spec('bpy'); "
            "print((s.submodule_search_locations or [''])[0] if s else '')")
    found = subprocess.run([python, "-c", code], capture_output=True, text=True)
    bpy_dir = found.stdout.strip() if found.returncode == 0 else ""
    tools = sorted(glob.glob(os.path.join(glob.escape(bpy_dir), "*", BLENDER_EXT))) if bpy_dir else []
    if not tools:
        where = f"bpy in {bpy_dir} has no {BLENDER_EXT}" if bpy_dir else f"bpy is not installed for {python}"
        raise ExtensionError(
            f"Blender's extension tool (blender_ext.py, shipped inside the bpy package) was not found: {where}. "
            f"Fix: run build.py with Python 3.11 (bpy 5.0's wheels exist for Python 3.11 only), so that the "
            f"virtual environment gets bpy from pyproject.toml's test extras, or install it yourself with "
            f"`{python} -m pip install bpy==5.0.1`. With Blender 4.2 or later at hand you can instead stage the "
            f"files (`python build.py extension --stage DIR`) and run "
            f"`blender --command extension build --source-dir DIR`."
        )
    tool = tools[-1]  # <bpy>/<blender version>/scripts/...; the tags list lies under the same version folder
    tags = os.path.join(tool[: -len(BLENDER_EXT)], BLENDER_TAGS)
    return tool, (tags if os.path.isfile(tags) else None)


def _blender_ext(python: str, tool: str, args: list[str]) -> tuple[int, str]:
    done = subprocess.run([python, tool, *args], capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def check_extension_zip(path: str) -> None:
    """Fail unless the zip holds EXTENSION_REQUIRED at its root and no caches."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    missing = [name for name in EXTENSION_REQUIRED if name not in names]
    cached = sorted(n for n in names if "__pycache__/" in n or n.endswith((".pyc", ".pyo")))
    if missing or cached:
        raise ExtensionError(f"{path} is incomplete: missing {missing}, caches {cached[:5]}")


def build_extension(
    out_dir: str,
    *,
    addon_dir: str = ADDON_DIR,
    engine_dir: str = ENGINE_DIR,
    manifest: str = MANIFEST,
    pyproject: str = PYPROJECT,
    python: str | None = None,
    echo=None,
) -> str:
    """Build and validate the extension zip in ``out_dir`` with Blender's own tool; returns its path.

    ``python`` is the interpreter that has bpy (default: this one); ``echo``, if given, receives the
    tool's messages. Raises ExtensionError when the sources, the build or the validation fail; no zip
    is left behind then.
    """
    python = python or sys.executable
    tool, tags = find_blender_ext(python)
    tag_args = ["--valid-tags", tags] if tags else []
    with tempfile.TemporaryDirectory(prefix="partstyle-extension-") as tmp:
        stage = os.path.join(tmp, EXTENSION_ID)
        version = stage_extension(stage, addon_dir=addon_dir, engine_dir=engine_dir, manifest=manifest,
                                  pyproject=pyproject)
        os.makedirs(out_dir, exist_ok=True)
        zip_id = _load_toml(manifest, "The extension manifest").get("id") or EXTENSION_ID
        path = os.path.join(out_dir, f"{zip_id}-{version}.zip")
        if os.path.exists(path):
            os.remove(path)  # a failed build must not leave an older zip looking new
        code, output = _blender_ext(python, tool, ["build", "--source-dir", stage, "--output-dir", out_dir, *tag_args])
        output = output.replace(os.path.join(stage, "blender_manifest.toml"), manifest)  # name the source file
        if code or not os.path.isfile(path):
            raise ExtensionError(f"Blender's extension tool refused to build it (exit code {code}):\n{output}")
        if echo:
            echo(f"{os.path.basename(tool)} build: " + output.replace("\n", "; "))
    code, output = _blender_ext(python, tool, ["validate", path, *tag_args])
    if code:
        os.remove(path)
        raise ExtensionError(f"Blender's extension tool says {path} is not valid (exit code {code}):\n{output}")
    if echo:
        echo(f"{os.path.basename(tool)} validate {os.path.basename(path)}: {output}")
    try:
        check_extension_zip(path)
    except ExtensionError:
        os.remove(path)
        raise
    return path


def task_extension(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="build.py extension", description="Build the Blender extension zip.")
    parser.add_argument("--out", default=os.path.join(ROOT, "dist"), help="folder for the zip (default dist/)")
    parser.add_argument("--stage", metavar="DIR", help="only lay out the extension's files in DIR (no bpy needed)")
    options = parser.parse_args(args)
    try:
        if options.stage:
            version = stage_extension(options.stage)
            log(f"staged Partstyle {version} in {options.stage}")
            return
        path = build_extension(options.out, python=ensure_venv(), echo=log)
    except ExtensionError as exc:
        sys.exit(f"[build] the extension was not built: {exc}")
    log(f"built {os.path.relpath(path)} ({os.path.getsize(path) / 1e6:.1f} MB); install it in Blender 4.2+ with "
        f"Edit > Preferences > Get Extensions > Install from Disk")


TASKS = {"demo": task_demo, "test": task_test, "bench": task_bench, "extension": task_extension}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TASKS:
        print(__doc__)
        sys.exit(2)
    TASKS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
