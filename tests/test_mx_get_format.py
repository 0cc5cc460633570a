"""formats.get_format knows the OCP MX formats (issue #19): the signed element formats e2m1,
e2m3, e3m2 are Formats (nan_policy "none", built from mx_formats' definitions) whose decode and
round_to_format equal ml_dtypes bit for bit (every pattern; a large float32 sample with ties,
subnormals, overflow and ±inf) and mx_formats' own round_to_mx in every mode; the unsigned scale
formats ue8m0 / ue4m3 are named with a ValueError that points at mx_formats, and are checked
against ml_dtypes there."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import formats as F
from hspi_kernels.numerics import mx_formats as MX
from hspi_kernels.numerics.rounding import MODES, encode, is_representable, round_to_format

ELEMENTS = {"e2m1": ml_dtypes.float4_e2m1fn, "e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn}
EXPECTED = {"e2m1": (16, 6.0, 0.5), "e2m3": (64, 7.5, 0.125), "e3m2": (64, 28.0, 0.0625)}


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_element_format_is_mx_definition(name):
    fmt, mx = F.get_format(name), MX.get_mx_format(name)
    assert isinstance(fmt, F.Format) and fmt is F.FORMATS[name]
    assert (fmt.exp_bits, fmt.frac_bits, fmt.bias, fmt.has_subnormals) == (mx.exp_bits, mx.frac_bits, mx.bias,
                                                                            mx.has_subnormals)
    assert (fmt.total_bits, fmt.max_finite) == (mx.total_bits, mx.max_finite)
    assert (fmt.has_inf, fmt.has_nan, fmt.nan_policy) == (False, False, "none")
    assert fmt.numpy_dtype == np.dtype(ELEMENTS[name]) and fmt.bits_dtype == np.uint8
    n, top, tiny = EXPECTED[name]
    assert (1 << fmt.total_bits, fmt.max_finite, float(F.decode(1, fmt))) == (n, top, tiny)
    with pytest.raises(ValueError, match="no NaN"):
        fmt.nan_bits
    with pytest.raises(ValueError, match="no infinity"):
        fmt.inf_bits


def test_aliases():
    assert F.get_format("fp4") is F.FP4_E2M1 and F.get_format("float4_e2m1fn") is F.FP4_E2M1
    assert F.get_format("FLOAT6_E2M3FN") is F.FP6_E2M3 and F.get_format("float6_e3m2fn") is F.FP6_E3M2
    assert F.get_format("float8_e4m3fn") is F.E4M3  # the signed e4m3 stays e4m3


@pytest.mark.parametrize("name", ["ue8m0", "e8m0", "float8_e8m0fnu", "ue4m3"])
def test_unsigned_scale_formats_point_to_mx_formats(name):
    with pytest.raises(ValueError, match=r"unsigned: no sign bit.*Format cannot represent.*mx_formats"):
        F.get_format(name)
    with pytest.raises(ValueError, match="mx_formats"):
        F.decode([0], name)
    with pytest.raises(ValueError, match="mx_formats"):
        round_to_format(np.ones(1, np.float32), name)


def test_mx_formats_rounds_in_the_same_modes():
    """mx_formats imports nothing of the package (formats imports it; no cycle): its mode check
    is the one of rounding."""
    assert MX._MODES == MODES
    with pytest.raises(ValueError, match="unknown rounding mode 'RN'"):
        MX.round_to_mx([1.0], "e2m1", "RN")
    assert MX.round_to_mx([1.25], "e2m1", "rna")[0] == MX.round_to_mx([1.25], "e2m1", "RNA")[0]


def test_unknown_name_still_unknown():
    with pytest.raises(ValueError, match=r"unknown floating-point format 'fp12'.*'e2m1'"):
        F.get_format("fp12")


# -- decode: every bit pattern ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_decode_every_pattern_equals_ml_dtypes(name):
    fmt = F.get_format(name)
    bits = np.arange(1 << fmt.total_bits, dtype=np.uint8)
    ours = F.decode(bits, fmt)
    ref = bits.view(ELEMENTS[name]).astype(np.float64)
    equal = ours.view(np.uint64) == ref.view(np.uint64)  # bit for bit, -0 included; no NaN here
    assert int(equal.sum()) == bits.size == EXPECTED[name][0], bits[~equal]
    assert not np.isnan(ours).any() and not np.isinf(ours).any()
    assert np.array_equal(ours.view(np.uint64), MX.decode_mx(bits, name).view(np.uint64))


@pytest.mark.parametrize("name, dtype, n", [("ue8m0", ml_dtypes.float8_e8m0fnu, 256),
                                            ("ue4m3", ml_dtypes.float8_e4m3fn, 128)])
def test_scale_formats_decode_in_mx_formats_equals_ml_dtypes(name, dtype, n):
    bits = np.arange(n, dtype=np.uint8)
    ours = MX.decode_mx(bits, name)
    ref = bits.view(dtype).astype(np.float64)
    equal = (ours.view(np.uint64) == ref.view(np.uint64)) | (np.isnan(ours) & np.isnan(ref))
    assert int(equal.sum()) == n


# -- rounding: a large float32 sample -------------------------------------------------------------
def _sample(fmt, n=200_000, seed=19):
    """float32 values: random bit patterns (every magnitude: underflow, overflow, ±inf), log-uniform
    magnitudes around the format's range, every exact midpoint (ties, incl. the one between max
    finite and the next grid step) with its float32 neighbours, every value, ±0 and ±inf."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    raw = raw[~np.isnan(raw)]
    mag = np.exp2(rng.uniform(fmt.emin - fmt.frac_bits - 3, fmt.emax + 3, n)).astype(np.float32)
    logu = np.where(rng.random(n) < 0.5, -mag, mag)
    vals = F.decode(np.arange(1 << fmt.total_bits), fmt)
    pos = np.unique(vals[vals >= 0])
    step_above_max = 2.0 ** (fmt.emax - fmt.frac_bits)
    grid = np.concatenate([pos, [fmt.max_finite + step_above_max, 2 * fmt.max_finite]])
    mids = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)  # exact in float32
    ties = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))])
    ties = np.concatenate([ties, -ties, pos.astype(np.float32), -pos.astype(np.float32)])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e30, -1e30, 1e-40, -1e-40], np.float32)
    x = np.concatenate([raw, logu, ties, special]).astype(np.float32)
    return x, mids


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_round_rne_equals_ml_dtypes_bit_for_bit(name):
    fmt = F.get_format(name)
    x, mids = _sample(fmt)
    ours = round_to_format(x, fmt, "RNE")
    ref = x.astype(ELEMENTS[name]).view(np.uint8)
    equal = ours == ref
    assert int(equal.sum()) == x.size, (x[~equal][:8], ours[~equal][:8], ref[~equal][:8])
    assert x.size > 200_000 and mids.size >= (1 << fmt.total_bits) // 2
    # ties and saturation are really in the sample, and decided the OCP way
    top = np.float32(fmt.max_finite)
    over = np.abs(x) > top
    assert over.sum() > 1000 and np.isinf(x).sum() == 2
    assert np.array_equal(F.decode(ours[over], fmt), np.copysign(fmt.max_finite, x[over]))
    assert int(round_to_format(np.float32([fmt.max_finite + 2.0 ** (fmt.emax - fmt.frac_bits) / 2]), fmt)[0]) \
        == fmt.max_finite_bits  # the tie above max saturates (no inf to round to)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_round_every_mode_equals_round_to_mx(name, mode):
    """Two independent integer roundings (rounding.round_scaled, mx_formats.round_to_mx with its
    default saturate=True) agree in every mode."""
    fmt = F.get_format(name)
    x, _ = _sample(fmt, n=50_000, seed=190 + MODES.index(mode))
    ours = round_to_format(x, fmt, mode)
    ref = MX.round_to_mx(x, name, mode)
    equal = ours == ref
    assert int(equal.sum()) == x.size, (x[~equal][:8], ours[~equal][:8], ref[~equal][:8])
    ours64 = round_to_format(x.astype(np.float64), fmt, mode)
    assert np.array_equal(ours64, ours)


@pytest.mark.parametrize("name", sorted(ELEMENTS))
def test_nan_has_no_pattern_and_encode(name):
    fmt = F.get_format(name)
    with pytest.raises(ValueError, match="no NaN encoding"):
        round_to_format(np.float32([1.0, np.nan]), fmt)
    vals = F.decode(np.arange(1 << fmt.total_bits), fmt)
    assert is_representable(vals, fmt).all()
    assert np.array_equal(encode(vals, fmt), np.arange(1 << fmt.total_bits, dtype=np.uint8))
    assert not is_representable(np.array([np.nan, np.inf, -np.inf, fmt.max_finite * 2]), fmt).any()
    with pytest.raises(ValueError, match="not representable"):
        encode([np.nan], fmt)


def test_ue8m0_rounding_in_mx_formats_equals_ml_dtypes():
    """ue8m0 stays in mx_formats: its RNE rounding equals ml_dtypes on positive values in range."""
    rng = np.random.default_rng(8)
    x = np.exp2(rng.uniform(-126.9, 127.4, 100_000)).astype(np.float32)
    k = np.arange(-127, 127, dtype=np.float64)
    ties = (1.5 * np.exp2(k)).astype(np.float32)
    x = np.concatenate([x, ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf))])
    ours = MX.round_to_mx(x, "ue8m0", "RNE")
    ref = x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    assert int((ours == ref).sum()) == x.size
