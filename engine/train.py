"""The optimization loop: views -> field -> displaced, colored mesh -> renders -> losses -> step.

One :class:`StyleTrainer` optimizes one field for one mesh and one text. It owns the schedule
(METHOD section 8), the non-finite guard, checkpoints and cancellation, and reports through
events. Everything random draws from generators seeded by ``run.seed``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .cameras import sample_views
from .compose import Composition
from .config import Settings
from .devices import bfloat16_autocast, use_bfloat16
from .errors import Cancelled, CheckpointError, NumericalError
from .events import CancelToken, EventSink, NoticeEvent, PreviewEvent, StageEvent, StepEvent, ignore_events
from .field import StyleField
from .geometry.graph import VertexGraph
from .guidance import ClipGuidance
from .last_good import LastGoodState
from .render import Renderer

CHECKPOINT_VERSION = 1


def seeded_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of a run (independent streams per name)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class SurfaceInputs:
    """The mesh as the trainer sees it (unit frame, on the run's device).

    Attributes:
        vertices: [V, 3] float32 positions, unit frame.
        normals: [V, 3] float32 unit vertex normals of the undisplaced mesh.
        faces: [F, 3] int64.
    """

    vertices: torch.Tensor
    normals: torch.Tensor
    faces: torch.Tensor

    @classmethod
    def of(cls, unit_vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray, device) -> SurfaceInputs:
        """From numpy arrays: [V, 3] unit-frame positions, [V, 3] unit normals, [F, 3] faces."""
        return cls(torch.from_numpy(unit_vertices).to(device), torch.from_numpy(normals).to(device),
                   torch.from_numpy(faces).to(device))


@dataclass(frozen=True)
class Objective:
    """What the trainer optimizes towards.

    Attributes:
        text: [D] unit-norm embedding of the whole prompt (global and geometry losses).
        composition: how the field's P per-part outputs become per-vertex results.
        part_names: the P styled parts (empty for a holistic prompt).
        part_texts: [P, D] unit-norm embeddings of the styled parts' phrases (None: holistic).
        grounding: the grounding-space part loss, ``[N, 3, H, W] renders -> scalar``, used on
            grounding steps (None: never).
    """

    text: torch.Tensor
    composition: Composition
    part_names: tuple[str, ...] = ()
    part_texts: torch.Tensor | None = None
    grounding: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class TrainResult:
    """The optimized per-vertex outputs, unit frame, on the CPU.

    Attributes:
        colors: [V, 3] float32 sRGB in 0..1.
        displacement: [V] float32, unit-frame units along the vertex normal.
        history: loss name -> value per iteration.
        steps: iterations completed; skipped: iterations skipped by the non-finite guard.
        seconds: wall time of the optimization.
    """

    colors: torch.Tensor
    displacement: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0


def _edges_of(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mesh's unique edges as ([E], [E]) vertex indices and [E] weights 1 / |edge|^2 (unit frame;
    a collapsed edge gets the weight of the shortest real one)."""
    edges = VertexGraph(faces.cpu().numpy(), vertices.shape[0]).edges
    pairs = torch.from_numpy(edges).to(vertices.device)
    length2 = (vertices[pairs[:, 0]] - vertices[pairs[:, 1]]).square().sum(1)
    floor = length2[length2 > 0].min() if bool((length2 > 0).any()) else torch.ones(())
    return (pairs[:, 0], pairs[:, 1]), 1.0 / length2.clamp(min=floor)


def all_finite(tensors) -> torch.Tensor:
    """0-d bool tensor on the tensors' device (not read): whether every element of every tensor is finite.

    The same few operations whatever the number of tensors (on a GPU, a handful of kernel launches
    where ``isfinite(t).all()`` per tensor took five each: a step there waits on launches, not
    arithmetic). Exact: each value times 0 is 0 where it is finite and NaN where it is infinite or
    NaN, and a tensor's 1-norm of those is 0 exactly when all of them are 0 (a NaN makes the sum NaN).
    """
    tensors = list(tensors)
    if not tensors:
        return torch.tensor(True)
    zeros = torch._foreach_mul(tensors, 0.0)
    return torch.stack(torch._foreach_norm(zeros, 1)).eq(0).all()  # stack promotes mixed dtypes


class StyleTrainer:
    """Optimizes a :class:`StyleField` so that renders of the displaced, colored mesh match a text."""

    def __init__(
        self,
        surface: SurfaceInputs,
        objective: Objective,
        guidance: ClipGuidance,
        settings: Settings,
        *,
        fingerprint: str = "",
    ):
        self.surface = surface
        self.objective = objective
        self.composition = objective.composition.to(surface.vertices.device)
        self.guidance = guidance
        self.settings = settings
        self.fingerprint = fingerprint
        self.device = surface.vertices.device
        self.field_bfloat16 = use_bfloat16(settings.field.precision, self.device)
        self.renderer = Renderer(settings.render)
        seed = settings.run.seed
        self.field = StyleField(settings.field, seeded_generator(seed, "field"), parts=self.composition.num_styled).to(
            self.device
        )
        self.sampling = seeded_generator(seed, "sampling")
        opt = settings.optim
        optimizer_cls = torch.optim.AdamW if opt.optimizer == "adamw" else torch.optim.Adam
        # One multi-tensor update of all the field's tensors on every device (a CUDA GPU's default; on a CPU
        # the same arithmetic bit for bit, in about 10 operations a step instead of 8 for each of its 22 tensors).
        self.optimizer = optimizer_cls(self.field.parameters(), lr=opt.learning_rate, weight_decay=opt.weight_decay,
                                       foreach=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=opt.lr_decay_every, gamma=opt.lr_decay
        )
        self.last_good = LastGoodState(self.field, self.optimizer)  # what a non-finite step goes back to
        # The field runs only where some styled part has weight: elsewhere the composition keeps the
        # vertex as it was whatever the field says (a part the prompt leaves out, a locked part).
        styled = (self.composition.weights > 0).any(1)
        self.styled_rows = None if bool(styled.all()) else styled.nonzero().squeeze(1)
        with torch.no_grad():
            self.features = self.field.encode(
                surface.vertices if self.styled_rows is None else surface.vertices.index_select(0, self.styled_rows))
        self.edges, self.edge_weights = _edges_of(surface.vertices, surface.faces)
        self.has_relief = self.composition.has_relief  # checked every step: computed once
        self.step_index = 0
        self.history: dict[str, list[float]] = {}
        self.skipped = 0
        self.preview_index: torch.Tensor | None = None

    # -- one iteration -------------------------------------------------------------------------

    def outputs(self, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The current composed ([V, 3] sRGB colors, [V] unit-frame displacement), float32."""
        with bfloat16_autocast(self.device, self.field_bfloat16):
            colors, relief = self.field.decode(self.features, mask)
        colors, relief = colors.float(), relief.float()
        if self.styled_rows is not None:  # zeros where nothing is styled: the composition ignores them there
            count = self.surface.vertices.shape[0]
            colors, relief = (rows.new_zeros(count, *rows.shape[1:]).index_copy(0, self.styled_rows, rows)
                              for rows in (colors, relief))
        return self.composition.apply(colors, relief)

    def is_grounding_step(self) -> bool:
        """Whether the coming iteration takes the grounding-space step (METHOD 5.2 / 6)."""
        every = self.settings.guidance.grounding_every
        return self.objective.grounding is not None and every > 0 and (self.step_index + 1) % every == 0

    def frequency_mask(self) -> torch.Tensor | None:
        steps = self.settings.field.progressive_steps
        if steps <= 0:
            return None
        return self.field.encoding.frequency_mask(min(1.0, (self.step_index + 1) / steps))

    def loss(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Render this iteration's views and score them. Returns (losses, front-view image [3, H, W])."""
        colors, displacement = self.outputs(self.frequency_mask())
        positions = self.surface.vertices + displacement.unsqueeze(-1) * self.surface.normals
        if self.is_grounding_step():
            losses, image = self._grounding_step_loss(positions, colors)
        else:
            losses, image = self._clip_step_loss(positions, colors)
        weight = self.settings.field.relief_smoothness
        if weight > 0 and self.has_relief:
            losses["smoothness"] = weight * self.relief_roughness(displacement)
            losses["total"] = losses["total"] + losses["smoothness"]
        return losses, image

    def relief_roughness(self, displacement: torch.Tensor) -> torch.Tensor:
        """Mean squared slope of the displacement [V] over the mesh's edges: (d_i - d_j)^2 / |e_ij|^2,
        dimensionless. Small for relief that rises and falls over several edges, large for spikes."""
        first, second = self.edges  # index_select: a deterministic backward (docs/architecture.md)
        step = displacement.index_select(0, first) - displacement.index_select(0, second)
        return (step.square() * self.edge_weights).mean()

    def _grounding_step_loss(self, positions: torch.Tensor, colors: torch.Tensor):
        """The grounding-space part loss on ``grounding_views`` renders at ``grounding_resolution``."""
        s = self.settings
        cameras = sample_views(s.guidance.grounding_views, s.views, s.render, self.sampling, device=self.device)
        out = self.renderer.render(
            positions, self.surface.faces, cameras, colors=colors, resolution=s.guidance.grounding_resolution
        )
        value = self.objective.grounding(out.color)
        return {"grounding": value, "total": value}, out.color[0].detach()

    def _clip_step_loss(self, positions: torch.Tensor, colors: torch.Tensor):
        """CLIP losses: global and geometry on the whole prompt, plus local crops (holistic) or
        per-part crops against the parts' phrases (part prompt)."""
        s = self.settings
        cameras = sample_views(s.views.count, s.views, s.render, self.sampling, device=self.device)
        part_mode = self.objective.part_texts is not None
        out = self.renderer.render(
            positions,
            self.surface.faces,
            cameras,
            colors=colors,
            geometry=s.guidance.geometry_crops > 0 and self.has_relief,
            attributes=self.composition.weights if part_mode else None,
        )
        losses, part_losses = self.guidance.step_losses(
            out.color, out.geometry, self.objective.text, self.sampling,
            masks=out.attributes if part_mode else None, part_texts=self.objective.part_texts)
        if part_losses is not None:  # already in the total, weighted by guidance.part_weight
            losses.update((f"part:{name}", value) for name, value in zip(self.objective.part_names, part_losses,
                                                                         strict=True) if value is not None)
        return losses, out.color[0].detach()

    def step(self) -> tuple[dict[str, float], torch.Tensor | None, bool]:
        """One iteration with the non-finite guard. Returns (loss values, front image, ok).

        The loss, its backward and the update run without waiting for the device; then one read
        brings back the loss values and whether the gradients and the updated parameters are all
        finite (on a GPU, one synchronization a step). A step that is not all finite is undone:
        the field and the optimizer go back to the last good state, exactly (:class:`LastGoodState`).
        """
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        losses, image = self.loss()
        losses["total"].backward()
        gradients_finite = all_finite(p.grad for p in self.field.parameters() if p.grad is not None)
        self.optimizer.step()
        parameters_finite = all_finite(self.field.parameters())
        *loss_values, finite = torch.stack([*(v.detach().float() for v in losses.values()),
                                            (gradients_finite & parameters_finite).float()]).tolist()
        values = dict(zip(losses, loss_values, strict=True))
        ok = finite == 1.0 and all(math.isfinite(v) for v in values.values())
        if ok:
            self.last_good.keep()
        else:
            self.last_good.restore()
        self.scheduler.step()
        self.step_index += 1
        values["learning_rate"] = lr
        return values, image, ok

    # -- the loop ------------------------------------------------------------------------------

    def run(
        self,
        *,
        on_event: EventSink = ignore_events,
        cancel: CancelToken | None = None,
        checkpoint_path: str | None = None,
        resume: bool = False,
        to_object_units: float = 1.0,
        preview_index: torch.Tensor | None = None,
    ) -> TrainResult:
        """Optimize to ``optim.iterations``. A preview event follows the first iteration of the run,
        every ``run.preview_every``-th and the last.

        Args:
            on_event: receives Stage/Step/Preview/Notice events.
            cancel: checked before every iteration; on cancel a checkpoint is written (when a
                path is given) and :class:`Cancelled` is raised.
            checkpoint_path: where to keep a resumable state every ``run.checkpoint_every`` steps.
            resume: continue from ``checkpoint_path`` (which must belong to the same run).
            to_object_units: scale of displacement in preview events (object units per unit).
            preview_index: [V] int64, for a field trained on a simplified copy: the copy's vertex of
                each original vertex, so previews have the original's vertex count.
        """
        self.preview_index = None if preview_index is None else preview_index.cpu()
        total = self.settings.optim.iterations
        if resume:
            self.load_checkpoint(checkpoint_path)
        on_event(StageEvent("optimizing", f"{total} iterations"))
        bad_in_a_row = 0
        started = time.perf_counter()
        first_step = self.step_index
        while self.step_index < total:
            if cancel is not None and cancel.cancelled:
                saved = self.save_checkpoint(checkpoint_path) if checkpoint_path else None
                raise Cancelled(f"cancelled at iteration {self.step_index} of {total}", checkpoint=saved)
            values, image, ok = self.step()
            if ok:
                bad_in_a_row = 0
                self._record(values)
            else:
                self.skipped += 1
                bad_in_a_row += 1
                on_event(NoticeEvent(f"iteration {self.step_index}: non-finite loss, gradient or update, step skipped"))
                if bad_in_a_row >= self.settings.run.nan_patience:
                    raise NumericalError(
                        f"{bad_in_a_row} iterations in a row produced non-finite values (last at {self.step_index}); "
                        "lower optim.learning_rate or field.max_displacement and run again."
                    )
            elapsed = time.perf_counter() - started
            done = self.step_index - first_step
            eta = elapsed / done * (total - self.step_index)
            on_event(
                StepEvent(
                    self.step_index,
                    total,
                    {k: v for k, v in values.items() if k != "learning_rate"},
                    values["learning_rate"],
                    elapsed,
                    eta,
                    skipped=not ok,
                )
            )
            every = self.settings.run.preview_every
            if every and (self.step_index % every == 0 or self.step_index in (first_step + 1, total)):
                on_event(self._preview(total, image, to_object_units))
            if checkpoint_path and self.step_index % self.settings.run.checkpoint_every == 0:
                self.save_checkpoint(checkpoint_path)
        colors, displacement = self._final_outputs()
        return TrainResult(
            colors, displacement, self.history, self.step_index, self.skipped, time.perf_counter() - started
        )

    def _record(self, values: dict[str, float]) -> None:
        """Append one iteration's values to the history; a key this iteration lacks (grounding and
        CLIP steps report different losses) gets NaN, so every series has one value per step."""
        done = len(self.history.get("total", []))
        for key in values.keys() - self.history.keys():
            self.history[key] = [math.nan] * done
        for key, series in self.history.items():
            series.append(values.get(key, math.nan))

    def _final_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            colors, displacement = self.outputs()
        return colors.float().cpu(), displacement.float().cpu()

    @torch.no_grad()
    def evaluate(
        self, vertices: torch.Tensor, composition: Composition, *, chunk: int = 65_536
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained field at other points: [N, 3] unit-frame positions with their own composition
        -> ([N, 3] sRGB colors, [N] unit-frame displacement), float32 on the CPU, ``chunk`` points at
        a time (memory bounded whatever N is). Used to carry a result from a simplified copy of the
        mesh to every original vertex."""
        colors, displacement = [], []
        for start in range(0, vertices.shape[0], chunk):
            part_colors, part_relief = self._decode(vertices[start:start + chunk], self.field_bfloat16)
            c, d = composition.rows(start, start + chunk).apply(part_colors, part_relief)
            colors.append(c.cpu())
            displacement.append(d.cpu())
        return torch.cat(colors), torch.cat(displacement)

    @torch.no_grad()
    def evaluate_parts(
        self, points: torch.Tensor, *, chunk: int = 65_536, bfloat16: bool | None = None,
        cancel: CancelToken | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained field's per-part outputs at [N, 3] unit-frame points: ([N, P, 3] sRGB colors,
        [N, P] relief in [-1, 1]), float32 on the CPU, ``chunk`` points at a time; the composition
        turns them into colors and displacement (``Composition.apply``). ``bfloat16``: run the
        network under bf16 autocast (None: as ``field.precision`` resolves on the run's device). ``cancel`` is checked
        before every chunk (:class:`Cancelled`)."""
        bf16 = self.field_bfloat16 if bfloat16 is None else bfloat16
        count, parts = points.shape[0], self.field.parts
        colors, relief = torch.empty(count, parts, 3), torch.empty(count, parts)
        for start in range(0, count, chunk):
            if cancel is not None:
                cancel.raise_if_cancelled()
            part_colors, part_relief = self._decode(points[start:start + chunk], bf16)
            colors[start:start + len(part_colors)] = part_colors.cpu()
            relief[start:start + len(part_colors)] = part_relief.cpu()
        return colors, relief

    def _decode(self, points: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3] unit-frame points -> the field's per-part ([N, P, 3], [N, P]) float32 on the device."""
        with bfloat16_autocast(self.device, bf16):
            part_colors, part_relief = self.field.decode(self.field.encode(points.to(self.device)))
        return part_colors.float(), part_relief.float()

    def _preview(self, total: int, image: torch.Tensor | None, scale: float) -> PreviewEvent:
        colors, displacement = self._final_outputs()
        if self.preview_index is not None:  # a simplified copy: each original vertex shows its cluster's
            colors, displacement = colors[self.preview_index], displacement[self.preview_index]
        return PreviewEvent(
            step=self.step_index,
            total=total,
            colors_srgb=colors.numpy(),
            displacement=(displacement * scale).numpy(),
            image=None if image is None else image.permute(1, 2, 0).float().cpu().numpy(),
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, path: str) -> str:
        """Write the resumable state atomically to ``path``; returns ``path``."""
        state = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "step": self.step_index,
            "skipped": self.skipped,
            "history": self.history,
            "field": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampling": self.sampling.get_state(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"  # two runs never share a temporary file
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | None) -> None:
        """Restore the state written by :meth:`save_checkpoint` for this same run."""
        if not path or not os.path.isfile(path):
            raise CheckpointError(f"no checkpoint at '{path}' to resume from; run without --resume to start anew.")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint '{path}' is unreadable ({type(exc).__name__}); delete it and start anew."
            ) from exc
        if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint '{path}' belongs to a different run (mesh, prompt, seed or settings differ); "
                "resume with the same arguments, or start anew without --resume."
            )
        self.field.load_state_dict(state["field"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampling.set_state(state["sampling"].cpu())
        self.last_good.keep()
        self.step_index = int(state["step"])
        self.skipped = int(state["skipped"])
        self.history = {k: list(v) for k, v in state["history"].items()}
