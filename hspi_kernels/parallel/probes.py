"""Distributed probes of ``hspi probe --distributed``: fingerprint records that separate the
tensor-parallel degree and the collective's order.

Per world size ``w`` (a :class:`~hspi_kernels.parallel.group.RankGroup` of ``w`` ranks, gloo on
CPU or NCCL with one GPU per rank):

- ``dist/<backend>/allreduce/fp32/ws<w>/n<n>``: ``all_reduce(SUM)`` of seeded wide-range fp32
  values (rank r holds row r), ``n`` in :data:`ALLREDUCE_SIZES`. ``explained_by``: the order
  revealed by masking queries (:func:`allreduce.probe_order`, per element a tree over the ranks),
  evaluated on this probe's inputs (N/N on its outputs) and on fresh values (``replay``).
- ``dist/<backend>/row-linear/fp32/tp<w>``: a row-parallel linear ``x[M, K] @ W[K, N]``, rank r
  multiplying its K slice (torch ``matmul`` on its device) and the partials all-reduced.
  ``explained_by``: the partial GEMMs recomputed here plus the revealed combine order.
- ``dist/<backend>/row-linear/fp32/tp1``: the same linear unsplit (the TP-1 baseline the
  degrees are told apart from).

Records have the fingerprint schema's fields (``status``, ``digests`` over ``repeats`` runs,
``deterministic``, ``time_s``, ``output``); a world size the machine cannot run (too few GPUs
for NCCL, no gloo) is a ``skipped`` record with the reason, a failing group a ``failed`` one.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

import numpy as np

from hspi_kernels.numerics.bits import digest
from hspi_kernels.reveal.targets import random_values

from . import allreduce as AR
from .group import TASKS, RankGroup, WorkerError, backend_unavailable

__all__ = ["ALLREDUCE_SIZES", "LINEAR_SHAPE", "BACKENDS", "probe_ids", "records", "parse_world_sizes"]

ALLREDUCE_SIZES = (4096, 1 << 16)
# M, K, N: 4096 outputs (a probed all-reduce size). K = 128: below any CPU GEMM's K block, so
# the TP-1 baseline is one k chain and every TP split differs from it. Larger K were not robust:
# MKL (torch 2.13, AMD EPYC) splits K = 256..384 into two equal blocks on one thread, so TP 2
# gave TP 1's bits (4096/4096 at K = 256, 320, 384; CI failed at 384), and K = 768 into four, so
# TP 4 with a sequential all-reduce did. The baseline also runs on one thread (see _partials)
LINEAR_SHAPE = (16, 128, 256)
BACKENDS = ("auto", "gloo", "nccl")
MAX_WORLD = 64


def parse_world_sizes(text: str) -> tuple[int, ...]:
    """'2,4' -> (2, 4); ValueError naming the bad entry (each in 2..64, no repeats)."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            w = int(part)
        except ValueError:
            raise ValueError(f"world size {part!r} is not an integer") from None
        if not 2 <= w <= MAX_WORLD:
            raise ValueError(f"world size {w} must be in 2..{MAX_WORLD} (TP 1 is the unsplit baseline, always run)")
        if w in out:
            raise ValueError(f"world size {w} given twice")
        out.append(w)
    if not out:
        raise ValueError("no world size given (e.g. --distributed 2,4)")
    return tuple(out)


def resolve_backend(backend: str, world_sizes) -> str:
    """'auto': NCCL when this machine has a GPU per rank of the largest world size, else gloo."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch / no driver: gloo decides below
        gpus = 0
    return "nccl" if gpus >= max(world_sizes) and backend_unavailable("nccl", max(world_sizes)) is None else "gloo"


def probe_ids(world_sizes, backend: str) -> list[str]:
    ids = [f"dist/{backend}/row-linear/fp32/tp1"]
    for w in world_sizes:
        ids += [f"dist/{backend}/allreduce/fp32/ws{w}/n{n}" for n in ALLREDUCE_SIZES]
        ids.append(f"dist/{backend}/row-linear/fp32/tp{w}")
    return ids


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([7, *parts]).generate_state(1)[0])


def _linear_operands():
    m, k, n = LINEAR_SHAPE
    rng = np.random.default_rng(_seed(1, m, k, n))
    return random_values(rng, (m, k), "fp32", spread=6), random_values(rng, (k, n), "fp32", spread=6)


def _task_row_linear(rank, world_size, arg, state):
    """arg: (x slice [M, K/w], W slice [K/w, N]); rank 0 returns the all-reduced [M, N]."""
    import torch
    import torch.distributed as dist

    x, w = arg
    dev = state.get("device", "cpu")
    t = torch.matmul(torch.from_numpy(x).to(dev), torch.from_numpy(w).to(dev))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy() if rank == 0 else None


TASKS["row_linear"] = _task_row_linear


def _base(pid: str, backend: str, inputs: dict, measures: str) -> dict:
    return {"id": pid, "family": "distributed", "backend": backend, "inputs": inputs, "measures": measures,
            "role": "fingerprint"}


def _ok(rec: dict, outputs: list[np.ndarray], times: list[float], explained: list[dict]) -> dict:
    digests = [digest(o) for o in outputs]
    det = len(set(digests)) == 1
    rec.update(status="ok", digest=digests[0] if det else None, digests=digests, deterministic=det,
               output={"dtype": str(outputs[0].dtype), "shape": list(outputs[0].shape)},
               time_s=round(min(times), 6), explained_by=explained)
    return rec


def _matches(a: np.ndarray, b: np.ndarray) -> int:
    return int(AR.bits_equal(a, b).sum())


def _split(w: int):
    m, k, n = LINEAR_SHAPE
    if k % w:
        raise ValueError(f"K = {k} does not split into {w} equal slices")
    return [slice(r * k // w, (r + 1) * k // w) for r in range(w)]


def _partials(x, W, w: int, device: str) -> np.ndarray:
    """The ranks' partial GEMMs recomputed in this process (torch matmul per K slice), on one
    CPU thread like the ranks (:class:`RankGroup` workers run one thread): a multi-threaded CPU
    GEMM of this small M x N may itself split K across threads (measured on a CI CPU: the TP-1
    baseline then had TP 2's bits), which would make the baseline another TP degree."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.stack([torch.matmul(torch.from_numpy(np.ascontiguousarray(x[:, s])).to(device),
                                      torch.from_numpy(np.ascontiguousarray(W[s])).to(device)).cpu().numpy()
                         for s in _split(w)])
    finally:
        torch.set_num_threads(n)


def _timed(fn, repeats: int):
    outs, times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs.append(np.asarray(fn()))
        times.append(time.perf_counter() - t0)
    return outs, times


def records(world_sizes, *, backend: str = "auto", repeats: int = 3, only: str | None = None,
            timeout: float = 120.0, on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """The distributed probe records (see the module docstring), in :func:`probe_ids` order,
    keeping those whose id contains ``only``. ``on_record(record)`` after each one."""
    world_sizes = tuple(world_sizes)
    backend = resolve_backend(backend, world_sizes)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    keep = set(pid for pid in probe_ids(world_sizes, backend) if only is None or only in pid)
    out: list[dict] = []

    def emit(rec: dict) -> None:
        if rec["id"] in keep:
            out.append(rec)
            if on_record is not None:
                on_record(rec)

    x, W = _linear_operands()
    m, k, n = LINEAR_SHAPE
    lin_inputs = {"M": m, "K": k, "N": n, "dtype": "fp32", "seed": _seed(1, m, k, n)}
    # TP 1: the unsplit linear on this process's device (CPU for gloo, GPU 0 for NCCL)
    pid = f"dist/{backend}/row-linear/fp32/tp1"
    if pid in keep:
        rec = _base(pid, backend, {**lin_inputs, "tp": 1}, "row-parallel linear, unsplit (TP 1 baseline)")
        try:
            dev = "cuda:0" if backend == "nccl" else "cpu"
            outs, times = _timed(lambda: _partials(x, W, 1, dev)[0], repeats)
            emit(_ok(rec, outs, times, []))
        except Exception as exc:  # noqa: BLE001 - one probe's failure is its record
            emit({**rec, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500],
                  "traceback": traceback.format_exc(limit=4)})
    for w in world_sizes:
        ids = [i for i in probe_ids((w,), backend) if not i.endswith("/tp1")]
        if not keep.intersection(ids):
            continue
        reason = backend_unavailable(backend, w)
        recs = {}
        for nel in ALLREDUCE_SIZES:
            recs[nel] = _base(f"dist/{backend}/allreduce/fp32/ws{w}/n{nel}", backend,
                              {"world_size": w, "numel": nel, "dtype": "fp32", "seed": _seed(2, w, nel)},
                              "all_reduce(SUM) order: per-element rank trees")
        lin = _base(f"dist/{backend}/row-linear/fp32/tp{w}", backend, {**lin_inputs, "tp": w},
                    "row-parallel linear: per-rank partial GEMM + all_reduce")
        if reason is not None:
            for rec in [*recs.values(), lin]:
                emit({**rec, "status": "skipped", "reason": reason, "missing": ["distributed"]})
            continue
        try:
            with RankGroup(w, backend=backend, timeout=timeout) as g:
                orders = {}
                for nel, rec in recs.items():
                    xs = random_values(np.random.default_rng(rec["inputs"]["seed"]), (w, nel), "fp32")
                    outs, times = _timed(lambda: AR.allreduce(g, xs), repeats)
                    order = orders[nel] = AR.probe_order(g, nel)
                    fresh_m, fresh_t = AR.replay(g, order, trials=2, seed=_seed(3, w, nel))
                    emit(_ok(rec, outs, times, [
                        {"plan": order.to_json(), "repr": "per-element all-reduce trees (revealed)",
                         "matches": _matches(AR.combine(order, xs), outs[0]), "total": int(outs[0].size)},
                        {"plan": order.to_json(), "repr": "the same order on fresh random rank values",
                         "matches": fresh_m, "total": fresh_t}]))
                sl = _split(w)
                args = [(np.ascontiguousarray(x[:, s]), np.ascontiguousarray(W[s])) for s in sl]
                outs, times = _timed(lambda: g.call("row_linear", args)[0], repeats)
                dev = "cuda:0" if backend == "nccl" else "cpu"
                parts = _partials(x, W, w, dev)
                emu = AR.combine(orders[m * n], parts).reshape(m, n)
                unsplit = _partials(x, W, 1, dev)[0]
                emit(_ok(lin, outs, times, [
                    {"plan": {"partials": "torch.matmul per K slice", "combine": orders[m * n].to_json()},
                     "repr": "partial GEMMs + revealed all-reduce order", "matches": _matches(emu, outs[0]),
                     "total": int(outs[0].size)},
                    {"plan": {"control": "TP 1 unsplit GEMM"}, "repr": "control: the unsplit linear",
                     "matches": _matches(unsplit, outs[0]), "total": int(outs[0].size)}]))
        except (WorkerError, RuntimeError, ValueError, OSError) as exc:
            done = {r["id"] for r in out}
            for rec in [*recs.values(), lin]:
                if rec["id"] not in done:
                    emit({**rec, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
    order_ = {pid: i for i, pid in enumerate(probe_ids(world_sizes, backend))}
    return sorted(out, key=lambda r: order_[r["id"]])
