"""The one capability checker: what this machine can run, each answer with a one-line reason.

Two views of the same checks:

- ``requirement(name) -> (ok, reason)``: a probe's requirement ("torch", "cuda", "cupy",
  "triton", or a compute-capability floor "sm_XX"); ``missing(names)`` lists the ones this
  machine lacks. :mod:`hspi_kernels.probes.registry` asks these for every probe.
- ``capabilities() -> {name: {"ok", "detail"}}``: the report of `hspi env` (native core,
  torch.cuda, CuPy, cubins, Triton); each check is wrapped so that a broken optional stack reads
  as "no — why" instead of raising.

Nothing here runs at ``import hspi_kernels``; torch, triton and CuPy are imported only when a
check needs them (they are optional).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Iterable

from hspi_kernels.kernels.cuda import loader

def _installed(module: str, label: str) -> tuple[bool, str]:
    ok = importlib.util.find_spec(module) is not None
    return ok, "" if ok else f"{label} is not installed"


def requirement(name: str) -> tuple[bool, str]:
    """(available, reason) for a probe requirement, checked without side effects where possible."""
    if name == "torch":
        return _installed("torch", "torch")
    if name == "cuda":
        ok, reason = requirement("torch")
        if not ok:
            return ok, reason
        import torch

        if not torch.cuda.is_available():
            return False, "no usable CUDA device"
        return True, ""
    if name == "cupy":
        return _installed("cupy", "CuPy")
    if name == "triton":
        return _installed("triton", "triton")
    if name.startswith("sm_"):
        # a compute capability floor of device 0, e.g. "sm_90" (wgmma needs Hopper)
        ok, reason = requirement("cuda")
        if not ok:
            return ok, reason
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        want = int(name[3:])
        have = 10 * major + minor
        if want >= 90 and have != want:  # arch-specific (sm_90a) instructions: exactly that arch
            return False, f"needs {name} exactly, device is sm_{have}"
        return (have >= want), ("" if have >= want else f"needs {name}, device is sm_{have}")
    raise ValueError(f"unknown probe requirement {name!r}")


def missing(names: Iterable[str]) -> list[tuple[str, str]]:
    """[(requirement, reason)] of the requirements this machine lacks, in the order given."""
    out = []
    for name in names:
        ok, reason = requirement(name)
        if not ok:
            out.append((name, reason))
    return out


# ---------------------------------------------------------------------------------------------
# The `hspi env` report
# ---------------------------------------------------------------------------------------------
def _check(fn: Callable[[], tuple[bool, str]]) -> dict[str, Any]:
    try:
        ok, detail = fn()
    except Exception as exc:  # an optional stack that fails to load is reported, not raised
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": bool(ok), "detail": detail}


def _native() -> tuple[bool, str]:
    native = importlib.import_module("hspi_kernels._native")
    return True, f"OpenMP {'on' if native.openmp else 'off'}"


def _torch_cuda() -> tuple[bool, str]:
    ok, reason = requirement("torch")
    if not ok:
        return ok, reason
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__}: no usable CUDA device"
    return True, f"{torch.cuda.device_count()} device(s)"


def _cupy() -> tuple[bool, str]:
    """CuPy as the loader sees it: ``status()["cupy"]`` = {importable, version, working, error}."""
    cupy = loader.status()["cupy"]
    if cupy["working"]:
        return True, f"CuPy {cupy['version']}"
    return False, cupy["error"] or "CuPy does not work here"


def _cubins() -> tuple[bool, str]:
    """The cubins of this build that are on disk. ``loader.build_entries()`` is the build-info's
    ``CUBINS`` list (one dict per (source, arch): source, arch, cubin, flags, built) with
    ``on_disk`` added; ``status()["cubins"]`` is the same grouped by arch, not a list."""
    on_disk = [e["cubin"] for e in loader.build_entries() if e["on_disk"]]
    if not on_disk:
        return False, "no cubins in this build (nvcc was not found at build time, or HSPI_CUDA=OFF)"
    return True, ", ".join(on_disk)


def _triton() -> tuple[bool, str]:
    ok, reason = requirement("triton")
    if not ok:
        return ok, reason
    import triton

    ok, why = _torch_cuda()
    return ok, f"triton {triton.__version__}" + ("" if ok else f" (no GPU to run on: {why})")


def capabilities() -> dict[str, dict[str, Any]]:
    """{check: {"ok": bool, "detail": str}} for `hspi env`."""
    return {
        "native": _check(_native),
        "torch.cuda": _check(_torch_cuda),
        "cupy": _check(_cupy),
        "cubins": _check(_cubins),
        "triton": _check(_triton),
    }
