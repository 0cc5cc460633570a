"""The probe registry: each probe is data (id, family, backend, seeded input spec, what it
measures) plus a function that runs it and returns its output as a host numpy array.

A probe never decides whether it is a fingerprint: the runner (``hspi_kernels.probes.run``)
runs it twice, digests both outputs and records it as nondeterministic when they differ.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

RunFn = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Probe:
    id: str                      # unique, path-like: "<backend>/<op>/<dtype>/<shape>"
    family: str                  # "library-gemm" | "reduction" | "kernel" | ...
    backend: str                 # "numpy" | "torch-cpu" | "torch-cuda" | "hspi-cuda"
    inputs: dict[str, Any]       # the seeded input spec, as recorded in the fingerprint
    measures: str                # one line: what platform property the bits reveal
    run: RunFn = field(repr=False, compare=False)
    requires: tuple[str, ...] = ()   # capabilities: "torch", "cuda", "cupy"
    output_format: str = "fp32"      # the format ULP features are counted in
    reference: RunFn | None = field(default=None, repr=False, compare=False)  # fp64 result
    plans: tuple[dict[str, Any], ...] = ()  # plans (JSON) that should explain the bits


_REGISTRY: dict[str, Probe] = {}


def register(probe: Probe) -> Probe:
    if probe.id in _REGISTRY:
        raise ValueError(f"probe id registered twice: {probe.id!r}")
    _REGISTRY[probe.id] = probe
    return probe


def all_probes() -> list[Probe]:
    from hspi_kernels.probes import basic  # noqa: F401  (registers the built-in probes)

    return list(_REGISTRY.values())


def capability(name: str) -> tuple[bool, str]:
    """(available, reason) for a probe requirement, checked without side effects where possible."""
    if name == "torch":
        ok = importlib.util.find_spec("torch") is not None
        return ok, "" if ok else "torch is not installed"
    if name == "cuda":
        ok, reason = capability("torch")
        if not ok:
            return ok, reason
        import torch

        if not torch.cuda.is_available():
            return False, "no usable CUDA device"
        return True, ""
    if name == "cupy":
        ok = importlib.util.find_spec("cupy") is not None
        return ok, "" if ok else "CuPy is not installed"
    raise ValueError(f"unknown probe requirement {name!r}")


def missing_requirements(probe: Probe) -> str:
    reasons = [reason for ok, reason in map(capability, probe.requires) if not ok]
    return "; ".join(reasons)
