"""fp64 plans: ``Sequential("fp64")`` makes a whole plan compute in binary64.

Checked here: the format rules (one format per plan, tensor cores are fp32, JSON/repr round
trips); the numpy-path ``fma64`` against exact Fraction arithmetic; both evaluators against a
literal Fraction transcription of the CUDA-core fp64 GEMM kernels (every operation rounded to
fp64 by ``float(Fraction)``) for every order, fused and separate, on adversarial inputs; numpy ==
native for fp64 versions of every value plan; negative controls (a wrong order, the fp32 plan,
fused for separate) that the comparison must reject.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import gemm_cuda_core as G
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate, fma64, fma64_exact, gemm

F64 = np.float64
TINY = 5e-324


def _same(x, y) -> bool:
    x, y = np.asarray(x, F64), np.asarray(y, F64)
    return bool(np.all((x.view(np.uint64) == y.view(np.uint64)) | (np.isnan(x) & np.isnan(y))))


def _count_equal(x, y) -> int:
    return int(np.count_nonzero(np.asarray(x, F64).view(np.uint64) == np.asarray(y, F64).view(np.uint64)))


# -- format rules ------------------------------------------------------------------------------
def test_plan_format_rules():
    s64 = P.Sequential("fp64", fma=True, init="zero")
    assert P.plan_format(s64) == "fp64"
    assert P.plan_format(P.Pairwise()) == "fp32"
    assert P.plan_format(P.Strided(8, inner=s64, combine=P.Pairwise())) == "fp64"  # default leaves follow
    assert P.plan_format(P.SplitK(3, inner=s64, combine=P.Sequential("fp64"))) == "fp64"
    with pytest.raises(ValueError, match="one accumulation format"):
        P.plan_format(P.SplitK(3, inner=s64, combine=P.Sequential("fp32")))
    with pytest.raises(ValueError, match="one accumulation format"):
        P.plan_format(P.SplitK(2, inner=P.Chain(P.TensorCore("sm_90", "bf16"), k=16), combine=P.Sequential("fp64")))
    with pytest.raises(ValueError, match="dtype"):
        P.Sequential("fp16")
    p = P.Strided(4, inner=s64, combine=P.Pairwise())
    assert P.plan_from_json(p.to_json()) == p and eval(repr(p), vars(P)) == p
    with pytest.raises(ValueError, match="one accumulation format"):
        evaluate(P.SplitK(2, inner=s64, combine=P.Sequential()), np.ones((1, 4)))


def test_fp32_plans_are_unchanged_and_fp64_returns_float64():
    x = np.array([[1.0, 2.0**-30, 2.0**-30]])
    assert evaluate(P.Sequential("fp64"), x).dtype == F64
    assert evaluate(P.Sequential("fp64"), x)[0] == 1.0 + 2.0**-29  # exact in fp64
    assert evaluate(P.Sequential(), x.astype(np.float32))[0] == np.float32(1.0)  # lost in fp32
    with pytest.raises(ValueError):  # an fp32 plan still refuses non-representable float64 input
        evaluate(P.Sequential(), np.array([[0.1]], F64))
    # float32 operands widen exactly for an fp64 plan
    assert evaluate(P.Sequential("fp64"), x.astype(np.float32)).dtype == F64


# -- fma64 vs Fraction -------------------------------------------------------------------------
def _fma_oracle(a, b, c) -> float:
    q = Fraction(a) * Fraction(b) + Fraction(c)
    if q == 0:
        neg = (np.signbit(a) != np.signbit(b)) and (a == 0 or b == 0) and np.signbit(c) and c == 0
        return -0.0 if neg else 0.0
    try:
        return float(q)  # Python's Fraction -> float is correctly rounded (RNE)
    except OverflowError:
        return np.inf if q > 0 else -np.inf


def _check_fma64(a, b, c):
    got = fma64(a, b, c)
    want = np.array([_fma_oracle(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)])
    assert _same(got, want)
    assert _same(got, [fma64_exact(float(x), float(y), float(z)) for x, y, z in zip(a, b, c)])


def test_fma64_random_and_cancellation():
    rng = np.random.default_rng(21)
    n = 3000
    a = rng.standard_normal(n) * 2.0 ** rng.integers(-300, 300, n)
    b = rng.standard_normal(n) * 2.0 ** rng.integers(-300, 300, n)
    c = np.where(rng.random(n) < 0.5, -(a * b) * (1 + rng.integers(-3, 4, n) * 2.0**-52),
                 rng.standard_normal(n) * 2.0 ** rng.integers(-600, 600, n))
    _check_fma64(a, b, c)


def test_fma64_hard_cases():
    """fp64 midpoints perturbed by tiny products (a plain a*b + c fails these), subnormal
    products and results, the overflow boundary, signed zeros."""
    rng = np.random.default_rng(22)
    m = rng.integers(1 << 52, 1 << 53, 500).astype(object)
    e = rng.integers(-40, 40, 500)
    hi = np.array([float(Fraction(int(mi)) * Fraction(2) ** int(ei)) for mi, ei in zip(m, e)])  # fp64 numbers
    half_ulp = np.array([2.0 ** (int(ei) - 1) for ei in e])  # c + half an ulp: a midpoint
    tiny = 2.0 ** rng.integers(-200, -150, 500) * np.where(rng.random(500) < 0.5, -1, 1)
    _check_fma64(half_ulp, np.ones(500), hi)                       # exact midpoints: ties to even
    _check_fma64(half_ulp, 1 + 2.0**-52 * np.ones(500), hi)  # just above the midpoint
    _check_fma64(half_ulp + tiny * 0.0 + np.abs(tiny) * 2.0**-30, np.ones(500), hi)  # perturbed midpoints
    _check_fma64(np.full(500, TINY) * rng.integers(-9, 9, 500), rng.standard_normal(500), tiny * 2.0**-900)
    big = np.array([2.0**1023, 1.5 * 2.0**1023, 2.0**-540, 0.0, -0.0, 3.0])
    other = np.array([1.9999999999999998, 1.3333333333333333, 2.0**-540, -5.0, 5.0, -0.0])
    cs = np.array([np.finfo(F64).max, -np.finfo(F64).max, TINY, -0.0, -0.0, -0.0])
    with np.errstate(over="ignore"):
        _check_fma64(big, other, cs)


# -- fp64 CUDA-core GEMM orders: plans vs a Fraction transcription of the kernels ----------------
def _rn(q: Fraction) -> float:
    return float(q)


def _kernel_dot64(a, b, order, fused, lanes, parts) -> float:
    """One output of csrc/cuda/gemm/cuda_core_gemm.cu (f64 kernels), every step rounded to fp64
    through exact rationals: acc = rn(a*b + acc) (fused) or rn(acc + rn(a*b))."""
    K = len(a)

    def step(acc: float, k: int) -> float:
        if fused:
            return _fma_oracle(float(a[k]), float(b[k]), acc)
        p = _rn(Fraction(float(a[k])) * Fraction(float(b[k]))) if a[k] != 0 and b[k] != 0 else float(a[k]) * float(b[k])
        return acc + p if (acc == 0 and p == 0) else _rn(Fraction(acc) + Fraction(p))

    def run(ks) -> float:
        acc = 0.0
        for k in ks:
            acc = step(acc, k)
        return acc

    def add(x: float, y: float) -> float:
        return x + y if (x == 0 and y == 0) else _rn(Fraction(x) + Fraction(y))

    if order == "sequential":
        return run(range(K))
    if order == "reverse":
        return run(range(K - 1, -1, -1))
    if order == "strided":
        v = [run(range(j, K, lanes)) for j in range(lanes)]
        s = 1
        while s < lanes:
            for j in range(0, lanes - s, 2 * s):
                v[j] = add(v[j], v[j + s])
            s *= 2
        return v[0]
    chunk = -(-K // parts)
    acc = 0.0
    for p in range(parts):
        acc = add(acc, run(range(min(p * chunk, K), min((p + 1) * chunk, K))))
    return acc


def _tricky64(shape, rng) -> np.ndarray:
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-60, 60, shape)
    x[rng.random(shape) < 0.1] = -0.0
    x[rng.random(shape) < 0.05] = TINY * 7
    return x


def _plan_gemm(A, B, order, fused, lanes, parts, backend):
    plan = G.plan(order, "fp64", fused, lanes=lanes, parts=parts)
    if G.terms_reversed(order):
        A, B = A[:, ::-1], B[::-1, :]
    return gemm(plan, np.ascontiguousarray(A), np.ascontiguousarray(B), backend=backend)


@pytest.mark.parametrize("order,lanes,parts", [("sequential", 8, 4), ("reverse", 8, 4), ("strided", 4, 4),
                                               ("strided", 8, 4), ("splitk", 8, 3), ("splitk", 8, 5)])
@pytest.mark.parametrize("fused", [True, False])
def test_fp64_gemm_plans_match_fraction_transcription(order, lanes, parts, fused):
    rng = np.random.default_rng(31)
    for M, N, K in ((4, 3, 13), (3, 2, 1), (2, 3, 6)):
        A, B = _tricky64((M, K), rng), _tricky64((K, N), rng)
        if K > 2:  # cancellation: second half of k repeats the first with B negated
            h = K // 2
            A[1, h:2 * h] = A[1, :h]
            B[h:2 * h, 0] = -B[:h, 0]
        A[0] = -0.0
        B[:, 0] = np.abs(B[:, 0])
        want = np.array([[_kernel_dot64(A[m], B[:, n], order, fused, lanes, parts) for n in range(N)]
                         for m in range(M)]).reshape(M, N)
        for backend in ("numpy", "native"):
            got = _plan_gemm(A, B, order, fused, lanes, parts, backend)
            assert got.dtype == F64 and _same(got, want), (order, fused, backend, M, N, K)


def test_fp64_plans_agree_with_the_float64_emulation():
    """The old float64 emulation (gemm_cuda_core.reference) and the fp64 plans agree."""
    rng = np.random.default_rng(32)
    A, B = rng.standard_normal((20, 37)), rng.standard_normal((37, 9))
    for order in G.ORDERS:
        for fused in (True, False):
            assert _same(_plan_gemm(A, B, order, fused, 8, 3, "native"), G.reference(A, B, order, fused, lanes=8, parts=3))


def test_fp64_negative_controls_rejected():
    rng = np.random.default_rng(33)
    A, B = rng.standard_normal((40, 29)), rng.standard_normal((29, 30))
    want = np.array([[_kernel_dot64(A[m], B[:, n], "strided", True, 8, 4) for n in range(30)] for m in range(40)])
    assert _same(_plan_gemm(A, B, "strided", True, 8, 4, "native"), want)  # the right plan: N/N
    wrong_order = gemm(P.Sequential("fp64", fma=True, init="zero"), A, B)
    wrong_fused = _plan_gemm(A, B, "strided", False, 8, 4, "native")
    fp32_plan = gemm(G.plan("strided", "fp32", True, lanes=8), A.astype(np.float32), B.astype(np.float32))
    for name, got in (("order", wrong_order), ("fused", wrong_fused), ("fp32", fp32_plan.astype(F64))):
        assert _count_equal(got, want) < want.size, name


# -- numpy == native for fp64 versions of the value plans ----------------------------------------
PLANS64 = [
    P.Sequential("fp64"), P.Sequential("fp64", fma=True), P.Sequential("fp64", init="zero", fma=True),
    P.Tree(3, leaf=P.Sequential("fp64")), P.Tree(4, leaf_size=5, leaf=P.Sequential("fp64", fma=True)),
    P.Strided(4, inner=P.Sequential("fp64", fma=True), combine=P.Pairwise()),
    P.Strided(8, inner=P.Sequential("fp64", init="zero"), combine=P.WarpButterfly(8)),
    P.Remainder(4, main=P.Strided(4, P.Sequential("fp64"), P.Pairwise()), tail=P.Sequential("fp64")),
    P.SplitK(3, layout="contiguous", tile=2, inner=P.Sequential("fp64", fma=True), combine=P.Sequential("fp64")),
    P.SplitK(2, layout="interleaved", tile=3, inner=P.Pairwise(leaf=P.Sequential("fp64")), combine=P.Tree(2)),
    P.Strided(16, inner=P.Sequential("fp64", init="zero"), combine=P.BlockTree(16)),
]


@pytest.mark.parametrize("plan", PLANS64, ids=repr)
def test_fp64_numpy_equals_native(plan):
    rng = np.random.default_rng(34)
    special = np.array([0.0, -0.0, TINY, -TINY, np.finfo(F64).max, -np.finfo(F64).max, 1.0, 2.0**-1022, np.inf])
    for n in (1, 5, 16, 31):
        x = _tricky64((200, n), rng)
        y = rng.standard_normal((200, n))
        x[:20] = rng.choice(special, (20, n))
        c = rng.standard_normal(200)
        with np.errstate(all="ignore"):
            assert _same(evaluate(plan, x, backend="numpy"), evaluate(plan, x))
            assert _same(evaluate(plan, (x, y), backend="numpy"), evaluate(plan, (x, y)))
            assert _same(evaluate(plan, (x, y), c=c, backend="numpy"), evaluate(plan, (x, y), c=c))


def test_fma64_infinities():
    """A finite product that overflows in float64 still meets an infinite c exactly: c wins."""
    a = np.array([1e308, 1e308, np.inf, np.inf, 1e308])
    b = np.array([10.0, -10.0, 0.0, 2.0, 10.0])
    c = np.array([-np.inf, np.inf, 1.0, -np.inf, 1.0])
    with np.errstate(all="ignore"):
        got = fma64(a, b, c)
        native = evaluate(P.Sequential("fp64", fma=True), (np.stack([np.ones(5), a], 1), np.stack([c, b], 1)))
    assert got[0] == -np.inf and got[1] == np.inf and np.isnan(got[2]) and np.isnan(got[3]) and got[4] == np.inf
    assert _same(native, got)
