"""``python -m engine``: see :mod:`engine.cli`.

Settings of the process itself come first, before anything imports torch:
- Apple GPUs' CPU fallback is switched on (PyTorch reads it once, on import); a value the user set
  is kept. See :func:`engine.devices.enable_mps_fallback`.
- glibc's malloc keeps freed memory for the next large block instead of mapping fresh pages for
  each (``PARTSTYLE_KEEP_FREED_MEMORY=0`` leaves it as it is). See :mod:`engine.allocator`.
- Python's garbage collector neither walks the imported modules again, nor runs full collections
  while the models' code imports, nor, at exit, walks everything the command kept. See
  :mod:`engine.collector`.
- transformers' in-forward tensor checks, each a wait for a GPU, are skipped (a value of
  ``TRANSFORMERS_DISABLE_TORCH_CHECK`` the user set is kept). See :func:`engine.compat.skip_tensor_checks`.
"""

import sys

from .allocator import keep_freed_memory
from .collector import collect_in_larger_steps, exit_without_collecting, kept_for_good
from .compat import skip_tensor_checks
from .devices import enable_mps_fallback

enable_mps_fallback()
keep_freed_memory()
skip_tensor_checks()

with kept_for_good():  # after the fallback: importing the command line imports torch
    from .cli import main
collect_in_larger_steps()

status = main()
exit_without_collecting()
sys.exit(status)
