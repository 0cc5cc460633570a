"""Triton kernels whose accumulation order is part of their contract.

- :mod:`.gemm`: fixed-order GEMM (tensor-core K chain; split-K with an ordered combine or
  atomics; fp8 with/without ``max_num_imprecise_acc``; persistent TMA variant), ``plan(...)``;
- :mod:`.reduction`: row/column sums with an explicit order, a ``tl.sum`` variant and
  ``reveal_tl_sum_order`` (FPRev-style order recovery on the GPU);
- :mod:`.attention`: fused attention forward (online softmax, exp2), ``plan(...)``;
- :mod:`.attention_gluon`: the same native attention order as a Gluon Hopper kernel (FA3-like);
- :mod:`.attention_order`: that order as data (qk scale, row-sum plan, ``order_plan``), used by both;
- :mod:`.torch_override`: opt-in ``fixed_order_matmul()`` routing ``aten::mm/addmm/bmm``.

Importing this package imports neither Triton nor torch; the submodules are loaded on first
attribute access and their kernels are defined on first use. Without Triton, using a kernel
raises ImportError naming what to install (:func:`available` says so without raising).
"""

from __future__ import annotations

import importlib

__all__ = ["gemm", "reduction", "attention", "torch_override", "available"]

_SUBMODULES = {"gemm", "reduction", "attention", "torch_override"}


def available() -> tuple[bool, str]:
    """(True, version) when torch and Triton import, else (False, the reason)."""
    try:
        import torch  # noqa: F401
        import triton
    except ImportError as exc:
        return False, f"Triton kernels need torch and triton (pip install triton==3.6.0): {exc}"
    return True, triton.__version__


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
