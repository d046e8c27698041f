"""How the add-on reaches the engine, lazily, and what it says when the engine cannot be reached.

The engine is found in one of two places:

- vendored inside the add-on package (the extension zip: ``partstyle/engine/...``), imported as
  ``<add-on package>.engine``;
- the top-level package ``engine`` (a checkout of the repository on ``sys.path``: development,
  the tests, ``python addon/cli.py``).

Nothing here imports torch or the engine at module level: :func:`status` only asks
``importlib`` whether the packages exist and reads their installed versions from package
metadata, which is cheap enough to run while Blender draws a panel. :func:`load` imports an engine
module when an operator needs it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field

#: What the engine needs besides itself, as pip names (torch first: it is the big one).
REQUIREMENTS = ("torch", "transformers", "safetensors", "huggingface_hub", "numpy")
#: The import name of each requirement where it differs from the pip name.
_IMPORT_NAMES = {"huggingface_hub": "huggingface_hub"}
#: Used in messages; a CPU build is the default on Linux, see docs/blender.md for CUDA builds.
PIP_PACKAGES = ("torch", "transformers>=5.23,<6", "safetensors", "huggingface_hub", "trimesh", "pillow", "tqdm")


class AddonError(Exception):
    """A problem on the Blender side (nothing selected, the engine missing...), said for the user."""


@dataclass(frozen=True)
class EngineStatus:
    """Whether the engine can run in this Blender, and if not, what to install.

    Attributes:
        package: the engine's import name (``partstyle.engine``, ``engine``), or "" if not found.
        versions: requirement -> installed version, for those installed.
        missing: requirements that are not installed.
    """

    package: str
    versions: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return bool(self.package) and not self.missing

    def summary(self) -> str:
        """One line for a poll message or a report."""
        if not self.package:
            return ("The Partstyle engine is not installed: reinstall the Partstyle extension "
                    "(its zip carries the engine).")
        if self.missing:
            return f"The Partstyle engine needs {', '.join(self.missing)}: {install_command()}"
        return ", ".join(f"{name} {version}" for name, version in self.versions.items())


def _modules_folder() -> str | None:
    """Blender's user ``scripts/modules`` folder: on ``sys.path`` in every Blender session."""
    try:
        import bpy

        return bpy.utils.user_resource('SCRIPTS', path="modules", create=False)
    except Exception:  # not inside Blender, or no user folder
        return None


def install_command() -> str:
    """The command that installs the engine's dependencies for the Python running Blender.

    Packages go to Blender's user ``scripts/modules`` folder (Blender's own site-packages is often
    read-only, and Blender ignores the user site-packages); numpy is pinned to the version Blender
    already has, so pip does not pull another one next to it.
    """
    python = sys.executable or "python"
    packages = list(PIP_PACKAGES)
    numpy_version = _version("numpy")
    if numpy_version:
        packages.append(f"numpy=={numpy_version}")
    quoted = " ".join(f'"{p}"' if any(c in p for c in "<>=,") else p for p in packages)
    target = _modules_folder()
    return f'"{python}" -m pip install' + (f' --target "{target}"' if target else "") + f" {quoted}"


def _engine_candidates() -> list[str]:
    """Import names to try, vendored first."""
    names = []
    if __package__:
        names.append(f"{__package__}.engine")
    names.append("engine")
    return names


@functools.lru_cache(maxsize=1)
def engine_package() -> str:
    """The import name of the engine package, or "" when there is none (cached)."""
    for name in _engine_candidates():
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(_IMPORT_NAMES.get(dist, dist))
        return getattr(module, "__version__", None) if module else None


@functools.lru_cache(maxsize=1)
def status() -> EngineStatus:
    """The engine's status (cached; :func:`refresh` forgets it after an install)."""
    package = engine_package()
    versions, missing = {}, []
    for dist in REQUIREMENTS:
        found = importlib.util.find_spec(_IMPORT_NAMES.get(dist, dist)) is not None
        version = _version(dist) if found else None
        if found:
            versions[dist] = version or "installed"
        else:
            missing.append(dist)
    if package:
        engine = importlib.import_module(package)
        versions = {"partstyle engine": getattr(engine, "__version__", "?"), **versions}
    return EngineStatus(package, versions, tuple(missing))


def refresh() -> EngineStatus:
    """Check again (after the user installed something)."""
    engine_package.cache_clear()
    status.cache_clear()
    importlib.invalidate_caches()
    return status()


def load(module: str, *, light: bool = False):
    """Import ``<engine>.<module>`` (e.g. ``"api"``), or raise :class:`AddonError` saying what to install.

    ``light=True`` is for the engine's modules that need only numpy (``prompt``, ``parts``,
    ``mesh``, ``config``, ``errors``, ``events``, ``colors``, ``result``, ``request``): they load
    without torch (tests/test_rules.py checks every module the add-on loads this way).
    """
    state = status()
    if not state.package or (state.missing and not light):
        raise AddonError(state.summary())
    try:
        return importlib.import_module(f"{state.package}.{module}")
    except ImportError as exc:
        raise AddonError(
            f"The Partstyle engine could not be imported ({exc}); install its dependencies: {install_command()}"
        ) from exc


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is written for the user: the engine's and the add-on's."""
    try:
        return (load("errors", light=True).PartstyleError, AddonError)
    except AddonError:
        return (AddonError,)
