"""Triton probe kernels vs their library baselines (GPU only; skipped without CUDA or Triton).

    pytest bench/bench_triton.py --benchmark-json docs/results/bench_triton.json

Each benchmark times the Triton kernel and its baseline in the same run with
``hspi_kernels.platform.timing.gpu_time_ms`` (do_bench: L2 flushed, median), in ROUNDS alternating rounds
(median per side), re-checks correctness after timing, and puts TFLOP/s and the speed ratio
(baseline time / Triton time: > 1 is faster) in extra_info.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("bench_triton needs a CUDA GPU", allow_module_level=True)

from hspi_kernels.platform.timing import gpu_time_ms  # noqa: E402
from hspi_kernels.kernels.triton import attention as A  # noqa: E402
from hspi_kernels.kernels.triton import gemm as G  # noqa: E402

GEMM_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (64, 4096, 4096), (256, 4096, 4096), (4096, 4096, 4096),
               (8192, 8192, 8192)]


ROUNDS = 3  # alternating rounds, median of each side: clock drift within a run hits both alike


def _time_gemm(M, N, K):
    """(ours ms, cuBLAS ms, the config matmul ran, our rounds, cuBLAS rounds) for bf16 [M,K]x[K,N]:
    ``G.matmul(a, b)`` without a config, i.e. the shape rule with its persistent-TMA check."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    b = torch.randn(K, N, device="cuda", generator=g).to(torch.bfloat16)
    config = G.shape_config("bf16", M, N, K, tma=G.tma_ready(a, b, a.dtype))
    ours, base = [], []
    for _ in range(ROUNDS):
        ours.append(gpu_time_ms(lambda: G.matmul(a, b)))
        base.append(gpu_time_ms(lambda: torch.matmul(a, b)))
    out, ref = G.matmul(a, b), torch.matmul(a, b).float()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"fixed-order GEMM disagrees with cuBLAS after timing: rel {rel}"
    assert torch.equal(out, G.matmul(a, b)), "fixed-order GEMM is not deterministic"
    assert torch.equal(out, G.matmul(a, b, config)), "matmul did not run the configuration shape_config names"
    return statistics.median(ours), statistics.median(base), config, ours, base


def test_gemm_bf16_8192(benchmark, platform_meta):
    t, base, config, ours, cublas = benchmark.pedantic(_time_gemm, args=(8192, 8192, 8192), rounds=1, iterations=1)
    flop = 2 * 8192**3
    benchmark.extra_info.update(platform_meta)
    benchmark.extra_info.update({"shape": [8192, 8192, 8192], "config": repr(config), "triton_ms": t, "cublas_ms": base,
                                 "triton_ms_rounds": ours, "cublas_ms_rounds": cublas,
                                 "triton_tflops": flop / t / 1e9, "cublas_tflops": flop / base / 1e9,
                                 "speed_vs_cublas": base / t})


def test_gemm_bf16_geomean(benchmark, platform_meta):
    """Each shape with the configuration ``matmul`` picks for it (G.shape_config: a fixed table on
    M, the persistent TMA kernel above it)."""
    def run():
        return [_time_gemm(M, N, K) for M, N, K in GEMM_SHAPES]

    times = benchmark.pedantic(run, rounds=1, iterations=1)
    speeds = [base / t for t, base, *_ in times]
    benchmark.extra_info.update(platform_meta)
    benchmark.extra_info.update({
        "shapes": GEMM_SHAPES, "config_rule": "hspi_kernels.kernels.triton.gemm.shape_config (SHAPE_RULE, LARGE_M_TMA)",
        "per_shape": [{"shape": s, "config": repr(c), "triton_ms": t, "cublas_ms": b, "speed_vs_cublas": b / t,
                       "triton_ms_rounds": ro, "cublas_ms_rounds": rb}
                      for s, (t, b, c, ro, rb) in zip(GEMM_SHAPES, times)],
        "geomean_speed_vs_cublas": math.exp(sum(math.log(s) for s in speeds) / len(speeds)),
    })


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def test_attention_hd128_causal(benchmark, platform_meta):
    """Native mode (the default config of D=128: the Gluon kernel on sm_90, ``AttentionConfig.impl``)
    vs the fastest SDPA backend of this run; the tl kernel of the same order and the exact
    (replayable) mode timed alongside: their cost is reported, not gated."""
    from torch.nn.attention import sdpa_kernel

    B, H, S, D = 4, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    flop = 4 * B * H * S * S * D / 2  # causal: half the score matrix
    native, exact = A.default_config(D, "native"), A.default_config(D, "exact")
    tl_native = replace(native, impl="tl")  # the tl kernel of the same order, for comparison
    gluon_why = A._gluon_mismatch(native, q, k, v, True, q.dtype)

    def sdpa(backend):
        with sdpa_kernel([backend]):
            return gpu_time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))

    def run():
        rounds = {"triton": [], "triton_tl": [], **{name: [] for name in _sdpa_backends()}}
        for _ in range(ROUNDS):  # alternating rounds, median per kernel
            rounds["triton"].append(gpu_time_ms(lambda: A.attention(q, k, v, causal=True, config=native)))
            rounds["triton_tl"].append(gpu_time_ms(lambda: A.attention(q, k, v, causal=True, config=tl_native)))
            for name, backend in _sdpa_backends().items():
                try:
                    rounds[name].append(sdpa(backend))
                except RuntimeError:
                    pass  # backend not available for this input
        t_exact = gpu_time_ms(lambda: A.attention(q, k, v, causal=True, config=exact))
        backends = {name: statistics.median(r) if r else None for name, r in rounds.items()
                    if name not in ("triton", "triton_tl")}
        return statistics.median(rounds["triton"]), t_exact, backends, rounds

    t, t_exact, backends, rounds = benchmark.pedantic(run, rounds=1, iterations=1)
    available = {n: ms for n, ms in backends.items() if ms is not None}
    fastest = min(available, key=available.get)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).float()
    for config in (native, tl_native, exact):
        out = A.attention(q, k, v, causal=True, config=config).float()
        assert (out - ref).abs().max().item() < 5e-2, f"Triton attention ({config.mode}) disagrees with SDPA after timing"
    benchmark.extra_info.update(platform_meta)
    benchmark.extra_info.update({
        "shape": [B, H, S, D], "config": repr(native), "triton_ms": t, "triton_tflops": flop / t / 1e9,
        "implementation": "gluon" if not gluon_why else f"tl ({gluon_why})",
        "tl_kernel_ms": statistics.median(rounds["triton_tl"]),
        "tl_kernel_speed_vs_fastest_sdpa": available[fastest] / statistics.median(rounds["triton_tl"]),
        "sdpa_ms": backends, "ms_rounds": rounds, "fastest_sdpa": fastest, "speed_vs_fastest_sdpa": available[fastest] / t,
        "exact_config": repr(exact), "exact_ms": t_exact, "exact_tflops": flop / t_exact / 1e9,
        "exact_speed_vs_native": t / t_exact,
    })
