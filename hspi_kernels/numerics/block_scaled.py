"""Block-scaled MMA of Blackwell (``tcgen05.mma ... .block_scale``, sm_100a/sm_103a; also
``mma.sync ... .block_scale`` on sm_120a): literature models, no hardware bits here.

Kinds (NVIDIA PTX ISA, ``tcgen05.mma`` "kind::mxf8f6f4 / kind::mxf4 / kind::mxf4nvf4" and the
``scale_vec`` qualifiers; OCP MX v1.0 for the formats):

====================  ===========================  ======  =====  ============  ===
kind                  elements                     K/inst  scale  block along K  F
====================  ===========================  ======  =====  ============  ===
mxf8f6f4 (1X)         e4m3, e5m2, e3m2, e2m3, e2m1  32      ue8m0  32             25
mxf4 (2X)             e2m1                          64      ue8m0  32             35
mxf4nvf4 (2X)         e2m1                          64      ue8m0  32             35
mxf4nvf4 (4X), nvfp4  e2m1                          64      ue4m3  16             35
====================  ===========================  ======  =====  ============  ===

The arithmetic is MMA-Sim's (``mmasim/simulator/arithmetic.py``: ``nv_fused_dot_add`` with
``scale_a``/``scale_b`` for k = 32, ``nv_fused_dot_add_with_block_scale`` for k = 64;
``n_accum_fractional_bits = 35 if k == 64 else 25``; fp32 output RZ), re-implemented here on
integers:

- ``term="product"`` (mxf8f6f4): one scale pair per instruction row. Every product is a term,
  exact, with the alignment exponent ``e_a + e_b + E_sa + E_sb`` (element exponents at their
  format's emin when subnormal, the scales' exponents): the scales are applied to the products
  exactly *before* alignment, so they move the products against ``c``. Then the block model of
  :mod:`tensor_core`: ``e_max`` over the terms and c, every term truncated toward zero onto
  ``2^(e_max - F)``, exact sum, one RZ rounding to fp32.
- ``term="subblock"`` (mxf4 / mxf4nvf4): per 16 elements along K the products are summed
  exactly (fp4 products are exact and 16 of them add exactly), the sub-sum is multiplied by the
  two scale significands (exact), and the term's alignment exponent is ``E_sa + E_sb`` -- the
  *scales'* exponents only, whatever the sub-sum's own magnitude (a zero sub-sum still takes
  part: MMA-Sim appends every sub-block). Block size 32 (ue8m0) means two sub-blocks share a
  scale pair. Then as above with F = 35.
- ``c`` (fp32) aligns at ``max(floor(log2|c|), -126)``; a zero c at -126 (MMA-Sim's
  ``extract_significand_exponent``), which acts as an e_max floor of -126 (``emax_floor``).
- ue4m3 scales: the sign bit is ignored (MMA-Sim takes ``abs``); a subnormal scale aligns at
  e4m3's emin -6; a zero scale at -126 (MMA-Sim's zero rule). A NaN scale or a NaN c gives NaN
  (0x7FFFFFFF); ue8m0 0xFF is NaN.
- Zero *elements* (``term="product"``): here a zero product takes no part in e_max (the rule
  :mod:`tensor_core` uses and our H100 data supports for fp8). MMA-Sim instead gives a zero
  element the exponent -126, which matters only when every product is zero or the scales are
  huge; ``zero_products="mmasim"`` gives that variant.
- A zero result is +0 (MMA-Sim's integer truncation never yields -0; the Hopper rule).

Everything here is **literature only**: no public block-scaled hardware vectors, no own GPU
runs. The tests (``tests/test_block_scaled.py``) check the integer implementation against an
independent Fraction transcription and give hand-computed blocks on which the candidate models
(scale before vs after the fused sum, alignment by scale vs by value, F = 25 vs 35, zero
handling) give different bits, so one run on a B200 decides between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .formats import FP32, get_format
from .rounding import is_representable as _is_representable
from .mx_formats import MX_FORMATS, UE4M3, decode_mx, get_mx_format
from .rounding import round_scaled

__all__ = ["ScaledBlockModel", "SCALED_PRESETS", "get_scaled_preset", "scaled_block", "scaled_chain",
           "element_parts", "scale_parts"]

_NAN32 = 0x7FFFFFFF
_ELEMENTS = ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1")
_MMASIM = ("MMA-Sim (Microsoft) 2025, mmasim/simulator/arithmetic.py: nv_fused_dot_add (scale_a, scale_b), "
           "nv_fused_dot_add_with_block_scale; nv_ptx.py tcgen05mma_block_scale (F = 35 if k == 64 else 25)")
_PTX = "NVIDIA PTX ISA, tcgen05.mma .kind::{mxf8f6f4, mxf4, mxf4nvf4} .block_scale .scale_vec::{1X,2X,4X}"


@dataclass(frozen=True)
class ScaledBlockModel:
    name: str
    arch: str
    kind: str  # "mxf8f6f4" | "mxf4" | "mxf4nvf4"
    in_format: str  # element format
    scale_format: str  # "ue8m0" | "ue4m3"
    K: int  # elements per instruction along K
    scale_block: int  # elements per scale along K
    F: int
    term: str  # "product" | "subblock"
    source: str
    sub_block: int = 16  # term="subblock": elements per exact sub-sum
    emax_floor: int | None = -126  # a zero c aligns at -126 (MMA-Sim)
    zero_products: str = "skip"  # "skip" | "mmasim" (a zero element at exponent -126)
    out_format: str = "fp32"
    out_rounding: str = "RZ"

    def __post_init__(self) -> None:
        if self.in_format not in _ELEMENTS:
            raise ValueError(f"{self.name}: element format must be one of {_ELEMENTS}")
        if self.scale_format not in ("ue8m0", "ue4m3"):
            raise ValueError(f"{self.name}: scale format must be ue8m0 or ue4m3")
        if self.term not in ("product", "subblock") or self.zero_products not in ("skip", "mmasim"):
            raise ValueError(f"{self.name}: bad term / zero_products")
        if self.K % self.scale_block or (self.term == "subblock" and self.scale_block % self.sub_block):
            raise ValueError(f"{self.name}: K, scale_block, sub_block must nest")

    @property
    def n_scales(self) -> int:
        return self.K // self.scale_block

    def to_json(self) -> dict:
        return asdict(self)


def _preset(kind, elem, scale, K, block, F, term, note):
    return ScaledBlockModel(f"sm_100.tcgen05/{kind}.{elem}.{scale}->fp32", "sm_100", kind, elem, scale, K, block, F,
                            term, f"{_MMASIM}; {_PTX}; {note}; literature only")


def _build() -> dict[str, ScaledBlockModel]:
    ms = [_preset("mxf8f6f4", e, "ue8m0", 32, 32, 25, "product", "mxfp8 / mxfp6 / mxfp4 in 8-bit containers")
          for e in _ELEMENTS]
    ms.append(_preset("mxf4", "e2m1", "ue8m0", 64, 32, 35, "subblock", "mxfp4 (scale_vec::2X)"))
    ms.append(_preset("mxf4nvf4", "e2m1", "ue8m0", 64, 32, 35, "subblock", "mxfp4 (scale_vec::2X)"))
    ms.append(_preset("mxf4nvf4", "e2m1", "ue4m3", 64, 16, 35, "subblock", "nvfp4 (scale_vec::4X)"))
    # mxf4nvf4 with ue8m0 computes like mxf4: keep one name per distinct (kind, scale) pair
    return {m.name: m for m in ms}


SCALED_PRESETS: dict[str, ScaledBlockModel] = _build()


def get_scaled_preset(kind: str, in_format: str = "e2m1", scale_format: str = "ue8m0") -> ScaledBlockModel:
    name = f"sm_100.tcgen05/{kind}.{in_format}.{scale_format}->fp32"
    if name not in SCALED_PRESETS:
        raise ValueError(f"no block-scaled preset {name!r}; known: {sorted(SCALED_PRESETS)}")
    return SCALED_PRESETS[name]


# -- exact decompositions ---------------------------------------------------------------------------
def _element_format(name):
    if name in MX_FORMATS:
        f = get_mx_format(name)
        return f.frac_bits, f.emin
    f = get_format(name)
    return f.frac_bits, f.emin


def element_parts(x, fmt: str):
    """(sign, M, E, zero, inf, nan) of element values: x = (-1)^sign * M * 2^(E - f), E the
    alignment exponent max(floor(log2|x|), emin) (subnormals at emin), M an integer."""
    x = np.asarray(x, np.float64)
    if fmt in MX_FORMATS:
        back = decode_mx(_mx_round_exact(x, fmt), fmt)
        ok = back == x
    else:
        ok = _is_representable(x, fmt) | np.isinf(x) | np.isnan(x)
    if not np.all(ok):
        raise ValueError(f"{int(np.sum(~ok))} element(s) not representable in {fmt}, e.g. {x[~ok].flat[0]!r}")
    f, emin = _element_format(fmt)
    nan, inf = np.isnan(x), np.isinf(x)
    ax = np.where(nan | inf, 0.0, np.abs(x))
    zero = ax == 0
    _, ex = np.frexp(np.where(zero, 1.0, ax))
    E = np.maximum(ex.astype(np.int64) - 1, emin)
    M = np.ldexp(ax, (f - E).astype(np.int32)).astype(np.int64)
    return np.signbit(x).astype(np.int64), M, E, zero, inf, nan


def _mx_round_exact(x, fmt):
    from .mx_formats import round_to_mx

    finite = np.where(np.isfinite(x), x, 0.0)
    return round_to_mx(finite, fmt, "RZ")


def scale_parts(bits, fmt: str):
    """(S, E, s_frac_bits, nan) of scale bit patterns: value = S * 2^(E - s_frac_bits), E the
    alignment exponent (ue4m3 subnormal at emin -6, a zero scale at -126 as MMA-Sim)."""
    fmt = get_mx_format(fmt)
    p = np.asarray(bits).astype(np.int64)
    if fmt is UE4M3:
        p = p & 0x7F  # sign bit ignored
    v = decode_mx(p, fmt)
    nan = np.isnan(v)
    av = np.where(nan, 1.0, v)
    zero = av == 0
    _, ex = np.frexp(np.where(zero, 1.0, av))
    E = np.maximum(ex.astype(np.int64) - 1, fmt.emin)
    S = np.ldexp(av, (fmt.frac_bits - E).astype(np.int32)).astype(np.int64)
    E = np.where(zero, -126, E)
    return S, E, fmt.frac_bits, nan


# -- the block -------------------------------------------------------------------------------------
def _c_parts(c):
    c = np.asarray(c, np.float32)
    bits = c.view(np.uint32).astype(np.int64)
    sign = bits >> 31
    field = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    nan = (field == 0xFF) & (frac != 0)
    inf = (field == 0xFF) & (frac == 0)
    M = np.where(field == 0, frac, frac | (1 << 23))
    E = np.where(field == 0, -126, field - 127)  # the alignment exponent (subnormal: -126)
    M = np.where(inf | nan, 0, M)
    # a subnormal c keeps its value M * 2^(-126 - 23) with M < 2^23: aligned at -126 (MMA-Sim)
    return sign, M, E, M == 0, inf, nan


def _trunc(mag, lsb, grid):
    """Integer multiples of 2^grid of mag * 2^lsb, truncated toward zero (mag >= 0)."""
    shift = lsb - grid
    down = np.minimum(np.maximum(-shift, 0), 63)
    up = np.maximum(shift, 0)
    if np.any(up > 62):
        raise OverflowError("term shift beyond int64")
    return (mag >> down) << up


def scaled_block(model: ScaledBlockModel, a, b, scale_a, scale_b, c) -> np.ndarray:
    """One instruction per row: ``a, b`` element values float [N, K]; ``scale_a, scale_b`` scale bit
    patterns [N, K / scale_block]; ``c`` float32 [N]. Returns float32 [N] (fp32 RZ)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    N = a.shape[0]
    if a.shape != (N, model.K) or b.shape != a.shape:
        raise ValueError(f"{model.name}: a, b must be [N, {model.K}], got {a.shape}, {b.shape}")
    sa = np.asarray(scale_a).reshape(N, -1)
    sb = np.asarray(scale_b).reshape(N, -1)
    if sa.shape[1] != model.n_scales or sb.shape[1] != model.n_scales:
        raise ValueError(f"{model.name}: scales must be [N, {model.n_scales}]")
    c = np.asarray(c, np.float32).reshape(N)

    xa, Ma, Ea, za, ia, na = element_parts(a, model.in_format)
    xb, Mb, Eb, zb, ib, nb = element_parts(b, model.in_format)
    f, emin = _element_format(model.in_format)
    Sa, SEa, fs, nsa = scale_parts(sa, model.scale_format)
    Sb, SEb, _, nsb = scale_parts(sb, model.scale_format)
    cs, cM, cE, cz, ci, cn = _c_parts(c)
    per = np.arange(model.K) // model.scale_block  # scale index of each k
    S = Sa[:, per] * Sb[:, per]  # scale significand product per k
    SE = SEa[:, per] + SEb[:, per]

    very_low = np.iinfo(np.int64).min // 4
    p_sign = xa ^ xb
    p_zero = za | zb
    if model.term == "product":
        mag = Ma * Mb * S  # value = mag * 2^(Ea + Eb + SE - 2f - 2fs)
        lsb = Ea + Eb + SE - 2 * f - 2 * fs
        align = Ea + Eb + SE
        if model.zero_products == "mmasim":  # a zero element sits at -126
            align = np.where(za, -126, Ea) + np.where(zb, -126, Eb) + SE
            live = np.ones_like(p_zero)
        else:
            live = ~p_zero
        signed = np.where(p_sign == 1, -mag, mag)
        t_align = np.where(live, align, very_low)
        t_lsb, t_mag, t_sign = lsb, np.abs(signed), (signed < 0)
    else:
        g = model.sub_block
        prod = np.where(p_sign == 1, -1, 1) * Ma * Mb  # at 2^(Ea + Eb - 2f): bring to a common lsb
        lsb_e = Ea + Eb - 2 * f
        base = 2 * emin - 2 * f
        prod = prod << (lsb_e - base)
        sub = prod.reshape(N, -1, g).sum(axis=-1)  # exact sub-sums at 2^base
        first = np.arange(0, model.K, g)
        Sj, SEj = S[:, first], SE[:, first]
        signed = sub * Sj
        t_mag, t_sign = np.abs(signed), signed < 0
        t_lsb = base + SEj - 2 * fs
        t_align = SEj  # the scales' exponents alone; every sub-block takes part

    e_max = np.max(t_align, axis=-1)
    e_max = np.maximum(e_max, np.where(cz, very_low, cE))
    if model.emax_floor is not None:
        e_max = np.maximum(e_max, model.emax_floor)
    grid = e_max - model.F
    terms = _trunc(t_mag, t_lsb, grid[:, None])
    total = np.sum(np.where(t_sign, -terms, terms), axis=-1)
    c_term = _trunc(cM, cE - 23, grid)
    total = total + np.where(cs == 1, -c_term, c_term)

    out_bits = round_scaled((total < 0).astype(np.int64), np.abs(total), grid, FP32, model.out_rounding)
    out = out_bits.astype(np.uint32).view(np.float32)
    out = np.where(out == 0, np.float32(0.0), out)  # zero results are +0
    # specials: infinite elements (e5m2) follow IEEE; NaN anywhere gives NaN
    p_inf = (ia | ib) & ~p_zero
    pos_inf = np.any(p_inf & (p_sign == 0), axis=-1) | (ci & (cs == 0))
    neg_inf = np.any(p_inf & (p_sign == 1), axis=-1) | (ci & (cs == 1))
    nan = (np.any(na | nb | ((ia | ib) & p_zero), axis=-1) | cn | np.any(nsa, axis=-1) | np.any(nsb, axis=-1)
           | (pos_inf & neg_inf))
    out = np.where(pos_inf, np.float32(np.inf), out)
    out = np.where(neg_inf, np.float32(-np.inf), out)
    return np.where(nan, np.uint32(_NAN32).view(np.float32), out).astype(np.float32)


def scaled_chain(model: ScaledBlockModel, a, b, scale_a, scale_b, c=None) -> np.ndarray:
    """A K-long dot product as instructions k = 0, K_inst, ... in order, each fp32 output the next
    c (a tcgen05 accumulator in tensor memory). a, b [N, K]; scales [N, K / scale_block]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    N, K = a.shape
    if K % model.K or K == 0:
        raise ValueError(f"{model.name}: K={K} is not a positive multiple of {model.K}")
    sa = np.asarray(scale_a).reshape(N, -1)
    sb = np.asarray(scale_b).reshape(N, -1)
    acc = np.zeros(N, np.float32) if c is None else np.asarray(c, np.float32)
    per = model.n_scales
    for i, k0 in enumerate(range(0, K, model.K)):
        acc = scaled_block(model, a[:, k0:k0 + model.K], b[:, k0:k0 + model.K],
                           sa[:, i * per:(i + 1) * per], sb[:, i * per:(i + 1) * per], acc)
    return acc

