"""The memory estimate counts what a run holds (models, localization, its heaviest step), and a run
that runs out of memory anyway ends with an error that says so and how to need less."""

from __future__ import annotations

import io
import os
import shutil

import pytest
import torch

import engine.memory
import engine.train
from engine.api import stylize
from engine.bench_memory import HEADER, AllocationCounter, measure_run, run_memory_benchmark
from engine.cli import EXIT_ERROR, main
from engine.config import settings_for
from engine.errors import ResourceError
from engine.footprint import REAL_MODELS, TINY_MODELS_FOLDER, model_footprint
from engine.memory import GPU_WORKSPACE_BYTES, check_fits, estimate_memory, is_out_of_memory
from engine.models import ModelStore
from engine.samples import sample_mesh

MB = 2**20
QUICK = ["--set", "optim.iterations=2", "--set", "views.count=2", "--set", "render.resolution=64",
         "--set", "field.width=64", "--preset", "preview", "--models", "tiny", "--device", "cpu"]


def test_the_counter_counts_each_new_storage_once_until_it_is_freed():
    kept = torch.ones(1000)  # before the counter: not counted
    size = 25 * MB
    with AllocationCounter() as counter:
        a = torch.ones(size // 4)
        view, same = a[10:], kept.view(-1)  # storages already counted / there before
        b = a * 2
        assert counter.current == 2 * size
        del a, view
        assert counter.current == size  # a's storage is freed with its last view
        b.add_(same.sum())  # in place: nothing new but the scalar, freed at once
        del b
        assert counter.current == 0
    assert counter.peak == 2 * size


@pytest.mark.parametrize("preset, holistic", [("fast", False), ("text2mesh", True)])
def test_the_estimate_holds_what_a_run_allocates_with_little_to_spare(preset, holistic):
    """A located ``fast`` run (localization, a CLIP step, a grounding step) and a holistic one, with the
    tiny models, counted by AllocationCounter: the estimate (less the process itself) is above the
    measured peak, by less than half of it."""
    row = measure_run(preset, models="tiny", device=torch.device("cpu"), faces=20_000, holistic=holistic)
    assert row["steps"] > 0 and (row["locating"] > 0) != holistic
    assert row["peak"] <= row["estimate"] < 1.5 * row["peak"], row


def test_counted_as_on_cuda_the_weights_hold_the_bf16_copies_and_the_estimate_holds_the_run():
    """``--like-cuda``: the models as a CUDA store prepares them, so the weights column holds the
    image paths' bf16 copies (2 bytes a weight of the linear layers a CUDA store copies), and the
    estimate, a CUDA run's less the GPU libraries' workspaces, still holds what the run allocates."""
    from engine.model_kernels import BF16_COPIES_ON_CUDA, LinearWithBfloat16Copy

    plain = measure_run("fast", models="tiny", device=torch.device("cpu"), faces=5_000)
    like_cuda = measure_run("fast", models="tiny", device=torch.device("cpu"), faces=5_000, like_cuda=True)
    store = ModelStore("tiny")
    copied = 0
    for role, prefixes in BF16_COPIES_ON_CUDA.items():
        for name, module in getattr(store, role)("cpu").model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith(prefixes):
                copied += 2 * sum(p.numel() for p in module.parameters())
    assert copied > 0 and not any(isinstance(m, LinearWithBfloat16Copy) for m in store.clip("cpu").model.modules())
    assert like_cuda["weights"] - plain["weights"] == copied
    assert like_cuda["peak"] <= like_cuda["estimate"] < 1.5 * like_cuda["peak"], like_cuda


def test_the_benchmark_prints_a_row_per_preset_with_the_figures_it_returns():
    out = io.StringIO()
    rows = run_memory_benchmark(device="cpu", models="tiny", presets=("text2mesh",), out=out)
    lines = out.getvalue().splitlines()
    assert lines[1] == HEADER and len(lines) == 3 and len(rows) == 1
    cells = [cell.strip() for cell in lines[2].split("|")]
    assert cells[0] == "text2mesh" and cells[1] == "0"  # holistic: no parts, no localization
    printed = [float(cell.replace(",", "")) for cell in cells[2:]]
    expected = [rows[0][key] / MB for key in ("weights", "locating", "steps", "peak", "estimate")]
    assert printed == pytest.approx(expected, abs=0.5)


def test_the_estimate_counts_the_models_that_the_run_loads():
    settings = settings_for("fast")
    vertices = 20_000
    tiny, real = model_footprint("tiny"), model_footprint("default")
    assert real == REAL_MODELS and model_footprint(TINY_MODELS_FOLDER) == tiny  # a folder is read like tiny's
    assert tiny.weights["clip"] == os.path.getsize(os.path.join(TINY_MODELS_FOLDER, "clip", "model.safetensors"))
    holistic = estimate_memory(vertices, settings, 0, models=real)
    labelled = estimate_memory(vertices, settings, 3, models=real)
    located = estimate_memory(vertices, settings, 3, models=real, locating=True)
    assert holistic.weights == real.weights["clip"]  # no grounding steps, no localization
    assert labelled.weights == real.weights["clip"] + real.weights["grounding"]  # grounding steps
    assert located.weights == sum(real.weights.values())  # and the segmenter
    assert located.locating > 0 == labelled.locating
    assert labelled.step > 3 * holistic.step  # the real Grounding DINO's step outweighs CLIP's
    assert estimate_memory(vertices, settings, 3, models="tiny").step < labelled.step / 3
    faithful = estimate_memory(vertices, settings_for("faithful"), 3, models=real)
    assert faithful.step > 2.5 * labelled.step - 2 * holistic.step  # 3 views a grounding step, not 1
    again = estimate_memory(vertices, settings, 3, models=real, locating=True, loaded=("clip", "grounding"))
    assert again.weights == real.weights["segmenter"]  # a session's loaded models are not counted twice
    assert estimate_memory(vertices, settings, 3, models=real, device_type="cuda").total < located.total


def test_a_gpu_run_needs_the_workspaces_its_first_run_allocates(monkeypatch):
    """On a GPU the process holds nothing before its first run, which allocates cuBLAS's and cuDNN's
    workspaces through the caching allocator: the need a run is checked against includes them."""
    settings, vertices, gpu = settings_for("fast"), 20_000, torch.device("cuda")
    monkeypatch.setattr(engine.memory, "available_bytes", lambda device: free)
    free = 2**50
    cpu_need = check_fits(vertices, settings, 3, torch.device("cpu"), models="tiny", locating=True)
    estimate = estimate_memory(vertices, settings, 3, models="tiny", locating=True, device_type="cuda")
    need = estimate.total - estimate.process
    free = need
    fits = check_fits(vertices, settings, 3, gpu, models="tiny", locating=True)
    tiny = model_footprint("tiny")
    assert fits == need == cpu_need + GPU_WORKSPACE_BYTES + tiny.clip_bf16_copies + tiny.grounding_bf16_copies
    free = need - GPU_WORKSPACE_BYTES  # what the tensors alone would fit in
    with pytest.raises(ResourceError, match="would need about"):
        check_fits(vertices, settings, 3, gpu, models="tiny", locating=True)


def _image_path_linear_weights(model) -> int:
    return _linear_weights_under(model, ("vision_model.", "visual_projection"))


def test_a_gpu_estimate_counts_clips_bf16_copies_unless_clip_is_loaded():
    from transformers import CLIPConfig, CLIPModel

    from engine.models import ModelStore

    with torch.device("meta"):  # the real architecture's shapes, no memory
        real = CLIPModel(CLIPConfig())
    assert REAL_MODELS.clip_bf16_copies == 2 * _image_path_linear_weights(real)
    tiny = model_footprint("tiny")
    assert tiny.clip_bf16_copies == 2 * _image_path_linear_weights(ModelStore("tiny").clip("cpu").model)
    settings = settings_for("fast")
    on = {kind: estimate_memory(20_000, settings, 0, models="default", device_type=kind) for kind in ("cpu", "cuda")}
    assert on["cuda"].weights == on["cpu"].weights + REAL_MODELS.clip_bf16_copies  # holistic: CLIP alone
    loaded = estimate_memory(20_000, settings, 3, models="default", device_type="cuda", loaded=("clip",))
    # a session's CLIP holds its copies already; the grounding model is loaded with its own
    assert loaded.weights == REAL_MODELS.weights["grounding"] + REAL_MODELS.grounding_bf16_copies


def _linear_weights_under(model, prefixes) -> int:
    return sum(m.weight.numel() + (0 if m.bias is None else m.bias.numel()) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.startswith(prefixes))


def test_a_gpu_estimate_counts_the_grounding_models_bf16_copies_when_it_loads_it():
    from transformers import GroundingDinoForObjectDetection

    from engine.footprint import GROUNDING_IMAGE_PATH
    from engine.models import ModelStore
    from engine.tiny_models import real_size_grounding_config

    with torch.device("meta"):  # the real architecture's shapes, no memory
        real = GroundingDinoForObjectDetection(real_size_grounding_config())
    assert REAL_MODELS.grounding_bf16_copies == 2 * _linear_weights_under(real, GROUNDING_IMAGE_PATH)
    # the footprint reads the copies from the weights' file headers: every 2-D weight there is a linear layer's
    linear = {f"{name}.weight" for name, m in real.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {k for k, v in real.state_dict().items()
            if k.startswith(GROUNDING_IMAGE_PATH) and k.endswith(".weight") and v.ndim == 2} <= linear
    tiny_model = ModelStore("tiny").grounding("cpu").model
    assert model_footprint("tiny").grounding_bf16_copies == 2 * _linear_weights_under(tiny_model, GROUNDING_IMAGE_PATH)
    settings = settings_for("fast")
    parts = {kind: estimate_memory(20_000, settings, 3, models="default", device_type=kind) for kind in ("cpu", "cuda")}
    copies = REAL_MODELS.clip_bf16_copies + REAL_MODELS.grounding_bf16_copies
    assert parts["cuda"].weights == parts["cpu"].weights + copies
    loaded = estimate_memory(20_000, settings, 3, models="default", device_type="cuda", loaded=("grounding",))
    assert loaded.weights == REAL_MODELS.weights["clip"] + REAL_MODELS.clip_bf16_copies


def test_a_missing_folder_is_estimated_as_the_real_models(tmp_path):
    assert model_footprint(str(tmp_path / "nothing-here")) == REAL_MODELS
    folder = tmp_path / "models"
    shutil.copytree(os.path.join(TINY_MODELS_FOLDER, "clip"), folder / "clip")
    mixed = model_footprint(str(folder))
    assert mixed.weights["clip"] == model_footprint("tiny").weights["clip"]
    assert mixed.weights["grounding"] == REAL_MODELS.weights["grounding"]


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 40000000000000 bytes."),
    MemoryError(),
])
def test_a_run_that_runs_out_of_memory_says_so_and_how_to_need_less(monkeypatch, error):
    assert is_out_of_memory(error)

    def step(self):
        raise error

    monkeypatch.setattr(engine.train.StyleTrainer, "step", step)
    settings = settings_for("preview", {"optim.iterations": 2, "views.count": 2, "render.resolution": 64})
    said = r"ran out of memory while stylizing .*as they were\. Need less memory with .*--preset preview"
    with pytest.raises(ResourceError, match=said) as got:
        stylize(sample_mesh("lamp", 2000), "a red lamp", settings=settings, models="tiny", device="cpu")
    assert got.value.__cause__ is None and got.value.__context__ is None  # the failed run's frames are let go
    assert ("--device cpu" in str(got.value)) == isinstance(error, torch.OutOfMemoryError)  # only where a GPU ran out


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    def step(self):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(engine.train.StyleTrainer, "step", step)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        stylize(sample_mesh("lamp", 2000), "a red lamp", settings=settings_for("preview", {"optim.iterations": 2}),
                models="tiny", device="cpu")


def test_the_command_reports_running_out_of_memory_and_writes_nothing(monkeypatch, tmp_path, capsys):
    def step(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.train.StyleTrainer, "step", step)
    out = tmp_path / "out"
    assert main(["stylize", "sample:lamp@2000", "--prompt", "a red lamp", "--out", str(out), *QUICK]) == EXIT_ERROR
    said = capsys.readouterr().err
    assert "error: ran out of memory while stylizing (CUDA out of memory" in said
    assert "--resume" not in said  # no checkpoint was kept before the first step
    assert not out.exists() or not any(name for name in os.listdir(out) if not name.startswith("."))


def test_a_checkpoint_kept_before_running_out_of_memory_is_named(monkeypatch, tmp_path, capsys):
    real_step = engine.train.StyleTrainer.step

    def step(self):
        if self.step_index == 2:  # after the checkpoint the run keeps at its second iteration
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self)

    monkeypatch.setattr(engine.train.StyleTrainer, "step", step)
    out = tmp_path / "out"
    command = ["stylize", "sample:lamp@2000", "--prompt", "a red lamp", "--out", str(out), *QUICK,
               "--set", "optim.iterations=4", "--set", "run.checkpoint_every=2"]
    assert main(command) == EXIT_ERROR
    checkpoint = out / "checkpoint.pt"
    assert f"its checkpoint ({checkpoint}) can be resumed (--resume)" in capsys.readouterr().err
    assert checkpoint.is_file()
