"""Driver: ``python scripts/gpu_models.py ARGS`` runs ``python -m hspi_kernels.models.gpu_session ARGS``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("hspi_kernels.models.gpu_session", run_name="__main__")
