"""The optimization loop both tiny models train with: a step or time limit, warm-up and cosine
learning rate, optional gradient clipping, a smoothed loss for the progress callback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def scheduled_rate(base: float, step: int, max_steps: int, elapsed: float, budget: float, warmup: int = 50) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 over the run, whose length is
    whichever limit ends it first: ``max_steps`` or the time ``budget`` (seconds)."""
    progress = min(1.0, max(elapsed / budget, step / max_steps))
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[], torch.Tensor],
    *,
    learning_rate: float,
    max_steps: int,
    minutes: float,
    warmup: int,
    smoothing: float,
    clip_norm: float | None = None,
    on_progress: Callable[[int, float, float], None] | None = None,
) -> tuple[int, float]:
    """Step ``optimizer`` on ``batch_loss()`` (a fresh batch each call) until ``max_steps`` or
    ``minutes`` are spent. Returns ``(steps, loss)``: the loss smoothed as
    ``smoothing * previous + (1 - smoothing) * current`` (NaN when no step ran)."""
    started = time.perf_counter()
    budget = minutes * 60.0
    step, smoothed = 0, None
    while step < max_steps and time.perf_counter() - started < budget:
        rate = scheduled_rate(learning_rate, step, max_steps, time.perf_counter() - started, budget, warmup)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        smoothed = value if smoothed is None else smoothing * smoothed + (1.0 - smoothing) * value
        if on_progress is not None:
            on_progress(step, smoothed, time.perf_counter() - started)
    return step, float("nan") if smoothed is None else smoothed
