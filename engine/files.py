"""Writing files so that a failure never leaves a half-written file or damages an older one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


# -- the output folder: one writer at a time, results swapped in all or nothing --------------------
#
# A run writes its files into a hidden staging folder inside the output folder, then commits them:
# it writes a journal naming the staging folder and the files, moves the files into place, and
# removes the journal. A process killed during the moves leaves the journal, and the next run on
# that folder (or :func:`recover_output`) finishes them, so readers never keep a mix of old and new
# files; a process killed while writing leaves a staging folder without a journal, which the next
# run removes. A lock file keeps two runs from writing one folder at once.

LOCK_FILE = ".partstyle.lock"
JOURNAL_FILE = ".partstyle-commit.json"
STAGING_PREFIX = ".partstyle-"


@contextmanager
def output_lock(folder: str, *, option: str = "--out") -> Iterator[None]:
    """Hold the output ``folder`` (created if needed) for one run; :class:`OutputError` if another holds it.

    An operating-system lock on ``folder/.partstyle.lock`` (flock on Linux and macOS, msvcrt on
    Windows): it is released when the run ends, also when the process dies. Recovers the folder
    (:func:`recover_output`) once held.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    handle = open(path, "a+b")  # noqa: SIM115 - held for the whole block
    try:
        _lock(handle)
        if os.name != "nt" and os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
            raise OSError("the lock file was replaced while locking")  # its holder just finished and removed it
    except OSError:
        handle.close()
        raise OutputError(
            f"another Partstyle run is writing to {option} {folder}; wait for it to finish or choose another folder."
        ) from None
    try:
        recover_output(folder)
        yield
    finally:
        if os.name != "nt":  # removed while still held, so no later run can lock this same file
            with contextlib.suppress(OSError):
                os.remove(path)
        _unlock(handle)
        handle.close()


def _lock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def commit_staged(staging: str, folder: str, names: tuple[str, ...]) -> dict[str, str]:
    """Move ``names`` from ``staging`` (inside ``folder``) into ``folder`` as one change; returns name -> path.

    Every file must already be complete in ``staging``. The journal is written first, so a commit
    cut short is finished by :func:`recover_output`.
    """
    journal = os.path.join(folder, JOURNAL_FILE)
    with atomic_writer(journal) as fh:
        fh.write(json.dumps({"staging": os.path.basename(staging), "names": list(names)}).encode())
    paths = _roll_forward(folder, os.path.basename(staging), names)
    os.remove(journal)
    shutil.rmtree(staging, ignore_errors=True)
    return paths


def _roll_forward(folder: str, staging_name: str, names) -> dict[str, str]:
    paths = {}
    for name in names:
        source, target = os.path.join(folder, staging_name, name), os.path.join(folder, name)
        if os.path.exists(source):
            os.replace(source, target)
        paths[name] = target
    return paths


def recover_output(folder: str) -> list[str]:
    """Finish a commit that was cut short and remove staging folders left by killed runs.

    Call only while holding :func:`output_lock` (another run's staging folder would look stale).
    Returns what was done, for a notice.
    """
    done = []
    journal = os.path.join(folder, JOURNAL_FILE)
    if os.path.isfile(journal):
        try:
            with open(journal, encoding="utf-8") as fh:
                entry = json.load(fh)
            staging_name, names = str(entry["staging"]), [str(n) for n in entry["names"]]
        except (OSError, ValueError, KeyError, TypeError):
            staging_name, names = "", []  # an unreadable journal: its commit had not started
        if staging_name.startswith(STAGING_PREFIX) and os.sep not in staging_name and "/" not in staging_name:
            _roll_forward(folder, staging_name, [n for n in names if os.path.basename(n) == n])
            done.append(f"finished the interrupted writing of {', '.join(names)}")
        os.remove(journal)
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False) and entry.name.startswith(STAGING_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)
            done.append(f"removed the unfinished {entry.name}")
    return done
