"""numpy's float32 np.sum order, measured: plans.numpy_sum_plan() reproduces it bit for bit.

Negative controls: plans that differ only in the lane count, the leaf size, or that are plain
sequential must disagree with numpy on a large fraction of vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate

LENGTHS = [1, 7, 8, 9, 127, 128, 129, 1000, 4097, 100_000]
N_VECTORS = 10_000


def _vectors(rng, count, n):
    """Wide dynamic range, both signs: every rounding is exercised."""
    return (rng.standard_normal((count, n)) * np.exp2(rng.integers(-20, 20, (count, n)))).astype(np.float32)


def _np_sum_bits(x):
    return np.array([np.sum(row) for row in x], dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("n", LENGTHS)
def test_numpy_sum_plan_matches_np_sum(n):
    rng = np.random.default_rng(n)
    plan = P.numpy_sum_plan()
    chunk = max(1, min(N_VECTORS, 2_000_000 // n))
    matches = total = 0
    for start in range(0, N_VECTORS, chunk):
        x = _vectors(rng, min(chunk, N_VECTORS - start), n)
        got = evaluate(plan, x).view(np.uint32)
        matches += int(np.sum(got == _np_sum_bits(x)))
        total += len(x)
    assert (matches, total) == (N_VECTORS, N_VECTORS), f"n={n}: {matches}/{total}"


@pytest.mark.parametrize("n", [9, 129, 1000])
def test_numpy_path_agrees_on_sum_order(n):
    x = _vectors(np.random.default_rng(7), 200, n)
    got = evaluate(P.numpy_sum_plan(), x, backend="numpy").view(np.uint32)
    assert np.array_equal(got, _np_sum_bits(x))


def test_negative_zero_sum_is_positive_zero():
    """numpy seeds the reduction with the identity +0: a sum of -0s is +0 (the seed is needed)."""
    for n in (1, 9, 300):
        x = np.full((1, n), -0.0, np.float32)
        assert np.signbit(np.sum(x[0])) == False  # noqa: E712
        assert evaluate(P.numpy_sum_plan(), x).view(np.uint32)[0] == 0
        assert evaluate(P.numpy_sum_plan().inner, x).view(np.uint32)[0] == 0x80000000


@pytest.mark.parametrize(
    "wrong",
    [
        P.Sequential(),
        P.SplitK(1, inner=P.Pairwise(128, 4, P.Remainder(4, P.Strided(4, P.Sequential(), P.Pairwise()), P.Sequential())),
                 combine=P.Sequential(init="zero")),
        P.SplitK(1, inner=P.Pairwise(256, 8, P.numpy_sum_plan().inner.leaf), combine=P.Sequential(init="zero")),
        P.Pairwise(),
    ],
    ids=["sequential", "4-lanes", "leaf-256", "plain-pairwise"],
)
def test_wrong_plans_mismatch(wrong):
    x = _vectors(np.random.default_rng(3), 1000, 1000)
    agree = np.mean(evaluate(wrong, x).view(np.uint32) == _np_sum_bits(x))
    assert agree < 0.6, f"{wrong!r} agrees with np.sum on {agree:.0%}"
