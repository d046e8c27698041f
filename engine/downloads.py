"""Getting the real models onto this machine: where they come from, what is already here, and the
download itself, with progress and cancel.

    on_disk = models_on_disk()                      # {"clip": folder or None, ...}; no network
    folders = download_models(on_progress=print_bar, cancel=token)

Each model is pinned to a commit of its hub repository (:data:`MODEL_SOURCES`), so the files a run
loads are the files this project was tested with, and a run record can name them. Downloads go
file by file into the Hugging Face cache (the same layout ``huggingface_hub`` uses, so other tools
share it), weights last: a snapshot folder that holds its weights is complete. A cancelled or
failed download keeps the files it finished; the file it was downloading is discarded by
``huggingface_hub`` (it never appears under its own name), and the next call starts that file
again.

The hub is reached only through a transport, :class:`engine.hub.HubTransport` by default (any
object with its two methods will do, so tests can serve files from a folder). This module imports
no heavy library at import time: the Blender add-on may ask what is on disk before torch is installed.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import Cancelled, DownloadError
from .events import CancelToken
from .hub import HubTransport, failure_message

#: The files a model needs: config and tokenizer/processor files, and safetensors weights (never
#: pickled ``.bin`` weights, which can run code when loaded).
HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt")
ROLES = ("clip", "grounding", "segmenter")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# Progress is reported at least this often (bytes or seconds), and a file's end always.
_REPORT_BYTES = 1 << 20
_REPORT_SECONDS = 0.1
# Speed is averaged over this many seconds.
_SPEED_WINDOW = 3.0
# Room kept free beyond the download itself (the cache's bookkeeping, the file system's own needs).
_DISK_MARGIN = 64 << 20


@dataclass(frozen=True)
class ModelSource:
    """One real model: a hub repository at a pinned commit and the files of it that are needed.

    Attributes:
        role: ``clip``, ``grounding`` or ``segmenter``.
        repo_id: the hub repository, e.g. ``openai/clip-vit-base-patch32``.
        revision: the full 40-hex commit sha the files are taken from.
        patterns: glob patterns of the files needed (:data:`HUB_PATTERNS`).
        size_bytes: the download size of those files at ``revision`` (approximate; for display
            before the download, which measures the real sizes).
        license: the license the weights are published under.
    """

    role: str
    repo_id: str
    revision: str
    patterns: tuple[str, ...]
    size_bytes: int
    license: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown model role {self.role!r}; one of {', '.join(ROLES)}")
        if not _COMMIT.fullmatch(self.revision or ""):
            raise ValueError(f"{self.repo_id}: revision must be a full 40-hex commit sha, not {self.revision!r}")

    def wants(self, filename: str) -> bool:
        """Whether a file of the repository is one of those needed (matches :attr:`patterns`)."""
        return any(fnmatch.fnmatch(filename, pattern) for pattern in self.patterns)


# Sizes: the files that HUB_PATTERNS selects at each revision, as the hub lists them.
MODEL_SOURCES: tuple[ModelSource, ...] = (
    # The repository's main branch holds pytorch_model.bin only; refs/pr/15 ("Adding `safetensors`
    # variant of this model") adds model.safetensors (605,157,884 bytes) to the same files. The hub
    # card names no license; OpenAI released CLIP under MIT.
    ModelSource("clip", "openai/clip-vit-base-patch32", "b33cedfd0df4e43b8238760678fcc89e1a0d38b3",
                HUB_PATTERNS, 608_774_393, "MIT"),
    # main's head: model.safetensors 689,359,096 bytes plus config, processor and tokenizer files.
    ModelSource("grounding", "IDEA-Research/grounding-dino-tiny", "a2bb814dd30d776dcf7e30523b00659f4f141c71",
                HUB_PATTERNS, 690_305_545, "Apache-2.0"),
    # SAM 2 hiera-tiny in transformers' format: config.json (1.74 kB) and model.safetensors (156 MB).
    ModelSource("segmenter", "facebook/sam2-hiera-tiny-hf", "e6ccaf46dd72dacb98108826ddef8b81b36d3b1e",
                HUB_PATTERNS, 156_000_000, "Apache-2.0"),
)


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands; sent to ``on_progress`` at least every MB or 0.1 s, and at each file's end.

    Attributes:
        repo_id, filename: the file being downloaded.
        done_bytes: bytes done over the whole download (never decreases).
        total_bytes: bytes of the whole download (the files missing when it began).
        bytes_per_second: the speed averaged over the last few seconds (0 at the start).
        seconds_left: the estimated time left at that speed, or None before there is a speed.
    """

    repo_id: str
    filename: str
    done_bytes: int
    total_bytes: int
    bytes_per_second: float
    seconds_left: float | None

    @property
    def fraction(self) -> float:
        """done / total in 0..1 (1 for an empty download)."""
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 1.0


ProgressSink = Callable[[DownloadProgress], None]


class Transport(Protocol):
    """Where model files come from (the hub, or a test's folder)."""

    def list_files(self, source: ModelSource) -> dict[str, int]:
        """The files of ``source`` at its revision that match its patterns -> their sizes in bytes."""

    def fetch(self, source: ModelSource, filename: str, *, cache_dir: str, on_bytes: Callable[[int], None]) -> str:
        """Download one file into the cache's snapshot folder of ``source``; returns its path there.
        ``on_bytes(n)`` is called as bytes arrive (it may raise :class:`Cancelled`, which must propagate)."""


def default_cache_dir() -> str:
    """The Hugging Face cache folder: huggingface_hub's, or the same rule without it
    (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/...``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        pass
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def snapshot_folder(source: ModelSource, cache_dir: str | None = None) -> str:
    """The cache's folder for ``source`` at its revision (whether or not it exists)."""
    repo_folder = "models--" + source.repo_id.replace("/", "--")
    return os.path.join(cache_dir or default_cache_dir(), repo_folder, "snapshots", source.revision)


def local_snapshot(source: ModelSource, cache_dir: str | None = None) -> str | None:
    """The snapshot folder of ``source`` if it holds a complete model, else None. No network.

    Complete: ``config.json`` and the weights (every shard a ``model.safetensors.index.json`` names,
    else a ``*.safetensors``); weights are downloaded last, so their presence means the rest is there.
    """
    folder = snapshot_folder(source, cache_dir)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                shards = set(json.load(fh)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return folder if all(os.path.isfile(os.path.join(folder, s)) for s in shards) else None
    weights = [n for n in os.listdir(folder) if n.endswith(".safetensors")]
    return folder if any(os.path.isfile(os.path.join(folder, n)) for n in weights) else None


def models_on_disk(cache_dir: str | None = None,
                   sources: Sequence[ModelSource] = MODEL_SOURCES) -> dict[str, str | None]:
    """role -> the local snapshot folder of each source at its pinned revision, or None. No network."""
    return {source.role: local_snapshot(source, cache_dir) for source in sources}


def source_for(repo_id: str) -> ModelSource:
    """The :data:`MODEL_SOURCES` entry of a hub repository."""
    for source in MODEL_SOURCES:
        if source.repo_id == repo_id:
            return source
    raise ValueError(f"'{repo_id}' is not one of the pinned models ({', '.join(s.repo_id for s in MODEL_SOURCES)})")


def download_models(
    sources: Sequence[ModelSource] = MODEL_SOURCES,
    *,
    cache_dir: str | None = None,
    on_progress: ProgressSink | None = None,
    cancel: CancelToken | None = None,
    transport: Transport | None = None,
) -> list[str]:
    """Download what is missing of ``sources`` into the cache; returns their snapshot folders, in order.

    Models already complete on disk cost no network. ``on_progress`` receives
    :class:`DownloadProgress` on the calling thread; ``cancel`` stops the download within one chunk
    (about 1 MB) and raises :class:`Cancelled`; finished files are kept, so the next call continues.
    Raises :class:`DownloadError` when the hub cannot be reached, refuses, or the disk is full.
    """
    cache = os.path.abspath(cache_dir or default_cache_dir())
    transport = transport or HubTransport()
    plan: list[tuple[ModelSource, list[tuple[str, int]]]] = []
    for source in sources:
        if local_snapshot(source, cache):
            continue
        _check_cancel(cancel)
        files = _hub_call(lambda s=source: transport.list_files(s), source, cache, source.size_bytes)
        _require_loadable(source, files)
        folder = snapshot_folder(source, cache)
        missing = sorted(((name, size) for name, size in files.items()
                          if not os.path.isfile(os.path.join(folder, name))),
                         key=lambda item: (item[0].endswith(".safetensors"), item[0]))
        plan.append((source, missing))
    meter = _Meter(sum(size for _, files in plan for _, size in files), on_progress)
    if meter.total:
        _check_disk_space(cache, meter.total)
    for source, files in plan:
        for name, size in files:
            _check_cancel(cancel)
            meter.start(source.repo_id, name, size)

            def on_bytes(n: int) -> None:
                _check_cancel(cancel)
                meter.add(n)

            _hub_call(lambda s=source, f=name, cb=on_bytes: transport.fetch(s, f, cache_dir=cache, on_bytes=cb),
                      source, cache, meter.total - meter.finished)
            meter.finish()
        if not local_snapshot(source, cache):
            raise DownloadError(f"the download of '{source.repo_id}' finished but '{snapshot_folder(source, cache)}' "
                                "does not hold config.json and safetensors weights; run it again.")
    return [snapshot_folder(source, cache) for source in sources]


def format_size(n: float) -> str:
    """Bytes as the hub shows them (decimal units): ``605 MB``, ``1.2 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise Cancelled("download cancelled by the user; files finished so far are kept, run it again to continue")


def _require_loadable(source: ModelSource, files: dict[str, int]) -> None:
    """The listing holds a config and safetensors weights, or the pinned commit is not what we expect."""
    if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
        raise DownloadError(
            f"'{source.repo_id}' at revision {source.revision} lists no config.json and safetensors weights "
            f"({', '.join(sorted(files)) or 'no files'}); the pinned revision does not hold a loadable model. "
            "Use --models tiny, or a folder of models (--models FOLDER)."
        )


def _free_bytes(cache: str) -> int | None:
    """Free bytes on the disk that holds (or will hold) ``cache``; None where it cannot be told."""
    existing = cache
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def _check_disk_space(cache: str, needed: int) -> None:
    """Raise :class:`DownloadError` when the cache's disk has less than ``needed`` bytes (plus a margin) free."""
    free = _free_bytes(cache)
    if free is not None and free < needed + _DISK_MARGIN:
        raise _disk_full(cache, needed)


def _disk_full(cache: str, needed: int) -> DownloadError:
    """The disk-full message: what the download needs, and how much to free where."""
    free = _free_bytes(cache) or 0
    short = max(needed + _DISK_MARGIN - free, _DISK_MARGIN)
    return DownloadError(
        f"not enough disk space for the models: the download needs {format_size(needed)} more in '{cache}' "
        f"({format_size(free)} free); free {format_size(short)} there (or set HF_HUB_CACHE to a disk with room) "
        "and run it again, or use --models tiny."
    )


def _hub_call(call, source: ModelSource, cache: str, needed: int):
    """Run a transport call, turning the hub's and the network's errors into :class:`DownloadError`;
    ``needed``: the bytes still to download, for a disk-full message."""
    try:
        return call()
    except Cancelled:
        raise
    except Exception as exc:
        raise _download_error(exc, source, cache, needed) from exc


def _download_error(exc: Exception, source: ModelSource, cache: str, needed: int) -> DownloadError:
    """A message that names the problem and the fix for whatever a download raised."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return _disk_full(cache, needed)
    return DownloadError(failure_message(exc, f"'{source.repo_id}' (revision {source.revision[:8]})"))


class _Meter:
    """Counts bytes over a whole download and reports :class:`DownloadProgress`, throttled, with the
    speed averaged over a short window."""

    def __init__(self, total: int, sink: ProgressSink | None, clock: Callable[[], float] = time.monotonic):
        self.total = int(total)
        self.sink = sink
        self.clock = clock
        self.finished = 0  # bytes of the files already done
        self.received = 0  # bytes of the current file
        self.size = 0
        self.repo_id = self.filename = ""
        self.reported = 0
        self.last_time = clock()
        self.samples: deque[tuple[float, int]] = deque([(self.last_time, 0)])

    def start(self, repo_id: str, filename: str, size: int) -> None:
        self.repo_id, self.filename, self.size, self.received = repo_id, filename, int(size), 0
        self._report(force=True)

    def add(self, n: int) -> None:
        self.received += n
        self._report(force=False)

    def finish(self) -> None:
        self.finished += max(self.size, self.received)
        self.received = self.size = 0
        self._report(force=True)

    def _report(self, *, force: bool) -> None:
        done = max(self.reported, self.finished + max(0, self.received))
        now = self.clock()
        if not force and done - self.reported < _REPORT_BYTES and now - self.last_time < _REPORT_SECONDS:
            return
        self.total = max(self.total, done)
        self.reported, self.last_time = done, now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= _SPEED_WINDOW:
            self.samples.popleft()
        first_time, first_done = self.samples[0]
        speed = (done - first_done) / (now - first_time) if now > first_time else 0.0
        left = (self.total - done) / speed if speed > 0 else None
        if self.sink is not None:
            self.sink(DownloadProgress(self.repo_id, self.filename, done, self.total, speed, left))
