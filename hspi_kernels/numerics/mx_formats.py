"""Microscaling (OCP MX) element and scale formats: fp4 e2m1, fp6 e2m3 / e3m2, ue8m0, ue4m3.

The unsigned scale formats (ue8m0, ue4m3) do not fit :class:`formats.Format` (which always has a
sign bit, a fraction bit and a zero), so they live here with their own decode and rounding, done
on integers
(the exact float64 value split into a 53-bit integer significand and an exponent, rounded once
onto the target grid: no double rounding). The signed element formats (e2m1, e2m3, e3m2) are
also :class:`formats.Format` values (nan_policy "none"), built from the definitions here:
``formats.get_format("e2m1")``, ``formats.decode`` and ``rounding.round_to_format`` give the same
patterns as :func:`decode_mx` / :func:`round_to_mx` with ``saturate=True``.

Formats (OCP Microscaling Formats (MX) Specification v1.0, 2023, sections 5.3-5.4; NVIDIA PTX ISA
8.7+, ``.e2m1``, ``.e2m3``, ``.e3m2``, ``.ue8m0``, ``.ue4m3``):

- ``e2m1`` (FP4): sign, 2 exponent bits (bias 1), 1 fraction bit; subnormals; no inf, no NaN.
  Values 0, 0.5, 1, 1.5, 2, 3, 4, 6. ml_dtypes ``float4_e2m1fn``.
- ``e2m3`` (FP6): bias 1, 3 fraction bits, max 7.5, min subnormal 0.125; no inf/NaN.
  ml_dtypes ``float6_e2m3fn``.
- ``e3m2`` (FP6): bias 3, 2 fraction bits, max 28, min subnormal 0.0625; no inf/NaN.
  ml_dtypes ``float6_e3m2fn``.
- ``ue8m0`` (MX scale, "E8M0"): unsigned, 8 exponent bits (bias 127), no fraction, no zero, no
  subnormals, no inf; 0xFF is NaN. Values 2^-127 .. 2^127. ml_dtypes ``float8_e8m0fnu``.
- ``ue4m3`` (NVFP4 scale): e4m3 "fn" with the sign bit 0 (patterns 0x00-0x7F; 0x7F is NaN,
  max 448). ml_dtypes ``float8_e4m3fn``'s non-negative half.

Rounding (:func:`round_to_mx`): modes RNE, RZ, RU, RD, RNA onto the format's grid. Overflow:
``saturate=True`` (the default; what the OCP spec prescribes for FP6/FP4, which have no inf/NaN
encoding, and PTX's ``.satfinite``) clamps to ±max finite, including ±inf inputs; with
``saturate=False`` an overflow is NaN where the format has a NaN (ue8m0, ue4m3, IEEE-like
threshold: RZ/RD toward max stay finite) and a ValueError where it has none (FP4/FP6). NaN
inputs: the NaN pattern, ValueError for FP4/FP6. Negative inputs to the unsigned formats are a
ValueError (-0 encodes as +0 in ue4m3). ue8m0 has no zero: every positive value below 2^-127
(and 0 itself) rounds to 2^-127, and, having no fraction bit, a tie 1.5·2^k rounds to 2^(k+1) in
RNE (the even integer significand on the binade's grid {1, 2}·2^k; ml_dtypes does the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["MXFormat", "E2M1", "E2M3", "E3M2", "UE8M0", "UE4M3", "MX_FORMATS", "get_mx_format",
           "decode_mx", "round_to_mx", "mx_values"]


@dataclass(frozen=True)
class MXFormat:
    name: str
    exp_bits: int
    frac_bits: int
    bias: int
    signed: bool
    nan: str  # "none" (FP4/FP6) | "all_ones" (ue8m0: 0xFF) | "fn" (ue4m3: S.1111.111)
    has_zero: bool = True
    has_subnormals: bool = True
    ml_dtype: str | None = None

    @property
    def total_bits(self) -> int:
        return int(self.signed) + self.exp_bits + self.frac_bits

    @property
    def emin(self) -> int:
        return 1 - self.bias if self.has_subnormals else -self.bias

    @property
    def emax(self) -> int:
        top = (1 << self.exp_bits) - 1
        return (top - 1 if self.nan == "all_ones" else top) - self.bias

    @property
    def max_significand(self) -> int:
        full = (1 << (self.frac_bits + 1)) - 1
        return full - 1 if self.nan == "fn" else full

    @property
    def max_finite(self) -> float:
        if self.frac_bits == 0:
            return float(2.0 ** self.emax)
        return float(np.ldexp(float(self.max_significand), self.emax - self.frac_bits))

    @property
    def nan_bits(self) -> int | None:
        if self.nan == "none":
            return None
        return (1 << (self.exp_bits + self.frac_bits)) - 1  # 0xFF (ue8m0), 0x7F (ue4m3)

    @property
    def sign_mask(self) -> int:
        return 1 << (self.exp_bits + self.frac_bits) if self.signed else 0


E2M1 = MXFormat("e2m1", 2, 1, 1, True, "none", ml_dtype="float4_e2m1fn")
E2M3 = MXFormat("e2m3", 2, 3, 1, True, "none", ml_dtype="float6_e2m3fn")
E3M2 = MXFormat("e3m2", 3, 2, 3, True, "none", ml_dtype="float6_e3m2fn")
UE8M0 = MXFormat("ue8m0", 8, 0, 127, False, "all_ones", has_zero=False, has_subnormals=False,
                 ml_dtype="float8_e8m0fnu")
UE4M3 = MXFormat("ue4m3", 4, 3, 7, False, "fn", ml_dtype="float8_e4m3fn")
MX_FORMATS: dict[str, MXFormat] = {f.name: f for f in (E2M1, E2M3, E3M2, UE8M0, UE4M3)}
_ALIASES = {"fp4": "e2m1", "float4_e2m1fn": "e2m1", "float6_e2m3fn": "e2m3", "float6_e3m2fn": "e3m2",
            "e8m0": "ue8m0", "float8_e8m0fnu": "ue8m0"}


def get_mx_format(fmt: str | MXFormat) -> MXFormat:
    if isinstance(fmt, MXFormat):
        return fmt
    key = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    try:
        return MX_FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown MX format {fmt!r}; known: {sorted(MX_FORMATS)}") from None


def decode_mx(bits, fmt: str | MXFormat) -> np.ndarray:
    """Exact float64 values of bit patterns of ``fmt`` (NaN for its NaN pattern)."""
    fmt = get_mx_format(fmt)
    p = np.asarray(bits).astype(np.int64)
    if np.any((p < 0) | (p >= (1 << fmt.total_bits))):
        raise ValueError(f"{fmt.name}: bit patterns must lie in [0, {1 << fmt.total_bits})")
    frac_mask = (1 << fmt.frac_bits) - 1
    field = (p >> fmt.frac_bits) & ((1 << fmt.exp_bits) - 1)
    frac = p & frac_mask
    if fmt.has_subnormals:
        normal = field != 0
        sig = np.where(normal, frac | (1 << fmt.frac_bits), frac).astype(np.float64)
        e = np.where(normal, field, 1) - fmt.bias - fmt.frac_bits
    else:
        sig = (frac | (1 << fmt.frac_bits)).astype(np.float64)
        e = field - fmt.bias - fmt.frac_bits
    v = np.ldexp(sig, e.astype(np.int32))
    if fmt.nan != "none":
        v = np.where((p & ((1 << (fmt.exp_bits + fmt.frac_bits)) - 1)) == fmt.nan_bits, np.nan, v)
    if fmt.signed:
        v = np.where(p & fmt.sign_mask, -v, v)
    return v


def mx_values(fmt: str | MXFormat) -> np.ndarray:
    """Every bit pattern of ``fmt`` in order (an exhaustive test set)."""
    fmt = get_mx_format(fmt)
    return np.arange(1 << fmt.total_bits, dtype=np.int64)


# The rounding modes of rounding.MODES (tests/test_mx_get_format.py checks they are the same). This
# module imports nothing of the package: formats builds its MX element formats from the
# definitions here, and rounding imports formats, so importing rounding here would be a cycle.
_MODES = ("RNE", "RZ", "RU", "RD", "RNA")


def _check_mode(mode: str) -> str:
    key = str(mode).upper()
    if key not in _MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {_MODES}")
    return key


def _round_magnitude(m: np.ndarray, e: np.ndarray, q: np.ndarray, mode: str, negative: np.ndarray):
    """Round the exact m * 2^e (m int64 >= 0) onto multiples of 2^q: the integer multiple."""
    shift = np.clip(q - e, 0, 62)
    left = np.clip(e - q, 0, 62)
    kept = m >> shift
    rest = m - (kept << shift)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    above = rest > half
    at = (rest == half) & (shift > 0)
    inexact = rest != 0
    # values far below the grid (q - e > 62 cannot occur for a 53-bit m and the formats here,
    # whose quanta are >= 2^-136; the clip is defensive)
    if mode == "RNE":
        up = above | (at & ((kept & 1) == 1))
    elif mode == "RNA":
        up = above | at
    elif mode == "RU":
        up = inexact & ~negative
    elif mode == "RD":
        up = inexact & negative
    else:
        up = np.zeros(m.shape, bool)
    return (kept + up) << left


def round_to_mx(values, fmt: str | MXFormat, mode: str = "RNE", saturate: bool = True) -> np.ndarray:
    """Bit patterns (uint8) of ``fmt`` nearest (per ``mode``) to the float32/float64 ``values``."""
    fmt = get_mx_format(fmt)
    mode = _check_mode(mode)
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    if nan.any() and fmt.nan == "none":
        raise ValueError(f"{fmt.name} has no NaN encoding")
    negative = np.signbit(x) & ~nan
    if not fmt.signed and np.any(negative & (x != 0)):
        raise ValueError(f"{fmt.name} is unsigned: negative values cannot be encoded")
    if not fmt.signed:
        negative = np.zeros_like(negative)
    ax = np.where(nan, 0.0, np.abs(x))
    inf = np.isinf(ax)
    mant, ex = np.frexp(np.where(inf, 1.0, ax))
    m = np.ldexp(mant, 53).astype(np.int64)  # exact: ax = m * 2^(ex - 53)
    e = ex.astype(np.int64) - 53
    lead = np.where(m > 0, ex.astype(np.int64) - 1, fmt.emin)
    q = np.maximum(lead, fmt.emin) - fmt.frac_bits
    kept = _round_magnitude(m, e, q, mode, negative)
    # the rounded value kept * 2^q, re-expressed in (field, fraction)
    value = np.ldexp(kept.astype(np.float64), q.astype(np.int32))
    over = inf | (value > fmt.max_finite)
    if not saturate and np.any(over):
        if fmt.nan == "none":
            raise ValueError(f"{fmt.name}: overflow without saturation has no encoding")
        # IEEE-like: toward-zero directions keep max finite (the rounded value of a finite input
        # exceeds max only when the mode rounded up past it)
        stays = ~inf & ((mode == "RZ") | ((mode == "RD") & ~negative) | ((mode == "RU") & negative))
        over_nan = over & ~stays
    else:
        over_nan = np.zeros_like(over)
    value = np.where(over, fmt.max_finite, value)
    if not fmt.has_zero:
        value = np.maximum(value, 2.0 ** fmt.emin)
    # encode the exact value
    vmant, vex = np.frexp(value)
    ve = vex.astype(np.int64) - 1
    normal = value >= 2.0 ** fmt.emin
    if fmt.has_subnormals:
        field = np.where(normal, ve - fmt.emin + 1, 0)
        frac = np.where(normal, np.ldexp(value, (fmt.frac_bits - ve).astype(np.int32)) - (1 << fmt.frac_bits),
                        np.ldexp(value, fmt.frac_bits - fmt.emin))
    else:
        field = ve + fmt.bias
        frac = np.ldexp(value, (fmt.frac_bits - ve).astype(np.int32)) - (1 << fmt.frac_bits)
    bits = (field.astype(np.int64) << fmt.frac_bits) | frac.astype(np.int64)
    if fmt.nan_bits is not None:
        bits = np.where(nan | over_nan, fmt.nan_bits, bits)
    bits = np.where(negative, bits | fmt.sign_mask, bits)
    return bits.astype(np.uint8)


def ml_dtype_of(fmt: str | MXFormat):
    """The ml_dtypes type whose bit patterns equal ``fmt``'s (ue4m3: float8_e4m3fn's non-negative
    half), or None."""
    fmt = get_mx_format(fmt)
    return None if fmt.ml_dtype is None else getattr(ml_dtypes, fmt.ml_dtype, None)
