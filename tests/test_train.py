"""The optimization loop through the door (engine.api.stylize): repeatable, resumable, guarded."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
import trimesh
from tolerances import ROUNDED, SAME_MATH, assert_close

from engine.api import stylize
from engine.compose import whole_object
from engine.config import settings_for
from engine.errors import Cancelled, CheckpointError, NumericalError, PromptError
from engine.events import CancelToken, NoticeEvent, PreviewEvent, StepEvent
from engine.guidance import ClipGuidance
from engine.mesh import Normalization, mesh_from_arrays
from engine.models import ModelStore
from engine.train import Objective, StyleTrainer, SurfaceInputs, all_finite

STORE = ModelStore("tiny")  # shared: the tiny model is built once for the module


def small_settings(*extra: str, iterations: int = 6):
    return settings_for(
        "fast",
        [
            f"optim.iterations={iterations}",
            "views.count=2",
            "render.resolution=64",
            "field.width=64",
            "run.preview_every=3",
            "run.checkpoint_every=2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def blob():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = sphere.vertices * np.array([1.0, 0.7, 0.9]) + np.array([3.0, -2.0, 1.0])
    return mesh_from_arrays(v, sphere.faces, name="blob")


def run(mesh, settings, **kwargs):
    return stylize(mesh, "a red blob", settings=settings, models=STORE, device="cpu", **kwargs)


def test_same_seed_same_result_and_another_seed_differs(blob):
    a = run(blob, small_settings())
    b = run(blob, small_settings())
    c = run(blob, small_settings("run.seed=1"))
    assert np.array_equal(a.colors_srgb, b.colors_srgb) and np.array_equal(a.displacement, b.displacement)
    assert a.history == b.history
    assert not np.array_equal(a.colors_srgb, c.colors_srgb)


def test_input_mesh_is_untouched_and_results_are_in_object_units(blob):
    # The blob on a 2^-10 grid: 10 v + 5 below is exact in float32, so both meshes have the same unit
    # frame to the last bit. (Unit frames that differ by float32 rounding change these 6 steps'
    # displacement by up to ~1.5 %: a comparison that allowed that could not see a wrong factor.)
    mesh = mesh_from_arrays(np.round(blob.vertices * 1024.0) / 1024.0, blob.faces, name="blob")
    vertices, faces = mesh.vertices.copy(), mesh.faces.copy()
    result = run(mesh, small_settings())
    assert np.array_equal(mesh.vertices, vertices) and np.array_equal(mesh.faces, faces)
    # The same shape at 10x the size and moved: identical colors, displacement 10x in object units.
    scaled = mesh_from_arrays(mesh.vertices * 10.0 + 5.0, mesh.faces, name="big")
    unit, big_unit = (Normalization.fit(m.vertices).to_unit(m.vertices) for m in (mesh, scaled))
    assert np.array_equal(unit, big_unit) and np.array_equal(mesh.vertex_normals, scaled.vertex_normals)
    big = run(scaled, small_settings())
    assert_close(big.colors_srgb, result.colors_srgb, rel=SAME_MATH, what="colors of the 10x mesh")
    assert_close(big.displacement, 10.0 * result.displacement, rel=SAME_MATH, what="10x displacement")
    assert np.abs(result.displacement).max() > 0
    # float32 positions: the offsets carry the rounding of the positions (~4), not of the shift (~1e-4)
    offsets = result.displaced_vertices().astype(np.float64) - mesh.vertices
    assert_close(np.linalg.norm(offsets, axis=1), np.abs(result.displacement), rel=ROUNDED,
                 scale=np.abs(mesh.vertices).max(), what="offset lengths")


def test_cancel_then_resume_equals_an_uninterrupted_run(blob, tmp_path):
    straight = run(blob, small_settings(iterations=8))
    checkpoint = str(tmp_path / "checkpoint.pt")
    token = CancelToken()

    def cancel_after_five(event):
        if isinstance(event, StepEvent) and event.step == 5:
            token.cancel()

    with pytest.raises(Cancelled) as err:
        run(blob, small_settings(iterations=8), on_event=cancel_after_five, cancel=token, checkpoint=checkpoint)
    assert err.value.checkpoint == checkpoint
    steps = []
    resumed = run(blob, small_settings(iterations=8), checkpoint=checkpoint, resume=True,
                  on_event=lambda e: steps.append(e.step) if isinstance(e, StepEvent) else None)
    assert steps == [6, 7, 8]
    assert np.array_equal(resumed.colors_srgb, straight.colors_srgb)
    assert np.array_equal(resumed.displacement, straight.displacement)
    assert resumed.history == straight.history


def test_a_checkpoint_of_another_run_is_refused(blob, tmp_path):
    checkpoint = str(tmp_path / "checkpoint.pt")
    run(blob, small_settings(iterations=2), checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="different run"):
        run(blob, small_settings("run.seed=5", iterations=4), checkpoint=checkpoint, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(blob, small_settings(), checkpoint=str(tmp_path / "missing.pt"), resume=True)


def test_cancel_without_checkpoint_stops_before_the_next_iteration(blob):
    token = CancelToken()
    token.cancel()
    steps = []
    with pytest.raises(Cancelled) as err:
        run(blob, small_settings(), cancel=token,
            on_event=lambda e: steps.append(e) if isinstance(e, StepEvent) else None)
    assert steps == [] and err.value.checkpoint is None


def test_events_report_progress_and_previews(blob):
    events = []
    result = run(blob, small_settings(iterations=7), on_event=events.append)
    steps = [e for e in events if isinstance(e, StepEvent)]
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert [e.step for e in steps] == list(range(1, 8)) and all(e.total == 7 for e in steps)
    assert all(e.eta >= 0 for e in steps) and steps[-1].eta == 0
    assert [p.step for p in previews] == [1, 3, 6, 7]  # the first at once, then every 3rd and the last
    last = previews[-1]
    assert last.colors_srgb.shape == (blob.num_vertices, 3) and last.image.shape == (64, 64, 3)
    assert_close(last.colors_srgb, result.colors_srgb, rel=SAME_MATH, what="last preview colors")
    assert_close(last.displacement, result.displacement, rel=SAME_MATH, what="last preview displacement")


class FlakyGuidance(ClipGuidance):
    """Returns a NaN loss on the listed calls (1-based)."""

    def __init__(self, bundle, settings, bad_calls):
        super().__init__(bundle, settings)
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def step_losses(self, *args, **kwargs):
        self.calls += 1
        out, parts = super().step_losses(*args, **kwargs)
        if self.calls in self.bad_calls:
            out["total"] = out["total"] * float("nan")
        return out, parts


def trainer_with(blob, bad_calls, *extra):
    settings = small_settings(*extra)
    guidance = FlakyGuidance(STORE.clip("cpu"), settings.guidance, bad_calls)
    v = torch.from_numpy(blob.vertices)
    v = (v - v.mean(0)) / (v - v.mean(0)).norm(dim=1).max()
    surface = SurfaceInputs(v.float(), torch.from_numpy(blob.vertex_normals), torch.from_numpy(blob.faces))
    objective = Objective(guidance.encode_text(["a red blob"])[0], whole_object(blob.num_vertices))
    return StyleTrainer(surface, objective, guidance, settings)


def test_a_non_finite_step_is_skipped_and_the_run_continues(blob):
    notices = []
    trainer = trainer_with(blob, bad_calls={3})
    result = trainer.run(on_event=lambda e: notices.append(e) if isinstance(e, NoticeEvent) else None)
    assert result.skipped == 1 and result.steps == 6
    assert len(notices) == 1 and "iteration 3" in notices[0].message
    assert len(result.history["total"]) == 5 and all(math.isfinite(v) for v in result.history["total"])
    assert torch.isfinite(result.colors).all() and torch.isfinite(result.displacement).all()


def test_persistent_non_finite_steps_stop_the_run(blob):
    trainer = trainer_with(blob, {2, 3, 4}, "run.nan_patience=3")
    with pytest.raises(NumericalError, match="3 iterations in a row"):
        trainer.run()


def _corrupt_after_update(trainer, at_step: int) -> None:
    """Make the optimizer's update of iteration ``at_step`` (1-based) leave a parameter NaN: a bad
    step that the loss and gradient checks cannot see, only the check after the update."""
    def corrupt(optimizer, *_):
        if trainer.step_index + 1 == at_step:
            with torch.no_grad():
                next(trainer.field.parameters()).view(-1)[0] = float("nan")
    trainer.optimizer.register_step_post_hook(corrupt)


def test_an_update_that_leaves_a_parameter_non_finite_is_undone(blob):
    """The state after the bad update goes back to the last good one, exactly: the run ends as one
    whose iteration 3 failed before any update (a NaN loss)."""
    undone = trainer_with(blob, set())
    _corrupt_after_update(undone, at_step=3)
    result = undone.run()
    reference = trainer_with(blob, {3}).run()
    assert result.skipped == 1 and reference.skipped == 1
    assert torch.equal(result.colors, reference.colors) and torch.equal(result.displacement, reference.displacement)
    assert result.history == reference.history


def test_an_update_that_fails_at_the_first_step_leaves_no_optimizer_state(blob):
    trainer = trainer_with(blob, set(), "optim.iterations=1")
    before = [p.detach().clone() for p in trainer.field.parameters()]
    _corrupt_after_update(trainer, at_step=1)
    assert trainer.run().skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.field.parameters(), strict=True))
    assert not any(trainer.optimizer.state.values())  # as before the optimizer's first step


def test_a_skipped_step_still_counts_in_the_learning_rate_schedule(blob):
    """A step skipped where the schedule decays the rate keeps the decay (it was once undone with
    the optimizer's state, leaving the rest of the run at the rate before it)."""
    decay = ("optim.lr_decay_every=2", "optim.lr_decay=0.5")
    clean, skipped_at_decay = trainer_with(blob, set(), *decay), trainer_with(blob, {2}, *decay)
    clean.run()
    assert skipped_at_decay.run().skipped == 1
    assert skipped_at_decay.optimizer.param_groups[0]["lr"] == clean.optimizer.param_groups[0]["lr"]


def test_a_step_reads_from_the_device_once(blob, monkeypatch):
    """The guard's checks and the loss values come back in one read (on a GPU, one synchronization
    of the step's own; the rasterizer's ragged sizes are the others)."""
    trainer = trainer_with(blob, set())
    trainer.step()
    reads = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith(os.path.join("engine", "train.py")):
                reads.append(name)
            return original(tensor, *args, **kwargs)
        return read

    for name in ("tolist", "item", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    _, _, ok = trainer.step()
    assert ok and reads == ["tolist"]


def test_optimization_lowers_the_loss(blob):
    """On a fixed view with no augmentation the objective is deterministic: it must go down."""
    settings = settings_for("preview", [
        "optim.iterations=25", "views.count=1", "render.resolution=64", "field.width=64",
        "guidance.perspective_p=0", "guidance.local_crops=0", "optim.learning_rate=0.01",
    ])
    result = run(blob, settings)
    losses = result.history["total"]
    assert losses[-1] < losses[0] - 0.01, losses


def test_empty_prompt_is_refused(blob):
    with pytest.raises(PromptError, match="empty"):
        stylize(blob, "   ", models=STORE)


def test_a_holistic_prompt_styles_every_vertex(blob):
    result = run(blob, small_settings())
    assert result.prompt.is_holistic and result.parts is None
    assert np.all(np.abs(result.colors_srgb - 0.5).max(1) > 0)


def test_bfloat16_field_runs_and_stays_close_to_float32(blob):
    full = run(blob, small_settings("field.precision=float32", iterations=3))
    half = run(blob, small_settings("field.precision=bfloat16", iterations=3))
    assert half.colors_srgb.dtype == np.float32 and np.isfinite(half.colors_srgb).all()
    assert not np.array_equal(half.colors_srgb, full.colors_srgb)  # the setting took effect
    assert np.abs(half.colors_srgb - full.colors_srgb).max() < 0.05


def test_the_record_says_each_stages_arithmetic_and_timings(blob):
    settings = small_settings("guidance.precision=bfloat16", "field.precision=float32", "localize.precision=bfloat16",
                              iterations=2)
    store = ModelStore("tiny")
    first, second = (stylize(blob, "a red blob", settings=settings, models=store, device="cpu").record
                     for _ in range(2))
    assert first["precision"] == {"field": "float32", "guidance": "bfloat16", "localize": "bfloat16"}
    assert first["seconds_locating"] == 0  # a holistic prompt locates nothing
    assert 0 < first["seconds_to_first_preview"] < first["seconds_setup"] + first["seconds_optimizing"]
    assert first["seconds_loading_models"] > 0 == second["seconds_loading_models"]  # the store keeps its CLIP
    assert first["peak_memory_mb"] > 0


def test_the_finiteness_check_is_exact_and_one_set_of_operations_for_any_number_of_tensors():
    from torch.utils._python_dispatch import TorchDispatchMode

    def tensors(count: int) -> list[torch.Tensor]:
        return [torch.full((5, 3), 3.0e38), torch.zeros(7, dtype=torch.bfloat16)] + [torch.ones(4)] * (count - 2)

    for count in (2, 30):
        assert bool(all_finite(tensors(count)))  # the largest finite values are finite
        for bad in (float("inf"), float("-inf"), float("nan")):
            for where in range(count):
                spoiled = tensors(count)
                spoiled[where] = spoiled[where].clone()
                spoiled[where].view(-1)[-1] = bad
                assert not bool(all_finite(spoiled)), (count, bad, where)
    assert bool(all_finite([]))

    class Operations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for count in (3, 30):
        same_dtype = [torch.ones(4)] * count
        with Operations() as operations:
            all_finite(same_dtype)
        counts.append(operations.count)
    assert counts[0] == counts[1] < 10  # not one check per tensor


def test_the_field_is_updated_by_one_set_of_operations_for_all_its_tensors(blob):
    from engine.bench_operations import operations_of

    counts = {}
    for width, depth in ((32, 1), (32, 4)):  # 16 and 22 parameter tensors
        trainer = trainer_with(blob, set(), f"field.width={width}", f"field.trunk_depth={depth}")
        tensors = list(trainer.field.parameters())
        for tensor in tensors:
            tensor.grad = torch.full_like(tensor, 1e-3)
        trainer.optimizer.step()  # the first update creates Adam's state
        counts[len(tensors)] = operations_of(trainer.optimizer.step)
    (few, few_ops), (many, many_ops) = sorted(counts.items())
    assert many > few and many_ops == few_ops < few  # not one update per tensor (about 8 operations each)
