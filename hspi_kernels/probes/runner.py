"""The probe runner: runs probes and makes their records (the list a fingerprint holds).

``run_all`` runs every registered probe available here, twice each; a failing probe is recorded
as failed and the rest still run; a probe whose two digests differ is recorded as
nondeterministic, never as a fingerprint. A probe that declares ``profile_kernels`` makes its
second run under ``torch.profiler`` and records the CUDA kernel names it launched (one profiler
session spans the whole suite, ``KernelRecorder``); a probe with ``plans`` records how many of
its outputs each plan reproduces bit for bit (``explained_by``). Seeded operands, fp64
references and plan evaluations are host work that a warm run reads back from the on-disk cache
(``probes.cache``); every record carries its per-phase ``timing``. The record layout is
documented in ``hspi_kernels.fingerprint`` and docs/fingerprint.md.
"""

from __future__ import annotations

import bisect
import importlib
import importlib.util
import time
import traceback
from typing import Any, Callable, Iterable

import numpy as np

from hspi_kernels.fingerprint import features
from hspi_kernels.fingerprint.sample import output_sample
from hspi_kernels.numerics.plans import plan_from_json
from hspi_kernels.probes import cache
from hspi_kernels.probes.basic import clear_operand_cache, operand
from hspi_kernels.probes.registry import Probe, ProbeUnsupported, missing_capabilities

__all__ = ["run_probe", "run_all", "KernelRecorder", "attribute_kernels", "cuda_kernel_names",
           "import_shared_modules", "RUNS_PER_PROBE"]

RUNS_PER_PROBE = 2
MAX_KERNEL_NAMES = 32    # distinct kernel names kept per probe


def _features(probe: Probe, output: np.ndarray) -> dict[str, Any]:
    result: dict[str, Any] = {
        "fraction_bit_frequency": [round(float(v), 6) for v in features.fraction_bit_frequency(output)],
    }
    if probe.reference is not None:
        # the fp64 reference of the built-in probes is read back from the on-disk cache when warm
        reference = cache.derived("reference", probe.reference, key={"probe": probe.id, "inputs": probe.inputs})
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


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fmt = features.resolve_format(a)
    return np.ascontiguousarray(a).view(fmt.bits_dtype) == np.ascontiguousarray(b, dtype=a.dtype).view(fmt.bits_dtype)


def _explained_by(probe: Probe, output: np.ndarray) -> list[dict[str, Any]]:
    """For each declared plan: how many outputs its exact evaluation reproduces bit for bit."""
    results = []
    try:
        plans = probe.plans() if callable(probe.plans) else probe.plans
    except Exception as exc:  # e.g. no tensor-core preset for this arch
        return [{"error": f"{type(exc).__name__}: {exc}"[:500]}]
    for plan_json in plans:
        entry: dict[str, Any] = {"plan": plan_json}
        try:
            entry["repr"] = repr(plan_from_json(plan_json))
            # exact evaluation: read back from the on-disk cache when warm (keyed by the code version)
            expected = np.asarray(cache.derived("plan", probe.plan_eval, (plan_json,),
                                                key={"probe": probe.id, "inputs": probe.inputs}))
            if expected.shape != output.shape:
                raise ValueError(f"plan output shape {expected.shape} != probe output shape {output.shape}")
            entry.update(matches=int(np.count_nonzero(_same_bits(output, expected))), total=int(output.size))
        except Exception as exc:  # a plan that cannot be evaluated is reported, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        results.append(entry)
    return results


_MARKER = "hspi-probe::"
ATTRIBUTION_SLACK_US = 20.0   # clock skew tolerated between a kernel's start and its probe's marker


def attribute_kernels(markers: list[tuple[float, float, str]], kernels: list[tuple[float, str]],
                      slack_us: float = ATTRIBUTION_SLACK_US) -> dict[str, list[str]]:
    """{marker id: distinct kernel names in launch order} from marker intervals ``(start, end, id)``
    and kernel starts ``(start, name)`` (µs, one clock). A kernel belongs to the marker whose
    interval, widened by ``slack_us``, contains its start (the nearest one when two do); kernels
    outside every marker (the unprofiled runs) are dropped, as are memcpy/memset activities."""
    markers = sorted(markers)
    starts = [m[0] for m in markers]
    out: dict[str, list[str]] = {m[2]: [] for m in markers}
    for start, name in sorted(kernels, key=lambda k: k[0]):
        if name.startswith(("Memcpy", "Memset", _MARKER)):
            continue
        i = bisect.bisect_right(starts, start + slack_us)
        best, best_gap = None, None
        for j in (i - 2, i - 1):
            if 0 <= j < len(markers):
                lo, hi, mid = markers[j]
                gap = 0.0 if lo <= start <= hi else min(abs(start - lo), abs(start - hi))
                if gap <= slack_us and (best_gap is None or gap < best_gap):
                    best, best_gap = mid, gap
        # names are kept to 512 characters; the repeat check compares the full name with the kept
        # ones, as the records in the shipped references were made (a longer name repeats)
        if best is not None and name not in out[best] and len(out[best]) < MAX_KERNEL_NAMES:
            out[best].append(name[:512])
    return out


class KernelRecorder:
    """One ``torch.profiler`` session for a whole suite: each probe's profiled run happens inside
    a ``record_function`` marker and its CUDA kernels are attributed to it afterwards
    (``attribute_kernels``). One session instead of one per probe: the profiler's start-up and
    flush are paid once (they dominated the suite's wall time). ``device="cpu"`` attributes CPU
    operators instead (tests on machines without a GPU)."""

    def __init__(self, device: str = "cuda"):
        from torch.profiler import ProfilerActivity, profile

        self.device = device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        self._prof = profile(activities=activities)
        self._prof.__enter__()
        self._open = True
        self.ids: list[str] = []

    def run(self, probe_id: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        import torch

        with torch.profiler.record_function(_MARKER + probe_id):
            output = fn()
            if self.device == "cuda":
                torch.cuda.synchronize()
        self.ids.append(probe_id)
        return output

    def finish(self) -> dict[str, list[str]]:
        """Stop the session; {probe id: kernel names} of the runs made through ``run``."""
        if self._open:
            self._open = False
            self._prof.__exit__(None, None, None)
        markers, kernels, attached = [], [], []
        for name, is_device, start, end in _profile_events(self._prof, self.device):
            if name.startswith(_MARKER):
                if not is_device:
                    markers.append((start, end, name[len(_MARKER):]))
            elif is_device:
                kernels.append((start, name))
            elif is_device is None:
                attached.append((start, name))
        found = attribute_kernels(markers, kernels or attached)
        return {pid: found.get(pid, []) for pid in self.ids}


def _profile_events(prof, device: str):
    """(name, is the wanted device activity, start µs, end µs) of every event of
    ``prof.events()`` (the parsed, demangled events the shipped references were recorded from).
    For ``device="cpu"`` the "device" activities are the CPU operators (aten::*)."""
    from torch.autograd import DeviceType

    for evt in prof.events():
        if device == "cuda":
            wanted = evt.device_type == DeviceType.CUDA
        else:
            wanted = evt.device_type == DeviceType.CPU and evt.name.startswith("aten::")
        yield evt.name, wanted, float(evt.time_range.start), float(evt.time_range.end)
        if device == "cuda" and evt.device_type == DeviceType.CPU:
            # older layouts attach kernels to the CPU op that launched them (no CUDA events)
            for kernel in getattr(evt, "kernels", None) or []:
                yield kernel.name, None, float(evt.time_range.start), float(evt.time_range.end)


def cuda_kernel_names(run: Callable[[], np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(distinct CUDA kernel names in launch order, output) of one run under its own profiler
    session (memcpy/memset activities left out)."""
    recorder = KernelRecorder("cuda")
    try:
        output = recorder.run("run", run)
    finally:
        names = recorder.finish()
    return names.get("run", []), output


def _host_specs(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The seeded operand specs among a probe's inputs (``inputs.spec`` dicts)."""
    return [v for v in inputs.values() if isinstance(v, dict) and {"seed", "shape", "dtype", "dist"} <= v.keys()]


def _prefetch(probe: Probe) -> None:
    """Generate (or read back) the probe's host operands before its timed runs."""
    for s in _host_specs(probe.inputs):
        try:
            operand(s)
        except ValueError:  # an unsupported spec: the probe's own run reports it
            pass


# True once this process ran a probe: its CPU ops and the native feature extractor may have
# started OpenMP teams, and libgomp is not fork-safe (a forked child hangs at its first parallel
# region), so probes.parallel.fork_ready() refuses to fork from then on
RAN_IN_THIS_PROCESS = False


def run_probe(probe: Probe, profile_kernels: bool = True, recorder: KernelRecorder | None = None) -> dict[str, Any]:
    """Run one probe RUNS_PER_PROBE times; the record used in fingerprints.

    The last run is the profiled one when the probe records kernel names: through ``recorder``
    (a suite-wide session, names filled in by ``run_all``) or, without one, a session of its own.
    ``record["timing"]`` holds the seconds spent per phase (inputs, runs, profiled run, digests,
    features incl. the fp64 reference, plan evaluation)."""
    global RAN_IN_THIS_PROCESS
    RAN_IN_THIS_PROCESS = True
    t_start = time.perf_counter()
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
    timing: dict[str, float] = {}
    clock = time.perf_counter
    own_recorder = None
    try:
        t0 = clock()
        _prefetch(probe)
        timing["inputs"] = clock() - t0
        profiled = profile_kernels and probe.profile_kernels
        if profiled and recorder is None:
            try:
                own_recorder = recorder = KernelRecorder("cuda")
            except Exception as exc:  # the profiler is an extra: its failure does not fail the probe
                record["kernels_error"] = f"{type(exc).__name__}: {exc}"[:500]
                profiled = False
        digests, times, output = [], [], None
        t_digest = 0.0
        for i in range(RUNS_PER_PROBE):
            start = clock()
            if profiled and i == RUNS_PER_PROBE - 1:
                output = recorder.run(probe.id, probe.run)
                timing["profiled_run"] = clock() - start
            else:
                output = probe.run()
                times.append(clock() - start)
            t1 = clock()
            digests.append(features.digest(output))
            t_digest += clock() - t1
        timing["runs"] = sum(times)
        timing["digests"] = t_digest
        if own_recorder is not None:
            try:
                record["kernels"] = own_recorder.finish().get(probe.id, [])
            except Exception as exc:
                record["kernels_error"] = f"{type(exc).__name__}: {exc}"[:500]
        deterministic = len(set(digests)) == 1
        if probe.plans:
            t1 = clock()
            record["explained_by"] = _explained_by(probe, output)
            timing["plans"] = clock() - t1
        t1 = clock()
        feats = _features(probe, output)
        timing["features"] = clock() - t1
        record.update(
            status="ok",
            digest=digests[0] if deterministic else None,
            digests=digests,
            deterministic=deterministic,
            output={"dtype": str(output.dtype), "shape": list(output.shape)},
            time_s=min(times + ([timing["profiled_run"]] if "profiled_run" in timing else [])),
            features=feats,
        )
    except ProbeUnsupported as exc:
        record.update(status="skipped", reason=str(exc)[:500], missing=["backend"])
    except Exception as exc:  # one failing probe must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=4))
    if own_recorder is not None and own_recorder._open:  # the probe failed mid-way: stop the session
        try:
            own_recorder.finish()
        except Exception:
            pass
    timing["total"] = clock() - t_start  # the phases plus what lies between them (imports, checks)
    record["timing"] = {k: round(v, 6) for k, v in timing.items()}
    return record


def import_shared_modules() -> None:
    """Import what the probes, the worker processes forked from this one and the platform thread
    need, once, in this thread: torch's import is not thread-safe, and an editable install may
    rebuild on importing the native modules (two concurrent rebuilds of one build tree must not
    happen). A module that fails to import is left for the probes to report (failed / skipped)."""
    for name in ("torch", "hspi_kernels._build_info", "hspi_kernels._native"):
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except Exception:  # a broken install: platform.collect records why, the probes fail/skip
            pass


def _needs_recorder(probes: list[Probe], profile_kernels: bool) -> bool:
    return profile_kernels and any(p.profile_kernels and not missing_capabilities(p) for p in probes)


def run_all(probes: Iterable[Probe], on_done: Callable[[Probe, dict], None] | None = None,
            profile_kernels: bool = True, suite_timing: dict[str, float] | None = None) -> list[dict]:
    """Run the probes in order; kernel names of every profiled probe come from one profiler
    session spanning the suite (``KernelRecorder``) and are filled in when it ends.
    ``suite_timing`` (when given) receives the seconds of the suite-level phases."""
    probes = list(probes)
    suite_timing = {} if suite_timing is None else suite_timing
    records: list[dict] = []
    recorder, recorder_error = None, None
    cache_before = dict(cache.stats)
    try:
        if _needs_recorder(probes, profile_kernels):
            t0 = time.perf_counter()
            try:
                recorder = KernelRecorder("cuda")
            except Exception as exc:  # the profiler is an extra: kernel names are then missing
                recorder_error = f"{type(exc).__name__}: {exc}"[:500]
            suite_timing["profiler_start"] = time.perf_counter() - t0
        for probe in probes:
            record = run_probe(probe, profile_kernels and recorder is not None, recorder=recorder)
            if recorder_error and probe.profile_kernels and record["status"] == "ok":
                record["kernels_error"] = recorder_error
            records.append(record)
            if on_done is not None:
                on_done(probe, record)
    finally:
        if recorder is not None:
            t0 = time.perf_counter()
            try:
                names = recorder.finish()
            except Exception as exc:
                names, recorder_error = {}, f"{type(exc).__name__}: {exc}"[:500]
            for record in records:
                if record["id"] in names and record.get("status") == "ok":
                    record["kernels"] = names[record["id"]]
                elif recorder_error and record["id"] in recorder.ids:
                    record["kernels_error"] = recorder_error
            suite_timing["profiler_finish"] = time.perf_counter() - t0
        clear_operand_cache()  # cached operands (host and device) are dropped after each suite
        suite_timing["cache"] = {k: cache.stats[k] - cache_before.get(k, 0) for k in cache.stats}
    return records
