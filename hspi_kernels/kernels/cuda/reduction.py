"""fp32 sums in fixed, stated orders (``csrc/cuda/reduction/*.cu``): wrappers, plans, CPU reference.

Row sums ``x[rows, n] -> out[rows]`` (``row_reduce.cu``), :func:`reduce_rows` with ``variant``:

==============  ==============================================================================
"sequential"    one thread per row: acc = +0; acc = rn(acc + x[r, i]), i = 0..n-1
"block_tree"    one block of ``block`` B threads per row: B strided lanes (each a sequential run
                from +0), then the shared-memory stride-halving tree ``v[t] += v[t+s]``
"warp_xor"      ``width`` W lanes per row: W strided lanes, then the xor butterfly (SHFL.BFLY)
"warp_down"     as warp_xor with the shift-down ladder (SHFL.DOWN); lane 0 holds the
                stride-halving tree, so its plan uses ``BlockTree(W)``
==============  ==============================================================================

One long vector ``x[n] -> out[]`` (``grid_reduce.cu``):
:func:`reduce_vector` is the deterministic two-pass grid reduction (``blocks`` G blocks of
``block`` B threads, fixed by the caller, never by the device); :func:`reduce_vector_atomic`
adds warp partials with ``atomicAdd`` in arrival order: NONDETERMINISTIC, the control of the
determinism check, without a plan.

:func:`reduce_vector_fast` (``vec_reduce.cu``, variant "vec4") is the bandwidth-bound
deterministic sum: 16-byte loads, ``unroll`` U vectors in flight per thread, four accumulators per
thread, G x B fixed by the wrapper (:data:`FAST_BLOCKS` x :data:`FAST_BLOCK`), a one-block tree
combine. Its bits depend on G and B only (never on U or the GPU model); its plan is
``plan("vec4", blocks=G, block=B)`` (the kernel header spells it out), also reachable as
``reduce_vector_fast.plan(n)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.kernels.cuda.loader import LaunchContext, load_module
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate

ROW_SOURCE = "reduction/row_reduce.cu"
GRID_SOURCE = "reduction/grid_reduce.cu"
VEC_SOURCE = "reduction/vec_reduce.cu"
ROW_VARIANTS = ("sequential", "block_tree", "warp_xor", "warp_down")
VECTOR_VARIANTS = ("grid_two_pass", "atomic", "vec4")
VARIANTS = ROW_VARIANTS + VECTOR_VARIANTS
KERNELS = {
    "sequential": ("hspi_reduce_rows_f32_sequential",),
    "block_tree": ("hspi_reduce_rows_f32_block_tree",),
    "warp_xor": ("hspi_reduce_rows_f32_warp_xor",),
    "warp_down": ("hspi_reduce_rows_f32_warp_down",),
    "grid_two_pass": ("hspi_reduce_f32_grid_partials", "hspi_reduce_f32_grid_combine"),
    "atomic": ("hspi_reduce_f32_atomic",),
    "vec4": ("hspi_reduce_f32_vec4_u4_partials", "hspi_reduce_f32_vec4_combine"),
}
SOURCES = {v: (ROW_SOURCE if v in ROW_VARIANTS else VEC_SOURCE if v == "vec4" else GRID_SOURCE) for v in VARIANTS}
DETERMINISTIC = {v: v != "atomic" for v in VARIANTS}
THREADS = 256  # block size of the sequential and warp kernels and of the atomic control
MAX_GRID = 1 << 16  # row kernels are grid-stride loops
DEFAULT_BLOCKS = 256  # G of the vector reductions: a constant, so the bits do not depend on the GPU
# "vec4": G x B and U are constants, never read from the device; U only changes speed.
# 528 blocks (4 per SM of a 132-SM H100/H200) of 256 threads (32 registers: all resident at once),
# 4 float4 loads in flight per thread: 0.999x torch.sum at 2^28 fp32 on an H100 (2955 GB/s,
# bench/bench_cuda_reduction.py). COMBINE_THREADS is C of the one-block combine.
FAST_BLOCKS = 528
FAST_BLOCK = 256
FAST_UNROLLS = (2, 4, 8)
FAST_UNROLL = 4
COMBINE_THREADS = 256


def vec4_kernel(unroll: int) -> str:
    """The pass-1 entry point of the "vec4" reduction for ``unroll`` U (speed only, same bits)."""
    if unroll not in FAST_UNROLLS:
        raise ValueError(f"unroll must be one of {FAST_UNROLLS}, got {unroll!r}")
    return f"hspi_reduce_f32_vec4_u{unroll}_partials"


def _check_pow2(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi \
            or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [1, {hi}], got {value!r}")
    return int(value)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def plan(variant: str = "sequential", *, block: int = 256, width: int = 32, blocks: int | None = None):
    """The accumulation plan of one output of ``variant`` (ValueError for the atomic control).

    ``blocks`` defaults to the wrapper's G: :data:`DEFAULT_BLOCKS` ("grid_two_pass"),
    :data:`FAST_BLOCKS` ("vec4").
    """
    _check_variant(variant)
    if blocks is None:
        blocks = FAST_BLOCKS if variant == "vec4" else DEFAULT_BLOCKS
    lane = P.Sequential("fp32", init="zero")
    if variant == "sequential":
        return lane
    if variant == "block_tree":
        b = _check_pow2("block", block, 1024)
        return P.Strided(lanes=b, inner=lane, combine=P.BlockTree(b))
    if variant == "warp_xor":
        w = _check_pow2("width", width, 32)
        return P.Strided(lanes=w, inner=lane, combine=P.WarpButterfly(w))
    if variant == "warp_down":
        # __shfl_down_sync ladder: lane i gets v[i] + v[i+s] for i+s < W -- on lane 0 exactly the
        # shared-memory stride-halving tree (plans has no node of its own for shift-down)
        w = _check_pow2("width", width, 32)
        return P.Strided(lanes=w, inner=lane, combine=P.BlockTree(w))
    if variant == "grid_two_pass":
        b = _check_pow2("block", block, 1024)
        g = _check_blocks(blocks)
        per_block = P.SplitK(parts=g, layout="contiguous", inner=P.BlockTree(b), combine=P.Sequential("fp32", init="zero"))
        return P.Strided(lanes=g * b, inner=lane, combine=per_block)
    if variant == "vec4":
        b = _check_pow2("block", block, 1024)
        g = _check_blocks(blocks)
        # thread g's four lanes 4g..4g+3 -> (x + y) + (z + w); block tree; one-block combine
        final = P.Strided(lanes=COMBINE_THREADS, inner=lane, combine=P.BlockTree(COMBINE_THREADS))
        per_block = P.SplitK(parts=g, layout="contiguous", inner=P.BlockTree(b), combine=final)
        per_thread = P.SplitK(parts=g * b, layout="contiguous", inner=P.Pairwise(), combine=per_block)
        return P.Strided(lanes=4 * g * b, inner=lane, combine=per_thread)
    raise ValueError("the atomicAdd reduction is nondeterministic (warp partials added in arrival order): it has no plan")


def _check_blocks(blocks: Any) -> int:
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or not 1 <= blocks <= (1 << 20):
        raise ValueError(f"blocks must be an integer in [1, 2^20], got {blocks!r}")
    return int(blocks)


def _kind(x: Any) -> str:
    kind = type(x).__module__.split(".")[0]
    if kind in ("torch", "cupy"):
        return kind
    raise ValueError(f"x: expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def check_input(x: Any, ndim: int) -> tuple[int, ...]:
    """Shape of a valid input; ValueError otherwise (framework, rank, dtype, contiguity, device)."""
    kind = _kind(x)
    if x.ndim != ndim:
        want = "x[rows, n]" if ndim == 2 else "x[n]"
        raise ValueError(f"x must be {ndim}-D ({want}), got shape {tuple(x.shape)}")
    dtype = str(x.dtype).replace("torch.", "")
    if dtype != "float32":
        raise ValueError(f"x must be float32, got {dtype}")
    if not (x.is_contiguous() if kind == "torch" else x.flags.c_contiguous):
        raise ValueError("x must be C-contiguous")
    if kind == "torch" and not x.is_cuda:
        raise ValueError(f"x: expected a CUDA tensor, got one on {x.device}")
    return tuple(int(s) for s in x.shape)


def _empty(lc, like: Any, shape: tuple[int, ...], zero: bool = False):
    if lc.kind == "torch":
        import torch

        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=like.dtype, device=like.device)
    return (lc.cupy.zeros if zero else lc.cupy.empty)(shape, dtype=np.float32)


def reduce_rows(x: Any, variant: str = "sequential", *, block: int = 256, width: int = 32,
                prefer: str | None = None) -> Any:
    """``out[r] = sum_i x[r, i]`` in the order of ``variant`` (see the module table)."""
    if variant not in ROW_VARIANTS:
        raise ValueError(f"row variant must be one of {ROW_VARIANTS}, got {variant!r}")
    if variant == "block_tree":
        block = _check_pow2("block", block, 1024)
    if variant in ("warp_xor", "warp_down"):
        width = _check_pow2("width", width, 32)
    rows, n = check_input(x, 2)
    with LaunchContext(x) as lc:
        module = load_module(ROW_SOURCE, prefer=prefer, device=lc.device_id)
        kernel = module.function(KERNELS[variant][0])
        out = _empty(lc, x, (rows,))
        if rows == 0:
            return out
        xv, ov, dims = lc.view(x), lc.view(out), (np.int64(rows), np.int64(n))
        if variant == "sequential":
            kernel((min(-(-rows // THREADS), MAX_GRID),), (THREADS,), (xv, ov, *dims))
        elif variant == "block_tree":
            kernel((min(rows, MAX_GRID),), (block,), (xv, ov, *dims), shared_mem=4 * block)
        else:
            rows_per_block = THREADS // width
            kernel((min(-(-rows // rows_per_block), MAX_GRID),), (THREADS,), (xv, ov, *dims, np.int32(width)))
    return out


def reduce_vector(x: Any, *, blocks: int = DEFAULT_BLOCKS, block: int = 256, prefer: str | None = None) -> Any:
    """Deterministic two-pass ``sum(x)`` of a 1-D float32 array; returns a 0-d array."""
    return _vector(x, "grid_two_pass", blocks, block, prefer)


def reduce_vector_atomic(x: Any, *, blocks: int = DEFAULT_BLOCKS, block: int = 256, prefer: str | None = None) -> Any:
    """``sum(x)`` with warp partials atomically added: NONDETERMINISTIC (a control, not a fingerprint).

    Float atomics also flush subnormal operands and results to zero (RED.ADD.F32.FTZ).
    """
    return _vector(x, "atomic", blocks, block, prefer)


def reduce_vector_fast(x: Any, *, blocks: int = FAST_BLOCKS, block: int = FAST_BLOCK, unroll: int = FAST_UNROLL,
                       prefer: str | None = None) -> Any:
    """Deterministic bandwidth-bound ``sum(x)`` of a 1-D, 16-byte aligned float32 array (0-d result).

    Order: ``plan("vec4", blocks=blocks, block=block)`` (see ``vec_reduce.cu``); ``unroll``
    changes the speed only. Keep the defaults for bits comparable across runs and GPUs.
    """
    g = _check_blocks(blocks)
    b = _check_pow2("block", block, 1024)
    name = vec4_kernel(unroll)
    (n,) = check_input(x, 1)
    ptr = int(x.data_ptr()) if _kind(x) == "torch" else int(x.data.ptr)
    if ptr % 16:
        raise ValueError(f"x must be 16-byte aligned for the vec4 reduction (address {ptr:#x})")
    with LaunchContext(x) as lc:
        module = load_module(VEC_SOURCE, prefer=prefer, device=lc.device_id)
        out = _empty(lc, x, ())
        partials = _empty(lc, x, (g,))
        xv, pv, ov = lc.view(x), lc.view(partials), lc.view(out)
        module.function(name)((g,), (b,), (xv, pv, np.int64(n)), shared_mem=4 * b)
        module.function(KERNELS["vec4"][1])((1,), (COMBINE_THREADS,), (pv, ov, np.int32(g)),
                                            shared_mem=4 * COMBINE_THREADS)
    return out


def _fast_plan(n: int | None = None, *, blocks: int = FAST_BLOCKS, block: int = FAST_BLOCK):
    """The plan of :func:`reduce_vector_fast` (the same for every n; ``n`` for a uniform API)."""
    return plan("vec4", blocks=blocks, block=block)


reduce_vector_fast.plan = _fast_plan  # type: ignore[attr-defined]


def _vector(x: Any, variant: str, blocks: int, block: int, prefer: str | None) -> Any:
    g = _check_blocks(blocks)
    b = _check_pow2("block", block, 1024)
    if variant == "atomic" and b < 32:
        raise ValueError(f"block must be a multiple of 32 for the atomic variant, got {b}")
    (n,) = check_input(x, 1)
    with LaunchContext(x) as lc:
        module = load_module(GRID_SOURCE, prefer=prefer, device=lc.device_id)
        out = _empty(lc, x, (), zero=variant == "atomic")
        xv, ov = lc.view(x), lc.view(out)
        if variant == "grid_two_pass":
            partials = _empty(lc, x, (g,))
            pv = lc.view(partials)
            module.function(KERNELS[variant][0])((g,), (b,), (xv, pv, np.int64(n)), shared_mem=4 * b)
            module.function(KERNELS[variant][1])((1,), (1,), (pv, ov, np.int32(g)))
        else:
            module.function(KERNELS[variant][0])((g,), (b,), (xv, ov, np.int64(n)))
    return out


def reference(x, variant: str = "sequential", *, block: int = 256, width: int = 32, blocks: int | None = None,
              backend: str = "native") -> np.ndarray:
    """Exact bits of a deterministic variant on the CPU: ``evaluate(plan(...), x)``.

    Row variants take ``x[rows, n]`` and return ``[rows]``; "grid_two_pass" and "vec4" take
    ``x[n]`` and return a 0-d array.
    """
    p = plan(variant, block=block, width=width, blocks=blocks)
    return evaluate(p, np.ascontiguousarray(x, dtype=np.float32), backend=backend)
