"""The coverage job of the counterfactual map (``hspi_kernels.trace.coverage``) on CPU: tiny models,
the CPU-runnable pairs; GPU-only pairs are skipped with the reason; the layout matrix follows the
layout, not the side, on a constructed layout-dependent op."""

from __future__ import annotations

import json

from hspi_kernels.trace import coverage as V
from test_trace_counterfactual import _RowSum


def test_coverage_job_on_cpu(tmp_path):
    rc = V.main([str(tmp_path / "out"), "--models", "tiny-gpt2", "--pairs", "b1_math:b1_flash,b1:b1_fixed"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "coverage.json").read_text())
    (row,) = rec["rows"]
    assert row["pair"] == "b1_math vs b1_flash" and row["label"] == "SDPA math vs flash"
    # math (decomposed) vs the CPU flash kernel: both layers' attention regions diverge on their own,
    # everything else that differs only propagates
    assert row["attention_regions"] == row["regions_own"] == 2 and row["causes"] == {"attention backend": 2}
    assert row["differ"] > 0 and row["own"] == 0 and row["propagated_only"] == row["differ"]
    assert rec["skipped"] == [{"model": "tiny-gpt2", "pair": "b1 vs b1_fixed", "why": "needs a GPU (device cpu)"}]
    md = (tmp_path / "out" / "coverage.md").read_text()
    assert "| tiny-gpt2 | SDPA math vs flash |" in md and "needs a GPU" in md
    assert (tmp_path / "out" / "maps.json.gz").stat().st_size > 100


def test_layout_matrix_follows_the_layout():
    a, b = _RowSum.trace(False), _RowSum.trace(True)
    key = [o["key"] for o in a.ops if o["op"] == "sum"][0]
    rep = V.layout_matrix(a, b, key)["replays"]
    assert len(rep) == 12
    for k, v in rep.items():
        want = "B" if k.endswith("layout B") else "A"  # row-major and contiguous are A's layout
        assert v == want, k


def test_coverage_row_counts_unexplained():
    # a hand-made map: one own divergence without a cause, one explained by plans on both sides
    own_ok = {"key": "x", "own": True, "cause": {"category": "split-K factor", "detail": "3 vs 1"},
              "impl_a": {"plans": [{}]}, "impl_b": {"plans": [{}]}, "b_on_a": {"n": 10, "n_diff": 4}, "a_on_b": None}
    own_bad = {"key": "y", "own": True, "cause": {"category": "undetermined", "detail": "no plan"},
               "impl_a": {}, "impl_b": {}, "b_on_a": {"n": 5, "n_diff": 5}, "a_on_b": None}
    cmap = {"summary": {"ops": 9, "differ": 3, "own": 2, "propagated_only": 1, "unmatched": []},
            "ops": [own_ok, own_bad, {"key": "z", "own": False}], "regions": []}
    r = V.coverage_row("m", "p", "P", cmap)
    assert (r["explained"], r["explained_by_plans"], r["explained_by_kernel_replay"]) == (1, 1, 0)
    assert r["unexplained"] == [{"key": "y", "why": "no plan"}]
    assert r["cross_replay_outputs"] == {"equal": 6, "total": 15}


def test_coverage_budget_ends_inside_a_pair(tmp_path, monkeypatch):
    """The budget is checked per op: a pair it ends is recorded as skipped with the op it reached
    (no half row), the job still writes its record and exits 0."""
    import time

    real = V.C.counterfactual

    def slow(ta, tb, progress=None, **kw):  # the first op report comes after the budget has ended
        time.sleep(8.5)
        return real(ta, tb, progress=progress, **kw)

    monkeypatch.setattr(V.C, "counterfactual", slow)
    rc = V.main([str(tmp_path / "out"), "--models", "tiny-gpt2", "--pairs", "b1_math:b1_flash", "--budget-s", "8"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "coverage.json").read_text())
    assert rec["rows"] == []
    (sk,) = rec["skipped"]
    assert sk["pair"] == "b1_math vs b1_flash" and sk["why"].startswith("budget: cut at op 0/")
