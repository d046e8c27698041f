"""``python -m engine bench --memory``: the memory a run's tensors take, by stage, next to the estimate.

A located run of each part preset on the sample lamp (and a holistic ``text2mesh``), two iterations
(a CLIP step, then a grounding step where the preset has grounding steps), with the real-size architectures
(random weights, ``bench --runs``' model folder) or the tiny models. Random weights locate nothing, so
the localization runs through all its views and the optimization takes the sample's labels.

On a CUDA GPU the figures are ``torch.cuda.max_memory_allocated``. A CPU has no such counter, so
:class:`AllocationCounter` counts the bytes of every tensor storage created while the run works and
not yet freed (what the CUDA counter counts, without its 512-byte rounding). ``like_cuda`` runs the
CPU as a GPU would: bf16 autocast for every model and the field, the library's own kernels (no
CPU kernels from ``engine/model_kernels.py``) and the bf16 weight copies a CUDA store gives the
models' image paths (``model_kernels.BF16_COPIES_ON_CUDA``): the GPU's figures, measured on a CPU
(slowly, where the CPU has no native bf16); its estimate is a CUDA run's, less the GPU libraries'
workspaces, which are not tensors a CPU can count (``memory.GPU_WORKSPACE_BYTES``).

Each row gives the models' weights, the peak over them during localization and during the two
steps, their sum, and :func:`engine.memory.estimate_memory`'s total without the process itself.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from typing import TextIO

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .api import locate_parts, stylize
from .bench import like_cuda_gpu
from .bench_runs import HOLISTIC_PROMPT, PART_PROMPT, ZERO_THRESHOLDS, default_folder, real_size_model_folder
from .config import PRECISION_STAGES, settings_for
from .devices import resolve_device
from .errors import PartNotFound
from .memory import GPU_WORKSPACE_BYTES, estimate_memory
from .models import ModelStore
from .parts import PartWeights
from .prompt import parse_prompt
from .request import StyleRequest
from .samples import sample_mesh

MEMORY_PRESETS = ("preview", "fast", "faithful", "text2mesh")
MEMORY_FACES = 40_000
HEADER = "preset     | parts | weights MB | locating MB | steps MB | peak MB | estimate MB"


class AllocationCounter(TorchDispatchMode):
    """Counts the bytes of the CPU tensor storages created while it is active and still alive.

    Storages that existed when it was entered (the models' weights) are not counted, nor are views
    of a storage already counted. ``current`` and ``peak`` are bytes; :meth:`reset_peak` starts a
    new stage. Only the thread that entered it is counted (a run's torch work is on that thread).
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        self._before: set[int] = set()

    def __enter__(self):
        import gc
        import warnings

        with warnings.catch_warnings():  # isinstance() on some of torch's deprecated objects warns
            warnings.simplefilter("ignore")
            self._before = {obj.untyped_storage().data_ptr() for obj in gc.get_objects()
                            if isinstance(obj, torch.Tensor) and obj.device.type != "meta"}
        return super().__enter__()

    def reset_peak(self) -> None:
        self.peak = self.current

    def _freed(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size and key not in self._live and key not in self._before:
                self._live[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._freed, key)  # fires when the storage itself is freed
        return out


def measure_run(
    preset: str, *, models: str, device: torch.device, like_cuda: bool = False, faces: int = MEMORY_FACES,
    holistic: bool = False,
) -> dict:
    """Bytes of one located run of ``preset`` (2 iterations) by stage, and the estimate, on ``device``."""
    precision = "bfloat16" if like_cuda else "auto"
    overrides = [*ZERO_THRESHOLDS, "optim.iterations=2",
                 *(f"{stage}.precision={precision}" for stage in PRECISION_STAGES)]
    if settings_for(preset).guidance.grounding_every > 0:
        overrides.append("guidance.grounding_every=2")  # the second iteration is the preset's grounding step
    settings = settings_for(preset, overrides)
    store = ModelStore(models, device_kernels=not like_cuda)
    prompt = HOLISTIC_PROMPT if holistic else PART_PROMPT
    parts = 0 if holistic else len(parse_prompt(prompt).parts)
    roles = ("clip",) if holistic else ("clip", "grounding", "segmenter")  # a located run loads all three
    bundles = [getattr(store, role)(device) for role in roles]
    if like_cuda:  # as a CUDA store prepares them: bf16 copies of the image paths' weights
        for role, bundle in zip(roles, bundles, strict=True):
            like_cuda_gpu(bundle.model, device, role)
    weights = storage_bytes(t for b in bundles for t in (*b.model.parameters(), *b.model.buffers()))
    mesh = sample_mesh("lamp", faces)
    counter = _Counter(device)
    with counter:
        if not holistic:
            with contextlib.suppress(PartNotFound):
                locate_parts(mesh, parse_prompt(prompt).parts, settings=settings, models=store, device=device)
        locating = counter.stage_peak()
        request = StyleRequest(prompt, holistic=holistic,
                               parts=None if holistic else PartWeights.from_labels(mesh.labels, mesh.label_names))
        stylize(mesh, request, settings=settings, models=store, device=device)
        steps = counter.stage_peak()
    estimate = estimate_memory(mesh.num_vertices, settings, parts, models=store.footprint(), locating=not holistic,
                               device_type="cuda" if like_cuda else device.type)
    uncounted = estimate.process + (GPU_WORKSPACE_BYTES if like_cuda else 0)
    return {"preset": preset, "parts": parts, "weights": weights, "locating": locating, "steps": steps,
            "peak": weights + max(locating, steps), "estimate": estimate.total - uncounted}


def storage_bytes(tensors) -> int:
    """The bytes of the memory under ``tensors``, each block once: a view (a fused projection's
    layers' parameters are rows of its stacked weight, ``model_kernels.FusedProjections``) adds nothing."""
    blocks = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        blocks[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(blocks.values())


class _Counter:
    """The run's tensor bytes on ``device``: CUDA's own counters, or an :class:`AllocationCounter`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.counter = None if device.type == "cuda" else AllocationCounter()
        self.base = 0

    def __enter__(self):
        if self.counter is None:
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)  # the weights
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        return None if self.counter is None else self.counter.__exit__(*exc)

    def stage_peak(self) -> int:
        """The peak since the last call (or the start), over the weights; starts the next stage."""
        if self.counter is None:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self.base
            torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        peak = self.counter.peak
        self.counter.reset_peak()
        return peak


def run_memory_benchmark(*, device: str = "cpu", models: str | None = None, like_cuda: bool = False,
                         presets: tuple[str, ...] = MEMORY_PRESETS, out: TextIO = sys.stdout) -> list[dict]:
    """Print and return :func:`measure_run`'s rows for ``presets`` (``text2mesh`` holistic)."""
    dev = resolve_device(device)
    source = models or real_size_model_folder(default_folder())
    how = "bf16 autocast and the library's kernels, as on CUDA" if like_cuda else "the device's own settings"
    out.write(f"# memory of a run's tensors, lamp at {MEMORY_FACES} faces, {dev}, {how}; models: {source}\n{HEADER}\n")
    out.flush()
    rows = []
    for preset in presets:
        row = measure_run(preset, models=source, device=dev, like_cuda=like_cuda, holistic=preset == "text2mesh")
        rows.append(row)
        mb = {key: row[key] / 2**20 for key in ("weights", "locating", "steps", "peak", "estimate")}
        out.write(f"{preset:<10} | {row['parts']:>5} | {mb['weights']:>10,.0f} | {mb['locating']:>11,.0f} | "
                  f"{mb['steps']:>8,.0f} | {mb['peak']:>7,.0f} | {mb['estimate']:>11,.0f}\n")
        out.flush()
    return rows
