"""AMD CDNA MFMA presets (MMA-Sim's models): every preset evaluates; the CDNA3 integer model equals
a literal Fraction transcription of MMA-Sim's amd_fused_dot_rd_add; hand blocks that separate the
candidate models; ``hspi card`` on the CDNA3 units (closed loop)."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import amd as A
from hspi_kernels.reveal import card as C

F32 = np.float32


def _values(fmt, rng, shape):
    if fmt in ("fp32", "xf32"):
        return (rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape)).astype(F32)
    if fmt == "fp64":
        return rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 20, shape)
    dt = A._ELEM[fmt][0]
    if fmt.startswith("e"):
        pats = np.arange(256, dtype=np.uint8).view(dt).astype(np.float32)
        pats = pats[np.isfinite(pats)]
        return rng.choice(pats, shape).astype(F32)
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-8, 8, shape)
    return x.astype(dt).astype(F32)


@pytest.mark.parametrize("name", sorted(A.AMD_PRESETS))
def test_every_preset_evaluates(name):
    m = A.AMD_PRESETS[name]
    rng = np.random.default_rng(0)
    a, b = _values(m.in_format, rng, (64, 4 * m.G)), _values(m.b_format, rng, (64, 4 * m.G))
    d = A.mfma_chain(m, a, b)
    assert d.shape == (64,) and np.all(np.isfinite(d))
    assert "literature only" in m.source and "MMA-Sim" in m.source


def _sig_exp(x, emin):
    """MMA-Sim extract_significand_exponent, transcribed."""
    x = float(x)
    if x == 0:
        return Fraction(0), -126
    s, e = math.frexp(x)
    s, e = Fraction(s) * 2, e - 1
    if e < emin:
        s, e = s * Fraction(2) ** (e - emin), emin
    return s, e


def _fused_sum(sigs, exps, F):
    m = max(exps)
    return sum(Fraction(math.trunc(s * Fraction(2) ** (F + e - m))) / 2 ** F for s, e in zip(sigs, exps)), m


def mmasim_fused_rd(model, a, b, c):
    """amd_fused_dot_rd_add of MMA-Sim, line by line on Fractions (finite inputs)."""
    F = 24
    ea, eb = A._ELEM[model.in_format][1], A._ELEM[model.b_format][1]
    sig, ex = [], []
    for x, y in zip(a, b):
        sa, xa = _sig_exp(x, ea)
        sb, xb = _sig_exp(y, eb)
        sig.append(sa * sb)
        ex.append(xa + xb)
    sc, ec = _sig_exp(c, -126)
    if model.kind == "fused_rd_evenodd":
        s0, e0 = _fused_sum(sig[0::2], ex[0::2], F)
        s1, e1 = _fused_sum(sig[1::2], ex[1::2], F)
        me = max(e0, e1)
        s0 = Fraction(math.floor(s0 * Fraction(2) ** (F + e0 - me))) / 2 ** F
        s1 = Fraction(math.floor(s1 * Fraction(2) ** (F + e1 - me))) / 2 ** F
        s, e = s0 + s1, me
        me = max(e, ec)
        s = Fraction(math.floor(s * Fraction(2) ** (31 + e - me))) / 2 ** 31
        sc = Fraction(math.floor(sc * Fraction(2) ** (24 + ec - me))) / 2 ** 24 if ec >= me - 25 else 0
    else:
        s, e = _fused_sum(sig, ex, F)
        me = max(e, ec)
        s = Fraction(math.floor(s * Fraction(2) ** (31 + e - me))) / 2 ** 31
        sc = Fraction(math.floor(sc * Fraction(2) ** (24 + ec - me))) / 2 ** 24
    return np.float32(float((s + sc) * Fraction(2) ** me))  # exact in float64, then fp32 RNE


@pytest.mark.parametrize("name", [n for n, m in sorted(A.AMD_PRESETS.items()) if m.kind.startswith("fused")])
def test_cdna3_integer_model_equals_mmasim_transcription(name):
    m = A.AMD_PRESETS[name]
    rng = np.random.default_rng(5)
    n = 300
    a, b = _values(m.in_format, rng, (n, m.G)), _values(m.b_format, rng, (n, m.G))
    a, b = A._check(a, m.in_format), A._check(b, m.b_format)
    a[::2, m.G // 2:] = -a[::2, :m.G // 2] if m.in_format == m.b_format else a[::2, m.G // 2:]
    b[::2, m.G // 2:] = b[::2, :m.G // 2] if m.in_format == m.b_format else b[::2, m.G // 2:]
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 10, n)).astype(F32)
    c[::5] = 0
    got = A.mfma_block(m, a, b, c)
    want = np.array([mmasim_fused_rd(m, a[i], b[i], c[i]) for i in range(n)], F32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), np.nonzero(got != want)[0][:5]


def test_hand_cdna3_c_rounds_down_not_toward_zero():
    """1 * 1 + c with c = -2^-30: c is rounded *down* onto 2^(0 - 24): -2^-24, d = 1 - 2^-24. A
    block model (truncation toward zero) drops c: d = 1."""
    m = A.get_amd_preset("cdna3.mfma/fp16->fp32")
    a = np.zeros((1, 8), F32); b = np.zeros((1, 8), F32)
    a[0, 0] = b[0, 0] = 1
    d = A.mfma_block(m, a, b, np.array([-2.0 ** -30], F32))[0]
    assert d == np.float32(1 - 2.0 ** -24)
    assert A.mfma_block(m, a, b, np.array([2.0 ** -30], F32))[0] == 1.0
    # fp8: c more than 25 below the products is dropped instead of rounded down
    m8 = A.get_amd_preset("cdna3.mfma/fp8_fp8->fp32")
    a8 = np.zeros((1, 16), F32); b8 = np.zeros((1, 16), F32)
    a8[0, 0] = b8[0, 0] = 1
    assert A.mfma_block(m8, a8, b8, np.array([-2.0 ** -30], F32))[0] == 1.0
    as16 = dataclasses.replace(m8, kind="fused_rd")  # negative control: the fp16 rule differs here
    assert A.mfma_block(as16, a8, b8, np.array([-2.0 ** -30], F32))[0] == np.float32(1 - 2.0 ** -24)


def test_hand_cdna1_pairwise_versus_km_exact_group():
    """Products 1, 2^-24, 2^-24, 0 (c = 0): MMA-Sim's pairwise tree rounds 1 + 2^-24 to 1 (tie to
    even) and then adds 2^-24 again: 1; KM's MI100 model rounds the exact sum once: 1 + 2^-23."""
    m = A.get_amd_preset("cdna1.mfma/fp16->fp32")
    a = np.array([[1, 2.0 ** -12, 2.0 ** -12, 0]], F32)
    b = np.array([[1, 2.0 ** -12, 2.0 ** -12, 0]], F32)
    c = np.zeros(1, F32)
    assert A.mfma_block(m, a, b, c)[0] == 1.0
    assert A.exact_group_candidate(a, b, c)[0] == np.float32(1 + 2.0 ** -23)
    # pairwise = ((p0 + p1) + (p2 + p3)) + c in fp32
    rng = np.random.default_rng(2)
    a, b = _values("fp16", rng, (500, 4)), _values("fp16", rng, (500, 4))
    c = _values("fp32", rng, (500,))
    p = a * b
    assert np.array_equal(A.mfma_block(m, a, b, c), (c + ((p[:, 0] + p[:, 1]) + (p[:, 2] + p[:, 3]))).astype(F32))


def test_hand_cdna2_flushes_subnormals():
    x = np.array([[2.0 ** -20, 0, 0, 0]], F32)  # an fp16 subnormal
    one = np.array([[1.0, 0, 0, 0]], F32)
    assert A.mfma_block(A.get_amd_preset("cdna2.mfma/fp16->fp32"), x, one, np.zeros(1, F32))[0] == 0
    assert A.mfma_block(A.get_amd_preset("cdna1.mfma/fp16->fp32"), x, one, np.zeros(1, F32))[0] == 2.0 ** -20


def test_fma_presets_are_plans():
    from hspi_kernels.numerics import plans as P

    assert A.plan_of(A.get_amd_preset("cdna3.mfma/fp64->fp64")) == P.Sequential("fp64", fma=True)
    with pytest.raises(ValueError):
        A.plan_of(A.get_amd_preset("cdna3.mfma/fp16->fp32"))


@pytest.mark.parametrize("name,fmt", [("cdna3.mfma/fp16->fp32", "fp16"), ("cdna3.mfma/xf32->fp32", "tf32")])
def test_card_on_one_cdna3_group(name, fmt):
    """Closed loop on one MFMA group (K = G): the card recovers G, F = 24 and fp32 RNE. c = 0 blocks
    are a block model (fp16: every one matches); c joins late and is rounded down, which no
    BlockModel holds: the card must not claim exactness (it does not)."""
    m = A.AMD_PRESETS[name]
    u = C.Unit(f"emulated:{name}", fmt, m.G, lambda a, b, c: A.mfma_chain(m, a, b, c), "cdna3", "mma.sync")
    card = C.numerics_card(u, n_verify=5000, fit_blocks=2000)
    p = card["params"]
    assert (p["G"], p["F"], p["out_format"], p["out_rounding"]) == (m.G, 24, "fp32", "RNE")
    if fmt == "fp16":
        assert card["verify_c0"]["matches"] == card["verify_c0"]["total"] > 0
    assert not card["exact"] and card["verify_c"]["matches"] < card["verify_c"]["total"]
