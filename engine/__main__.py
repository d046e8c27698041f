"""``python -m engine``: see :mod:`engine.cli`.

Apple GPUs' CPU fallback is switched on before anything imports torch (PyTorch reads it once, on
import); a value the user set is kept. See :func:`engine.devices.enable_mps_fallback`.
"""

import sys

from .devices import enable_mps_fallback

enable_mps_fallback()

from .cli import main  # noqa: E402  (after the fallback: importing the command line imports torch)

sys.exit(main())
