"""Probes: seeded inputs + an op (library or ours) whose output bits characterise a platform.

``run_all`` runs every registered probe available here, twice each; a failing probe is recorded
as failed and the rest still run; a probe whose two digests differ is recorded as
nondeterministic, never as a fingerprint. A probe that declares ``profile_kernels`` runs a third
time under ``torch.profiler`` (its digest joins the determinism check) and records the CUDA
kernel names it launched; a probe with ``plans`` records how many of its outputs each plan
reproduces bit for bit (``explained_by``). The record layout is documented in
``hspi_kernels.fingerprint`` and docs/fingerprint.md.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterable

import numpy as np

from hspi_kernels.probes.registry import (Probe, ProbeUnsupported, all_probes, get, missing_capabilities,
                                         register)

__all__ = ["Probe", "all_probes", "get", "register", "run_probe", "run_all", "select", "SAMPLE_SIZE"]

RUNS_PER_PROBE = 2
SAMPLE_SIZE = 128        # output elements whose bits are kept (evenly spaced): cross-platform ULP distances
MAX_KERNEL_NAMES = 32    # distinct kernel names kept per probe


def _features(probe: Probe, output: np.ndarray) -> dict[str, Any]:
    from hspi_kernels import features

    result: dict[str, Any] = {
        "fraction_bit_frequency": [round(float(v), 6) for v in features.fraction_bit_frequency(output)],
    }
    if probe.reference is not None:
        reference = probe.reference()
        # ULP distance of the platform's output from the correctly rounded fp64 reference,
        # counted in the output format: how far, and in which direction, this platform rounds.
        rounded = np.asarray(reference).astype(output.dtype).reshape(output.shape)
        ulp = features.ulp_distance(output, rounded)
        dist = ulp.distance[ulp.finite]
        if dist.size:
            hist = features.ulp_histogram(output, rounded, mode="log2")
            result["ulp_vs_fp64"] = {
                "mean_abs": float(np.mean(np.abs(dist))),
                "max_abs": int(np.max(np.abs(dist))),
                "exact_fraction": float(np.mean(dist == 0)),
                # log2 bins (features.ulp_histogram): bin W+k holds 2^(k-1) <= d <= 2^k - 1, W = width
                "histogram": {"mode": "log2", "counts": [int(c) for c in hist.counts],
                              "n_special": int(hist.n_special)},
            }
    result["sample"] = output_sample(output)
    return result


def output_sample(output: np.ndarray, n: int = SAMPLE_SIZE) -> dict[str, Any]:
    """The bits of ``n`` evenly spaced output elements (C order) as big-endian hex: enough to
    measure ULP distances between two platforms' outputs without storing the outputs."""
    from hspi_kernels import features

    fmt = features.resolve_format(output)
    flat = np.ascontiguousarray(output).reshape(-1)
    index = np.unique(np.linspace(0, flat.size - 1, min(n, flat.size)).round().astype(np.int64))
    bits = flat[index].view(fmt.bits_dtype).astype(np.dtype(fmt.bits_dtype).newbyteorder(">"))
    return {"format": fmt.name, "n": int(index.size), "size": int(flat.size), "bits": bits.tobytes().hex()}


def sample_array(sample: dict[str, Any]) -> np.ndarray:
    """The raw bits of a recorded sample as an unsigned integer array (native byte order)."""
    from hspi_kernels import features

    fmt = features.FORMATS[sample["format"]]
    big = np.dtype(fmt.bits_dtype).newbyteorder(">")
    return np.frombuffer(bytes.fromhex(sample["bits"]), dtype=big).astype(fmt.bits_dtype)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from hspi_kernels import features

    fmt = features.resolve_format(a)
    return np.ascontiguousarray(a).view(fmt.bits_dtype) == np.ascontiguousarray(b, dtype=a.dtype).view(fmt.bits_dtype)


def _explained_by(probe: Probe, output: np.ndarray) -> list[dict[str, Any]]:
    """For each declared plan: how many outputs its exact evaluation reproduces bit for bit."""
    from hspi_kernels.numerics.plans import plan_from_json

    results = []
    try:
        plans = probe.plans() if callable(probe.plans) else probe.plans
    except Exception as exc:  # e.g. no tensor-core preset for this arch
        return [{"error": f"{type(exc).__name__}: {exc}"[:500]}]
    for plan_json in plans:
        entry: dict[str, Any] = {"plan": plan_json}
        try:
            entry["repr"] = repr(plan_from_json(plan_json))
            expected = np.asarray(probe.plan_eval(plan_json))
            if expected.shape != output.shape:
                raise ValueError(f"plan output shape {expected.shape} != probe output shape {output.shape}")
            entry.update(matches=int(np.count_nonzero(_same_bits(output, expected))), total=int(output.size))
        except Exception as exc:  # a plan that cannot be evaluated is reported, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        results.append(entry)
    return results


def cuda_kernel_names(run: Callable[[], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(distinct CUDA kernel names in launch order, output) of one run under torch.profiler;
    memcpy/memset activities are left out."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        output = run()
        torch.cuda.synchronize()
    timed: list[tuple[float, str]] = []
    for evt in prof.events():
        if evt.device_type == DeviceType.CUDA:
            timed.append((float(evt.time_range.start), evt.name))
    if not timed:  # older layouts attach kernels to the CPU op that launched them
        for evt in prof.events():
            for kernel in getattr(evt, "kernels", None) or []:
                timed.append((float(evt.time_range.start), kernel.name))
    names: list[str] = []
    for _, name in sorted(timed, key=lambda t: t[0]):
        if name.startswith(("Memcpy", "Memset")) or name in names:
            continue
        names.append(name[:512])
    return names[:MAX_KERNEL_NAMES], output


def run_probe(probe: Probe, profile_kernels: bool = True) -> dict[str, Any]:
    """Run one probe RUNS_PER_PROBE times; the record used in fingerprints."""
    from hspi_kernels import features

    record: dict[str, Any] = {
        "id": probe.id,
        "family": probe.family,
        "backend": probe.backend,
        "role": probe.role,
        "inputs": probe.inputs,
        "measures": probe.measures,
    }
    missing = missing_capabilities(probe)
    if missing:
        record.update(status="skipped", reason="; ".join(r for _, r in missing), missing=[n for n, _ in missing])
        return record
    try:
        digests, times, output = [], [], None
        for _ in range(RUNS_PER_PROBE):
            start = time.perf_counter()
            output = probe.run()
            times.append(time.perf_counter() - start)
            digests.append(features.digest(output))
        kernels = None
        if profile_kernels and probe.profile_kernels:
            try:
                kernels, profiled = cuda_kernel_names(probe.run)
                digests.append(features.digest(profiled))  # a third run for the determinism check
            except Exception as exc:  # the profiler is an extra: its failure does not fail the probe
                record["kernels_error"] = f"{type(exc).__name__}: {exc}"[:500]
        deterministic = len(set(digests)) == 1
        if kernels is not None:
            record["kernels"] = kernels
        if probe.plans:
            record["explained_by"] = _explained_by(probe, output)
        record.update(
            status="ok",
            digest=digests[0] if deterministic else None,
            digests=digests,
            deterministic=deterministic,
            output={"dtype": str(output.dtype), "shape": list(output.shape)},
            time_s=min(times),
            features=_features(probe, output),
        )
    except ProbeUnsupported as exc:
        record.update(status="skipped", reason=str(exc)[:500], missing=["backend"])
    except Exception as exc:  # one failing probe must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=4))
    return record


def select(pattern: str | None = None) -> list[Probe]:
    probes = all_probes()
    if pattern:
        probes = [p for p in probes if pattern in p.id]
    return probes


def run_all(probes: Iterable[Probe], on_done: Callable[[Probe, dict], None] | None = None,
            profile_kernels: bool = True) -> list[dict]:
    from hspi_kernels.probes.basic import clear_operand_cache

    records = []
    try:
        for probe in probes:
            record = run_probe(probe, profile_kernels)
            records.append(record)
            if on_done is not None:
                on_done(probe, record)
    finally:
        clear_operand_cache()  # cached operands (host and device) are dropped after each suite
    return records
