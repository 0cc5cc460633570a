"""Driver: ``python scripts/gpu_trace.py ARGS`` runs ``python -m hspi_kernels.trace.gpu_session ARGS``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("hspi_kernels.trace.gpu_session", run_name="__main__")
