"""probes/cpu_attention: seeded cases regenerate, and the dominant-key readback returns the GEMM's
fp32 dot. Checked without torch against the project's own replay (numerics.attention_cpu): its
lse on a dominant probe, times 8, is the dot of its own Q·Kᵀ chain; a wrong readback (another
head's dot, or the exact float64 dot) is rejected."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import attention_cpu as AC
from hspi_kernels.probes import cpu_attention as P

F32 = np.float32


def _case(fmt="bf16", sk=16, seed=3, hq=32):
    return P.Case(f"t_{fmt}", "dominant", fmt, hq, hq, 16, sk, 64, False, seed)


def _chain_dot(a, b):  # the replay's Q·Kᵀ order at D = 64: one fma chain in index order
    acc = F32(0)
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        acc = F32(x * y + float(acc))  # bf16 / fp16 / fp32 here: product exact in float64, one rounding
    return acc


def test_inputs_regenerate_bit_for_bit():
    c = _case()
    assert P.digest(*P.build(c)) == P.digest(*P.build(c))
    assert P.digest(*P.build(c)) != P.digest(*P.build(_case(seed=4)))


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp32"])
def test_dominant_probe_layout(fmt):
    c = _case(fmt)
    q, k, v = P.build(c)
    rows = P.dominant_rows(c)
    assert len(rows) == c.hq and len({(r, key) for _, r, key in rows}) > 8  # positions move with the head
    for h, r, key in rows:
        assert np.count_nonzero(np.abs(q[0, h]).sum(-1)) == 1 and np.abs(q[0, h, r]).sum() > 0
        assert np.count_nonzero(np.abs(k[0, h]).sum(-1)) == 1 and np.abs(k[0, h, key]).sum() > 0
    assert P.exact_dots(c, q, k).min() >= P.MIN_DOT


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp32"])
def test_readback_is_the_gemm_dot(fmt):
    c = _case(fmt)
    q, k, v = P.build(c)
    _, lse = AC.replay(q, k, v, fmt=fmt, causal=False)
    got = P.readback(c, lse.reshape(-1).view(np.uint32))
    want = np.array([_chain_dot(q[0, h, r], k[0, h, key]) for h, r, key in P.dominant_rows(c)], F32)
    assert int(np.sum(got.view(np.uint32) == want.view(np.uint32))) == c.hq
    # negative controls: the exact dot and a shifted assignment are not what the lse returns
    exact = P.exact_dots(c, q, k).astype(F32)
    assert int(np.sum(got.view(np.uint32) == exact.view(np.uint32))) < c.hq // 2
    assert int(np.sum(np.roll(got, 1).view(np.uint32) == want.view(np.uint32))) == 0


def test_bad_cases_are_refused():
    with pytest.raises(ValueError, match="D = 64"):
        P.build(P.Case("x", "dominant", "bf16", 4, 4, 16, 16, 128, False, 0))
    with pytest.raises(ValueError, match="hq == hkv"):
        P.build(P.Case("x", "dominant", "bf16", 4, 2, 16, 16, 64, False, 0))
    with pytest.raises(ValueError, match="unknown probe kind"):
        P.build(P.Case("x", "other", "bf16", 4, 4, 16, 16, 64, False, 0))
