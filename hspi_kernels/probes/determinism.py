"""Determinism figures: every fingerprint probe this machine can run, repeated in one process
and across processes, classified as

- ``deterministic``: one digest over every repeat of every process;
- ``nondeterministic-by-design``: a ``control`` probe (atomicAdd, CUB scan, ...) whose digests
  differ, as its role says they may;
- ``flaky``: a fingerprint probe whose digests differ (a fingerprint must never do that);
- ``deterministic-control``: a control probe that happened to repeat (not a failure).

``python -m hspi_kernels.probes.determinism --repeats 10 --processes 3 --json out.json``.
:func:`thread_sweep` runs one probe under several ``torch.set_num_threads`` values (and
optionally with every core kept busy), the tool used for the logsumexp investigation
(docs/results/reliability.md).

It uses the probe catalog (``select``), the registry's capability check and ``numerics.bits.digest``;
nothing heavy at import time (the probes import torch when they run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Iterable

from hspi_kernels.numerics.bits import digest
from hspi_kernels.probes import catalog
from hspi_kernels.probes.registry import missing_capabilities
from hspi_kernels.platform import files
from hspi_kernels.platform import metadata

__all__ = ["runnable_probes", "repeat_in_process", "measure", "classify", "thread_sweep", "main"]




def runnable_probes(pattern: str | None = None, backends: Iterable[str] | None = None) -> list:
    """The probes whose capabilities this machine has (on a CPU machine: the CPU probes)."""
    out = [p for p in catalog.select(pattern) if not missing_capabilities(p)]
    if backends is not None:
        allowed = set(backends)
        out = [p for p in out if p.backend in allowed]
    return out


def repeat_in_process(probe_list: list, repeats: int) -> dict[str, list[str]]:
    """probe id -> the digests of ``repeats`` runs in this process (errors as 'error: ...')."""
    result: dict[str, list[str]] = {}
    for p in probe_list:
        ds = []
        for _ in range(repeats):
            try:
                ds.append(digest(p.run()))
            except Exception as exc:  # a failing probe is reported, the others go on
                ds.append(f"error: {type(exc).__name__}: {exc}"[:200])
        result[p.id] = ds
    return result


def _worker_digests(pattern: str | None, repeats: int, env: dict[str, str] | None) -> dict[str, list[str]]:
    cmd = [sys.executable, "-m", "hspi_kernels.probes.determinism", "--worker", "--repeats", str(repeats)]
    if pattern:
        cmd += ["--pattern", pattern]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"determinism worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def classify(role: str, in_process: list[str], processes: list[list[str]]) -> str:
    digests = set(in_process) | {d for ds in processes for d in ds}
    if any(d.startswith("error:") for d in digests):
        return "failed"
    same = len(digests) == 1
    if role == "control":
        return "deterministic-control" if same else "nondeterministic-by-design"
    return "deterministic" if same else "flaky"


def measure(repeats: int = 10, processes: int = 3, pattern: str | None = None,
            on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The determinism table: ``repeats`` runs per probe in this process, then one run per probe
    in each of ``processes`` fresh processes (``repeats_per_process`` = 1: a fresh process is
    what a second `hspi probe` is)."""
    probe_list = runnable_probes(pattern)
    t0 = time.perf_counter()
    inproc = repeat_in_process(probe_list, repeats)
    if on_progress:
        on_progress(f"{len(probe_list)} probes x {repeats} in-process runs: {time.perf_counter() - t0:.1f} s")
    cross = []
    for i in range(processes):
        cross.append(_worker_digests(pattern, 1, None))
        if on_progress:
            on_progress(f"process {i + 1}/{processes} done")
    rows = []
    for p in probe_list:
        per_proc = [c.get(p.id, ["error: missing in worker"]) for c in cross]
        all_d = inproc[p.id] + [d for ds in per_proc for d in ds]
        rows.append({"id": p.id, "backend": p.backend, "role": p.role,
                     "class": classify(p.role, inproc[p.id], per_proc),
                     "distinct_in_process": len(set(inproc[p.id])),
                     "distinct_across_processes": len({d for ds in per_proc for d in ds}),
                     "distinct_total": len(set(all_d)), "digest": inproc[p.id][0][:16]})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    return {"repeats_in_process": repeats, "processes": processes, "counts": counts, "probes": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def _burn(seconds: float) -> None:
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1


def thread_sweep(probe_id: str, threads: Iterable[int] = (1, 2, 3, 4, 8), repeats: int = 10,
                 load: bool = False) -> dict[str, Any]:
    """Digests of one torch probe per ``torch.set_num_threads`` value (restored afterwards);
    with ``load``, every core is kept busy by a spinning process while it runs (the OS then
    deschedules OpenMP threads at random)."""
    import multiprocessing as mp

    import torch

    (probe,) = [p for p in catalog.select(probe_id) if p.id == probe_id]
    before = torch.get_num_threads()
    burners = []
    if load:
        ctx = mp.get_context("spawn")
        burners = [ctx.Process(target=_burn, args=(600,), daemon=True) for _ in range(os.cpu_count() or 1)]
        for b in burners:
            b.start()
    out: dict[str, Any] = {"probe": probe_id, "load": load, "torch": torch.__version__, "by_threads": {}}
    try:
        for t in threads:
            torch.set_num_threads(t)
            ds = [digest(probe.run()) for _ in range(repeats)]
            out["by_threads"][str(t)] = {"distinct": len(set(ds)), "digests": sorted({d[:16] for d in ds})}
    finally:
        torch.set_num_threads(before)
        for b in burners:
            b.terminate()
            b.join()
    all_d = {d for v in out["by_threads"].values() for d in v["digests"]}
    out["distinct_over_all_thread_counts"] = len(all_d)
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'probe':50s} {'class':28s} in-proc  x-proc  total"]
    for r in result["probes"]:
        lines.append(f"{r['id']:50s} {r['class']:28s} {r['distinct_in_process']:>7d} "
                     f"{r['distinct_across_processes']:>7d} {r['distinct_total']:>6d}")
    lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(result["counts"].items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hspi_kernels.probes.determinism")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--pattern", default=None)
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(repeat_in_process(runnable_probes(args.pattern), args.repeats)))
        return 0
    result = measure(args.repeats, args.processes, args.pattern, on_progress=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:

        result["platform"] = metadata.collect()
        files.atomic_write_json(args.json, result)
    return 0 if result["counts"].get("flaky", 0) == 0 and result["counts"].get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
