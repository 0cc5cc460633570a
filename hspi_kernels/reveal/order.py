"""Order revelation (FPRev style): recover the summation tree of a black-box sum or dot product,
turn it into a plan, and replay the plan bit for bit before calling the order revealed.

The masking query (Xie et al. 2024, "FPRev"): put ``+M`` at term i, ``-M`` at term j and ones
everywhere else. ``M`` is large enough that every partial sum of ones joining a partial sum that
holds ``±M`` is absorbed (``M = 2^(p + ceil(log2 n) + 3)`` for accumulation precision p; for a
tensor-core block the ones fall below its alignment grid, which needs the same margin), so the
result counts exactly the ones *outside* the subtree where i and j meet:
``f = n - |subtree(lca(i, j))|``. Sizes of ancestors are strictly increasing, so the sizes
measured against one pivot leaf name the pivot's ancestors and group the other leaves by the
sibling subtree they sit in.

Recursive revelation (:func:`reveal_tree`): resolve a subtree from a random pivot (one query per
other leaf), group by lca size, and resolve each group; a group hanging off a *multi-term fused
node* (a tensor-core block adds G products and c with one rounding: every pair of its children
meets at the same node) holds several children, which are separated pivot by pivot. Expected
calls: ~2n for a sequential order, ~(n/2) log2 n for a balanced tree, ~n (2 + G/2) for a chain of
G-blocks; BasicFPRev needs n(n-1)/2. Every merge is checked against the measured sizes, so an op
that is not one fixed tree (nondeterministic, or M too small for its accumulator) raises
:class:`RevealError` instead of returning a wrong tree.

Outputs with few significand bits (bf16: 8) cannot hold a count up to n: the ones are then put in
windows of ``2^out_bits`` terms (zeros elsewhere; adding +0 changes nothing) and the counts summed
(``ceil(n / 2^out_bits)`` calls per query).

The tree becomes a plan by matching compact candidates (Sequential, Pairwise, Tree, Strided,
SplitK(Chain(TensorCore)), numpy's sum plan, BlockTree, ...) by their *canonical tree* (the plan
lowered to its register program and hash-consed, children unordered: fp32 addition commutes);
otherwise an ``ExplicitTree``. Structure cannot see fma vs mul+add or a +0 seed, so every
structurally equal candidate is replayed and the first that is bit-exact on fresh random inputs
wins (:func:`reveal`). The op adapters live in :mod:`hspi_kernels.reveal.targets`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.reveal.targets import Target, to_format

__all__ = ["RevealError", "QueryEngine", "reveal_tree", "canonical_tree", "plan_tree", "match_plan",
           "replay", "reveal", "RevealResult", "basic_fprev_calls", "describe",
           "split_k_family", "family_max_parts", "SplitKShape", "reveal_structured", "pivot_row"]


class RevealError(RuntimeError):
    """The op does not behave as one fixed summation tree under the masking queries."""


def basic_fprev_calls(n: int) -> int:
    return n * (n - 1) // 2


# -- queries ----------------------------------------------------------------------------------
class QueryEngine:
    """Turns lca-size questions into masked inputs for a target and counts the calls.

    ``target`` (see targets.Target): ``n``, ``evaluate_patterns(values[B, n]) -> [B]`` (for a dot
    product the pattern is the product vector: b carries it, a is ones), ``max_exponent`` (largest
    power of two the input format holds), ``acc_bits``, ``out_bits``.
    """

    def __init__(self, target, acc_bits: int | None = None, batch: int = 4096):
        self.target = target
        self.n = target.n
        self.acc_bits = acc_bits or target.acc_bits
        e = self.acc_bits + max(1, math.ceil(math.log2(max(self.n, 2)))) + 3
        if e > target.max_exponent:
            raise RevealError(f"{target.name}: M = 2^{e} (accumulation {self.acc_bits} bits, n={self.n}) is not "
                              f"representable in the input format (max 2^{target.max_exponent})")
        self.M = float(2.0 ** e)
        self.cap = 2 ** min(target.out_bits, 24)  # ones per call that the output counts exactly
        self.batch = batch
        self.calls = 0  # vectors evaluated
        self.launches = 0  # op invocations (batched)
        self.queries = 0

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The (start, end) runs of at most ``cap`` terms that a query with ones on every term uses."""
        return [(s, min(s + self.cap, self.n)) for s in range(0, self.n, self.cap)]

    def sizes(self, i: int, js) -> np.ndarray:
        """|subtree(lca(i, j))| for each j in js."""
        js = np.asarray(js, dtype=np.int64)
        return self.pair_sizes(np.full(len(js), i, dtype=np.int64), js)

    def pair_sizes(self, iis, js) -> np.ndarray:
        """|subtree(lca(i_k, j_k))| for each pair (ones on every other term)."""
        out = self.n - self.outside_counts(iis, js, np.arange(self.n))
        if np.any(out < 2) or np.any(out > self.n):
            raise RevealError(f"{self.target.name}: lca sizes out of range: {out[:8].tolist()}")
        return out

    def outside_counts(self, iis, js, ones) -> np.ndarray:
        """For each pair (i_k, j_k): +M at i_k, -M at j_k, 1 at every term of ``ones`` other than
        those two, 0 elsewhere; returns how many of those ones lie *outside* subtree(lca(i_k, j_k)).
        The ones are put in windows of at most 2^out_bits terms of ``ones`` (one call each, the
        counts summed), so a narrow output still holds every count exactly."""
        iis = np.asarray(iis, dtype=np.int64)
        js = np.asarray(js, dtype=np.int64)
        ones = np.asarray(ones, dtype=np.int64)
        windows = [ones[s:s + self.cap] for s in range(0, len(ones), self.cap)] or [ones]
        out = np.zeros(len(js), dtype=np.int64)
        self.queries += len(js)
        for start in range(0, len(js), self.batch):
            chunk = js[start:start + self.batch]
            ichunk = iis[start:start + self.batch]
            rows = np.arange(len(chunk))
            outside = np.zeros(len(chunk), dtype=np.int64)
            for win in windows:
                x = np.zeros((len(chunk), self.n), dtype=np.float32)
                x[:, win] = 1.0
                x[rows, ichunk] = self.M
                x[rows, chunk] = -self.M
                got = np.asarray(self.target.evaluate_patterns(x), dtype=np.float64)
                self.calls += len(chunk)
                self.launches += 1
                member = np.zeros(self.n, dtype=bool)
                member[win] = True
                count = len(win) - member[ichunk] - (member[chunk] & (chunk != ichunk))
                bad = ~np.isfinite(got) | (got != np.round(got)) | (got < 0) | (got > count)
                if np.any(bad):
                    k = int(np.flatnonzero(bad)[0])
                    raise RevealError(f"{self.target.name}: masked query (i={int(ichunk[k])}, j={int(chunk[k])}) returned "
                                      f"{got[k]!r}, not a count of ones in [0, {int(count[k])}]: the ones are not absorbed "
                                      f"(accumulator wider than {self.acc_bits} bits?) or the op is not a fixed tree")
                outside += got.astype(np.int64)
            out[start:start + len(chunk)] = outside
        return out


# -- tree reconstruction ------------------------------------------------------------------------
def _leaf_count(node) -> int:
    return 1 if isinstance(node, int) else sum(_leaf_count(c) for c in node)


def reveal_tree(engine: QueryEngine, seed: int = 0):
    """The summation tree as nested lists (leaves are term indices; a list node adds its
    children; binary = one rounded addition, more children = one fused multi-term node)."""
    rng = np.random.default_rng(seed)

    def resolve_subtree(S: list[int], pivot=None, known=None):
        """S is exactly the leaf set of one node; returns that node."""
        if len(S) == 1:
            return S[0]
        if pivot is None:
            pivot = S[int(rng.integers(len(S)))]
            others = [j for j in S if j != pivot]
            known = dict(zip(others, engine.sizes(pivot, others).tolist()))
        groups: dict[int, list[int]] = {}
        for j, s in known.items():
            groups.setdefault(s, []).append(j)
        node, count = pivot, 1
        for s in sorted(groups):
            children = resolve_children(groups[s], s)
            node = [node] + children
            count += len(groups[s])
            if count != s:
                raise RevealError(f"not a fixed tree: the node of size {s} holds {count} leaves")
        if count != len(S):
            raise RevealError(f"not a fixed tree: subtree of {len(S)} leaves resolved to {count}")
        return node

    def resolve_children(Q: list[int], s: int) -> list:
        """Q is the union of some children of a node of size s; returns those children."""
        children = []
        rest = list(Q)
        if 2 < len(rest) <= 32:  # all pairs in one batch (one launch): fused blocks of singletons
            pairs = [(a, b) for k, a in enumerate(rest) for b in rest[k + 1:]]
            flat_i = np.array([a for a, _ in pairs]); flat_j = np.array([b for _, b in pairs])
            sizes = engine.pair_sizes(flat_i, flat_j)
            if np.any(sizes > s):
                raise RevealError(f"not a fixed tree: lca size above the parent's ({int(sizes.max())} > {s})")
            parent = {a: a for a in rest}

            def find(a):
                while parent[a] != a:
                    a = parent[a]
                return a

            for (a, b), v in zip(pairs, sizes):
                if v < s:
                    parent[find(b)] = find(a)
            groups: dict[int, list[int]] = {}
            for a in rest:
                groups.setdefault(find(a), []).append(a)
            lookup = {pr: int(v) for pr, v in zip(pairs, sizes)}
            for members in groups.values():
                p = members[0]
                known = {j: lookup[(p, j)] if (p, j) in lookup else lookup[(j, p)] for j in members[1:]}
                children.append(resolve_subtree(members, p, known) if known else p)
            return children
        while rest:
            if len(rest) == 1:
                children.append(rest[0])
                break
            p = rest[int(rng.integers(len(rest)))]
            others = [j for j in rest if j != p]
            sizes = engine.sizes(p, others)
            inside = {j: int(v) for j, v in zip(others, sizes) if v < s}
            if np.any(sizes > s):
                raise RevealError(f"not a fixed tree: lca size above the parent's ({int(sizes.max())} > {s})")
            members = [p] + list(inside)
            children.append(resolve_subtree(members, p, inside) if inside else p)
            member_set = set(members)
            rest = [j for j in rest if j not in member_set]
        return children

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * engine.n + 1000))
    try:
        return resolve_subtree(list(range(engine.n)))
    finally:
        sys.setrecursionlimit(limit)


# -- canonical trees (hash-consed, children unordered) ------------------------------------------
class _Interner:
    def __init__(self, n: int):
        self.n = n
        self.table: dict[tuple, int] = {}

    def node(self, children) -> int:
        key = tuple(sorted(children))
        if len(key) == 1:
            return key[0]
        got = self.table.get(key)
        if got is None:
            got = self.table[key] = self.n + len(self.table)
        return got


def canonical_tree(tree, interner: _Interner) -> int:
    """Canonical id of a nested-list tree (iterative: sequential trees are n deep)."""
    if isinstance(tree, int):
        return tree
    stack = [(tree, False)]
    ids: dict[int, int] = {}
    while stack:
        node, done = stack.pop()
        if done:
            ids[id(node)] = interner.node([c if isinstance(c, int) else ids[id(c)] for c in node])
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in node if not isinstance(c, int))
    return ids[id(tree)]


def plan_tree(plan: P.Plan, n: int, dot: bool, interner: _Interner) -> int:
    """Canonical id of the tree a plan forms over n terms (+0 seeds and c are invisible to the
    masking queries, so they are dropped; a tensor-core block is one fused node)."""
    prog = P.lower(plan, n, dot, False)
    reg: dict[int, int | None] = {r: r for r in range(n)}
    reg[n] = reg[n + 1] = None  # +0 and c
    for op, out, init, start, length, _flag in prog.instrs.tolist():
        items = prog.lists[start:start + length].tolist()
        acc = reg[init] if init >= 0 else None
        if op == P.OP_SEQ:
            for r in items:
                v = reg[r]
                if v is None:
                    continue
                acc = v if acc is None else interner.node([acc, v])
        else:
            G = prog.model.G
            for b in range(0, len(items), G):
                kids = [reg[r] for r in items[b:b + G]]
                acc = interner.node(([acc] if acc is not None else []) + kids)
        reg[out] = acc
    if prog.out < 0:
        raise ValueError("plan reduces nothing")
    return reg[prog.out]


# -- compact candidates -------------------------------------------------------------------------
def _pow2_upto(n: int):
    p = 1
    while p <= n:
        yield p
        p *= 2


def _seq_variants():
    return [P.Sequential(), P.Sequential(init="zero"), P.Sequential(fma=True), P.Sequential(fma=True, init="zero")]


def _combine_candidates(parts: int):
    out = [P.Sequential(), P.Sequential(init="zero"), P.Pairwise()]
    if parts > 1:
        size = 1 << (parts - 1).bit_length()
        out += [P.BlockTree(size), P.WarpButterfly(size)]
        out += [P.Tree(f) for f in (4, 8) if f < parts]
    return out


def _lanes_of(tree, fused: bool):
    """Leaf sets of the maximal 'runs': left-deep chains that add one leaf at a time (binary)
    or one block of leaves at a time (fused), in the order the tree combines them."""
    runs = []

    def is_run(node) -> list[int] | None:
        leaves: list[int] = []
        while isinstance(node, list):
            inner = [c for c in node if not isinstance(c, int)]
            kids = [c for c in node if isinstance(c, int)]
            if len(inner) > 1 or (not fused and len(node) != 2) or (fused and len(node) == 2 and not inner):
                return None
            leaves.extend(kids)
            if not inner:
                return sorted(leaves)
            node = inner[0]
        leaves.append(node)
        return sorted(leaves)

    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, int):
            runs.append([node])
            continue
        leaves = is_run(node)
        if leaves is not None:
            runs.append(leaves)
        else:
            stack.extend(reversed(node))
    return runs


def _structural_candidates(tree, n: int, dot: bool, block: P.TensorCore | None):
    """Compact plans suggested by the runs of the tree (SplitK / Strided shapes)."""
    fused = dot and block is not None and any(isinstance(c, list) and len(c) > 2 for c in _walk(tree))
    runs = sorted(_lanes_of(tree, fused), key=lambda r: r[0])
    inners = [P.Chain(block, k=block.model().G)] if fused else _seq_variants()
    out = []
    parts = len(runs)
    contiguous = all(r == list(range(r[0], r[-1] + 1)) for r in runs)
    if contiguous and parts >= 1:
        tile = len(runs[0])
        for combine in _combine_candidates(parts):
            for inner in inners:
                out.append(P.SplitK(parts, "contiguous", inner=inner, combine=combine, tile=tile))
    if not contiguous and parts > 1:
        # interleaved tiles or strided lanes: tile = first contiguous run length of part 0
        r0 = runs[0]
        t = 1
        while t < len(r0) and r0[t] == r0[0] + t:
            t += 1
        for combine in _combine_candidates(parts):
            for inner in inners:
                out.append(P.SplitK(parts, "interleaved", inner=inner, combine=combine, tile=t))
                if t == 1:
                    out.append(P.Strided(parts, inner=inner, combine=combine))
    if fused and parts == 1:
        out.insert(0, P.Chain(block, k=block.model().G))
    return out


def _walk(tree):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, list):
            stack.extend(node)


def _generic_candidates(n: int):
    out = list(_seq_variants())
    out.append(P.numpy_sum_plan())
    for al in (1, 2, 4, 8, 16, 32):
        for ls in _pow2_upto(max(n, 1)):
            if ls >= 2 * al - 1:
                out.append(P.Pairwise(leaf_size=ls, align=al))
    for f in (3, 4, 8, 16):
        out.append(P.Tree(f))
    size = 1 << max(0, (n - 1).bit_length())
    out += [P.BlockTree(size)]
    for lanes in _pow2_upto(min(n, 1024)):
        if lanes < 2:
            continue
        for inner in (P.Sequential(), P.Sequential(init="zero")):
            for combine in (P.Pairwise(), P.Sequential(), P.BlockTree(lanes)):
                out.append(P.Strided(lanes, inner=inner, combine=combine))
        out.append(P.Remainder(lanes, main=P.Strided(lanes, inner=P.Sequential(), combine=P.Pairwise()),
                               tail=P.Sequential()))
    return out


def match_plan(tree, n: int, dot: bool = False, block: P.TensorCore | None = None) -> list[P.Plan]:
    """Compact plans whose tree equals ``tree`` (possibly several: replay chooses), else []."""
    interner = _Interner(n)
    target = canonical_tree(tree, interner)
    found = []
    seen = set()
    pool = ([] if (dot and block) else _generic_candidates(n)) + _structural_candidates(tree, n, dot, block)
    for cand in pool:
        if cand in seen:
            continue
        seen.add(cand)
        try:
            if plan_tree(cand, n, dot, interner) == target:
                found.append(cand)
        except ValueError:
            continue
    return sorted(found, key=lambda c: (isinstance(c, P.SplitK) and c.layout == "interleaved", len(repr(c))))


def explicit_plan(tree) -> P.ExplicitTree:
    """The tree as an ExplicitTree; left-deep binary chains are flattened (a tuple node adds its
    children left to right, which is the same order). Fused nodes (> 2 children) have no
    ExplicitTree semantics: they are kept as tuples, and the replay will say so."""

    def conv(node):
        if isinstance(node, int):
            return node
        kids = [conv(c) for c in node]
        if len(kids) != 2:
            return tuple(kids)
        a, b = kids
        if isinstance(b, tuple) and not isinstance(a, tuple):
            a, b = b, a
        if isinstance(a, tuple) and isinstance(b, tuple) and _depth(b) > _depth(a):
            a, b = b, a
        if isinstance(a, tuple) and len(a) >= 2 and _flat_ok(a):
            return a + (b,)
        return (a, b)

    _flags.clear()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * _leaf_count(tree) + 1000))
    try:
        t = conv(tree)
        return P.ExplicitTree(t if isinstance(t, tuple) else (t,))
    finally:
        sys.setrecursionlimit(limit)


_flags: dict = {}


def _depth(t) -> int:
    d = 0
    while isinstance(t, tuple):
        t = t[0]
        d += 1
    return d


def _flat_ok(t) -> bool:
    # a tuple from a binary chain is a sequential chain: appending one more term keeps its meaning
    return True


# -- structured search (long K: a plan family confirmed by pivot rows) ------------------------------
def split_k_family(n: int, block: P.TensorCore, max_parts: int = 16) -> list[P.Plan]:
    """Split-K plans over a chain of tensor-core blocks (what cuBLAS / CUTLASS kernels do): the
    factor P, contiguous or interleaved parts cut on K tiles (uneven last part included), and the
    combine (fp32 sequential from the first part or from +0, pairwise, 4-way tree, CUDA block tree)."""
    G = block.model().G
    chain = P.Chain(block, k=G)
    out: list[P.Plan] = [chain]
    seen: set = set()
    tiles = [t for t in (G, 32, 64, 128, 256, 512) if t % G == 0]
    for parts in range(2, max_parts + 1):
        combines = [P.Sequential(), P.Sequential(init="zero"), P.Pairwise(), P.BlockTree(1 << (parts - 1).bit_length())]
        if parts > 4:
            combines.append(P.Tree(4))
        for layout in ("contiguous", "interleaved"):
            for tile in tiles:
                if n % G or tile * parts > n:
                    continue
                plan = P.SplitK(parts, layout, inner=chain, combine=P.Sequential(), tile=tile)
                cut = tuple((int(ix[0]), len(ix)) if layout == "contiguous" else tuple(ix.tolist())
                            for ix in P.split_k_indices(plan, n))
                if len(cut) != parts or cut in seen:  # same parts from another tile: same plans
                    continue
                seen.add(cut)
                for combine in combines:
                    out.append(P.SplitK(parts, layout, inner=chain, combine=combine, tile=tile))
    return out


def _tree_tables(interner: _Interner):
    """children and leaf-count tables of every interned node (the nodes form a DAG: trees of
    different plans share subtrees, so parents are found per root)."""
    children = {v: k for k, v in interner.table.items()}
    size = {i: 1 for i in range(interner.n)}
    for node in sorted(children):  # ids grow with creation: children first
        size[node] = sum(size[c] for c in children[node])
    return children, size


def pivot_row(root: int, pivot: int, tables, n: int) -> np.ndarray:
    """|subtree(lca(pivot, j))| for every leaf j < n of the tree ``root`` (0 at the pivot)."""
    children, size = tables
    parent: dict[int, int] = {}
    stack = [root]
    while stack:  # inside one tree every node occurs once (its leaves are its own)
        x = stack.pop()
        for c in children.get(x, ()):
            parent[c] = x
            if c >= n:
                stack.append(c)
    row = np.zeros(n, dtype=np.int64)
    prev, node = pivot, parent.get(pivot)
    while node is not None:
        stack = [c for c in children[node] if c != prev]
        while stack:
            x = stack.pop()
            if x < n:
                row[x] = size[node]
            else:
                stack.extend(children[x])
        prev, node = node, parent.get(node)
    return row


def family_max_parts(n: int) -> int:
    """Largest split-K factor searched for K = n: 16, and up to 32 for long K (a part keeps at least
    512 terms, what split-K kernels need to be worth their combine)."""
    return int(max(16, min(32, n // 512)))


class SplitKShape:
    """The summation tree of ``Chain`` / ``SplitK(Chain)`` in closed form (what the masking queries
    see of it), so a family of thousands of plans is checked without building any tree.

    A chain of G-blocks over a part's terms in order: the node after block b holds the part's first
    (b+1) G terms (a fused block joins all its products and the running c at once). Two terms of one
    part meet at the node of the later block; terms of different parts meet where the ``combine``
    tree over the part results joins their parts (that small tree is built by :func:`plan_tree`)."""

    def __init__(self, plan: P.Plan, n: int):
        if isinstance(plan, P.Chain):
            inner, parts_idx, combine = plan, [np.arange(n)], None
        elif isinstance(plan, P.SplitK) and isinstance(plan.inner, P.Chain):
            inner, parts_idx, combine = plan.inner, P.split_k_indices(plan, n), plan.combine
        else:
            raise ValueError(f"SplitKShape: not a Chain or SplitK(Chain): {plan!r}")
        if inner.k != inner.block.model().G:
            raise ValueError("SplitKShape: chain steps of several blocks are not modelled")
        self.G = inner.k
        if any(len(ix) % self.G for ix in parts_idx):
            raise ValueError("SplitKShape: a part is not a whole number of blocks")
        self.n = n
        self.part = np.empty(n, dtype=np.int64)
        self.pos = np.empty(n, dtype=np.int64)
        for p, ix in enumerate(parts_idx):
            self.part[ix] = p
            self.pos[ix] = np.arange(len(ix))
        self.nparts = len(parts_idx)
        # meet[p][q]: the parts under the combine node where parts p and q meet
        self.meet = np.zeros((self.nparts, self.nparts, self.nparts), dtype=bool)
        if self.nparts > 1:
            interner = _Interner(self.nparts)
            root = plan_tree(combine, self.nparts, False, interner)
            children, _ = _tree_tables(interner)
            leaves: dict[int, set] = {i: {i} for i in range(self.nparts)}
            for node in sorted(children):
                leaves[node] = set().union(*(leaves[c] for c in children[node]))
            parent: dict[int, int] = {}
            stack = [root]
            while stack:
                x = stack.pop()
                for c in children.get(x, ()):
                    parent[c] = x
                    if c >= self.nparts:
                        stack.append(c)
            for p in range(self.nparts):  # walk up from part p: the parts an ancestor adds meet p there
                seen, x = {p}, p
                while x in parent:
                    x = parent[x]
                    under = sorted(leaves[x])
                    for q in leaves[x] - seen:
                        self.meet[p, q, under] = True
                    seen |= leaves[x]

    def inside(self, i: int, js: np.ndarray, ones: np.ndarray) -> np.ndarray:
        """How many terms of ``ones`` lie inside subtree(lca(i, j)) for each j of ``js``."""
        js = np.asarray(js, dtype=np.int64)
        pi, G = self.part[i], self.G
        in_part = ones[self.part[ones] == pi]
        sorted_pos = np.sort(self.pos[in_part])
        out = np.empty(len(js), dtype=np.int64)
        same = self.part[js] == pi
        last = (np.maximum(self.pos[i] // G, self.pos[js[same]] // G) + 1) * G
        out[same] = np.searchsorted(sorted_pos, last, side="left")
        if self.nparts > 1 and np.any(~same):
            per_part = np.bincount(self.part[ones], minlength=self.nparts)
            weight = self.meet[pi].astype(np.int64) @ per_part  # ones under meet(pi, q), per q
            out[~same] = weight[self.part[js[~same]]]
        return out


def _representatives(n: int, stride: int, rng) -> np.ndarray:
    """One random term of each run of ``stride`` consecutive terms (the masks' sample of K)."""
    starts = np.arange(0, n, stride)
    return np.minimum(starts + rng.integers(0, stride, len(starts)), n - 1)


def reveal_structured(target, engine: QueryEngine, family: list[P.Plan], pivots: int = 6, seed: int = 0,
                      max_reps: int = 512):
    """Plans of ``family`` whose closed-form trees (:class:`SplitKShape`) give the measured counts
    on ``pivots`` pivots (the first and last term, then random ones) against a sample of K (one
    random term per run of ``stride`` terms, at most ``max_reps`` of them; the ones sit on that
    sample only, so a bf16 output needs ceil(sample / 256) calls per query, not ceil(K / 256)).
    All queries go out as one batch. Returns (survivors, measured, closest): ``closest`` lists the
    family plans that disagree least with the measurements (what was ruled out, and by how much).
    The sample only filters: a survivor is reported only after it is replayed bit-exact."""
    n = engine.n
    rng = np.random.default_rng(seed)
    G = next((f.block.model().G if isinstance(f, P.Chain) else f.inner.block.model().G for f in family
              if isinstance(f, (P.Chain, P.SplitK))), 1)
    stride = max(G, -(-n // max_reps))
    stride = -(-stride // G) * G if n % G == 0 else stride
    reps = _representatives(n, stride, rng)
    order = [0, n - 1] + [int(v) for v in rng.choice(np.arange(1, n - 1), size=max(0, min(pivots, n) - 2), replace=False)]
    iis, js = [], []
    for pivot in order:
        others = reps[reps != pivot]
        iis.append(np.full(len(others), pivot))
        js.append(others)
    outside = engine.outside_counts(np.concatenate(iis), np.concatenate(js), reps)
    measured, at = {}, 0
    for pivot, j in zip(order, js):
        measured[pivot] = (j, len(reps) - outside[at:at + len(j)])  # ones inside subtree(lca)
        at += len(j)
    survivors, score = [], []
    for plan in family:
        try:
            shape = SplitKShape(plan, n)
        except ValueError:
            continue
        wrong = sum(int(np.sum(shape.inside(pivot, j, reps) != inside)) for pivot, (j, inside) in measured.items())
        score.append((wrong, plan))
        if wrong == 0:
            survivors.append(plan)
    total = sum(len(j) for j, _ in measured.values())
    score.sort(key=lambda t: t[0])
    closest = [(plan, wrong, total) for wrong, plan in score[:3]]
    return survivors, measured, closest


# -- replay -------------------------------------------------------------------------------------
def replay(target, plan: P.Plan, count: int = 10_000, seed: int = 1) -> tuple[int, int]:
    """(matches, total) of ``evaluate(plan, x) == op(x)`` bitwise on fresh random inputs."""
    return target.replay(plan, count, seed)


@dataclass
class RevealResult:
    target: str
    n: int
    plan: P.Plan | None
    compact: bool
    calls: int
    launches: int
    seconds: float
    replay_matches: int
    replay_total: int
    basic_calls: int
    fused_nodes: int = 0
    block_size: int | None = None
    note: str = ""
    candidates: list = field(default_factory=list)
    digest: dict | None = None  # the op's output bits on fixed seeded inputs (Target.digest)

    @property
    def revealed(self) -> bool:
        return self.plan is not None and self.replay_total > 0 and self.replay_matches == self.replay_total

    def to_json(self) -> dict:
        return {"target": self.target, "n": self.n, "revealed": self.revealed, "compact": self.compact,
                "plan": repr(self.plan) if self.plan is not None else None,
                "plan_json": self.plan.to_json() if (self.plan is not None and self.compact) else None,
                "calls": self.calls, "launches": self.launches, "seconds": round(self.seconds, 4),
                "calls_bound_4nlog2n": int(4 * self.n * math.log2(max(self.n, 2))),
                "basic_fprev_calls": self.basic_calls,
                "replay": f"{self.replay_matches}/{self.replay_total}", "fused_nodes": self.fused_nodes,
                "block_size": self.block_size, "note": self.note,
                "structure": describe(self.plan, self.n) if (self.plan is not None and self.compact) else None,
                "digest": self.digest,
                "candidates_tried": [repr(c) for c in self.candidates[:8]]}


def describe(plan: P.Plan, n: int) -> dict | None:
    """What a revealed dot-product plan says about the kernel: the tensor-core block G and the
    products per chained step, the split-K factor, each part's K range and the combine."""
    inner, combine, parts = plan, None, [np.arange(n)]
    out: dict = {"plan": repr(plan)}
    if isinstance(plan, P.SplitK):
        inner, combine = plan.inner, plan.combine
        parts = P.split_k_indices(plan, n)
        out["layout"] = plan.layout
    if not isinstance(inner, P.Chain):
        return None  # sums and SIMT dot products: the plan itself says it all
    out["block_G"] = inner.block.model().G
    out["chain_k"] = inner.k
    out["block"] = repr(inner.block)
    out["split_k"] = len(parts)
    contiguous = all(np.array_equal(p, np.arange(p[0], p[0] + len(p))) for p in parts)
    out["part_bounds"] = [[int(p[0]), int(p[-1]) + 1] for p in parts] if contiguous else None
    out["part_sizes"] = [int(len(p)) for p in parts]
    out["uneven_parts"] = len(set(out["part_sizes"])) > 1
    out["combine"] = repr(combine) if combine is not None else None
    return out


def reveal(target, replay_count: int = 10_000, seed: int = 0, digest_seed: int | None = 1234,
           structured: bool | None = None) -> RevealResult:
    """Reveal, match, replay. ``target`` from :mod:`targets`. ``digest_seed``: also record the
    op's output digest on fixed seeded inputs (None: skip). ``structured``: reveal a dot product
    by the split-K family search (default: when K > STRUCTURED_ABOVE and the target hints a
    tensor-core block) instead of the full tree. ValueError when ``replay_count`` < 1 (a plan is
    only reported after it was replayed)."""
    if replay_count < 1:
        raise ValueError(f"replay_count (--replay) must be >= 1, got {replay_count}")
    if structured is None:
        structured = target.kind == "gemm" and getattr(target, "block", None) is not None and target.n > STRUCTURED_ABOVE
    if structured:
        result = _reveal_structured(target, replay_count, seed, time.perf_counter())
    else:
        result = _reveal(target, replay_count, seed)
    if digest_seed is not None and hasattr(target, "digest"):
        result.digest = target.digest(digest_seed)
    return result


# dot products longer than this (with a tensor-core block hint) are revealed by the structured
# search: the full tree costs ~n (2 + G/2) queries in many small batches, each a GEMM launch
STRUCTURED_ABOVE = 512


def _reveal_structured(target, replay_count: int, seed: int, t0: float) -> RevealResult:
    """Split-K family confirmed by sampled pivot rows, then replayed; never reports an unreplayed plan.
    Survivors are screened on a short replay (256 outputs) before the full one, so an ambiguous
    sample (several survivors) costs a little per wrong candidate. With no survivor, the note says
    what was ruled out: the family's size and its closest plans with their share of wrong counts."""
    n = target.n
    family = split_k_family(n, target.block, max_parts=family_max_parts(n))
    try:
        engine = QueryEngine(target, batch=max(4096, target.shape[1] if target.shape else 4096))
        survivors, measured, closest = reveal_structured(target, engine, family, seed=seed)
    except RevealError as exc:
        return RevealResult(target.name, n, None, False, 0, 0, time.perf_counter() - t0, 0, 0, basic_fprev_calls(n),
                            note=f"structured search: {exc}")
    chosen, matches, total, tried, notes = None, 0, 0, [], []
    for cand in survivors:
        tried.append(cand)
        m, t = target.replay(cand, min(256, replay_count), seed + 1)
        if m == t:
            m, t = target.replay(cand, replay_count, seed + 2)
        if m == t:
            chosen, matches, total = cand, m, t
            break
        notes.append(f"{cand!r} matched the masks but replayed {m}/{t}")
        if m >= matches:
            matches, total = m, t
    note = "; ".join(notes[:3])
    if not survivors:
        queries = closest[0][2] if closest else 0
        near = ", ".join(f"{plan!r} ({wrong}/{tot} counts wrong)" for plan, wrong, tot in closest)
        note = (f"ruled out all {len(family)} plans of the split-K family (factors 1..{family_max_parts(n)}, "
                f"contiguous/interleaved, tiles {sorted({getattr(f, 'tile', 0) for f in family} - {0})}, "
                f"combines {sorted({type(f.combine).__name__ for f in family if isinstance(f, P.SplitK)})}) on "
                f"{queries} masked queries; closest: {near}; not revealed")
    G = target.block.model().G if target.block is not None else None
    return RevealResult(target.name, n, chosen, chosen is not None, engine.calls, engine.launches,
                        time.perf_counter() - t0, matches, total, basic_fprev_calls(n), 0, G, note, tried)


def _reveal(target, replay_count: int, seed: int) -> RevealResult:
    t0 = time.perf_counter()
    engine = None
    tree = None
    errors = []
    for acc_bits in dict.fromkeys([target.acc_bits, 53]):
        try:
            engine = QueryEngine(target, acc_bits=acc_bits)
            tree = reveal_tree(engine, seed=seed)
            break
        except RevealError as exc:
            errors.append(str(exc))
            tree = None
    seconds_tree = time.perf_counter() - t0
    n = target.n
    if tree is None:
        return RevealResult(target.name, n, None, False, engine.calls if engine else 0, engine.launches if engine else 0,
                            seconds_tree, 0, 0, basic_fprev_calls(n), note="; ".join(errors))
    dot = target.kind == "gemm"
    fused = [c for c in _walk(tree) if isinstance(c, list) and len(c) > 2]
    block_size = None
    if fused:
        leaf_kids = [sum(isinstance(k, int) for k in c) for c in fused]
        block_size = max(set(leaf_kids), key=leaf_kids.count)
    block = getattr(target, "block", None)
    if block is not None and block_size is not None and block.model().G != block_size:
        block = None  # the hinted preset does not have this block size
    candidates = match_plan(tree, n, dot, block) if (not fused or block is not None) else []
    chosen, matches, total = None, 0, 0
    for cand in candidates:
        m, t = target.replay(cand, replay_count, seed + 1)
        if m == t:
            chosen, matches, total = cand, m, t
            break
        if chosen is None or m > matches:
            best = (cand, m, t)
            matches, total = m, t
    compact = chosen is not None
    note = ""
    if chosen is None:
        expl = explicit_plan(tree)
        if fused:
            note = (f"{len(fused)} fused nodes (block size {block_size}) and no compact plan matched: the "
                    f"ExplicitTree shows the structure but adds fused nodes sequentially")
        try:
            m, t = target.replay(expl, replay_count, seed + 1)
        except ValueError as exc:
            m, t = 0, 0
            note += f" replay impossible: {exc}"
        if m == t and t > 0:
            chosen, matches, total = expl, m, t
        else:
            if candidates:
                note += f"; best compact candidate {best[0]!r} replayed {best[1]}/{best[2]}"
            chosen, matches, total = expl, m, t
    return RevealResult(target.name, n, chosen, compact, engine.calls, engine.launches,
                        time.perf_counter() - t0, matches, total, basic_fprev_calls(n), len(fused), block_size,
                        note.strip("; "), candidates)


# -- two GPUs, one op: do the revealed plans explain the bit differences? ------------------------------
def plan_row0_sha(rec: dict, plan: P.Plan) -> str:
    """sha256 of the plan's output for row 0 of the record's seeded inputs (the op's row 0 digest
    is ``rec["digest"]["row0_sha256"]``)."""
    import hashlib

    d = rec["digest"]
    M, N, K = d["gemm_shape"]
    t = Target("replay", K, "gemm", in_format=d["in_format"], shape=(M, N, K))
    A, B = t.seeded_inputs(d["seed"])
    out = gemm(plan, A[:1], B)
    if d["out_format"] != "fp32":
        out = to_format(out, d["out_format"])
    return hashlib.sha256(np.ascontiguousarray(out[0]).view(np.uint32).tobytes()).hexdigest()


def compare_records(a: dict, b: dict, check_rows: bool = True) -> list[dict]:
    """Per reveal label present in both records: each side's plan, whether the op's bits differ on
    the same seeded inputs, and whether the plans explain it (same tree => same bits expected,
    different => differ; with ``check_rows`` each plan is evaluated on row 0 of the seeded inputs
    and must give that GPU's row-0 bits)."""
    for name, rec in (("a", a), ("b", b)):
        if not isinstance(rec, dict) or not isinstance(rec.get("reveals", []), list) \
                or not all(isinstance(r, dict) for r in rec.get("reveals", [])):
            raise ValueError(f"compare_records: record {name} must be an object whose 'reveals' is a list of objects")
    rows = []
    by_label = {r.get("label", r.get("target")): r for r in b.get("reveals", [])}
    for ra in a.get("reveals", []):
        label = ra.get("label", ra.get("target"))
        rb = by_label.get(label)
        if rb is None:
            continue
        row = {"label": label, "plan_a": ra.get("plan"), "plan_b": rb.get("plan"),
               "revealed_a": ra.get("revealed", False), "revealed_b": rb.get("revealed", False),
               "replay_a": ra.get("replay"), "replay_b": rb.get("replay"),
               "split_a": (ra.get("structure") or {}).get("split_k"), "split_b": (rb.get("structure") or {}).get("split_k")}
        da, db = ra.get("digest") or {}, rb.get("digest") or {}
        row["bits_differ"] = (da.get("sha256") != db.get("sha256")) if da and db else None
        pa = plan_from_record(ra)
        pb = plan_from_record(rb)
        if pa is not None and pb is not None:
            n = ra["n"]
            interner = _Interner(n)
            same_tree = plan_tree(pa, n, True, interner) == plan_tree(pb, n, True, interner)
            row["same_plan"] = same_tree
            row["expected_differ"] = not same_tree
            row["explained"] = row["bits_differ"] is not None and row["bits_differ"] == (not same_tree)
            if check_rows and da.get("gemm_shape"):
                sa, sb = plan_row0_sha(ra, pa), plan_row0_sha(ra, pb)
                row["row0_a_explained"] = sa == da.get("row0_sha256")
                row["row0_b_explained"] = plan_row0_sha(rb, pb) == db.get("row0_sha256")
                row["plans_disagree_row0"] = sa != sb
                row["row0_differ"] = da.get("row0_sha256") != db.get("row0_sha256")
                # row 0 of the same inputs: each plan gives its GPU's bits, and the GPUs differ
                # exactly where the plans do
                row["explained"] = (row["explained"] and row["row0_a_explained"] and row["row0_b_explained"]
                                    and row["row0_differ"] == row["plans_disagree_row0"])
        elif (row["revealed_a"] and row["revealed_b"] and row["plan_a"] and row["plan_a"] == row["plan_b"]
              and row["bits_differ"] is not None):
            # explicit trees carry no plan JSON: an identical printed tree is the same order
            # (a differently printed one may still be, so that case stays unexplained)
            row["same_plan"], row["expected_differ"] = True, False
            row["explained"] = not row["bits_differ"]
        else:
            row["same_plan"] = row["expected_differ"] = None
            row["explained"] = False
        rows.append(row)
    return rows


def plan_from_record(rec: dict) -> P.Plan | None:
    if not rec.get("revealed") or not rec.get("plan_json"):
        return None
    return P.plan_from_json(rec["plan_json"])
