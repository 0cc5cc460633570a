"""Order revelation: CPU ops and emulated plans revealed, replayed bit for bit, call bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.reveal import order as R
from hspi_kernels.reveal import targets as T

TC = P.TensorCore("sm_90", "bf16", "fp32")


def _bound(n):
    return 4 * n * math.log2(n)


@pytest.mark.parametrize("n", [100, 1000, 4096])
def test_numpy_sum_revealed_and_replayed(n):
    r = R.reveal(T.numpy_sum(n), replay_count=10_000)
    assert r.revealed, r.to_json()
    assert (r.replay_matches, r.replay_total) == (10_000, 10_000)
    assert r.calls <= _bound(n)


@pytest.mark.parametrize("n", [100, 1000, 4096])
def test_torch_cpu_sum_revealed_and_replayed(n):
    pytest.importorskip("torch")
    r = R.reveal(T.torch_sum_cpu(n), replay_count=10_000)
    assert r.revealed, r.to_json()
    assert r.calls <= _bound(n)


def test_torch_cpu_matmul_k_order():
    pytest.importorskip("torch")
    r = R.reveal(T.torch_matmul_cpu(256), replay_count=2_000)
    assert r.revealed and r.compact, r.to_json()


@pytest.mark.parametrize("plan", [P.Sequential(), P.Pairwise(), P.Strided(8, inner=P.Sequential(), combine=P.Pairwise()),
                                  P.BlockTree(256), P.numpy_sum_plan()])
def test_emulated_orders_rediscovered(plan):
    n = 256
    r = R.reveal(T.emulated_sum(plan, n), replay_count=2_000)
    assert r.revealed and r.compact, r.to_json()
    interner = R._Interner(n)
    assert R.plan_tree(r.plan, n, False, interner) == R.plan_tree(plan, n, False, interner)
    assert r.calls <= _bound(n)


@pytest.mark.parametrize("plan", [P.Chain(TC, k=16), P.SplitK(4, inner=P.Chain(TC, k=16), combine=P.Sequential(), tile=16)])
def test_emulated_tensor_core_gemm_rediscovered(plan):
    K = 256
    r = R.reveal(T.emulated_gemm(plan, K, N=512, in_format="bf16", block=TC), replay_count=1_000)
    assert r.revealed and r.compact and r.block_size == 16, r.to_json()
    interner = R._Interner(K)
    assert R.plan_tree(r.plan, K, True, interner) == R.plan_tree(plan, K, True, interner)
    assert r.calls <= _bound(K)


def test_wrong_plan_fails_replay():
    target = T.numpy_sum(1000)
    wrong = P.Pairwise(leaf_size=128, align=8, leaf=P.Strided(4, inner=P.Sequential(), combine=P.Pairwise()))
    m, t = target.replay(wrong, 2_000)
    assert m < t // 2


def test_bf16_output_windowed_counts():
    """An op that rounds its count to bf16 (8 bits) is revealed through windows of 256 ones."""
    plan = P.Sequential()
    base = T.emulated_sum(plan, 1024)
    target = T.Target("bf16-out sequential", 1024, "sum", out_bits=8,
                      sum_rows=lambda x: T.to_format(base.sum_rows(x), "bf16"))
    engine = R.QueryEngine(target)
    assert len(engine.windows) == 4
    tree = R.reveal_tree(engine)
    interner = R._Interner(1024)
    assert R.canonical_tree(tree, interner) == R.plan_tree(plan, 1024, False, interner)


# -- split-K revelation (cuBLAS-like black boxes: the evaluator running a known plan) ----------------
CHAIN = P.Chain(TC, k=16)
SPLITK_TRUTHS = [
    P.SplitK(3, inner=CHAIN, combine=P.Sequential(), tile=64),  # K=512: parts 192/192/128 (uneven)
    P.SplitK(4, inner=CHAIN, combine=P.Sequential(), tile=64),
    P.SplitK(4, inner=CHAIN, combine=P.Pairwise(), tile=32),  # tree combine
    P.SplitK(3, "interleaved", inner=CHAIN, combine=P.Sequential(), tile=64),
]


def _same_tree(a, b, K):
    interner = R._Interner(K)
    return R.plan_tree(a, K, True, interner) == R.plan_tree(b, K, True, interner)


@pytest.mark.parametrize("truth", SPLITK_TRUTHS, ids=repr)
def test_split_k_structured_reveal_recovers_plan(truth):
    K = 512
    target = T.emulated_gemm(truth, K, M=2, N=512, in_format="bf16", block=TC)
    r = R.reveal(target, replay_count=4096, structured=True)
    assert r.revealed and r.compact, r.to_json()
    assert (r.replay_matches, r.replay_total) == (4096, 4096)
    assert _same_tree(r.plan, truth, K)
    s = r.to_json()["structure"]
    parts = P.split_k_indices(truth, K)
    assert s["split_k"] == truth.parts and s["block_G"] == 16
    assert s["part_sizes"] == [len(p) for p in parts]
    assert s["uneven_parts"] == (len({len(p) for p in parts}) > 1)
    assert r.digest and len(r.digest["sha256"]) == 64


def test_split_k_reveal_through_bf16_output():
    """cuBLAS writes bf16: counts go through windows of 256 ones; uneven P=3 still recovered."""
    K = 1024
    truth = P.SplitK(3, inner=CHAIN, combine=P.Sequential(), tile=64)  # 384/384/256
    target = T.emulated_gemm(truth, K, M=1, N=1024, in_format="bf16", block=TC, out_format="bf16")
    r = R.reveal(target, replay_count=4096)
    assert r.revealed and _same_tree(r.plan, truth, K), r.to_json()
    assert r.to_json()["structure"]["part_bounds"] == [[0, 384], [384, 768], [768, 1024]]


def test_split_k_reveal_rejects_random_per_call_order():
    """Negative control: a black box picking split-K 3 or 4 at random per call is no fixed plan."""
    K = 512
    plans = [SPLITK_TRUTHS[0], SPLITK_TRUTHS[1]]
    target = T.emulated_unfixed_gemm(plans, K, M=2, N=512, in_format="bf16", block=TC, seed=3)
    r = R.reveal(target, replay_count=4096, structured=True)
    assert not r.revealed, r.to_json()


def test_pivot_row_matches_masking_on_truth():
    K = 512
    truth = SPLITK_TRUTHS[0]
    engine = R.QueryEngine(T.emulated_gemm(truth, K, M=2, N=512, in_format="bf16", block=TC))
    interner = R._Interner(K)
    root = R.plan_tree(truth, K, True, interner)
    for pivot in (0, 200, K - 1):
        others = np.array([j for j in range(K) if j != pivot])
        want = np.zeros(K, np.int64)
        want[others] = engine.sizes(pivot, others)
        assert np.array_equal(R.pivot_row(root, pivot, R._tree_tables(interner), K), want)


def test_compare_records_explains_split_k_difference():
    """Two simulated GPUs: P=3 vs P=4 (bits differ, explained), and P=3 on both (same bits)."""
    K = 512

    def record(truth):
        target = T.emulated_gemm(truth, K, M=2, N=512, in_format="bf16", block=TC, out_format="bf16")
        res = R.reveal(target, replay_count=4096, structured=True).to_json()
        res["label"] = "gemm"
        return {"reveals": [res]}

    p3, p4 = record(SPLITK_TRUTHS[0]), record(SPLITK_TRUTHS[1])
    [row] = R.compare_records(p3, p4)
    assert (row["split_a"], row["split_b"]) == (3, 4)
    assert row["bits_differ"] and not row["same_plan"] and row["explained"]
    assert row["row0_a_explained"] and row["row0_b_explained"] and row["plans_disagree_row0"]
    [same] = R.compare_records(p3, record(SPLITK_TRUTHS[0]))
    assert same["same_plan"] and not same["bits_differ"] and same["explained"]
    # negative control: a record whose digest was not produced by its plan is not explained
    p4["reveals"][0]["digest"] = dict(p3["reveals"][0]["digest"])
    [bad] = R.compare_records(p3, p4)
    assert not bad["explained"] and not bad["row0_b_explained"]


@pytest.mark.parametrize("fmt", ["bf16", "tf32", "fp16", "e4m3", "e5m2"])
def test_to_format_fast_paths_equal_the_rounding_module(fmt):
    from hspi_kernels.numerics.formats import decode, get_format
    from hspi_kernels.numerics.rounding import round_to_format

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp2(rng.integers(-140, 128, 200_000))).astype(np.float32)
    x[:4] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 65519.0, 2.0 ** -149]
    if fmt in ("e4m3", "e5m2"):  # the fp8 fast path covers the finite range (the card clips to it)
        f = get_format(fmt)
        x = np.clip(x * np.float32(2.0 ** -100), -f.max_finite, f.max_finite).astype(np.float32)
    ties = np.float32(1.0) + np.float32(2.0 ** -8) * np.arange(1, 9, dtype=np.float32)  # bf16 ties
    x = np.concatenate([x, ties, -ties])
    # the whole array (an overflowing value sends ml_dtypes formats to the fallback) and its part
    # inside the format's finite range (the ml_dtypes cast itself, subnormals and ties included)
    finite = x[np.abs(x) <= get_format(fmt).max_finite] if fmt != "tf32" else x
    for part in (x, finite):
        with np.errstate(over="ignore"):
            slow = decode(round_to_format(part, fmt), fmt).astype(np.float32)
        fast = T.to_format(part, fmt)
        assert np.array_equal(fast.view(np.uint32), slow.view(np.uint32))
    assert len(finite) > 100_000


def test_random_values_stream_is_unchanged():
    """The seeded inputs behind recorded digests: normal * 2^e drawn from one numpy stream (the
    values are fixed by the definition, not by the implementation, so records stay comparable)."""
    rng = np.random.default_rng(7)
    want = (rng.standard_normal((64, 33)) * np.exp2(rng.integers(-20, 20, (64, 33)))).astype(np.float32)
    got = T.random_values(np.random.default_rng(7), (64, 33), "fp32", 20)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    bf = T.random_values(np.random.default_rng(7), (64, 33), "bf16", 20)
    assert np.array_equal(bf.view(np.uint32) & 0xFFFF, np.zeros((64, 33), np.uint32))


def test_compare_records_explicit_trees_by_their_printed_form():
    """Explicit trees have no plan JSON: the same printed tree with equal bits is explained, the
    same tree with different bits (or a different tree) is not."""
    from hspi_kernels.reveal.order import compare_records

    def rec(plan, sha):
        return {"reveals": [{"label": "sum", "n": 4, "revealed": True, "plan": plan, "plan_json": None,
                             "digest": {"sha256": sha}}]}

    tree = "ExplicitTree(((0, 1), (2, 3)))"
    assert compare_records(rec(tree, "aa"), rec(tree, "aa"))[0]["explained"] is True
    assert compare_records(rec(tree, "aa"), rec(tree, "bb"))[0]["explained"] is False
    other = "ExplicitTree((((0, 1), 2), 3))"
    assert compare_records(rec(tree, "aa"), rec(other, "bb"))[0]["explained"] is False


def test_splitk_closed_form_equals_the_tree_for_the_whole_family():
    """SplitKShape (what the structured search compares) gives the same lca sizes as the plan's
    lowered tree, for every plan of the family at K = 256 and four pivots."""
    n = 256
    interner = R._Interner(n)
    fam = R.split_k_family(n, TC, 16)
    assert len(fam) > 100
    for plan in fam:
        root = R.plan_tree(plan, n, True, interner)
        tables = R._tree_tables(interner)
        shape = R.SplitKShape(plan, n)
        for pivot in (0, 17, 200, n - 1):
            others = np.array([j for j in range(n) if j != pivot])
            assert np.array_equal(shape.inside(pivot, others, np.arange(n)), R.pivot_row(root, pivot, tables, n)[others]), plan


def test_splitk_closed_form_counts_a_sparse_set_of_ones():
    """With ones on a sample of K only, the closed form counts the sample inside the lca subtree,
    as the masked queries of the emulated op measure it."""
    n = 512
    truth = P.SplitK(3, inner=P.Chain(TC, k=16), combine=P.Pairwise(), tile=64)
    engine = R.QueryEngine(T.emulated_gemm(truth, n, M=1, N=512, in_format="bf16", block=TC, out_format="bf16"))
    reps = np.arange(3, n, 40)
    others = reps[reps != 100]
    measured = len(reps) - engine.outside_counts(np.full(len(others), 100), others, reps)
    assert np.array_equal(R.SplitKShape(truth, n).inside(100, others, reps), measured)
    wrong = R.SplitKShape(P.SplitK(3, inner=P.Chain(TC, k=16), tile=64), n).inside(100, others, reps)
    assert not np.array_equal(wrong, measured)  # the sequential combine is told apart


@pytest.mark.parametrize("truth", [P.SplitK(5, inner=P.Chain(TC, k=16), combine=P.Pairwise(), tile=64),
                                   P.SplitK(7, "interleaved", inner=P.Chain(TC, k=16), combine=P.Sequential(init="zero"), tile=128)])
def test_structured_reveal_at_long_k_uses_few_calls(truth):
    """K = 11008 (a 7B down_proj) with a bf16 output: revealed and replayed 4096/4096 in far fewer
    than 4 n log2 n calls (the masks sample K; the old full pivot rows needed ~6 n ceil(n/256))."""
    K = 11008
    target = T.emulated_gemm(truth, K, M=1, N=2048, in_format="bf16", block=TC, out_format="bf16")
    r = R.reveal(target, replay_count=4096, digest_seed=None)
    assert r.revealed, r.note
    assert R.describe(r.plan, K)["part_sizes"] == R.describe(truth, K)["part_sizes"]
    assert (r.replay_matches, r.replay_total) == (4096, 4096)
    assert r.calls < 4 * K * math.log2(K) / 20


def test_structured_reveal_says_what_it_ruled_out():
    """Negative control: an order outside the family (sequential fp32 adds per product, no
    tensor-core blocks) is not revealed, and the note names the family and its closest plans."""
    K = 2048
    target = T.emulated_gemm(P.Sequential(), K, M=1, N=1024, in_format="bf16", block=TC, out_format="bf16")
    r = R.reveal(target, replay_count=1024, digest_seed=None, structured=True)
    assert not r.revealed
    assert "ruled out all" in r.note and "closest" in r.note and "counts wrong" in r.note


def test_h200_llm_shape_record_is_reproduced_by_its_plans():
    """The committed H200 record (docs/results/h200/reveal_llm_shapes.json): the revealed plan of a
    shape, evaluated on this CPU on the record's seeded inputs, gives the GPU's row-0 bits; the plan
    of the same K at another M with another split-K factor does not (negative control)."""
    import json
    from pathlib import Path

    rec = json.loads((Path(__file__).parents[1] / "docs/results/h200/reveal_llm_shapes.json").read_text())
    rows = {(r["K"], r["M"]): r for r in rec["shapes"]}
    assert rec["summary"]["revealed"] == len(rec["shapes"]) == 70
    checked = 0
    for K, m_a, m_b in [(3072, 1, 64), (5120, 1, 16)]:
        a, b = rows[(K, m_a)], rows[(K, m_b)]
        assert a["split_k"] != b["split_k"]
        for own, other in ((a, b), (b, a)):
            plan = P.plan_from_json(own["plan_json"])
            assert R.plan_row0_sha(own, plan) == own["digest"]["row0_sha256"]
            assert R.plan_row0_sha(own, P.plan_from_json(other["plan_json"])) != own["digest"]["row0_sha256"]
            checked += 1
    assert checked == 4
