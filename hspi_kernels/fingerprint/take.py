"""Taking a fingerprint of this machine: the library call behind `hspi probe` and `hspi identify`.

:func:`take` selects the probes, runs them in a running probe server (``server`` "auto"/"on",
``probes.server``) or here (the groups in worker processes, ``probes.parallel``; the platform
metadata collected in a thread meanwhile), and builds the fingerprint (``schema.build``) with
where the time went (``suite``: wall time, phases, cache counts). Progress is a callback per
finished probe, notes (the server was not used) a callback too, failures are exceptions
(:class:`TakeError`); nothing here prints.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Callable

from hspi_kernels import platform as plat
from hspi_kernels.fingerprint import schema
from hspi_kernels.probes import cache, catalog, parallel, runner
from hspi_kernels.probes import server as srv
from hspi_kernels.probes.registry import Probe

__all__ = ["take", "TakeError", "NoProbesSelected", "ServerFailed", "SERVER_MODES"]

SERVER_MODES = ("auto", "on", "off")
RECORD_PHASES = ("inputs", "runs", "profiled_run", "digests", "plans", "features")  # summed into probes.<phase>

# (probes done, probes in all, the record just finished: None at the start and at a restart)
Progress = Callable[[int, int, "dict | None"], None]


class TakeError(RuntimeError):
    """Taking a fingerprint failed before it could be built."""


class NoProbesSelected(TakeError):
    """No registered probe id contains the ``only`` pattern."""


class ServerFailed(TakeError):
    """``server="on"`` and the probe server is not there, refused the request or failed."""


def take(only: str | None = None, *, suite: str = "default", kernels: bool = False, use_cache: bool = True, clear_cache: bool = False,
         jobs: int = 0, server: str = "auto", progress: Progress | None = None,
         note: Callable[[str], None] | None = None, timing: bool = True, imports_s: float = 0.0,
         distributed: tuple[int, ...] = (), dist_backend: str = "auto") -> dict[str, Any]:
    """Probe this machine; the fingerprint (``hspi-fingerprint/1``, validated).

    ``only``: run only probes whose id contains it. ``suite``: "default", "stack" (the
    software-stack probes: compile mode, JAX, BLAS flags, fp8) or "all". ``kernels``: record the CUDA kernel names of
    library probes (one torch.profiler session). ``use_cache`` / ``clear_cache``: the on-disk
    cache of host work (``probes.cache``). ``jobs``: worker processes (0: one per probe group,
    at most half the cores; 1: this process only). ``server``: "auto" runs the probes in a
    running `hspi serve` if there is one, else here; "on" only there; "off" only here.
    ``progress(done, total, record)`` after every finished probe, and ``(0, total, None)`` when
    the probes start and again when they restart here after the server failed mid-way; ``note(message)`` when the server
    was there but not used (default: a RuntimeWarning). ``timing``: record the ``suite`` section
    (wall time, phases, cache counts); ``imports_s``: seconds the caller spent importing before
    the call, recorded as the ``imports`` phase and counted in the wall time. ``distributed``:
    world sizes of the distributed probes (``hspi_kernels.parallel.probes``: all-reduce order,
    row-parallel linear at TP 1 and each size) appended after the suite's records, on
    ``dist_backend`` ("auto": NCCL with a GPU per rank, else gloo); ``only`` filters them too.

    ValueError for a server mode other than auto/on/off, :class:`NoProbesSelected`,
    :class:`ServerFailed` (server="on")."""
    start = time.perf_counter()
    if server not in SERVER_MODES:
        raise ValueError(f"server must be auto, on or off, got {server!r}")
    cache.set_enabled(False if not use_cache else None)
    if cache.enabled():
        unusable = cache.unusable_reason()
        if unusable is not None:  # a warning, not an error: the cache only ever saves time
            (note or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3)))(
                f"{unusable}: running without the disk cache")
            cache.set_enabled(False)
            use_cache = False
    if clear_cache:
        cache.clear()
    selected = catalog.select(only, suite)
    dist_ids: list[str] = []
    if distributed:
        from hspi_kernels.parallel import probes as dist_probes

        dist_backend = dist_probes.resolve_backend(dist_backend, distributed)
        dist_ids = [pid for pid in dist_probes.probe_ids(distributed, dist_backend) if only is None or only in pid]
    if not selected and not dist_ids:
        raise NoProbesSelected(f"no probe id contains {only!r}")
    phases: dict[str, Any] = {"imports": imports_s + time.perf_counter() - start}
    t0 = time.perf_counter()
    if selected:
        records, meta, suite_timing = _run(selected, kernels=kernels, use_cache=use_cache, jobs=jobs, server=server,
                                           phases=phases, progress=progress, note=note)
    else:  # only distributed probes selected
        records, meta, suite_timing = [], plat.collect(), {}
    phases["probes"] = time.perf_counter() - t0 - phases.get("shared_imports", 0.0)
    if dist_ids:
        t0 = time.perf_counter()
        done = [len(records)]
        total = len(records) + len(dist_ids)

        def on_dist(record: dict) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total, record)

        records = records + dist_probes.records(distributed, backend=dist_backend, only=only, on_record=on_dist)
        phases["distributed"] = time.perf_counter() - t0
    suite = None
    if timing:
        cache_counts = suite_timing.pop("cache", {})
        phases.update(suite_timing)
        for phase in RECORD_PHASES:
            phases[f"probes.{phase}"] = sum(r.get("timing", {}).get(phase, 0.0) for r in records)
        wall = imports_s + time.perf_counter() - start  # the caller's imports and this call
        suite = {"wall_s": round(wall, 4), "phases": {k: round(v, 4) for k, v in phases.items()},
                 "cache": cache_counts}
    fp = schema.build(meta, plat.platform_label(meta), records, suite=suite)
    return schema.validate(fp, "<this machine>")


def _run(selected: list[Probe], *, kernels: bool, use_cache: bool, jobs: int, server: str, phases: dict,
         progress: Progress | None, note: Callable[[str], None] | None) -> tuple[list[dict], dict, dict]:
    """(records in selection order, platform metadata, suite timings incl. ``cache`` counts) of
    the probes ``selected``: in the probe server, else here. ``phases`` receives ``server`` or
    ``shared_imports`` and ``platform_wait`` (seconds)."""
    total = len(selected)
    done = 0

    def on_record(record: dict) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, record)

    if progress is not None:
        progress(0, total, None)
    if server != "off":
        t0 = time.perf_counter()
        try:
            records, suite_timing, meta = srv.request([p.id for p in selected], profile_kernels=kernels,
                                                      use_cache=use_cache, on_record=on_record)
            phases["server"] = time.perf_counter() - t0
            return records, meta, suite_timing
        except (srv.ServerUnavailable, srv.ServerError, ValueError) as exc:
            if server == "on":
                raise ServerFailed(str(exc)) from exc
            if not isinstance(exc, srv.ServerUnavailable):
                message = f"probe server not used ({exc}); probing here"
                if note is not None:
                    note(message)
                else:
                    warnings.warn(message, RuntimeWarning, stacklevel=3)
            done = 0
            if progress is not None:
                progress(0, total, None)
    return _run_here(selected, kernels=kernels, use_cache=use_cache, jobs=jobs, phases=phases,
                     on_done=lambda probe, record: on_record(record))


def _run_here(selected: list[Probe], *, kernels: bool, use_cache: bool, jobs: int, phases: dict,
              on_done: Callable[[Probe, dict], None]) -> tuple[list[dict], dict, dict]:
    # workers: forked once torch is imported (no import in them), or spawned now so that their
    # imports overlap ours where forking is not possible
    suite = None if parallel.fork_ready()[0] else parallel.start(
        selected, jobs or None, profile_kernels=kernels, use_cache=use_cache, on_done=on_done, how="spawn")
    t0 = time.perf_counter()
    runner.import_shared_modules()
    phases["shared_imports"] = time.perf_counter() - t0
    if suite is None:
        suite = parallel.start(selected, jobs or None, profile_kernels=kernels, use_cache=use_cache, on_done=on_done,
                               how="fork")
    # platform metadata (nvidia-smi, nvcc --version, library versions) is collected in a thread
    # while the probes run: its subprocesses wait outside the GIL; it reads the device, never uses it
    platform_result: dict = {}

    def collect_platform():
        try:
            platform_result["meta"] = plat.collect()
        except BaseException as exc:  # re-raised in the calling thread
            platform_result["error"] = exc

    collector = threading.Thread(target=collect_platform, name="hspi-platform", daemon=True)
    collector.start()
    suite_timing: dict = {}
    own = runner.run_all(suite.own, suite.report_own, profile_kernels=kernels, suite_timing=suite_timing)
    records = suite.finish(own, suite_timing)
    t0 = time.perf_counter()
    collector.join()
    phases["platform_wait"] = time.perf_counter() - t0
    if "error" in platform_result:
        raise platform_result["error"]
    return records, platform_result["meta"], suite_timing
