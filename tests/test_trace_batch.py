"""Batch 1 vs batch 8 (``hspi_kernels.trace.batch``): row 0 of a batch-8 trace compared with the
batch-1 trace of the same prompt. CPU GEMMs of tiny-llama are batch-invariant (no op differs: the
negative control); with an injected batch-variant op (the batch-8 run's down_proj by SplitK(4)) the
map finds exactly that op as an own divergence, names split-K, and every later difference as
propagation through re-runs of the batch-8 kernels with the batch-1 row in place."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hspi_kernels.cli import app
from hspi_kernels.numerics import plans as P
from hspi_kernels.trace import batch as B
from hspi_kernels.trace import counterfactual as C
from hspi_kernels.trace import tracer as T

KG = "model.layers.0.mlp.down_proj:mm#0"
BASE = dict(dtype="fp32", length=16, profile=False)


@pytest.fixture(scope="module")
def traces():
    return (T.run_model("tiny-llama", batch=1, **BASE), T.run_model("tiny-llama", batch=8, **BASE),
            T.run_model("tiny-llama", batch=8, **BASE, inject={KG: P.SplitK(4)}))


def test_row_of_a_batch_invariant_run_equals_batch_1(traces):
    t1, t8, _ = traces
    r = B.row_trace(t8, t1, 0)
    d = T.diff(t1, r)
    assert d["n_ops"] == len(t1.ops) and d["n_differ"] == 0 and d["logits_equal"]
    assert not d["unmatched_a"] and not d["unmatched_b"]
    # the slices are real: row 0 of the batch-8 lm_head output, not the whole batch
    head = [o for o in r.ops if o["key"] == "lm_head:mm#0"][0]
    assert head["outputs"][0]["shape"] == [16, 512]
    assert [o for o in t8.ops if o["key"] == "lm_head:mm#0"][0]["outputs"][0]["shape"] == [128, 512]


def test_batch_variant_op_found_and_named(traces):
    t1, _, t8s = traces
    r = B.row_trace(t8s, t1, 0)
    m = C.counterfactual(t1, r)
    own = {x["key"] for x in m["own_divergences"]}
    assert own == {KG} and m["summary"]["undetermined"] == []
    (row,) = [x for x in m["ops"] if x["key"] == KG]
    assert row["cause"]["category"] == "split-K factor" and row["cause"]["plan_b"] == "SplitK(4)"
    assert row["a_on_b"]["n"] == 16 * 64 and row["a_on_b"]["n_diff"] > 0
    rest = [x for x in m["ops"] if x["key"] != KG]
    assert len(rest) >= 30 and all(x["own"] is False for x in rest)


def test_other_row_is_compared_only_with_its_own_prompt(traces):
    t1, t8, _ = traces
    with pytest.raises(ValueError, match="different prompts"):
        B.row_trace(t8, t1, 3)
    with pytest.raises(ValueError, match="outside the batch"):
        B.row_trace(t8, t1, 8)
    with pytest.raises(ValueError, match="must be batch 1"):
        B.row_trace(t8, t8, 0)


def test_cli_compares_batch_1_with_a_row(traces, tmp_path):
    t1, _, t8s = traces
    a, b = t1.save(tmp_path / "b1.npz"), t8s.save(tmp_path / "b8.npz")
    res = CliRunner().invoke(app, ["trace", "diff", str(a), str(b), "--json"])
    assert res.exit_code == 0, res.output
    assert '"first_origin"' in res.output and KG in res.output
