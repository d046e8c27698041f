"""The engine's own processes keep freed memory for reuse (glibc's malloc on Linux).

glibc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
unmaps it on ``free``, so the next block of that size is mapped again and each of its pages
faults, and is zeroed by the kernel, on first touch. A run allocates and frees such blocks
hundreds of times: a Grounding DINO encoder layer at 512 px holds [5440, 2048] floats (44 MB) in
its feed-forward layer, SAM 2 at 1024 px larger ones. On a 2-core CPU that cost about a tenth of a
grounding step and a sixth of a localization, all of it in the kernel (docs/performance.md, "Freed
memory kept").

:func:`keep_freed_memory` makes malloc serve those blocks from its heap and keep what is freed
there for the next block: the same arithmetic, no page faults after the first. It changes the
whole process, so only the engine's own processes call it (``python -m engine`` and the Ray workers
of ``batch --ray``, which the engine starts and ends); library callers such as Blender keep their
process's allocator as it is. The process's resident memory then stays near its peak until it
exits, which the peak already required.
"""

from __future__ import annotations

import ctypes
import os

#: set to 0 to leave malloc as it is in ``python -m engine``
KEEP_FREED_MEMORY_VARIABLE = "PARTSTYLE_KEEP_FREED_MEMORY"
# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory at the top of the heap kept from the system: mallopt takes an int (2 GiB - 1 at most).
_KEPT_BYTES = 2**31 - 1


def uses_glibc() -> bool:
    """Whether this process's C library is glibc (whose malloc :func:`keep_freed_memory` sets)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is glibc's: other systems and C libraries do not know it
        return False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap (no ``mmap`` per block) and to keep
    freed memory for reuse (no trimming below 2 GiB of free memory).

    Returns True when malloc took both settings; False on other C libraries and systems (nothing
    to do there), or when ``PARTSTYLE_KEEP_FREED_MEMORY=0`` asks to leave malloc as it is.
    """
    if os.environ.get(KEEP_FREED_MEMORY_VARIABLE, "1").strip() == "0":
        return False
    if not uses_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES) == 1
