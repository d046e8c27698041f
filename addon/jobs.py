"""Runs engine work inside Blender: on a worker thread, or synchronously in ``--background``.

The worker never touches ``bpy``. Everything it has to say goes into a ``queue.Queue`` as
messages; :func:`drain` empties the queue on the main thread - called by the modal operator's
timer in the UI, directly after the run in background mode, and directly by the tests (timers
never fire in the ``bpy`` module). It is a plain function: no timer, no context.

A *work* callable has the signature ``work(on_event, cancel) -> result``; ``on_event`` receives
the engine's events (:mod:`engine.events`), ``cancel`` is the engine's ``CancelToken``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import engine_link

RUNNING, FINISHED, FAILED, CANCELLED = "RUNNING", "FINISHED", "FAILED", "CANCELLED"
_EVENT, _DONE, _ERROR = "event", "done", "error"
log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the panel shows about a running job: iterations, or bytes for a download (``speed`` set).

    ``eta`` is None while a download's time left is not known yet.
    """

    stage: str = "starting"
    step: int = 0
    total: int = 0
    eta: float | None = 0.0
    loss: float | None = None
    speed: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def text(self) -> str:
        """``stage``, ``12/300, 1:05 left`` or ``120 MB of 1.5 GB, 12 MB/s, 1:05 left``."""
        if not self.total:
            return self.stage.capitalize()
        if self.speed is None:
            done = f"{self.step}/{self.total}"
        else:
            size = engine_link.load("downloads", light=True).format_size
            done = f"{size(self.step)} of {size(self.total)}, {size(self.speed)}/s"
        if self.eta is None:
            return done
        minutes, seconds = divmod(round(self.eta), 60)
        return f"{done}, {minutes}:{seconds:02d} left"


class Job:
    """One piece of engine work for one object, known by name (never by reference).

    Attributes:
        kind: what it does, for messages (``Stylize``, ``Locate parts``).
        object_name: the object it works on.
        state: RUNNING until :func:`drain` sees the end; then FINISHED, FAILED or CANCELLED.
        result / error: the work's return value, or the exception it raised.
        progress: the latest stage and step.
        notices: the engine's notices (non-fatal), in order.
        watch: called by :func:`drain` (main thread) while the job runs; a message it returns (the
            object was deleted...) cancels the job, and is kept as ``stop_reason``.
    """

    def __init__(self, kind: str, object_name: str, work: Callable[[Callable, Any], Any],
                 *, listener: Callable[[Any], None] | None = None, watch: Callable[[], str | None] | None = None):
        self.kind = kind
        self.object_name = object_name
        self.work = work
        self.listener = listener
        self.watch = watch
        self.stop_reason: str | None = None
        self.cancel_token = engine_link.load("events", light=True).CancelToken()
        self.messages: queue.Queue = queue.Queue()
        self.state = RUNNING
        self.result = None
        self.error: BaseException | None = None
        self.progress = Progress()
        self.notices: list[str] = []
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.thread: threading.Thread | None = None

    def _on_event(self, event) -> None:
        """Called by the engine on the thread that runs the work."""
        if self.listener is not None:
            self.listener(event)
        self.messages.put((_EVENT, event))

    def _run(self) -> None:
        try:
            value = self.work(self._on_event, self.cancel_token)
        except Exception as exc:  # everything goes back to the main thread, nothing is lost
            self.messages.put((_ERROR, exc))
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: also stop a synchronous caller
            self.messages.put((_ERROR, exc))
            if self.thread is None:
                raise
        else:
            self.messages.put((_DONE, value))

    def start(self, *, threaded: bool) -> Job:
        """Run the work on a daemon thread (``threaded``) or right here, to the end."""
        if threaded:
            self.thread = threading.Thread(target=self._run, name=f"partstyle-{self.kind}", daemon=True)
            self.thread.start()
        else:
            self._run()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next check (at least once per iteration)."""
        self.cancel_token.cancel()

    @property
    def cancelling(self) -> bool:
        return self.state == RUNNING and self.cancel_token.cancelled


def drain(job: Job, on_preview: Callable[[Any], None] | None = None) -> str:
    """Handle every message the worker queued so far; returns the job's state.

    First asks ``job.watch`` whether the job should go on (a message cancels it: the engine stops
    at its next check). Updates ``job.progress`` and ``job.notices``; calls ``on_preview`` once with
    the newest preview event, if any arrived (older previews are superseded) and the job was not
    stopped; at the end sets ``job.state`` with ``job.result`` or ``job.error``. Main thread only
    (``watch`` reads and ``on_preview`` writes Blender's data).
    """
    if job.state == RUNNING and job.stop_reason is None and job.watch is not None:
        job.stop_reason = job.watch()
        if job.stop_reason is not None:
            job.cancel()
    events = load_events()
    preview = None
    while True:
        try:
            kind, payload = job.messages.get_nowait()
        except queue.Empty:
            break
        if kind == _EVENT:
            if isinstance(payload, events.PreviewEvent):
                preview = payload
            elif isinstance(payload, events.StepEvent):
                job.progress.step, job.progress.total, job.progress.eta = payload.step, payload.total, payload.eta
                job.progress.loss = payload.losses.get("total")
                job.progress.stage = "optimizing"
            elif isinstance(payload, events.StageEvent):
                job.progress.stage = payload.name
            elif isinstance(payload, events.NoticeEvent):
                job.notices.append(payload.message)
            elif hasattr(payload, "done_bytes"):  # engine.downloads.DownloadProgress
                job.progress.step, job.progress.total = payload.done_bytes, payload.total_bytes
                job.progress.eta, job.progress.speed = payload.seconds_left, payload.bytes_per_second
                job.progress.stage = "downloading"
        elif kind == _DONE:
            job.state, job.result = FINISHED, payload
        else:
            job.error = payload
            job.state = CANCELLED if isinstance(payload, events.Cancelled) else FAILED
            if job.state == FAILED and not isinstance(payload, engine_link.user_errors()):
                log.error("Partstyle %s failed", job.kind, exc_info=payload)
    if preview is not None and on_preview is not None and job.state != CANCELLED and job.stop_reason is None:
        on_preview(preview)
    if job.state != RUNNING:
        job.seconds = time.perf_counter() - job.started
    return job.state


def load_events():
    """The engine's events module (numpy only)."""
    return engine_link.load("events", light=True)


# --- the one job at a time -----------------------------------------------------------------------

_current: Job | None = None


def current() -> Job | None:
    """The job started and not yet concluded, if any."""
    return _current


def claim(job: Job) -> Job:
    """Register ``job`` as the running one."""
    global _current
    _current = job
    return job


def release(job: Job | None = None) -> None:
    """Forget the running job (``job``: only if it is that one)."""
    global _current
    if job is None or _current is job:
        _current = None


def abandon() -> None:
    """Cancel and forget the running job (a new file is being loaded, the add-on unregisters)."""
    job = _current
    if job is not None:
        job.cancel()
    release()
