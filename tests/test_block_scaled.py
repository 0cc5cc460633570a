"""Block-scaled tcgen05 kinds (mxf8f6f4, mxf4, mxf4nvf4/nvfp4): the integer model against an
independent Fraction transcription, the scale-1 case against the tensor_core fp8 preset, and
hand-computed blocks on which the candidate models give different bits (each with the candidate
checked to differ: the negative control)."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest

from hspi_kernels.numerics import block_scaled as BS
from hspi_kernels.numerics import mx_formats as MX
from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.numerics.exact import floor_log2, round_fraction
from hspi_kernels.numerics.formats import decode, get_format
from hspi_kernels.numerics.rounding import round_to_format

F32 = np.float32
EMIN = {"e4m3": -6, "e5m2": -14, "e3m2": -2, "e2m3": 0, "e2m1": 0}


def _scale_value_exp(bits, fmt):
    """(exact value, alignment exponent) of one scale pattern, from the definitions."""
    if fmt == "ue8m0":
        return Fraction(2) ** (int(bits) - 127), int(bits) - 127
    bits = int(bits) & 0x7F
    field, frac = bits >> 3, bits & 7
    if field == 0:
        return Fraction(frac, 8) * Fraction(2) ** -6, (-6 if frac else -126)
    return (8 + frac) * Fraction(2) ** (field - 7 - 3), field - 7


def _align(x: Fraction, emin: int) -> int:
    return max(floor_log2(abs(x)), emin)


def _trunc(q: Fraction, grid: int) -> Fraction:
    unit = Fraction(2) ** grid
    return math.trunc(q / unit) * unit


def _rz32(q: Fraction) -> float:
    return float(np.uint32(round_fraction(q, "fp32", "RZ")).view(F32))


def reference(model, a, b, sa, sb, c, *, F=None, align="scale", post_scale=False):
    """One row through the definitions (Fraction). Candidates: ``F``; ``align="value"`` (a sub-block
    aligns at its own scaled value's exponent, zero sub-blocks skipped); ``post_scale`` (the block
    of unscaled products, then times the scales, then + c in one rounding)."""
    F = model.F if F is None else F
    emin = EMIN[model.in_format]
    scales = [(_scale_value_exp(x, model.scale_format), _scale_value_exp(y, model.scale_format))
              for x, y in zip(sa, sb)]
    terms = []  # (value, alignment exponent)
    if model.term == "product":
        (va, ea), (vb, eb) = scales[0]
        for x, y in zip(a, b):
            if x == 0 or y == 0:
                continue
            fx, fy = Fraction(float(x)), Fraction(float(y))
            if post_scale:
                terms.append((fx * fy, _align(fx, emin) + _align(fy, emin)))
            else:
                terms.append((fx * fy * va * vb, _align(fx, emin) + _align(fy, emin) + ea + eb))
    else:
        for j in range(0, model.K, model.sub_block):
            (va, ea), (vb, eb) = scales[j // model.scale_block]
            s = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a[j:j + 16], b[j:j + 16]))
            v = s * va * vb
            if align == "scale":
                terms.append((v, ea + eb))
            elif v != 0:
                terms.append((v, floor_log2(abs(v))))
    fc = Fraction(float(c))
    if post_scale:
        e = max([t[1] for t in terms], default=-10 ** 6)
        block = sum((_trunc(v, e - F) for v, _ in terms), Fraction(0)) if terms else Fraction(0)
        (va, _), (vb, _) = scales[0]
        return _rz32(_rz_frac(block) * va * vb + fc)
    ec = max(floor_log2(abs(fc)), -126) if fc else -126
    e_max = max([t[1] for t in terms] + [ec, -126])
    total = sum((_trunc(v, e_max - F) for v, _ in terms), Fraction(0)) + _trunc(fc, e_max - F)
    return _rz32(total)


def _rz_frac(q: Fraction) -> Fraction:
    return Fraction(_rz32(q))


def _random_rows(model, n, seed):
    rng = np.random.default_rng(seed)
    if model.in_format in MX.MX_FORMATS:
        pats = MX.mx_values(model.in_format)
        vals = MX.decode_mx(pats, model.in_format)
    else:
        fmt = get_format(model.in_format)
        vals = decode(np.arange(256), fmt)
        vals = vals[np.isfinite(vals) & (np.abs(vals) <= 2.0 ** 6)]
    a = rng.choice(vals, (n, model.K))
    b = rng.choice(vals, (n, model.K))
    a[rng.random(a.shape) < 0.15] = 0
    if model.scale_format == "ue8m0":
        sa = rng.integers(127 - 20, 127 + 20, (n, model.n_scales))
        sb = rng.integers(127 - 20, 127 + 20, (n, model.n_scales))
    else:
        sa = rng.integers(0, 0x7F, (n, model.n_scales))  # every non-NaN ue4m3, zero and subnormals
        sb = rng.integers(0, 0x7F, (n, model.n_scales))
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-12, 12, n)).astype(F32)
    c[rng.random(n) < 0.3] = 0
    # every other row cancels: the second half of K negates the first (same scales), so only c
    # and the truncation errors remain -- where F and the alignment rules show in the bits
    h = model.K // 2
    a[::2, h:] = -a[::2, :h]
    b[::2, h:] = b[::2, :h]
    if model.n_scales > 1:
        m = model.n_scales // 2
        sa[::2, m:] = sa[::2, :m]
        sb[::2, m:] = sb[::2, :m]
    return a, b, sa, sb, c


@pytest.mark.parametrize("name", sorted(BS.SCALED_PRESETS))
def test_integer_model_equals_fraction_transcription(name):
    model = BS.SCALED_PRESETS[name]
    a, b, sa, sb, c = _random_rows(model, 150, seed=hash(name) % 1000)
    got = BS.scaled_block(model, a, b, sa, sb, c)
    want = np.array([reference(model, a[i], b[i], sa[i], sb[i], c[i]) for i in range(len(c))], F32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), np.nonzero(got != want)[0][:5]


def test_fraction_transcription_rejects_a_wrong_F():
    """Negative control for the comparison above: F +- 1 must change some random rows' bits."""
    for name in ("sm_100.tcgen05/mxf8f6f4.e4m3.ue8m0->fp32", "sm_100.tcgen05/mxf4nvf4.e2m1.ue4m3->fp32"):
        model = BS.SCALED_PRESETS[name]
        a, b, sa, sb, c = _random_rows(model, 150, seed=7)
        got = BS.scaled_block(model, a, b, sa, sb, c)
        for dF in (-3, 3):
            wrong = BS.scaled_block(dataclasses.replace(model, F=model.F + dF), a, b, sa, sb, c)
            assert not np.array_equal(got, wrong), (name, dF)


def test_scale_one_is_the_tcgen05_fp8_block():
    """ue8m0 scales of 1 (pattern 127): mxf8f6f4 e4m3/e5m2 is the sm_100 tcgen05 fp8 preset (G=32,
    F=25, RZ), with subnormal operands aligned at emin as MMA-Sim does."""
    for fmt in ("e4m3", "e5m2"):
        model = BS.get_scaled_preset("mxf8f6f4", fmt)
        tc = dataclasses.replace(TC.get_preset("sm_100", fmt, "fp32", "tcgen05"), subnormal_exponent="emin")
        a, b, _, _, c = _random_rows(model, 2000, seed=3)
        ones = np.full((len(c), 1), 127)
        got = BS.scaled_block(model, a, b, ones, ones, c)
        want = TC.block_fma(tc, a.astype(F32), b.astype(F32), c)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        # a power-of-two scale with c = 0 scales the result exactly (no over/underflow here)
        got2 = BS.scaled_block(model, a, b, ones + 3, ones - 1, np.zeros_like(c))
        base = BS.scaled_block(model, a, b, ones, ones, np.zeros_like(c))
        assert np.array_equal(got2, (base * 4).astype(F32))


def _row(model, terms, scales_a, scales_b, c):
    """A one-row block: terms {k: (a, b)}, the rest zero."""
    a = np.zeros((1, model.K))
    b = np.zeros((1, model.K))
    for k, (x, y) in terms.items():
        a[0, k], b[0, k] = x, y
    return a, b, np.array([scales_a]), np.array([scales_b]), np.array([c], F32)


def test_hand_mxf8f6f4_scale_moves_products_against_c():
    """c = 1; 32 products 1.5 * 1 scaled by 2^-26 (ue8m0 101) * 1: each term 0.75 * 2^-25.
    Preset (scale inside the alignment, F = 25): every term truncates to 0 -> d = 1.0.
    F = 26: each term truncates to 2^-26 -> 1 + 4 * 2^-23. Scaling after the block (post_scale):
    the unscaled block is exact, 48 * 2^-26 joins c once -> 1 + 6 * 2^-23. Three models, three
    answers."""
    model = BS.get_scaled_preset("mxf8f6f4", "e4m3")
    a, b, sa, sb, c = _row(model, {k: (1.5, 1.0) for k in range(32)}, [101], [127], 1.0)
    d = float(BS.scaled_block(model, a, b, sa, sb, c)[0])
    assert d == 1.0
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0]) == 1.0
    # F = 26: each term truncates to 2^-26: 1 + 32 * 2^-26 = 1 + 4 * 2^-23
    f26 = 1 + 4 * 2.0 ** -23
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0], F=26) == f26
    assert float(BS.scaled_block(dataclasses.replace(model, F=26), a, b, sa, sb, c)[0]) == f26
    # scale after the block: the exact 48 * 2^-26 = 6 * 2^-23 joins c once
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0], post_scale=True) == 1 + 6 * 2.0 ** -23


def test_hand_mxf8f6f4_scales_raise_emax_above_c():
    """c = 1.0; one product 1 * 1 scaled by 2^30 * 2^0: e_max = 30, grid 2^5, c truncates to 0:
    d = 2^30 exactly (unscaled the product would sit at c's exponent and c would survive)."""
    model = BS.get_scaled_preset("mxf8f6f4", "e5m2")
    a, b, sa, sb, c = _row(model, {0: (1.0, 1.0)}, [157], [127], 1.0)
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 2.0 ** 30
    # exact would be 2^30 + 1, which fp32 RZ also maps to 2^30: use a product that leaves room
    a, b, sa, sb, c = _row(model, {0: (1.0, 1.0)}, [127 + 20], [127], 1.0)
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 2.0 ** 20 + 1  # grid 2^-5: c kept
    # cancellation exposes the grid: 1 - 1 scaled by 2^26 (e_max 26, grid 2^1) plus c = 1: c is
    # truncated to 0, d = +0. Scaling after the block (unscaled block 0, then + c) and F = 27
    # (grid 2^-1) keep c: d = 1.
    a, b, sa, sb, c = _row(model, {0: (1.0, 1.0), 1: (-1.0, 1.0)}, [127 + 26], [127], 1.0)
    d = BS.scaled_block(model, a, b, sa, sb, c)
    assert d.view(np.uint32)[0] == 0  # +0
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0]) == 0.0
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0], post_scale=True) == 1.0
    assert float(BS.scaled_block(dataclasses.replace(model, F=27), a, b, sa, sb, c)[0]) == 1.0
    # the same block at scale 1: c survives in the preset too
    assert float(BS.scaled_block(model, a, b, [[127]], sb, c)[0]) == 1.0


def test_hand_nvfp4_zero_subblock_with_a_large_scale_truncates_the_rest():
    """nvfp4 (ue4m3 per 16): sub-block 0 is all zeros with scales 256 * 256 (alignment 16);
    sub-block 1 holds 0.5 * 0.5 with scales 2^-9 * 2^-9 (subnormal ue4m3 0x01, alignment
    -6 + -6): value 2^-20, grid 2^(16 - 35) = 2^-19 -> truncated: d = 0. Aligning sub-blocks at
    their own value (zero sub-blocks skipped) keeps it: d = 2^-20; without the zero sub-block's
    large scale both give 2^-20."""
    model = BS.get_scaled_preset("mxf4nvf4", "e2m1", "ue4m3")
    s256 = int(MX.round_to_mx([256.0], "ue4m3")[0])
    sa = [s256, 0x01, 0x38, 0x38]
    a, b, _, _, c = _row(model, {16: (0.5, 0.5)}, sa, sa, 0.0)
    sa, sb = np.array([sa]), np.array([sa])
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 0.0
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0]) == 0.0
    assert reference(model, a[0], b[0], sa[0], sb[0], c[0], align="value") == 2.0 ** -20
    sa1 = sa.copy()
    sa1[0, 0] = 0x38  # scale 1
    assert float(BS.scaled_block(model, a, b, sa1, sa1, c)[0]) == 2.0 ** -20


def test_hand_nvfp4_F35_versus_F25():
    """Sub-block 0: zeros, scales 256 * 256 (alignment 16). Sub-block 1: 1 * 1 with scales
    2^-6 * 2^0 (ue4m3 0x08, 0x38): value 2^-6 sits 22 bits below e_max: F = 35 keeps it, F = 25
    keeps it too; at 2^-6 * 2^-6 (28 bits below): F = 35 keeps 2^-12, F = 25 gives 0."""
    model = BS.get_scaled_preset("mxf4nvf4", "e2m1", "ue4m3")
    s256 = int(MX.round_to_mx([256.0], "ue4m3")[0])
    a, b, _, _, c = _row(model, {16: (1.0, 1.0)}, [0], [0], 0.0)
    sa = np.array([[s256, 0x08, 0x38, 0x38]])
    sb = np.array([[s256, 0x08, 0x38, 0x38]])
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 2.0 ** -12
    assert float(BS.scaled_block(dataclasses.replace(model, F=25), a, b, sa, sb, c)[0]) == 0.0


def test_hand_nvfp4_scale_significands_enter_exactly():
    """ue4m3 1.125 (0x39) * 1.375 (0x3B) on a sub-sum of 6 * 6 = 36: d = 55.6875 exactly; the
    sign bit of a ue4m3 scale is ignored (MMA-Sim: abs)."""
    model = BS.get_scaled_preset("mxf4nvf4", "e2m1", "ue4m3")
    a, b, _, _, c = _row(model, {3: (6.0, 6.0)}, [0], [0], 0.0)
    sa = np.array([[0x39, 0x38, 0x38, 0x38]])
    sb = np.array([[0x3B, 0x38, 0x38, 0x38]])
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 36 * 1.125 * 1.375
    assert float(BS.scaled_block(model, a, b, sa | 0x80, sb, c)[0]) == 36 * 1.125 * 1.375
    nan = BS.scaled_block(model, a, b, np.array([[0x7F, 0x38, 0x38, 0x38]]), sb, c)
    assert nan.view(np.uint32)[0] == 0x7FFFFFFF


def test_hand_mxfp4_block32_shares_a_scale_but_not_a_subsum():
    """mxf4 (ue8m0 per 32, K = 64): k = 0 and k = 16 share scale 0 but are two sub-block terms;
    with c = 2^30 (e_max 30, grid 2^-5) and two products 0.5 * 0.5 * 2^-4 = 2^-6 each: each
    truncates to 0 (d = 2^30); one 32-element exact sum would give 2^-5 and survive the grid
    (then lost to fp32 RZ at 2^30 anyway) -- so the distinction shows at c = 2^20 (fp32 quantum
    2^-3, grid 2^-15): here both survive. Checked: F, sharing and the chain of two instructions."""
    model = BS.get_scaled_preset("mxf4", "e2m1")
    a, b, _, _, c = _row(model, {0: (0.5, 0.5), 16: (0.5, 0.5)}, [0], [0], 2.0 ** 20)
    sa = np.array([[127 - 4, 127]])
    sb = np.array([[127, 127]])
    assert float(BS.scaled_block(model, a, b, sa, sb, c)[0]) == 2.0 ** 20  # 2^-5 < fp32 quantum 2^-3
    c0 = np.array([0.0], F32)
    assert float(BS.scaled_block(model, a, b, sa, sb, c0)[0]) == 2.0 ** -5
    two = BS.scaled_chain(model, np.concatenate([a, a], 1), np.concatenate([b, b], 1),
                          np.concatenate([sa, sa], 1), np.concatenate([sb, sb], 1), c0)
    assert float(two[0]) == 2.0 ** -4


def test_element_validation_and_shapes():
    model = BS.get_scaled_preset("mxf8f6f4", "e2m1")
    a = np.full((1, 32), 5.0)  # not an fp4 value
    with pytest.raises(ValueError):
        BS.scaled_block(model, a, a, [[127]], [[127]], [0.0])
    with pytest.raises(ValueError):
        BS.scaled_block(model, np.ones((1, 16)), np.ones((1, 16)), [[127]], [[127]], [0.0])
    with pytest.raises(ValueError):
        BS.get_scaled_preset("mxf4nvf4", "e4m3")


def test_round_to_format_agrees_for_e4m3_elements():
    # the e4m3 element path goes through formats.is_representable: a rounded value is accepted
    x = decode(round_to_format(np.array([0.3, 100.0]), "e4m3", "RNE"), "e4m3")
    BS.element_parts(x, "e4m3")
