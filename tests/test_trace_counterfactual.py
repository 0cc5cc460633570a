"""The per-op counterfactual map (``hspi_kernels.trace.counterfactual``) on CPU traces of tiny-llama,
and the trace pipeline's answers to bad input.

Trace B computes two ops by known orders (the tracer's injection): layer 0's ``down_proj`` GEMM by
``SplitK(4)`` and layer 1's fused attention by an ``AttentionPlan`` (BLOCK_N 4). Everything between
and after them differs only by propagation. The map must find exactly those two ops as own
divergences (every other differing op is re-run with B's implementation on A's inputs and gives
A's bits), name split-K and the attention backend / order, count N/N on all outputs of the op,
and report nothing on two identical runs. Negative controls: wrong plans miss outputs of B.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.attention_plan import AttentionPlan, evaluate_attention
from hspi_kernels.trace import counterfactual as C
from hspi_kernels.trace import explain as E
from hspi_kernels.trace import tracer as T

KG = "model.layers.0.mlp.down_proj:mm#0"
KA = "model.layers.1.self_attn:_scaled_dot_product_flash_attention_for_cpu#0"
DOT = P.Sequential("fp32", fma=True)
ATT4 = AttentionPlan(block_n=4, rowsum=P.Pairwise(), dot=DOT)
ATT16 = AttentionPlan(block_n=16, rowsum=P.Pairwise(), dot=DOT)
BASE = dict(dtype="fp32", batch=2, length=16, profile=False)


@pytest.fixture(scope="module")
def traces():
    a = T.run_model("tiny-llama", **BASE)
    a2 = T.run_model("tiny-llama", **BASE)
    b = T.run_model("tiny-llama", **BASE, inject={KG: P.SplitK(4), KA: ATT4})
    return a, a2, b


@pytest.fixture(scope="module")
def cmap(traces):
    a, _, b = traces
    return C.counterfactual(a, b)


def test_identical_runs_have_no_own_divergence(traces):
    a, a2, _ = traces
    m = C.counterfactual(a, a2)
    assert m["summary"]["differ"] == 0 and m["summary"]["own"] == 0 and m["own_divergences"] == []
    assert set("".join("".join(g.values()) for g in m["grid"].values())) == {"."}


def test_injected_split_k_and_attention_are_the_only_own_divergences(cmap):
    own = {r["key"] for r in cmap["own_divergences"]}
    assert own == {KG, KA}
    # no false positives: every other differing op (layer 1, the head) only propagates, and that
    # verdict is a real replay of B's implementation on A's inputs giving A's bits
    rest = [r for r in cmap["ops"] if r["key"] not in own]
    assert len(rest) >= 30 and all(r["own"] is False for r in rest)
    assert all(r["b_on_a"]["n_diff"] == 0 and r["a_on_b"]["n_diff"] == 0 for r in rest)
    assert cmap["summary"]["own_explained"] == 2 and cmap["summary"]["undetermined"] == []


def test_split_k_op_is_named_with_all_outputs(cmap):
    (r,) = [r for r in cmap["ops"] if r["key"] == KG]
    assert r["status"] == "origin" and r["cause"]["category"] == "split-K factor"
    assert r["cause"]["plan_b"] == "SplitK(4)"
    n = 2 * 16 * 64  # every output of the op
    assert any(p["plan"] == "SplitK(4)" and p["matches"] == p["total"] == n for p in r["impl_b"]["plans"])
    assert r["impl_a"]["kernel"]  # A: the CPU kernel, re-executed bit for bit
    assert r["b_on_a"]["n"] == n and 0 < r["b_on_a"]["n_diff"] < n
    hist = r["b_on_a"]["ulp_histogram"]  # over all outputs, the zero bin = the equal ones
    assert sum(hist.values()) == n and hist["[0,0]"] == n - r["b_on_a"]["n_diff"]


def test_attention_op_is_named_with_all_outputs(cmap):
    (r,) = [r for r in cmap["ops"] if r["key"] == KA]
    assert r["status"] == "propagated" and r["own"] is True  # found although its inputs differ
    assert r["cause"]["category"] == "attention backend"
    n = 2 * 4 * 16 * 16 + 2 * 4 * 16  # output and log-sum-exp
    plans_b = r["impl_b"]["plans"]
    assert any(p["plan"] == repr(ATT4) for p in plans_b) and all(p["matches"] == p["total"] == n for p in plans_b)
    # A's side is torch's CPU flash kernel: re-executed, and (searched for the cause) its replay
    # (numerics.attention_cpu) reproduces it on every output and lse value; the cause names both sides
    assert r["impl_a"]["kernel"] and r["impl_a"]["plans"][0]["plan"].startswith("attention_cpu.ORDER")
    assert r["impl_a"]["plans"][0]["matches"] == r["impl_a"]["plans"][0]["total"] == n
    assert "attention_cpu.ORDER" in r["cause"]["detail"] and repr(ATT4) in r["cause"]["detail"]
    assert r["b_on_a"]["n"] == n and r["b_on_a"]["n_diff"] > 0


def test_attention_order_change_between_two_plans_is_named_by_field():
    a = T.run_model("tiny-llama", **BASE, inject={KA: ATT16})
    b = T.run_model("tiny-llama", **BASE, inject={KA: ATT4})
    m = C.counterfactual(a, b)
    (r,) = m["own_divergences"]
    assert r["key"] == KA and r["cause"]["category"] == "attention order"
    assert r["cause"]["detail"].startswith("block_n ") and "4" in r["cause"]["detail"]
    assert all(x["impl"].startswith("plan AttentionPlan") for x in (r["b_on_a"], r["a_on_b"]))


def test_wrong_plans_are_rejected(traces):
    a, _, b = traces
    ob = b.by_key()[KG]
    xb = C._input_values(b, ob)
    bits_b = b.arrays[f"a/{ob['outputs'][0]['digest']}"]
    for wrong in (P.SplitK(2), P.SplitK(4, "interleaved"), P.Sequential()):
        got = C._gemm_eval(wrong, "none", *C._gemm_parts(ob, xb), "fp32", 1 << 20)
        assert np.count_nonzero(got != bits_b) > 0, wrong
    right = C._gemm_eval(P.SplitK(4), "none", *C._gemm_parts(ob, xb), "fp32", 1 << 20)
    assert np.array_equal(right, bits_b)
    oa = b.by_key()[KA]
    q, k, v = C._input_values(b, oa)[:3]
    out_b = b.arrays[f"a/{oa['outputs'][0]['digest']}"]
    for wrong in (AttentionPlan(block_n=8, rowsum=P.Pairwise(), dot=DOT), AttentionPlan(block_n=4, dot=DOT, rowsum=P.Sequential()),
                  AttentionPlan(block_n=4, rowsum=P.Pairwise(), dot=DOT, domain="log2", exp="numpy")):
        got = evaluate_attention(wrong, q, k, v, fmt="fp32", causal=True, scale=0.25).view(np.uint32)
        assert np.count_nonzero(got != out_b) > 0, wrong


def test_gemm_replay_in_row_chunks_equals_one_pass(traces):
    _, _, b = traces
    ob = b.by_key()[KG]
    parts = C._gemm_parts(ob, C._input_values(b, ob))
    whole = C._gemm_eval(P.SplitK(4), "none", *parts, "fp32", 1 << 30)
    tiny = C._gemm_eval(P.SplitK(4), "none", *parts, "fp32", 1)  # one row per chunk
    assert whole.shape == (32, 64) and np.array_equal(whole, tiny)


def test_full_check_of_a_wide_gemm_in_column_blocks():
    # an LM-head-like output (N well over the 4096-output head block, several column blocks):
    # the plan's own bits pass N/N on every output, one flipped bit in the last block or another
    # split-K order is rejected, and a column block of the replay is that block of the whole
    rng = np.random.default_rng(3)
    M, K, N = 3, 64, 20000
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    for c, ep in ((None, "none"), (rng.standard_normal(N).astype(np.float32), "bias-after"),
                  (rng.standard_normal(N).astype(np.float32), "bias-as-c")):
        bits = C._gemm_eval(P.SplitK(4), ep, a, b, c, "fp32", 1 << 30)
        assert bits.shape == (M, N)
        block = C._gemm_eval(P.SplitK(4), ep, a, b, c, "fp32", 1 << 30, cols=slice(5000, 17000))
        assert np.array_equal(block, bits[:, 5000:17000])
        e = {"plan_json": P.SplitK(4).to_json(), "epilogue": ep}
        got = C._full_check(e, a, b, c, bits, "fp32", 1 << 30)
        assert got is not None and got["matches"] == got["total"] == M * N
        late = bits.copy()
        late[M - 1, N - 1] ^= 1  # the last output of the last block
        assert C._full_check(e, a, b, c, late, "fp32", 1 << 30) is None
        head = bits.copy()
        head[0, 7] ^= 1  # inside the head block
        assert C._full_check(e, a, b, c, head, "fp32", 1 << 30) is None
        assert C._full_check({"plan_json": P.SplitK(2).to_json(), "epilogue": ep}, a, b, c, bits, "fp32",
                             1 << 30) is None


def test_map_text_fits_80_columns_and_lands_in_explain_json_and_html(traces, tmp_path):
    a, _, b = traces
    x = C.explain_with_map(a, b)
    text = x["map_text"]
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "S split-K factor" in text and "B attention backend" in text and KG in text
    json.dumps(x, default=str)
    html = T.html_view(T.diff(a, b), None, x, tmp_path / "x.html").read_text()
    assert "counterfactual map" in html and "split-K factor" in html


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(traces, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    a, _, b = traces
    return d, a.save(d / "a.npz"), b.save(d / "b.npz")


def test_truncated_and_corrupt_files_are_value_errors(saved):
    d, pa, _ = saved
    raw = pa.read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (d / "junk.npz").write_bytes(b"not a zip file at all" * 10)
    np.savez(d / "nometa.npz", x=np.zeros(3))
    cases = {"trunc.npz": "truncated or corrupt", "junk.npz": "truncated or corrupt", "nometa.npz": "no __meta__"}
    for name, msg in cases.items():
        with pytest.raises(ValueError, match=msg) as info:
            T.load(d / name)
        assert name in str(info.value)
    tr = T.load(pa)  # a stored array listed in the metadata but missing from the file
    tr.arrays.pop(next(k for k in tr.arrays if k.startswith("a/")))
    tr.save(d / "lost.npz")
    with pytest.raises(ValueError, match="listed but missing"):
        T.load(d / "lost.npz")
    with pytest.raises(FileNotFoundError):
        T.load(d / "absent.npz")


def test_different_models_or_prompts_are_value_errors(traces):
    a, _, _ = traces
    q = T.run_model("tiny-qwen2", **BASE)
    with pytest.raises(ValueError, match="different models: model 'tiny-llama'"):
        C.counterfactual(a, q)
    short = T.run_model("tiny-llama", **{**BASE, "length": 8})
    with pytest.raises(ValueError, match="different prompts: length 16"):
        E.explain(a, short)
    other = T.Trace(json.loads(json.dumps(a.meta)), a.arrays, "other.npz")
    other.meta["run"]["tokens"][0][0] += 1
    with pytest.raises(ValueError, match="token ids differ"):
        T.check_pair(a, other)
    T.check_pair(a, T.Trace(json.loads(json.dumps(a.meta)), a.arrays))  # control: the same pair passes


def test_cli_explain_bad_input_is_one_line_no_traceback(saved, traces):
    from hspi_kernels.cli import app

    d, pa, pb = saved
    raw = pa.read_bytes()
    (d / "t.npz").write_bytes(raw[: len(raw) // 3])
    runner = CliRunner()
    r = runner.invoke(app, ["trace", "explain", str(d / "t.npz"), str(pb)])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    assert "truncated or corrupt" in r.output and len(r.output.strip().splitlines()) == 1
    q = T.run_model("tiny-qwen2", **BASE).save(d / "q.npz")
    r = runner.invoke(app, ["trace", "explain", str(pa), str(q)])
    assert r.exit_code == 2 and "different models" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


# -- input layout: equal values, another memory layout, other bits (the cuDNN SDPA case on a GPU) --
class _RowSum:
    """A tiny module: h = x @ W (mm), then a row sum of h in row-major (A) or column-major (B)
    storage. The CPU sum kernel walks a strided row in another order, so B's sum gives other bits
    from the same values (55 of 64 rows for this seed)."""

    @staticmethod
    def trace(column_major: bool, seed: int = 0):
        import torch
        from hspi_kernels import platform as plat

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                g = torch.Generator().manual_seed(seed)
                self.w = torch.nn.Parameter(torch.randn(96, 1000, generator=g), requires_grad=False)

            def forward(self, x):
                h = x @ self.w
                if column_major:
                    h = h.t().contiguous().t()  # same values, strides (1, 64)
                return h.sum(-1)

        m = M()
        x = torch.randn(64, 96, generator=torch.Generator().manual_seed(seed + 1))
        meta, arrays = T.record(m, lambda: m(x), keep="all", profile=False, regenerable=False)
        meta.update({"model": {"name": "rowsum", "seed": seed, "spec": {}}, "platform": plat.collect(),
                     "run": {"device": "cpu", "batch": 64, "length": 96, "tokens": [], "gemm": "torch"},
                     "label": "column-major" if column_major else "row-major"})
        return T.Trace(meta, arrays, "B" if column_major else "A")


def test_layout_is_recorded_and_diff_names_it():
    a, b = _RowSum.trace(False), _RowSum.trace(True)
    (sa,) = [o for o in a.ops if o["op"] == "sum"]
    (sb,) = [o for o in b.ops if o["op"] == "sum"]
    assert sa["inputs"][0]["layout"][0] == [1000, 1] and sb["inputs"][0]["layout"][0] == [1, 64]
    d = T.diff(a, b)
    (o,) = d["origins"]
    assert o["key"] == sa["key"] and o["input_layouts_differ"] == {"0": {"stride": [[1000, 1], [1, 64]]}}


def test_input_layout_cause_found_and_checked_by_replay():
    a, b = _RowSum.trace(False), _RowSum.trace(True)
    m = C.counterfactual(a, b)
    (r,) = m["own_divergences"]
    assert r["cause"]["category"] == "input layout" and r["cause"]["layouts"] == {"0": {"stride": [[1000, 1], [1, 64]]}}
    # B's kernel call (its layout) on A's values gives B's bits, not A's: an own divergence, all outputs
    assert r["b_on_a"]["n"] == 64 and 0 < r["b_on_a"]["n_diff"] <= 64 and r["b_on_a"]["gives_own"]
    assert C.SYMBOLS["input layout"] in "".join("".join(g.values()) for g in m["grid"].values())


def test_same_layout_is_not_a_layout_cause():
    # negative control: two row-major runs have no divergence; a layout change that leaves the
    # bits alone (the mm of B reads the same row-major x) is not reported
    a, a2, b = _RowSum.trace(False), _RowSum.trace(False), _RowSum.trace(True)
    assert C.counterfactual(a, a2)["summary"]["differ"] == 0
    mm = [r for r in T.diff(a, b)["ops"] if r["op"] == "mm"]
    assert mm and all(r["status"] == "equal" for r in mm)
    # and the placement really rebuilds strides: A's op re-run in B's layout gives B's bits
    (ob,) = [o for o in b.ops if o["op"] == "sum"]
    vals = C._input_values(a, [o for o in a.ops if o["op"] == "sum"][0])
    assert C._kernel_reproduces(ob, C._run_kernel(ob, vals, b))


# -- attention regions: a fused op on one side, the math decomposition on the other ---------------------
@pytest.fixture(scope="module")
def fused_vs_math():
    kw = dict(dtype="bf16", batch=2, length=16, profile=False)
    return T.run_model("tiny-llama", **kw), T.run_model("tiny-llama", **kw, attn="sdpa-math")


def test_fused_attention_region_own_divergence(fused_vs_math):
    a, b = fused_vs_math
    m = C.counterfactual(a, b)
    regions = m["regions"]
    assert [x["key"].split(".")[2] for x in regions] == ["0", "1"] and all(x["side"] == "A" for x in regions)
    for x in regions:
        assert x["kernel_reproduces"] and x["own"] is True and x["cause"]["category"] == "attention backend"
        assert x["other_backend"] == "math (decomposed)"
        n = 2 * 4 * 16 * 16  # batch x heads x length x head_dim: every output of the region
        assert x["other_on_this"]["n"] == n and 0 < x["other_on_this"]["n_diff"] < n
    # layer 0 sees equal q, k, v on both sides: the math replay must be B's own region output
    assert regions[0]["other_region_output_equal"] is True and "other_region_output_equal" not in regions[1]
    assert m["summary"]["regions_own"] == 2 and m["summary"]["regions_undetermined"] == []


def test_region_replay_of_the_same_backend_gives_the_recorded_output(fused_vs_math):
    # negative control of the replay: the fused side's own backend on its own inputs is not a divergence
    a, _ = fused_vs_math
    op = [o for o in a.ops if o["op"] == "_scaled_dot_product_flash_attention_for_cpu"][0]
    x = C._input_values(a, op)
    got = C._sdpa_under("FLASH_ATTENTION", x, op, a)
    assert T._digest(got, "bf16") == op["outputs"][0]["digest"]
    assert T._digest(C._sdpa_under("MATH", x, op, a), "bf16") != op["outputs"][0]["digest"]
    assert C.counterfactual(a, a)["regions"] == []


def test_sdpa_rng_state_outputs_are_not_results():
    # a fused SDPA op returns the CUDA generator's philox seed/offset (int64) next to its output and
    # log-sum-exp: two calls that differ only there computed the same attention
    def op(out, seed):
        return {"op": "_scaled_dot_product_cudnn_attention",
                "outputs": [{"digest": out, "dtype": "bfloat16"}, {"digest": "lse", "dtype": "float32"},
                            {"digest": seed, "dtype": "int64"}, {"digest": "off", "dtype": "int64"}]}
    assert T.result_outputs(op("o", "s")) == [0, 1]
    assert T._results_equal(op("o", "s1"), op("o", "s2"))
    assert not T._results_equal(op("o1", "s"), op("o2", "s"))  # the control: a result that differs
    mm = {"op": "mm", "outputs": [{"digest": "x", "dtype": "int64"}]}
    assert T.result_outputs(mm) == [0]  # other ops: every output is a result


def test_attention_call_reads_each_backends_signature():
    q = {"tensor": True}
    # flash: (q, k, v, dropout_p, is_causal, return_debug_mask); cuDNN / efficient: (q, k, v, attn_bias,
    # compute_log_sumexp, dropout_p, is_causal, ...): is_causal sits at 4 and at 6
    flash = T.attention_call("_scaled_dot_product_flash_attention", [q, q, q, 0.0, True, False], {"scale": 0.125})
    cudnn = T.attention_call("_scaled_dot_product_cudnn_attention", [q, q, q, None, False, 0.0, True, False], {})
    eff = T.attention_call("_scaled_dot_product_efficient_attention", [q, q, q, None, True, 0.0, False], {})
    assert (flash["causal"], flash["scale"], cudnn["causal"], eff["causal"]) == (True, 0.125, True, False)
    assert not cudnn["mask"] and T.attention_call("_scaled_dot_product_cudnn_attention",
                                                  [q, q, q, q, False, 0.0, True], {})["mask"]


def test_failed_plan_cache_keys_on_named_kernels_only(traces):
    """A plan that failed the N/N check of one op is skipped for later ops of the same key only
    where the key names the kernel: an op with kernel names that was not injected. Seeded with
    every candidate as failed, A's (named) down_proj finds no plan, while B's injected one still
    finds SplitK(4) (it shares the key but is not the named kernel: the 1B bench found an ungated
    cache calling it undetermined), and so does an op without kernel names."""
    import copy

    a, _, b = traces
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for t in (a, b):
        for o in t.ops:
            o["kernels"] = ["fake_gemm_kernel"] if o.get("op") in ("mm", "addmm") else []
    oa, ob = a.by_key()[KG], b.by_key()[KG]
    K = C._input_values(a, oa)[0].shape[-1]
    every = {repr(p) for p in E.gemm_candidates(K, "fp32", (), (), tensor_core=False)}
    C._FAILED.clear()
    C._PLAN_CACHE.clear()
    try:
        C._FAILED[C._cache_key(a, oa)] = set(every)
        found_a, _ = C._gemm_plans(a, oa, C._input_values(a, oa), 3, 1 << 30)
        C._FAILED[C._cache_key(b, ob)] = set(every)
        found_b, _ = C._gemm_plans(b, ob, C._input_values(b, ob), 3, 1 << 30)
        assert found_a == []
        assert any("SplitK(4" in x["plan"] for x in found_b)
        oa["kernels"] = []
        C._FAILED[C._cache_key(a, oa)] = set(every)
        found_unnamed, _ = C._gemm_plans(a, oa, C._input_values(a, oa), 3, 1 << 30)
        assert found_unnamed
    finally:
        C._FAILED.clear()
        C._PLAN_CACHE.clear()


def test_map_in_parts_merges_to_the_whole_map(traces, cmap):
    """A map made in n parts (every n-th differing op and region, as a long pair is split over
    processes or device calls) and merged is the one-part map: rows, grid, summary, own
    divergences. Controls: one part alone is not the whole map (it lacks the other parts' ops,
    marked 'other part' in its grid); a missing, repeated or foreign part is refused."""
    a, a2, b = traces
    parts = [C.counterfactual(a, b, part=(i, 3)) for i in range(3)]
    merged = C.merge_parts(parts[::-1])
    strip = lambda m: json.loads(json.dumps({k: m[k] for k in ("summary", "ops", "regions", "grid", "slots", "own_divergences")},
                                            default=str))
    assert strip(merged) == strip(cmap)
    assert sum(p["summary"]["differ"] for p in parts) == cmap["summary"]["differ"]
    assert parts[0]["summary"]["differ"] < cmap["summary"]["differ"]
    assert C.SYMBOLS["other part"] in "".join("".join(g.values()) for g in parts[0]["grid"].values())
    # a pair with attention regions (math vs the CPU flash op): each region's grid cell is re-run in
    # one part only, "unmatched" in the others; merged in either order it is the whole map's cell
    m_ = T.run_model("tiny-llama", **BASE, attn="sdpa-math")
    whole = C.counterfactual(m_, a)
    assert whole["summary"]["regions_own"] >= 2
    rparts = [C.counterfactual(m_, a, part=(i, 3)) for i in range(3)]
    for order in (rparts, rparts[::-1]):
        assert strip(C.merge_parts(order)) == strip(whole)
    with pytest.raises(ValueError, match="parts 0..n-1"):
        C.merge_parts(parts[:2])
    with pytest.raises(ValueError, match="parts 0..n-1"):
        C.merge_parts([parts[0], parts[0], parts[2]])
    with pytest.raises(ValueError, match="another pair"):
        C.merge_parts(parts[:2] + [C.counterfactual(a, a2, part=(2, 3))])
    with pytest.raises(ValueError, match="part must be"):
        C.counterfactual(a, b, part=(3, 3))
