"""``exact.round_fraction`` at and beyond the largest finite value of the small formats, against
ml_dtypes' RNE conversions (the reference, independent of this package), exhaustively: every
finite value, every midpoint between neighbours, the points just past max finite (the tie with
the next, absent grid point, and beyond) and far beyond. e4m3 "fn" (ml_dtypes float8_e4m3fn, not
saturating): NaN past the 448/480 tie; e2m1, e2m3, e3m2 (no inf, no NaN): saturate to ±max. The
directed modes past max: hand-computed (RZ toward max; RU/RD: the IEEE side rules, inf -> NaN
for fn, saturation for the MX elements)."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import exact
from hspi_kernels.numerics.formats import get_format

SMALL = ("e4m3", "e5m2", "e2m1", "e2m3", "e3m2")


def _points(fmt):
    dt = np.dtype(getattr(ml_dtypes, fmt.value_dtype))
    n = 1 << fmt.total_bits
    vals = np.arange(256, dtype=np.uint8)[:n].view(dt).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals)])
    mids = (vals[:-1] + vals[1:]) / 2
    top = fmt.max_finite
    step = 2.0 ** (fmt.emax - fmt.frac_bits)  # grid spacing of the top binade
    beyond = np.array([top + step * q for q in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)] + [2 * top, 1e6, 1e30])
    pts = np.concatenate([vals, mids, beyond, -beyond])
    return dt, np.unique(pts)


@pytest.mark.parametrize("name", SMALL)
def test_rne_equals_ml_dtypes_exhaustively(name):
    fmt = get_format(name)
    dt, pts = _points(fmt)
    ref = pts.astype(dt)
    ref_bits = ref.view(np.uint8).astype(int)
    checked = 0
    for x, rb, rv in zip(pts, ref_bits, ref.astype(np.float64)):
        got = exact.round_fraction(Fraction(float(x)), fmt, "RNE", negative_zero=bool(np.signbit(x)))
        val = exact.to_fraction(got, fmt)
        if np.isnan(rv):
            assert val is None, (name, x, got)
        elif np.isinf(rv):
            assert val == ("+inf" if rv > 0 else "-inf"), (name, x, got)
        else:
            assert val == Fraction(float(rv)) and got == rb, (name, x, got, rb)
        checked += 1
    assert checked > 2 * (1 << fmt.total_bits) - 10


@pytest.mark.parametrize("name", SMALL)
def test_directed_modes_past_max(name):
    """Hand rules: RZ gives ±max; RU: +side like RNE's overflow, -side -max; RD mirrored."""
    fmt = get_format(name)
    big = Fraction(fmt.max_finite) * 4
    beyond = fmt.inf_bits if fmt.has_inf else fmt.nan_bits if fmt.has_nan else fmt.max_finite_bits
    mx, sign = fmt.max_finite_bits, fmt.sign_mask
    assert exact.round_fraction(big, fmt, "RZ") == mx and exact.round_fraction(-big, fmt, "RZ") == sign | mx
    assert exact.round_fraction(big, fmt, "RU") == beyond and exact.round_fraction(-big, fmt, "RU") == sign | mx
    assert exact.round_fraction(big, fmt, "RD") == mx and exact.round_fraction(-big, fmt, "RD") == sign | beyond
    assert exact.round_fraction(big, fmt, "RNA") == beyond
    if fmt.nan_policy == "none":  # hand values: e2m1 max 6, e2m3 7.5, e3m2 28
        assert exact.to_fraction(beyond, fmt) == {"e2m1": 6, "e2m3": Fraction(15, 2), "e3m2": 28}[name]


def test_hand_values():
    # e4m3fn: 464 is the tie 448 | 480 (480 is the NaN slot): ties to even 448; 465 -> NaN
    assert exact.to_fraction(exact.round_fraction(Fraction(464), "e4m3"), "e4m3") == 448
    assert exact.to_fraction(exact.round_fraction(Fraction(465), "e4m3"), "e4m3") is None
    # e2m1: 7 is the tie 6 | 8 (8 absent): RNE picks 8 (odd 6 = 3*2), which saturates to 6
    assert exact.to_fraction(exact.round_fraction(Fraction(7), "e2m1"), "e2m1") == 6
    assert exact.to_fraction(exact.round_fraction(Fraction(-100), "e2m1"), "e2m1") == -6


@pytest.mark.parametrize("name", SMALL)
def test_to_fraction_decodes_every_pattern_like_ml_dtypes(name):
    """Every bit pattern; e2m1/e2m3/e3m2 have no NaN, so their all-ones patterns are ±max."""
    fmt = get_format(name)
    dt = np.dtype(getattr(ml_dtypes, fmt.value_dtype))
    n = 1 << fmt.total_bits
    ref = np.arange(256, dtype=np.uint8)[:n].view(dt).astype(np.float64)
    for bits, rv in enumerate(ref):
        got = exact.to_fraction(bits, fmt)
        if np.isnan(rv):
            assert got is None, (name, bits)
        elif np.isinf(rv):
            assert got == ("+inf" if rv > 0 else "-inf"), (name, bits)
        else:
            assert got == Fraction(float(rv)), (name, bits, got, rv)
