"""Device choice: auto prefers CUDA, then an Apple GPU (mps), then the CPU; an unusable device is one
clear error; the Apple GPUs' CPU fallback is switched on before torch loads. No Mac here: PyTorch's
checks are replaced (monkeypatched), so this tests the choice, not a run on an Apple GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine import api
from engine.devices import (
    MPS_FALLBACK_VARIABLE,
    autocast_dtype,
    enable_mps_fallback,
    mps_fallback_notice,
    mps_fallback_requested,
    resolve_device,
)
from engine.errors import DeviceError, PromptError
from engine.events import NoticeEvent
from engine.samples import sample_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeMps:
    def __init__(self, built: bool, available: bool):
        self.built, self.available = built, available

    def is_built(self) -> bool:
        return self.built

    def is_available(self) -> bool:
        return self.available


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=..., mps_built=..., mps=...) makes torch see that machine."""

    def make(*, cuda: bool = False, mps_built: bool = True, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
        monkeypatch.setattr(torch.backends, "mps", FakeMps(mps_built, mps))

    return make


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) == torch.device(expected)


def test_auto_without_an_mps_module_is_cpu(machine, monkeypatch):
    machine()
    monkeypatch.delattr(torch.backends, "mps")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["mps", "mps:0", torch.device("mps")])
def test_mps_where_available(machine, name):
    machine(mps=True)
    assert resolve_device(name) == torch.device(name)


def test_mps_in_a_pytorch_built_without_it(machine):
    machine(mps_built=False)
    with pytest.raises(DeviceError, match=r"built without Apple GPU \(MPS\) support.*--device cpu"):
        resolve_device("mps")


def test_mps_on_a_machine_without_an_apple_gpu(machine):
    machine(mps=False)
    with pytest.raises(DeviceError, match=r"no Apple GPU is available: MPS needs macOS 12\.3.*--device cpu"):
        resolve_device("mps")


def test_a_second_apple_gpu_does_not_exist(machine):
    machine(mps=True)
    with pytest.raises(DeviceError, match="'mps:1' does not exist"):
        resolve_device("mps:1")


@pytest.mark.parametrize("name, message", [("tpu", "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
                                           ("meta", "'meta' is not supported; use auto, cpu, cuda, cuda:N or mps")])
def test_other_devices_name_the_choices(machine, name, message):
    machine()
    with pytest.raises(DeviceError, match=message):
        resolve_device(name)


def test_cuda_checks_are_unchanged(machine):
    machine(cuda=False, mps=True)
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    machine(cuda=True)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="'cuda:3' does not exist: this machine has 1 GPU"):
        resolve_device("cuda:3")


def test_the_door_still_offers_resolve_device():
    assert api.resolve_device is resolve_device


def test_the_fallback_notice_only_on_mps_without_the_fallback(monkeypatch):
    monkeypatch.delenv(MPS_FALLBACK_VARIABLE, raising=False)
    notice = mps_fallback_notice(torch.device("mps"))
    assert notice is not None and f"Set {MPS_FALLBACK_VARIABLE}=1" in notice and "--device cpu" in notice
    assert mps_fallback_notice(torch.device("cpu")) is None
    monkeypatch.setenv(MPS_FALLBACK_VARIABLE, "1")
    assert mps_fallback_notice(torch.device("mps")) is None


@pytest.mark.parametrize("value, on", [("1", True), ("2", True), ("0", False), ("", False), ("yes", False)])
def test_the_fallback_variable_is_read_as_pytorch_reads_it(monkeypatch, value, on):
    monkeypatch.setenv(MPS_FALLBACK_VARIABLE, value)
    assert mps_fallback_requested() is on


def test_enable_keeps_the_users_value(monkeypatch):
    monkeypatch.setenv(MPS_FALLBACK_VARIABLE, "0")
    assert enable_mps_fallback() is False and os.environ[MPS_FALLBACK_VARIABLE] == "0"
    monkeypatch.delenv(MPS_FALLBACK_VARIABLE)
    assert enable_mps_fallback() is False  # torch is imported in this process: too late to take effect
    assert os.environ[MPS_FALLBACK_VARIABLE] == "1"


_SPY = """
import importlib.abc, json, os, runpy, sys
seen = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK"))
sys.meta_path.insert(0, Spy())
sys.argv = ["engine", "settings"]
try:
    runpy.run_module("engine", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
sys.stderr.write(json.dumps(seen))
"""


def test_the_command_line_sets_the_fallback_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != MPS_FALLBACK_VARIABLE}
    done = subprocess.run([sys.executable, "-c", _SPY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == ["1"], done.stderr


def test_enable_before_torch_takes_effect():
    env = {k: v for k, v in os.environ.items() if k != MPS_FALLBACK_VARIABLE}
    code = "import engine.devices as d; print(d.enable_mps_fallback())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


class _Stop:
    """Stands in for ModelStore: stops the run right after the device was chosen."""

    def __init__(self, *_args, **_kwargs):
        raise PromptError("stopped here")


@pytest.mark.parametrize("door", ["stylize", "locate_parts"])
def test_the_door_tells_about_a_missing_fallback(monkeypatch, door):
    """A run on mps without the fallback starts with a notice (the run itself is stopped right after)."""
    monkeypatch.setattr(api, "resolve_device", lambda device: torch.device("mps"))
    monkeypatch.delenv(MPS_FALLBACK_VARIABLE, raising=False)
    monkeypatch.setattr(api, "ModelStore", _Stop)
    events = []
    with pytest.raises(PromptError, match="stopped here"):
        if door == "stylize":
            api.stylize(sample_mesh("mug", 500), "a red mug", on_event=events.append)
        else:
            api.locate_parts(sample_mesh("mug", 500), ["body"], on_event=events.append)
    assert events == [NoticeEvent(mps_fallback_notice(torch.device("mps")))]


def test_precision_settings_resolve_auto_by_the_hardware(monkeypatch):
    import engine.devices as devices

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(devices, "native_bfloat16", lambda device, native=native: native)
        assert devices.use_bfloat16("auto", cpu) is native
        assert devices.use_bfloat16("bfloat16", cpu) is True and devices.use_bfloat16("float32", cpu) is False


def test_autocast_dtype_is_the_lower_precision_of_the_callers_autocast_for_that_device_type():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(cpu) == torch.bfloat16
        assert autocast_dtype(torch.device("cuda")) is None  # another device type's autocast is off
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert autocast_dtype(cpu) is None
