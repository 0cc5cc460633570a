"""Accumulation plans: a small tree language for *how* a reduction or a dot product is formed.

A plan reduces an ordered list of *terms*. For a reduction ``x[..., n]`` the terms are the
values ``x_i``; for a dot product ``a[..., K] · b[..., K]`` the terms are the products, which a
plan consumes in one of three ways: ``rn32(a_i * b_i)`` (every node by default),
``fma(a_i, b_i, acc)`` (``Sequential(fma=True)``) or exactly inside a tensor-core block
(``Chain`` / ``TensorCore``). Inner nodes see only the results of their children (fp32 values).
All arithmetic is fp32 with round-to-nearest-even unless a tensor-core block says otherwise,
or the plan's format is fp64 (:func:`plan_format`: the ``dtype`` of its ``Sequential`` nodes):
then every addition, product and fma of the plan is rounded to fp64 (RNE) instead, on fp64
operands; one plan has one format (tensor-core nodes are fp32).

Conventions shared by every node (both evaluators implement exactly these):

- *Absent values.* A node over zero terms yields nothing ("absent") unless it seeds an
  accumulator (``Sequential(init="zero")`` yields +0). Absent children are dropped by their
  parent; ``x + absent = x``. A public evaluation whose whole plan is absent returns +0.
- *The accumulator input ``c``* (GEMM's C, a chained block's input, a remainder's running sum):
  accumulator nodes (``Sequential``, ``Chain``, ``TensorCore``) start from it; ``Strided`` and
  ``SplitK`` hand it to their ``combine``; ``Remainder`` hands it to ``main``; every other node
  adds it last, ``rn(result + c)``.
- *Splits.* ``Pairwise`` splits ``n`` terms at ``h = n//2 - (n//2) % align`` (left gets ``h``),
  recursing while ``n > leaf_size``; ``Tree(fanin)`` cuts ``n`` into ``fanin`` contiguous
  chunks, the first ``n % fanin`` one longer, and adds the children left to right.

Plans are frozen dataclasses: hashable, printable as their constructor (``repr`` evaluates back
to an equal plan) and JSON round-trippable (``to_json`` / ``plan_from_json``; every object has
a ``"kind"`` tag; unknown kinds or fields raise ValueError).

:func:`lower` turns (plan, n) into a flat register program, the compact form the C++
evaluator runs; :mod:`evaluate` holds the readable numpy evaluator of the same semantics.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .tensor_core import get_preset

__all__ = [
    "FORMATS", "plan_format", "Plan", "Sequential", "Pairwise", "Tree", "Strided", "Remainder", "SplitK", "WarpButterfly",
    "BlockTree", "TensorCore", "Chain", "ExplicitTree", "plan_from_json", "numpy_sum_plan",
    "K_INST", "preset_out_format", "tensor_core_gemm", "Program", "lower",
]


FORMATS = ("fp32", "fp64")  # accumulation formats a plan can have


class Plan:
    """Base of every plan node (a frozen dataclass)."""

    _positional: tuple[str, ...] = ()  # fields that repr writes positionally

    def to_json(self) -> dict:
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _field_to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        plan = plan_from_json(d)
        if not isinstance(plan, cls):
            raise ValueError(f"expected a {cls.__name__} plan, got kind {type(plan).__name__!r}")
        return plan

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in self._positional and f.default is not dataclasses.MISSING and value == f.default:
                continue
            text = _repr_value(value)
            parts.append(text if f.name in self._positional else f"{f.name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _repr_value(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _field_to_json(value):
    if isinstance(value, Plan):
        return value.to_json()
    if isinstance(value, tuple):
        return [_field_to_json(v) for v in value]
    return value


MAX_LANES = 1 << 20  # Strided lanes: more than a grid of 132 SMs x 2048 threads, far from hostile sizes


def _check_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


def _check_power_of_two(owner: str, name: str, value) -> None:
    _check_int(owner, name, value)
    if value & (value - 1):
        raise ValueError(f"{owner}: {name} must be a power of two, got {value}")


def _check_plan(owner: str, name: str, value) -> None:
    if not isinstance(value, Plan):
        raise ValueError(f"{owner}: {name} must be a plan, got {value!r}")


# -- the nodes ------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Sequential(Plan):
    """Left to right: ``acc = seed; acc = rn(acc + t_i)`` for i = 0, 1, ...

    Seed: ``c`` when given, else the first term (``init="first"``) or +0 (``init="zero"``, the
    ``float acc = 0.f`` of a GPU thread). For dot products ``fma=False`` adds ``rn(a_i*b_i)``,
    ``fma=True`` does ``acc = fma(a_i, b_i, acc)`` (and a first-term seed is ``rn(a_0*b_0)``).
    ``dtype`` is the accumulation format, ``"fp32"`` or ``"fp64"``; it is the format of the
    whole plan (see :func:`plan_format`).
    """

    dtype: str = "fp32"
    fma: bool = False
    init: str = "first"
    _positional = ("dtype",)

    def __post_init__(self):
        if self.dtype not in FORMATS:
            raise ValueError(f"Sequential: dtype must be one of {FORMATS} (the accumulation formats "
                             f"modelled), got {self.dtype!r}")
        if not isinstance(self.fma, bool):
            raise ValueError(f"Sequential: fma must be a bool, got {self.fma!r}")
        if self.init not in ("first", "zero"):
            raise ValueError(f"Sequential: init must be 'first' or 'zero', got {self.init!r}")


@dataclass(frozen=True, repr=False)
class Pairwise(Plan):
    """Recursive halving: ``n <= leaf_size`` terms go to ``leaf`` (default ``Sequential()``),
    otherwise split at ``h = n//2 - (n//2) % align`` and return ``rn(left + right)``."""

    leaf_size: int = 1
    align: int = 1
    leaf: Plan | None = None

    def __post_init__(self):
        _check_int("Pairwise", "leaf_size", self.leaf_size)
        _check_int("Pairwise", "align", self.align)
        if self.leaf_size < 2 * self.align - 1:
            raise ValueError(f"Pairwise: leaf_size ({self.leaf_size}) must be >= 2*align-1 ({2 * self.align - 1}) so every split is non-empty")
        if self.leaf is not None:
            _check_plan("Pairwise", "leaf", self.leaf)


@dataclass(frozen=True, repr=False)
class Tree(Plan):
    """``fanin``-way tree: ``n <= leaf_size`` terms go to ``leaf`` (default ``Sequential()``),
    otherwise ``fanin`` contiguous chunks (the first ``n % fanin`` one longer, empty ones
    dropped) whose results are added left to right."""

    fanin: int
    leaf_size: int = 1
    leaf: Plan | None = None
    _positional = ("fanin",)

    def __post_init__(self):
        _check_int("Tree", "fanin", self.fanin, 2)
        _check_int("Tree", "leaf_size", self.leaf_size)
        if self.leaf is not None:
            _check_plan("Tree", "leaf", self.leaf)


@dataclass(frozen=True, repr=False)
class Strided(Plan):
    """Lane ``j`` takes terms ``j, j+lanes, ...`` and reduces them with ``inner``; ``combine``
    reduces the lane results (lane order, absent lanes dropped)."""

    lanes: int
    inner: Plan
    combine: Plan

    def __post_init__(self):
        _check_int("Strided", "lanes", self.lanes)
        if self.lanes > MAX_LANES:  # empty lanes still count (an init="zero" inner gives +0 leaves)
            raise ValueError(f"Strided: lanes must be <= {MAX_LANES} (threads of a GPU grid), got {self.lanes}")
        _check_plan("Strided", "inner", self.inner)
        _check_plan("Strided", "combine", self.combine)


@dataclass(frozen=True, repr=False)
class Remainder(Plan):
    """The first ``n - n % multiple`` terms reduced by ``main``; the remaining tail reduced by
    ``tail`` with main's result as its accumulator input (numpy's unrolled-loop epilogue)."""

    multiple: int
    main: Plan
    tail: Plan

    def __post_init__(self):
        _check_int("Remainder", "multiple", self.multiple)
        _check_plan("Remainder", "main", self.main)
        _check_plan("Remainder", "tail", self.tail)


@dataclass(frozen=True, repr=False)
class SplitK(Plan):
    """K cut into ``parts``, each reduced by ``inner``; ``combine`` reduces the part results.

    K is viewed as ``ceil(K/tile)`` tiles. ``contiguous``: part p owns tiles
    ``[p*q, (p+1)*q)`` with ``q = ceil(tiles/parts)``; ``interleaved``: part p owns tiles
    ``p, p+parts, ...``. Terms keep their order inside a part; empty parts are dropped.
    """

    parts: int
    layout: str = "contiguous"
    inner: Plan = Sequential()
    combine: Plan = Sequential()
    tile: int = 1
    _positional = ("parts",)

    def __post_init__(self):
        _check_int("SplitK", "parts", self.parts)
        _check_int("SplitK", "tile", self.tile)
        if self.layout not in ("contiguous", "interleaved"):
            raise ValueError(f"SplitK: layout must be 'contiguous' or 'interleaved', got {self.layout!r}")
        _check_plan("SplitK", "inner", self.inner)
        _check_plan("SplitK", "combine", self.combine)


@dataclass(frozen=True, repr=False)
class BlockTree(Plan):
    """Shared-memory tree of a CUDA block reduction, ``n <= size`` terms in slots 0..n-1:
    ``for (s = size/2; s > 0; s >>= 1) if (i < s) v[i] += v[i + s];`` result ``v[0]``
    (absent slots pass their partner through)."""

    size: int
    _positional = ("size",)

    def __post_init__(self):
        _check_power_of_two("BlockTree", "size", self.size)


@dataclass(frozen=True, repr=False)
class WarpButterfly(Plan):
    """xor-shuffle warp reduction over ``n <= width`` lanes:
    ``for (o = width/2; o > 0; o >>= 1) v[i] += v[i ^ o];`` (every lane ends with the same bits,
    fp32 addition being commutative; lane 0's sum is the ``BlockTree(width)`` tree)."""

    width: int = 32
    _positional = ("width",)

    def __post_init__(self):
        _check_power_of_two("WarpButterfly", "width", self.width)


@dataclass(frozen=True, repr=False)
class TensorCore(Plan):
    """One tensor-core block step ``d = c + sum_{i<G} a_i b_i`` of a preset
    (:func:`tensor_core.get_preset`); as a plan it reduces exactly G products."""

    arch: str
    in_format: str
    out_format: str = "fp32"
    path: str = "mma.sync"
    _positional = ("arch", "in_format", "out_format")

    def __post_init__(self):
        for name in ("arch", "in_format", "out_format", "path"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"TensorCore: {name} must be a string")
        self.model()  # unknown preset -> ValueError now, not at evaluation

    def model(self):
        return get_preset(self.arch, self.in_format, self.out_format, self.path)


@dataclass(frozen=True, repr=False)
class Chain(Plan):
    """K walked in steps of ``k`` products (one MMA instruction), each step ``k/G`` blocks of the
    tensor-core ``block``; every block's output is the next block's ``c`` (the first gets the
    plan's ``c``, else +0). K must be a multiple of ``k``."""

    block: TensorCore
    k: int

    def __post_init__(self):
        if not isinstance(self.block, TensorCore):
            raise ValueError(f"Chain: block must be a TensorCore, got {self.block!r}")
        _check_int("Chain", "k", self.k)
        G = self.block.model().G
        if self.k % G:
            raise ValueError(f"Chain: k={self.k} is not a multiple of the block size G={G} of {self.block!r}")


@dataclass(frozen=True, repr=False)
class ExplicitTree(Plan):
    """Any order with no compact form: ``nodes`` is a nested tuple whose leaves are term indices
    (each of 0..n-1 exactly once). A tuple node adds its children's results left to right in fp32
    (``m`` children: ``m-1`` roundings; a one-child node rounds a product to fp32)."""

    nodes: tuple
    _positional = ("nodes",)

    def __post_init__(self):
        object.__setattr__(self, "nodes", _as_tree(self.nodes))
        if not isinstance(self.nodes, tuple):
            raise ValueError("ExplicitTree: nodes must be a (nested) tuple of indices")

    def leaves(self) -> list[int]:
        out: list[int] = []

        def walk(node):
            if isinstance(node, tuple):
                for child in node:
                    walk(child)
            else:
                out.append(node)

        walk(self.nodes)
        return out


def _as_tree(node):
    if isinstance(node, (list, tuple)):
        if not node:
            raise ValueError("ExplicitTree: empty node")
        return tuple(_as_tree(child) for child in node)
    if isinstance(node, bool) or not isinstance(node, (int, np.integer)) or node < 0:
        raise ValueError(f"ExplicitTree: leaves must be non-negative integers, got {node!r}")
    return int(node)


_KINDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (Sequential, Pairwise, Tree, Strided, Remainder, SplitK, BlockTree, WarpButterfly,
                TensorCore, Chain, ExplicitTree)
}


def plan_from_json(d) -> Plan:
    """The plan of a ``to_json`` dict; ValueError on unknown kinds, unknown or bad fields (also for
    hostile input: a field of the wrong type or a nesting too deep is a ValueError, never another
    exception)."""
    try:
        return _plan_from_json(d)
    except (TypeError, AttributeError, KeyError, IndexError, RecursionError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(f"not a valid plan ({type(exc).__name__}: {exc})"[:500]) from None


def _plan_from_json(d) -> Plan:
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a plan must be a JSON object with a 'kind', got {d!r}")
    kind = d["kind"]
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown plan kind {kind!r}; known: {sorted(_KINDS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - {"kind"}
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {sorted(unknown)}; fields are {sorted(names)}")
    kwargs = {}
    for name, value in d.items():
        if name == "kind":
            continue
        if isinstance(value, dict):
            value = _plan_from_json(value)
        elif name == "nodes":
            value = _as_tree(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required fields
        raise ValueError(f"{kind}: {exc}") from None


def plan_format(plan: Plan) -> str:
    """The arithmetic format of a plan: the ``dtype`` shared by all its ``Sequential`` nodes
    ("fp32" when it has none; tensor-core nodes count as fp32). Nodes without a format of their
    own (trees, default leaves) compute in it. Mixed formats raise ValueError."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, Sequential):
            found.add(node.dtype)
        elif isinstance(node, (TensorCore, Chain)):
            found.add("fp32")
        if isinstance(node, Plan):
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if isinstance(value, Plan):
                    walk(value)

    walk(plan)
    if len(found) > 1:
        raise ValueError(f"one accumulation format per plan, got {sorted(found)} in {plan!r}")
    return found.pop() if found else "fp32"


def numpy_sum_plan() -> Plan:
    """The order of numpy's float32 ``np.sum`` / ``np.add.reduce`` over one contiguous axis,
    as measured bit for bit on numpy 2.4 (tests/test_numpy_sum_order.py).

    numpy's ``pairwise_sum``: blocks of n <= 128 use 8 strided accumulators seeded with the
    first 8 terms, combined ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))``, then the n % 8 tail added
    in order (n < 8: plain left to right); longer runs split at n/2 rounded down to a multiple
    of 8. The reduction's output starts at the identity +0 and adds the pairwise result (so
    a sum of -0s is +0).
    """
    block = Remainder(8, main=Strided(8, inner=Sequential(), combine=Pairwise()), tail=Sequential())
    pairwise = Pairwise(leaf_size=128, align=8, leaf=block)
    return SplitK(1, inner=pairwise, combine=Sequential(init="zero"))


# K of one MMA instruction per input format (mma.sync m16n8kK, wgmma m64nNkK): the step of a
# tensor-core GEMM's K chain.
K_INST = {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}


def preset_out_format(arch: str, in_format: str, out_format: str, path: str) -> str:
    """The preset's output format for a kernel writing ``out_format`` registers: Hopper fp8 blocks
    are modelled as writing e8m13 (fp32 with 13 fraction bits) into the fp32 accumulator."""
    if out_format == "fp32" and in_format in ("e4m3", "e5m2"):
        try:
            get_preset(arch, in_format, "fp32", path)
        except ValueError:
            return "e8m13"
    return out_format


def tensor_core_gemm(in_format: str, out_format: str = "fp32", *, path: str = "mma.sync", arch: str = "sm_90",
                     split_k: int = 1) -> Plan:
    """The order of a tensor-core GEMM that walks K in instruction order k = 0, k_inst, ... with
    the accumulator fed back: ``Chain(TensorCore(arch, in_format, <preset output>, path), k=k_inst)``;
    ``split_k=P``: ``SplitK(P, "contiguous", inner=<that chain>, combine=Sequential("fp32"),
    tile=k_inst)`` (each part from +0, then ``((C + part_0) + part_1) + ...`` in fp32 RNE).
    ``arch`` names the preset (an ``"sm_90a"`` device is ``"sm_90"``). The CUDA tensor-core rungs
    (:mod:`hspi_kernels.kernels.cuda.gemm_tensor_core`) implement it."""
    if in_format not in K_INST:
        raise ValueError(f"in_format must be one of {sorted(K_INST)}, got {in_format!r}")
    arch = arch[:-1] if arch.endswith("a") else arch
    k = K_INST[in_format]
    inner = Chain(block=TensorCore(arch, in_format, preset_out_format(arch, in_format, out_format, path),
                                   path=path), k=k)
    if split_k == 1:
        return inner
    return SplitK(int(split_k), "contiguous", inner=inner, combine=Sequential("fp32"), tile=k)


# -- lowering to a register program (the C++ evaluator's input) --------------------------------
OP_SEQ, OP_CHAIN = 0, 1


@dataclass(frozen=True)
class Program:
    """A plan lowered for n terms. Registers ``0..n-1`` are the terms, ``n`` is +0, ``n+1`` is c,
    ``n+2..`` intermediates. Each row of ``instrs`` is ``(op, out, init, list_start, list_len,
    flag)`` over the register list ``lists[list_start : list_start+list_len]``:

    - ``OP_SEQ``: ``acc = R[init]`` (init >= 0) or the first listed value; then ``acc = rn(acc + v)``
      for the rest, where a term register is ``x_i`` / ``rn(a_i*b_i)``, or with flag=1
      ``acc = fma(a_i, b_i, acc)``;
    - ``OP_CHAIN``: tensor-core blocks over the listed terms (in list order), c = ``R[init]`` or +0.
    """

    n: int
    n_regs: int
    out: int  # result register, or -1 for "absent" (+0)
    instrs: np.ndarray  # int64 [I, 6]
    lists: np.ndarray  # int32 [L]
    model: object  # the BlockModel of the Chain/TensorCore nodes, or None


class _Lowering:
    def __init__(self, n: int, dot: bool):
        self.n, self.dot = n, dot
        self.zero, self.c = n, n + 1
        self.next_reg = n + 2
        self.instrs: list[tuple] = []
        self.lists: list[np.ndarray] = []
        self.list_len = 0
        self.model = None

    # helpers ----------------------------------------------------------------------------
    def emit(self, op, regs, init=-1, flag=0) -> int:
        regs = np.asarray(regs, dtype=np.int32)
        out = self.next_reg
        self.next_reg += 1
        self.instrs.append((op, out, init, self.list_len, len(regs), flag))
        self.lists.append(regs)
        self.list_len += len(regs)
        return out

    def value(self, r):
        """A term register becomes an fp32 value (rn(a_i*b_i) for dot products)."""
        if r is None or r >= self.n:
            return r
        return self.emit(OP_SEQ, [r])

    def add(self, x, y):
        if x is None:
            return self.value(y)
        if y is None:
            return self.value(x)
        return self.emit(OP_SEQ, [x, y])

    def add_c(self, r, c):
        return self.add(r, c) if c is not None else r

    def add_all(self, regs):
        regs = [r for r in regs if r is not None]
        if not regs:
            return None
        return self.emit(OP_SEQ, regs) if len(regs) > 1 else self.value(regs[0])

    # nodes -------------------------------------------------------------------------------
    def lower(self, plan: Plan, items: np.ndarray, c):
        """Register holding the plan's result over the registers ``items`` (None: absent)."""
        m = len(items)
        if isinstance(plan, Sequential):
            init = c if c is not None else (self.zero if plan.init == "zero" else None)
            if m == 0:
                return init
            return self.emit(OP_SEQ, items, -1 if init is None else init, int(plan.fma))
        if isinstance(plan, (Chain, TensorCore)):
            block = plan.block if isinstance(plan, Chain) else plan
            model = block.model()
            step = plan.k if isinstance(plan, Chain) else model.G
            if self.model is not None and self.model != model:
                raise ValueError(f"one tensor-core model per plan: {self.model.name} and {model.name}")
            self.model = model
            if not self.dot or (m and int(np.max(items)) >= self.n):
                raise ValueError(f"{type(plan).__name__} reduces operand products a_i*b_i, not values or partial sums")
            if isinstance(plan, TensorCore) and m != model.G:
                raise ValueError(f"TensorCore {model.name} reduces exactly G={model.G} products, got {m}")
            if m % step:
                raise ValueError(f"Chain: K={m} is not a multiple of k={step}")
            if m == 0:
                return c
            return self.emit(OP_CHAIN, items, -1 if c is None else c)
        if isinstance(plan, Pairwise):
            leaf = plan.leaf or Sequential()

            def rec(part):
                if len(part) <= plan.leaf_size:
                    return self.lower(leaf, part, None)
                h = len(part) // 2
                h -= h % plan.align
                return self.add(rec(part[:h]), rec(part[h:]))

            return self.add_c(rec(items), c) if m else c
        if isinstance(plan, Tree):
            leaf = plan.leaf or Sequential()

            def rec(part):
                if len(part) <= plan.leaf_size:
                    return self.lower(leaf, part, None)
                # a fanin beyond the part's length only adds empty chunks: the same tree with
                # fanin = len(part) (one term per chunk), without a list of fanin bounds
                fanin = min(plan.fanin, len(part))
                q, r = divmod(len(part), fanin)
                bounds = np.cumsum([0] + [q + (i < r) for i in range(fanin)])
                return self.add_all([rec(part[s:e]) for s, e in zip(bounds[:-1], bounds[1:]) if e > s])

            return self.add_c(rec(items), c) if m else c
        if isinstance(plan, Strided):
            lanes = [self.lower(plan.inner, items[j :: plan.lanes], None) for j in range(plan.lanes)]
            return self.lower(plan.combine, np.array([r for r in lanes if r is not None], dtype=np.int64), c)
        if isinstance(plan, SplitK):
            parts = [self.lower(plan.inner, items[idx], None) for idx in split_k_indices(plan, m)]
            return self.lower(plan.combine, np.array([r for r in parts if r is not None], dtype=np.int64), c)
        if isinstance(plan, Remainder):
            cut = m - m % plan.multiple
            return self.lower(plan.tail, items[cut:], self.lower(plan.main, items[:cut], c))
        if isinstance(plan, (BlockTree, WarpButterfly)):
            size = plan.size if isinstance(plan, BlockTree) else plan.width
            if m > size:
                raise ValueError(f"{plan!r} reduces at most {size} values, got {m}")
            size = tree_slots(size, m)
            slots = list(items) + [None] * (size - m)
            stride = size // 2
            while stride:
                for i in range(stride):
                    if slots[i] is not None or slots[i + stride] is not None:
                        slots[i] = self.add(slots[i], slots[i + stride])
                stride //= 2
            return self.add_c(self.value(slots[0]), c)
        if isinstance(plan, ExplicitTree):
            check_explicit_leaves(plan, m)

            def rec(node):
                if isinstance(node, tuple):
                    return self.add_all([rec(child) for child in node])
                return items[node]

            return self.add_c(self.value(rec(plan.nodes)), c)
        raise ValueError(f"cannot lower plan {plan!r}")


def tree_slots(size: int, m: int) -> int:
    """Slots a ``BlockTree(size)`` / ``WarpButterfly(size)`` over ``m <= size`` values needs: the
    strides (offsets) >= m only pass values through (their partners are absent; lane 0 of the
    butterfly ends with the block-tree sum), so the tree is that of the smallest power of two
    >= m, without a slot list of a hostile size."""
    return min(size, 1 << max(0, (m - 1).bit_length()))


def split_k_indices(plan: SplitK, m: int) -> list[np.ndarray]:
    """Term positions of each non-empty part of a SplitK over m terms (see SplitK)."""
    tiles = -(-m // plan.tile)
    used = min(plan.parts, tiles)  # parts beyond the tile count are empty (and dropped)
    tile_of_part = []
    if plan.layout == "contiguous":
        q = -(-tiles // plan.parts)
        tile_of_part = [np.arange(p * q, min((p + 1) * q, tiles)) for p in range(used)]
    else:
        tile_of_part = [np.arange(p, tiles, plan.parts) for p in range(used)]
    out = []
    offsets = np.arange(min(plan.tile, m))  # offsets >= m fall outside K in every tile
    for tiles_p in tile_of_part:
        idx = (tiles_p[:, None] * plan.tile + offsets[None, :]).reshape(-1)
        idx = idx[idx < m]
        if idx.size:
            out.append(idx)
    return out


def check_explicit_leaves(plan: ExplicitTree, m: int) -> None:
    leaves = plan.leaves()
    if sorted(leaves) != list(range(m)):
        raise ValueError(f"ExplicitTree: leaves must be each of 0..{m - 1} exactly once, got {sorted(leaves)[:12]}...")


@functools.lru_cache(maxsize=256)
def lower(plan: Plan, n: int, dot: bool, has_c: bool) -> Program:
    """Lower ``plan`` for ``n`` terms (``dot``: terms are products) to a register :class:`Program`."""
    low = _Lowering(n, dot)
    out = low.lower(plan, np.arange(n, dtype=np.int64), low.c if has_c else None)
    out = low.value(out)  # a bare term as the result is still rounded to fp32
    instrs = np.array(low.instrs, dtype=np.int64).reshape(-1, 6)
    lists = np.concatenate(low.lists).astype(np.int32) if low.lists else np.zeros(0, np.int32)
    instrs.setflags(write=False)
    lists.setflags(write=False)
    return Program(n, low.next_reg, -1 if out is None else out, instrs, lists, low.model)
