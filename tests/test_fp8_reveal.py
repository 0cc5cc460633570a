"""fp8 GEMM plans found by replay (hspi_kernels.reveal.fp8): the family search recovers every
promotion interval and outer split-K factor of an emulated op, rejects an op outside the family,
and the epilogue candidates are told apart on an fp32 output; plus the committed H200 record's
plans reproduce the fp32 bits they were found on (CPU rebuilds the operands from the seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.reveal import fp8

K = 1024


@pytest.fixture(scope="module")
def ops():
    return fp8.operands(np.random.default_rng(3), 4, K, 256)


@pytest.mark.parametrize("interval,split", [(None, 1), (32, 1), (128, 1), (256, 1), (None, 3), (128, 2), (64, 3)])
def test_family_search_recovers_the_emulated_plan(ops, interval, split):
    A, B = ops
    truth = fp8.promotion_plan(K, interval, split)
    D = gemm(truth, A, B)
    res = fp8.find_plans(D, A, B, fp8.family(K), screen=(4, 256))
    exact = [(r["promotion_interval"], r["split_k"]) for r in res if r.get("full") == f"{D.size}/{D.size}"]
    assert (interval, split) in exact
    # the only tie allowed is the family's one identity: no promotion under split-K s ==
    # promotion every K/s without split-K
    def same(x, y):
        return x == y or {x, y} in ({(None, s), (K // s, 1)} for s in range(2, 9))
    assert all(same(e, (interval, split)) for e in exact), exact


def test_operands_make_the_orders_distinguishable(ops):
    """With uniform exponents the promoted partials add exactly in fp32 and promotion 128 under
    split-K 1 and 4 agree; the per-32-term offsets of fp8.operands separate them."""
    A, B = ops
    a = gemm(fp8.promotion_plan(K, 128, 1), A, B).view(np.uint32)
    b = gemm(fp8.promotion_plan(K, 128, 4), A, B).view(np.uint32)
    assert np.sum(a != b) > 5
    flat = [fp8.promotion_plan(K, 128, s) for s in (1, 4)]
    rng = np.random.default_rng(3)  # the same magnitudes without the per-32-term offsets
    U = np.ldexp(1.0 + rng.integers(0, 8, (4, K)) / 8.0, rng.integers(-2, 3, (4, K))).astype(np.float32)
    V = np.ldexp(1.0 + rng.integers(0, 8, (K, 256)) / 8.0, rng.integers(-2, 3, (K, 256))).astype(np.float32)
    assert np.array_equal(gemm(flat[0], U, V).view(np.uint32), gemm(flat[1], U, V).view(np.uint32))


def test_an_op_outside_the_family_is_not_matched(ops):
    """Negative control: wgmma fp8 with an fp16 accumulator (the other Hopper fp8 path) chained
    over K gives bits no member of the family (fp32 promotions of the e8m13 block) reproduces."""
    A, B = ops
    other = P.Chain(P.TensorCore("sm_90", "e4m3", "fp16", path="wgmma"), k=32)
    with np.errstate(over="ignore"):
        D = gemm(other, A, B).astype(np.float32)
    res = fp8.find_plans(D, A, B, fp8.family(K), screen=(4, 256))
    assert not any(r.get("full", "").split("/")[0] == str(D.size) for r in res)


def test_epilogue_candidates_differ_on_fp32_output():
    rng = np.random.default_rng(0)
    acc = (rng.standard_normal((8, 512)) * 100).astype(np.float32)
    sa, sb = np.float32(0.37), np.float32(1.93)
    outs = {n: fp8.epilogue(n, acc, sa, sb, "fp32").view(np.uint32) for n in fp8.EPILOGUES}
    names = list(outs)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.sum(outs[names[i]] != outs[names[j]]) > 0, (names[i], names[j])


def test_h200_record_says_what_the_notes_claim():
    """docs/results/h200/fp8_scaled_mm.json (the GPU's bits are not in it, only the counts):
    every op row is exact, the per-tensor epilogue is fp32(sa*sb)*acc N/N wherever the output is
    fp32, the Triton control found the interval it was given, the split-K 3 cuBLASLt rows name
    no promotion (fast) and promotion every 128 (slow), and those two plans are different bits
    on the operands rebuilt from the record's seed (so the record could tell them apart)."""
    rec = json.loads((Path(__file__).parents[1] / "docs/results/h200/fp8_scaled_mm.json").read_text())
    rows = rec["results"]
    assert len(rows) >= 24 and all(r["status"] == "exact" for r in rows)
    for r in rows:
        if r["op"].startswith("scaled_mm tensor") and r["op"].endswith("fp32"):
            ep = r["epilogue"]["fp32(sa*sb) * acc"]
            assert ep.split("/")[0] == ep.split("/")[1]
        if r["op"].startswith("triton"):
            assert r["control_found"]
    split3 = {r["op"]: r for r in rows if r["K"] == 8192 and r["op"].startswith("scaled_mm tensor")}
    fast, slow = split3["scaled_mm tensor fast fp32"]["exact"][0], split3["scaled_mm tensor slow fp32"]["exact"][0]
    assert (fast["promotion_interval"], fast["split_k"]) == (None, 3)
    assert (slow["promotion_interval"], slow["split_k"]) == (128, 3)
    A, B = fp8.operands(np.random.default_rng(8192 + 1024 + 1), 1, 8192, 1024)
    a = gemm(P.plan_from_json(fast["plan_json"]), A, B[:, :64]).view(np.uint32)
    b = gemm(P.plan_from_json(slow["plan_json"]), A, B[:, :64]).view(np.uint32)
    assert np.sum(a != b) > 0  # the two recorded plans are not the same bits: the record separates them
