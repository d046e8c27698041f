"""What the engine tells its caller while it works, and how the caller asks it to stop.

Library code never prints: it calls ``on_event(event)`` with one of the dataclasses below. The
command line turns them into a progress bar; the Blender add-on into a progress bar and a live
preview. Callbacks run on the engine's thread and should return quickly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import Cancelled


@dataclass(frozen=True)
class StageEvent:
    """A stage begins: ``loading models``, ``encoding text``, ``optimizing``, ..."""

    name: str
    detail: str = ""


@dataclass(frozen=True)
class StepEvent:
    """One optimization iteration finished.

    Attributes:
        step: 1-based index of the finished iteration; ``total``: iterations of the run.
        losses: loss name -> value of this iteration (``total`` included).
        learning_rate: the rate used for this iteration.
        elapsed: seconds since optimization began; ``eta``: estimated seconds left.
        skipped: True when the step was skipped by the non-finite guard.
    """

    step: int
    total: int
    losses: dict[str, float]
    learning_rate: float
    elapsed: float
    eta: float
    skipped: bool = False


@dataclass(frozen=True)
class PreviewEvent:
    """The current result: after the first iteration, every ``run.preview_every``-th and the last.
    Step 0 is a part prompt's localization under way: each part found so far in its preview color
    (``engine.parts.part_colors``), the rest light gray, no displacement.

    Attributes:
        step: iterations done (0: still locating parts); total: iterations of the run.
        colors_srgb: [V, 3] float32 in 0..1 per vertex of the input mesh.
        displacement: [V] float32 along the vertex normal, object units.
        image: [H, W, 3] float32 the front view of this iteration's render.
    """

    step: int
    total: int
    colors_srgb: np.ndarray
    displacement: np.ndarray
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class NoticeEvent:
    """Something the user should know that does not stop the run (a skipped non-finite step...)."""

    message: str


Event = StageEvent | StepEvent | PreviewEvent | NoticeEvent
EventSink = Callable[[Event], None]


def ignore_events(_event: Event) -> None:
    """The default sink."""


class CancelToken:
    """Thread-safe cancel flag; the engine checks it at least once per iteration."""

    def __init__(self) -> None:
        self._flag = threading.Event()

    def cancel(self) -> None:
        self._flag.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.is_set()

    def raise_if_cancelled(self, checkpoint: str | None = None) -> None:
        if self._flag.is_set():
            raise Cancelled("cancelled by the user", checkpoint=checkpoint)
