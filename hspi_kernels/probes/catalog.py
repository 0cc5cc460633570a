"""The probe catalog: the built-in probes, registered by importing their families (``basic``,
``suite``), and the look-ups callers use (``all_probes``, ``get``, ``select``).

``registry`` holds the ``Probe`` type and the registry and imports no family; the families
import ``registry`` to register; this module imports the families. No loop: registry ← families
← catalog.
"""

from __future__ import annotations

from hspi_kernels.probes import basic, stack, suite  # noqa: F401  (importing a family registers its probes)
from hspi_kernels.probes.registry import Probe, registered

__all__ = ["all_probes", "get", "select"]


def all_probes() -> list[Probe]:
    """Every registered probe, in registration order."""
    return list(registered().values())


def get(probe_id: str) -> Probe | None:
    """The registered probe of that id (None when this version has no such probe)."""
    return registered().get(probe_id)


def select(pattern: str | None = None) -> list[Probe]:
    """The probes whose id contains ``pattern`` (all of them when it is empty or None)."""
    probes = all_probes()
    if pattern:
        probes = [p for p in probes if pattern in p.id]
    return probes
