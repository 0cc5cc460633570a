"""Lazy discovery of what this machine can run, each with a one-line reason.

Nothing here runs at ``import hspi_kernels``; ``capabilities()`` is called by `hspi env` and
by probes, and each check is wrapped so that a broken optional stack reads as "no — why".
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def _check(fn) -> dict[str, Any]:
    try:
        ok, detail = fn()
    except Exception as exc:  # an optional stack that fails to load is reported, not raised
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": bool(ok), "detail": detail}


def _native():
    native = importlib.import_module("hspi_kernels._native")
    return True, f"OpenMP {'on' if native.openmp else 'off'}"


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__}: no usable CUDA device"
    return True, f"{torch.cuda.device_count()} device(s)"


def _cupy():
    from hspi_kernels.kernels import cuda

    status = cuda.status()
    return status.get("cupy_ok", False), status.get("cupy_detail", "")


def _cubins():
    from hspi_kernels.kernels import cuda

    status = cuda.status()
    on_disk = [c["cubin"] for c in status.get("cubins", []) if c.get("on_disk")]
    if not on_disk:
        return False, "no cubins in this build (nvcc was not found at build time, or HSPI_CUDA=OFF)"
    return True, ", ".join(on_disk)


def _triton():
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    import triton

    ok, why = _torch_cuda()
    return ok, f"triton {triton.__version__}" + ("" if ok else f" (no GPU to run on: {why})")


def capabilities() -> dict[str, dict[str, Any]]:
    return {
        "native": _check(_native),
        "torch.cuda": _check(_torch_cuda),
        "cupy": _check(_cupy),
        "cubins": _check(_cubins),
        "triton": _check(_triton),
    }
