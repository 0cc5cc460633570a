"""Driver: ``python scripts/compare_reveals.py ARGS`` runs ``python -m hspi_kernels.reveal.compare ARGS``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("hspi_kernels.reveal.compare", run_name="__main__")
