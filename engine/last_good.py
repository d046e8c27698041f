"""The optimization's state as of its last good iteration, kept for the non-finite guard.

An iteration with a non-finite loss, gradient or updated parameter is undone: the field's
parameters and buffers and the optimizer's per-parameter state (Adam's moments and step count) go
back to what they were after the last good iteration. They are kept in copies allocated once
and overwritten after every good iteration, on the tensors' own devices, with one fused copy per
device and dtype (``torch._foreach_copy_``): no allocation per iteration, where a ``state_dict``
deep copy allocated and copied each of the field's tensors and each optimizer state one by one.

The learning-rate schedule is not part of the kept state: a skipped iteration still counts in the
schedule, which ``StyleTrainer.step`` advances whatever the iteration's outcome.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class LastGoodState:
    """Copies of a module's tensors and of its optimizer's per-parameter state, to undo a bad step.

    Args:
        module: whose parameters and buffers are kept (their shapes, dtypes and devices never change).
        optimizer: whose ``state`` (per parameter: a dict of tensors and plain values) is kept. The
            optimizer creates it at its first step, so the copies follow its layout when it changes.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.module_tensors = [t.detach() for t in (*module.parameters(), *module.buffers())]
        self.module_copies = [t.clone() for t in self.module_tensors]
        self.layout: list[tuple[int, str]] = []  # (parameter index, state key) of each kept optimizer tensor
        self.state_copies: list[torch.Tensor] = []
        self.state_values: dict[tuple[int, str], object] = {}  # its non-tensor entries, by value
        self.keep()

    def _optimizer_state(self) -> tuple[list[tuple[int, str]], list[torch.Tensor], dict[tuple[int, str], object]]:
        """The optimizer's live state: the layout and tensors of its tensor entries, and the rest."""
        layout, tensors, values = [], [], {}
        for index, param in enumerate(self.params):
            for key, value in self.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    layout.append((index, key))
                    tensors.append(value.detach())
                else:
                    values[(index, key)] = value
        return layout, tensors, values

    def keep(self) -> None:
        """Take the current state as the last good one."""
        _copy(self.module_copies, self.module_tensors)
        layout, tensors, self.state_values = self._optimizer_state()
        if layout == self.layout:
            _copy(self.state_copies, tensors)
        else:  # the optimizer's first step created its state: copies in its layout, once
            self.layout, self.state_copies = layout, [t.clone() for t in tensors]

    def restore(self) -> None:
        """Put the last good state back in place (state entries created since it was kept, as by
        the optimizer's first step, are removed)."""
        _copy(self.module_tensors, self.module_copies)
        layout, tensors, _ = self._optimizer_state()
        if layout == self.layout:
            _copy(tensors, self.state_copies)
        else:
            for param in self.params:
                self.optimizer.state.pop(param, None)
            for (index, key), kept in zip(self.layout, self.state_copies, strict=True):
                self.optimizer.state[self.params[index]][key] = kept.clone()
        for (index, key), value in self.state_values.items():
            self.optimizer.state[self.params[index]][key] = value


@torch.no_grad()
def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``target.copy_(source)`` for each pair: one fused copy per device and dtype of the targets."""
    groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = defaultdict(lambda: ([], []))
    for target, source in zip(targets, sources, strict=True):
        group = groups[(target.device, target.dtype, source.device, source.dtype)]
        group[0].append(target)
        group[1].append(source)
    for group_targets, group_sources in groups.values():
        torch._foreach_copy_(group_targets, group_sources)
