"""Exact evaluation of accumulation plans (:mod:`plans`) on numpy arrays.

Two implementations of one semantics, kept equal bit for bit by
tests/test_evaluator_equivalence.py:

- ``backend="numpy"``: the readable reference. It walks the plan tree recursively, vectorised
  over the batch; fp32 additions and products are numpy float32 operations (IEEE, RNE),
  the exact fp32 fma is :func:`fma32`, tensor-core blocks are :mod:`tensor_core`.
- ``backend="native"``: the plan lowered to a register program (:func:`plans.lower`) and run by
  the C++ evaluator (csrc/numerics/evaluator.cpp): ``std::fmaf``, its own integer block
  arithmetic, OpenMP over outputs, GIL released.

Entry points: :func:`evaluate` (reductions ``x[..., n]`` and dot products ``(a, b)[..., K]``)
and :func:`gemm` (``A[M,K] @ B[K,N] (+ C)``). A plan whose format is fp64
(:func:`plans.plan_format`) runs in float64 on float64 operands (float32 ones are widened
exactly) and returns float64: numpy float64 arithmetic and :func:`fma64` on the numpy path,
``run_program_f64`` (``std::fma``) on the native one. Bad input (shapes, dtypes, operands not
representable in a tensor-core input format, unknown presets) raises ValueError; nothing is
rounded silently.
"""

from __future__ import annotations

import numpy as np

from . import plans as P
from . import tensor_core
from .formats import get_format
from .rounding import is_representable

__all__ = ["evaluate", "gemm", "fma32", "fma64", "fma64_exact"]

_F32 = np.float32


# -- exact fp32 fma in numpy ----------------------------------------------------------------
def fma32(a, b, c) -> np.ndarray:
    """``rn32(a*b + c)`` with a single rounding, for float32 arrays (broadcasting).

    a*b is exact in float64 (24+24 significand bits <= 53, exponents far inside float64).
    ``s = fl64(p + c)`` with its exact error ``e`` (Knuth's TwoSum) gives ``p + c = s + e``
    exactly, ``|e| <= ulp64(s)/2``. Rounding s to fp32 is then correct unless s sits exactly on
    an fp32 rounding boundary (a midpoint, both neighbours being float64 numbers): there
    the sign of e decides. Away from boundaries s and s+e lie strictly on the same side, since
    boundaries are float64 numbers and e is below half a float64 ulp.
    """
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=_F32) for v in (a, b, c)))
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bv = s - p
        e = (p - (s - bv)) + (c64 - bv)  # TwoSum: p + c == s + e exactly (s finite)
        r = s.astype(_F32)  # RNE of s, overflow to inf included
        r64 = r.astype(np.float64)
        big = np.copysign(_F32(np.finfo(_F32).max), s).astype(_F32)
        # The fp32 number on the far side of s from r, and the boundary between the two;
        # past fp32's range the boundary is max + ulp/2 = 2^128 - 2^103.
        other = np.where(np.isinf(r), big, np.nextafter(r, np.copysign(_F32(np.inf), s - r64).astype(_F32)))
        other64 = other.astype(np.float64)
        boundary = np.where(np.isinf(r) | np.isinf(other), np.copysign(2.0**128 - 2.0**103, s), (r64 + other64) / 2)
        on_boundary = np.isfinite(s) & (e != 0) & (s == boundary)
        # On a boundary the exact value s + e lies on e's side of it.
        fixed = np.where((e > 0) == (other64 > s), other, r)
    return np.where(on_boundary, fixed, r).astype(_F32)


# -- exact fp64 fma in numpy ----------------------------------------------------------------
def _two_sum(x, y):
    s = x + y
    bv = s - x
    return s, (x - (s - bv)) + (y - bv)


def fma64(a, b, c) -> np.ndarray:
    """``rn64(a*b + c)`` with a single rounding, for float64 arrays (broadcasting).

    Error-free transformations, then rounding to odd (Boldo & Melquiond, IEEE TC 2008):
    ``a*b = uh + ul`` exactly (Veltkamp splitting, Dekker's product), ``c + uh = th + tl``
    (TwoSum), ``v = RO(tl + ul)`` (round to odd: TwoSum's result with its last bit forced to 1
    when inexact), ``rn(th + v)``. That is only proved without underflow or overflow: elements
    outside a safe exponent window, and zero products (IEEE's zero-sign rule), are computed by
    :func:`fma64_exact` / exactly instead.
    """
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c)))
    with np.errstate(all="ignore"):
        uh = a * b
        split = 134217729.0  # 2^27 + 1
        ta, tb = split * a, split * b
        ah, bh = ta - (ta - a), tb - (tb - b)
        al, bl = a - ah, b - bh
        ul = ((ah * bh - uh) + ah * bl + al * bh) + al * bl
        th, tl = _two_sum(c, uh)
        s, e = _two_sum(tl, ul)
        odd = (s.view(np.uint64) & np.uint64(1)) == 1
        v = np.where((e != 0) & ~odd, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
        z = th + v
        lo, hi = 2.0**-900, 2.0**900
        safe = ((np.abs(a) <= 2.0**500) & (np.abs(b) <= 2.0**500) & (np.abs(uh) >= lo) & (np.abs(uh) <= hi)
                & (np.abs(c) <= hi) & ((np.abs(th) >= lo) | (th == 0)) & np.isfinite(z))
        zero_product = (a == 0) | (b == 0)
        z = np.where(zero_product, c + uh, z)  # c + (+-0): exact, with IEEE's sign rule
    slow = np.flatnonzero(~(safe | zero_product))
    if slow.size:
        z = np.array(z, dtype=np.float64)
        flat, fa, fb, fc = z.reshape(-1), a.reshape(-1), b.reshape(-1), c.reshape(-1)
        for i in slow:
            flat[i] = fma64_exact(float(fa[i]), float(fb[i]), float(fc[i]))
    return np.asarray(z, dtype=np.float64)


def fma64_exact(a: float, b: float, c: float) -> float:
    """``rn64(a*b + c)`` of one element through exact rationals (the slow path and the test oracle)."""
    import math
    from fractions import Fraction

    if not (math.isfinite(a) and math.isfinite(b)):
        return a * b + c  # an infinite / nan operand: IEEE's rules, no rounding question
    if not math.isfinite(c):
        return c  # the exact product is finite: inf + finite = inf (a float a*b could overflow: no)
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:  # exact zero: -0 only when the product and c are both -0 (IEEE 754 6.3)
        product_negative = math.copysign(1.0, a) * math.copysign(1.0, b) < 0
        return -0.0 if product_negative and (a == 0 or b == 0) and math.copysign(1.0, c) < 0 else 0.0
    try:
        return float(exact)  # correctly rounded (RNE), subnormals included
    except OverflowError:  # (math.copysign(inf, exact) would convert exact to float: overflow again)
        return math.inf if exact > 0 else -math.inf


# -- operands -------------------------------------------------------------------------------
class _Terms:
    """The terms of one node, batch-major: values ``x[B, m]`` or products of ``a, b [B, m]``."""

    def __init__(self, x=None, a=None, b=None):
        self.x, self.a, self.b = x, a, b

    @property
    def dot(self) -> bool:
        return self.a is not None

    @property
    def m(self) -> int:
        return (self.a if self.dot else self.x).shape[1]

    def take(self, idx) -> "_Terms":
        if self.dot:
            return _Terms(a=self.a[:, idx], b=self.b[:, idx])
        return _Terms(x=self.x[:, idx])

    @property
    def dtype(self):
        return (self.a if self.dot else self.x).dtype

    def values(self) -> np.ndarray:
        """Values of the terms in the plan's format: x_i, or rn(a_i * b_i)."""
        return self.a * self.b if self.dot else self.x


def _values_of(results: list, dtype) -> _Terms:
    """Children's results (absent ones dropped) as the value terms of their parent."""
    present = [r for r in results if r is not None]
    if not present:
        return _Terms(x=np.zeros((0, 0), dtype))
    return _Terms(x=np.stack(present, axis=1))


def _add(x, y):
    if x is None:
        return y
    if y is None:
        return x
    return x + y


def _reduce(plan: P.Plan, t: _Terms, c):
    """Result [B] of ``plan`` over the terms ``t`` with accumulator input ``c`` (None: absent)."""
    m = t.m
    if isinstance(plan, P.Sequential):
        acc = c
        if acc is None and plan.init == "zero":
            acc = np.zeros(t.x.shape[0] if not t.dot else t.a.shape[0], t.dtype)
        start = 0
        if plan.fma and t.dot:
            fma = fma64 if t.dtype == np.float64 else fma32
            if acc is None and m:
                acc, start = t.a[:, 0] * t.b[:, 0], 1
            for i in range(start, m):
                acc = fma(t.a[:, i], t.b[:, i], acc)
            return acc
        v = t.values()
        if acc is None and m:
            acc, start = v[:, 0].copy(), 1
        for i in range(start, m):
            acc = acc + v[:, i]  # RNE in the plan's format, strictly left to right
        return acc
    if isinstance(plan, (P.Chain, P.TensorCore)):
        if not t.dot:
            raise ValueError(f"{type(plan).__name__} reduces operand products a_i*b_i, not values or partial sums")
        block = plan.block if isinstance(plan, P.Chain) else plan
        model = block.model()
        if isinstance(plan, P.TensorCore) and m != model.G:
            raise ValueError(f"TensorCore {model.name} reduces exactly G={model.G} products, got {m}")
        if isinstance(plan, P.Chain) and m % plan.k:
            raise ValueError(f"Chain: K={m} is not a multiple of k={plan.k}")
        if m == 0:
            return c
        return tensor_core.chain(model, t.a, t.b, c)
    if isinstance(plan, P.Pairwise):
        leaf = plan.leaf or P.Sequential()

        def pairwise(part: _Terms):
            if part.m <= plan.leaf_size:
                return _reduce(leaf, part, None)
            h = part.m // 2
            h -= h % plan.align
            return _add(pairwise(part.take(slice(0, h))), pairwise(part.take(slice(h, None))))

        return _add(pairwise(t), c) if m else c
    if isinstance(plan, P.Tree):
        leaf = plan.leaf or P.Sequential()

        def tree(part: _Terms):
            if part.m <= plan.leaf_size:
                return _reduce(leaf, part, None)
            fanin = min(plan.fanin, part.m)  # more chunks than terms: only empty ones (same tree)
            q, r = divmod(part.m, fanin)
            result, start = None, 0
            for i in range(fanin):
                size = q + (1 if i < r else 0)
                if size:
                    result = _add(result, tree(part.take(slice(start, start + size))))
                start += size
            return result

        return _add(tree(t), c) if m else c
    if isinstance(plan, P.Strided):
        lanes = [_reduce(plan.inner, t.take(slice(j, None, plan.lanes)), None) for j in range(plan.lanes)]
        return _reduce(plan.combine, _values_of(lanes, t.dtype), c)
    if isinstance(plan, P.SplitK):
        # Part of each term position: contiguous runs of whole tiles, or tiles dealt round-robin.
        tile_index = np.arange(m) // plan.tile
        if plan.layout == "contiguous":
            tiles_per_part = -(-(-(-m // plan.tile)) // plan.parts)
            part_of = tile_index // max(tiles_per_part, 1)
        else:
            part_of = tile_index % plan.parts
        results = [_reduce(plan.inner, t.take(np.flatnonzero(part_of == p)), None)
                   for p in np.unique(part_of)]  # the non-empty parts, in order
        return _reduce(plan.combine, _values_of(results, t.dtype), c)
    if isinstance(plan, P.Remainder):
        cut = m - m % plan.multiple
        main = _reduce(plan.main, t.take(slice(0, cut)), c)
        return _reduce(plan.tail, t.take(slice(cut, None)), main)
    if isinstance(plan, P.BlockTree):
        if m > plan.size:
            raise ValueError(f"{plan!r} reduces at most {plan.size} values, got {m}")
        v = t.values()
        size = P.tree_slots(plan.size, m)
        slots = [v[:, i] for i in range(m)] + [None] * (size - m)
        stride = size // 2
        while stride:  # for (s = size/2; s > 0; s >>= 1) if (tid < s) v[tid] += v[tid + s]
            for i in range(stride):
                slots[i] = _add(slots[i], slots[i + stride])
            stride //= 2
        return _add(slots[0], c)
    if isinstance(plan, P.WarpButterfly):
        if m > plan.width:
            raise ValueError(f"{plan!r} reduces at most {plan.width} values, got {m}")
        v = t.values()
        width = P.tree_slots(plan.width, m)
        lanes = [v[:, i] for i in range(m)] + [None] * (width - m)
        offset = width // 2
        while offset:  # every lane: v += __shfl_xor_sync(v, offset)
            lanes = [_add(lanes[i], lanes[i ^ offset]) for i in range(width)]
            offset //= 2
        return _add(lanes[0], c)
    if isinstance(plan, P.ExplicitTree):
        P.check_explicit_leaves(plan, m)
        v = t.values()

        def node_value(node):
            if isinstance(node, tuple):
                result = None
                for child in node:  # left to right, one rounding per addition
                    result = _add(result, node_value(child))
                return result
            return v[:, node]

        return _add(node_value(plan.nodes), c)
    raise ValueError(f"unknown plan node {plan!r}")


# -- public API -----------------------------------------------------------------------------
def _as_f32(x, what: str) -> np.ndarray:
    """float32 view of an operand array; exact widening only (never a silent rounding)."""
    arr = np.asarray(x)
    if arr.dtype == _F32:
        return arr
    if arr.dtype.kind == "f" or arr.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        if arr.dtype.itemsize <= 4 and arr.dtype != np.float64:
            return arr.astype(_F32)
        narrowed = arr.astype(_F32)
        same = (narrowed.astype(arr.dtype) == arr) | (np.isnan(arr) & np.isnan(narrowed))
        if not np.all(same):
            raise ValueError(f"{what}: {int(np.sum(~same))} value(s) not representable in float32")
        return narrowed
    raise ValueError(f"{what}: expected a floating-point array, got dtype {arr.dtype}")


def _as_f64(x, what: str) -> np.ndarray:
    """float64 operand array (floats of <= 8 bytes widen exactly)."""
    arr = np.asarray(x)
    if arr.dtype == np.float64:
        return arr
    if (arr.dtype.kind == "f" and arr.dtype.itemsize <= 8) or arr.dtype.name in ("bfloat16", "float8_e4m3fn",
                                                                                "float8_e5m2"):
        return arr.astype(np.float64)
    raise ValueError(f"{what}: expected a floating-point array of at most 8 bytes, got dtype {arr.dtype}")


def _as_format(x, what: str, fmt: str) -> np.ndarray:
    return _as_f64(x, what) if fmt == "fp64" else _as_f32(x, what)


def _check_block_operands(model, arr: np.ndarray, what: str) -> np.ndarray:
    if model.input_low_bits_ignored:  # the hardware drops these bits: part of the model
        mask = np.uint32((0xFFFFFFFF << model.input_low_bits_ignored) & 0xFFFFFFFF)
        arr = (arr.view(np.uint32) & mask).view(_F32)
    ok = is_representable(arr, model.in_format)
    if not np.all(ok):
        bad = arr[~ok]
        raise ValueError(f"{what}: {bad.size} operand(s) not representable in {model.in_format} "
                         f"for {model.name}, e.g. {float(bad.flat[0])!r}")
    return arr


def _native():
    from hspi_kernels import _native

    return _native


def _run_native(prog: P.Program, A, B, C, outer: bool) -> np.ndarray:
    if A.dtype == np.float64:  # an fp64 plan (no tensor-core model: plan_format forbids it)
        return _native().run_program_f64(prog.instrs, prog.lists, prog.n, prog.n_regs, prog.out,
                                         np.zeros(0, np.int64), A, B, C, outer)
    model = prog.model
    mp = np.zeros(0, np.int64)
    if model is not None:
        out_code = {"fp32": 0, "fp16": 1, "e8m13": 2}[model.out_format]
        floor = model.emax_floor
        c_format = "fp16" if model.out_format == "fp16" else "fp32"
        mp = np.array([model.G, model.F, out_code, int(model.out_rounding == "RNE"), int(floor is not None),
                       0 if floor is None else floor, model.input_low_bits_ignored,
                       int(model.subnormal_exponent == "emin"), get_format(model.in_format).emin,
                       get_format(c_format).emin, int(model.zero_sign == "positive")], np.int64)
    return _native().run_program(prog.instrs, prog.lists, prog.n, prog.n_regs, prog.out, mp, A, B, C, outer)


def _numpy_batch(plan, t: _Terms, c, batch: int) -> np.ndarray:
    out = _reduce(plan, t, c)
    if out is None:
        return np.zeros(batch, t.dtype)
    return np.asarray(out, dtype=t.dtype).reshape(batch)


def _check_backend(backend: str) -> None:
    if backend not in ("native", "numpy"):
        raise ValueError(f"backend must be 'native' or 'numpy', got {backend!r}")


def evaluate(plan: P.Plan, operands, *, c=None, backend: str = "native") -> np.ndarray:
    """Exact result bits of ``plan`` applied along the last axis.

    ``operands``: ``x[..., n]`` (a reduction) or a tuple ``(a, b)`` of equal shapes ``[..., K]``
    (dot products). ``c``: optional accumulator input, shape ``[...]`` (broadcast). Returns
    ``[...]`` in the plan's format (float32, or float64 for an fp64 plan).
    """
    _check_backend(backend)
    if not isinstance(plan, P.Plan):
        raise ValueError(f"plan must be a Plan, got {plan!r}")
    fmt = P.plan_format(plan)
    dot = isinstance(operands, tuple)
    if dot:
        if len(operands) != 2:
            raise ValueError("dot-product operands must be a pair (a, b)")
        a, b = _as_format(operands[0], "a", fmt), _as_format(operands[1], "b", fmt)
        if a.shape != b.shape or a.ndim == 0:
            raise ValueError(f"a and b must have the same shape [..., K], got {a.shape} and {b.shape}")
        first = a
    else:
        first = _as_format(operands, "x", fmt)
        if first.ndim == 0:
            raise ValueError("x must have shape [..., n]")
    batch_shape, n = first.shape[:-1], first.shape[-1]
    batch = int(np.prod(batch_shape))
    if c is not None:
        try:
            c = np.ascontiguousarray(np.broadcast_to(_as_format(c, "c", fmt), batch_shape)).reshape(batch)
        except ValueError:
            raise ValueError(f"c must broadcast to the batch shape {batch_shape}, got {np.shape(c)}") from None
    prog = P.lower(plan, n, dot, c is not None)  # validates the plan against n (both backends)
    if dot:
        a = a.reshape(batch, n)
        b = b.reshape(batch, n)
        if prog.model is not None:
            a = _check_block_operands(prog.model, a, "a")
            b = _check_block_operands(prog.model, b, "b")
    x = first.reshape(batch, n)
    if backend == "numpy":
        t = _Terms(a=a, b=b) if dot else _Terms(x=x)
        return _numpy_batch(plan, t, c, batch).reshape(batch_shape)
    A = np.ascontiguousarray(a if dot else x)
    B = np.ascontiguousarray(b) if dot else None
    return _run_native(prog, A, B, c, False).reshape(batch_shape)


def gemm(plan: P.Plan, A, B, C=None, *, backend: str = "native") -> np.ndarray:
    """``D[m, n]`` = the plan's dot product of row ``A[m, :]`` and column ``B[:, n]`` with
    accumulator input ``C[m, n]`` (when given). A [M,K], B [K,N], C [M,N]; the result in the
    plan's format (float32, or float64 for an fp64 plan)."""
    _check_backend(backend)
    fmt = P.plan_format(plan) if isinstance(plan, P.Plan) else "fp32"
    A, B = _as_format(A, "A", fmt), _as_format(B, "B", fmt)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"gemm needs A[M,K] and B[K,N], got {A.shape} and {B.shape}")
    M, K = A.shape
    N = B.shape[1]
    if C is not None:
        C = _as_format(C, "C", fmt)
        if C.shape != (M, N):
            raise ValueError(f"C must have shape {(M, N)}, got {C.shape}")
        C = np.ascontiguousarray(C)
    prog = P.lower(plan, K, True, C is not None)
    Bt = np.ascontiguousarray(B.T)
    if prog.model is not None:
        A = _check_block_operands(prog.model, A, "A")
        Bt = _check_block_operands(prog.model, Bt, "B")
    if backend == "numpy":
        a = np.broadcast_to(A[:, None, :], (M, N, K)).reshape(M * N, K)
        b = np.broadcast_to(Bt[None, :, :], (M, N, K)).reshape(M * N, K)
        c = None if C is None else C.reshape(M * N)
        return _numpy_batch(plan, _Terms(a=a, b=b), c, M * N).reshape(M, N)
    return _run_native(prog, np.ascontiguousarray(A), Bt, C, True)
