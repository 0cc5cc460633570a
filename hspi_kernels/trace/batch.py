"""Batch 1 vs batch B: one row of a batch-B trace as a trace of its own, so that
:func:`tracer.diff` and :func:`counterfactual.counterfactual` compare it with a batch-1 trace of
the same prompt (the batch-invariance question: which op gives row ``r`` other bits when the
request is served in a batch of B, and why).

The seeded prompts are batch-major (``prompts.random_tokens``: row 0 of a batch of 8 is the
batch-1 prompt), and every batched tensor of the zoo LLMs carries the batch in one dimension:
first (``[B, L, H]``, ``[B, heads, L, D]``) or flattened with the sequence (``[B*L, K]``, the GEMM
operands). :func:`row_trace` maps each tensor of an op of the batch-B trace to the batch-1 trace's
op of the same key by shape: equal shapes are not batched (parameters, RoPE tables), one dimension
``B`` times larger holds the rows ``[r*n, (r+1)*n)``. Those slices get their own digests and samples,
so the row trace reads like a batch-1 trace.

Its recorded kernels are the batch-B kernels: re-executing an op of the row trace on some values
(:meth:`RowTrace.run_embedded`) places them into row ``r`` of the full batch-B inputs, runs the full
op, and slices row ``r`` of its outputs. So the counterfactual's "B's implementation on A's inputs"
is the batch-B kernel with A's row among the others, as a server would run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hspi_kernels.trace import tracer as T

__all__ = ["RowTrace", "row_trace", "row_map"]


def row_map(shape_b: list[int], shape_1: list[int], batch: int) -> int | None | str:
    """The dimension of ``shape_b`` that holds the batch (None: the tensor is not batched), or
    "mismatch" when the shapes are not related by one ``batch``-times larger dimension."""
    if list(shape_b) == list(shape_1):
        return None
    if len(shape_b) != len(shape_1):
        return "mismatch"
    diff = [d for d, (x, y) in enumerate(zip(shape_b, shape_1)) if x != y]
    if len(diff) == 1 and shape_b[diff[0]] == batch * shape_1[diff[0]]:
        return diff[0]
    return "mismatch"


def _rows(ndim: int, dim: int, row: int, n: int) -> tuple:
    idx = [slice(None)] * ndim
    idx[dim] = slice(row * n, (row + 1) * n)
    return tuple(idx)


@dataclass
class RowTrace(T.Trace):
    """Row ``row`` of a batch-B trace (module docstring); ``parent`` is the full trace."""

    parent: T.Trace | None = None
    row: int = 0
    slices: dict | None = None  # op key -> {"inputs": [dim | None], "outputs": [dim | None]}

    def run_embedded(self, op: dict, values: list[np.ndarray], run: Callable) -> list[np.ndarray]:
        """The batch-B kernel of ``op`` on ``values`` (row-shaped): ``values`` put into row ``row``
        of the full op's recorded inputs, the full op run by ``run(full_op, full_values, parent)``,
        row ``row`` of each output returned."""
        from hspi_kernels.trace import counterfactual as C

        full = self.parent.by_key()[op["key"]]
        dims = self.slices[op["key"]]
        full_vals = C._input_values(self.parent, full)
        embedded = []
        for v, fv, dim, info in zip(values, full_vals, dims["inputs"], op["inputs"]):
            if dim is None:
                embedded.append(v)
                continue
            fv = np.array(fv, copy=True)
            fv[_rows(fv.ndim, dim, self.row, info["shape"][dim])] = v
            embedded.append(fv)
        outs = run(full, embedded, self.parent)
        return [o if d is None else np.ascontiguousarray(o[_rows(o.ndim, d, self.row, info["shape"][d])])
                for o, d, info in zip(outs, dims["outputs"], op["outputs"])]


def row_trace(tb: T.Trace, t1: T.Trace, row: int = 0) -> RowTrace:
    """Row ``row`` of the batch-B trace ``tb`` as a trace comparable with the batch-1 trace ``t1``
    (same model; ``t1``'s prompt must be row ``row`` of ``tb``'s: ValueError otherwise). Ops whose
    tensors do not map by shape are left out (they appear as unmatched)."""
    rb, r1 = tb.meta.get("run", {}), t1.meta.get("run", {})
    batch = int(rb.get("batch", 0))
    if int(r1.get("batch", 0)) != 1:
        raise ValueError(f"{t1.source}: the reference trace must be batch 1, it is batch {r1.get('batch')}")
    if not 0 <= row < batch:
        raise ValueError(f"row {row} is outside the batch of {batch} of {tb.source}")
    tokens = (rb.get("tokens") or [])
    if row >= len(tokens) or tokens[row] != (r1.get("tokens") or [None])[0]:
        raise ValueError(f"traces of different prompts: row {row} of {tb.source} is not the prompt of {t1.source}")
    by1 = t1.by_key()
    arrays: dict[str, np.ndarray] = {}
    ameta: dict[str, dict] = {}
    ops, slices = [], {}
    for op in tb.ops:
        o1 = by1.get(op["key"])
        if o1 is None or len(o1["inputs"]) != len(op["inputs"]) or len(o1["outputs"]) != len(op["outputs"]):
            continue
        dims = {side: [row_map(x["shape"], y["shape"], batch) for x, y in zip(op[side], o1[side])]
                for side in ("inputs", "outputs")}
        if "mismatch" in dims["inputs"] + dims["outputs"]:
            continue
        new = dict(op, inputs=[], outputs=[])
        for side in ("inputs", "outputs"):
            for j, (info, dim, i1) in enumerate(zip(op[side], dims[side], o1[side])):
                if dim is None:
                    new[side].append(info)
                    if info["digest"] in tb.meta["arrays"]:
                        arrays[f"a/{info['digest']}"] = tb.arrays[f"a/{info['digest']}"]
                        ameta[info["digest"]] = tb.meta["arrays"][info["digest"]]
                    continue
                ninfo = {k: v for k, v in info.items() if k not in ("digest", "shape", "stored")}
                ninfo["shape"] = list(i1["shape"])
                stored = tb.meta["arrays"].get(info["digest"])
                if stored is None or stored.get("rows") is not None:
                    ninfo["digest"] = f"unstored:{info['digest']}:{row}"
                    new[side].append(ninfo)
                    continue
                full = tb.arrays[f"a/{info['digest']}"]
                bits = np.ascontiguousarray(full[_rows(full.ndim, dim, row, i1["shape"][dim])])
                dg = T._digest(bits, stored["fmt"])
                ninfo["digest"] = dg
                arrays[f"a/{dg}"] = bits
                ameta[dg] = dict(stored, rows=None)
                new[side].append(ninfo)
                if side == "outputs":
                    flat = bits.reshape(-1)
                    if flat.size:
                        idx = np.unique(np.linspace(0, flat.size - 1, min(flat.size, T.SAMPLE)).astype(np.int64))
                        arrays[f"s/{op['i']}/{j}"] = flat[idx]
        ops.append(new)
        slices[op["key"]] = dims
    meta = dict(tb.meta, ops=ops, arrays=ameta,
                run=dict(rb, batch=1, tokens=[tokens[row]], batch_row={"batch": batch, "row": row}),
                label=f"{tb.meta.get('label')} [row {row} of {batch}]",
                logits_digest=None)
    meta["logits_digest"] = _row_logits_digest(t1, ops, arrays, ameta)
    return RowTrace(meta=meta, arrays=arrays, source=f"{tb.source}[row {row}]", parent=tb, row=row, slices=slices)


def _row_logits_digest(t1: T.Trace, ops: list[dict], arrays: dict, ameta: dict) -> str | None:
    """The row's logits digest: the op that produced t1's logits (its output, or that output with a
    leading batch dimension of 1, has t1's logits digest), the same op's row output viewed alike."""
    want = t1.meta.get("logits_digest")
    mine = {o["key"]: o for o in ops}
    for o1 in reversed(t1.ops):
        if not o1["outputs"] or o1["key"] not in mine or o1["outputs"][0]["digest"] not in t1.meta["arrays"]:
            continue
        fmt = t1.meta["arrays"][o1["outputs"][0]["digest"]]["fmt"]
        bits1 = t1.arrays[f"a/{o1['outputs'][0]['digest']}"]
        dg = mine[o1["key"]]["outputs"][0]["digest"]
        if f"a/{dg}" not in arrays:
            return None
        for view in (lambda x: x, lambda x: x.reshape((1, *x.shape))):
            if T._digest(np.ascontiguousarray(view(bits1)), fmt) == want:
                return T._digest(np.ascontiguousarray(view(arrays[f"a/{dg}"])), ameta[dg]["fmt"])
        return None
    return None
