"""CUDA-core GEMM with a selectable accumulation order (``csrc/cuda/gemm/cuda_core_gemm.cu``).

``C[M,N] = A[M,K] @ B[K,N]``, row-major, fp32 or fp64, one output per thread, no tensor cores.
The order in which each thread forms its dot product is the contract:

==============  ==============================================================================
order           what one thread does (each step ``fma(a,b,acc)`` or ``rn(acc + rn(a*b))``)
==============  ==============================================================================
"sequential"    acc = +0; k = 0, 1, ..., K-1
"reverse"       acc = +0; k = K-1, ..., 0
"strided"       ``lanes`` L (power of two <= 64) sequential runs over k = j, j+L, ... each from
                +0; the L lane sums combined by the balanced pairwise tree
"splitk"        ``parts`` P contiguous chunks of ceil(K/P), each a sequential run from +0
                (written to a [P,M,N] workspace); combine: acc = +0; acc += W[p], p = 0..P-1
==============  ==============================================================================

:func:`plan` gives the accumulation plan (:mod:`hspi_kernels.numerics.plans`) of a launch, and
:func:`reference` its exact bits on the CPU (fp32 through :func:`numerics.evaluate.gemm`; fp64,
which the plan language does not model yet, through the float64 emulation below).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.kernels.cuda.loader import LaunchContext, load_module
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm as eval_gemm

SOURCE = "gemm/cuda_core_gemm.cu"
ORDERS = ("sequential", "reverse", "strided", "splitk")
DTYPES = {"fp32": ("f32", np.float32), "fp64": ("f64", np.float64)}
_ORDER_TAG = {"sequential": "seq", "reverse": "rev", "strided": "strided", "splitk": "splitk_partial"}
BLOCK = (32, 8)  # threads along n, along m
MAX_GRID_XY = 65535  # the kernels are grid-stride loops in both dimensions
MAX_LANES = 64  # kMaxLanes in the kernel
MAX_PARTS = 65535  # gridDim.z


# ---------------------------------------------------------------------------------------------
# Names, plans, argument checks (no GPU, no CuPy)
# ---------------------------------------------------------------------------------------------
def _check_config(order: str, dtype: str, lanes: int, parts: int) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if order == "strided":
        if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or not 1 <= lanes <= MAX_LANES \
                or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two in [1, {MAX_LANES}], got {lanes!r}")
    if order == "splitk":
        if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or not 1 <= parts <= MAX_PARTS:
            raise ValueError(f"parts must be an integer in [1, {MAX_PARTS}], got {parts!r}")


def kernel_names(order: str = "sequential", dtype: str = "fp32", fused: bool = True) -> list[str]:
    """The extern "C" entry points one launch uses, in launch order."""
    _check_config(order, dtype, 1, 1)
    tag = DTYPES[dtype][0]
    names = [f"hspi_gemm_{tag}_{_ORDER_TAG[order]}_{'fma' if fused else 'mul_add'}"]
    if order == "splitk":
        names.append(f"hspi_gemm_{tag}_splitk_combine")
    return names


def all_kernel_names() -> list[str]:
    """Every entry point of the .cu file (for build and SASS checks)."""
    names: set[str] = set()
    for order in ORDERS:
        for dtype in DTYPES:
            for fused in (True, False):
                names.update(kernel_names(order, dtype, fused))
    return sorted(names)


def terms_reversed(order: str) -> bool:
    """Whether :func:`plan` applies to the k axis reversed (``A[:, ::-1] @ B[::-1, :]``)."""
    return order == "reverse"


def plan(order: str = "sequential", dtype: str = "fp32", fused: bool = True, *, lanes: int = 8,
         parts: int = 4):
    """The accumulation plan one output of the launch implements.

    "reverse" has no node of its own in the plan language: its plan is that of "sequential",
    applied to the reversed k axis (:func:`terms_reversed`). fp32 and fp64 alike.
    """
    _check_config(order, dtype, lanes, parts)
    seq = P.Sequential(dtype, fma=bool(fused), init="zero")
    combine_seq = P.Sequential(dtype, init="zero")
    if order in ("sequential", "reverse"):
        return seq
    if order == "strided":
        return P.Strided(lanes=int(lanes), inner=seq, combine=P.Pairwise())
    return P.SplitK(parts=int(parts), layout="contiguous", inner=seq, combine=combine_seq)


def _kind(x: Any) -> str:
    kind = type(x).__module__.split(".")[0]
    if kind in ("torch", "cupy"):
        return kind
    raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def check_args(A: Any, B: Any) -> tuple[int, int, int, str]:
    """(M, N, K, dtype) of a valid launch; ValueError naming the problem otherwise.

    Order of checks: framework, ranks and shapes, dtypes, contiguity, device; so every error
    but the last can be provoked with CPU tensors.
    """
    kinds = {name: _kind(x) for name, x in (("A", A), ("B", B))}
    if len(set(kinds.values())) != 1:
        raise ValueError(f"A and B must come from one framework, got A: {kinds['A']}, B: {kinds['B']}")
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"A and B must be 2-D (A[M,K], B[K,N]), got shapes {tuple(A.shape)} and {tuple(B.shape)}")
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
    da, db = _dtype_name(A), _dtype_name(B)
    if da != db or da not in ("float32", "float64"):
        raise ValueError(f"A and B must both be float32 or both float64, got {da} and {db}")
    for name, x in (("A", A), ("B", B)):
        contiguous = x.is_contiguous() if kinds[name] == "torch" else x.flags.c_contiguous
        if not contiguous:
            raise ValueError(f"{name} must be C-contiguous (row-major)")
    for name, x in (("A", A), ("B", B)):
        if kinds[name] == "torch" and not x.is_cuda:
            raise ValueError(f"{name}: expected a CUDA tensor, got one on {x.device}")
    M, K = (int(s) for s in A.shape)
    N = int(B.shape[1])
    return M, N, K, "fp32" if da == "float32" else "fp64"


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------
def _empty(lc, like: Any, shape: tuple[int, ...]):
    if lc.kind == "torch":
        import torch

        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return lc.cupy.empty(shape, dtype=like.dtype)


def gemm(A: Any, B: Any, order: str = "sequential", fused: bool = True, *, lanes: int = 8, parts: int = 4,
         prefer: str | None = None) -> Any:
    """``A @ B`` on the GPU in the stated order; returns an array of A's kind (torch / CuPy).

    ``A[M,K]``, ``B[K,N]``: C-contiguous, both float32 or both float64, on one CUDA device.
    """
    _check_config(order, "fp32", lanes, parts)  # configuration errors first, then the arrays
    M, N, K, dtype = check_args(A, B)
    names = kernel_names(order, dtype, fused)
    with LaunchContext(A, B) as lc:
        module = load_module(SOURCE, prefer=prefer, device=lc.device_id)
        out = _empty(lc, A, (M, N))
        if M == 0 or N == 0:
            return out
        grid_xy = (min(-(-N // BLOCK[0]), MAX_GRID_XY), min(-(-M // BLOCK[1]), MAX_GRID_XY))
        a, b, c = lc.view(A), lc.view(B), lc.view(out)
        dims = (np.int64(M), np.int64(N), np.int64(K))
        if order in ("sequential", "reverse"):
            module.function(names[0])((*grid_xy, 1), (*BLOCK, 1), (a, b, c, *dims))
        elif order == "strided":
            module.function(names[0])((*grid_xy, 1), (*BLOCK, 1), (a, b, c, *dims, np.int32(lanes)))
        else:
            work = _empty(lc, A, (int(parts), M, N))
            w = lc.view(work)
            module.function(names[0])((*grid_xy, int(parts)), (*BLOCK, 1), (a, b, w, *dims, np.int32(parts)))
            mn = M * N
            module.function(names[1])((min(-(-mn // 256), 1 << 16),), (256,), (w, c, np.int64(mn), np.int32(parts)))
    return out


# ---------------------------------------------------------------------------------------------
# CPU reference: the exact bits
# ---------------------------------------------------------------------------------------------
def reference(A, B, order: str = "sequential", fused: bool = True, *, lanes: int = 8, parts: int = 4,
              backend: str = "native") -> np.ndarray:
    """Exact result of the launch on the CPU, from numpy arrays (dtype picks fp32 / fp64):
    ``evaluate.gemm(plan(...), A, B)``, on the reversed k axis for "reverse"."""
    A, B = np.asarray(A), np.asarray(B)
    dtype = "fp64" if A.dtype == np.float64 else "fp32"
    _check_config(order, dtype, lanes, parts)
    np_dtype = np.float64 if dtype == "fp64" else np.float32
    p = plan(order, dtype, fused, lanes=lanes, parts=parts)
    if terms_reversed(order):
        A, B = A[:, ::-1], B[::-1, :]
    return eval_gemm(p, np.ascontiguousarray(A, np_dtype), np.ascontiguousarray(B, np_dtype), backend=backend)
