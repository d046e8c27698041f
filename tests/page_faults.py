"""Page faults of a steady workload with large blocks, counted in the calling process (test helper).

The workload is a feed-forward layer at Grounding DINO's size at 512 px: its [5440, 2048] float
activations (44 MB each) lie above glibc's largest mmap threshold (32 MB), as a run's do.
"""

from __future__ import annotations

import resource
import statistics

from engine.allocator import uses_glibc

#: minor page faults of one [5440, 2048] float block
BLOCK_PAGES = 5440 * 2048 * 4 // 4096
#: whether the C library is glibc, whose malloc engine.allocator sets (other C libraries are left as they are)
GLIBC = uses_glibc()
NOT_GLIBC = "the setting is glibc's malloc's; other C libraries are left as they are"


def steady_step_faults(steps: int = 24, last: int = 16) -> float:
    """Median minor page faults of a step, over the ``last`` of ``steps`` forward and backward steps
    of the layer. A kept heap settles within about 8 steps and may still grow by a block now and
    then (a step faulting one block's pages); the median reads the steady state."""
    import torch

    tokens = torch.rand(5440, 256)
    expand = torch.rand(256, 2048, requires_grad=True)
    reduce = torch.rand(2048, 256, requires_grad=True)

    def step_faults() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        (torch.relu(tokens @ expand) @ reduce).sum().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    return statistics.median([step_faults() for _ in range(steps)][-last:])
