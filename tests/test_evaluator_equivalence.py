"""The numpy and C++ evaluators agree bit for bit on every plan kind, on random and adversarial
inputs; the C++ tensor-core chain reproduces the published hardware vectors; the numpy-path fma
is the correctly rounded fp32 fma (checked against Fraction arithmetic)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate, fma32, gemm
from hspi_kernels.numerics.exact import round_fraction
from hspi_kernels.numerics.tensor_core import PRESETS

DATA = Path(__file__).parent / "data" / "tensor_core"
F32 = np.float32
MAXF = float(np.finfo(F32).max)
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0**-149, -(2.0**-149), 2.0**-126, 1.5 * 2.0**-130, MAXF, -MAXF,
           2.0**127, -(2.0**127), 1.0 + 2.0**-23, 1.0 - 2.0**-24, 3.0, np.inf, -np.inf, np.nan]

PLANS = [
    P.Sequential(), P.Sequential(fma=True), P.Sequential(init="zero", fma=True), P.Pairwise(), P.Tree(3),
    P.Tree(4, leaf_size=5, leaf=P.Sequential(fma=True)),
    P.Strided(4, inner=P.Sequential(fma=True), combine=P.Pairwise()),
    P.Strided(8, inner=P.Sequential(init="zero"), combine=P.WarpButterfly(8)),
    P.Remainder(4, main=P.Strided(4, P.Sequential(), P.Pairwise()), tail=P.Sequential()),
    P.SplitK(3, layout="contiguous", tile=2, inner=P.Sequential(fma=True), combine=P.Sequential()),
    P.SplitK(2, layout="interleaved", tile=3, inner=P.Pairwise(), combine=P.Tree(2)),
    P.BlockTree(32), P.WarpButterfly(32), P.numpy_sum_plan(),
]


def _bits(x):
    return np.asarray(x, F32).view(np.uint32)


def _same(x, y):
    """Bitwise equality, any NaN equal to any NaN (payloads are not part of the model)."""
    x, y = np.asarray(x, F32), np.asarray(y, F32)
    return bool(np.all((_bits(x) == _bits(y)) | (np.isnan(x) & np.isnan(y))))


def _adversarial(draw_values, shape):
    return np.array(draw_values, dtype=F32).reshape(shape)


floats32 = st.one_of(st.sampled_from(SPECIAL), st.floats(width=32, allow_nan=False, allow_infinity=False),
                     st.floats(-4, 4, width=32))


@pytest.mark.parametrize("plan", PLANS, ids=repr)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 32), batch=st.integers(1, 3))
def test_numpy_equals_native_adversarial(plan, data, n, batch):
    vals = data.draw(st.lists(floats32, min_size=3 * batch * n, max_size=3 * batch * n))
    a = _adversarial(vals[: batch * n], (batch, n))
    b = _adversarial(vals[batch * n : 2 * batch * n], (batch, n))
    c = np.array(vals[2 * batch * n : 2 * batch * n + batch], F32)
    with np.errstate(all="ignore"):
        for operands, kw in ((a, {}), ((a, b), {}), ((a, b), {"c": c})):
            got = [evaluate(plan, operands, backend=be, **kw) for be in ("numpy", "native")]
            assert _same(*got), (plan, operands, kw)


@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_numpy_equals_native_random(plan):
    rng = np.random.default_rng(0)
    for n in (1, 5, 16, 31, 32):
        x = (rng.standard_normal((300, n)) * np.exp2(rng.integers(-30, 30, (300, n)))).astype(F32)
        y = rng.standard_normal((300, n)).astype(F32)
        assert _same(evaluate(plan, x, backend="numpy"), evaluate(plan, x))
        assert _same(evaluate(plan, (x, y), backend="numpy"), evaluate(plan, (x, y)))


def _in_format(rng, fmt, shape):
    dtype = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "tf32": F32, "e4m3": ml_dtypes.float8_e4m3fn,
             "e5m2": ml_dtypes.float8_e5m2}[fmt]
    scale = np.exp2(rng.integers(-6, 6, shape))
    x = (rng.standard_normal(shape) * scale).astype(dtype).astype(F32)
    if fmt == "tf32":
        x = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(F32)
    return np.where(rng.random(shape) < 0.05, F32(0), x).astype(F32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_chain_every_preset_numpy_equals_native(name):
    model = PRESETS[name]
    rng = np.random.default_rng(len(name))
    K = 4 * model.G
    a, b = _in_format(rng, model.in_format, (200, K)), _in_format(rng, model.in_format, (200, K))
    c = (rng.standard_normal(200) * 4).astype(F32)
    block = P.TensorCore(model.arch, model.in_format, model.out_format, model.path)
    for plan in (P.Chain(block, k=model.G), P.SplitK(2, inner=P.Chain(block, k=model.G), combine=P.Sequential())):
        for kw in ({}, {"c": c}):
            assert _same(evaluate(plan, (a, b), backend="numpy", **kw), evaluate(plan, (a, b), **kw)), (name, plan)


def _adversarial_in_format(rng, fmt, shape):
    """Operands that exercise the sm_90 rules, one regime per row (a = the first half of the
    columns, b the second): all subnormal, tiny (bf16/tf32: products around the e_max floor
    -133), wide normals, or subnormal a times b half subnormal, half small normal; zeros of
    both signs throughout."""
    sub_lo, sub_hi, top = {"fp16": (-24, -15, 15), "bf16": (-133, -127, 60), "tf32": (-136, -127, 60),
                           "e4m3": (-9, -7, 8), "e5m2": (-16, -15, 15)}[fmt]
    tiny_lo, tiny_hi = (sub_lo, sub_hi) if fmt in ("fp16", "e4m3", "e5m2") else (-75, -66)
    regime = rng.integers(0, 4, (shape[0], 1))
    # regime 3: every a subnormal, b half subnormal (sub*sub products are what gets truncated)
    half = (np.arange(shape[1]) < shape[1] // 2) | (rng.random(shape) < 0.5)
    e = np.select([regime == 0, regime == 1, (regime == 3) & half, regime == 3],
                  [rng.integers(sub_lo, sub_hi + 1, shape), rng.integers(tiny_lo, tiny_hi + 1, shape),
                   rng.integers(sub_lo, sub_hi + 1, shape), rng.integers(-3, 2, shape)],
                  rng.integers(-8, top // 2, shape))
    x = (1.0 + rng.random(shape)) * np.exp2(e.astype(np.float64)) * np.where(rng.random(shape) < 0.5, -1, 1)
    dtype = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "e4m3": ml_dtypes.float8_e4m3fn,
             "e5m2": ml_dtypes.float8_e5m2}.get(fmt)
    if dtype is None:
        x = x.astype(F32)
    else:
        big = float(ml_dtypes.finfo(dtype).max)
        x = np.clip(x, -big, big).astype(dtype).astype(F32)
    if fmt == "tf32":
        x = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(F32)
    zero = rng.random(shape)
    return np.where(zero < 0.04, F32(0), np.where(zero < 0.08, F32(-0.0), x)).astype(F32)


SM90_RULES = [dict(subnormal_exponent=se, zero_sign=zs, emax_floor=fl)
              for se in ("actual", "emin") for zs in ("ieee", "positive") for fl in (None, -133)]


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if n.startswith("sm_90.")))
def test_sm90_rules_numpy_equals_native(name):
    """Subnormal operands at emin, +0 zeros and the e_max floor (each on and off, on the sm_90
    presets): numpy tensor_core.chain and the C++ chain agree bit for bit on inputs that use
    them; c spans fp32 subnormals, +-0, and values 2^40 below the products (64-bit c shift)."""
    import dataclasses

    from hspi_kernels.numerics import tensor_core
    from hspi_kernels.numerics.evaluate import _run_native

    preset = PRESETS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    n, K = 400, 2 * preset.G
    ab = _adversarial_in_format(rng, preset.in_format, (n, 2 * K))  # a and b share each row's regime
    a, b = np.ascontiguousarray(ab[:, :K]), np.ascontiguousarray(ab[:, K:])
    ref = np.sum(a.astype(np.float64) * b, axis=1)
    kind = rng.integers(0, 6, n)
    c = np.select([kind == 0, kind == 1, kind == 2, kind == 3, kind == 4],
                  [rng.integers(1, 1 << 20, n) * 2.0**-149, np.zeros(n), -np.zeros(n), ref * 2.0**-40, -ref],
                  (rng.standard_normal(n) * np.exp2(rng.integers(-140, 20, n))))
    c = c.astype(F32)
    if preset.out_format == "fp16":
        c = np.clip(c, -60000, 60000).astype(np.float16).astype(F32)
    base = P.Chain(P.TensorCore("sm_70", "fp16", "fp32"), k=4)
    for rules in SM90_RULES:
        model = dataclasses.replace(preset, **rules)
        prog = dataclasses.replace(P.lower(base, K, True, True), model=model)
        expected = tensor_core.chain(model, a, b, c)
        got = _run_native(prog, a, b, c, False)
        assert _same(expected, got), (name, rules, int(np.sum(_bits(expected) != _bits(got))))
        if rules["zero_sign"] == "positive":
            assert not np.any((got == 0) & np.signbit(got))


def _vectors(gpu, fmt):
    d = DATA / gpu / fmt
    read_hex = lambda p: np.array([[int(t, 16) for t in line.split()] for line in open(p)], np.uint32).view(F32)
    read_bin = lambda p: np.array([int(line.strip(), 2) for line in open(p)], np.uint32)
    a, b = read_hex(next(d.glob("a_*.txt"))), read_hex(next(d.glob("b_*.txt")))
    c = read_bin(next(d.glob("c_*.txt"))).view(F32)
    return a, b, c, {p.stem.split("_")[-1]: read_bin(p) for p in d.glob("d_*.txt")}


CASES = [("V100", "sm_70", "fp16", "fp32"), ("V100", "sm_70", "fp16", "fp16"), ("A100", "sm_80", "fp16", "fp32"),
         ("A100", "sm_80", "fp16", "fp16"), ("A100", "sm_80", "bf16", "fp32"), ("A100", "sm_80", "tf32", "fp32"),
         ("H100", "sm_90", "fp16", "fp32"), ("H100", "sm_90", "bf16", "fp32")]


@pytest.mark.parametrize("gpu,arch,fmt,out", CASES)
def test_native_chain_reproduces_hardware_vectors(gpu, arch, fmt, out):
    a, b, c, outs = _vectors(gpu, fmt)
    plan = P.Chain(P.TensorCore(arch, fmt, out), k=a.shape[1])
    got = _bits(evaluate(plan, (a, b), c=c))
    assert (int(np.sum(got == outs[out])), len(got)) == (5000, 5000)


def test_gemm_numpy_equals_native():
    rng = np.random.default_rng(5)
    A = _in_format(rng, "bf16", (6, 64))
    B = _in_format(rng, "bf16", (64, 5))
    C = rng.standard_normal((6, 5)).astype(F32)
    tc = P.TensorCore("sm_90", "bf16", "fp32")
    for plan in (P.Chain(tc, k=16), P.SplitK(4, "interleaved", P.Chain(tc, k=16), P.Pairwise(), tile=16),
                 P.Sequential(fma=True)):
        assert _same(gemm(plan, A, B, C, backend="numpy"), gemm(plan, A, B, C))
        assert _same(gemm(plan, A, B), evaluate(plan, (np.repeat(A, 5, 0), np.tile(B.T, (6, 1)))).reshape(6, 5))


# -- exact fma ---------------------------------------------------------------------------------
def _fma_reference(a, b, c) -> int:
    q = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if q == 0:  # IEEE: exact zero sums are +0 unless both addends are -0
        product_negative = (np.signbit(a) != np.signbit(b)) if (a == 0 or b == 0) else False
        both_negative = (a == 0 or b == 0) and product_negative and np.signbit(c) and c == 0
        return 0x80000000 if both_negative else 0
    return round_fraction(q, "fp32", "RNE")


def _check_fma(a, b, c):
    got = _bits(fma32(a, b, c))
    for i in range(len(a)):
        assert got[i] == _fma_reference(a[i], b[i], c[i]), (a[i], b[i], c[i])


def test_fma32_random():
    rng = np.random.default_rng(11)
    a = (rng.standard_normal(4000) * np.exp2(rng.integers(-60, 60, 4000))).astype(F32)
    b = (rng.standard_normal(4000) * np.exp2(rng.integers(-60, 60, 4000))).astype(F32)
    c = np.where(rng.random(4000) < 0.5, -(a * b), rng.standard_normal(4000) * np.exp2(rng.integers(-120, 120, 4000))).astype(F32)
    _check_fma(a, b, c)


def test_fma32_hard_cases():
    """Exact fp32 midpoints perturbed by tiny products (double rounding through float64 fails
    these), subnormal results, overflow boundary, cancellation."""
    rng = np.random.default_rng(12)
    m = rng.integers(1 << 23, 1 << 24, 2000)
    mid = (m.astype(np.float64) + 0.5) * 2.0 ** rng.integers(-20, 20, 2000)  # fp32 midpoints
    hi = mid.astype(F32)  # rounds to a neighbour; c = that, a*b = mid - c + tiny
    tiny = np.exp2(rng.integers(-80, -60, 2000)).astype(F32)
    sign = np.where(rng.random(2000) < 0.5, -1, 1).astype(F32)
    # a*b = (mid - hi) + tiny*sign requires an exact fp32 product: use a = mid - hi (exact, 1 bit), b = 1,
    # then a second case with the tiny perturbation in the product and the midpoint in c.
    a1 = (mid - hi.astype(np.float64)).astype(F32)
    _check_fma(a1, np.ones(2000, F32), hi)
    a2 = ((mid - hi.astype(np.float64)) + tiny.astype(np.float64) * sign).astype(F32)
    _check_fma(a2, np.ones(2000, F32), hi)
    big = np.array([2.0**127, 1.5 * 2.0**127, 2.0**-75, 1.0 + 2.0**-12, 2.0**-75, 2.0**64], F32)
    other = np.array([1.9999999, 1.3333334, 2.0**-75, 1.0 + 2.0**-12, -(2.0**-75), 2.0**63], F32)
    cs = np.array([np.finfo(F32).max, -np.finfo(F32).max, 2.0**-149, -1.0, 0.0, -np.finfo(F32).max], F32)
    with np.errstate(over="ignore"):
        _check_fma(big, other, cs)


def test_fma32_matches_native_fmaf():
    rng = np.random.default_rng(13)
    a = (rng.standard_normal((500, 8)) * np.exp2(rng.integers(-40, 40, (500, 8)))).astype(F32)
    b = rng.standard_normal((500, 8)).astype(F32)
    plan = P.Sequential(fma=True)
    assert _same(evaluate(plan, (a, b), backend="numpy"), evaluate(plan, (a, b)))
