"""Fixed-order fp32 sum of 2^28 elements vs ``torch.sum`` (GPU only; skipped without CUDA/CuPy).

    pytest bench/bench_cuda_reduction.py --benchmark-json docs/results/bench_cuda_reduction.json

Times ``reduction.reduce_vector_fast`` (the deterministic "vec4" kernel with the wrapper's fixed
G x B x U) and ``torch.sum`` on the same 1 GiB tensor in the same run, with
``hspi_kernels.platform.timing.gpu_time_ms`` (L2 flushed, median) and with a back-to-back event loop
(launch overhead hidden, as in a model). extra_info: GB/s of both, ``ratio_vs_torch``
(torch time / our time: >= 1 is as fast), the old scalar two-pass kernel for reference, and a
bits check after timing (our sum twice: identical; close to a float64 sum).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cupy")
if not torch.cuda.is_available():
    pytest.skip("bench_cuda_reduction needs a CUDA GPU", allow_module_level=True)

from hspi_kernels.kernels.cuda import reduction as R  # noqa: E402
from hspi_kernels.platform.timing import gpu_time_ms  # noqa: E402

N = 1 << 28


def loop_time_ms(fn, iters: int = 20) -> float:
    """Mean GPU time per call of ``iters`` back-to-back calls between two events (no L2 flush:
    a 1 GiB input does not fit the 50 MiB L2 anyway)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def _measure():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N, device="cuda", generator=g)
    ours = lambda: R.reduce_vector_fast(x)  # noqa: E731
    base = lambda: torch.sum(x)  # noqa: E731
    old = lambda: R.reduce_vector(x)  # noqa: E731
    t = {"ours_ms": gpu_time_ms(ours), "torch_ms": gpu_time_ms(base), "two_pass_ms": gpu_time_ms(old),
         "ours_loop_ms": loop_time_ms(ours), "torch_loop_ms": loop_time_ms(base)}
    a, b = ours(), ours()
    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), "vec4 sum is not deterministic"
    exact = torch.sum(x.double()).item()
    assert abs(a.item() - exact) < 1e-3 * N**0.5, (a.item(), exact)
    return t


def test_sum_fp32_2pow28(benchmark, platform_meta):
    t = benchmark.pedantic(_measure, rounds=1, iterations=1)
    gb = 4 * N / 1e9
    benchmark.extra_info.update(platform_meta)
    benchmark.extra_info.update({
        "n": N, "blocks": R.FAST_BLOCKS, "block": R.FAST_BLOCK, "unroll": R.FAST_UNROLL,
        "plan": repr(R.reduce_vector_fast.plan(N)), **t,
        "ours_gbps": gb / t["ours_ms"] * 1e3, "torch_gbps": gb / t["torch_ms"] * 1e3,
        "two_pass_gbps": gb / t["two_pass_ms"] * 1e3,
        "ratio_vs_torch": t["torch_ms"] / t["ours_ms"], "ratio_vs_torch_loop": t["torch_loop_ms"] / t["ours_loop_ms"],
        "target_ratio": 0.95,
    })
