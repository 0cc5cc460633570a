"""The probe suite over several processes: what a warm ``hspi probe`` spends its time on is
importing torch (3-5 s on the H100 hosts measured) and first-use set-up (CUDA context, cuBLAS
handle, Triton launcher, cuDNN) before ~1 s of actual probe runs. The set-up is per process, so
independent probe groups run in worker processes side by side.

Workers are forked from the coordinator once it has imported torch (Linux, one thread, no CUDA
context yet: :func:`fork_ready`), so no worker imports anything and each creates its own CUDA
context; elsewhere they are fresh interpreters spawned before the coordinator's imports, which
then overlap (on an H100 host four concurrent torch imports took 4.0-4.6 s each instead of 3.3 s).

Groups (:func:`group_of`): ``main`` (torch-cuda non-GEMM and our CUDA kernels, in the
coordinating process), ``library-gemm`` (cuBLAS through torch), ``triton``, ``cpu`` (numpy and
torch CPU). Each worker runs ``runner.run_all`` on its probes exactly as the serial suite does
(every probe twice, digests, features, plans, its own profiler session with ``--kernels``):
a record does not depend on the process it came from (bit-identity with the serial suite is
checked on the GPU, docs/results). ``jobs=1`` is the serial suite in one process.

Protocol: the worker gets ``{"ids": [...], "profile_kernels": bool, "use_cache": bool}`` (as JSON
on stdin when spawned) and writes one JSON line per finished probe, ``{"record": ...}``, then
``{"suite": ...}`` (its suite-level timings and cache counts). Anything else a probe prints goes
to the worker's stderr (fd 1 is redirected), kept in a temporary file and quoted in the records
of its probes if the worker dies. A probe the worker did not report is recorded as failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

import hspi_kernels
from hspi_kernels.probes import cache, catalog, runner
from hspi_kernels.probes.registry import Probe

__all__ = ["GROUPS", "group_of", "default_jobs", "partition", "Suite", "start", "fork_ready", "run_job"]

GROUPS = ("main", "library-gemm", "triton", "cpu")


def group_of(probe: Probe) -> str:
    """The process group of a probe (module docstring)."""
    if probe.backend in ("numpy", "torch-cpu"):
        return "cpu"
    if probe.backend == "triton":
        return "triton"
    if probe.backend == "torch-cuda" and probe.family == "library-gemm":
        return "library-gemm"
    return "main"


def default_jobs() -> int:
    """Processes for the suite when the user does not say: one per group, at most half the
    cores (each process imports torch at full speed on a core of its own), at least 1."""
    return max(1, min(len(GROUPS), (os.cpu_count() or 1) // 2))


def partition(probes: list[Probe], jobs: int) -> tuple[list[Probe], list[list[Probe]]]:
    """(probes of the coordinating process, [probes of each worker]): the non-empty groups in
    GROUPS order, the first in the coordinator; with fewer processes than groups, worker i
    takes the remaining groups i, i + (jobs - 1), ... Order within a group is the given order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    by_group: dict[str, list[Probe]] = {g: [] for g in GROUPS}
    for p in probes:
        by_group[group_of(p)].append(p)
    groups = [by_group[g] for g in GROUPS if by_group[g]]
    if jobs == 1 or len(groups) <= 1:
        return list(probes), []
    workers = min(jobs, len(groups)) - 1
    own = groups[0]
    rest = groups[1:]
    return own, [[p for g in rest[i::workers] for p in g] for i in range(workers)]


def _same_package_env() -> dict:
    """The environment of a spawned worker: it must import the hspi_kernels this process runs (a
    source tree in the working directory would shadow an installed package under ``-m``; the
    worker runs with ``-P``, no working directory on sys.path, and this package's root first on
    PYTHONPATH)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(hspi_kernels.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class _Worker:
    """One worker process and the thread that reads its records as they arrive. ``how``:
    "spawn" (a fresh interpreter, ``python -m hspi_kernels.probes.parallel``, job on stdin) or
    "fork" (a child of this process, which has imported torch but not initialised CUDA: the
    child runs its probes and ends with os._exit, never returning here)."""

    def __init__(self, probes: list[Probe], profile_kernels: bool, use_cache: bool,
                 on_record: Callable[[dict], None], how: str):
        self.ids = [p.id for p in probes]
        self.records: dict[str, dict] = {}
        self.suite: dict[str, Any] = {}
        self.ended: float | None = None  # perf_counter when the worker's last message arrived
        self.protocol_errors: list[str] = []
        self._on_record = on_record
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        job = {"ids": self.ids, "profile_kernels": profile_kernels, "use_cache": use_cache}
        if how == "spawn":
            self.proc = subprocess.Popen([sys.executable, "-P", "-m", "hspi_kernels.probes.parallel"],
                                         env=_same_package_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr)
            self.proc.stdin.write(json.dumps(job).encode())
            self.proc.stdin.close()
            self._stream, self.pid = self.proc.stdout, None
        else:
            read_fd, write_fd = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(read_fd)
                os.dup2(self._stderr.fileno(), 2)
                _run_job(job, os.fdopen(write_fd, "w", buffering=1))
            os.close(write_fd)
            self.proc, self.pid = None, pid
            self._stream = os.fdopen(read_fd, "rb")
        self._reader = threading.Thread(target=self._read, name="hspi-probe-worker-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            try:
                message = json.loads(line)
            except ValueError:
                self.protocol_errors.append(line[:200].decode(errors="replace"))
                continue
            if "record" in message:
                record = message["record"]
                self.records[record["id"]] = record
                self._on_record(record)
            elif "suite" in message:
                self.suite = message["suite"]
                self.ended = time.perf_counter()

    def _wait(self) -> int:
        if self.proc is not None:
            return self.proc.wait()
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def finish(self) -> list[dict]:
        """Wait for the worker; its records in its probe order, a failed record for every probe
        it did not report (the worker's exit status and stderr tail say why)."""
        rc = self._wait()
        self._reader.join()
        self._stream.close()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode(errors="replace")
        self._stderr.close()
        out = []
        for probe_id in self.ids:
            record = self.records.get(probe_id)
            if record is None:
                record = {"id": probe_id, "status": "failed",
                          "error": f"probe worker process exited with status {rc} before reporting this probe"
                                   + (f"; protocol errors: {self.protocol_errors[:3]}" if self.protocol_errors else ""),
                          "traceback": tail}
                self._on_record(record)
            out.append(record)
        return out


class Suite:
    """A suite started over several processes (:func:`start`): ``own`` are the coordinator's
    probes, to be run with ``runner.run_all``; ``finish`` merges everything in selection order."""

    def __init__(self, probes: list[Probe], jobs: int, profile_kernels: bool, use_cache: bool,
                 on_done: Callable[[Probe, dict], None] | None, how: str = "spawn"):
        self.order = [p.id for p in probes]
        self.by_id = {p.id: p for p in probes}
        self.own, groups = partition(probes, jobs)
        self._lock = threading.Lock()
        self._on_done = on_done
        self.started = time.perf_counter()
        self.how = how if groups else "none"
        self.workers = [_Worker(g, profile_kernels, use_cache, self._report, how) for g in groups]

    def _report(self, record: dict) -> None:
        if self._on_done is not None:
            with self._lock:
                self._on_done(self.by_id[record["id"]], record)

    def report_own(self, probe: Probe, record: dict) -> None:
        """``on_done`` for the coordinator's own run_all (same lock as the workers' records)."""
        self._report(record)

    def finish(self, own_records: list[dict], suite_timing: dict | None = None) -> list[dict]:
        """All records in selection order. ``suite_timing`` (the coordinator's, from run_all) gets
        ``worker<i>.wall`` (seconds from the start to worker i's last message), its suite phases as
        ``worker<i>.<phase>``, ``worker_wait`` (time spent waiting after our own probes) and the
        workers' cache counts added into ``cache``: all flat, as the fingerprint's suite schema."""
        t0 = time.perf_counter()
        merged = {r["id"]: r for r in own_records}
        for i, w in enumerate(self.workers):
            for r in w.finish():
                merged[r["id"]] = r
            if suite_timing is not None:
                suite_timing[f"worker{i}.wall"] = (w.ended or time.perf_counter()) - self.started
                for k, v in w.suite.items():
                    if k != "cache" and isinstance(v, (int, float)):
                        suite_timing[f"worker{i}.{k}"] = v
        if suite_timing is not None and self.workers:
            suite_timing["worker_wait"] = time.perf_counter() - t0
            cache = suite_timing.setdefault("cache", {})
            for w in self.workers:
                for k, v in w.suite.get("cache", {}).items():
                    cache[k] = cache.get(k, 0) + v
        return [merged[i] for i in self.order]


def fork_ready() -> tuple[bool, str]:
    """(True, "") when workers may be forked from this process now: Linux, one thread, no
    CUDA context yet (a forked child cannot use a CUDA context its parent created), and no probe
    run here yet (its OpenMP teams: libgomp is not fork-safe, a child forked after the parent
    ran a parallel region hangs at its first one; docs/results/reliability.md)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False, f"fork is not used on {sys.platform}"
    if threading.active_count() != 1:
        return False, f"{threading.active_count()} threads are running"
    if runner.RAN_IN_THIS_PROCESS:
        return False, "this process already ran probes (OpenMP teams: libgomp is not fork-safe)"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return False, "CUDA is already initialised in this process"
    return True, ""


def start(probes: list[Probe], jobs: int | None = None, profile_kernels: bool = False, use_cache: bool = True,
          on_done: Callable[[Probe, dict], None] | None = None, how: str = "spawn") -> Suite:
    """Start the workers now and return the Suite. ``how``: "spawn" (fresh interpreters: start
    them before this process's heavy imports, so the imports overlap) or "fork" (children of
    this process after it imported torch: no import at all in the workers; falls back to
    spawn when :func:`fork_ready` says no)."""
    if how not in ("spawn", "fork"):
        raise ValueError(f"how must be 'spawn' or 'fork', got {how!r}")
    if how == "fork" and not fork_ready()[0]:
        how = "spawn"
    return Suite(list(probes), default_jobs() if jobs is None else jobs, profile_kernels, use_cache, on_done, how)


def run_job(job: dict, emit: Callable[[dict], None]) -> dict:
    """Run the probes a job names (the protocol's request: ``ids``, ``profile_kernels``,
    ``use_cache``; from a worker or a probe server's client), ``emit({"record": r})`` as each
    finishes; returns the suite timings (with cache counts). ValueError, before anything runs,
    for ids this version does not have. The cache switch is restored afterwards."""
    selected = [catalog.get(i) for i in job["ids"]]
    unknown = [i for i, p in zip(job["ids"], selected) if p is None]
    if unknown:
        raise ValueError(f"this version has no probes {unknown[:5]}")
    suite_timing: dict = {}
    cache.set_enabled(None if job.get("use_cache", True) else False)
    try:
        runner.run_all(selected, lambda probe, record: emit({"record": record}),
                       profile_kernels=bool(job.get("profile_kernels")), suite_timing=suite_timing)
    finally:
        cache.set_enabled(None)
    return suite_timing


def _run_job(job: dict, out) -> None:
    """A worker's whole life after it has its job: :func:`run_job`, its protocol lines written
    to ``out`` (anything printed goes to stderr), then the end of the process without the
    interpreter's teardown (everything is written; ~1 s with torch and a CUDA context loaded)."""
    status = 0
    try:
        os.dup2(2, 1)  # whatever a probe or a library prints goes to stderr, never into the protocol
        sys.stdout = sys.stderr

        def write(message: dict) -> None:
            out.write(json.dumps(message, default=str) + "\n")

        write({"suite": run_job(job, write)})
        out.flush()
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        sys.stderr.flush()
        os._exit(status)


def _worker_main() -> None:
    """``python -m hspi_kernels.probes.parallel``: run the probes named on stdin (protocol above)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    _run_job(json.loads(sys.stdin.read()), out)


if __name__ == "__main__":
    _worker_main()
