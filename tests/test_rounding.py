"""Rounding: every mode against three independent oracles.

1. A *grid oracle*: the exhaustively decoded, sorted values of the target format; the two
   neighbours of x are found by binary search and the mode picks one (ties by the parity of
   the pattern; beyond max finite sits a virtual next value max + ulp, which stands for the
   overflow result). Exhaustive over the interesting float32/float64 inputs.
2. ml_dtypes' casts (RNE, the only mode they implement).
3. The Fraction reference of ``exact.py`` on random samples, and for ``round_scaled`` on wide
   integers (hypothesis).
Negative controls show that the comparisons are sharp enough to reject a wrong rounding.
"""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hspi_kernels.numerics import exact
from hspi_kernels.numerics.formats import BF16, E4M3, E5M2, FP16, FP32, FP64, TF32, decode, get_format
from hspi_kernels.numerics.rounding import MODES, round_scaled, round_to_format

SMALL_FORMATS = [FP16, BF16, E4M3, E5M2]
ML_DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


def positive_grid(fmt):
    """Sorted non-negative finite values of fmt and their patterns (the sign bit clear)."""
    patterns = np.arange(1 << (fmt.total_bits - 1), dtype=np.int64)
    values = decode(patterns, fmt)
    finite = np.isfinite(values)
    return values[finite], patterns[finite]


@np.errstate(invalid="ignore")  # random inputs include signalling NaNs
def grid_oracle(x, fmt, mode):
    """Expected patterns for float values x, from neighbour search on the decoded grid."""
    x = np.asarray(x).astype(np.float64)
    values, patterns = positive_grid(fmt)
    ulp_at_max = values[-1] - values[-2]
    values = np.append(values, values[-1] + ulp_at_max)  # virtual next value = overflow
    patterns = np.append(patterns, patterns[-1] + 1)
    overflow_pattern = fmt.inf_bits if fmt.has_inf else fmt.nan_bits

    size = np.abs(x)
    negative = np.signbit(x)
    below = np.clip(np.searchsorted(values, size, side="right") - 1, 0, len(values) - 1)
    # At or beyond the virtual value only a rounding toward zero stays finite.
    beyond_virtual = size >= values[-1]
    exact_hit = (values[below] == size) & ~beyond_virtual
    above = np.minimum(below + 1, len(values) - 1)
    above = np.where(exact_hit, below, above)

    midpoint = (values[below] + values[above]) / 2
    nearest_up = (size > midpoint) | ((size == midpoint) & ~exact_hit)
    tie = (size == midpoint) & ~exact_hit
    odd_below = (patterns[below] & 1) == 1
    choose_up = {
        "RZ": np.zeros_like(negative),
        "RU": ~negative & ~exact_hit,
        "RD": negative & ~exact_hit,
        "RNA": nearest_up | beyond_virtual,
        "RNE": np.where(tie, odd_below, nearest_up) | beyond_virtual,
    }[mode]
    index = np.where(choose_up, above, below)
    index = np.where(beyond_virtual & choose_up, len(values) - 1, index)
    index = np.where(beyond_virtual & ~choose_up, len(values) - 2, index)
    magnitude = patterns[index]
    magnitude = np.where(index == len(values) - 1, overflow_pattern, magnitude)
    magnitude = np.where(np.isinf(x), overflow_pattern, magnitude)
    magnitude = np.where(np.isnan(x), fmt.nan_bits, magnitude)
    return (magnitude | np.where(negative, fmt.sign_mask, 0)).astype(fmt.bits_dtype)


def same_patterns(ours, expected, fmt):
    """Elementwise equality of patterns; NaNs compare by class (any NaN equals any NaN)."""
    nan_ours, nan_expected = np.isnan(decode(ours, fmt)), np.isnan(decode(expected, fmt))
    return np.where(nan_ours | nan_expected, nan_ours & nan_expected, ours == expected)


@np.errstate(over="ignore", invalid="ignore")
def probe_inputs(fmt, dtype=np.float32):
    """Values, ties (midpoints), points one input-ulp either side of the ties, the overflow
    boundary, subnormals, zeros, infinities, NaN, and random bit patterns."""
    values, _ = positive_grid(fmt)
    values = np.append(values, values[-1] + (values[-1] - values[-2]))
    midpoints = ((values[:-1] + values[1:]) / 2).astype(dtype)
    assert np.all((midpoints.astype(np.float64) * 2) == values[:-1] + values[1:]), "ties must be exact in the input type"
    nudged = np.concatenate([np.nextafter(midpoints, dtype(np.inf)), np.nextafter(midpoints, dtype(0))])
    specials = np.array([0.0, np.inf, np.nan, 1e30, 2.0**-140, 3 * 2.0**-149, fmt.max_finite * 4], dtype=dtype)
    rng = np.random.default_rng(fmt.total_bits)
    if dtype == np.float32:
        random = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        random = rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64).view(np.float64)
    # Random values inside the format's range, where the rounding decisions happen.
    in_range = (rng.uniform(-1, 1, 50_000) * fmt.max_finite * 1.01 * 2.0 ** -rng.integers(0, 40, 50_000)).astype(dtype)
    positive = np.concatenate([values.astype(dtype), midpoints, nudged, specials])
    return np.concatenate([positive, -positive, random, in_range])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["from_f32", "from_f64"])
def test_round_to_format_matches_grid_oracle(fmt, mode, dtype):
    x = probe_inputs(fmt, dtype)
    ours = round_to_format(x, fmt, mode)
    assert ours.dtype == fmt.bits_dtype
    expected = grid_oracle(x, fmt, mode)
    bad = ~same_patterns(ours, expected, fmt)
    assert not bad.any(), f"{bad.sum()} mismatches, e.g. x={x[bad][:5]} ours={ours[bad][:5]} expected={expected[bad][:5]}"


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["from_f32", "from_f64"])
def test_rne_matches_ml_dtypes(fmt, dtype):
    x = probe_inputs(fmt, dtype)
    if fmt.name != "fp16" and dtype == np.float64:
        # ml_dtypes casts float64 -> bf16/fp8 through float32 (double rounding: e.g. 464 + 1e-8
        # becomes 464, then 448 in e4m3, where the correct result is NaN): compare only where
        # float32 holds x exactly. numpy's float64 -> float16 cast is direct.
        with np.errstate(over="ignore", invalid="ignore"):
            x = x[x.astype(np.float32).astype(np.float64) == x]
    with np.errstate(over="ignore", invalid="ignore"):
        theirs = x.astype(ML_DTYPES[fmt.name]).view(fmt.bits_dtype)
    assert same_patterns(round_to_format(x, fmt, "RNE"), theirs, fmt).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", SMALL_FORMATS + [TF32], ids=lambda f: f.name)
def test_round_to_format_matches_fraction_reference(fmt, mode):
    rng = np.random.default_rng(7)
    pool = probe_inputs(fmt if fmt is not TF32 else BF16)
    x = rng.choice(pool[np.isfinite(pool)], 1500, replace=False)
    ours = round_to_format(x, fmt, mode)
    for value, pattern in zip(x.tolist(), ours.tolist()):
        expected = exact.round_fraction(Fraction(value), fmt, mode, negative_zero=np.signbit(value))
        assert same_patterns(np.array([pattern]), np.array([expected]), fmt)[0], (value, pattern, expected)


def test_fp32_target_matches_numpy_cast():
    rng = np.random.default_rng(3)
    x = rng.integers(-(2**63), 2**63 - 1, 200_000, dtype=np.int64).view(np.float64)
    x = np.concatenate([x, (rng.standard_normal(200_000) * 2.0 ** rng.integers(-160, 130, 200_000))])
    with np.errstate(over="ignore", invalid="ignore"):
        theirs = x.astype(np.float32).view(np.uint32)
    assert same_patterns(round_to_format(x, FP32, "RNE"), theirs, FP32).all()


def test_no_double_rounding_through_float32():
    """float64 just above an fp16 tie: direct rounding goes up, float64->float32->fp16 would
    land on the tie and go to even (down)."""
    tie = 1.0 + 2.0**-11  # between 1 and 1 + 2^-10
    x = np.array([tie + 2.0**-40])
    assert decode(round_to_format(x, FP16, "RNE"), FP16)[0] == 1.0 + 2.0**-10
    twice = round_to_format(x.astype(np.float32), FP16, "RNE")
    assert decode(twice, FP16)[0] == 1.0  # what double rounding would give: the test can tell


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_negative_control_rz_is_not_rne_on_ties(fmt):
    """The same comparison rejects RZ passed off as RNE on a large fraction of the ties."""
    values, _ = positive_grid(fmt)
    ties = ((values[:-1] + values[1:]) / 2).astype(np.float32)
    ties = np.concatenate([ties, -ties])
    wrong = round_to_format(ties, fmt, "RZ")
    differs = ~same_patterns(wrong, grid_oracle(ties, fmt, "RNE"), fmt)
    assert differs.mean() > 0.45  # half the ties lie above an odd neighbour
    wrong_rna = round_to_format(ties, fmt, "RNA")  # ties-away is also caught
    assert (~same_patterns(wrong_rna, grid_oracle(ties, fmt, "RNE"), fmt)).mean() > 0.45


def test_overflow_rules():
    big = np.array([1e6, -1e6], dtype=np.float32)
    expect = {  # (positive, negative) results as values
        "RNE": (np.inf, -np.inf), "RNA": (np.inf, -np.inf), "RZ": (65504.0, -65504.0),
        "RU": (np.inf, -65504.0), "RD": (65504.0, -np.inf),
    }
    for mode, values in expect.items():
        np.testing.assert_array_equal(decode(round_to_format(big, FP16, mode), FP16), values)
    # e4m3 has no inf: NaN where IEEE gives inf, 448 where IEEE gives max finite.
    e4m3 = {mode: decode(round_to_format(big, E4M3, mode), E4M3) for mode in MODES}
    assert np.isnan(e4m3["RNE"]).all() and np.isnan(e4m3["RNA"]).all()
    np.testing.assert_array_equal(e4m3["RZ"], [448.0, -448.0])
    assert e4m3["RU"][0] != e4m3["RU"][0] and e4m3["RU"][1] == -448.0
    assert decode(round_to_format(np.float32([464.0, 464.5]), E4M3, "RNE"), E4M3)[0] == 448.0


# -- round_scaled on wide integers ------------------------------------------------------------
FORMATS_FOR_SCALED = [FP16, BF16, E4M3, E5M2, TF32, FP32, FP64, get_format("e8m13")]


@settings(max_examples=400, deadline=None)
@given(
    sign=st.integers(0, 1),
    mag=st.one_of(st.integers(0, 2**70), st.integers(0, 2**300)),
    exp=st.integers(-1400, 400),
    fmt=st.sampled_from(FORMATS_FOR_SCALED),
    mode=st.sampled_from(MODES),
)
def test_round_scaled_matches_fraction_reference(sign, mag, exp, fmt, mode):
    ours = round_scaled(np.array([sign]), np.array([mag], dtype=object), np.array([exp]), fmt, mode)
    value = Fraction(mag) * Fraction(2) ** exp * (-1 if sign else 1)
    assert int(ours[0]) == exact.round_fraction(value, fmt, mode, negative_zero=bool(sign))


def test_round_scaled_fast_and_wide_paths_agree():
    rng = np.random.default_rng(11)
    n = 20_000
    mag = rng.integers(0, 2**62, n, dtype=np.int64) >> rng.integers(0, 62, n)
    exp = rng.integers(-200, 100, n)
    sign = rng.integers(0, 2, n)
    for fmt in (FP16, E4M3, FP32):
        for mode in MODES:
            fast = round_scaled(sign, mag, exp, fmt, mode)
            wide = round_scaled(sign, (mag.astype(object) << 70), exp - 70, fmt, mode)
            np.testing.assert_array_equal(fast, wide)


def test_rejects_bad_mode_and_negative_mag():
    with pytest.raises(ValueError, match="unknown rounding mode 'RN'"):
        round_to_format(np.float32([1.0]), FP16, "RN")
    with pytest.raises(ValueError, match="non-negative"):
        round_scaled(0, np.array([-3]), 0, FP16, "RNE")


@pytest.mark.parametrize("fmt", ["fp32", "tf32", "bf16", "e8m13"])
@pytest.mark.parametrize("mode", ["RNE", "RZ"])
def test_fp32_bit_path_equals_general_path(fmt, mode):
    """float32 input to a format that is fp32 with a shorter fraction takes the bit path
    (``Format.fp32_low_bits``); float64 input of the same values the general one. Every pattern
    class: normals, subnormals, zeros, inf, NaN (either sign), halfway ties, max-finite carries."""
    fmt = get_format(fmt)
    assert fmt.fp32_low_bits is not None
    rng = np.random.default_rng(9)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    drop = fmt.fp32_low_bits
    if drop:
        ties = bits[:20_000] & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
        bits[:20_000] = ties | np.uint32(1 << (drop - 1))  # exactly halfway
    bits[20_000:20_010] = [0, 0x80000000, 1, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
                           0x7FC00001, 0xFFA00000]
    x = bits.view(np.float32)
    fast = round_to_format(x, fmt, mode)
    general = round_to_format(x.astype(np.float64), fmt, mode)
    assert fast.dtype == general.dtype and np.array_equal(fast, general)
    # decode's bit path against the Fraction reference, NaN canonical with its sign
    sample = np.concatenate([fast[19_990:20_010], fast[::997]])
    want = [exact.to_fraction(int(b), fmt) for b in sample]
    got = decode(sample, fmt)
    for g, w, b in zip(got, want, sample):
        if w is None:
            assert np.isnan(g) and np.signbit(g) == bool(int(b) >> (fmt.total_bits - 1))
            assert np.float64(g).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF) == 0x7FF8000000000000
        elif isinstance(w, str):
            assert g == (np.inf if w == "+inf" else -np.inf)
        else:
            assert Fraction(float(g)) == w
    if drop and mode == "RNE":  # negative control: the ties are where RNE and RZ part
        assert not np.array_equal(fast[:20_000], round_to_format(x[:20_000], fmt, "RZ"))
