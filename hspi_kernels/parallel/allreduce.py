"""The order of gloo's ``all_reduce(SUM)`` on fp32, revealed by masking probes and written as plans.

Each element of an all-reduced tensor is a sum of ``P`` terms, one per rank (the rank partials, in
rank order 0..P-1). Which ranks are added first can differ per element (a ring all-reduce starts
each chunk's reduce-scatter at a different rank), so the probe measures one tree *per element*:
FPRev's masking query (:mod:`hspi_kernels.reveal.order`) with rank i holding ``+M``, rank j ``-M``
and every other rank ``1`` at every element; the result counts the ones outside
``subtree(lca(i, j))``. The ``P (P-1) / 2`` pairs (one collective each, all elements at once) give
every element's lca-size matrix, hence its tree. Runs of elements with one tree become
:class:`Segment` s, each with a plan over the P rank terms: a compact plan of
:func:`hspi_kernels.reveal.order.match_plan` when one replays, else the revealed
``ExplicitTree`` (plans.py's node for orders without a compact form). :func:`replay` checks the
segment plans bit for bit against the collective on random rank values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.reveal.order import explicit_plan, match_plan
from hspi_kernels.reveal.targets import random_values, to_format

from .group import TASKS

__all__ = ["Segment", "AllReduceOrder", "probe_order", "tree_from_lca", "combine", "replay", "lca_sizes", "bits_equal"]


def bits_equal(a, b) -> np.ndarray:
    """Elementwise equality of the fp32 bit patterns of ``a`` and ``b`` (the package's N/N counts)."""
    return np.asarray(a, np.float32).view(np.uint32) == np.asarray(b, np.float32).view(np.uint32)


def _task_allreduce(rank, world_size, arg, state):
    """arg: a numpy array (this rank's values); rank 0 returns the all-reduced array."""
    import torch
    import torch.distributed as dist

    x, dtype = arg
    t = torch.from_numpy(np.ascontiguousarray(x)).to(state.get("device", "cpu"))
    if dtype == "bf16":
        t = t.to(torch.bfloat16)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if rank != 0:
        return None
    return t.float().cpu().numpy()


TASKS["allreduce"] = _task_allreduce


def allreduce(group, xs: np.ndarray, dtype: str = "fp32") -> np.ndarray:
    """``xs[P, ...]``: rank r contributes ``xs[r]``; the all-reduced result (rank 0's copy)."""
    return group.call("allreduce", [(np.asarray(xs[r], dtype=np.float32), dtype) for r in range(group.world_size)])[0]


def lca_sizes(group, numel: int) -> np.ndarray:
    """int ``[numel, P, P]``: |subtree(lca(i, j))| per element (diagonal 1), by masking queries."""
    n = group.world_size
    e = 24 + max(1, math.ceil(math.log2(max(n, 2)))) + 3
    M = np.float32(2.0 ** e)
    out = np.ones((numel, n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            xs = np.ones((n, numel), dtype=np.float32)
            xs[i], xs[j] = M, -M
            outside = allreduce(group, xs)
            if not np.all(np.isfinite(outside)) or np.any(outside != np.round(outside)):
                raise RuntimeError(f"masking query ({i},{j}) did not return counts")
            size = n - outside.astype(np.int64)
            if np.any(size < 2) or np.any(size > n):
                raise RuntimeError(f"masking query ({i},{j}): lca sizes out of range {np.unique(size)[:8]}")
            out[:, i, j] = out[:, j, i] = size
    return out


def tree_from_lca(S: list[int], lca: np.ndarray):
    """The tree (nested lists, leaves = ranks) over the leaf set S from an lca-size matrix (the
    grouping of reveal_tree: leaves grouped by their lca size with a pivot, each group split into
    the children whose members meet below that size)."""
    if len(S) == 1:
        return S[0]
    pivot = S[0]
    groups: dict[int, list[int]] = {}
    for j in S[1:]:
        groups.setdefault(int(lca[pivot, j]), []).append(j)
    node, count = pivot, 1
    for s in sorted(groups):
        rest = groups[s]
        children = []
        while rest:
            p = rest[0]
            members = [p] + [j for j in rest[1:] if lca[p, j] < s]
            children.append(tree_from_lca(members, lca))
            rest = [j for j in rest if j not in members]
        node = [node] + children
        count += len(groups[s])
        if count != s:
            raise RuntimeError(f"not a fixed tree: node of size {s} holds {count} leaves")
    return node


def _key(tree) -> str:
    """Canonical text of a tree (children sorted: fp32 addition commutes)."""
    if isinstance(tree, int):
        return str(tree)
    return "(" + ",".join(sorted(_key(c) for c in tree)) + ")"


@dataclass
class Segment:
    start: int
    end: int  # element range [start, end)
    tree: object
    plan: P.Plan

    def to_json(self) -> dict:
        return {"elements": [self.start, self.end], "tree": _key(self.tree), "plan": repr(self.plan),
                "plan_json": self.plan.to_json()}


@dataclass
class AllReduceOrder:
    world_size: int
    numel: int
    segments: list[Segment]
    collectives: int

    def plans(self) -> list[P.Plan]:
        return [s.plan for s in self.segments]

    def to_json(self) -> dict:
        distinct = sorted({_key(s.tree) for s in self.segments})
        return {"world_size": self.world_size, "numel": self.numel, "collectives": self.collectives,
                "n_segments": len(self.segments), "distinct_trees": distinct,
                "segments": [s.to_json() for s in self.segments[:16]],
                "segments_left_off": max(0, len(self.segments) - 16)}


def _plan_for(tree, n: int, probe) -> P.Plan:
    """A compact plan of the tree that replays on ``probe`` ([B, n] values, the collective's
    result [B]) bit for bit, else the ExplicitTree."""
    if isinstance(tree, int):
        return P.Sequential()
    x, want = probe
    # only plans whose tree *is* the revealed tree: a segment of a few elements can be matched by
    # a wrong order by chance (rank-order Sequential on a ring chunk did, 29/32 on fresh values)
    cands = sorted(match_plan(tree, n, False), key=lambda c: c != P.Sequential())
    for cand in cands:
        if P.plan_format(cand) == "fp32" and bits_equal(evaluate(cand, x), want).all():
            return cand
    return explicit_plan(tree)


def probe_order(group, numel: int, seed: int = 0) -> AllReduceOrder:
    """Per-element trees of ``all_reduce(SUM)`` on a fp32 tensor of ``numel`` elements."""
    n = group.world_size
    if n == 1:
        return AllReduceOrder(1, numel, [Segment(0, numel, 0, P.Sequential())], 0)
    lca = lca_sizes(group, numel)
    flat = lca.reshape(numel, -1)
    change = np.flatnonzero(np.any(flat[1:] != flat[:-1], axis=1)) + 1
    bounds = [0, *change.tolist(), numel]
    rng = np.random.default_rng(seed)
    xs = random_values(rng, (n, numel), "fp32")
    got = allreduce(group, xs)
    segments = []
    plan_cache: dict[str, P.Plan] = {}
    for s, e in zip(bounds[:-1], bounds[1:]):
        tree = tree_from_lca(list(range(n)), lca[s])
        key = _key(tree)
        if key not in plan_cache:
            plan_cache[key] = _plan_for(tree, n, (xs[:, s:e].T.copy(), got[s:e]))
        segments.append(Segment(s, e, tree, plan_cache[key]))
    return AllReduceOrder(n, numel, segments, n * (n - 1) // 2 + 1)


def _tree_rounded(node, cols: list[np.ndarray], fmt: str) -> np.ndarray:
    """A revealed tree evaluated with each addition done in fp32 and rounded to ``fmt``: the
    arithmetic of gloo's bf16 / fp16 sum (the order is the fp32 one: the trees are probed in fp32
    and the ring's chunks do not depend on the dtype; measured N/N, tests/test_parallel_tp.py)."""
    if isinstance(node, int):
        return cols[node]
    acc = _tree_rounded(node[0], cols, fmt)
    for child in node[1:]:
        acc = to_format(acc + _tree_rounded(child, cols, fmt), fmt)  # fp32 add, RNE to fmt
    return acc


def combine(order: AllReduceOrder | list[P.Plan] | P.Plan, partials: np.ndarray, fmt: str = "fp32") -> np.ndarray:
    """The emulated all-reduce of ``partials[P, ...]``: each element's plan over its P rank terms
    (fp32), or with ``fmt`` "bf16" / "fp16" each segment's revealed tree with every addition
    rounded to that format (partials given as fp32 values of that format). ``order`` a single
    plan: that plan for every element (a candidate / control; fp32 only)."""
    partials = np.asarray(partials, dtype=np.float32)
    n = partials.shape[0]
    if fmt != "fp32":
        if not isinstance(order, AllReduceOrder):
            raise ValueError(f"combine in {fmt} needs the revealed AllReduceOrder (its trees), not {order!r}")
        flat = partials.reshape(n, -1)
        out = np.empty(flat.shape[1], dtype=np.float32)
        for seg in order.segments:
            out[seg.start:seg.end] = _tree_rounded(seg.tree, [flat[r, seg.start:seg.end] for r in range(n)], fmt)
        return out.reshape(partials.shape[1:])
    flat = partials.reshape(n, -1).T  # [numel, P]
    if isinstance(order, P.Plan):
        return evaluate(order, np.ascontiguousarray(flat)).reshape(partials.shape[1:])
    segs = order.segments
    if order.numel != flat.shape[0]:
        raise ValueError(f"order probed for {order.numel} elements, partials have {flat.shape[0]}")
    out = np.empty(flat.shape[0], dtype=np.float32)
    for seg in segs:
        out[seg.start:seg.end] = evaluate(seg.plan, np.ascontiguousarray(flat[seg.start:seg.end]))
    return out.reshape(partials.shape[1:])


def replay(group, order: AllReduceOrder, trials: int = 3, seed: int = 1) -> tuple[int, int]:
    """(matching, total) elements of the emulated combine vs gloo on fresh random rank values."""
    rng = np.random.default_rng(seed)
    match = total = 0
    for _ in range(trials):
        xs = random_values(rng, (group.world_size, order.numel), "fp32")
        want = allreduce(group, xs)
        got = combine(order, xs)
        match += int(np.sum(bits_equal(got, want)))
        total += want.size
    return match, total
