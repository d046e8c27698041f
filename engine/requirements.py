"""What the engine needs besides itself, and whether an environment has it.

The ranges are pyproject.toml's ``dependencies`` (tests/test_requirements.py checks that they agree),
kept here because an installed Blender extension has no pyproject.toml: the add-on checks the
packages Blender will import against them before anything runs (numpy and package metadata only,
no torch). Version strings are compared by their leading numbers (``2.13.0+cpu`` -> ``(2, 13, 0)``),
which is all these packages' release numbers need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Distribution -> (lowest supported version, first unsupported version or None), as pyproject.toml.
REQUIREMENTS: dict[str, tuple[str, str | None]] = {
    "torch": ("2.13", None),
    "numpy": ("1.24", None),
    "transformers": ("5.23", "6"),
    "safetensors": ("0.8", None),
    "huggingface_hub": ("1.31", None),
    "trimesh": ("4.0", None),
    "pillow": ("10.0", None),
    "tqdm": ("4.60", None),
}
#: The module each distribution is imported as, where the names differ.
IMPORT_NAMES = {"pillow": "PIL"}
#: The torch release the project tests and bundles (build.py installs and bundles this one).
TESTED_TORCH = "2.13.0"


def version_key(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; ``"5.0.0rc1"`` -> ``(5, 0, 0)``; no leading number -> ``()``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def _at_least(version: str, bound: str) -> bool:
    a, b = version_key(version), version_key(bound)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


@dataclass(frozen=True)
class VersionProblem:
    """A package whose installed version the engine does not support.

    Attributes:
        name: the distribution (``transformers``).
        found: the installed version.
        lowest: the lowest supported version.
        below: the first unsupported newer version, or None.
    """

    name: str
    found: str
    lowest: str
    below: str | None

    def describe(self) -> str:
        if not _at_least(self.found, self.lowest):
            return f"{self.name} {self.found} is older than {self.lowest}, the lowest the engine supports"
        return f"{self.name} {self.found} is newer than the engine supports (it needs {self.name} < {self.below})"


def version_problems(installed: dict[str, str]) -> list[VersionProblem]:
    """The packages of ``installed`` (distribution -> version) outside :data:`REQUIREMENTS`' ranges.

    Distributions missing from ``installed`` are not problems here (the caller reports them as missing);
    a version that is not a number (``"installed"``) is taken as fine.
    """
    problems = []
    for name, (lowest, below) in REQUIREMENTS.items():
        found = installed.get(name)
        if not found or not version_key(found):
            continue
        if not _at_least(found, lowest) or (below is not None and _at_least(found, below)):
            problems.append(VersionProblem(name, found, lowest, below))
    return problems


def requirement_specs(*, numpy_version: str | None = None) -> list[str]:
    """pip requirement strings for the engine's packages: torch pinned to :data:`TESTED_TORCH`, the
    others with their ranges, numpy pinned to ``numpy_version`` when given (the host's own)."""
    specs = []
    for name, (lowest, below) in REQUIREMENTS.items():
        if name == "torch":
            specs.append(f"torch=={TESTED_TORCH}")
        elif name == "numpy" and numpy_version:
            specs.append(f"numpy=={numpy_version}")
        else:
            specs.append(f"{name}>={lowest}" + (f",<{below}" if below else ""))
    return specs
