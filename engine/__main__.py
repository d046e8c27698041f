"""``python -m engine``: see :mod:`engine.cli`.

Two settings of the process itself come first, before anything imports torch:
- Apple GPUs' CPU fallback is switched on (PyTorch reads it once, on import); a value the user set
  is kept. See :func:`engine.devices.enable_mps_fallback`.
- glibc's malloc keeps freed memory for the next large block instead of mapping fresh pages for
  each (``PARTSTYLE_KEEP_FREED_MEMORY=0`` leaves it as it is). See :mod:`engine.allocator`.
"""

import sys

from .allocator import keep_freed_memory
from .devices import enable_mps_fallback

enable_mps_fallback()
keep_freed_memory()

from .cli import main  # noqa: E402  (after the fallback: importing the command line imports torch)

sys.exit(main())
