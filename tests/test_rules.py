"""The house rules of docs/architecture.md, checked: what the engine may import, what loads without
torch, who may print, and that the add-on asks for the versions pyproject.toml declares."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "engine")
ADDON = os.path.join(ROOT, "addon")
# Command-line code, whose job is to print: the commands themselves, and the bench command's report
# (written to the stream the command gives it).
PRINTING_ALLOWED = {"cli.py", "cli_batch.py", "cli_eval.py", "cli_progress.py", "cli_training.py", "cli_vocabulary.py",
                    "__main__.py", "bench.py"}
# Engine modules made for the add-on to load before torch exists, checked light even before the add-on loads them:
# the tiny vocabulary check (drawn in a panel) and the device module (the Apple GPUs' fallback is set before torch).
LIGHT_FOR_THE_ADDON = {"vocabulary", "devices", "requirements"}


def _modules(folder: str) -> list[tuple[str, ast.Module]]:
    found = []
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as fh:
                    found.append((os.path.relpath(path, ROOT), ast.parse(fh.read(), path)))
    return found


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_scan_sees_imports_and_prints():
    """The checks below rely on these helpers; an always-empty answer would make them pass vacuously."""
    tree = ast.parse("import bpy.types\nfrom mathutils import Vector\ndef f():\n    print('x')\n")
    assert _imported(tree) == {"bpy", "mathutils"}
    assert len(_prints(tree)) == 1
    assert len(_modules(ENGINE)) > 30


def test_the_engine_never_imports_blender():
    offenders = [path for path, tree in _modules(ENGINE) if _imported(tree) & {"bpy", "bmesh", "mathutils"}]
    assert offenders == [], f"engine/ must not import Blender's modules: {offenders}"


def _prints(tree: ast.Module) -> list[int]:
    """Lines that print: print(...) calls and writes to sys.stdout / sys.stderr."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        printing = isinstance(func, ast.Name) and func.id == "print"
        writing = (isinstance(func, ast.Attribute) and func.attr == "write" and isinstance(func.value, ast.Attribute)
                   and func.value.attr in ("stdout", "stderr"))
        if printing or writing:
            lines.append(node.lineno)
    return lines


def test_library_modules_do_not_print():
    offenders = [f"{path}:{line}" for path, tree in _modules(ENGINE)
                 if os.path.basename(path) not in PRINTING_ALLOWED for line in _prints(tree)]
    assert offenders == [], f"library code emits events instead of printing (docs/architecture.md): {offenders}"


def _light_modules() -> list[str]:
    """The engine modules the add-on loads with ``engine_link.load(name, light=True)``, and
    :data:`LIGHT_FOR_THE_ADDON`."""
    names = set(LIGHT_FOR_THE_ADDON)
    for path, _ in _modules(ADDON):
        with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
            names.update(re.findall(r"""load\(\s*["']([\w.]+)["']\s*,\s*light=True""", fh.read()))
    return sorted(names)


_BLOCK_HEAVY = """
import importlib.abc, json, sys
HEAVY = ("torch", "transformers", "trimesh", "safetensors", "huggingface_hub", "PIL")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is blocked: the add-on loads this module before torch is installed")
sys.meta_path.insert(0, Block())
failed = {}
for module in json.loads(sys.argv[1]):
    try:
        __import__("engine." + module)
    except Exception as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failed": failed, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
"""


def test_modules_the_addon_loads_before_torch_import_without_it():
    light = _light_modules()
    assert {"prompt", "request", "result", "mesh", "config"} <= set(light), light
    done = subprocess.run([sys.executable, "-c", _BLOCK_HEAVY, json.dumps(light)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"failed": {}, "heavy": []}, report


def test_the_heavy_import_blocker_works():
    """The check above fails for a module that needs torch (so it can fail at all)."""
    done = subprocess.run([sys.executable, "-c", _BLOCK_HEAVY, json.dumps(["api"])], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "api" in json.loads(done.stdout)["failed"]


def test_the_engine_declares_what_pyproject_declares():
    """engine/requirements.py (what the add-on checks and installs) repeats pyproject.toml's ranges."""
    from engine.requirements import REQUIREMENTS

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        declared = tomllib.load(fh)["project"]["dependencies"]

    def name(requirement: str) -> str:
        return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("-", "_")

    ranges = {name(r): r[len(name(r)):].replace(" ", "") for r in declared}
    assert set(ranges) == set(REQUIREMENTS)
    for dist, (lowest, below) in REQUIREMENTS.items():
        assert ranges[dist] == f">={lowest}" + (f",<{below}" if below else ""), dist
