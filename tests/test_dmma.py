"""fp64 DMMA: the fma-chain model (MMA-Sim) through the plan evaluator, against exact Fraction
fmas; hand blocks on which the chain, a fused block and a reversed chain differ."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from hspi_kernels.numerics import dmma as D
from hspi_kernels.numerics import plans as P


def _fraction_chain(a, b, c):
    acc = float(c)
    for x, y in zip(a, b):
        acc = float(Fraction(float(x)) * Fraction(float(y)) + Fraction(acc))
    return acc


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 8)) * 2.0 ** rng.integers(-60, 60, (n, 8))
    b = rng.standard_normal((n, 8)) * 2.0 ** rng.integers(-60, 60, (n, 8))
    b[::3, 1] = -a[::3, 0] * b[::3, 0] / a[::3, 1]  # near-cancellation
    c = rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)
    return a, b, c


def test_block_equals_exact_fma_chain_and_the_plan():
    a, b, c = _rows(400, 1)
    want = np.array([_fraction_chain(a[i], b[i], c[i]) for i in range(400)])
    one = D.dmma_block(a[:, :4], b[:, :4], c)
    assert np.array_equal(one[:, None].view(np.uint64), np.array([_fraction_chain(a[i, :4], b[i, :4], c[i])
                                                                   for i in range(400)])[:, None].view(np.uint64))
    two = D.dmma_block(a[:, 4:], b[:, 4:], one)
    assert np.array_equal(two.view(np.uint64), want.view(np.uint64))
    for backend in ("numpy", "native"):
        try:
            got = D.dmma_chain(a, b, c, backend=backend)
        except (ImportError, RuntimeError, OSError) as e:  # native evaluator not built
            pytest.skip(f"{backend}: {e}")
        assert np.array_equal(got.view(np.uint64), want.view(np.uint64)), backend


def test_hand_blocks_tell_chain_fused_and_order_apart():
    u = 2.0 ** -53
    # c = 1, two products of 2^-53: the chain rounds 1 + 2^-53 to 1 twice (ties to even); a fused
    # block keeps 1 + 2^-52 exactly
    a = np.array([[u, u, 0, 0]]); b = np.array([[1.0, 1.0, 0, 0]]); c = np.array([1.0])
    assert D.dmma_block(a, b, c)[0] == 1.0
    assert D.dmma_fused_candidate(a, b, c)[0] == 1.0 + 2 * u
    # order: c = 0, products 1, 2^-53, 2^-53 in k order: the chain gives 1; reversed it gives
    # 1 + 2^-52
    a = np.array([[1.0, u, u, 0]]); b = np.array([[1.0, 1.0, 1.0, 0]]); c = np.array([0.0])
    assert D.dmma_block(a, b, c)[0] == 1.0
    assert D.dmma_block(a[:, ::-1], b[:, ::-1], c)[0] == 1.0 + 2 * u
    # subnormals are kept (no flush): 2^-1074 survives
    a = np.array([[2.0 ** -537, 0, 0, 0]]); b = np.array([[2.0 ** -537, 0, 0, 0]])
    assert D.dmma_block(a, b, np.array([0.0]))[0] == 2.0 ** -1074


def test_negative_control_fused_differs_on_random_cancelling_rows():
    a, b, c = _rows(400, 2)
    chain = D.dmma_block(a[:, :4], b[:, :4], c)
    fused = D.dmma_fused_candidate(a[:, :4], b[:, :4], c)
    assert not np.array_equal(chain, fused)


def test_plan_and_archs():
    assert D.dmma_plan("sm_80") == P.Sequential("fp64", fma=True) == D.dmma_plan("sm_90")
    with pytest.raises(ValueError, match="wgmma"):
        D.dmma_plan("sm_100")
