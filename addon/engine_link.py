"""How the add-on reaches the engine, lazily, and what it says when the engine cannot be reached.

The engine is found in one of two places:

- vendored inside the add-on package (the extension zip: ``partstyle/engine/...``), imported as
  ``<add-on package>.engine``;
- the top-level package ``engine`` (a checkout of the repository on ``sys.path``: development,
  the tests, ``python addon/cli.py``).

Its packages (torch, transformers...) come, in the platform zips, from the wheels the zip bundles:
Blender installs them into its extensions' site-packages. A development zip or checkout has none;
:func:`install_command` then gives the command that installs them into a folder private to the
add-on (:func:`private_packages`), which :func:`use_private_packages` puts *after* Blender's own
site-packages on ``sys.path``, so nothing there can shadow Blender's numpy.

Nothing here imports torch or the engine's heavy modules: :func:`status` asks ``importlib`` where
the packages are and reads their versions from package metadata, cheap enough for a panel's draw,
and checks them against the ranges the engine declares (``engine/requirements.py``). :func:`load`
imports an engine module when an operator needs it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import site
import sys
from dataclasses import dataclass, field

#: PyTorch's CPU-only wheels for Linux (PyPI's Linux torch is a CUDA build of several GB).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class AddonError(Exception):
    """A problem on the Blender side (nothing selected, the engine missing...), said for the user."""


@dataclass(frozen=True)
class EngineStatus:
    """Whether the engine can run in this Blender, and if not, what is wrong and what to do.

    Attributes:
        package: the engine's import name (``bl_ext.user_default.partstyle.engine``, ``engine``),
            or "" if not found.
        versions: requirement -> installed version, for those installed.
        missing: requirements that are not installed.
        wrong_versions: one sentence per installed requirement outside the engine's range.
        shadowed: a sentence when numpy is not Blender's own (a second copy shadows it), else "".
        bundled: whether this add-on carries its packages as wheels (a platform zip).
    """

    package: str
    versions: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    wrong_versions: tuple[str, ...] = ()
    shadowed: str = ""
    bundled: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.package) and not self.missing and not self.wrong_versions

    def problems(self) -> list[str]:
        """What is wrong, one sentence each (empty when ready; ``shadowed`` is a warning only)."""
        found = [f"missing {', '.join(self.missing)}"] if self.missing else []
        return found + list(self.wrong_versions)

    def fix(self) -> str:
        """What to do about :meth:`problems`."""
        if self.bundled:
            return ("reinstall the Partstyle zip made for this platform and Blender (Edit > Preferences > "
                    f"Get Extensions > Install from Disk); this Blender is {blender_platform()}, Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}")
        return f"install them (then restart Blender): {install_command()}"

    def summary(self) -> str:
        """One line for a poll message or a report."""
        if not self.package:
            return ("The Partstyle engine is not installed: reinstall the Partstyle extension "
                    "(its zip carries the engine).")
        if self.missing and not self.wrong_versions:
            return f"The Partstyle engine needs {', '.join(self.missing)}: {self.fix()}"
        if not self.ok:
            return f"The Partstyle engine cannot run: {'; '.join(self.problems())}. Fix: {self.fix()}"
        ready = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        return f"{ready}. Warning: {self.shadowed}" if self.shadowed else ready


def blender_platform() -> str:
    """This machine as Blender names platforms (``linux-x64``, ``windows-x64``, ``macos-arm64``)."""
    import platform

    system = {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(platform.machine().lower(),
                                                                        platform.machine().lower())
    return f"{system}-{machine}"


def bundled_wheels() -> bool:
    """Whether this add-on was installed from a platform zip (its manifest lists wheels)."""
    manifest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender_manifest.toml")
    try:
        import tomllib

        with open(manifest, "rb") as fh:
            return bool(tomllib.load(fh).get("wheels"))
    except (OSError, ValueError):
        return False


def private_packages() -> str | None:
    """The folder private to this add-on where :func:`install_command` puts the engine's packages
    (a development zip or checkout), or None outside Blender."""
    try:
        import bpy
    except ImportError:
        return None
    package = __package__ or "partstyle"
    if package.startswith("bl_ext."):
        return bpy.utils.extension_path_user(package, path="site-packages", create=False)
    return bpy.utils.user_resource('DATAFILES', path=os.path.join("partstyle", "site-packages"), create=False)


def use_private_packages() -> bool:
    """Append :func:`private_packages` to ``sys.path`` (after Blender's own site-packages) when it
    exists and this add-on bundles no wheels; True when it is on ``sys.path``. A platform zip never
    changes ``sys.path``."""
    folder = private_packages()
    if bundled_wheels() or not folder or not os.path.isdir(folder):
        return False
    if folder not in sys.path:
        sys.path.append(folder)
        importlib.invalidate_caches()
    return True


def install_command(*, windows: bool | None = None) -> str:
    """The command that installs the engine's packages for the Python running Blender, for a
    development zip or checkout (platform zips bundle them), written for the user's shell.

    torch is pinned to the release the project tests (CPU-only on Linux, from PyTorch's index),
    the others take the engine's ranges, numpy is pinned to Blender's own version so pip does not
    bring another; ``--upgrade`` replaces what an earlier run installed; ``--target`` is the add-on's
    private folder (:func:`private_packages`), which the add-on appends after Blender's
    site-packages. ``windows`` picks PowerShell's syntax (default: this machine's).
    """
    requirements = _requirements()
    python = sys.executable or "python"
    numpy_version = _version("numpy")
    args = ["-m", "pip", "install", "--upgrade", "--target", private_packages() or "partstyle-packages"]
    if blender_platform() == "linux-x64":
        args += ["--extra-index-url", TORCH_CPU_INDEX]
    args += requirements.requirement_specs(numpy_version=numpy_version) if requirements else ["torch"]
    windows = os.name == "nt" if windows is None else windows
    if windows:  # PowerShell: literal single-quoted words; a quoted program runs through the call operator
        return "& " + " ".join(_powershell_quote(a) for a in [python, *args])
    return " ".join(shlex.quote(a) for a in [python, *args])


def _powershell_quote(word: str) -> str:
    """``word`` as one literal PowerShell word (single quotes, inner ones doubled) where it needs it."""
    if word and all(c.isalnum() or c in "-_./:\\" for c in word):
        return word
    return "'" + word.replace("'", "''") + "'"


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
    """The installed version of ``dist`` from package metadata, else from its imported module."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        requirements = _requirements()
        loaded = sys.modules.get(requirements.IMPORT_NAMES.get(dist, dist) if requirements else dist)
        return getattr(loaded, "__version__", None) if loaded else None


@functools.lru_cache(maxsize=1)
def status() -> EngineStatus:
    """The engine's status (cached; :func:`refresh` forgets it after an install)."""
    use_private_packages()
    package = engine_package()
    if not package:
        return EngineStatus("", shadowed=numpy_shadowed(), bundled=bundled_wheels())
    requirements = _requirements()  # the engine's own list and ranges (engine/requirements.py)
    versions, missing = {}, []
    for dist in requirements.REQUIREMENTS:
        module = requirements.IMPORT_NAMES.get(dist, dist)
        if importlib.util.find_spec(module) is None:
            missing.append(dist)
        else:
            versions[dist] = _version(dist) or "installed"
    wrong = tuple(p.describe() for p in requirements.version_problems(versions))
    engine = importlib.import_module(package)
    versions = {"partstyle engine": getattr(engine, "__version__", "?"), **versions}
    return EngineStatus(package, versions, tuple(missing), wrong, numpy_shadowed(), bundled_wheels())


def numpy_shadowed() -> str:
    """A sentence when the numpy Python would import is not the one in Blender's own site-packages
    (a copy installed elsewhere shadows it for every add-on), else "". Nothing is imported."""
    spec = importlib.util.find_spec("numpy")
    own = [os.path.normcase(os.path.abspath(p)) for p in site.getsitepackages()]
    if spec is None or not spec.origin or not own:
        return ""
    where = os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(spec.origin))))
    if where in own:
        return ""
    return (f"numpy is imported from {where}, not from Blender's own site-packages; that copy shadows "
            f"Blender's numpy for every add-on (an earlier `pip install --target` may have put it there): "
            f"remove it unless you meant it")


def _requirements():
    """The engine's ``requirements`` module (light), or None when there is no engine."""
    package = engine_package()
    return importlib.import_module(f"{package}.requirements") if package else None


def refresh() -> EngineStatus:
    """Check again (after the user installed something)."""
    engine_package.cache_clear()
    status.cache_clear()
    importlib.invalidate_caches()
    return status()


def load(module: str, *, light: bool = False):
    """Import ``<engine>.<module>`` (e.g. ``"api"``, or a submodule such as ``"batch.manifest"``), or
    raise :class:`AddonError` saying what to install.

    ``light=True`` is for the engine's modules that need only numpy (``prompt``, ``parts``,
    ``mesh``, ``config``, ``errors``, ``events``, ``colors``, ``result``, ``request``,
    ``batch.manifest``): they load without torch (tests/test_rules.py checks every module the add-on
    loads this way).
    """
    state = status()
    if not state.package or (not state.ok and not light):
        raise AddonError(state.summary())
    try:
        if not light and "torch" not in sys.modules:  # torch reads the Apple GPU fallback switch once, at import
            importlib.import_module(f"{state.package}.devices").enable_mps_fallback()
        return importlib.import_module(f"{state.package}.{module}")
    except ImportError as exc:
        raise AddonError(f"The Partstyle engine could not be imported ({exc}). Fix: {state.fix()}") from exc


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is written for the user: the engine's and the add-on's."""
    try:
        return (load("errors", light=True).PartstyleError, AddonError)
    except AddonError:
        return (AddonError,)
