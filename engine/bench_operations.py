"""The operations a piece of torch work dispatches that compute something: on a GPU, one kernel
launch each (or a few), whatever their size.

On a GPU a step of a run waits on the host issuing its kernels more than on the kernels themselves
(docs/performance.md, "CUDA": 25% busy on an H200), so the count is the figure that a change meant
for the GPU must lower; it is the same on every device, so it is measured on a CPU too.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable

import torch
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
            self.record(name)
        return func(*args, **(kwargs or {}))

    def record(self, name: str) -> None:
        """Count one computing operation named ``name``."""
        self.by_name[name] += 1


#: The engine package's folder, to tell its functions from the libraries'.
ENGINE_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


class OperationsByFunction(OperationCounter):
    """An :class:`OperationCounter` that also counts each operation under the engine function that
    dispatched it (``by_function``): ``"guidance/clip.py:segment_losses"`` for one of the forward's, and
    ``"backward of guidance/clip.py:segment_losses"`` for one of the backward's, whose autograd node
    that forward function made. The backward's need anomaly mode's tracebacks (``torch.autograd.
    detect_anomaly``, which :func:`operations_by_function` turns on); without them a backward operation
    is counted under its node's name. An operation no engine function dispatched: ``"outside the engine"``."""

    def __init__(self):
        super().__init__()
        self.by_function: Counter[str] = Counter()

    def record(self, name: str) -> None:
        super().record(name)
        self.by_function[_dispatching_function()] += 1


def operations_by_function(work: Callable[[], object]) -> OperationsByFunction:
    """``work()``'s computing operations counted by name and by the engine function that dispatched
    them (:class:`OperationsByFunction`), with anomaly mode's tracebacks for the backward's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")  # on purpose here
        with torch.autograd.detect_anomaly(check_nan=False), OperationsByFunction() as counter:
            work()
    return counter


def _dispatching_function() -> str:
    """Where the operation being dispatched comes from: the innermost engine function on the stack,
    or for a backward operation the innermost engine function in its node's forward traceback."""
    node = torch._C._current_autograd_node()
    if node is not None:
        frames = _TRACEBACK_FRAME.findall("".join(node.metadata.get("traceback_", ())))
        inner = [f"{path[len(ENGINE_FOLDER):]}:{function}" for path, function in frames
                 if path.startswith(ENGINE_FOLDER)]
        return f"backward of {inner[-1]}" if inner else f"backward of {node.name()}"
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(ENGINE_FOLDER) and path != __file__:
            return f"{path[len(ENGINE_FOLDER):]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "outside the engine"


def operations_of(work: Callable[[], object]) -> int:
    """The computing operations ``work()`` dispatches (:class:`OperationCounter`)."""
    with OperationCounter() as counter:
        work()
    return counter.total
