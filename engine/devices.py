"""Compute devices: ``auto``, ``cpu``, ``cuda[:N]`` and ``mps`` (Apple GPUs) to a ``torch.device``,
and the CPU fallback Apple GPUs need for operations PyTorch lacks there.

PyTorch runs an operation it has no Apple GPU kernel for on the CPU only when the environment
variable ``PYTORCH_ENABLE_MPS_FALLBACK=1`` was set before torch was first imported (it is read
once, when the library registers its kernels); otherwise such an operation raises
``NotImplementedError``. The command line sets it before importing torch
(:func:`enable_mps_fallback` in ``engine/__main__.py``); the door emits a notice on ``mps`` when
it is off (:func:`mps_fallback_notice`). Apple GPUs are accepted but untested on real hardware
(docs/installation.md).

Light: torch is imported inside the functions only, so :func:`enable_mps_fallback` can run
before torch is imported.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

#: The environment variable that lets PyTorch run an operation missing on Apple GPUs on the CPU.
MPS_FALLBACK_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def enable_mps_fallback() -> bool:
    """Set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` unless the user set it (their value is kept).

    Call it before torch is imported, as early as possible: PyTorch reads the variable once, on
    import. Returns True when the fallback will be on in this process (torch not imported yet and
    the variable on); harmless on machines without Apple GPUs.
    """
    os.environ.setdefault(MPS_FALLBACK_VARIABLE, "1")
    return "torch" not in sys.modules and mps_fallback_requested()


def mps_fallback_requested() -> bool:
    """Whether the environment asks for the CPU fallback (a non-zero integer, as PyTorch reads it)."""
    try:
        return int(os.environ.get(MPS_FALLBACK_VARIABLE, "0").strip()) != 0
    except ValueError:
        return False


def mps_fallback_notice(device: torch.device) -> str | None:
    """The notice for a run on ``device`` when it is an Apple GPU without the
    CPU fallback; None otherwise."""
    if getattr(device, "type", None) != "mps" or mps_fallback_requested():
        return None
    return (f"running on an Apple GPU (mps) without the CPU fallback: an operation PyTorch lacks there stops the "
            f"run. Set {MPS_FALLBACK_VARIABLE}=1 in the environment before starting (python -m engine sets it "
            f"itself), or use --device cpu.")


def _mps():
    """``torch.backends.mps`` or None where this PyTorch has no such module."""
    import torch

    return getattr(torch.backends, "mps", None)


def _check_mps(name: str) -> None:
    """Raise :class:`DeviceError` saying why ``mps`` cannot be used here, and what to use instead."""
    mps = _mps()
    if mps is None or not mps.is_built():
        raise DeviceError(
            f"device '{name}' asked for, but this PyTorch was built without Apple GPU (MPS) support; on a Mac with "
            "Apple silicon install the macOS build of PyTorch (pip install torch), or use --device cpu.")
    if not mps.is_available():
        raise DeviceError(
            f"device '{name}' asked for, but no Apple GPU is available: MPS needs macOS 12.3 or later on a Mac with "
            "Apple silicon or an AMD GPU; use --device cpu.")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) -> CUDA when available, else an Apple GPU (``mps``) when available, else CPU.

    Accepts ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (``mps:0``) or a ``torch.device``;
    returns a ``torch.device``. An unknown or unavailable device raises :class:`DeviceError` that
    names the reason and the fix.
    """
    import torch

    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = _mps()
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; use {DEVICE_CHOICES}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' asked for, but this PyTorch sees no CUDA GPU; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif dev.type == "mps":
        _check_mps(name)
        if dev.index not in (None, 0):
            raise DeviceError(f"device '{name}' does not exist: a Mac has one Apple GPU, 'mps'.")
    elif dev.type != "cpu":
        raise DeviceError(f"device '{name}' is not supported; use {DEVICE_CHOICES}.")
    return dev


def native_bfloat16(device: torch.device, *, cpu_flags_path: str = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: a CUDA GPU that supports
    bf16, or a CPU with AVX512-BF16 or AMX (read from ``cpu_flags_path`` on Linux; False elsewhere,
    where bf16 would be emulated and slower than float32)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu" or not os.path.isfile(cpu_flags_path):
        return False
    with open(cpu_flags_path, encoding="utf-8", errors="replace") as fh:
        flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bfloat16(choice: str, device: torch.device) -> bool:
    """A ``*.precision`` setting resolved for ``device``: ``bfloat16`` -> True, ``float32`` -> False,
    ``auto`` -> whether the device has native bf16 (:func:`native_bfloat16`)."""
    return choice == "bfloat16" or (choice == "auto" and native_bfloat16(device))


def autocast_dtype(device: torch.device):
    """The dtype autocast gives ``device``'s matrix products where the caller runs, or None where
    autocast is off for that device type."""
    import torch

    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def bfloat16_autocast(device: torch.device, enabled: bool):
    """The context that runs matrix products and convolutions on ``device`` in bf16 when ``enabled``
    (reductions and the rest stay float32; outputs may be bf16: callers cast what they keep)."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
