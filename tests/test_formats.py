"""Formats: parameters, exhaustive decode/encode against ml_dtypes, representability."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import exact
from hspi_kernels.numerics.formats import (
    BF16,
    E4M3,
    E5M2,
    FP16,
    FP32,
    FP64,
    TF32,
    decode,
    get_format,
    make_format,
)
from hspi_kernels.numerics.rounding import encode, is_representable

# Formats small enough to enumerate, with the numpy dtype that independently interprets them.
EXHAUSTIVE = [
    (FP16, np.float16),
    (BF16, ml_dtypes.bfloat16),
    (E4M3, ml_dtypes.float8_e4m3fn),
    (E5M2, ml_dtypes.float8_e5m2),
]
EXHAUSTIVE_IDS = [f.name for f, _ in EXHAUSTIVE]


def all_patterns(fmt):
    return np.arange(1 << fmt.total_bits, dtype=np.int64).astype(fmt.bits_dtype)


@pytest.mark.parametrize(
    "fmt, max_finite, min_subnormal",
    [
        (FP16, 65504.0, 2.0**-24),
        (BF16, 3.3895313892515355e38, 2.0**-133),
        (TF32, 3.40116213e38, 2.0**-136),
        (E4M3, 448.0, 2.0**-9),
        (E5M2, 57344.0, 2.0**-16),
        (FP32, float(np.finfo(np.float32).max), 2.0**-149),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_format_parameters(fmt, max_finite, min_subnormal):
    assert fmt.max_finite == pytest.approx(max_finite, rel=1e-8)
    assert decode(1, fmt) == min_subnormal
    assert decode(fmt.max_finite_bits, fmt) == fmt.max_finite


def test_e4m3_is_ocp_fn():
    assert (E4M3.bias, E4M3.has_inf, E4M3.nan_policy, E4M3.max_finite) == (7, False, "fn", 448.0)
    assert E4M3.nan_bits == 0x7F  # the single NaN pattern S.1111.111
    values = decode(all_patterns(E4M3), E4M3)
    assert np.isnan(values).sum() == 2 and not np.isinf(values).any()


def test_get_format_and_generic_constructor():
    assert get_format("bf16") is BF16 and get_format("float8_e4m3fn") is E4M3 and get_format(FP16) is FP16
    with pytest.raises(ValueError, match="unknown floating-point format 'fp12'"):
        get_format("fp12")
    e3m2 = make_format(3, 2)
    assert (e3m2.bias, e3m2.has_inf, e3m2.max_finite) == (3, True, 14.0)
    with pytest.raises(ValueError, match="no infinities"):
        make_format(4, 3).__class__("bad", 4, 3, 7, True, "fn")


@pytest.mark.parametrize("fmt, dtype", EXHAUSTIVE, ids=EXHAUSTIVE_IDS)
def test_decode_matches_ml_dtypes_exhaustively(fmt, dtype):
    bits = all_patterns(fmt)
    ours = decode(bits, fmt)
    with np.errstate(invalid="ignore"):  # signalling-NaN patterns
        theirs = bits.view(dtype).astype(np.float64)
    np.testing.assert_array_equal(ours, theirs)  # NaN positions must coincide too
    assert np.array_equal(np.signbit(ours), np.signbit(theirs))
    assert fmt.numpy_dtype == np.dtype(dtype)


@pytest.mark.parametrize("fmt, dtype", EXHAUSTIVE, ids=EXHAUSTIVE_IDS)
def test_decode_matches_fraction_reference_exhaustively(fmt, dtype):
    bits = all_patterns(fmt)
    ours = decode(bits, fmt)
    for pattern, value in zip(bits.tolist(), ours.tolist()):
        ref = exact.to_fraction(pattern, fmt)
        if ref is None:
            assert np.isnan(value)
        elif isinstance(ref, str):
            assert value == (np.inf if ref == "+inf" else -np.inf)
        else:
            assert value == ref


@pytest.mark.parametrize("fmt, dtype", EXHAUSTIVE, ids=EXHAUSTIVE_IDS)
def test_encode_decode_round_trip_exhaustively(fmt, dtype):
    bits = all_patterns(fmt)
    values = decode(bits, fmt)
    nan = np.isnan(values)
    encoded = encode(values, fmt)
    assert encoded.dtype == fmt.bits_dtype
    np.testing.assert_array_equal(encoded[~nan], bits[~nan])  # includes -0 and ±inf
    assert np.isnan(decode(encoded[nan], fmt)).all()
    assert np.array_equal(encoded[nan] >> (fmt.total_bits - 1), bits[nan] >> (fmt.total_bits - 1))
    # The same values as float32 input (all four formats are subsets of fp32).
    np.testing.assert_array_equal(encode(values.astype(np.float32), fmt)[~nan], bits[~nan])


def test_fp64_and_fp32_pass_through():
    rng = np.random.default_rng(1)
    x64 = rng.integers(0, 2**63, 10_000, dtype=np.int64).view(np.float64)
    x64 = x64[np.isfinite(x64)]
    np.testing.assert_array_equal(decode(encode(x64, FP64), FP64), x64)
    x32 = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    finite = np.isfinite(x32.view(np.float32))
    np.testing.assert_array_equal(encode(x32.view(np.float32)[finite], FP32), x32[finite])


def test_is_representable_and_encode_errors():
    x = np.array([1.0, 1.0 + 2.0**-10, 1.0 + 2.0**-11, 65504.0, 65520.0, np.inf, np.nan, -0.0, 2.0**-24, 2.0**-25])
    np.testing.assert_array_equal(is_representable(x, FP16), [1, 1, 0, 1, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(is_representable(x, E4M3), [1, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="not representable in fp16"):
        encode([1.0 + 2.0**-11], FP16)
    with pytest.raises(ValueError, match="not representable in e4m3"):
        encode([np.inf], E4M3)


def test_same_bits_rule():
    """The comparison behind every N/N count: bit patterns, NaN payloads aside, ±0 distinct."""
    from hspi_kernels.numerics.formats import same_bits

    nan_a = np.array([0x7FC00000], np.uint32).view(np.float32)
    nan_b = np.array([0xFFFFFFFF], np.uint32).view(np.float32)
    x = np.array([1.0, 0.0, nan_a[0], nan_a[0], 2.0], np.float32)
    y = np.array([1.0, -0.0, nan_b[0], 0.0, np.nextafter(np.float32(2.0), np.float32(3.0))], np.float32)
    assert same_bits(x, y).tolist() == [True, False, True, False, False]
    assert same_bits(x.astype(np.float64), y.astype(np.float64)).tolist() == [True, False, True, False, False]
    with pytest.raises(ValueError, match="one shape and dtype"):
        same_bits(x, y.astype(np.float64))


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "tf32"])
def test_is_representable_float32_and_float64_inputs_agree(fmt):
    """float32 input takes the fp32 bit path of round_to_format/decode; float64 input of the same
    values the general one."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    drop = {"fp32": 0, "bf16": 16, "tf32": 13}[fmt]
    bits[::2] &= np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)  # half of them representable
    bits[:8] = [0x0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x00010000, 0x00002000]
    x = bits.view(np.float32)
    fast = is_representable(x, fmt)
    generic = is_representable(x.astype(np.float64), fmt)
    assert np.array_equal(fast, generic)
    if fmt != "fp32":  # negative control: the odd half mostly has a low bit the format lacks
        assert 0.3 < np.mean(~fast) < 0.55
