"""GPU numerics cards and order revelations in one time-boxed run (H100/H200, <= 240 s):

    python scripts/gpu_card_reveal.py OUT_DIR [--budget 240]

A driver: the session is hspi_kernels.reveal.gpu.session (see its docstring)."""

import sys

from hspi_kernels.reveal import gpu

sys.exit(gpu.main())
