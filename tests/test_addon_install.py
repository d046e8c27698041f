"""The add-on's installation and first run (Blender as the ``bpy`` module): an engine status that
checks versions and names the fix, the fallback install command for development builds, the
add-on-private packages folder, the real models' download as a cancellable job, words the tiny
models do not know, and Blender's command-line API."""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import site
import sys
import threading

import pytest

try:
    import bpy
except ImportError as exc:
    pytest.skip(f"Blender's Python module is not importable ({exc}); the add-on tests need "
                "`pip install bpy==5.0.1` on Python 3.11", allow_module_level=True)

from test_downloads import two_models

import addon
from addon import cli, engine_link, jobs, model_downloads, preferences, runs
from engine import downloads
from engine.requirements import TESTED_TORCH

pytestmark = pytest.mark.usefixtures("addon_registered")  # conftest.py


# --- status ---------------------------------------------------------------------------------------

def test_status_checks_versions_and_names_the_fix(monkeypatch):
    real = engine_link._version
    monkeypatch.setattr(engine_link, "_version", lambda dist: "5.20.0" if dist == "transformers" else real(dist))
    state = engine_link.refresh()
    try:
        assert not state.ok and not state.missing
        assert state.problems() == ["transformers 5.20.0 is older than 5.23, the lowest the engine supports"]
        assert "Fix: install them" in state.summary() and "--upgrade" in state.summary()
        with pytest.raises(engine_link.AddonError, match=r"older than 5\.23"):
            engine_link.load("api")
        assert engine_link.load("prompt", light=True).parse_prompt("red base").parts == ()  # light still loads
    finally:
        monkeypatch.undo()
        assert engine_link.refresh().ok


def test_a_platform_zip_says_reinstall_not_pip():
    state = engine_link.EngineStatus("partstyle.engine", {"numpy": "1.26.4"}, ("torch",), bundled=True)
    assert not state.ok
    assert "reinstall the Partstyle zip made for this platform" in state.summary()
    assert engine_link.blender_platform() in state.summary() and "-m pip" not in state.summary()


def test_a_numpy_that_shadows_blenders_is_named(monkeypatch, tmp_path):
    assert engine_link.numpy_shadowed() == ""  # this environment's numpy is its site-packages' own
    monkeypatch.setattr(site, "getsitepackages", lambda prefixes=None: [str(tmp_path)])
    message = engine_link.numpy_shadowed()
    assert "not from Blender's own site-packages" in message and "shadows" in message


# --- the fallback for development builds --------------------------------------------------------

def test_install_command_pins_torch_upgrades_and_targets_the_private_folder(monkeypatch, tmp_path):
    folder = str(tmp_path / "private packages")
    monkeypatch.setattr(engine_link, "private_packages", lambda: folder)
    posix = shlex.split(engine_link.install_command(windows=False))
    assert posix[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--upgrade" in posix and posix[posix.index("--target") + 1] == folder
    assert f"torch=={TESTED_TORCH}" in posix and "transformers>=5.23,<6" in posix
    assert f"numpy=={engine_link._version('numpy')}" in posix  # Blender's own numpy, not another
    monkeypatch.setattr(sys, "executable", r"C:\Program Files\Blender Foundation\Blender 4.2\python.exe")
    windows = engine_link.install_command(windows=True)
    assert windows.startswith(r"& 'C:\Program Files\Blender Foundation\Blender 4.2\python.exe' -m pip install "
                              f"--upgrade --target '{folder}'")
    assert "'transformers>=5.23,<6'" in windows


def test_private_packages_come_after_blenders_and_never_in_a_platform_zip(monkeypatch, tmp_path):
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.setattr(engine_link, "private_packages", lambda: str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(engine_link, "bundled_wheels", lambda: True)
    assert not engine_link.use_private_packages() and str(folder) not in sys.path
    monkeypatch.setattr(engine_link, "bundled_wheels", lambda: False)
    assert engine_link.use_private_packages()
    assert sys.path[-1] == str(folder)
    assert sys.path.index(str(folder)) > max(sys.path.index(p) for p in site.getsitepackages() if p in sys.path)


def test_the_private_folder_is_the_addons_own():
    folder = engine_link.private_packages()
    assert folder and folder.endswith(os.path.join("partstyle", "site-packages"))
    assert bpy.utils.resource_path('USER') in folder


# --- first run: the real models -----------------------------------------------------------------

@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """The engine's downloads pointed at two small models served from memory into ``tmp_path``."""
    sources, transport = two_models()
    sources = [dataclasses.replace(s, size_bytes=size) for s, size in zip(sources, (2_503_008, 1_700_002), strict=True)]
    cache = str(tmp_path / "hub")
    monkeypatch.setattr(downloads, "MODEL_SOURCES", tuple(sources))
    monkeypatch.setattr(downloads, "models_on_disk",
                        functools.partial(downloads.models_on_disk, cache, sources=sources))
    monkeypatch.setattr(downloads, "download_models",
                        functools.partial(downloads.download_models, sources, cache_dir=cache, transport=transport))
    model_downloads.refresh()
    yield transport
    model_downloads.refresh()


def test_downloading_needs_blenders_online_access(fake_hub, monkeypatch):
    monkeypatch.setattr(preferences, "online_access", lambda: False)
    assert not bpy.ops.partstyle.download_models.poll()
    assert not fake_hub.fetched


def test_download_models_fetches_what_is_missing_and_the_preferences_show_it(fake_hub, monkeypatch):
    monkeypatch.setattr(preferences, "online_access", lambda: True)
    assert [here for *_, here in model_downloads.sources()] == [False, False]
    assert model_downloads.missing_size() == "4.2 MB"
    assert bpy.ops.partstyle.download_models() == {'FINISHED'}
    assert [here for *_, here in model_downloads.sources()] == [True, True]
    assert model_downloads.missing_size() == "" and jobs.current() is None
    assert ("org/first", "model.safetensors") in fake_hub.fetched


def test_a_download_job_shows_bytes_and_speed_and_cancels(fake_hub, monkeypatch):
    gate, proceed = threading.Event(), threading.Event()
    fetch = fake_hub.fetch

    def slow_fetch(src, filename, *, cache_dir, on_bytes):
        def counted(n):
            gate.set()
            proceed.wait(10)
            on_bytes(n)
        return fetch(src, filename, cache_dir=cache_dir, on_bytes=counted)

    monkeypatch.setattr(fake_hub, "fetch", slow_fetch)
    job = model_downloads.start(threaded=True)
    try:
        assert gate.wait(10)
        job.cancel()
        proceed.set()
        job.thread.join(10)
        assert jobs.drain(job) == jobs.CANCELLED
        level, message = model_downloads.conclude(job)
    finally:
        proceed.set()
        jobs.release(job)
    assert level == 'WARNING' and "cancelled" in message and jobs.current() is None
    assert [here for *_, here in model_downloads.sources()] == [False, False]


def test_download_progress_reads_as_sizes_speed_and_time_left():
    progress = jobs.Progress(step=120_000_000, total=1_500_000_000, eta=65.0, speed=12_000_000)
    assert progress.text() == "120 MB of 1.5 GB, 12 MB/s, 1:05 left"
    assert progress.fraction == pytest.approx(0.08)
    assert jobs.Progress(step=1, total=4, eta=None, speed=1000).text() == "1 B of 4 B, 1.0 kB/s"


# --- words the tiny models do not know ----------------------------------------------------------

def test_unknown_words_are_named_before_a_run_with_the_tiny_models():
    warning = runs.vocabulary_warning(runs.Request(object_name="", prompt="pottery base, red shade", models="tiny"))
    assert "pottery" in warning and "red" not in warning.split(":", 1)[1].split(";")[0]
    assert "Hub default" in warning
    assert runs.vocabulary_warning(runs.Request(object_name="", prompt="pottery base", models="default")) == ""
    rows = runs.Request(object_name="", prompt="ignored", pairs=(("base", "linen"),), models="tiny")
    assert "linen" in runs.vocabulary_warning(rows)


# --- Blender's command-line API ------------------------------------------------------------------

def test_the_headless_command_is_registered_with_blender():
    assert addon._command.get("handle") is not None  # bpy.utils.register_cli_command gave a handle


def test_the_headless_command_refuses_downloads_without_online_access(tmp_path, capsys):
    assert not bpy.app.online_access  # the bpy module starts offline, like `blender --offline-mode`
    code = cli.main(["--blend", str(tmp_path / "none.blend"), "--object", "Lamp", "--prompt", "red base",
                     "--models", "default", "--allow-download", "--out", str(tmp_path / "out.blend")],
                    addon=addon)
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "online access is off" in err and "--online-mode" in err
