"""A persistent pool of ranks (gloo on the CPU, or NCCL with one GPU per rank; ``torch.multiprocessing``
spawn) that runs tasks collectively.

:class:`RankGroup` starts ``world_size`` worker processes once (a free TCP port on 127.0.0.1, one
torch thread each), then :meth:`RankGroup.call` sends every rank the same task name with its own
argument and returns the list of per-rank results. Every wait is bounded: a worker that raises,
dies, or does not answer within ``timeout`` ends the group (the workers are terminated by their
process objects) and raises :class:`WorkerError` naming the rank and its traceback, never a hang.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import time
import traceback

__all__ = ["WorkerError", "RankGroup", "free_port", "TASKS", "BACKENDS", "backend_unavailable"]


class WorkerError(RuntimeError):
    """A worker of a :class:`RankGroup` failed, died or timed out."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TASKS: dict = {}  # name -> fn(rank, world_size, arg, state) -> result (registered by the modules that use them)


# the modules whose tasks a worker can run: imported by name in the worker, where each registers
# its tasks in TASKS (they import this module; naming them keeps the import graph one-way)
TASK_MODULES = ("hspi_kernels.parallel.allreduce", "hspi_kernels.parallel.probes", "hspi_kernels.parallel.tp")


def _register_defaults() -> None:
    import importlib

    for name in TASK_MODULES:
        importlib.import_module(name)


BACKENDS = ("gloo", "nccl")


def backend_unavailable(backend: str, world_size: int) -> str | None:
    """Why a group of ``world_size`` ranks cannot run on ``backend`` here (None: it can). gloo:
    the CPU, any world size; NCCL: one GPU per rank."""
    if backend not in BACKENDS:
        return f"unknown distributed backend {backend!r} (gloo or nccl)"
    try:
        import torch.distributed as dist
    except ImportError:
        return "torch is not installed"
    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if backend == "gloo":
        return None if dist.is_gloo_available() else "this torch build has no gloo backend"
    import torch

    if not dist.is_nccl_available():
        return "this torch build has no NCCL backend"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < world_size:
        return f"NCCL world size {world_size} needs {world_size} GPUs, this machine has {gpus}"
    return None


def _worker(rank: int, world_size: int, port: int, tasks, results, threads: int, timeout: float,
            backend: str = "gloo") -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    state: dict = {"device": "cpu"}
    try:
        if backend == "nccl":  # one GPU per rank; the tasks put their tensors on state["device"]
            torch.cuda.set_device(rank)
            state["device"] = f"cuda:{rank}"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        _register_defaults()
    except Exception:
        results.put((rank, -1, "error", traceback.format_exc()))
        return
    results.put((rank, -1, "ok", os.getpid()))
    while True:
        task_id, name, arg = tasks.get()
        if name == "__stop__":
            break
        try:
            out = TASKS[name](rank, world_size, arg, state)
            results.put((rank, task_id, "ok", out))
        except BaseException:  # noqa: BLE001 - reported to the parent, which ends the group
            results.put((rank, task_id, "error", traceback.format_exc()))
            break
    try:
        dist.destroy_process_group()
    except Exception:
        pass


class RankGroup:
    """``with RankGroup(4) as g: g.call("allreduce", [x0, x1, x2, x3])``."""

    def __init__(self, world_size: int, *, timeout: float = 120.0, threads: int = 1, start_timeout: float = 180.0,
                 backend: str = "gloo"):
        import torch.multiprocessing as mp

        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        reason = backend_unavailable(backend, world_size)
        if reason is not None:
            raise WorkerError(reason)
        self.backend = backend
        self.world_size, self.timeout = int(world_size), float(timeout)
        ctx = mp.get_context("spawn")
        self.port = free_port()
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        self._next = 0
        self.closed = False
        self.procs = [ctx.Process(target=_worker, daemon=True,
                                  args=(r, world_size, self.port, self._tasks[r], self._results, threads, timeout,
                                        backend))
                      for r in range(world_size)]
        for p in self.procs:
            p.start()
        self.pids = self._collect(-1, start_timeout, "start")

    # -- results ------------------------------------------------------------------------------
    def _collect(self, task_id: int, timeout: float, what: str) -> list:
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(got) < self.world_size:
            try:
                rank, tid, status, payload = self._results.get(timeout=0.2)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.procs) if p.exitcode is not None]
                if dead:
                    self._fail(f"worker rank {dead[0][0]} exited with code {dead[0][1]} during {what!r}")
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.world_size)) - set(got))
                    self._fail(f"no answer from rank(s) {missing} within {timeout:.0f} s during {what!r}")
                continue
            if tid != task_id:
                continue  # a late answer to an earlier task (cannot happen while tasks run in lock step)
            if status == "error":
                self._fail(f"worker rank {rank} failed during {what!r}:\n{payload}")
            got[rank] = payload
        return [got[r] for r in range(self.world_size)]

    def _fail(self, message: str):
        self.close(force=True)
        raise WorkerError(f"{message}\n(world_size={self.world_size}; group shut down)")

    def call(self, name: str, args: list | None = None, timeout: float | None = None) -> list:
        """Run task ``name`` on every rank (``args[r]`` to rank r); the per-rank results."""
        if self.closed:
            raise WorkerError("the rank group is closed")
        args = args if args is not None else [None] * self.world_size
        if len(args) != self.world_size:
            raise ValueError(f"{name}: {len(args)} arguments for {self.world_size} ranks")
        task_id = self._next
        self._next += 1
        for r in range(self.world_size):
            self._tasks[r].put((task_id, name, args[r]))
        return self._collect(task_id, timeout or self.timeout, name)

    def close(self, force: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if not force:
            for q in self._tasks:
                try:
                    q.put((-2, "__stop__", None))
                except Exception:
                    pass
            for p in self.procs:
                p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        # drop the queues now: their semaphores are unregistered from the resource tracker when
        # freed, which an os._exit() at the end of a CLI verb would otherwise skip (a warning)
        for q in [*self._tasks, self._results]:
            q.close()
            q.join_thread()
        self._tasks, self._results = [], None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(force=exc[0] is not None)

    def __del__(self):
        try:
            self.close(force=True)
        except Exception:
            pass


def _task_echo(rank, world_size, arg, state):
    return (rank, world_size, arg)


def _task_fail(rank, world_size, arg, state):
    if rank == arg:
        raise RuntimeError(f"deliberate failure on rank {rank}")
    import torch
    import torch.distributed as dist

    t = torch.zeros(1)
    dist.all_reduce(t)  # the other ranks wait in a collective that rank `arg` never joins
    return rank


def _task_exit(rank, world_size, arg, state):
    if rank == arg:
        os._exit(3)
    return rank


TASKS.update(echo=_task_echo, fail=_task_fail, exit=_task_exit)
