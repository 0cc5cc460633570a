"""The first probe families: library GEMMs and reductions on every available device.

Shapes follow the platform facts in DESIGN.md: cuBLAS bf16 ``[M,4096]×[4096,4096]`` picks
different kernels on H100 and H200 for M ≤ 32, and ``256×4096×256`` differs through a runtime
split-K parameter. CPU probes (numpy, torch CPU) give a GPU-less machine a real fingerprint.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np

from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.plans import numpy_sum_plan, plan_from_json
from hspi_kernels.probes.inputs import from_torch, generate_cached, spec, to_torch
from hspi_kernels.probes.registry import Probe, register

_FP64_REFERENCE_MAC_LIMIT = 2**31  # fp64 references above this many MACs are skipped


# Operands are generated once per suite run and shared by the probes (and the repeated runs) that
# use the same spec: a 4096x4096 operand costs ~0.4 s to draw, the GEMM itself microseconds.
# Across runs they come from the on-disk cache (inputs.generate_cached, probes.cache).
_HOST: dict[str, np.ndarray] = {}
_DEVICE: dict[tuple[str, str], Any] = {}


def operand(s: dict[str, Any]) -> np.ndarray:
    """generate(s), cached for the current suite run and on disk (read-only: never modify it)."""
    key = json.dumps(s, sort_keys=True)
    if key not in _HOST:
        array = generate_cached(s)
        if array.flags.writeable:
            array.flags.writeable = False
        _HOST[key] = array
    return _HOST[key]


def device_operand(s: dict[str, Any], device: str):
    """to_torch(generate(s), device), cached for the current suite run."""
    key = (json.dumps(s, sort_keys=True), device)
    if key not in _DEVICE:
        _DEVICE[key] = to_torch(np.array(operand(s)), device)
    return _DEVICE[key]


def clear_operand_cache() -> None:
    _HOST.clear()
    _DEVICE.clear()


def _matmul_operands(m: int, k: int, n: int, dtype: str, seed: int):
    return spec(seed, (m, k), dtype), spec(seed + 1, (k, n), dtype)


def _numpy_matmul(a_spec, b_spec):
    return operand(a_spec) @ operand(b_spec)


def _matmul_reference(a_spec, b_spec):
    return operand(a_spec).astype(np.float64) @ operand(b_spec).astype(np.float64)


def _torch_matmul(a_spec, b_spec, device: str, tf32: bool = False):
    import torch

    a, b = device_operand(a_spec, device), device_operand(b_spec, device)
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
    return operand(x_spec).sum(axis=-1)


def _row_sum_torch(x_spec, device: str):
    x = device_operand(x_spec, device)
    return from_torch(x.sum(dim=-1))


def _cumsum_torch(x_spec, device: str):
    return from_torch(device_operand(x_spec, device).cumsum(dim=-1))


def _softmax_torch(x_spec, device: str):
    return from_torch(device_operand(x_spec, device).softmax(dim=-1))


def _row_sum_reference(x_spec):
    return operand(x_spec).astype(np.float64).sum(axis=-1)


def _softmax_reference(x_spec):
    x = operand(x_spec).astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _numpy_sum_plan_eval(x_spec, plan_json):
    return evaluate(plan_from_json(plan_json), np.ascontiguousarray(operand(x_spec), dtype=np.float32))


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
        profile_kernels=device == "cuda",
    )


def _reduction_probe(backend: str, op: str, rows: int, n: int, dtype: str, seed: int,
                     measures: str) -> Probe:
    x_spec = spec(seed, (rows, n), dtype)
    device = {"torch-cpu": "cpu", "torch-cuda": "cuda"}.get(backend)
    plans, plan_eval = (), None
    if backend == "numpy":
        run, requires = partial(_row_sum_numpy, x_spec), ()
        plans, plan_eval = (numpy_sum_plan().to_json(),), partial(_numpy_sum_plan_eval, x_spec)
    else:
        fn = {"sum": _row_sum_torch, "cumsum": _cumsum_torch, "softmax": _softmax_torch}[op]
        run = partial(fn, x_spec, device)
        requires = ("torch", "cuda") if device == "cuda" else ("torch",)
    reference = {"sum": partial(_row_sum_reference, x_spec), "softmax": partial(_softmax_reference, x_spec)}.get(op)
    return Probe(
        id=f"{backend}/{op}/{dtype}/{rows}x{n}",
        family="reduction",
        backend=backend,
        inputs={"x": x_spec, "dim": -1},
        measures=measures,
        run=run,
        requires=requires,
        output_format=dtype,
        reference=reference,
        plans=plans,
        plan_eval=plan_eval,
        # the CUB scan is known to vary run to run: a check of the determinism test, not a fingerprint
        role="control" if op == "cumsum" else "fingerprint",
        profile_kernels=device == "cuda",
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
