"""Plan language: JSON round trip, repr, validation, and each node's order on hand-checkable cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate, gemm

TC = P.TensorCore("sm_90", "bf16", "fp32")
ALL_PLANS = [
    P.Sequential(),
    P.Sequential("fp32", fma=True),
    P.Sequential(init="zero"),
    P.Pairwise(),
    P.Tree(3),
    P.Tree(4, leaf_size=8, leaf=P.Sequential(fma=True)),
    P.Strided(8, inner=P.Sequential(), combine=P.Pairwise()),
    P.Remainder(8, main=P.Strided(8, P.Sequential(), P.Pairwise()), tail=P.Sequential()),
    P.SplitK(4, layout="contiguous", inner=P.Chain(TC, k=16), combine=P.Sequential("fp32")),
    P.SplitK(3, layout="interleaved", tile=16, inner=P.Sequential(fma=True), combine=P.Pairwise()),
    P.WarpButterfly(32),
    P.BlockTree(256),
    TC,
    P.Chain(block=TC, k=16),
    P.ExplicitTree(((0, 2), (1, (3, 4)))),
    P.numpy_sum_plan(),
]


@pytest.mark.parametrize("plan", ALL_PLANS, ids=repr)
def test_json_round_trip_and_repr(plan):
    text = json.dumps(plan.to_json())
    assert P.plan_from_json(json.loads(text)) == plan
    assert eval(repr(plan), vars(P)) == plan  # repr reads as the constructor
    assert json.loads(text)["kind"] == type(plan).__name__


def test_repr_reads_like_the_constructor():
    assert repr(P.Chain(block=TC, k=16)) == 'Chain(block=TensorCore("sm_90", "bf16", "fp32"), k=16)'
    assert repr(P.Sequential("fp32", fma=True)) == 'Sequential("fp32", fma=True)'
    assert repr(P.WarpButterfly(32)) == "WarpButterfly(32)"


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "Nope"},
        {"kind": "Sequential", "dtype": "fp32", "bogus": 1},
        {"kind": "Sequential", "dtype": "fp8"},
        {"kind": "Sequential", "init": "one"},
        {"kind": "BlockTree", "size": 100},
        {"kind": "Tree", "fanin": 1},
        {"kind": "Strided", "lanes": 0, "inner": {"kind": "Sequential"}, "combine": {"kind": "Sequential"}},
        {"kind": "Strided", "lanes": 8},
        {"kind": "SplitK", "parts": 2, "layout": "diagonal"},
        {"kind": "TensorCore", "arch": "sm_42", "in_format": "bf16"},
        {"kind": "Chain", "block": {"kind": "TensorCore", "arch": "sm_90", "in_format": "bf16"}, "k": 12},
        {"kind": "Pairwise", "leaf_size": 4, "align": 8},
        {"kind": "ExplicitTree", "nodes": [[0, -1]]},
        [1, 2],
    ],
)
def test_validation_errors(bad):
    with pytest.raises(ValueError):
        P.plan_from_json(bad)


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def _both(plan, operands, **kw):
    out = [evaluate(plan, operands, backend=b, **kw) for b in ("numpy", "native")]
    assert np.array_equal(_bits(out[0]), _bits(out[1]))
    return out[0]


# Hand-checkable orders: 1 + 2^-24 + 2^-24 depends on which pair is added first.
U = np.float32(2.0**-24)


def test_sequential_vs_pairwise_order():
    x = np.array([[1.0, U, U, 0.0]], np.float32)
    assert _both(P.Sequential(), x)[0] == 1.0  # (1 + u) ties to 1, twice
    assert _both(P.Pairwise(), x)[0] == 1.0  # (1+u) + (u+0) = 1 + u -> 1
    y = np.array([[U, U, 1.0, 0.0]], np.float32)
    assert _both(P.Sequential(), y)[0] == np.float32(1 + 2.0**-23)  # (u+u)+1 exact


def test_strided_lanes_and_tree_split():
    # lane 0: x0 + x2 = 1 + u -> 1; lane 1: x1 + x3 = u + u = 2u; combine 1 + 2u exact.
    x = np.array([[1.0, U, U, U]], np.float32)
    assert _both(P.Strided(2, P.Sequential(), P.Sequential()), x)[0] == np.float32(1 + 2.0**-23)
    # Tree(3) over 4 terms: chunks [2, 1, 1]: (1+u) -> 1, then +u -> 1, +u -> 1.
    assert _both(P.Tree(3), x)[0] == 1.0
    # Pairwise over 3 terms: left gets floor(3/2)=1: 1 + (u+u) = 1 + 2^-23.
    assert _both(P.Pairwise(), np.array([[1.0, U, U]], np.float32))[0] == np.float32(1 + 2.0**-23)


def test_blocktree_and_butterfly_are_stride_halving():
    # size 4: v0 = x0 + x2, v1 = x1 + x3, then v0 + v1.
    x = np.array([[1.0, U, U, U]], np.float32)
    assert _both(P.BlockTree(4), x)[0] == np.float32(1 + 2.0**-23)  # (1+u) -> 1, u+u = 2u, 1+2u exact
    x2 = np.array([[1.0, 1.0, U, U]], np.float32)
    # v0 = 1 + u -> 1, v1 = 1 + u -> 1: 2
    assert _both(P.BlockTree(4), x2)[0] == 2.0
    assert _both(P.WarpButterfly(4), x2)[0] == 2.0
    assert _both(P.Sequential(), np.array([[1.0, U, U, 1.0]], np.float32))[0] == 2.0


def test_explicit_tree_and_splitk_layouts():
    x = np.array([[1.0, U, U, 0.0]], np.float32)
    assert _both(P.ExplicitTree(((1, 2), (0, 3))), x)[0] == np.float32(1 + 2.0**-23)
    y = np.array([[1.0, U, 0.0, U]], np.float32)
    # interleaved: (1 + 0) + (u + u) = 1 + 2^-23; contiguous: (1 + u) -> 1, then 1 + (0 + u) -> 1.
    assert _both(P.SplitK(2, "interleaved", inner=P.Sequential(), combine=P.Sequential()), y)[0] == np.float32(1 + 2.0**-23)
    assert _both(P.SplitK(2, "contiguous", inner=P.Sequential(), combine=P.Sequential()), y)[0] == 1.0


def test_fma_vs_mul_add():
    # a1*b1 = 1 + 2^-11 + 2^-24 exactly; rn32 gives 1 + 2^-11 (a tie, to even).
    a = np.array([[1.0, 1.0 + 2.0**-12]], np.float32)
    b = np.array([[-(1.0 + 2.0**-11), 1.0 + 2.0**-12]], np.float32)
    assert _both(P.Sequential(), (a, b))[0] == 0.0
    assert _both(P.Sequential(fma=True), (a, b))[0] == np.float32(2.0**-24)


def test_c_and_absent_rules():
    x = np.array([[1.0, 2.0]], np.float32)
    assert _both(P.Sequential(), x, c=np.float32(4.0))[0] == 7.0
    assert _both(P.Pairwise(), np.zeros((1, 0), np.float32))[0] == 0.0
    neg_zero = np.full((1, 3), -0.0, np.float32)
    assert _bits(_both(P.Sequential(), neg_zero))[0] == 0x80000000
    assert _bits(_both(P.Sequential(init="zero"), neg_zero))[0] == 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="same shape"):
        evaluate(P.Sequential(), (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match="not representable in bf16"):
        evaluate(P.Chain(TC, k=16), (np.full((1, 16), 1 + 2.0**-10, np.float32), np.ones((1, 16), np.float32)))
    with pytest.raises(ValueError, match="multiple"):
        evaluate(P.Chain(TC, k=16), (np.ones((1, 24), np.float32), np.ones((1, 24), np.float32)))
    with pytest.raises(ValueError, match="products"):
        evaluate(P.Chain(TC, k=16), np.ones((1, 16), np.float32))
    with pytest.raises(ValueError, match="at most"):
        evaluate(P.BlockTree(4), np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="float32"):
        evaluate(P.Sequential(), np.array([[0.1]], np.float64))
    with pytest.raises(ValueError, match="gemm"):
        gemm(P.Sequential(), np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="preset"):
        P.TensorCore("sm_90", "bf16", "fp16")
