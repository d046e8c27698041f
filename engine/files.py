"""Writing files so that a failure never leaves a half-written file or damages an older one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import OutputError


def check_output_folder(path: str, *, option: str = "--out") -> None:
    """Raise :class:`OutputError` unless results can be written into the folder ``path``.

    Checked before any work starts, by trying it: the folder (and its parents) must exist or be
    creatable, and a file must be creatable in it. Whatever the check created is removed again.
    """
    if not str(path).strip():
        raise OutputError(f"{option} is empty; name the folder for the results.")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{option} {path} exists and is not a folder; name a folder for the results.")
    missing = []
    probe_dir = path
    while not os.path.exists(probe_dir):
        missing.append(probe_dir)
        probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
        raise OutputError(f"{option} {path}: {probe_dir} is a file, not a folder.")
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f".partstyle-write-check-{uuid.uuid4().hex[:8]}"), "xb") as fh:
            probe = fh.name
        os.remove(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path} cannot be written ({exc.strerror or exc}); choose another folder.") \
            from None
    finally:
        for folder in missing:  # deepest first: only what this check created, and only if still empty
            try:
                os.rmdir(folder)
            except OSError:
                break


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only when the block finishes without error.

    The temporary file sits next to ``path`` (same file system, so the final rename is atomic) and
    is created with ``open``, so it gets the usual permissions of the user's umask.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
