"""The probe catalog: the built-in probes, registered by importing their families (``basic``,
``suite``), and the look-ups callers use (``all_probes``, ``get``, ``select``).

``registry`` holds the ``Probe`` type and the registry and imports no family; the families
import ``registry`` to register; this module imports the families. No loop: registry ← families
← catalog.
"""

from __future__ import annotations

from hspi_kernels.probes import basic, stack, suite  # noqa: F401  (importing a family registers its probes)
from hspi_kernels.probes.registry import SUITES, Probe, registered

__all__ = ["all_probes", "get", "select"]


def all_probes(suite: str = "default") -> list[Probe]:
    """The registered probes of ``suite`` ("default": what ``hspi probe`` runs; "stack": the
    software-stack probes; "all"), in registration order."""
    if suite not in SUITES + ("all",):
        raise ValueError(f"unknown probe suite {suite!r}; known: {', '.join(SUITES + ('all',))}")
    return [p for p in registered().values() if suite in ("all", p.suite)]


def get(probe_id: str) -> Probe | None:
    """The registered probe of that id, any suite (None when this version has no such probe)."""
    return registered().get(probe_id)


def select(pattern: str | None = None, suite: str = "default") -> list[Probe]:
    """The probes of ``suite`` whose id contains ``pattern`` (all of them when it is empty or None)."""
    probes = all_probes(suite)
    if pattern:
        probes = [p for p in probes if pattern in p.id]
    return probes
