"""C++ vs numpy evaluator on the sm_90 bf16 chain GEMM plan [256,4096] x [4096,256].

The numpy path runs on a [4,4096] x [4096,8] slice (same K); both rates are MAC/s and the
ratio native/numpy goes to ``benchmark.extra_info`` with platform information. Correctness is
re-checked after timing (the slice must agree bit for bit).
"""

from __future__ import annotations

import os
import platform
import time

import ml_dtypes
import numpy as np

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm

PLAN = P.Chain(P.TensorCore("sm_90", "bf16", "fp32"), k=16)
M, K, N = 256, 4096, 256
SLICE_M, SLICE_N = 4, 8


def _operands():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, K)).astype(ml_dtypes.bfloat16).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(ml_dtypes.bfloat16).astype(np.float32)
    return A, B


def test_bench_chain_gemm_native_vs_numpy(benchmark):
    A, B = _operands()
    t0 = time.perf_counter()
    ref = gemm(PLAN, A[:SLICE_M], B[:, :SLICE_N], backend="numpy")
    numpy_s = time.perf_counter() - t0
    numpy_rate = SLICE_M * SLICE_N * K / numpy_s

    D = benchmark.pedantic(gemm, args=(PLAN, A, B), rounds=3, iterations=1, warmup_rounds=1)
    native_rate = M * N * K / benchmark.stats.stats.median
    assert np.array_equal(D[:SLICE_M, :SLICE_N].view(np.uint32), ref.view(np.uint32))

    from hspi_kernels import _native

    benchmark.extra_info.update(
        plan=repr(PLAN), shape=[M, K, N], numpy_slice=[SLICE_M, K, SLICE_N],
        native_mac_per_s=native_rate, numpy_mac_per_s=numpy_rate, ratio=native_rate / numpy_rate,
        platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
        openmp=bool(_native.openmp), numpy=np.__version__,
    )
