"""The engine's own processes do not make Python's garbage collector walk what they keep for good.

CPython's cyclic collector looks for garbage among every object it tracks, and a full collection
walks them all. A ``python -m engine stylize`` command tracks some 380,000 objects once it has
imported torch and transformers and built the models (modules, functions, classes, the models'
layers), nearly all of which live until the process ends. While they are made, the collector runs
its full collections every time their number grows by a quarter; at exit, interpreter teardown
walks them all again. On a 2-core CPU that was about 0.9 s of full collections during set-up and
1.1 s of teardown, of a 7.6 s one-iteration command (docs/performance.md, "A fresh command's fixed
seconds").

So ``python -m engine`` imports its command line inside :func:`kept_for_good` (no collection while
the modules load; then they are frozen: later collections skip them), collects in larger steps for
the rest of the command (:func:`collect_in_larger_steps`: the model code a run imports later, some
300,000 objects more, no longer sets off full collections) and calls :func:`exit_without_collecting`
once its command is done. All three change the whole interpreter, so only the engine's own entry
point calls them; library callers such as Blender keep theirs as it is.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# New container objects between two collections of the youngest generation, for the engine's own
# processes; CPython's is 700. A full collection comes after 10 x 10 young ones: every 70,000 objects
# by default, every 1,000,000 with this. A run's loop makes almost no containers that live (a
# 30-iteration `fast` run makes two young collections more than a 1-iteration one), so what changes is
# the imports.
YOUNG_COLLECTION_EVERY = 10_000


@contextlib.contextmanager
def kept_for_good() -> Iterator[None]:
    """Run the block (the imports of a command) with the collector paused, then freeze every tracked
    object (``gc.freeze``): later collections, full ones included, no longer walk them. An object
    frozen here is never collected, so the block should make what the process keeps anyway. The
    collector's enabled state is restored."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def collect_in_larger_steps() -> None:
    """Collect the youngest generation every :data:`YOUNG_COLLECTION_EVERY` new container objects
    (unless it is already rarer), the older generations' thresholds kept.

    Importing transformers' model code while the models load makes some 300,000 objects the process
    keeps; at CPython's threshold that set off four full collections of a few hundred thousand objects
    each (0.25-0.36 s of a 2-core CPU's fresh command), with this none. Cyclic garbage waits a little
    longer for its collection: at most 10,000 new containers."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_EVERY), middle, old)


def exit_without_collecting() -> None:
    """Freeze every tracked object, for a process about to exit: interpreter teardown then skips the
    collections that would walk them (the operating system takes the memory back). ``atexit``
    handlers and the flushing of open files still run; a ``__del__`` of an object caught in a
    reference cycle may not, which Python never promises at exit anyway."""
    gc.freeze()
