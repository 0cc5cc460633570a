"""The probe registry: each probe is data (id, family, backend, seeded input spec, what it
measures) plus a function that runs it and returns its output as a host numpy array.

This module owns the ``Probe`` type and the registry itself (``register``, ``registered``); it
imports no probe family. The built-in probes are registered by importing their families, which
``hspi_kernels.probes.catalog`` does: look probes up there (``catalog.all_probes``, ``get``,
``select``). A probe never decides whether it is a fingerprint: the runner
(``hspi_kernels.probes.runner.run_all``) runs it twice, digests both outputs and records it as
nondeterministic when they differ.

Declarative fields beyond the run function:

- ``role``: ``"fingerprint"`` (its digest identifies a platform) or ``"control"`` (a probe that
  checks the machinery, e.g. a known-nondeterministic scan; never used by ``identify``);
- ``plans`` + ``plan_eval``: the accumulation plans (JSON) that should explain the output bits and
  a function ``plan_eval(plan_json) -> expected output`` on the probe's own inputs; the runner
  records ``explained_by`` = [{plan, repr, matches, total}] (how many outputs match bit for bit);
- ``profile_kernels``: capture the CUDA kernel names of one run with ``torch.profiler`` (library
  ops: which cuBLAS / cuDNN / flash kernel the heuristics picked), recorded as ``kernels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from hspi_kernels.platform import capabilities

RunFn = Callable[[], np.ndarray]
SUITES = ("default", "stack")  # stack: software-stack probes (compile, JAX, BLAS flags, fp8); slow or GPU-only
ROLES = ("fingerprint", "control")


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
    # plans (JSON) that should explain the bits, or a function giving them on this machine
    # (tensor-core plans name the device's arch, known only at run time)
    plans: tuple[dict[str, Any], ...] | Callable[[], tuple[dict[str, Any], ...]] = ()
    plan_eval: Callable[[dict[str, Any]], np.ndarray] | None = field(default=None, repr=False, compare=False)
    role: str = "fingerprint"        # "fingerprint" | "control" (see the module doc)
    profile_kernels: bool = False    # record the CUDA kernel names of one run (torch.profiler)
    suite: str = "default"           # "default" (hspi probe) | "stack" (opt-in: --suite stack / all)

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"probe {self.id!r}: suite must be one of {SUITES}, got {self.suite!r}")
        if self.role not in ROLES:
            raise ValueError(f"probe {self.id!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.plans and self.plan_eval is None:
            raise ValueError(f"probe {self.id!r}: plans need a plan_eval to check them")


class ProbeUnsupported(RuntimeError):
    """Raised by a probe's run when this platform cannot run it (e.g. an attention backend that
    has no kernel for this GPU): the probe is recorded as skipped, not failed."""


_REGISTRY: dict[str, Probe] = {}


def register(probe: Probe) -> Probe:
    if probe.id in _REGISTRY:
        raise ValueError(f"probe id registered twice: {probe.id!r}")
    _REGISTRY[probe.id] = probe
    return probe


def registered() -> Mapping[str, Probe]:
    """{id: probe} of every probe registered so far, in registration order (a read-only view).
    Only the families imported so far are in it: ``catalog`` imports the built-in ones."""
    return MappingProxyType(_REGISTRY)


def capability(name: str) -> tuple[bool, str]:
    """(available, reason) for a probe requirement (see :func:`hspi_kernels.platform.capabilities.requirement`)."""
    return capabilities.requirement(name)


def missing_capabilities(probe: Probe) -> list[tuple[str, str]]:
    """[(requirement, reason)] of the requirements this machine lacks, in declaration order."""
    return capabilities.missing(probe.requires)


def missing_requirements(probe: Probe) -> str:
    return "; ".join(reason for _, reason in missing_capabilities(probe))
