"""Every field of every plan kind, given a value of the wrong type or an extreme one: plan_from_json
raises ValueError, or the plan it returns lowers and evaluates or raises ValueError — never another
exception (the contract the plan_json fuzz target checks; this walks the cases systematically)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P

VALID = {
    "Sequential": P.Sequential("fp32"), "Pairwise": P.Pairwise(), "Tree": P.Tree(4), "Strided": P.Strided(4, P.Sequential("fp32"), P.Pairwise()),
    "Remainder": P.Remainder(4, P.Pairwise(), P.Sequential("fp32")), "SplitK": P.SplitK(3), "BlockTree": P.BlockTree(8), "WarpButterfly": P.WarpButterfly(8),
    "TensorCore": P.TensorCore("sm_90", "bf16", "fp32"), "Chain": P.Chain(P.TensorCore("sm_90", "bf16", "fp32"), 16),
    "ExplicitTree": P.ExplicitTree(((0, 1), 2)),
}
HOSTILE = ["3", True, 2.5, [1, 2], None, {"kind": "Sequential"}, {"kind": "Nope"}, -1, 0, 1 << 62, "", "fp64"]


def _cases():
    for kind, plan in VALID.items():
        base = plan.to_json()
        for f in dataclasses.fields(type(plan)):
            for v in HOSTILE:
                yield kind, f.name, dict(base, **{f.name: v})


def test_every_kind_is_covered():
    assert set(VALID) == set(P._KINDS)


def _check(d) -> str:
    """'refused' (ValueError at parse), 'evaluated' or 'refused at evaluate'; any other exception
    propagates (the defect)."""
    try:
        plan = P.plan_from_json(d)
    except ValueError:
        return "refused"
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    try:
        for ops in (x, (x, x)):
            E.evaluate(plan, ops, backend="numpy")
    except ValueError:
        return "refused at evaluate"
    return "evaluated"


@pytest.mark.parametrize("kind,field,d", list(_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_hostile_field_is_a_value_error(kind, field, d):
    assert _check(d) in ("refused", "refused at evaluate", "evaluated")


def test_most_hostile_fields_are_refused_and_valid_plans_evaluate():
    outcomes = [_check(d) for _, _, d in _cases()]
    assert outcomes.count("refused") > len(outcomes) // 2
    # the reducing kinds evaluate on this input (tensor-core kinds need dot inputs of their K, trees their n)
    assert all(_check(VALID[k].to_json()) == "evaluated"
               for k in ("Sequential", "Pairwise", "Tree", "Strided", "Remainder", "SplitK"))


def test_the_check_reports_another_exception(monkeypatch):
    # negative control: an evaluator that fails with TypeError is not mistaken for a clean refusal
    def broken(*a, **k):
        raise TypeError("planted")

    monkeypatch.setattr(E, "evaluate", broken)
    with pytest.raises(TypeError, match="planted"):
        _check(P.Pairwise().to_json())
