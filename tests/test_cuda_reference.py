"""The CPU reference of the fma probe against exact rational arithmetic (fractions.Fraction)."""

from __future__ import annotations

from fractions import Fraction

import math

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import elementwise as ew
from hspi_kernels.numerics.exact import round_fraction


def _bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def _round_f32(q: Fraction, negative_zero: bool = False) -> np.float32:
    return np.array(round_fraction(q, "fp32", "RNE", negative_zero), dtype=np.uint32).view(np.float32)[()]


def _exact_fma(a: float, b: float, c: float) -> np.float32:
    """One element through fractions.Fraction: the independent oracle."""
    a, b, c = (float(np.float32(x)) for x in (a, b, c))
    if not all(math.isfinite(x) for x in (a, b, c)):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))  # inf/NaN rules only
    product_negative = math.copysign(1.0, a) * math.copysign(1.0, b) < 0
    # an exact zero sum is -0 only when both addends are -0 (RNE)
    return _round_f32(Fraction(a) * Fraction(b) + Fraction(c),
                      negative_zero=product_negative and math.copysign(1.0, c) < 0)


def _exact(a, b, c) -> np.ndarray:
    return np.array([_exact_fma(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)


def _random_f32(rng, n, lo=-30, hi=30) -> np.ndarray:
    sig = rng.uniform(1.0, 2.0, n) * rng.choice([-1.0, 1.0], n)
    return (sig * 2.0 ** rng.integers(lo, hi, n)).astype(np.float32)


def _hard_cases(rng, n) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p + c within a tiny fraction of an fp32 midpoint, so a float64 rounding lands on it.

    a_sig * b_sig = 2^N + r with small r (found by search), scaled so the product's leading bit
    sits half an fp32 ulp of c; exact ties (r == 0) are included.
    """
    a_out, b_out, c_out = [], [], []
    while len(a_out) < n:
        a_sig = int(rng.integers(2**23, 2**24))
        for b_sig in ((2**47 + a_sig - 1) // a_sig, 2**47 // a_sig):  # products just above / below 2^47
            if not 2**23 <= b_sig < 2**24:
                continue
            r = a_sig * b_sig - 2**47
            if abs(r) >= 2**18:
                continue
            c_sig = int(rng.integers(2**23, 2**24))
            q = int(rng.integers(-100, 60))  # fp32 ulp of c is 2^q
            # product = 2^(q-1) * (1 + r / 2^47)
            ea, eb = -23, -47 + 23 + q - 1
            a = np.float32(a_sig * 2.0**ea)
            b = np.float32(b_sig * 2.0**eb)
            c = np.float32(c_sig * 2.0**q)
            sa, sc = rng.choice([-1, 1], 2)
            a_out.append(sa * a)
            b_out.append(b)
            c_out.append(sc * c)
    # exact ties: powers of two for the product
    for q in (-20, 0, 7):
        a_out.append(np.float32(1.0))
        b_out.append(np.float32(2.0 ** (q - 1)))
        c_out.append(np.float32((2**23 + 1) * 2.0**q))
    return (np.array(a_out, np.float32), np.array(b_out, np.float32), np.array(c_out, np.float32))


def test_hard_cases_defeat_naive_double_rounding():
    rng = np.random.default_rng(1)
    a, b, c = _hard_cases(rng, 2000)
    assert np.all(np.isfinite(a * b.astype(np.float64)))
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    exact = _exact(a, b, c)
    wrong = int(np.count_nonzero(_bits(naive) != _bits(exact)))
    assert wrong > 50, f"hard cases too easy: naive float64 rounding wrong on only {wrong}"
    got = ew.reference(a, b, c, fused=True)
    assert np.array_equal(_bits(got), _bits(exact)), int(np.count_nonzero(_bits(got) != _bits(exact)))


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_fma_random(seed):
    rng = np.random.default_rng(seed)
    n = 4000
    a, b, c = _random_f32(rng, n), _random_f32(rng, n), _random_f32(rng, n, -60, 60)
    assert np.array_equal(_bits(ew.reference(a, b, c, True)), _bits(_exact(a, b, c)))


def test_reference_fma_subnormal_and_overflow():
    rng = np.random.default_rng(5)
    n = 3000
    a = _random_f32(rng, n, -80, -60)
    b = _random_f32(rng, n, -80, -60)
    c = (rng.integers(-(2**20), 2**20, n) * 2.0**-149).astype(np.float32)  # subnormal c
    big_a = _random_f32(rng, 500, 60, 66)
    big_b = _random_f32(rng, 500, 60, 66)
    big_c = _random_f32(rng, 500, 120, 128)
    a, b, c = np.concatenate([a, big_a]), np.concatenate([b, big_b]), np.concatenate([c, big_c])
    ref = ew.reference(a, b, c, True)
    assert np.count_nonzero(np.abs(ref) < 2.0**-126) > 100  # subnormal results exercised
    assert np.count_nonzero(np.isinf(ref)) > 10  # overflow exercised
    assert np.array_equal(_bits(ref), _bits(_exact(a, b, c)))


def test_reference_fma_midpoint_at_overflow_and_signed_zero():
    fmax = np.finfo(np.float32).max
    half_ulp = np.float32(2.0**103)
    cases = [
        (fmax, 1.0, half_ulp),  # exact tie at the overflow threshold -> inf (RNE)
        (np.float32(2.0**103 * (1 + 2.0**-23)), np.float32(1 - 2.0**-24), fmax),  # just above tie
        (np.float32(2.0**103 * (1 + 2.0**-23)), np.float32(1 - 2.0**-23), fmax),  # just below
        (1.0, -0.0, -0.0), (-1.0, 0.0, -0.0), (1.0, 0.0, -0.0), (1.0, 1.0, -1.0), (-1.0, 1.0, 1.0),
        (2.0**-75, 2.0**-75, 0.0), (2.0**-75, 3 * 2.0**-75, 0.0),  # below / at the subnormal midpoint
    ]
    a, b, c = (np.array(col, dtype=np.float32) for col in zip(*cases))
    assert np.array_equal(_bits(ew.reference(a, b, c, True)), _bits(_exact(a, b, c)))


def test_reference_special_values_and_canonical_nan():
    inf, nan = np.float32(np.inf), np.float32(np.nan)
    a = np.array([inf, inf, 0.0, 1.0, nan, -nan, 1.0], np.float32)
    b = np.array([0.0, 1.0, inf, 1.0, 1.0, 1.0, 1.0], np.float32)
    c = np.array([1.0, -inf, 1.0, nan, 1.0, 1.0, inf], np.float32)
    for fused in (True, False):
        ref = ew.reference(a, b, c, fused)
        bits = _bits(ref)
        assert all(bits[:6] == 0x7FFFFFFF), [hex(x) for x in bits]
        assert ref[6] == np.inf


def test_reference_mul_add_two_roundings():
    rng = np.random.default_rng(3)
    a, b, c = _random_f32(rng, 2000), _random_f32(rng, 2000), _random_f32(rng, 2000)
    ref = ew.reference(a, b, c, fused=False)
    exact = np.array([_round_f32(Fraction(float(_round_f32(Fraction(float(x)) * Fraction(float(y)))))
                                               + Fraction(float(z)))
                      for x, y, z in zip(a, b, c)], np.float32)
    assert np.array_equal(_bits(ref), _bits(exact))
    assert np.count_nonzero(_bits(ref) != _bits(ew.reference(a, b, c, fused=True))) > 0


def test_round_fraction_to_f32():
    assert _round_f32(Fraction(1) + Fraction(1, 2**24)) == np.float32(1.0)  # tie to even
    assert _round_f32(Fraction(1) + Fraction(3, 2**24)) == np.float32(1 + 2.0**-22)
    assert _round_f32(Fraction(1, 2**150)) == 0.0  # tie between 0 and 2^-149 -> 0
    assert _round_f32(Fraction(3, 2**150)) == np.float32(2.0**-148)
    assert _round_f32(Fraction(2**128)) == np.inf


def test_plan_describes_operation():
    p1, p0 = ew.plan(True), ew.plan(False)
    assert p1 != p0
    if isinstance(p1, dict):
        assert p1["fma"] is True and p0["fma"] is False and p1["acc"] == "fp32"
    else:
        assert "fma" in repr(p1).lower()


def test_wrapper_validates_without_gpu():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="torch CUDA tensor or a CuPy array"):
        ew.fma(a, a, a)


def test_wrapper_rejects_cpu_torch_tensor():
    torch = pytest.importorskip("torch")
    a = torch.zeros(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="expected a CUDA tensor"):
        ew.fma(a, a, a)
