"""Dump single-instruction tensor-core GEMM blocks on the GPU:  python scripts/tc_dump.py OUT.npz

A driver: the dump is hspi_kernels.kernels.validation.tc_blocks.dump (see its docstring)."""

import sys

from hspi_kernels.kernels.validation import tc_blocks

sys.exit(tc_blocks.main(["dump", *sys.argv[1:]]))
