"""Probes: seeded inputs + an op (library or ours) whose output bits characterise a platform.

``run_all`` runs every registered probe available here, twice each; a failing probe is recorded
as failed and the rest still run; a probe whose two digests differ is recorded as
nondeterministic, never as a fingerprint.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterable

import numpy as np

from hspi_kernels.probes.registry import Probe, all_probes, missing_requirements, register

__all__ = ["Probe", "all_probes", "register", "run_probe", "run_all", "select"]

RUNS_PER_PROBE = 2


def _features(probe: Probe, output: np.ndarray) -> dict[str, Any]:
    from hspi_kernels import features

    result: dict[str, Any] = {
        "fraction_bit_frequency": [round(float(v), 6) for v in features.fraction_bit_frequency(output)],
    }
    if probe.reference is not None:
        reference = probe.reference()
        # ULP distance of the platform's output from the correctly rounded fp64 reference,
        # counted in the output format: how far, and in which direction, this platform rounds.
        rounded = reference.astype(output.dtype)
        dist = features.ulp_distance(output, rounded).distance
        result["ulp_vs_fp64"] = {
            "mean_abs": float(np.mean(np.abs(dist))),
            "max_abs": int(np.max(np.abs(dist))),
            "exact_fraction": float(np.mean(dist == 0)),
        }
    return result


def run_probe(probe: Probe) -> dict[str, Any]:
    """Run one probe RUNS_PER_PROBE times; the record used in fingerprints."""
    from hspi_kernels import features

    record: dict[str, Any] = {
        "id": probe.id,
        "family": probe.family,
        "backend": probe.backend,
        "inputs": probe.inputs,
        "measures": probe.measures,
    }
    missing = missing_requirements(probe)
    if missing:
        record.update(status="skipped", reason=missing)
        return record
    try:
        digests, times, output = [], [], None
        for _ in range(RUNS_PER_PROBE):
            start = time.perf_counter()
            output = probe.run()
            times.append(time.perf_counter() - start)
            digests.append(features.digest(output))
        deterministic = len(set(digests)) == 1
        record.update(
            status="ok",
            digest=digests[0] if deterministic else None,
            digests=digests,
            deterministic=deterministic,
            output={"dtype": str(output.dtype), "shape": list(output.shape)},
            time_s=min(times),
            features=_features(probe, output),
        )
    except Exception as exc:  # one failing probe must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=4))
    return record


def select(pattern: str | None = None) -> list[Probe]:
    probes = all_probes()
    if pattern:
        probes = [p for p in probes if pattern in p.id]
    return probes


def run_all(probes: Iterable[Probe], on_done: Callable[[Probe, dict], None] | None = None) -> list[dict]:
    records = []
    for probe in probes:
        record = run_probe(probe)
        records.append(record)
        if on_done is not None:
            on_done(probe, record)
    return records
