"""Binary floating-point formats: parameters, bit patterns and their exact decoding.

A bit pattern is the format's own compact layout, ``sign | exponent field | fraction field``
(``1 + exp_bits + frac_bits`` bits), held in the smallest unsigned numpy integer that fits
(uint8 for fp8, uint16 for fp16/bf16, uint32 for fp32/tf32/e8m13, uint64 for fp64). tf32 is
therefore a 19-bit pattern, not an fp32 word with 13 zero bits.

Decoding gives exact float64 values (every format here except fp64 itself is a subset of
float64; fp64 passes through). Encoding (``encode``, ``is_representable``) is rounding and lives
in :mod:`hspi_kernels.numerics.rounding`, which builds on this module.

NaN policies:
- ``"ieee"``: exponent field all ones with a non-zero fraction is NaN, zero fraction is ±inf;
- ``"fn"`` (OCP e4m3 "fn"): no infinities; only ``S.1…1.1…1`` is NaN, so the all-ones exponent
  field holds finite values up to fraction ``1…10`` (e4m3: max 448).
- ``"none"`` (OCP MX FP4/FP6 elements e2m1, e2m3, e3m2): no infinity and no NaN; every pattern
  is finite. Rounding saturates (overflow and ±inf give ±max finite, as the OCP MX spec
  prescribes) and NaN inputs are a ValueError (see :mod:`hspi_kernels.numerics.rounding`).

The MX element formats are built from their definitions in
:mod:`hspi_kernels.numerics.mx_formats` (one home). The MX scale formats ``ue8m0`` and ``ue4m3``
have no sign bit (and ue8m0 no zero, no fraction bit, no subnormals), which :class:`Format`
cannot represent: ``get_format`` names them and refers to ``mx_formats`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from . import mx_formats as _mx

__all__ = [
    "Format",
    "make_format",
    "get_format",
    "FORMATS",
    "FP64",
    "FP32",
    "TF32",
    "BF16",
    "FP16",
    "E4M3",
    "E5M2",
    "E8M13",
    "FP4_E2M1",
    "FP6_E2M3",
    "FP6_E3M2",
    "decode",
]

_NAN_POLICIES = ("ieee", "fn", "none")


@dataclass(frozen=True)
class Format:
    """A binary floating-point format with an implicit leading significand bit."""

    name: str
    exp_bits: int
    frac_bits: int
    bias: int
    has_inf: bool
    nan_policy: str  # "ieee" | "fn" | "none" (see module docstring)
    has_subnormals: bool = True
    value_dtype: str = "float64"  # numpy dtype (name) that holds the values exactly

    def __post_init__(self) -> None:
        if self.exp_bits < 2 or self.frac_bits < 1 or self.total_bits > 64:
            raise ValueError(f"format {self.name!r}: unsupported widths e{self.exp_bits}m{self.frac_bits}")
        if self.nan_policy not in _NAN_POLICIES:
            raise ValueError(f"format {self.name!r}: nan_policy must be one of {_NAN_POLICIES}")
        if self.nan_policy == "fn" and self.has_inf:
            raise ValueError(f"format {self.name!r}: the 'fn' NaN policy has no infinities")
        if self.nan_policy == "none" and self.has_inf:
            raise ValueError(f"format {self.name!r}: the 'none' NaN policy has no infinities")
        if self.nan_policy == "ieee" and not self.has_inf:
            raise ValueError(f"format {self.name!r}: the 'ieee' NaN policy implies infinities")

    # -- derived parameters -------------------------------------------------------------
    @property
    def total_bits(self) -> int:
        return 1 + self.exp_bits + self.frac_bits

    @property
    def bits_dtype(self) -> np.dtype:
        """Unsigned integer dtype holding one bit pattern."""
        for width, dtype in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
            if self.total_bits <= width:
                return np.dtype(dtype)
        return np.dtype(np.uint64)

    @property
    def numpy_dtype(self) -> np.dtype:
        """numpy dtype for arrays of values of this format (ml_dtypes for bf16/fp8)."""
        return np.dtype(self.value_dtype)

    @property
    def fp32_low_bits(self) -> int | None:
        """How many low fraction bits of fp32 this format lacks when it *is* fp32 with a shorter
        fraction (the same exponent field, subnormals, inf and NaN: fp32, tf32, bf16, e8m13);
        None otherwise. Its values are then the float32 values whose low bits are zero, and its
        bit patterns the top bits of theirs: rounding and decoding are bit operations on float32."""
        if (self.exp_bits == 8 and self.bias == 127 and self.frac_bits <= 23 and self.has_inf
                and self.has_subnormals):
            return 23 - self.frac_bits
        return None

    @property
    def exp_field_max(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        top_field = self.exp_field_max - (1 if self.nan_policy == "ieee" else 0)
        return top_field - self.bias

    @property
    def max_significand(self) -> int:
        """Integer significand (implicit bit included) of the largest finite number."""
        full = (1 << (self.frac_bits + 1)) - 1
        return full - 1 if self.nan_policy == "fn" else full

    @property
    def max_finite(self) -> float:
        return float(np.ldexp(float(self.max_significand), self.emax - self.frac_bits))

    @property
    def sign_mask(self) -> int:
        return 1 << (self.total_bits - 1)

    @property
    def max_finite_bits(self) -> int:
        return ((self.emax + self.bias) << self.frac_bits) | (self.max_significand - (1 << self.frac_bits))

    @property
    def inf_bits(self) -> int:
        if not self.has_inf:
            raise ValueError(f"format {self.name!r} has no infinity")
        return self.exp_field_max << self.frac_bits

    @property
    def has_nan(self) -> bool:
        return self.nan_policy != "none"

    @property
    def nan_bits(self) -> int:
        """Canonical (positive, quiet) NaN pattern."""
        if self.nan_policy == "none":
            raise ValueError(f"format {self.name!r} has no NaN")
        if self.nan_policy == "fn":
            return (1 << (self.total_bits - 1)) - 1
        return (self.exp_field_max << self.frac_bits) | (1 << (self.frac_bits - 1))


def make_format(
    exp_bits: int,
    frac_bits: int,
    *,
    name: str | None = None,
    bias: int | None = None,
    nan_policy: str = "ieee",
    has_subnormals: bool = True,
) -> Format:
    """Generic constructor: IEEE-like e{exp_bits}m{frac_bits} unless told otherwise."""
    return Format(
        name=name or f"e{exp_bits}m{frac_bits}",
        exp_bits=exp_bits,
        frac_bits=frac_bits,
        bias=(1 << (exp_bits - 1)) - 1 if bias is None else bias,
        has_inf=nan_policy == "ieee",
        nan_policy=nan_policy,
        has_subnormals=has_subnormals,
    )


FP64 = Format("fp64", 11, 52, 1023, True, "ieee", value_dtype="float64")
FP32 = Format("fp32", 8, 23, 127, True, "ieee", value_dtype="float32")
TF32 = Format("tf32", 8, 10, 127, True, "ieee", value_dtype="float32")
BF16 = Format("bf16", 8, 7, 127, True, "ieee", value_dtype="bfloat16")
FP16 = Format("fp16", 5, 10, 15, True, "ieee", value_dtype="float16")
E4M3 = Format("e4m3", 4, 3, 7, False, "fn", value_dtype="float8_e4m3fn")
E5M2 = Format("e5m2", 5, 2, 15, True, "ieee", value_dtype="float8_e5m2")
# Hopper fp8 tensor-core output: fp32 truncated to 13 fraction bits.
E8M13 = Format("e8m13", 8, 13, 127, True, "ieee", value_dtype="float32")



def _from_mx(mx: _mx.MXFormat) -> Format:
    """The :class:`Format` of a signed MX element format (no inf, no NaN) of mx_formats."""
    assert mx.signed and mx.nan == "none" and mx.has_zero, mx
    return Format(mx.name, mx.exp_bits, mx.frac_bits, mx.bias, False, "none",
                  has_subnormals=mx.has_subnormals, value_dtype=mx.ml_dtype)


# OCP MX element formats (FP4 / FP6), from their definitions in mx_formats.
FP4_E2M1 = _from_mx(_mx.E2M1)
FP6_E2M3 = _from_mx(_mx.E2M3)
FP6_E3M2 = _from_mx(_mx.E3M2)

FORMATS: dict[str, Format] = {f.name: f for f in (FP64, FP32, TF32, BF16, FP16, E4M3, E5M2, E8M13,
                                                  FP4_E2M1, FP6_E2M3, FP6_E3M2)}
# MX formats that Format cannot represent (no sign bit): get_format names them and refers to
# mx_formats, which decodes and rounds them.
_MX_ONLY = {name: mx for name, mx in _mx.MX_FORMATS.items() if name not in FORMATS}
_ALIASES = {
    "float64": "fp64",
    "float32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "e4m3fn": "e4m3",
    "fp8_e4m3": "e4m3",
    "float8_e4m3fn": "e4m3",
    "fp8_e5m2": "e5m2",
    "float8_e5m2": "e5m2",
    **_mx._ALIASES,  # fp4, float4_e2m1fn, float6_e2m3fn, float6_e3m2fn, e8m0, float8_e8m0fnu
}

# ml_dtypes registers its types by name with numpy only once imported.
assert ml_dtypes.bfloat16 is not None


def get_format(fmt: str | Format) -> Format:
    """Look a format up by name (or pass a Format through); ValueError for unknown names."""
    if isinstance(fmt, Format):
        return fmt
    key = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if key in _MX_ONLY:
        mx = _MX_ONLY[key]
        raise ValueError(
            f"{fmt!r} is the OCP MX scale format {mx.name} (unsigned: no sign bit"
            + (", no zero, no fraction bit, no subnormals" if not mx.has_zero else "")
            + "), which Format cannot represent; use hspi_kernels.numerics.mx_formats "
            f"(get_mx_format({mx.name!r}), decode_mx, round_to_mx)"
        )
    try:
        return FORMATS[key]
    except KeyError:
        raise ValueError(
            f"unknown floating-point format {fmt!r}; known: {sorted(FORMATS)} "
            f"(or build one with make_format(exp_bits, frac_bits); MX scale formats "
            f"{sorted(_MX_ONLY)}: hspi_kernels.numerics.mx_formats)"
        ) from None


def decode(bits, fmt: str | Format) -> np.ndarray:
    """Exact float64 values of bit patterns (integer array-like) of ``fmt``."""
    fmt = get_format(fmt)
    bits = np.asarray(bits)
    if fmt.name == "fp64":
        return bits.astype(np.uint64).view(np.float64)
    if fmt.emax > 1023 or fmt.emin - fmt.frac_bits < -1074 or fmt.frac_bits > 52:
        raise ValueError(f"format {fmt.name!r} is not a subset of float64; decode it with exact.to_fraction")
    drop = fmt.fp32_low_bits
    if drop is not None:  # the pattern is the top of a float32's: widen it (NaN canonical, signed)
        values = (bits.astype(np.uint32) << np.uint32(drop)).view(np.float32).astype(np.float64)
        nan = np.isnan(values)
        return np.where(nan, np.copysign(np.nan, values), values) if nan.any() else values
    pattern = bits.astype(np.int64)
    frac_mask = (1 << fmt.frac_bits) - 1
    negative = (pattern >> (fmt.total_bits - 1)) & 1 == 1
    exp_field = (pattern >> fmt.frac_bits) & fmt.exp_field_max
    frac = pattern & frac_mask

    is_normal = exp_field != 0
    significand = np.where(is_normal, frac | (1 << fmt.frac_bits), frac).astype(np.float64)
    exponent = np.where(is_normal, exp_field, 1) - fmt.bias - fmt.frac_bits
    values = np.ldexp(significand, exponent.astype(np.int32))

    top = exp_field == fmt.exp_field_max
    if fmt.nan_policy == "ieee":
        values = np.where(top & (frac == 0), np.inf, values)
        values = np.where(top & (frac != 0), np.nan, values)
    elif fmt.nan_policy == "fn":
        values = np.where(top & (frac == frac_mask), np.nan, values)
    # "none": every pattern is finite
    return np.where(negative, -values, values)


def same_bits(x, y) -> np.ndarray:
    """Elementwise bit equality of two float arrays of one dtype and shape, every NaN equal to
    every NaN (NaN payloads are part of no plan's contract): the comparison behind every N/N
    count of a kernel against its plan. ValueError when the shapes or dtypes differ."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"same_bits needs one shape and dtype: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
    bits = np.dtype(f"u{x.dtype.itemsize}")
    equal = np.ascontiguousarray(x).view(bits) == np.ascontiguousarray(y).view(bits)
    return equal | (np.isnan(x) & np.isnan(y))

