"""Explain time of the per-op counterfactual map on tiny-llama and on the 1B model (CPU), against the time to record
the traces in the same run.

    pytest bench/bench_trace_explain.py --benchmark-json docs/results/bench_trace_explain.json

Pair: tiny-llama fp32, batch 2, 16 tokens; trace B computes layer 0's down_proj by SplitK(4) and
layer 1's attention by an AttentionPlan (the CPU test's pair). Benchmarked: the whole-model map
(:func:`counterfactual.counterfactual`, every differing op re-run on the other side's inputs) and
one op (the split-K GEMM's row, plan search included). extra_info: seconds per differing op,
the ratio whole-map time / recording time of one trace (both measured here), platform metadata.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")

from hspi_kernels.numerics import plans as P  # noqa: E402
from hspi_kernels.numerics.attention_plan import AttentionPlan  # noqa: E402
from hspi_kernels.trace import counterfactual as C  # noqa: E402
from hspi_kernels.trace import tracer as T  # noqa: E402

KG = "model.layers.0.mlp.down_proj:mm#0"
KA = "model.layers.1.self_attn:_scaled_dot_product_flash_attention_for_cpu#0"
BASE = dict(dtype="fp32", batch=2, length=16, profile=False)


@pytest.fixture(scope="module")
def pair():
    T.run_model("tiny-llama", **BASE)  # warm-up: imports, model build caches
    t0 = time.perf_counter()
    a = T.run_model("tiny-llama", **BASE)
    record_s = time.perf_counter() - t0
    b = T.run_model("tiny-llama", **BASE, inject={KG: P.SplitK(4),
                                                   KA: AttentionPlan(block_n=4, rowsum=P.Pairwise(),
                                                                     dot=P.Sequential("fp32", fma=True))})
    return a, b, record_s


def test_whole_model_map(benchmark, pair, platform_meta):
    a, b, record_s = pair
    m = benchmark.pedantic(C.counterfactual, args=(a, b), rounds=1, iterations=1)
    assert {r["key"] for r in m["own_divergences"]} == {KG, KA}
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"platform": platform_meta, "record_seconds": record_s, "map_seconds": s,
                                 "ops": m["summary"]["ops"], "differing_ops": m["summary"]["differ"],
                                 "seconds_per_differing_op": s / max(1, m["summary"]["differ"]),
                                 "map_vs_record": s / record_s})


def test_one_gemm_op(benchmark, pair, platform_meta):
    a, b, record_s = pair
    d = T.diff(a, b)
    row = next(r for r in d["ops"] if r["key"] == KG)
    oa, ob = a.by_key()[KG], b.by_key()[KG]
    why_a, why_b = C.kernel_replayable(a), C.kernel_replayable(b)
    r = benchmark.pedantic(C._op_row, args=(a, b, oa, ob, row, 3, 1 << 30, why_a, why_b), rounds=3, iterations=1,
                           warmup_rounds=1)
    assert r["own"] and r["cause"]["category"] == "split-K factor"
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"platform": platform_meta, "record_seconds": record_s, "op_seconds": s,
                                 "op_vs_record": s / record_s})


# -- the 1B model: llama-3.2-1b (seeded), bf16, batch 1, 16 tokens, every op's arrays kept ---------------
K1B = "model.layers.0.mlp.down_proj:mm#0"  # [16, 8192] x [8192, 2048]
FULL = dict(dtype="bf16", batch=1, length=16, profile=False, keep="all", keep_layers=1 << 10, max_bytes=8 << 30,
            row_cap_bytes=1 << 40)


@pytest.fixture(scope="module")
def pair_1b():
    """Two CPU traces of the 1B model: B computes layer 0's down_proj by SplitK(3) (what cuBLAS
    does on the H200), everything after it differs by propagation."""
    import torch

    from hspi_kernels.models import zoo

    pytest.importorskip("transformers")
    model, _ = zoo.build("llama-3.2-1b", 0)
    model = model.to(torch.bfloat16).eval()
    t0 = time.perf_counter()
    a = T.run_model("llama-3.2-1b", model=model, **FULL)
    record_s = time.perf_counter() - t0
    b = T.run_model("llama-3.2-1b", model=model, **FULL, inject={K1B: P.SplitK(3)})
    return a, b, record_s


def test_whole_model_map_1b(benchmark, pair_1b, platform_meta):
    a, b, record_s = pair_1b
    m = benchmark.pedantic(C.counterfactual, args=(a, b), rounds=1, iterations=1)
    assert {r["key"] for r in m["own_divergences"]} == {K1B} and m["summary"]["undetermined"] == []
    s = benchmark.stats.stats.median
    benchmark.extra_info.update({"platform": platform_meta, "model": "llama-3.2-1b", "record_seconds": record_s,
                                 "map_seconds": s, "ops": m["summary"]["ops"],
                                 "differing_ops": m["summary"]["differ"],
                                 "seconds_per_differing_op": s / max(1, m["summary"]["differ"]),
                                 "map_vs_record": s / record_s})
