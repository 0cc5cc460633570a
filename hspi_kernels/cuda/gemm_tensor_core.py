"""Tensor-core GEMM rungs: ``mma.sync`` (``csrc/cuda/gemm/mma_sync_gemm.cu``) and Hopper
``wgmma`` (``csrc/cuda/gemm/wgmma_gemm.cu``): wrappers and the plan each launch implements.

``D = C + A·B`` with A [M, K], B [K, N], C and D [M, N], all row-major and contiguous. K is
walked in instruction order k = 0, k_inst, 2·k_inst, ... with the accumulator fed back, so the
plan is ``Chain(TensorCore(arch, in_format, out_format, path), k=k_inst)``; with ``split_k=P``
it is ``SplitK(P, "contiguous", inner=<that chain>, combine=Sequential("fp32"), tile=k_inst)``
(each part from +0, then ``((C + part_0) + part_1) + ...`` in fp32 RNE).

Formats (``in_format``) and the operand dtypes accepted (torch / CuPy):

========  ==========  ==============================================  ============================
format    k_inst      torch dtypes                                    CuPy / raw-bit dtypes
========  ==========  ==============================================  ============================
fp16      16          float16                                         float16, uint16, int16
bf16      16          bfloat16                                        uint16, int16 (bits)
tf32      8           float32 (the tensor core reads the tf32 bits)   float32, uint32, int32
e4m3      32          float8_e4m3fn, uint8                            uint8, int8 (bits)
e5m2      32          float8_e5m2, uint8                              uint8, int8 (bits)
========  ==========  ==============================================  ============================

``out_format``: ``"fp32"`` (C and D float32) or ``"fp16"`` (fp16 inputs only, C and D float16,
fp16 accumulator registers; no split-K).

Shapes: mma.sync M % 16, wgmma M % 64; N % 8; K % (split_k · k_inst). Anything else is a
ValueError naming the rule (the validation pads instead).

Known caveat (SASS, nvcc 13.0, sm_90a): ``mma.sync ... .e4m3/.e5m2`` has no Hopper hardware
form; ptxas emulates it: F2FP.F16.E4M3.UNPACK_B (exact fp8 -> fp16), two HMMA.16816.F32 (the
first from +0 over the k with ``k % 4 in {0, 1}``, the second over ``k % 4 in {2, 3}`` fed by
the first), then an FADD of C. The preset ``TensorCore("sm_90", "e4m3", path="mma.sync")``
(G=32, F=13, e8m13) therefore need not describe it; ``hspi_kernels.validation.tensor_core``
tests both against the GPU. The wgmma fp8 kernel is a native QGMMA.64x8x32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.cuda.loader import LaunchContext, load_module

SOURCES = {"mma.sync": "gemm/mma_sync_gemm.cu", "wgmma": "gemm/wgmma_gemm.cu"}
K_INST = {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "tf32": 4, "e4m3": 1, "e5m2": 1}
TILE_M = {"mma.sync": 16, "wgmma": 64}
TILE_N = 8
THREADS = 128
_KERNEL_TAG = {("fp16", "fp32"): "f16_f32", ("bf16", "fp32"): "bf16_f32", ("fp16", "fp16"): "f16_f16",
               ("tf32", "fp32"): "tf32_f32", ("e4m3", "fp32"): "e4m3_f32", ("e5m2", "fp32"): "e5m2_f32"}
_KERNEL_PREFIX = {"mma.sync": "hspi_mma_sync_", "wgmma": "hspi_wgmma_"}

# Operand dtypes per format (dtype names as str(torch dtype) without "torch." / numpy names).
_TORCH_DTYPES = {
    "fp16": {"float16"},
    "bf16": {"bfloat16", "int16", "uint16"},
    "tf32": {"float32", "int32", "uint32"},
    "e4m3": {"float8_e4m3fn", "uint8", "int8"},
    "e5m2": {"float8_e5m2", "uint8", "int8"},
}
_CUPY_DTYPES = {
    "fp16": {"float16", "uint16", "int16"},
    "bf16": {"uint16", "int16", "bfloat16"},
    "tf32": {"float32", "uint32", "int32"},
    "e4m3": {"uint8", "int8", "float8_e4m3fn"},
    "e5m2": {"uint8", "int8", "float8_e5m2"},
}
_OUT_DTYPE = {"fp32": "float32", "fp16": "float16"}


def kernel_name(path: str, in_format: str, out_format: str = "fp32") -> str:
    """The extern "C" entry point for (path, in_format, out_format)."""
    _check_config(path, in_format, out_format, 1)
    return _KERNEL_PREFIX[path] + _KERNEL_TAG[(in_format, out_format)]


def _check_config(path: str, in_format: str, out_format: str, split_k: int) -> None:
    if path not in SOURCES:
        raise ValueError(f"path must be one of {sorted(SOURCES)}, got {path!r}")
    if in_format not in K_INST:
        raise ValueError(f"in_format must be one of {sorted(K_INST)}, got {in_format!r}")
    if (in_format, out_format) not in _KERNEL_TAG:
        raise ValueError(f"no {path} kernel for {in_format} -> {out_format}; fp16 output needs fp16 input, "
                         f"every other input accumulates in fp32")
    if not isinstance(split_k, (int, np.integer)) or isinstance(split_k, bool) or split_k < 1:
        raise ValueError(f"split_k must be a positive int, got {split_k!r}")
    if split_k > 1 and out_format != "fp32":
        raise ValueError("split_k > 1 is implemented for fp32 output only (fp32 combine)")


def plan(*, in_format: str, out_format: str = "fp32", split_k: int = 1, path: str = "mma.sync",
         arch: str = "sm_90") -> Any:
    """The accumulation plan a launch implements (see the module doc), e.g.
    ``Chain(block=TensorCore("sm_90", "bf16", "fp32", path="mma.sync"), k=16)``; fp8 on sm_90:
    ``TensorCore("sm_90", "e4m3", "e8m13", ...)`` (the preset's output; the kernel stores fp32).

    ``arch`` names the tensor-core preset (``"sm_90"``; an ``"sm_90a"`` device is ``"sm_90"``).
    """
    from hspi_kernels.numerics.plans import Chain, Sequential, SplitK, TensorCore

    _check_config(path, in_format, out_format, split_k)
    arch = arch[:-1] if arch.endswith("a") else arch
    k = K_INST[in_format]
    inner = Chain(block=TensorCore(arch, in_format, preset_out_format(arch, in_format, out_format, path),
                                   path=path), k=k)
    if split_k == 1:
        return inner
    return SplitK(int(split_k), "contiguous", inner=inner, combine=Sequential("fp32"), tile=k)


def preset_out_format(arch: str, in_format: str, out_format: str, path: str) -> str:
    """The preset's output format for a kernel writing ``out_format`` registers: Hopper fp8 blocks
    are modelled as writing e8m13 (fp32 with 13 fraction bits) into the fp32 accumulator."""
    from hspi_kernels.numerics.tensor_core import get_preset

    if out_format == "fp32" and in_format in ("e4m3", "e5m2"):
        try:
            get_preset(arch, in_format, "fp32", path)
        except ValueError:
            return "e8m13"
    return out_format


def mma_sync_gemm(A: Any, B: Any, C: Any = None, *, in_format: str, out_format: str = "fp32",
                  split_k: int = 1, prefer: str | None = None) -> Any:
    """``D = C + A·B`` with ``mma.sync`` (one warp per 16×8 tile); see the module doc."""
    return _gemm("mma.sync", A, B, C, in_format, out_format, split_k, prefer)


def wgmma_gemm(A: Any, B: Any, C: Any = None, *, in_format: str, out_format: str = "fp32",
               split_k: int = 1, prefer: str | None = None) -> Any:
    """``D = C + A·B`` with Hopper ``wgmma.mma_async`` (one warpgroup per 64×8 tile, sm_90a)."""
    return _gemm("wgmma", A, B, C, in_format, out_format, split_k, prefer)


# ---------------------------------------------------------------------------------------------
def _kind(x: Any) -> str:
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _contiguous(x: Any) -> bool:
    return bool(x.is_contiguous()) if _kind(x) == "torch" else bool(x.flags.c_contiguous)


def _ptr(x: Any) -> int:
    return int(x.data_ptr()) if _kind(x) == "torch" else int(x.data.ptr)


def _check_operand(name: str, x: Any, allowed: set[str], what: str, kind: str) -> None:
    if _kind(x) != kind:
        raise ValueError(f"{name}: all arrays must come from one framework ({kind}), got {_kind(x)}")
    if kind == "torch" and not x.is_cuda:
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {x.device}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {tuple(x.shape)}")
    if _dtype_name(x) not in allowed:
        raise ValueError(f"{name}: dtype {_dtype_name(x)} does not hold {what}; expected one of {sorted(allowed)}")
    if not _contiguous(x):
        raise ValueError(f"{name}: expected a C-contiguous (row-major) array")
    if _ptr(x) % 16:
        raise ValueError(f"{name}: data pointer must be 16-byte aligned")


def check_arguments(path: str, A: Any, B: Any, C: Any, in_format: str, out_format: str,
                    split_k: int) -> tuple[int, int, int]:
    """Validate a launch (no GPU work); returns (M, N, K). ValueError says what is wrong."""
    _check_config(path, in_format, out_format, split_k)
    kind = _kind(A)
    table = _TORCH_DTYPES if kind == "torch" else _CUPY_DTYPES
    _check_operand("A", A, table[in_format], in_format, kind)
    _check_operand("B", B, table[in_format], in_format, kind)
    M, K = (int(s) for s in A.shape)
    K2, N = (int(s) for s in B.shape)
    if K != K2:
        raise ValueError(f"A is [M={M}, K={K}] but B is [K={K2}, N={N}]")
    if C is not None:
        _check_operand("C", C, {_OUT_DTYPE[out_format]}, f"{out_format} accumulators", kind)
        if tuple(int(s) for s in C.shape) != (M, N):
            raise ValueError(f"C must have shape {(M, N)}, got {tuple(C.shape)}")
    tm, k = TILE_M[path], K_INST[in_format]
    if M == 0 or M % tm:
        raise ValueError(f"{path}: M={M} must be a positive multiple of {tm}")
    if N == 0 or N % TILE_N:
        raise ValueError(f"{path}: N={N} must be a positive multiple of {TILE_N}")
    if K == 0 or K % (split_k * k):
        raise ValueError(f"{path} {in_format}: K={K} must be a positive multiple of split_k·k_inst = {split_k}·{k}")
    if max(M, N, K) >= 2**31 or M * max(N, K) >= 2**62:
        raise ValueError("shape too large for 32-bit index arguments")
    return M, N, K


def _empty(kind: str, like: Any, shape: tuple[int, int], dtype: str) -> Any:
    if kind == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    import cupy

    with cupy.cuda.Device(like.device.id):
        return cupy.empty(shape, dtype=dtype)


def _gemm(path, A, B, C, in_format, out_format, split_k, prefer):
    M, N, K = check_arguments(path, A, B, C, in_format, out_format, split_k)
    kind = _kind(A)
    arrays = (A, B) if C is None else (A, B, C)
    with LaunchContext(*arrays) as lc:
        module = load_module(SOURCES[path], prefer=prefer, device=lc.device_id)
        kernel = module.function(_KERNEL_PREFIX[path] + _KERNEL_TAG[(in_format, out_format)])
        D = _empty(kind, A, (M, N), _OUT_DTYPE[out_format])
        c_ptr = _ptr(C) if C is not None else _ptr(D)  # never read when has_c == 0
        args = (np.uint64(_ptr(A)), np.uint64(_ptr(B)), np.uint64(c_ptr), np.uint64(_ptr(D)),
                np.int32(M), np.int32(N), np.int32(K), np.int32(C is not None), np.int32(split_k))
        if path == "mma.sync":
            warps = (M // 16) * (N // TILE_N)
            grid = ((warps * 32 + THREADS - 1) // THREADS, 1, 1)
        else:
            grid = (N // TILE_N, M // 64, 1)
        kernel(grid, (THREADS, 1, 1), args)
    return D
