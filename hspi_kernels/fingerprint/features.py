"""Bit-level features of floating-point outputs (the native extractor's typed API).

Every function reads the *bit patterns* of its inputs; nothing is converted through float64.

Inputs
------
A numpy array of one of the supported formats:

========  ===============================  =====  ========  =========
format    numpy dtype                      width  exp bits  frac bits
========  ===============================  =====  ========  =========
fp64      float64                          64     11        52
fp32      float32                          32     8         23
fp16      float16                          16     5         10
bf16      ml_dtypes.bfloat16               16     8         7
e4m3      ml_dtypes.float8_e4m3fn          8      4         3   (no Inf; NaN = S.1111.111)
e5m2      ml_dtypes.float8_e5m2            8      5         2
========  ===============================  =====  ========  =========

or an integer view of the raw bits (any signed or unsigned integer dtype of the format's width)
together with ``fmt="bf16"`` (etc.). With a float dtype, ``fmt`` may be omitted; if given it must
name the array's own format.

Arrays of any shape are accepted and results keep the input shape. Non-contiguous (strided,
transposed, Fortran-order) arrays are accepted and copied once to C order. Non-native byte order
is converted to native. Errors (unsupported dtype, integer view without ``fmt``, width mismatch,
shape mismatch between paired arrays, empty arrays, bad options) raise ``ValueError`` naming the
problem.

Features
--------
``fields``                  sign / biased exponent / fraction fields (the HSPI-LD representation)
``ulp_distance``            signed ULP distance on the monotone integer line, NaN/Inf flagged
``ulp_histogram``           fused histogram of ULP distances (clipped integer or log2 bins)
``fraction_bit_frequency``  per-bit frequency of the fraction bits over finite values
``rounding_direction``      -1/0/+1 of a low-precision array against an fp64/fp32 reference
``digest``                  xxh3_64 over dtype, shape and the C-order bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from hspi_kernels.numerics.bits import FORMATS, digest, resolve_format  # noqa: F401  (re-exported)
from hspi_kernels.numerics.formats import Format

__all__ = [
    "FORMATS",
    "RoundingDirections",
    "UlpDistance",
    "UlpHistogram",
    "digest",
    "fields",
    "fraction_bit_frequency",
    "resolve_format",
    "rounding_direction",
    "ulp_distance",
    "ulp_histogram",
]


def _native():
    # Imported lazily: `import hspi_kernels` stays cheap and never triggers a build.
    from hspi_kernels import _native

    return _native


def _bits(x, fmt: str | None, name: str) -> tuple[np.ndarray, Format]:
    """C-contiguous native-order unsigned view of the raw bits (copied only when strided)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(x).__name__}")
    f = resolve_format(x, fmt, name=name)
    if x.size == 0:
        raise ValueError(f"{name}: array is empty (shape {x.shape})")
    if x.dtype.byteorder not in "=|":
        x = x.astype(x.dtype.newbyteorder("="))
    x = np.ascontiguousarray(x)
    return x.view(f.bits_dtype), f


def _pair(a, b, fmt: str | None, names=("a", "b")) -> tuple[np.ndarray, np.ndarray, Format]:
    ua, fa = _bits(a, fmt, names[0])
    ub, fb = _bits(b, fmt, names[1])
    if fa != fb:
        raise ValueError(f"{names[0]} is {fa.name} but {names[1]} is {fb.name}: formats must match")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {names[0]} {a.shape} vs {names[1]} {b.shape}")
    return ua, ub, fa


def _args(f: Format) -> tuple[int, int, int, bool]:
    return f.total_bits, f.exp_bits, f.frac_bits, f.has_inf


# --------------------------------------------------------------------------------------------
# fields
# --------------------------------------------------------------------------------------------
def fields(
    x: np.ndarray,
    fmt: str | None = None,
    *,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sign, exponent, fraction): the raw bit fields, each with the shape of ``x``.

    sign: uint8 in {0, 1}. exponent: the *biased* exponent field (uint8; uint16 for fp64), so
    zeros/subnormals have 0 and Inf/NaN all ones. fraction: the stored fraction bits without the
    implicit leading one, as the unsigned integer of the format's width.

    ``out``: optional preallocated (sign, exponent, fraction) arrays of exactly those dtypes,
    C-contiguous, writeable, with ``x.size`` elements; they are filled and returned (reusing
    them avoids the first-touch cost of fresh allocations when extracting batch after batch).
    """
    u, f = _bits(x, fmt, "x")
    return tuple(_native().features_fields(u, *_args(f), out))


# --------------------------------------------------------------------------------------------
# ULP distance and histogram
# --------------------------------------------------------------------------------------------
A_NAN, A_INF, B_NAN, B_INF = 1, 2, 4, 8


@dataclass(frozen=True)
class UlpDistance:
    """Signed ULP distances ``ord(a) - ord(b)`` in units of the format.

    ``ord`` maps a bit pattern to the integer line: +magnitude bits for positive values,
    -magnitude bits for negative ones, so +0 and -0 are both 0, adjacent floats differ by 1, and a
    sign crossing counts the steps on both sides of zero. ``distance > 0`` means ``a`` lies above
    ``b``. fp64 distances beyond int64 saturate to ±(2^63 - 1).

    ``special`` (uint8 flags, same shape): ``A_NAN`` 1, ``A_INF`` 2, ``B_NAN`` 4, ``B_INF`` 8.
    Where any flag is set, ``distance`` is 0 and carries no meaning.
    """

    distance: np.ndarray
    special: np.ndarray
    format: Format

    @property
    def finite(self) -> np.ndarray:
        """Mask of pairs where both values are finite (the distance is meaningful)."""
        return self.special == 0

    @property
    def n_special(self) -> int:
        return int(np.count_nonzero(self.special))


def ulp_distance(a: np.ndarray, b: np.ndarray, fmt: str | None = None) -> UlpDistance:
    """Signed ULP distance of ``a`` from ``b`` (same format, same shape); see :class:`UlpDistance`."""
    ua, ub, f = _pair(a, b, fmt)
    dist, special = _native().features_ulp_distance(ua, ub, *_args(f))
    return UlpDistance(dist, special, f)


@dataclass(frozen=True)
class UlpHistogram:
    """Histogram of ``ord(a) - ord(b)`` over the pairs where both values are finite.

    Bin ``i`` covers the closed integer range ``[lo[i], hi[i]]``.
    ``mode="int"``: ``2*clip + 1`` bins, one per distance in ``[-clip, clip]``; the end bins also
    hold everything beyond (``lo[0]`` and ``hi[-1]`` are the int64 extremes).
    ``mode="log2"``: ``2*W + 1`` bins for a W-bit format; the middle bin is distance 0, bin
    ``W + k`` holds ``2^(k-1) <= d <= 2^k - 1`` and bin ``W - k`` the mirror image (fp64:
    distances saturate at 2^63 - 1, so the two outermost bins stay empty).
    Pairs with a NaN or Inf on either side are not binned; they are counted in ``n_special``.
    """

    counts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_special: int
    mode: str
    format: Format

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.n_special


def ulp_histogram(
    a: np.ndarray,
    b: np.ndarray,
    fmt: str | None = None,
    *,
    mode: Literal["int", "log2"] = "log2",
    clip: int = 16,
) -> UlpHistogram:
    """Fused histogram of the signed ULP distances of ``a`` from ``b``; see :class:`UlpHistogram`.

    ``clip`` (0..2^24) is used by ``mode="int"`` only.
    """
    if mode not in ("int", "log2"):
        raise ValueError(f"mode must be 'int' or 'log2', got {mode!r}")
    if mode == "int" and not (isinstance(clip, (int, np.integer)) and 0 <= clip <= 1 << 24):
        raise ValueError(f"clip must be an integer in [0, 2^24], got {clip!r}")
    ua, ub, f = _pair(a, b, fmt)
    counts, n_special = _native().features_ulp_histogram(ua, ub, *_args(f), mode, int(clip))
    i64 = np.iinfo(np.int64)
    if mode == "int":
        lo = np.arange(-clip, clip + 1, dtype=np.int64)
        hi = lo.copy()
        lo[0], hi[-1] = i64.min, i64.max
    else:
        k = np.arange(1, f.total_bits + 1, dtype=object)
        pos_lo = np.array([min(1 << (j - 1), i64.max) for j in k], dtype=object)
        pos_hi = np.array([min((1 << j) - 1, i64.max) for j in k], dtype=object)
        lo = np.concatenate([-pos_hi[::-1], [0], pos_lo]).astype(np.int64)
        hi = np.concatenate([-pos_lo[::-1], [0], pos_hi]).astype(np.int64)
    return UlpHistogram(counts, lo, hi, int(n_special), mode, f)


# --------------------------------------------------------------------------------------------
# fraction bits
# --------------------------------------------------------------------------------------------
def fraction_bit_frequency(x: np.ndarray, fmt: str | None = None) -> np.ndarray:
    """Frequency of 1s at each fraction bit, float64 array of length ``frac_bits``.

    Index 0 is the most significant stored fraction bit (weight 2^-1), index ``frac_bits - 1``
    the least significant. Computed over the finite values only: NaN and Inf are excluded;
    zeros and subnormals are included. If no value is finite the result is all NaN.
    """
    u, f = _bits(x, fmt, "x")
    counts, n_finite = _native().features_bit_counts(u, *_args(f))
    frac = counts[: f.frac_bits][::-1].astype(np.float64)  # native counts are LSB first
    if n_finite == 0:
        return np.full(f.frac_bits, np.nan)
    return frac / float(n_finite)


# --------------------------------------------------------------------------------------------
# rounding direction
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundingDirections:
    """Sign of ``low - high_ref`` as exact real numbers, per element (int8, shape of ``low``).

    +1: the low-precision value lies above the reference (rounded up, toward +Inf);
    0: equal; -1: below. Infinities compare as values (an overflow to +Inf is +1).
    Where either side is NaN, ``direction`` is 0 and ``nan`` is True.
    """

    direction: np.ndarray
    nan: np.ndarray
    down: int
    exact: int
    up: int
    n_nan: int

    def counts(self) -> dict[str, int]:
        return {"down": self.down, "exact": self.exact, "up": self.up, "nan": self.n_nan}


def rounding_direction(
    low: np.ndarray,
    high_ref: np.ndarray,
    fmt_low: str | None = None,
) -> RoundingDirections:
    """Direction in which each ``low`` value was rounded relative to ``high_ref`` (fp64 or fp32).

    ``low`` may be any supported format whose values ``high_ref``'s format contains, i.e. not
    fp64 against an fp32 reference. Values are compared exactly (``low`` is decoded exactly into
    fp64 inside the extractor).
    """
    ul, fl = _bits(low, fmt_low, "low")
    if not isinstance(high_ref, np.ndarray):
        raise ValueError(f"high_ref: expected a numpy array, got {type(high_ref).__name__}")
    fr = resolve_format(high_ref, None, name="high_ref")
    if fr.name not in ("fp64", "fp32"):
        raise ValueError(f"high_ref must be fp64 or fp32, got {fr.name}")
    if fl.name == "fp64" and fr.name == "fp32":
        raise ValueError("low is fp64 but high_ref is fp32: the reference must be at least as precise")
    if low.shape != high_ref.shape:
        raise ValueError(f"shape mismatch: low {low.shape} vs high_ref {high_ref.shape}")
    ur, _ = _bits(high_ref, None, "high_ref")
    direction, nan, counts = _native().features_rounding_direction(
        ul, ur.view(fr.numpy_dtype), *_args(fl), fr.total_bits
    )
    down, exact, up, n_nan = (int(c) for c in counts)
    return RoundingDirections(direction, nan, down, exact, up, n_nan)


# --------------------------------------------------------------------------------------------
# digest
# --------------------------------------------------------------------------------------------
