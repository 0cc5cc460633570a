"""The single-instruction tensor-core blocks against the sm_90 block model, on any CPU:

    python scripts/analyse_tc_blocks.py [--show N] [--model preset|emin|zero+|floor] [--only SUBSTR]

A driver: the analysis is hspi_kernels.kernels.validation.tc_blocks.analyse (see its docstring)."""

import sys

from hspi_kernels.kernels.validation import tc_blocks

sys.exit(tc_blocks.main(["analyse", *sys.argv[1:]]))
