"""Driver: ``python scripts/fp8_f16_decide.py OUT_DIR`` runs hspi_kernels.kernels.validation.fp8_f16 on a GPU."""

import sys

from hspi_kernels.kernels.validation import fp8_f16

if __name__ == "__main__":
    raise SystemExit(fp8_f16.main(sys.argv[1:]))
