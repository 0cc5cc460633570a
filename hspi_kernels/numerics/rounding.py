"""Rounding to any :class:`~hspi_kernels.numerics.formats.Format`, on integers only.

Every conversion goes through :func:`round_scaled`, which rounds the exact value
``(-1)^sign · mag · 2^exp`` (``mag`` a non-negative integer) to the format in one step, so no
result is ever double rounded through float64. ``mag`` is an int64/uint64 array for the fast
path or an object array of Python ints when wider integers are needed. Exact encoding is the
same rounding: :func:`encode` gives the bit patterns of values a format holds (ValueError for any
other) and :func:`is_representable` says which values those are.

Modes: ``RNE`` (nearest, ties to even), ``RNA`` (nearest, ties away from zero), ``RZ`` (toward
zero), ``RU`` (toward +inf), ``RD`` (toward -inf).

Overflow (rounded magnitude beyond the largest finite value), per IEEE 754:
- RNE and RNA give ±inf; RZ gives ±max finite; RU gives +inf / -max; RD gives +max / -inf.
- A format without infinities (e4m3 "fn") gives NaN wherever IEEE would give ±inf and ±max
  where IEEE gives ±max. For RNE this is exactly ml_dtypes' (non-saturating) float8_e4m3fn
  conversion: 464 (the tie between 448 and the NaN slot 480) rounds to 448, anything above is
  NaN, and ±inf inputs become NaN.
- A format with neither infinities nor NaN (nan_policy "none": the OCP MX FP4/FP6 elements
  e2m1, e2m3, e3m2) saturates: every overflow and ±inf input gives ±max finite, in every mode
  (the OCP MX spec's conversion; ml_dtypes' float4_e2m1fn / float6_* do the same for RNE), and
  a NaN input is a ValueError (there is no pattern for it).
Underflow rounds into the subnormals (gradual underflow) and keeps the sign of zero.
NaN inputs give the format's canonical quiet NaN with the input's sign.
"""

from __future__ import annotations

import numpy as np

from .formats import Format, decode, get_format

__all__ = [
    "MODES",
    "check_mode",
    "round_scaled",
    "round_to_format",
    "decompose",
    "encode",
    "is_representable",
]

MODES = ("RNE", "RZ", "RU", "RD", "RNA")

# Magnitudes up to this many bits take the int64 path (shifts stay below 2^63).
_FAST_MAG_BITS = 62


def check_mode(mode: str) -> str:
    key = str(mode).upper()
    if key not in MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {MODES}")
    return key


def _bit_length(mag: np.ndarray) -> np.ndarray:
    """Elementwise int.bit_length for int64 (fast) or object (Python int) arrays."""
    if mag.dtype == object:
        return np.frompyfunc(int.bit_length, 1, 1)(mag).astype(np.int64)
    rest = mag.copy()
    length = np.zeros(mag.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        has_high = (rest >> step) != 0
        length += np.where(has_high, step, 0)
        rest = np.where(has_high, rest >> step, rest)
    return length + (rest != 0)


def _as_magnitudes(mag) -> np.ndarray:
    """int64 array when every magnitude fits the fast path, else an object array."""
    arr = np.asarray(mag)
    if arr.dtype == object:
        ints = np.frompyfunc(int, 1, 1)(arr) if arr.size else arr
        if arr.size and max(int(v) for v in ints.flat) < (1 << _FAST_MAG_BITS):
            return ints.astype(np.int64)
        if arr.size and min(int(v) for v in ints.flat) < 0:
            raise ValueError("round_scaled: mag must be non-negative")
        return np.asarray(ints, dtype=object)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"round_scaled: mag must be integer, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("round_scaled: mag must be non-negative")
    if arr.dtype == np.uint64 and arr.size and arr.max() >= (1 << _FAST_MAG_BITS):
        return np.asarray([int(v) for v in arr.flat], dtype=object).reshape(arr.shape)
    return arr.astype(np.int64)


def round_scaled(sign, mag, exp, fmt: str | Format, mode: str = "RNE") -> np.ndarray:
    """Bit patterns of ``fmt`` nearest (per ``mode``) to ``(-1)^sign · mag · 2^exp``.

    ``sign`` (0/1 or bool), ``mag`` (non-negative integers) and ``exp`` (integers) broadcast.
    """
    fmt = get_format(fmt)
    mode = check_mode(mode)
    if not fmt.has_subnormals:
        raise ValueError(f"format {fmt.name!r}: rounding into formats without subnormals is not supported")
    mag = _as_magnitudes(mag)
    sign, mag, exp = np.broadcast_arrays(np.asarray(sign).astype(np.int64) & 1, mag, np.asarray(exp, dtype=np.int64))
    exact_ints = mag.dtype == object  # wide path: keep every integer a Python int
    F = fmt.frac_bits

    nbits = _bit_length(mag)
    leading_exp = exp + nbits - 1  # exponent of the leading bit of a non-zero value
    # Quantum of the result grid: 2^(max(e, emin) - F); subnormals share the emin grid.
    quantum_exp = np.maximum(leading_exp, fmt.emin) - F
    shift = quantum_exp - exp  # > 0: bits drop off; <= 0: exact left shift
    # A shift beyond the value's length behaves exactly like shift = nbits + 1 (kept 0, rest
    # below half), which bounds the shift for the fixed-width path.
    shift = np.minimum(shift, nbits + 1)
    right = np.maximum(shift, 0)
    left = np.maximum(-shift, 0)
    if exact_ints:
        right, left = right.astype(object), left.astype(object)

    kept = mag >> right
    rest = mag - (kept << right)
    half_unit = np.where(right > 0, (mag * 0 + 1) << np.maximum(right - 1, 0), 0)
    kept = kept << left  # exact (the grid is finer than the value's last bit)

    above_half = rest > half_unit
    at_half = (rest == half_unit) & (right > 0)
    inexact = rest != 0
    negative = sign == 1
    if mode == "RNE":
        round_up = above_half | (at_half & ((kept & 1) == 1))
    elif mode == "RNA":
        round_up = above_half | at_half
    elif mode == "RU":
        round_up = inexact & ~negative
    elif mode == "RD":
        round_up = inexact & negative
    else:  # RZ
        round_up = np.zeros(mag.shape, dtype=bool)
    significand = kept + round_up.astype(np.int64)

    # A carry out of the top bit (significand == 2^(F+1)) moves one binade up, exactly.
    carried = significand >= (1 << (F + 1))
    significand = np.where(carried, significand >> 1, significand)
    quantum_exp = quantum_exp + carried
    is_normal = significand >= (1 << F)
    result_exp = quantum_exp + F  # exponent of the result when normal

    overflow = is_normal & (
        (result_exp > fmt.emax) | ((result_exp == fmt.emax) & (significand > fmt.max_significand))
    )
    exp_field = np.where(is_normal, result_exp + fmt.bias, 0)
    frac = significand & ((1 << F) - 1)
    if exact_ints:
        exp_field, frac = exp_field.astype(object), frac.astype(object)
    magnitude_bits = (exp_field << F) | frac

    # Overflow: towards infinity (IEEE: inf; fn formats: NaN) or clamped to max finite.
    to_infinity = {"RNE": np.ones_like(negative), "RNA": np.ones_like(negative),
                   "RZ": np.zeros_like(negative), "RU": ~negative, "RD": negative}[mode]
    beyond_bits = fmt.inf_bits if fmt.has_inf else fmt.nan_bits if fmt.has_nan else fmt.max_finite_bits
    overflow_bits = np.where(to_infinity, beyond_bits, fmt.max_finite_bits)
    magnitude_bits = np.where(overflow, overflow_bits, magnitude_bits)
    zero = nbits == 0
    magnitude_bits = np.where(zero, 0, magnitude_bits)

    if exact_ints:
        patterns = [int(m) | (fmt.sign_mask if n else 0) for m, n in zip(magnitude_bits.flat, negative.flat)]
        return np.asarray(patterns, dtype=np.uint64).reshape(mag.shape).astype(fmt.bits_dtype)
    magnitude_bits = np.asarray(magnitude_bits).astype(np.uint64)
    bits = np.where(negative, magnitude_bits | np.uint64(fmt.sign_mask), magnitude_bits)
    return bits.astype(fmt.bits_dtype)


def decompose(x: np.ndarray):
    """(sign, mag, exp, is_inf, is_nan) of float32/float64 values: x = (-1)^sign · mag · 2^exp.

    ``mag`` is the integer significand (implicit bit included; subnormals unnormalised).
    """
    x = np.asarray(x)
    if x.dtype == np.float64:
        bits = x.view(np.uint64).astype(np.uint64)
        exp_bits, frac_bits, bias = 11, 52, 1023
        sign = (bits >> np.uint64(63)).astype(np.int64)
        body = (bits & np.uint64((1 << 63) - 1)).astype(np.int64)
    elif x.dtype == np.float32:
        bits = x.view(np.uint32).astype(np.int64)
        exp_bits, frac_bits, bias = 8, 23, 127
        sign = bits >> 31
        body = bits & 0x7FFFFFFF
    else:
        raise TypeError(f"expected a float32 or float64 array, got dtype {x.dtype}")
    exp_field = body >> frac_bits
    frac = body & ((1 << frac_bits) - 1)
    top = exp_field == (1 << exp_bits) - 1
    mag = np.where(exp_field != 0, frac | (1 << frac_bits), frac)
    exp = np.maximum(exp_field, 1) - bias - frac_bits
    return sign, np.where(top, 0, mag), exp, top & (frac == 0), top & (frac != 0)


def round_to_format(x, fmt: str | Format, mode: str = "RNE") -> np.ndarray:
    """Bit patterns of ``fmt`` for float32/float64 values ``x`` rounded per ``mode``.

    Infinities stay infinite (NaN in formats without them); NaN keeps its sign and becomes the
    canonical quiet NaN.
    """
    fmt = get_format(fmt)
    mode = check_mode(mode)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"round_to_format: expected float32 or float64 input, got dtype {x.dtype}")
    if fmt.name == "fp64":
        return x.astype(np.float64).view(np.uint64)
    drop = fmt.fp32_low_bits
    if x.dtype == np.float32 and drop is not None and mode in ("RNE", "RZ"):
        return _round_fp32_bits(x, fmt, drop, mode)
    sign, mag, exp, is_inf, is_nan = decompose(x)
    if not fmt.has_nan and is_nan.any():
        raise ValueError(f"format {fmt.name!r} has no NaN encoding: {int(is_nan.sum())} NaN input(s)")
    bits = round_scaled(sign, mag, exp, fmt, mode).astype(np.int64)
    sign_bits = np.where(sign == 1, fmt.sign_mask, 0)
    inf_bits = fmt.inf_bits if fmt.has_inf else fmt.nan_bits if fmt.has_nan else fmt.max_finite_bits
    bits = np.where(is_inf, inf_bits | sign_bits, bits)
    if fmt.has_nan:
        bits = np.where(is_nan, fmt.nan_bits | sign_bits, bits)
    return bits.astype(fmt.bits_dtype)


def _round_fp32_bits(x: np.ndarray, fmt: Format, drop: int, mode: str) -> np.ndarray:
    """round_to_format for float32 input and a format that is fp32 with ``drop`` fewer fraction
    bits (``Format.fp32_low_bits``): RZ drops the bits, RNE first adds half an ulp minus one plus
    the kept lowest bit (ties to even). The encoding is monotonic in the magnitude, so one rule
    covers subnormals, and a carry into the exponent gives the next binade or inf, as IEEE.
    Equal to the general path (tests/test_rounding.py), two orders of magnitude faster."""
    u = x.view(np.uint32).astype(np.uint64)
    if mode == "RNE" and drop:
        u = u + ((1 << (drop - 1)) - 1) + ((u >> drop) & 1)
    bits = (u >> drop).astype(np.int64)
    is_nan = np.isnan(x)
    if is_nan.any():  # the canonical quiet NaN, with the input's sign
        sign_bits = (x.view(np.uint32) >> 31).astype(np.int64) << (fmt.total_bits - 1)
        bits = np.where(is_nan, fmt.nan_bits | sign_bits, bits)
    return bits.astype(fmt.bits_dtype)


def encode(values, fmt: str | Format) -> np.ndarray:
    """Bit patterns of values that ``fmt`` represents exactly; ValueError otherwise.

    NaN maps to the canonical NaN pattern (sign kept). Use :func:`round_to_format`
    to convert values that need rounding.
    """
    fmt = get_format(fmt)
    values = np.asarray(values, dtype=np.float64)
    ok = is_representable(values, fmt)
    if not np.all(ok):
        bad = values[~ok]
        raise ValueError(
            f"{bad.size} value(s) not representable in {fmt.name}, e.g. {bad.flat[0]!r}; "
            f"round them with round_to_format(x, fmt, mode)"
        )
    return round_to_format(values, fmt, "RZ")


def is_representable(values, fmt: str | Format) -> np.ndarray:
    """Elementwise: is the (float64/float32) value exactly a value of ``fmt``?

    NaN is representable in every format with a NaN (not in e2m1/e2m3/e3m2); ±inf only where
    the format has infinities.
    """
    fmt = get_format(fmt)
    values = np.asarray(values)
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    if not fmt.has_nan:
        nan = np.isnan(values)
        back = decode(round_to_format(np.where(nan, 0, values).astype(values.dtype), fmt, "RZ"), fmt)
        return (back == values.astype(np.float64)) & ~nan
    back = decode(round_to_format(values, fmt, "RZ"), fmt)
    same = back == values.astype(np.float64)
    return same | (np.isnan(values) & np.isnan(back))
