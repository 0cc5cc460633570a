"""Tensor parallelism on CPU over gloo (hspi_kernels.parallel): TP1 == plain model, TP2/TP4 change
the bits, gloo's all-reduce order is revealed per element and replays bit for bit, the emulated
row-parallel op (partials + combine plan) predicts TP2's output while wrong combines do not, and a
failing worker is a clear error, not a hang."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch.distributed as dist  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from hspi_kernels.models import prompts  # noqa: E402
from hspi_kernels.numerics import plans as P  # noqa: E402
from hspi_kernels.parallel import allreduce as AR  # noqa: E402
from hspi_kernels.parallel import tp  # noqa: E402
from hspi_kernels.parallel.group import RankGroup, WorkerError  # noqa: E402

TOKENS = prompts.random_tokens(2, 8, 512, seed=0)


def bits(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)


@pytest.fixture(scope="module")
def plain_logits():
    return tp.logits_of(tp.build_model("tiny-llama", 0, "fp32"), TOKENS)


@pytest.fixture(scope="module")
def tp2():
    with tp.TPSession(2, "tiny-llama", 0, "fp32", timeout=60) as s:
        yield s


@pytest.fixture(scope="module")
def tp4():
    with tp.TPSession(4, "tiny-llama", 0, "fp32", timeout=60) as s:
        yield s


def test_tp1_equals_plain_model(plain_logits):
    model = tp.shard_llama(tp.build_model("tiny-llama", 0, "fp32"), 0, 1)
    assert isinstance(model.model.layers[0].self_attn.o_proj, tp.RowParallelLinear)
    assert np.array_equal(bits(tp.logits_of(model, TOKENS)), bits(plain_logits))


def test_tp_degrees_change_bits_but_not_values(plain_logits, tp2, tp4):
    l2, l4 = tp2.logits(TOKENS), tp4.logits(TOKENS)
    for lw in (l2, l4):
        assert lw.shape == plain_logits.shape
        # the same function: close in value (fp32 rounding differences only) ...
        assert np.max(np.abs(lw - plain_logits)) < 1e-4 * max(1.0, float(np.max(np.abs(plain_logits))))
        # ... but the row-parallel all-reduce changes the bits (measured: most logits differ)
        assert np.mean(bits(lw) != bits(plain_logits)) > 0.1
    assert not np.array_equal(bits(l2), bits(l4))
    # negative control: the same degree again gives the same bits
    assert np.array_equal(bits(tp2.logits(TOKENS)), bits(l2))



def test_allreduce_order_two_and_four_ranks(tp2, tp4):
    # two ranks: one addition, a single tree for every element, and it replays
    o2 = AR.probe_order(tp2.group, 64)
    assert {AR._key(s.tree) for s in o2.segments} == {"(0,1)"}
    assert AR.replay(tp2.group, o2, trials=1) == (64, 64)
    # four ranks, a size not divisible by 4 and a larger one: every element's tree is a full
    # binary tree over the 4 ranks, the revealed plans replay N/N
    for numel in (1023, 4096):
        o4 = AR.probe_order(tp4.group, numel)
        leaves = [sorted(s.plan.leaves()) if isinstance(s.plan, P.ExplicitTree) else None for s in o4.segments]
        assert all(lv in (None, [0, 1, 2, 3]) for lv in leaves)
        m, t = AR.replay(tp4.group, o4, trials=1)
        assert (m, t) == (numel, numel)
        # the order is not one rank-order sum for all elements: a single Sequential over ranks
        # 0..3 must mispredict some of the collective's outputs (it would replay N/N otherwise)
        rng = np.random.default_rng(5)
        xs = rng.standard_normal((4, numel)).astype(np.float32) * np.float32(2.0) ** rng.integers(-20, 20, (4, numel))
        want = AR.allreduce(tp4.group, xs)
        assert np.array_equal(bits(AR.combine(o4, xs)), bits(want))
        assert np.mean(bits(AR.combine(P.Sequential(), xs)) == bits(want)) < 1.0
    # tensors of a few elements: each ring chunk holds 1-4 of them, so a wrong order (rank-order
    # Sequential) can fit the probe's one draw by chance; only plans of the revealed tree are kept
    for numel in (3, 16):
        o4 = AR.probe_order(tp4.group, numel)
        assert all(AR._key(s.tree) != "(((0,1),2),3)" or s.plan == P.Sequential() for s in o4.segments)
        assert AR.replay(tp4.group, o4, trials=8, seed=11) == (8 * numel, 8 * numel)


def test_tree_from_lca_is_checked():
    # a hand-written lca matrix of ((0,1),(2,3)): sizes 2 inside the pairs, 4 across
    lca = np.array([[1, 2, 4, 4], [2, 1, 4, 4], [4, 4, 1, 2], [4, 4, 2, 1]])
    assert AR._key(AR.tree_from_lca([0, 1, 2, 3], lca)) == "((0,1),(2,3))"
    seq = np.array([[1, 2, 3, 4], [2, 1, 3, 4], [3, 3, 1, 4], [4, 4, 4, 1]])
    assert AR._key(AR.tree_from_lca([0, 1, 2, 3], seq)) == "(((0,1),2),3)"
    bad = np.array([[1, 2, 2, 4], [2, 1, 4, 4], [2, 4, 1, 4], [4, 4, 4, 1]])  # not an ultrametric
    with pytest.raises(RuntimeError):
        AR.tree_from_lca([0, 1, 2, 3], bad)


def test_emulated_row_parallel_predicts_tp2(tp2):
    cap = tp2.forward(TOKENS, capture=True)
    name = "model.layers.0.self_attn.o_proj"
    ops = [r[name] for r in cap["rank_ops"]]
    assert ops[0]["x"].shape[-1] == 32 and ops[1]["w"].shape == (64, 32)  # K = 64 split in two
    order = AR.probe_order(tp2.group, ops[0]["out"].size)
    good = tp.emulate_row_parallel(ops, order)
    assert good["exact"], good
    # negative controls (two fp32 terms commute: no combine order of TP2 can be wrong): a wrong
    # K split (rank r owns input features r::2, built here from the captured slices) and TP1's
    # unsplit GEMM on the same input
    x = np.concatenate([o["x"] for o in ops], axis=-1).reshape(-1, 64)
    w = np.concatenate([o["w"] for o in ops], axis=-1)
    lin = lambda a, b: torch.nn.functional.linear(torch.from_numpy(np.ascontiguousarray(a)),
                                                  torch.from_numpy(np.ascontiguousarray(b))).numpy()
    inter = (lin(x[:, 0::2], w[:, 0::2]) + lin(x[:, 1::2], w[:, 1::2])).astype(np.float32)
    assert np.mean(bits(inter) == bits(ops[0]["out"].reshape(inter.shape))) < 1.0
    # and the plan's combine on the contiguous partials is that same a + b (any order)
    assert np.array_equal(bits(ops[0]["partial"] + ops[1]["partial"]), bits(ops[0]["out"]))
    unsplit = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    assert np.mean(bits(unsplit) == bits(ops[0]["out"].reshape(unsplit.shape))) < 1.0


def test_emulated_row_parallel_predicts_tp4_and_wrong_order_fails(tp4):
    cap = tp4.forward(TOKENS, capture=True)
    name = "model.layers.1.mlp.down_proj"
    ops = [r[name] for r in cap["rank_ops"]]
    order = AR.probe_order(tp4.group, ops[0]["out"].size)
    assert tp.emulate_row_parallel(ops, order)["exact"]
    wrong = tp.emulate_row_parallel(ops, P.Sequential())  # rank order 0,1,2,3 for every element
    assert wrong["matching"] < wrong["total"]


def test_failing_worker_is_a_clear_error():
    g = RankGroup(2, timeout=20)
    with pytest.raises(WorkerError, match=r"(?s)rank 1 failed.*deliberate failure on rank 1"):
        g.call("fail", [1, 1])
    assert g.closed and all(not p.is_alive() for p in g.procs)
    g = RankGroup(2, timeout=20)
    with pytest.raises(WorkerError, match="exited with code 3"):
        g.call("exit", [0, 0])
    assert all(not p.is_alive() for p in g.procs)


def test_bf16_allreduce_is_the_fp32_trees_with_bf16_additions(tp4):
    """gloo's bf16 sum: the trees probed in fp32, each addition done in fp32 and rounded to bf16
    (N/N); rank-order bf16 additions (the wrong-order control) and fp32 additions rounded once at
    the end (the wrong-arithmetic control) must both miss."""
    from hspi_kernels.reveal.targets import random_values, to_format

    for numel in (16, 4096):
        order = AR.probe_order(tp4.group, numel)
        xs = to_format(random_values(np.random.default_rng(21), (4, numel), "fp32", spread=8), "bf16")
        want = AR.allreduce(tp4.group, xs, dtype="bf16")
        assert np.array_equal(bits(AR.combine(order, xs, fmt="bf16")), bits(want))
        seq = AR.AllReduceOrder(4, numel, [AR.Segment(0, numel, tp._rank_order_tree(4), P.Sequential())], 0)
        assert np.mean(bits(AR.combine(seq, xs, fmt="bf16")) == bits(want)) < 1.0
        once = to_format(AR.combine(order, xs), "bf16")
        assert np.mean(bits(once) == bits(want)) < 1.0
    with pytest.raises(ValueError, match="AllReduceOrder"):
        AR.combine(P.Sequential(), xs, fmt="bf16")


def test_trace_tp_pair_explains_bf16_tp2():
    with tp.TPSession(1, "tiny-llama", 0, "bf16", timeout=60) as s1, tp.TPSession(2, "tiny-llama", 0, "bf16",
                                                                                  timeout=60) as s2:
        tr = tp.trace_tp_pair(s1, s2, TOKENS[:1])
    assert tr["first_divergence"]["op"] == "model.layers.0.self_attn.o_proj"
    assert tr["explained"] and tr["emulation_torch_partials"]["exact"], tr
    assert not tr["emulation_wrong_combine"]["exact"]  # the interleaved-K control
    m, t = map(int, tr["negative_control_unsplit_gemm"].split("/"))
    assert m < t


def test_cli_trace_tp(tmp_path):
    import json

    from typer.testing import CliRunner

    from hspi_kernels.cli import app

    r = CliRunner()
    out = tmp_path / "tp4.json"
    res = r.invoke(app, ["trace", "tp", "--degree", "4", "--out", str(out)])
    assert res.exit_code == 0 and "explained by the plan" in res.output, res.output
    rec = json.loads(out.read_text())
    assert rec["explained"] and rec["degrees"] == [1, 4] and len(rec["allreduce_order"]) == 4
    for args, code, words in ((["--degree", "1"], 2, "2..8"), (["--dtype", "fp16"], 2, "fp32 or bf16"),
                              (["--model", "gpt2-small"], 2, "llama"), (["--model", "nope"], 2, "unknown model")):
        res = r.invoke(app, ["trace", "tp", *args])
        assert res.exit_code == code and words in res.output and "Traceback" not in res.output, (args, res.output)
