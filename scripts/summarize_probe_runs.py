"""Driver: ``python scripts/summarize_probe_runs.py ARGS`` runs ``python -m hspi_kernels.probes.run_summary ARGS``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("hspi_kernels.probes.run_summary", run_name="__main__")
