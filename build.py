"""Partstyle's task runner: one command per job, each doing its own set-up.

    python build.py demo    # stylize the parts of the bundled sample lamp offline -> out/demo/
    python build.py test    # lint, then the test suite at the newest and the lowest declared versions, side by side
    python build.py bench   # print performance figures (docs/performance.md)
    python build.py extension [--platform linux-x64|windows-x64|macos-arm64|all|none]
                              [--python 3.11|3.13|all] [--variant cpu|cuda] [--offline]
        # the Blender extension zip with the engine's wheels -> dist/partstyle-<version>-<platform>.zip

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
    PARTSTYLE_WHEEL_CACHE  where the extension's wheels and locks are kept (default .cache/extension-wheels).
    PARTSTYLE_TORCH_INDEX  the index of the extension's CPU torch for Linux (default PyTorch's CPU index).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
import zipfile
from dataclasses import dataclass

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
LOWEST_LOG = os.path.join(ROOT, ".cache", "test-lowest.log")  # the lowest-versions suite's output (test command)
# Test extras that the lowest-versions run leaves out: Blender's module pins its own numpy (its
# tests run in the main environment), and uv only builds the extension.
LOWEST_SKIPS = ("bpy", "uv")


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
    """The runtime dependencies and the optional extras' (``ray``) pinned at their lowest declared
    versions, plus the other test extras (without :data:`LOWEST_SKIPS`), for the lowest-versions run."""
    project = _project()
    extras = project["optional-dependencies"]
    runtime = [r for name, reqs in extras.items() if name != "test" for r in reqs]
    pinned = [lowest_version(r) for r in project["dependencies"] + runtime if not _is_torch(r)]
    skip = {*LOWEST_SKIPS, *(requirement_name(r) for r in runtime)}
    tests = [r for r in extras["test"] if requirement_name(r) not in skip]
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

    ``test``: lint, stopping there if it fails; then the two suites side by side (each on half of
    the CPUs: most of a suite is single-threaded Python, process start-up and small tensors, so one
    alone leaves a core idle much of the time); fails when either fails. ``test --lowest [PYTEST ARGS]``:
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
    newest_env = prepare_extension_wheels(python)
    lowest = lowest_venv()
    threads = suite_threads()
    log(f"2/3 and 3/3: the test suite with the newest versions and, side by side, with the lowest declared "
        f"versions (docs/installation.md, 'Tested versions'), {threads} CPU thread(s) each; the lowest "
        f"versions' output follows the newest's and is kept in {os.path.relpath(LOWEST_LOG, ROOT)}")
    threads_env = {"OMP_NUM_THREADS": str(threads)}
    os.makedirs(os.path.dirname(LOWEST_LOG), exist_ok=True)
    with open(LOWEST_LOG, "w", encoding="utf-8") as lowest_out:
        beside = subprocess.Popen(pytest_command(lowest, []), cwd=ROOT, env=pytest_env(threads_env),
                                  stdout=lowest_out, stderr=subprocess.STDOUT)
        try:
            newest_code = subprocess.call(pytest_command(python, []), cwd=ROOT,
                                          env=pytest_env({**newest_env, **threads_env}))
            if beside.poll() is None:
                log("2/3 done; waiting for 3/3, the lowest versions' run")
            lowest_code = beside.wait()
        finally:
            if beside.poll() is None:  # interrupted: the suite beside stops too
                beside.terminate()
                beside.wait()
    log(f"3/3: the lowest versions' run ({os.path.relpath(LOWEST_LOG, ROOT)}):")
    with open(LOWEST_LOG, encoding="utf-8", errors="replace") as fh:
        sys.stdout.write(fh.read())
    sys.stdout.flush()
    for stage, code in (("2/3 (newest versions)", newest_code), ("3/3 (lowest versions)", lowest_code)):
        if code:
            log(f"stage {stage} failed")
    if newest_code or lowest_code:
        sys.exit(newest_code or lowest_code)


def suite_threads() -> int:
    """CPU threads for each of the two suites that run side by side: half of this process's CPUs
    (the two would otherwise contend for every core), at least one; OMP_NUM_THREADS, where set, wins."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cpus // 2)


def lint(python: str) -> None:
    run([python, "-m", "ruff", "check", "--no-cache", "."])


def pytest_command(python: str, args: list[str]) -> list[str]:
    return [python, "-m", "pytest", "-p", "no:cacheprovider", *args]


def pytest_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}


def pytest(python: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
    run(pytest_command(python, args), env=pytest_env(extra_env))


def lowest_venv() -> str:
    """The lowest-versions environment, created or refreshed, with its versions printed."""
    python = ensure_venv(LOWEST_VENV, lowest_requirements())
    run([python, "-c", "import importlib.metadata as md; "
                       "print('[build] lowest versions: ' + ', '.join(f'{n} {md.version(n)}' for n in "
                       "('torch', 'transformers', 'huggingface_hub', 'safetensors', 'numpy', 'trimesh', 'pillow', "
                       "'tqdm', 'ray', 'xatlas')))"])
    return python


def test_lowest(args: list[str]) -> None:
    pytest(lowest_venv(), args)


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
    target: ExtensionTarget | None = None,
    offline: bool = False,
    addon_dir: str = ADDON_DIR,
    engine_dir: str = ENGINE_DIR,
    manifest: str = MANIFEST,
    pyproject: str = PYPROJECT,
    python: str | None = None,
    echo=None,
) -> str:
    """Build and validate the extension zip in ``out_dir`` with Blender's own tool; returns its path.

    ``target`` (a platform, Blender's Python and a torch variant) bundles the engine's dependencies
    as wheels for that platform (:func:`bundle_wheels`; ``offline`` takes them from the wheel cache
    only); without it the zip carries no wheels (a development build: the packages must then be
    installed by hand, docs/installation.md). ``python`` is the interpreter that has bpy (default:
    this one); ``echo``, if given, receives progress messages. Raises ExtensionError when the
    sources, the wheels, the build or the validation fail; no zip is left behind then.
    """
    python = python or sys.executable
    tool, tags = find_blender_ext(python)
    tag_args = ["--valid-tags", tags] if tags else []
    with tempfile.TemporaryDirectory(prefix="partstyle-extension-") as tmp:
        stage = os.path.join(tmp, EXTENSION_ID)
        version = stage_extension(stage, addon_dir=addon_dir, engine_dir=engine_dir, manifest=manifest,
                                  pyproject=pyproject)
        if target is not None:
            wheels = bundle_wheels(target, os.path.join(stage, "wheels"), python=python, offline=offline, echo=echo)
            add_wheels_to_manifest(os.path.join(stage, "blender_manifest.toml"), target.platform,
                                   [f"./wheels/{name}" for name in wheels])
        os.makedirs(out_dir, exist_ok=True)
        zip_id = _load_toml(manifest, "The extension manifest").get("id") or EXTENSION_ID
        path = os.path.join(out_dir, f"{zip_id}-{version}{target.suffix if target else ''}.zip")
        if os.path.exists(path):
            os.remove(path)  # a failed build must not leave an older zip looking new
        code, output = _blender_ext(python, tool, ["build", "--source-dir", stage, "--output-filepath", path,
                                                   *tag_args])
        output = output.replace(os.path.join(stage, "blender_manifest.toml"), manifest)  # name the source file
        if code or not os.path.isfile(path):
            raise ExtensionError(f"Blender's extension tool refused to build it (exit code {code}):\n{output}")
        if echo:
            echo(f"{os.path.basename(tool)} build: " + _short(output))
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


def _short(output: str, lines: int = 3) -> str:
    """The last few lines of a tool's output on one line (a build lists every file it packs)."""
    kept = [line for line in output.splitlines() if line.strip()]
    return "; ".join(kept[-lines:])


# -------------------------------------------------------------------------------------------------
# Bundled wheels: the engine's dependencies for one platform and one Blender Python
#
# Blender installs an extension's wheels into its extensions' own site-packages, ahead of its own
# (addon_utils._initialize_extensions_site_packages), so a bundled numpy would shadow Blender's for
# every add-on. The wheels are therefore resolved for the target platform by uv (which, unlike pip,
# evaluates environment markers for the target, not for the building machine) against stand-ins for
# the packages Blender ships, at the oldest versions a supported Blender ships: the resolution proves
# that the bundle works with Blender's numpy, and the stand-ins are never bundled.

#: Blender's platforms -> uv's target triple.
EXTENSION_PLATFORMS = {
    "linux-x64": "x86_64-manylinux_2_28",
    "windows-x64": "x86_64-pc-windows-msvc",
    "macos-arm64": "aarch64-apple-darwin",
}
#: Blender's Python -> the Blender releases that embed it.
BLENDER_PYTHONS = {"3.11": "Blender 4.2 to 5.0", "3.13": "Blender 5.1 and later"}
#: The oldest macOS torch's arm64 wheels support (torch 2.13: macosx_14_0_arm64).
MACOS_DEPLOYMENT_TARGET = "14.0"
#: Packages Blender ships in its own site-packages, at the oldest version a supported Blender ships
#: (Blender 4.2's build_files/build_environment/cmake/versions.cmake; Blender 5.1's numpy from bpy
#: 5.1's requirement numpy>=1.26). Never bundled: Blender's copies are the ones imported.
BLENDER_PROVIDES = {
    "numpy": "1.24.3", "requests": "2.27.1", "urllib3": "1.26.8", "certifi": "2021.10.8", "idna": "3.3",
    "charset-normalizer": "2.0.10", "zstandard": "0.16.0", "cython": "0.29.30", "autopep8": "2.3.1",
    "pycodestyle": "2.12.1",
}
BLENDER_PROVIDES_BY_PYTHON = {"3.13": {"numpy": "1.26.4"}}
#: Where CPU-only torch for Linux comes from (PyPI's Linux torch is a CUDA build of several GB).
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Downloaded wheels and the lock of each target (kept between builds; never shipped).
WHEEL_CACHE = os.environ.get("PARTSTYLE_WHEEL_CACHE", os.path.join(ROOT, ".cache", "extension-wheels"))


@dataclass(frozen=True)
class ExtensionTarget:
    """One extension build: Blender's ``platform``, Blender's ``python`` and the torch ``variant``."""

    platform: str
    python: str = "3.11"
    variant: str = "cpu"

    def __post_init__(self):
        if self.platform not in EXTENSION_PLATFORMS:
            raise ExtensionError(f"unknown platform {self.platform!r}; use one of {', '.join(EXTENSION_PLATFORMS)}")
        if self.python not in BLENDER_PYTHONS:
            raise ExtensionError(f"unknown Blender Python {self.python!r}; use one of {', '.join(BLENDER_PYTHONS)} "
                                 f"({'; '.join(f'{k}: {v}' for k, v in BLENDER_PYTHONS.items())})")
        if self.variant not in ("cpu", "cuda"):
            raise ExtensionError(f"unknown torch variant {self.variant!r}; use cpu or cuda")
        if self.variant == "cuda" and self.platform == "macos-arm64":
            raise ExtensionError("there is no CUDA on macOS: build macos-arm64 with --variant cpu (torch uses the "
                                 "Apple GPU through mps there)")

    @property
    def name(self) -> str:
        """``linux-x64-cp311-cpu``: the wheel cache's folder for this target."""
        return f"{self.platform}-cp{self.python.replace('.', '')}-{self.variant}"

    @property
    def suffix(self) -> str:
        """The zip name's tail: ``-linux_x64`` for the default (Python 3.11, CPU), else with the
        Python and variant (``-linux_x64-cp313``, ``-windows_x64-cuda``)."""
        tail = "" if self.python == "3.11" else f"-cp{self.python.replace('.', '')}"
        return f"-{self.platform.replace('-', '_')}{tail}{'' if self.variant == 'cpu' else '-cuda'}"

    def torch_requirement(self, version: str) -> str:
        """The torch wheel for this target: a CPU build (``+cpu`` on Linux, where PyPI's is CUDA),
        or PyPI's CUDA build on Linux, PyTorch's on Windows (``+cu130``)."""
        if self.platform == "linux-x64" and self.variant == "cpu":
            return f"torch=={version}+cpu"
        if self.platform == "windows-x64" and self.variant == "cuda":
            return f"torch=={version}+{WINDOWS_CUDA}"
        return f"torch=={version}"

    def torch_index(self) -> str | None:
        """The package index torch comes from when it is not PyPI's."""
        if self.platform == "linux-x64" and self.variant == "cpu":
            return os.environ.get("PARTSTYLE_TORCH_INDEX", PYTORCH_CPU_INDEX)
        if self.platform == "windows-x64" and self.variant == "cuda":
            return os.environ.get("PARTSTYLE_TORCH_INDEX", f"https://download.pytorch.org/whl/{WINDOWS_CUDA}")
        return None


#: The CUDA build of torch for Windows (PyTorch's own index; PyPI's Windows torch is CPU only).
WINDOWS_CUDA = "cu130"


def extension_targets(platform: str, python: str, variant: str) -> list[ExtensionTarget]:
    """The builds ``build.py extension`` makes: ``all`` is every platform (the CUDA variant where it
    exists), each for the given Python (``all``: both)."""
    platforms = list(EXTENSION_PLATFORMS) if platform == "all" else [platform]
    pythons = list(BLENDER_PYTHONS) if python == "all" else [python]
    return [ExtensionTarget(p, py, variant) for p in platforms for py in pythons
            if not (variant == "cuda" and p == "macos-arm64" and platform == "all")]


def this_platform() -> str:
    """This machine's platform in Blender's words (``linux-x64``...), or "" when no build exists for it."""
    import platform as _platform

    system = {"linux": "linux", "windows": "windows", "darwin": "macos"}.get(_platform.system().lower(), "")
    machine = {"x86_64": "x64", "amd64": "x64", "arm64": "arm64", "aarch64": "arm64"}.get(
        _platform.machine().lower(), "")
    name = f"{system}-{machine}"
    return name if name in EXTENSION_PLATFORMS else ""


def blender_provides(python: str) -> dict[str, str]:
    """Name -> version of what Blender's own site-packages holds, for Blender's ``python``."""
    return {**BLENDER_PROVIDES, **BLENDER_PROVIDES_BY_PYTHON.get(python, {})}


def runtime_requirements(target: ExtensionTarget) -> list[str]:
    """pyproject.toml's dependencies, torch replaced by the target's build of the pinned version."""
    torch_version = re.fullmatch(r"torch==([0-9][^\s+;]*)", TORCH.strip())
    if not torch_version:
        raise ExtensionError(f"PARTSTYLE_TORCH is {TORCH!r}; an extension bundles one exact torch: "
                             f"set it to torch==X.Y.Z (or unset it)")
    reqs = [r for r in _project()["dependencies"] if not _is_torch(r)]
    return [target.torch_requirement(torch_version.group(1)), *reqs]


def write_stand_in_wheels(folder: str, provided: dict[str, str]) -> None:
    """One empty ``py3-none-any`` wheel per package Blender provides, at its version: the resolver
    sees them as installed and checks the bundle against them; they are never shipped."""
    os.makedirs(folder, exist_ok=True)
    for name, version in provided.items():
        stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
        info = f"{stem}.dist-info"
        files = {
            f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: partstyle-build\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"),
        }
        record = "".join(f"{path},sha256={_record_hash(text.encode())},{len(text.encode())}\n"
                         for path, text in files.items()) + f"{info}/RECORD,,\n"
        with zipfile.ZipFile(os.path.join(folder, f"{stem}-py3-none-any.whl"), "w") as zf:
            for path, text in {**files, f"{info}/RECORD": record}.items():
                zf.writestr(path, text)


def _record_hash(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class LockedWheel:
    """One wheel of a target's lock: its file name, where it comes from, its sha256 and size."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int


def lock_target(target: ExtensionTarget, folder: str, python: str, *, echo=None) -> str:
    """Resolve the target's wheels with uv into ``folder/pylock.toml``; returns its path.

    torch's own index (PyTorch's CPU index for Linux) is consulted only for torch: a torch wheel
    already in the cache or in pip's configured find-links folders (an offline mirror) is taken from
    there first. Raises ExtensionError with uv's explanation when nothing satisfies the target.
    """
    os.makedirs(folder, exist_ok=True)
    stand_ins = os.path.join(folder, "blender-provides")
    shutil.rmtree(stand_ins, ignore_errors=True)
    provided = blender_provides(target.python)
    write_stand_in_wheels(stand_ins, provided)
    reqs = runtime_requirements(target)
    with tempfile.TemporaryDirectory() as tmp:
        req_file, constraints = os.path.join(tmp, "requirements.txt"), os.path.join(tmp, "constraints.txt")
        with open(req_file, "w", encoding="utf-8") as fh:
            fh.write("\n".join(reqs) + "\n")
        with open(constraints, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}=={version}\n" for name, version in provided.items()))
        lock = os.path.join(folder, "pylock.toml")
        cmd = [python, "-m", "uv", "pip", "compile", req_file, "-c", constraints, "--format", "pylock.toml",
               "-o", lock, "--python-platform", EXTENSION_PLATFORMS[target.platform],
               "--python-version", target.python, "--only-binary", ":all:", "--no-header", "--quiet",
               "--find-links", stand_ins]
        # pip's find-links (an offline mirror) may hold CPU builds that also satisfy torch==X (a local
        # version such as X+cpu matches it): a CUDA build takes its torch from its index only.
        mirrors = _pip_find_links(python) if target.variant == "cpu" else []
        local = [f for f in [*mirrors, os.path.join(folder, "wheels")] if os.path.isdir(f)]
        torch_req = reqs[0].split("==")
        have_torch = any(_wheel_matches(f, "torch", torch_req[1], target.python) for f in local)
        for link in local:
            cmd += ["--find-links", link]
        index = target.torch_index()
        if index and not have_torch:
            cmd += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
        env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS_DEPLOYMENT_TARGET, "UV_NO_CONFIG": "1"}
        if echo:
            echo(f"resolving the wheels for {target.name} with uv")
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise ExtensionError(f"no set of wheels satisfies {target.name} (uv pip compile, exit code "
                             f"{done.returncode}):\n{(done.stdout + done.stderr).strip()}")
    return lock


def _pip_find_links(python: str) -> list[str]:
    """The find-links folders of pip's configuration (an offline mirror of wheels), if any."""
    done = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    found = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            found += [v for v in value.strip().strip("'\"").split() if v]
    return [f[len("file://"):] if f.startswith("file://") else f for f in found]


def _wheel_matches(folder: str, name: str, version: str, python: str) -> bool:
    """Whether ``folder`` holds a wheel of ``name==version`` built for CPython ``python``."""
    prefix, abi = f"{name}-{version}-", f"-cp{python.replace('.', '')}-"
    return any(f.startswith(prefix) and abi in f and f.endswith(".whl") for f in os.listdir(folder))


def locked_wheels(lock: str, provided: dict[str, str]) -> list[LockedWheel]:
    """The wheels a lock lists, one per package (the smallest where several fit), without the
    packages Blender provides. Raises ExtensionError for a package with no wheel."""
    data = _load_toml(lock, "The wheel lock")
    chosen = []
    for package in data.get("packages", []):
        name = requirement_name(package["name"])
        if name in provided:
            continue
        wheels = [w for w in package.get("wheels", []) if "hashes" in w and "sha256" in w["hashes"]]
        if not wheels:
            raise ExtensionError(f"{lock}: {name} {package.get('version')} has no wheel for this platform")
        wheel = min(wheels, key=lambda w: w.get("size") or 0)
        url = wheel.get("url") or wheel.get("path", "")
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        size = wheel.get("size") or (os.path.getsize(_local_path(url)) if _local_path(url) else 0)
        chosen.append(LockedWheel(name, package["version"], filename, url, wheel["hashes"]["sha256"], size))
    return chosen


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    return url if url and "://" not in url and os.path.exists(url) else None


def fetch_wheels(wheels: list[LockedWheel], folder: str, *, offline: bool = False, echo=None) -> list[str]:
    """Make every wheel of ``wheels`` present in ``folder``, checked against its sha256; returns the
    paths. Downloads what is missing unless ``offline``, which raises ExtensionError instead."""
    os.makedirs(folder, exist_ok=True)
    paths, missing = [], []
    for wheel in wheels:
        path = os.path.join(folder, wheel.filename)
        if not (os.path.isfile(path) and _sha256(path) == wheel.sha256):
            missing.append(wheel)
        paths.append(path)
    if missing and offline:
        raise ExtensionError(
            f"the wheel cache {folder} lacks {len(missing)} wheel(s) ({', '.join(w.filename for w in missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); run `python build.py extension --platform ...` once with "
            f"network to fill it")
    total = sum(w.size for w in missing)
    if missing and echo:
        echo(f"downloading {len(missing)} wheel(s), {total / 1e6:.0f} MB, into {folder}")
    for wheel in missing:
        path = os.path.join(folder, wheel.filename)
        partial = path + ".part"
        local = _local_path(wheel.url)
        try:
            if local:
                shutil.copyfile(local, partial)
            else:
                with urllib.request.urlopen(wheel.url, timeout=60) as response, open(partial, "wb") as fh:
                    shutil.copyfileobj(response, fh, 1 << 20)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ExtensionError(f"could not get {wheel.filename} from {wheel.url}: {exc}") from None
        if _sha256(partial) != wheel.sha256:
            os.remove(partial)
            raise ExtensionError(f"{wheel.filename} from {wheel.url} does not match the lock's sha256; "
                                 f"nothing was kept (try again; if it persists, the source changed the file)")
        os.replace(partial, path)
    return paths


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_wheels(target: ExtensionTarget, *, python: str, offline: bool = False, echo=None) -> list[str]:
    """The target's wheels, resolved and downloaded into :data:`WHEEL_CACHE`/<target>/ (with their
    lock); returns their paths. ``offline`` uses the cache as it is (no resolution, no download) and
    fails naming what is missing."""
    folder = os.path.join(WHEEL_CACHE, target.name)
    lock = os.path.join(folder, "pylock.toml")
    if offline:
        if not os.path.isfile(lock):
            raise ExtensionError(f"no wheel lock for {target.name} in {folder}: run `python build.py extension "
                                 f"--platform {target.platform} --python {target.python} --variant {target.variant}` "
                                 f"once with network (the test command does it for linux-x64)")
    else:
        lock = lock_target(target, folder, python, echo=echo)
    wheels = locked_wheels(lock, blender_provides(target.python))
    return fetch_wheels(wheels, os.path.join(folder, "wheels"), offline=offline, echo=echo)


def bundle_wheels(target: ExtensionTarget, dest: str, *, python: str, offline: bool = False, echo=None) -> list[str]:
    """Put the target's wheels (:func:`cached_wheels`) into ``dest``; returns their file names, sorted."""
    paths = cached_wheels(target, python=python, offline=offline, echo=echo)
    os.makedirs(dest, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, os.path.join(dest, os.path.basename(path)))
    if echo:
        echo(f"{len(paths)} wheels for {target.name}: {sum(os.path.getsize(p) for p in paths) / 1e6:.0f} MB")
    return sorted(os.path.basename(p) for p in paths)


def add_wheels_to_manifest(path: str, platform: str, wheels: list[str]) -> None:
    """Write ``platforms`` and ``wheels`` into a staged manifest, before its first table."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if re.search(r"^\s*(wheels|platforms)\s*=", text, re.M):
        raise ExtensionError(f"{MANIFEST} sets wheels or platforms itself; build.py writes them per platform: "
                             f"remove them from the manifest")
    listed = ",\n".join(f'  "{w}"' for w in wheels)
    block = f'platforms = ["{platform}"]\nwheels = [\n{listed},\n]\n\n'
    table = re.search(r"^\[", text, re.M)
    at = table.start() if table else len(text)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text[:at] + block + text[at:])


def prepare_extension_wheels(python: str) -> dict[str, str]:
    """Fill the wheel cache that the extension's install-and-run test builds from (offline): linux-x64
    for Blender 4.2-5.0, where this machine is one. Returns the environment that tells the test the
    cache must be there."""
    if this_platform() != "linux-x64" or not _has_bpy(python):
        log("the bundled-wheels extension test runs on linux-x64 with bpy only; it will skip here")
        return {}
    log("the linux-x64 extension's wheels (for its install-and-run test)")
    try:
        cached_wheels(ExtensionTarget("linux-x64"), python=python, echo=log)
    except ExtensionError as exc:
        sys.exit(f"[build] could not prepare the extension's wheels: {exc}")
    return {"PARTSTYLE_EXTENSION_WHEELS": "required"}


def _has_bpy(python: str) -> bool:
    return subprocess.run([python, "-c", "import importlib.util as u; raise SystemExit(u.find_spec('bpy') is None)"],
                          capture_output=True).returncode == 0


def task_extension(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="build.py extension",
        description="Build the Blender extension zip for a platform, with the engine's dependencies as wheels.")
    parser.add_argument("--platform", default=this_platform() or "linux-x64",
                        choices=[*EXTENSION_PLATFORMS, "all", "none"],
                        help="Blender's platform (default: this machine's); all: every platform; none: no wheels "
                             "(a development zip, the packages installed by hand)")
    parser.add_argument("--python", default="3.11", choices=[*BLENDER_PYTHONS, "all"],
                        help="Blender's Python: 3.11 for Blender 4.2-5.0 (default), 3.13 for 5.1+, all: both")
    parser.add_argument("--variant", default="cpu", choices=["cpu", "cuda"],
                        help="torch build: cpu (default; macOS uses the Apple GPU either way) or cuda (linux-x64, "
                             "windows-x64; several GB)")
    parser.add_argument("--offline", action="store_true",
                        help="take the wheels from the cache only (no resolution, no download)")
    parser.add_argument("--out", default=os.path.join(ROOT, "dist"), help="folder for the zip (default dist/)")
    parser.add_argument("--stage", metavar="DIR", help="only lay out the extension's files in DIR (no bpy needed)")
    options = parser.parse_args(args)
    try:
        if options.stage:
            version = stage_extension(options.stage)
            log(f"staged Partstyle {version} in {options.stage}")
            return
        targets = ([None] if options.platform == "none"
                   else extension_targets(options.platform, options.python, options.variant))
    except ExtensionError as exc:
        sys.exit(f"[build] the extension was not built: {exc}")
    python, failed = ensure_venv(), []
    for target in targets:
        try:
            path = build_extension(options.out, target=target, offline=options.offline, python=python, echo=log)
        except ExtensionError as exc:
            log(f"{target.name if target else 'the extension'} was not built: {exc}")
            failed.append(target.name if target else "the extension")
            continue
        blender = BLENDER_PYTHONS[target.python] if target else "Blender 4.2+"
        log(f"built {os.path.relpath(path)} ({os.path.getsize(path) / 1e6:.1f} MB); install it in {blender} "
            f"with Edit > Preferences > Get Extensions > Install from Disk")
    if failed:
        sys.exit(f"[build] not built: {', '.join(failed)} (the reasons are above)")


TASKS = {"demo": task_demo, "test": task_test, "bench": task_bench, "extension": task_extension}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TASKS:
        print(__doc__)
        sys.exit(2)
    TASKS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
