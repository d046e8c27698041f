"""The operations a piece of torch work dispatches that compute something: on a GPU, one kernel
launch each (or a few), whatever their size.

On a GPU a step of a run waits on the host issuing its kernels more than on the kernels themselves
(docs/performance.md, "CUDA": 25% busy on an H200), so the count is the figure that a change meant
for the GPU must lower; it is the same on every device, so it is measured on a CPU too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode

#: Operations that compute nothing: they allocate, reshape without copying, read a value back or
#: mark a profiler range (views are recognised by their schema; ``_unsafe_view`` is one without it).
NON_COMPUTING = frozenset({"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like", "lift_fresh",
                           "_unsafe_view", "_local_scalar_dense", "resize_", "set_", "_record_function_enter_new",
                           "_record_function_exit"})


class OperationCounter(TorchDispatchMode):
    """Counts, by name, the computing operations dispatched on the thread that entered it: every
    operation except views (``view``, ``transpose``, ``expand``, ``detach``...) and those in
    :data:`NON_COMPUTING`. Operations an operation runs inside itself are not counted again."""

    def __init__(self):
        super().__init__()
        self.by_name: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NON_COMPUTING:
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))


def operations_of(work: Callable[[], object]) -> int:
    """The computing operations ``work()`` dispatches (:class:`OperationCounter`)."""
    with OperationCounter() as counter:
        work()
    return counter.total
