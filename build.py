"""Partstyle's task runner: one command per job, each doing its own set-up.

    python build.py demo    # stylize the parts of the bundled sample lamp offline -> out/demo/
    python build.py test    # run the test suite
    python build.py bench   # print performance figures (docs/performance.md)

Each task creates or refreshes the virtual environment ``.venv`` first: it installs
``torch==2.13.0`` on its own (an unpinned torch pulls several GB of CUDA packages onto Linux
machines that only have a CPU), then the dependencies listed in pyproject.toml with torch held at
that version. The environment is reinstalled only when pyproject.toml or this file change.
Works the same on Linux, macOS and Windows (plain Python, no shell scripts).

Environment variables:
    PARTSTYLE_TORCH   the torch requirement to install first (default torch==2.13.0), e.g. a
                      CUDA build's spec on a GPU machine.
    PARTSTYLE_VENV    where to keep the virtual environment (default .venv in this folder).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("PARTSTYLE_VENV", os.path.join(ROOT, ".venv"))
TORCH = os.environ.get("PARTSTYLE_TORCH", "torch==2.13.0")
STAMP = os.path.join(VENV, "partstyle-installed.txt")
DEMO_ARGS = [
    "stylize", "sample:lamp",
    "--prompt", "red base, yellow tube, blue shade",  # words the shipped tiny CLIP was trained on
    "--parts-from", "labels",  # the sample's exact parts: the tiny grounding model is not trained yet
    "--preset", "fast",
    "--seed", "0",
    "--out", os.path.join(ROOT, "out", "demo"),
]


def venv_python() -> str:
    folder = "Scripts" if os.name == "nt" else "bin"
    return os.path.join(VENV, folder, "python.exe" if os.name == "nt" else "python")


def requirements() -> list[str]:
    """pyproject.toml's dependencies (torch aside, installed first) and its test extras.

    One environment serves every task, so alternating ``demo`` and ``test`` never reinstalls.
    """
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    reqs = [r for r in project["dependencies"] if not r.replace(" ", "").startswith("torch")]
    return reqs + project["optional-dependencies"]["test"]


def ensure_venv() -> str:
    """Create/refresh .venv so it holds the pinned torch and the dependencies; returns its python."""
    reqs = requirements()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        wanted = hashlib.sha256(fh.read() + TORCH.encode() + repr(sorted(reqs)).encode()).hexdigest()
    python = venv_python()
    if os.path.isfile(python) and os.path.isfile(STAMP):
        with open(STAMP, encoding="utf-8") as fh:
            if fh.read().strip() == wanted:
                return python
    if not os.path.isfile(python):
        log(f"creating the virtual environment {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    log(f"installing {TORCH}")
    pip_install(python, [TORCH])
    log("installing the dependencies of pyproject.toml")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as fh:
            fh.write(TORCH + "\n")
        pip_install(python, ["-c", constraints, *reqs])
    with open(STAMP, "w", encoding="utf-8") as fh:
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
    python = ensure_venv()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run([python, "-m", "pytest", *args], env=env)


def task_bench(args: list[str]) -> None:
    python = ensure_venv()
    run([python, "-m", "engine", "bench", *args])


TASKS = {"demo": task_demo, "test": task_test, "bench": task_bench}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TASKS:
        print(__doc__)
        sys.exit(2)
    if sys.version_info < (3, 11):
        sys.exit("Partstyle needs Python 3.11 or newer to build (found %d.%d)." % sys.version_info[:2])
    TASKS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
