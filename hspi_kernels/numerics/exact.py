"""Slow, obviously-correct reference arithmetic on ``fractions.Fraction`` (tests only).

Written independently of :mod:`rounding`: it works on one rational number at a time and
follows the definitions directly (find the binade, the grid spacing, the two neighbours on the
grid, pick one), so agreement between the two is evidence, not tautology. Same overflow and NaN
conventions as :mod:`rounding` (see its docstring): beyond the largest finite value IEEE formats
go to ±inf (RNE/RNA, and RU/RD on their side), e4m3 "fn" to NaN there, and the formats with
neither inf nor NaN (e2m1, e2m3, e3m2) saturate to ±max finite in every mode. NaN is represented by ``None`` here,
infinities by the strings ``"+inf"`` / ``"-inf"``.
"""

from __future__ import annotations

from fractions import Fraction

from .formats import Format, get_format

__all__ = ["to_fraction", "round_fraction", "floor_log2"]


def to_fraction(bits: int, fmt: str | Format):
    """Exact value of one bit pattern: a Fraction (``-0`` comes back as ``Fraction(0)``), or
    ``"+inf"`` / ``"-inf"``, or ``None`` for NaN."""
    fmt = get_format(fmt)
    bits = int(bits)
    negative = (bits >> (fmt.total_bits - 1)) & 1
    exp_field = (bits >> fmt.frac_bits) & fmt.exp_field_max
    frac = bits & ((1 << fmt.frac_bits) - 1)
    if exp_field == fmt.exp_field_max:
        if fmt.nan_policy == "ieee":
            if frac:
                return None
            return "-inf" if negative else "+inf"
        if fmt.nan_policy == "fn" and frac == (1 << fmt.frac_bits) - 1:  # "none": every pattern finite
            return None
    if exp_field == 0:
        value = Fraction(frac) * Fraction(2) ** (fmt.emin - fmt.frac_bits)
    else:
        value = Fraction(frac + (1 << fmt.frac_bits)) * Fraction(2) ** (exp_field - fmt.bias - fmt.frac_bits)
    return -value if negative else value


def floor_log2(q: Fraction) -> int:
    """Largest e with 2^e <= q, for q > 0."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    while Fraction(2) ** e > q:
        e -= 1
    while Fraction(2) ** (e + 1) <= q:
        e += 1
    return e


def _pattern(negative: bool, magnitude_bits: int, fmt: Format) -> int:
    return magnitude_bits | ((1 << (fmt.total_bits - 1)) if negative else 0)


def round_fraction(q: Fraction, fmt: str | Format, mode: str = "RNE", negative_zero: bool = False) -> int:
    """Bit pattern of ``fmt`` for the exact rational ``q`` rounded per ``mode``.

    ``negative_zero`` gives the sign of a zero ``q`` (Fractions have no -0).
    """
    fmt = get_format(fmt)
    F = fmt.frac_bits
    if q == 0:
        return _pattern(negative_zero, 0, fmt)
    negative = q < 0
    size = -q if negative else q

    # Grid spacing of the binade holding |q| (the subnormal range shares the emin spacing).
    spacing = Fraction(2) ** (max(floor_log2(size), fmt.emin) - F)
    lower = (size // spacing) * spacing
    upper = lower + spacing if lower != size else lower
    if lower == size:
        chosen = lower
    else:
        midpoint = (lower + upper) / 2
        toward_plus_inf = upper if not negative else lower  # in magnitude terms
        toward_minus_inf = lower if not negative else upper
        if mode == "RZ":
            chosen = lower
        elif mode == "RU":
            chosen = toward_plus_inf
        elif mode == "RD":
            chosen = toward_minus_inf
        elif size != midpoint:
            chosen = lower if size < midpoint else upper
        elif mode == "RNA":
            chosen = upper
        elif mode == "RNE":
            chosen = lower if (lower / spacing) % 2 == 0 else upper
        else:
            raise ValueError(f"unknown rounding mode {mode!r}")

    max_finite = Fraction(fmt.max_significand) * Fraction(2) ** (fmt.emax - F)
    if chosen > max_finite:
        goes_infinite = {"RNE": True, "RNA": True, "RZ": False, "RU": not negative, "RD": negative}[mode]
        if not goes_infinite:
            return _pattern(negative, fmt.max_finite_bits, fmt)
        # IEEE: inf; no inf but a NaN (e4m3 "fn", ml_dtypes' non-saturating float8_e4m3fn): NaN;
        # neither (the MX FP4/FP6 elements, nan_policy "none"): saturate to max finite
        beyond = fmt.inf_bits if fmt.has_inf else fmt.nan_bits if fmt.has_nan else fmt.max_finite_bits
        return _pattern(negative, beyond, fmt)

    if chosen < Fraction(2) ** fmt.emin:  # subnormal (or zero)
        return _pattern(negative, int(chosen / Fraction(2) ** (fmt.emin - F)), fmt)
    e = floor_log2(chosen)
    significand = chosen / Fraction(2) ** (e - F)
    assert significand.denominator == 1
    return _pattern(negative, ((e + fmt.bias) << F) | (int(significand) - (1 << F)), fmt)
