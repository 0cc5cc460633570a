"""Driver: ``python scripts/gpu_attention_gluon.py ARGS`` runs ``python -m hspi_kernels.kernels.validation.gluon_attention ARGS``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("hspi_kernels.kernels.validation.gluon_attention", run_name="__main__")
