"""The first probe families: library GEMMs and reductions on every available device.

Shapes follow the platform facts in DESIGN.md: cuBLAS bf16 ``[M,4096]×[4096,4096]`` picks
different kernels on H100 and H200 for M ≤ 32, and ``256×4096×256`` differs through a runtime
split-K parameter. CPU probes (numpy, torch CPU) give a GPU-less machine a real fingerprint.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hspi_kernels.probes.inputs import from_torch, generate, spec, to_torch
from hspi_kernels.probes.registry import Probe, register

_FP64_REFERENCE_MAC_LIMIT = 2**31  # fp64 references above this many MACs are skipped


def _matmul_operands(m: int, k: int, n: int, dtype: str, seed: int):
    return spec(seed, (m, k), dtype), spec(seed + 1, (k, n), dtype)


def _numpy_matmul(a_spec, b_spec):
    return generate(a_spec) @ generate(b_spec)


def _matmul_reference(a_spec, b_spec):
    return generate(a_spec).astype(np.float64) @ generate(b_spec).astype(np.float64)


def _torch_matmul(a_spec, b_spec, device: str, tf32: bool = False):
    import torch

    a, b = to_torch(generate(a_spec), device), to_torch(generate(b_spec), device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        out = a @ b
        if device == "cuda":
            torch.cuda.synchronize()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return from_torch(out)


def _row_sum_numpy(x_spec):
    return generate(x_spec).sum(axis=-1)


def _row_sum_torch(x_spec, device: str):
    x = to_torch(generate(x_spec), device)
    return from_torch(x.sum(dim=-1))


def _cumsum_torch(x_spec, device: str):
    return from_torch(to_torch(generate(x_spec), device).cumsum(dim=-1))


def _softmax_torch(x_spec, device: str):
    return from_torch(to_torch(generate(x_spec), device).softmax(dim=-1))


def _row_sum_reference(x_spec):
    return generate(x_spec).astype(np.float64).sum(axis=-1)


def _gemm_probe(backend: str, m: int, k: int, n: int, dtype: str, seed: int, measures: str,
                tf32: bool = False) -> Probe:
    a_spec, b_spec = _matmul_operands(m, k, n, dtype, seed)
    label = "tf32" if tf32 else dtype
    device = {"torch-cpu": "cpu", "torch-cuda": "cuda"}.get(backend)
    if backend == "numpy":
        run, requires = partial(_numpy_matmul, a_spec, b_spec), ()
    else:
        run = partial(_torch_matmul, a_spec, b_spec, device, tf32)
        requires = ("torch", "cuda") if device == "cuda" else ("torch",)
    reference = partial(_matmul_reference, a_spec, b_spec) if m * k * n <= _FP64_REFERENCE_MAC_LIMIT else None
    return Probe(
        id=f"{backend}/matmul/{label}/{m}x{k}x{n}",
        family="library-gemm",
        backend=backend,
        inputs={"a": a_spec, "b": b_spec, "allow_tf32": tf32},
        measures=measures,
        run=run,
        requires=requires,
        output_format="fp32" if label == "tf32" else dtype,
        reference=reference,
    )


def _reduction_probe(backend: str, op: str, rows: int, n: int, dtype: str, seed: int,
                     measures: str) -> Probe:
    x_spec = spec(seed, (rows, n), dtype)
    device = {"torch-cpu": "cpu", "torch-cuda": "cuda"}.get(backend)
    if backend == "numpy":
        run, requires = partial(_row_sum_numpy, x_spec), ()
    else:
        fn = {"sum": _row_sum_torch, "cumsum": _cumsum_torch, "softmax": _softmax_torch}[op]
        run = partial(fn, x_spec, device)
        requires = ("torch", "cuda") if device == "cuda" else ("torch",)
    return Probe(
        id=f"{backend}/{op}/{dtype}/{rows}x{n}",
        family="reduction",
        backend=backend,
        inputs={"x": x_spec, "dim": -1},
        measures=measures,
        run=run,
        requires=requires,
        output_format=dtype,
        reference=partial(_row_sum_reference, x_spec) if op == "sum" else None,
    )


def _register_builtin() -> None:
    # CPU: numpy and torch on this machine's BLAS and reduction loops.
    register(_reduction_probe("numpy", "sum", 64, 4097, "fp32", 11,
                              "numpy pairwise-sum order (lanes, block size) of this build/CPU"))
    register(_gemm_probe("numpy", 64, 1024, 64, "fp32", 21,
                         "numpy BLAS (OpenBLAS/MKL) fp32 GEMM kernel: K blocking and vector width"))
    register(_gemm_probe("torch-cpu", 64, 1024, 64, "fp32", 31,
                         "torch CPU fp32 GEMM (oneDNN/MKL/OpenBLAS) K blocking"))
    register(_gemm_probe("torch-cpu", 64, 1024, 64, "bf16", 41,
                         "torch CPU bf16 GEMM: accumulation width and output rounding"))
    register(_reduction_probe("torch-cpu", "sum", 64, 4097, "fp32", 51,
                              "torch CPU reduction tree (vector lanes, threads)"))
    register(_reduction_probe("torch-cpu", "softmax", 64, 1000, "fp32", 61,
                              "torch CPU softmax: exp implementation and reduction order"))
    # CUDA: cuBLAS through torch at decode- and prefill-like shapes.
    for m in (1, 8, 16, 32, 64, 256):
        register(_gemm_probe("torch-cuda", m, 4096, 4096, "bf16", 100 + m,
                             "cuBLAS bf16 kernel choice at this M (split-K or not, tile K)"))
    register(_gemm_probe("torch-cuda", 256, 4096, 256, "bf16", 401,
                         "cuBLAS bf16 runtime split-K parameter (same kernel name, different bits)"))
    register(_gemm_probe("torch-cuda", 8, 4096, 4096, "fp16", 501,
                         "cuBLAS fp16 kernel choice at decode shape"))
    register(_gemm_probe("torch-cuda", 64, 4096, 4096, "fp32", 601,
                         "cuBLAS tf32 tensor-core path (operand truncation, block size)", tf32=True))
    register(_gemm_probe("torch-cuda", 64, 1024, 64, "fp32", 701,
                         "cuBLAS fp32 (FFMA) order"))
    register(_reduction_probe("torch-cuda", "sum", 64, 4097, "fp32", 801,
                              "torch CUDA reduction tree (block size, vector width)"))
    register(_reduction_probe("torch-cuda", "softmax", 64, 1000, "fp32", 811,
                              "torch CUDA softmax: exp (SFU or libdevice) and reduction order"))
    register(_reduction_probe("torch-cuda", "cumsum", 4, 1 << 20, "fp32", 821,
                              "CUB decoupled look-back scan (known nondeterministic: determinism control)"))


_register_builtin()
