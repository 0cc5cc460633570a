"""Plans whose sizes are far beyond K (a hostile or careless plan file: fanin 10^12, parts 10^12,
tile 10^15, a 2^40-slot block tree, a 2^62-lane butterfly) lower and evaluate at once, with the
bits of the same tree at its effective size, on the native and the numpy evaluator alike
(before: MemoryError, or a loop over 10^12 chunks that never ended)."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate


def _pow2(n):
    return 1 << max(0, (n - 1).bit_length())


CASES = [  # (hostile plan, the same tree at size n)
    (lambda n: P.Tree(10 ** 12), lambda n: P.Tree(max(n, 2))),
    (lambda n: P.SplitK(10 ** 12), lambda n: P.SplitK(n)),
    (lambda n: P.SplitK(10 ** 12, "interleaved"), lambda n: P.SplitK(n, "interleaved")),
    (lambda n: P.SplitK(3, tile=10 ** 15), lambda n: P.SplitK(3, tile=n)),
    (lambda n: P.BlockTree(2 ** 40), lambda n: P.BlockTree(_pow2(n))),
    (lambda n: P.WarpButterfly(2 ** 62), lambda n: P.BlockTree(_pow2(n))),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("n", [1, 3, 16, 33])
def test_oversized_plans_evaluate_as_their_effective_tree(case, n):
    hostile, small = CASES[case]
    x = (np.random.default_rng(n).standard_normal((64, n)) * np.exp2(np.arange(n) % 30)).astype(np.float32)
    want = evaluate(small(n), x, backend="numpy").view(np.uint32)
    for backend in ("native", "numpy"):
        got = evaluate(hostile(n), x, backend=backend).view(np.uint32)
        assert np.array_equal(got, want), (backend, hostile(n))


def test_huge_strided_lanes_are_refused():
    """Strided lanes are not capped (empty lanes of an init="zero" inner are +0 leaves of the
    combine, so their number shapes its tree): beyond MAX_LANES the plan is refused at parse."""
    with pytest.raises(ValueError, match="lanes must be"):
        P.plan_from_json({"kind": "Strided", "lanes": 10 ** 15, "inner": {"kind": "Sequential"},
                          "combine": {"kind": "Sequential"}})
    P.Strided(P.MAX_LANES, P.Sequential(), P.Sequential())  # the bound itself is allowed


def test_the_effective_size_matters():
    """Negative control: the capped sizes are not a no-op: a BlockTree over 33 terms differs from
    a sequential sum, so the equalities above compare different trees where they should."""
    x = (np.random.default_rng(0).standard_normal((64, 33)) * np.exp2(np.arange(33) % 30)).astype(np.float32)
    a = evaluate(P.BlockTree(2 ** 40), x).view(np.uint32)
    b = evaluate(P.Sequential(), x).view(np.uint32)
    assert np.sum(a != b) > 0
