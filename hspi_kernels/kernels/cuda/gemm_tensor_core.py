"""Tensor-core GEMM rungs: ``mma.sync`` (``csrc/cuda/gemm/mma_sync_gemm.cu``), Hopper
``wgmma`` (``csrc/cuda/gemm/wgmma_gemm.cu``) and the fast Hopper ``wgmma`` GEMM
(``csrc/cuda/gemm/wgmma_fast_gemm.cu``, :func:`wgmma_fast_gemm`): wrappers and the plan each
launch implements.

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
wgmma also takes fp8 (e4m3/e5m2) inputs with ``out_format="fp16"`` (``QGMMA.64x8x32.F16.E4M3.E4M3``
in the SASS; plan ``Chain(TensorCore("sm_90", "e4m3", "fp16", path="wgmma"), k=32)``, a preset
measured 327680/327680 on the H200 by ``python -m hspi_kernels.kernels.validation.fp8_f16``).

Shapes: mma.sync M % 16, wgmma M % 64; N % 8; K % (split_k · k_inst). Anything else is a
ValueError naming the rule (the validation pads instead).

Known caveat (SASS, nvcc 13.0, sm_90a): ``mma.sync ... .e4m3/.e5m2`` has no Hopper hardware
form; ptxas emulates it: F2FP.F16.E4M3.UNPACK_B (exact fp8 -> fp16), two HMMA.16816.F32 (the
first from +0 over the k with ``k % 4 in {0, 1}``, the second over ``k % 4 in {2, 3}`` fed by
the first), then an FADD of C. The preset ``TensorCore("sm_90", "e4m3", path="mma.sync")``
(G=32, F=13, e8m13) therefore need not describe it; ``hspi_kernels.kernels.validation.tensor_core``
tests both against the GPU. The wgmma fp8 kernel is a native QGMMA.64x8x32.

Fast path (:func:`wgmma_fast_gemm`, sm_90a only): ``D = C + A·B_nk^T`` with A [M, K] and
``B_nk`` [N, K] both row-major (K contiguous: B given transposed, torch's ``Linear.weight``
layout), bf16 or fp16, fp32 C and D [M, N]. TMA + 128-byte swizzle, a 4-stage mbarrier ring,
one producer and two consumer warpgroups, 128×256×64 tiles of m64n256k16 wgmmas, persistent
grid; with M % 256 == 0, clusters of 2 CTAs share B through TMA multicast (``cluster=2``).
Shapes: M % 128, N % 256, K % 64 (no ragged edges: ValueError). Its order is the slow wgmma
rung's with ``split_k=1``: ``wgmma_fast_gemm.plan(in_format)`` is the same plan object as
``plan(in_format=..., path="wgmma")`` and the bits equal ``wgmma_gemm(A, B_nk.T, C)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.kernels.cuda.loader import CudaUnavailable, LaunchContext, device_capability, load_module
from hspi_kernels.numerics.plans import K_INST, preset_out_format, tensor_core_gemm

SOURCES = {"mma.sync": "gemm/mma_sync_gemm.cu", "wgmma": "gemm/wgmma_gemm.cu"}
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "tf32": 4, "e4m3": 1, "e5m2": 1}
TILE_M = {"mma.sync": 16, "wgmma": 64}
TILE_N = 8
THREADS = 128
_KERNEL_TAG = {("fp16", "fp32"): "f16_f32", ("bf16", "fp32"): "bf16_f32", ("fp16", "fp16"): "f16_f16",
               ("tf32", "fp32"): "tf32_f32", ("e4m3", "fp32"): "e4m3_f32", ("e5m2", "fp32"): "e5m2_f32",
               ("e4m3", "fp16"): "e4m3_f16", ("e5m2", "fp16"): "e5m2_f16"}
# fp8 inputs with an fp16 accumulator exist as wgmma kernels only (issue 19): mma.sync fp8 on
# sm_90 is ptxas' fp16-HMMA emulation (numerics.fp8_emulation), not a kernel of this rung.
_WGMMA_ONLY = {("e4m3", "fp16"), ("e5m2", "fp16")}
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
    if (in_format, out_format) in _WGMMA_ONLY and path != "wgmma":
        raise ValueError(f"no {path} kernel for {in_format} -> {out_format}; fp16 output with fp8 input: "
                         f"path='wgmma' only")
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
    The order is :func:`hspi_kernels.numerics.plans.tensor_core_gemm`'s; this checks that a
    kernel of the configuration exists.
    """
    _check_config(path, in_format, out_format, split_k)
    return tensor_core_gemm(in_format, out_format, path=path, arch=arch, split_k=split_k)


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


# ---------------------------------------------------------------------------------------------
# Fast Hopper wgmma GEMM (csrc/cuda/gemm/wgmma_fast_gemm.cu)
# ---------------------------------------------------------------------------------------------
FAST_SOURCE = "gemm/wgmma_fast_gemm.cu"
FAST_FORMATS = ("bf16", "fp16")
FAST_TILE = (128, 256, 64)  # BM, BN, BK of the kernel (multiples the shapes must respect)
FAST_THREADS = 384          # 1 producer + 2 consumer warpgroups
FAST_BOX_ROWS = 128        # TMA box rows for A and B (box inner size: 64 elements = 128 bytes)
FAST_CLUSTERS = (1, 2)     # CTAs per cluster (2: B shared by TMA multicast; needs M % 256)
FAST_GROUP_M = 8           # tile order: unit rows (tiles, or tile pairs with clusters) per group
_FAST_KERNEL = {("bf16", 1): "hspi_wgmma_fast_bf16_f32", ("fp16", 1): "hspi_wgmma_fast_f16_f32",
                ("bf16", 2): "hspi_wgmma_fast_bf16_f32_x2", ("fp16", 2): "hspi_wgmma_fast_f16_f32_x2"}
_FAST_SMEM_SYMBOL = "hspi_wgmma_fast_smem_bytes"
_FAST_TORCH_DTYPES = {"bf16": {"bfloat16", "int16", "uint16"}, "fp16": {"float16", "int16", "uint16"}}
_FAST_CUPY_DTYPES = {"bf16": {"uint16", "int16", "bfloat16"}, "fp16": {"float16", "uint16", "int16"}}
_FAST_INFER = {"bfloat16": "bf16", "float16": "fp16"}


def fast_plan(in_format: str = "bf16", *, arch: str = "sm_90") -> Any:
    """The plan of every :func:`wgmma_fast_gemm` launch: the slow wgmma rung's (split_k=1),
    ``Chain(TensorCore("sm_90", in_format, "fp32", path="wgmma"), k=16)``."""
    if in_format not in FAST_FORMATS:
        raise ValueError(f"wgmma_fast_gemm: in_format must be one of {FAST_FORMATS}, got {in_format!r}")
    return plan(in_format=in_format, out_format="fp32", split_k=1, path="wgmma", arch=arch)


def _fast_format(A: Any, in_format: str | None) -> str:
    if in_format is None:
        name = _dtype_name(A)
        if name not in _FAST_INFER:
            raise ValueError(f"wgmma_fast_gemm: cannot infer in_format from dtype {name}; pass in_format='bf16'|'fp16'")
        return _FAST_INFER[name]
    if in_format not in FAST_FORMATS:
        raise ValueError(f"wgmma_fast_gemm: in_format must be one of {FAST_FORMATS}, got {in_format!r}")
    return in_format


def check_fast_arguments(A: Any, B_nk: Any, C: Any = None, in_format: str | None = None,
                         cluster: int | None = None) -> tuple[int, int, int, str, int]:
    """Validate a :func:`wgmma_fast_gemm` launch (no GPU work); returns (M, N, K, in_format,
    cluster) -- ``cluster=None`` picks 2 when M % 256 == 0, else 1."""
    in_format = _fast_format(A, in_format)
    if cluster is not None and cluster not in FAST_CLUSTERS:
        raise ValueError(f"wgmma_fast_gemm: cluster must be one of {FAST_CLUSTERS} or None, got {cluster!r}")
    kind = _kind(A)
    table = _FAST_TORCH_DTYPES if kind == "torch" else _FAST_CUPY_DTYPES
    _check_operand("A", A, table[in_format], in_format, kind)
    _check_operand("B_nk", B_nk, table[in_format], in_format, kind)
    if _dtype_name(A) != _dtype_name(B_nk):
        raise ValueError(f"A and B_nk must have one dtype, got {_dtype_name(A)} and {_dtype_name(B_nk)}")
    M, K = (int(s) for s in A.shape)
    N, K2 = (int(s) for s in B_nk.shape)
    if K != K2:
        raise ValueError(f"A is [M={M}, K={K}] but B_nk is [N={N}, K={K2}] (B_nk is B transposed: "
                         "[N, K], K contiguous)")
    if C is not None:
        _check_operand("C", C, {"float32"}, "fp32 accumulators", kind)
        if tuple(int(s) for s in C.shape) != (M, N):
            raise ValueError(f"C must have shape {(M, N)}, got {tuple(C.shape)}")
    bm, bn, bk = FAST_TILE
    if M == 0 or M % bm:
        raise ValueError(f"wgmma_fast_gemm: M={M} must be a positive multiple of {bm} (no ragged tiles)")
    if N == 0 or N % bn:
        raise ValueError(f"wgmma_fast_gemm: N={N} must be a positive multiple of {bn} (no ragged tiles)")
    if K == 0 or K % bk:
        raise ValueError(f"wgmma_fast_gemm: K={K} must be a positive multiple of {bk} (no ragged tiles)")
    if cluster is None:
        cluster = 2 if M % (2 * bm) == 0 else 1
    if M % (cluster * bm):
        raise ValueError(f"wgmma_fast_gemm: cluster={cluster} needs M % {cluster * bm} == 0, got M={M}")
    if max(M, N, K) >= 2**31 or M * N >= 2**62:
        raise ValueError("shape too large for 32-bit tile coordinates")
    return M, N, K, in_format, cluster


# -- CUtensorMap through the driver API (ctypes; nothing CUDA is imported before first use) ----
_CU_TENSOR_MAP_DATA_TYPE_UINT16 = 1  # the copy moves bits: 16-bit elements
_CU_TENSOR_MAP_INTERLEAVE_NONE = 0
_CU_TENSOR_MAP_SWIZZLE_128B = 3
_CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3
_CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0
_LIBCUDA: Any = None


def _libcuda():
    global _LIBCUDA
    if _LIBCUDA is None:
        import ctypes

        for name in ("libcuda.so.1", "libcuda.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise CudaUnavailable("libcuda.so (the CUDA driver) not found: wgmma_fast_gemm builds its TMA "
                                  "descriptors with cuTensorMapEncodeTiled")
        fn = lib.cuTensorMapEncodeTiled
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                       ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _LIBCUDA = lib
    return _LIBCUDA


_TENSOR_MAPS: dict[tuple[int, int, int, int, int], "_TensorMap"] = {}
_TENSOR_MAPS_MAX = 256


def tensor_map_2d(ptr: int, rows: int, cols: int, box_rows: int, box_cols: int = 64) -> Any:
    """A 128-byte CUtensorMap for a row-major [rows, cols] matrix of 16-bit elements at ``ptr``:
    box ``box_rows`` × ``box_cols`` (``box_cols · 2`` must be 128 bytes for the 128B swizzle),
    128-byte swizzle, no OOB fill (the shapes are whole tiles). The map holds only the address
    and the geometry, so it is cached on exactly those (a few µs saved per launch)."""
    if box_cols * 2 != 128:
        raise ValueError("the 128-byte swizzle needs a 128-byte box row (64 16-bit elements)")
    key = (int(ptr), int(rows), int(cols), int(box_rows), int(box_cols))
    tmap = _TENSOR_MAPS.get(key)
    if tmap is None:
        if len(_TENSOR_MAPS) >= _TENSOR_MAPS_MAX:
            _TENSOR_MAPS.clear()
        tmap = _TENSOR_MAPS[key] = _encode_tensor_map(*key)
    return tmap


def _encode_tensor_map(ptr: int, rows: int, cols: int, box_rows: int, box_cols: int) -> "_TensorMap":
    import ctypes

    buf = (ctypes.c_uint8 * 128 * 2)()  # over-allocated: the driver wants 64-byte alignment
    addr = (ctypes.addressof(buf) + 63) & ~63
    dims = (ctypes.c_uint64 * 2)(cols, rows)
    strides = (ctypes.c_uint64 * 1)(cols * 2)  # bytes between rows (dimension 0 is contiguous)
    box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
    elem = (ctypes.c_uint32 * 2)(1, 1)
    rc = _libcuda().cuTensorMapEncodeTiled(
        ctypes.c_void_p(addr), _CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, ctypes.c_void_p(ptr), dims, strides, box, elem,
        _CU_TENSOR_MAP_INTERLEAVE_NONE, _CU_TENSOR_MAP_SWIZZLE_128B, _CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        _CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if rc != 0:
        raise CudaUnavailable(f"cuTensorMapEncodeTiled failed (CUresult {rc}) for [{rows}, {cols}] box "
                              f"[{box_rows}, {box_cols}] at 0x{ptr:x}")
    return _TensorMap(buf, addr)


class _TensorMap:
    """Keeps the ctypes buffer alive; ``arg()`` is the by-value kernel argument (128 bytes)."""

    def __init__(self, buf: Any, addr: int):
        self.buf, self.addr = buf, addr

    def bytes(self) -> bytes:
        import ctypes

        return ctypes.string_at(self.addr, 128)

    def arg(self) -> Any:
        from cupy.cuda.function import CPointer  # CuPy passes the bytes at this address by value

        return CPointer(self.addr)


_FAST_PREPARED: dict[tuple, tuple[Any, int, int]] = {}


def _max_active_clusters(kernel: Any, cluster: int, smem: int) -> int | None:
    """cuOccupancyMaxActiveClusters for a kernel with compile-time cluster dims (None if the
    driver cannot say): how many clusters can be resident at once, i.e. the persistent grid."""
    import ctypes

    class LaunchConfig(ctypes.Structure):
        _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                    ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                    ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p), ("attrs", ctypes.c_void_p),
                    ("numAttrs", ctypes.c_uint)]

    try:
        fn = _libcuda().cuOccupancyMaxActiveClusters
        fn.restype = ctypes.c_int
        config = LaunchConfig(cluster * 1024, 1, 1, FAST_THREADS, 1, 1, smem, None, None, 0)
        out = ctypes.c_int(0)
        rc = fn(ctypes.byref(out), ctypes.c_void_p(int(kernel.kernel.ptr)), ctypes.byref(config))
    except Exception:  # noqa: BLE001 - an older driver / CuPy: fall back to the SM count
        return None
    return int(out.value) if rc == 0 and out.value > 0 else None


def _fast_kernel(module: Any, in_format: str, cluster: int) -> tuple[Any, int, int]:
    """(kernel, dynamic shared memory bytes, persistent CTAs) for a loaded module, prepared
    once: the byte count is read from the module (one definition, in the .cu) and set as the
    kernel's dynamic shared-memory limit; the CTA count is the SM count, for clusters the
    resident clusters (cuOccupancyMaxActiveClusters) times the cluster size."""
    import cupy

    key = (module.cubin_file or module.path_taken, module.device_id, in_format, cluster)
    if key not in _FAST_PREPARED:
        kernel = module.function(_FAST_KERNEL[(in_format, cluster)])
        ptr = module.raw.get_global(_FAST_SMEM_SYMBOL)
        smem = int(cupy.ndarray((1,), dtype=np.int32, memptr=ptr).get()[0])
        kernel.max_dynamic_shared_size_bytes = smem
        ctas = int(cupy.cuda.Device(module.device_id).attributes["MultiProcessorCount"])
        if cluster > 1:
            resident = _max_active_clusters(kernel, cluster, smem)
            ctas = resident * cluster if resident else ctas - ctas % cluster
        _FAST_PREPARED[key] = (kernel, smem, ctas)
    return _FAST_PREPARED[key]


def wgmma_fast_gemm(A: Any, B_nk: Any, C: Any = None, *, in_format: str | None = None,
                    prefer: str | None = None, cluster: int | None = None, grid: int | None = None,
                    group_m: int = FAST_GROUP_M, _module: Any = None) -> Any:
    """``D = C + A·B_nk^T`` (fp32 D [M, N]) with the fast Hopper wgmma kernel; see the module doc.

    A [M, K] and B_nk [N, K] row-major bf16/fp16 (torch bfloat16/float16, or 16-bit raw bits with
    ``in_format``), C optional fp32 [M, N]. ``cluster``: 1, 2 (B multicast to CTA pairs, needs
    M % 256) or None (2 when possible). ``grid``: persistent CTAs (default: as many as can be
    resident; rounded down to a multiple of the cluster size). ``group_m``: the tile order (unit
    rows walked together). None of these changes any output bit: every element's K chain is
    fixed.
    The bits equal ``wgmma_gemm(A, B_nk.T.contiguous(), C, in_format=...)`` and
    ``evaluate.gemm(wgmma_fast_gemm.plan(in_format), A, B_nk.T, C)``.
    """
    M, N, K, in_format, cluster = check_fast_arguments(A, B_nk, C, in_format, cluster)
    if not isinstance(group_m, (int, np.integer)) or isinstance(group_m, bool) or group_m < 1:
        raise ValueError(f"wgmma_fast_gemm: group_m must be a positive int, got {group_m!r}")
    kind = _kind(A)
    arrays = (A, B_nk) if C is None else (A, B_nk, C)
    with LaunchContext(*arrays) as lc:
        cc = device_capability(lc.device_id)[1]
        if cc != (9, 0):
            raise CudaUnavailable(f"wgmma_fast_gemm needs an sm_90 (Hopper) device: wgmma, TMA multicast; "
                                  f"device {lc.device_id} is sm_{cc[0]}{cc[1]}")
        module = _module if _module is not None else load_module(FAST_SOURCE, prefer=prefer, device=lc.device_id)
        kernel, smem, resident = _fast_kernel(module, in_format, cluster)
        D = _empty(kind, A, (M, N), "float32")
        tm_a = tensor_map_2d(_ptr(A), M, K, FAST_BOX_ROWS)
        tm_b = tensor_map_2d(_ptr(B_nk), N, K, FAST_BOX_ROWS)
        tiles = (M // FAST_TILE[0]) * (N // FAST_TILE[1])
        ctas = min(tiles, int(grid) if grid else resident)
        ctas = max(cluster, ctas - ctas % cluster)
        c_ptr = _ptr(C) if C is not None else _ptr(D)  # never read when has_c == 0
        args = (tm_a.arg(), tm_b.arg(), np.uint64(c_ptr), np.uint64(_ptr(D)), np.int32(M), np.int32(N),
                np.int32(K), np.int32(C is not None), np.int32(group_m))
        kernel((ctas, 1, 1), (FAST_THREADS, 1, 1), args, shared_mem=smem)
    return D


wgmma_fast_gemm.plan = fast_plan  # type: ignore[attr-defined]
