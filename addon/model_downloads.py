"""The real models from inside Blender: which are on this computer, and their download as a job the
preferences show (bytes, speed, time left: ``jobs.Progress``) and Esc or Cancel stop.

The download itself is the engine's (``engine.downloads``: pinned revisions, the Hugging Face
cache); here it runs as a :class:`jobs.Job` like a stylization, so there is one job at a time and
the same Cancel. Nothing is downloaded unless Blender's *Allow Online Access* is on.
"""

from __future__ import annotations

import functools

from . import engine_link, jobs

KIND = "Download models"


def _downloads():
    return engine_link.load("downloads", light=True)


def sources() -> tuple[tuple[str, str, str, bool], ...]:
    """One ``(role, repository@revision, download size, on this computer)`` per real model."""
    size = _downloads().format_size
    return tuple((s.role, f"{s.repo_id}@{s.revision[:8]}", size(s.size_bytes), here) for s, here in _on_disk())


@functools.lru_cache(maxsize=1)
def _on_disk():
    """``(ModelSource, on this computer)`` per real model: the one look at the disk, cached because
    the preferences redraw often; :func:`refresh` forgets it."""
    downloads = _downloads()
    here = downloads.models_on_disk()
    return tuple((s, bool(here[s.role])) for s in downloads.MODEL_SOURCES)


def refresh() -> None:
    _on_disk.cache_clear()


def missing_size() -> str:
    """The download size of the models not yet here, e.g. ``1.5 GB`` ("" when all are here)."""
    total = sum(s.size_bytes for s, here in _on_disk() if not here)
    return _downloads().format_size(total) if total else ""


def start(*, threaded: bool) -> jobs.Job:
    """Start downloading the missing models (the one job of the session); the caller drains it."""

    def work(on_event, cancel):
        return _downloads().download_models(on_progress=on_event, cancel=cancel)

    return jobs.claim(jobs.Job(KIND, "", work).start(threaded=threaded))


def conclude(job: jobs.Job) -> tuple[str, str]:
    """Release a finished download job; returns ``(report level, message)``."""
    jobs.release(job)
    refresh()
    if job.state == jobs.FINISHED:
        return 'INFO', f"The real models are on this computer ({len(job.result)} models)."
    if job.state == jobs.CANCELLED:
        return 'WARNING', "Download cancelled; the files already complete are kept, the next download goes on."
    return 'ERROR', f"Download failed: {job.error}"
