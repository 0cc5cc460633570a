"""hspi_kernels: identify the hardware and software platform behind model outputs, exactly.

The public API, one call per job (each the library call the ``hspi`` CLI only formats; progress
as a callback, errors as exceptions):

==============================  ==================================================================
``take_fingerprint(...)``       run the probe suite here -> a fingerprint dict (``hspi probe``)
``load_fingerprint(path)``      read and validate a fingerprint file (``hspi-fingerprint/1``)
``identify_fingerprint(fp)``      rank reference platforms for a fingerprint (``hspi identify``);
                                ``load_database()`` reads the shipped references
``compare(fp_a, fp_b)``         per-probe comparison of two fingerprints (``hspi compare``)
``reveal_order(target)``        the summation order of a black-box op as a replayed plan
                                (``hspi reveal``); ``reveal_target(name, n, m, cols)`` builds one
``numerics_card(unit)``         tensor-core block-model parameters of a unit (``hspi card``);
                                ``emulated_unit(model)`` wraps a preset
``trace_model(...)``            op-by-op trace of one forward pass (``hspi trace run``);
                                ``trace_diff(a, b)``, ``explain(a, b)`` (``hspi trace diff/explain``)
``evaluate(plan, x)``           bit-exact evaluation of an accumulation plan; ``gemm(plan, A, B)``
``bench(only=...)``             kernel cost vs baselines and the roofline (``hspi bench``)
==============================  ==================================================================

Building blocks: ``hspi_kernels.numerics.plans`` (the plan language), ``numerics.tensor_core``
(block models and presets, ``PRESETS``), ``kernels`` (CUDA and Triton kernels that declare their
plans), ``probes``, ``fingerprint``, ``models`` (model-level inference). docs/ has the guide.

Importing this package is cheap: it imports no torch, triton or cupy and touches no GPU; each
name above is loaded on first use, and a missing optional stack is reported by the call that
needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute): loaded on first access (PEP 562). No name may be a
# subpackage's (``from hspi_kernels import identify`` must stay the package: tests/test_cli.py).
_API = {
    "take_fingerprint": ("hspi_kernels.fingerprint.take", "take"),
    "load_fingerprint": ("hspi_kernels.fingerprint.schema", "load"),
    "identify_fingerprint": ("hspi_kernels.identify.references", "identify"),
    "load_database": ("hspi_kernels.identify.references", "load_database"),
    "compare": ("hspi_kernels.identify.references", "compare"),
    "reveal_order": ("hspi_kernels.reveal.order", "reveal"),
    "reveal_target": ("hspi_kernels.reveal.targets", "get_target"),
    "numerics_card": ("hspi_kernels.reveal.card", "numerics_card"),
    "emulated_unit": ("hspi_kernels.reveal.card", "emulated_unit"),
    "trace_model": ("hspi_kernels.trace.tracer", "run_model"),
    "trace_diff": ("hspi_kernels.trace.tracer", "diff"),
    "explain": ("hspi_kernels.trace.explain", "explain"),
    "evaluate": ("hspi_kernels.numerics.evaluate", "evaluate"),
    "gemm": ("hspi_kernels.numerics.evaluate", "gemm"),
    "bench": ("hspi_kernels.kernels.bench", "run"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module 'hspi_kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
