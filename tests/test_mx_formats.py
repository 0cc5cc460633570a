"""MX element/scale formats: every bit pattern decoded against ml_dtypes and the OCP tables,
round trips, every midpoint in every mode, saturation; negative controls."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import mx_formats as MX

ALL = sorted(MX.MX_FORMATS)


def _patterns(fmt):
    return MX.mx_values(fmt)


@pytest.mark.parametrize("name", ALL)
def test_decode_every_pattern_equals_ml_dtypes(name):
    fmt = MX.get_mx_format(name)
    bits = _patterns(fmt)
    ours = MX.decode_mx(bits, fmt)
    ref = bits.astype(np.uint8).view(MX.ml_dtype_of(fmt)).astype(np.float64)
    same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
    assert same.all(), bits[~same]
    assert np.array_equal(np.signbit(ours[~np.isnan(ours)]), np.signbit(ref[~np.isnan(ref)]))


def test_decode_published_tables():
    # OCP MX v1.0 table 5 (FP4) and the fp6 / scale extremes
    assert MX.decode_mx(np.arange(8), "e2m1").tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert MX.E2M3.max_finite == 7.5 and MX.decode_mx([1], "e2m3")[0] == 0.125
    assert MX.E3M2.max_finite == 28 and MX.decode_mx([1], "e3m2")[0] == 0.0625
    assert MX.decode_mx([0, 127, 254], "ue8m0").tolist() == [2.0 ** -127, 1.0, 2.0 ** 127]
    assert np.isnan(MX.decode_mx([255], "ue8m0")[0]) and np.isnan(MX.decode_mx([127], "ue4m3")[0])
    assert MX.UE4M3.max_finite == 448
    with pytest.raises(ValueError):
        MX.decode_mx([128], "ue4m3")  # unsigned: 7-bit patterns


@pytest.mark.parametrize("name", ALL)
def test_round_trip_every_pattern(name):
    fmt = MX.get_mx_format(name)
    bits = _patterns(fmt)
    vals = MX.decode_mx(bits, fmt)
    ok = ~np.isnan(vals)
    for mode in ("RNE", "RZ", "RU", "RD", "RNA"):
        back = MX.round_to_mx(vals[ok], fmt, mode)
        assert np.array_equal(back.astype(np.int64), bits[ok]), (mode, bits[ok][back != bits[ok]])
    if fmt.nan_bits is not None:
        assert int(MX.round_to_mx([np.nan], fmt)[0]) == fmt.nan_bits


def _neighbours(fmt):
    """Sorted distinct non-negative finite values and their patterns."""
    bits = _patterns(fmt)
    vals = MX.decode_mx(bits, fmt)
    keep = ~np.isnan(vals) & ~np.signbit(vals)
    v, idx = np.unique(vals[keep], return_index=True)
    return v, bits[keep][idx]


@pytest.mark.parametrize("name", ALL)
def test_every_midpoint_in_every_mode(name):
    fmt = MX.get_mx_format(name)
    v, b = _neighbours(fmt)
    lo, hi, blo, bhi = v[:-1], v[1:], b[:-1], b[1:]
    mid = (lo + hi) / 2  # exact in float64
    # RNE: the even pattern (ue8m0, no fraction bit: the upper power of two, see the module doc)
    even_lo = (blo & 1) == 0 if fmt.frac_bits else np.zeros(lo.shape, bool)
    want_rne = np.where(even_lo, blo, bhi)
    assert np.array_equal(MX.round_to_mx(mid, fmt, "RNE"), want_rne)
    assert np.array_equal(MX.round_to_mx(mid, fmt, "RNA"), bhi)
    assert np.array_equal(MX.round_to_mx(mid, fmt, "RZ"), blo)
    assert np.array_equal(MX.round_to_mx(mid, fmt, "RD"), blo)
    assert np.array_equal(MX.round_to_mx(mid, fmt, "RU"), bhi)
    eps = (hi - lo) / 1024
    assert np.array_equal(MX.round_to_mx(mid - eps, fmt, "RNE"), blo)
    assert np.array_equal(MX.round_to_mx(mid + eps, fmt, "RNE"), bhi)
    if fmt.signed:  # the mirror image
        assert np.array_equal(MX.round_to_mx(-mid, fmt, "RNE"), want_rne | fmt.sign_mask)
        assert np.array_equal(MX.round_to_mx(-mid, fmt, "RD"), bhi | fmt.sign_mask)
        assert np.array_equal(MX.round_to_mx(-mid, fmt, "RU"), blo | fmt.sign_mask)
    # negative control: ties-away differs from RNE on some midpoint of every format with a
    # fraction bit (so the RNE check above would catch an RNA implementation)
    if fmt.frac_bits:
        assert not np.array_equal(MX.round_to_mx(mid, fmt, "RNA"), want_rne)


@pytest.mark.parametrize("name", ALL)
def test_rne_equals_ml_dtypes_cast_on_a_dense_sweep(name):
    """ml_dtypes' casts round RNE and saturate for FP4/FP6 (ue4m3: non-saturating e4m3fn)."""
    fmt = MX.get_mx_format(name)
    rng = np.random.default_rng(1)
    v, _ = _neighbours(fmt)
    mids = (v[:-1] + v[1:]) / 2
    x = np.concatenate([rng.uniform(0, fmt.max_finite * 1.2, 20000), v, mids,
                        np.nextafter(mids, 0), np.nextafter(mids, np.inf)]).astype(np.float32)
    x = x[x > 0]
    if name == "ue8m0":
        x = x[(x >= 2.0 ** -127)]
    if name == "ue4m3":
        x = x[x < 464]  # beyond: e4m3fn NaN, our default saturates (checked below)
    ref = x.astype(MX.ml_dtype_of(fmt)).view(np.uint8)
    ours = MX.round_to_mx(x, fmt, "RNE")
    assert np.array_equal(ours, ref), x[ours != ref][:5]
    if fmt.signed:
        assert np.array_equal(MX.round_to_mx(-x, fmt, "RNE"), (-x).astype(MX.ml_dtype_of(fmt)).view(np.uint8))


def test_saturation_and_overflow():
    assert MX.decode_mx(MX.round_to_mx([7, 1e9, np.inf, -np.inf], "e2m1"), "e2m1").tolist() == [6, 6, 6, -6]
    assert MX.decode_mx(MX.round_to_mx([1e9], "e3m2"), "e3m2")[0] == 28
    with pytest.raises(ValueError):
        MX.round_to_mx([7.0], "e2m1", saturate=False)  # no inf/NaN encoding
    with pytest.raises(ValueError):
        MX.round_to_mx([np.nan], "e2m3")
    assert int(MX.round_to_mx([500.0], "ue4m3", saturate=False)[0]) == 0x7F
    assert int(MX.round_to_mx([500.0], "ue4m3")[0]) == 0x7E  # 448
    assert int(MX.round_to_mx([500.0], "ue4m3", "RZ", saturate=False)[0]) == 0x7E
    assert int(MX.round_to_mx([2.0 ** 128], "ue8m0", saturate=False)[0]) == 0xFF
    assert int(MX.round_to_mx([0.0, 1e-45], "ue8m0")[1]) == 0  # no zero: the minimum, 2^-127
    with pytest.raises(ValueError):
        MX.round_to_mx([-1.0], "ue8m0")
    with pytest.raises(ValueError):
        MX.round_to_mx([-1.0], "ue4m3")
    assert int(MX.round_to_mx([-0.0], "ue4m3")[0]) == 0
    # ue8m0 directed modes (PTX cvt.rz / cvt.rp .ue8m0x2.f32)
    assert MX.decode_mx(MX.round_to_mx([3.0, 5.0], "ue8m0", "RZ"), "ue8m0").tolist() == [2, 4]
    assert MX.decode_mx(MX.round_to_mx([3.0, 5.0], "ue8m0", "RU"), "ue8m0").tolist() == [4, 8]
