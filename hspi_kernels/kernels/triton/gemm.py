"""Fixed-order GEMM in Triton: ``C[M, N] = A[M, K] @ B[K, N]`` with an fp32 accumulator.

The accumulation order is the contract (batch_invariant_ops style: fixed configs, no autotune):

- every output element is one dot product over K, walked in order ``k = 0, 1, ..., K-1`` in tiles
  of BLOCK_K, the fp32 accumulator carried from tile to tile (the tensor-core accumulator chain);
  the order does not depend on BLOCK_M/N, on the tile's place in the grid or on M (so the result
  of row i does not depend on the batch size: batch invariance);
- tensor-core paths (bf16, fp16, fp8, fp32 with ``input_precision="tf32"``) therefore realise
  ``Chain(TensorCore(arch, fmt, out, path="wgmma"), k=<instruction K>)`` on sm_90 (DESIGN.md:
  ``tl.dot`` bits do not depend on BLOCK_K); fp32 ``"ieee"`` is the CUDA-core FMA loop,
  ``Sequential(fma=True, init="zero")`` (Triton 3.6 lowers it to ``llvm.fmuladd``, which
  becomes ``fma.rn.f32`` whatever ``enable_fp_fusion`` says: checked on the sm_90 PTX); ``"tf32x3"`` (three tf32 products) has no
  plan in the plan language and is checked against an error bound instead;
- fp8 (e4m3 / e5m2): without ``max_num_imprecise_acc`` Triton's sm_90 default keeps the whole K
  in the wgmma accumulator (13 fraction bits, the model's ``e8m13`` output); with
  ``max_num_imprecise_acc = m`` every m products start a fresh wgmma accumulator whose result is
  added to the fp32 accumulator (``SplitK(K/m, tile=m, inner=Chain(..), combine=Sequential)``);
- split-K (``split_k = P > 1``): K tiles are cut into P contiguous parts, part p writes its fp32
  partial to a workspace, and a second kernel adds the parts in the fixed order 0..P-1
  (``SplitK(P, "contiguous", tile=BLOCK_K, ...)``). ``split_k_combine="atomic"`` instead
  ``atomic_add``s the parts into a zeroed output: NONDETERMINISTIC (arrival order), no plan;
- ``persistent=True``: one program per SM walks output tiles ``pid, pid + NUM_SMS, ...`` with TMA
  loads (``tl.make_tensor_descriptor``); the per-element order is the same K chain;
- shape rule (:func:`shape_config`, used by ``matmul(a, b)`` without a config): bf16/fp16 pick
  BLOCK_M/N, BLOCK_K, warps and stages from a fixed table on M (no autotuning, no split-K), so
  small M fills the SMs, and large M takes the persistent TMA kernel when the operands allow it.
  Only the tiling changes, never an output's K chain: :func:`plan` is the same for every M (a
  row's bits do not depend on the batch size; checked bitwise on the GPUs for b = 1..4096 and
  N/N against the plan for every table entry).

K not a multiple of BLOCK_K: the last tile is zero-padded (masked loads / TMA zero fill), so the
plan is evaluated on operands zero-padded to a multiple of BLOCK_K (:func:`padded_k`).
Every launch passes ``enable_fp_fusion`` explicitly (its default changes between versions).
Arch: the plans describe sm_90 (Hopper, wgmma); other archs run the same kernels with their own
tensor-core arithmetic. Importing this module imports neither torch nor Triton; the kernels are
defined on first use.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from hspi_kernels.numerics.plans import Chain, Sequential, SplitK, TensorCore

__all__ = [
    "GemmConfig", "default_config", "shape_config", "SHAPE_RULE", "LARGE_M_TMA", "tma_ready", "matmul", "plan", "padded_k", "require_triton", "shared_memory_bytes",
    "INPUT_PRECISIONS", "SPLIT_K_COMBINES", "SHARED_MEMORY_LIMIT_SM90",
]

INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")
SPLIT_K_COMBINES = ("fixed", "atomic")
# the K of one wgmma / mma instruction per input format (the Chain step)
_INSTRUCTION_K = {"bf16": 16, "fp16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}


def require_triton():
    """Import Triton (and torch), or raise ImportError saying what to install."""
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "hspi_kernels.kernels.triton needs torch and Triton (tested with triton==3.6.0): "
            f"pip install triton==3.6.0 ({exc})"
        ) from exc
    return triton


@dataclass(frozen=True)
class GemmConfig:
    """One fixed launch configuration; every field is part of the kernel's contract.

    ``split_k`` parts combined by ``split_k_combine`` ("fixed": workspace + ordered sum,
    "atomic": atomic_add, nondeterministic). ``input_precision`` applies to fp32 inputs only,
    ``max_num_imprecise_acc`` to fp8 inputs only (None: Triton's default, all of K imprecise).
    """

    block_m: int = 128
    block_n: int = 256
    block_k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 4
    split_k: int = 1
    split_k_combine: str = "fixed"
    input_precision: str = "tf32"
    max_num_imprecise_acc: int | None = None
    enable_fp_fusion: bool = False
    persistent: bool = False

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"GemmConfig: {name} must be a power of two >= 16, got {value}")
        if self.group_m < 1 or self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"GemmConfig: group_m, split_k, num_warps, num_stages must be >= 1: {self}")
        if self.input_precision not in INPUT_PRECISIONS:
            raise ValueError(f"GemmConfig: input_precision must be one of {INPUT_PRECISIONS}, got {self.input_precision!r}")
        if self.split_k_combine not in SPLIT_K_COMBINES:
            raise ValueError(f"GemmConfig: split_k_combine must be one of {SPLIT_K_COMBINES}, got {self.split_k_combine!r}")
        if self.persistent and self.split_k != 1:
            raise ValueError("GemmConfig: the persistent kernel does not split K")
        m = self.max_num_imprecise_acc
        if m is not None and (m < 32 or m % 32 or self.block_k % m):
            raise ValueError(f"GemmConfig: max_num_imprecise_acc must be a multiple of 32 dividing block_k={self.block_k}, got {m}")

    def replace(self, **changes) -> "GemmConfig":
        return dataclasses.replace(self, **changes)

    @property
    def deterministic(self) -> bool:
        return not (self.split_k > 1 and self.split_k_combine == "atomic")


# Hopper: 227 KiB of shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin = 232448 B)
SHARED_MEMORY_LIMIT_SM90 = 232448


def default_config(fmt: str, **changes) -> GemmConfig:
    """The fixed H100 configuration for an input format ("bf16", "fp16", "fp32", "e4m3", "e5m2").

    bf16/fp16: 128x256x64, GROUP_M 8, 8 warps, 4 stages (0.96x cuBLAS at 8192^3 on the H100,
    DESIGN.md); fp8: 128x256x128, 3 stages; fp32 on tensor cores: 128x128x32, 4 stages; fp32
    "ieee" (CUDA-core FMA loop, register-bound): 64x64x32, 4 warps, 3 stages.

    ``persistent=True`` (TMA kernel) uses BLOCK_N 128 for the tensor-core formats: its pipeline
    keeps num_stages A and B tiles *and* a BLOCK_M x BLOCK_N staging tile for the TMA store in
    shared memory, so 128x256x64 bf16 with an fp32 output needs 327712 B (> 232448 B on sm_90);
    128x128 tiles need <= 196664 B for every format and output (sm_90 compile, Triton 3.6,
    :func:`shared_memory_bytes`; checked by tests/test_triton_kernels.py)."""
    if fmt in ("bf16", "fp16"):
        base = GemmConfig()
    elif fmt in ("e4m3", "e5m2"):
        base = GemmConfig(block_k=128, num_stages=3)
    elif fmt == "fp32":
        if changes.get("input_precision", "tf32") == "ieee":
            base = GemmConfig(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)
        else:
            base = GemmConfig(block_m=128, block_n=128, block_k=32, num_warps=8, num_stages=4)
    else:
        raise ValueError(f"default_config: unknown input format {fmt!r}")
    if changes.get("persistent") and base.block_n > 128:
        base = base.replace(block_n=128, num_stages=4)
    return base.replace(**changes) if changes else base


# The shape rule for bf16/fp16: (largest M, changes to default_config); the first row whose
# bound is >= M applies. Above every bound: LARGE_M_TMA (persistent TMA kernel, 128x256x64, 3
# stages) when the operands allow it (``tma``: row-major contiguous, 16-byte rows, 16-bit output,
# see :func:`tma_ready`), else default_config (128x256x64, 4 stages). BLOCK_M 64 is wgmma's
# minimum (one warpgroup, 4 warps); the small-M tiles are narrow in N so [M <= 64, 4096] x
# [4096, 4096] runs 128 programs on 132 SMs (memory-bound decode). Chosen from H100 sweeps against
# cuBLAS in the same process, median of 3 alternating rounds (docs/results/h100/triton/README.md,
# third session): M = 1 / 16 / 64: 64x32x256/4 stages 0.96 / 1.00 / 0.88 (64x32x128/6 stages, the
# previous entry, 0.92 / 1.01 / 0.87; 64x16x256 0.69 at M = 1); M = 256: 64x64x64/6 stages 0.94
# (64x128x64/4 stages, the previous entry, 0.84; 128x128x64 0.64); M = 4096 / 8192: persistent
# TMA 128x256x64/3 stages 0.97 / 1.02 (128x256x64/4 stages 0.91 / 0.92, GROUP_M 16 0.93 / 0.98,
# 256x128 0.88 / 0.89). Persistent 128x256 needs a 16-bit output: its TMA-store staging tile
# (128x256 fp32 = 128 KiB) plus 3 stages of A/B do not fit 227 KiB with an fp32 output.
SHAPE_RULE: tuple[tuple[int, dict], ...] = (
    (64, dict(block_m=64, block_n=32, block_k=256, num_warps=4, num_stages=4)),
    (256, dict(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=6)),
)
LARGE_M_TMA = dict(persistent=True, num_stages=3)


def tma_ready(a, b, out_dtype) -> bool:
    """Whether [M, K] x [K, N] operands a, b and an output of ``out_dtype`` can take the rule's
    persistent TMA entry: both row-major contiguous, 16-byte aligned rows (K and N
    elements), a 2-byte output dtype (its staging tile must fit shared memory)."""
    if not (a.is_contiguous() and b.is_contiguous()):
        return False
    out_size = out_dtype.itemsize
    K, N = a.shape[1], b.shape[1]
    return (out_size == 2 and (K * a.element_size()) % 16 == 0 and (N * b.element_size()) % 16 == 0
            and (N * out_size) % 16 == 0)


def shape_config(fmt: str, M: int, N: int | None = None, K: int | None = None, *, tma: bool = False,
                 **changes) -> GemmConfig:
    """The configuration ``matmul(a, b)`` uses for an [M, K] x [K, N] problem: bf16/fp16 follow
    :data:`SHAPE_RULE` (a fixed table on M: deterministic, no autotuning, K never split) and, above
    it, :data:`LARGE_M_TMA` when ``tma`` (the operands pass :func:`tma_ready`) else
    :func:`default_config`; other formats their :func:`default_config`. N and K are accepted for a
    future table but unused. Every entry has the same per-output order (``plan`` ignores
    BLOCK_M/N, warps, stages and the persistent walk; ``tl.dot`` bits do not depend on BLOCK_K),
    so mm(a[:b], w) == mm(a, w)[:b] bitwise."""
    base = _rule_config(fmt, M, tma)
    return base.replace(**changes) if changes else base


@functools.lru_cache(maxsize=4096)
def _rule_config(fmt: str, M: int, tma: bool) -> GemmConfig:
    """shape_config without changes, cached: ``matmul`` without a config asks on every call, and
    building a GemmConfig costs ~10 us of host time, which a 20 us decode GEMM cannot hide."""
    base = default_config(fmt)
    if fmt in ("bf16", "fp16"):
        for bound, entry in SHAPE_RULE:
            if M <= bound:
                return base.replace(**entry)
        if tma:
            return base.replace(**LARGE_M_TMA)
    return base


def shared_memory_bytes(config: GemmConfig, in_format: str, out_format: str = "fp32", arch: int = 90) -> int:
    """Shared memory (bytes) one program of ``config`` needs, from a compile-only build for
    ``sm_<arch>`` (no GPU needed: Triton ships ptxas). Compare with
    :data:`SHARED_MEMORY_LIMIT_SM90`; a launch above the limit raises ``OutOfResources``.
    Needs Triton without ``TRITON_INTERPRET``. ``out_format``: "fp32", "bf16", "fp16"."""
    require_triton()
    import triton as _triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    elem = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "e4m3": "fp8e4nv", "e5m2": "fp8e5"}[in_format]
    out = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[out_format]
    precision = config.input_precision if in_format == "fp32" else None
    const = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
                 INPUT_PRECISION=precision, MAX_IMPRECISE=config.max_num_imprecise_acc)
    ptrs = {"a_ptr": "*" + elem, "b_ptr": "*" + elem, "c_ptr": "*" + out}
    # as a launch on row-major operands specialises them: unit strides are constants, pointers,
    # sizes and leading strides divisible by 16 (vector loads, cp.async pipelining: the most smem)
    if config.persistent:
        kernel = _kernels()["persistent"]
        const["NUM_SMS"] = 132
        ints = ("M", "N", "K")
    else:
        kernel = _kernels()["gemm"]
        const.update(stride_ak=1, stride_bn=1, stride_cn=1, ATOMIC=not config.deterministic, MASK_M=False)
        ints = ("M", "N", "K", "stride_am", "stride_bk", "stride_cp", "stride_cm", "TILES_PER_PART")
    sig = {**ptrs, **{n: "i32" for n in ints}}
    sig.update({n: "constexpr" for n in const})
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in (*ptrs, *ints) if n != "TILES_PER_PART"}
    compiled = _triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": config.num_warps, "num_stages": config.num_stages,
                                        "enable_fp_fusion": config.enable_fp_fusion})
    return int(compiled.metadata.shared)


def padded_k(K: int, config: GemmConfig) -> int:
    """K rounded up to a multiple of BLOCK_K: the operands the plan is evaluated on."""
    return -(-K // config.block_k) * config.block_k


def _k_tile_split(K: int, config: GemmConfig) -> tuple[int, int, int]:
    """(k_tiles, tiles_per_part, non_empty_parts) of the contiguous split-K layout."""
    k_tiles = max(1, -(-K // config.block_k))
    per_part = -(-k_tiles // config.split_k)
    return k_tiles, per_part, -(-k_tiles // per_part)


def plan(config: GemmConfig, in_format: str, K: int, arch: str = "sm_90"):
    """The accumulation plan of one output element, as a :mod:`hspi_kernels.numerics.plans` plan,
    for operands zero-padded to ``padded_k(K, config)``; ``None`` where no plan exists (atomic
    split-K: arrival order; tf32x3: three products per term). ``in_format``: "bf16", "fp16",
    "fp32", "e4m3", "e5m2"."""
    if not config.deterministic:
        return None
    k_pad = padded_k(K, config)
    if in_format == "fp32":
        if config.input_precision == "tf32x3":
            return None
        if config.input_precision == "ieee":
            inner = Sequential("fp32", fma=True, init="zero")  # llvm.fmuladd -> fma.rn.f32, fusion on or off
        else:
            inner = Chain(TensorCore(arch, "tf32", "fp32", path="wgmma"), k=_INSTRUCTION_K["tf32"])
    elif in_format in ("bf16", "fp16"):
        inner = Chain(TensorCore(arch, in_format, "fp32", path="wgmma"), k=_INSTRUCTION_K[in_format])
    elif in_format in ("e4m3", "e5m2"):
        block = TensorCore(arch, in_format, "e8m13" if arch == "sm_90" else "fp32", path="wgmma")
        inner = Chain(block, k=_INSTRUCTION_K[in_format])
        m = config.max_num_imprecise_acc
        if m is not None and m < k_pad:
            # a fresh wgmma accumulator every m products, added into the fp32 accumulator (+0 seed)
            inner = SplitK(k_pad // m, "contiguous", inner=inner, combine=Sequential("fp32", init="zero"), tile=m)
    else:
        raise ValueError(f"plan: unknown input format {in_format!r}")
    if config.split_k == 1:
        return inner
    # the workspace combine seeds with part 0 and adds parts 1.. in order (empty parts skipped)
    return SplitK(config.split_k, "contiguous", inner=inner, combine=Sequential("fp32"), tile=config.block_k)


# -- kernels (defined on first use) --------------------------------------------------------------
@functools.cache
def _kernels():
    """Define the Triton kernels (imports Triton); returns a dict of them."""
    global triton, tl, _grouped_tile, _gemm_kernel, _splitk_combine_kernel, _gemm_persistent_tma_kernel
    require_triton()
    import triton
    import triton.language as tl

    @triton.jit
    def _grouped_tile(tile_id, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # GROUP_M row-tiles share B column-tiles in L2; changes which program computes a tile, not order
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        return pid_m, pid_n

    @triton.jit
    def _gemm_kernel(
        a_ptr, b_ptr, c_ptr, M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_cp, stride_cm, stride_cn,
        TILES_PER_PART,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, MAX_IMPRECISE: tl.constexpr, ATOMIC: tl.constexpr, MASK_M: tl.constexpr,
    ):
        """C tile (pid_m, pid_n) of K-part ``program_id(1)``.

        Order: acc = +0; for K tiles kt = part*TILES_PER_PART, ... in increasing order:
        acc = dot(A[:, kt], B[kt, :], acc) (tensor-core chain / FMA loop, k ascending). Part p
        stores to C + p*stride_cp (workspace) or atomically adds into C (ATOMIC, unordered)."""
        pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        part = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # rows/columns past the edge read row 0 / column 0 (discarded at the store): no masks in the loop,
        # except MASK_M (M not a multiple of BLOCK_M): rows past M are not loaded at all. Without it,
        # M = 1 sent all 64 rows of every program to the same A row, an L2 hot spot (2x slower than
        # M = 64 on the H100). Masked rows are zeros in discarded outputs: no output's order changes.
        # The contiguity hints (as in the Triton tutorials) let the unit-stride loads vectorise and
        # pipeline (cp.async); without them B loads were scalar (0.06x cuBLAS at 8192^3, H100).
        rows = tl.max_contiguous(tl.multiple_of(tl.where(offs_m < M, offs_m, 0), BLOCK_M), BLOCK_M)
        cols = tl.max_contiguous(tl.multiple_of(tl.where(offs_n < N, offs_n, 0), BLOCK_N), BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        kt_start = part * TILES_PER_PART
        kt_end = tl.minimum(kt_start + TILES_PER_PART, k_tiles)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(kt_start, kt_end):
            k = kt * BLOCK_K + offs_k
            if MASK_M:
                a = tl.load(a_ptr + rows[:, None] * stride_am + k[None, :] * stride_ak,
                            mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
            else:
                a = tl.load(a_ptr + rows[:, None] * stride_am + k[None, :] * stride_ak, mask=k[None, :] < K, other=0.0)
            b = tl.load(b_ptr + k[:, None] * stride_bk + cols[None, :] * stride_bn, mask=k[:, None] < K, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                         out_dtype=tl.float32)
        c_ptrs = c_ptr + part * stride_cp + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        if ATOMIC:
            tl.atomic_add(c_ptrs, acc, mask=mask, sem="relaxed")
        else:
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _splitk_combine_kernel(ws_ptr, c_ptr, numel, stride_p, PARTS, BLOCK: tl.constexpr):
        """C = ((ws[0] + ws[1]) + ws[2]) + ... + ws[PARTS-1]: fp32, parts in order, seed ws[0]."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
        for p in range(1, PARTS):
            acc = acc + tl.load(ws_ptr + p * stride_p + offs, mask=mask, other=0.0)
        tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gemm_persistent_tma_kernel(
        a_ptr, b_ptr, c_ptr, M, N, K,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        NUM_SMS: tl.constexpr, INPUT_PRECISION: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
    ):
        """Persistent: program pid computes tiles pid, pid+NUM_SMS, ...; operands via TMA
        (row-major A, B, C; out-of-range boxes zero-filled). Per element: acc = +0, K tiles in
        increasing order, acc = dot(a, b, acc): the same chain as _gemm_kernel."""
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[K, N], strides=[N, 1], block_shape=[BLOCK_K, BLOCK_N])
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile_id in range(tl.program_id(0), num_tiles, NUM_SMS):
            pid_m, pid_n = _grouped_tile(tile_id, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_tiles):
                a = a_desc.load([pid_m * BLOCK_M, kt * BLOCK_K])
                b = b_desc.load([kt * BLOCK_K, pid_n * BLOCK_N])
                acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, max_num_imprecise_acc=MAX_IMPRECISE,
                             out_dtype=tl.float32)
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_desc.dtype))

    return {"gemm": _gemm_kernel, "combine": _splitk_combine_kernel, "persistent": _gemm_persistent_tma_kernel}


# -- public wrapper ------------------------------------------------------------------------------
@functools.cache
def _format_names() -> dict:
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}


def _format_of(dtype) -> str:
    names = _format_names()
    if dtype not in names:
        raise TypeError(f"fixed-order GEMM: unsupported input dtype {dtype}; supported: {list(names.values())}")
    return names[dtype]


def _default_out_dtype(dtype):
    import torch

    return torch.float32 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype


@functools.cache
def _num_sms(device_index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _set_tma_allocator() -> None:
    """Device-side tensor descriptors need global scratch; Triton asks this allocator for it."""
    import torch
    import triton as _triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    _triton.set_allocator(alloc)


# -- launch cache --------------------------------------------------------------------------------
# A decode GEMM ([1..256, 4096] x [4096, 4096]) runs for 10-20 us on an H200; the checks, the
# config rule and Triton's generic launcher (argument binding, specialisation key, cache lookup)
# cost about as much host time. ``matmul`` therefore remembers, per launch key -- everything the
# launch depends on except the data pointers -- the compiled kernel, its grid and its argument
# list, and later calls with the same key launch that kernel directly with the new tensors.
# The same compiled kernel with the same arguments: the bits are those of the generic path.
_LAUNCHES: dict[tuple, "_Launch"] = {}
_LAUNCH_CACHE_MAX = 4096
LAUNCH_CACHE = True   # False: every call takes the generic launcher (``hspi bench`` measures both)


def _launch_key(a, b, config, out_dtype) -> tuple:
    # pointer alignment is part of Triton's specialisation (16-byte divisibility)
    return (a.shape, a.stride(), b.shape, b.stride(), a.dtype, a.device, a.data_ptr() % 16 == 0,
            b.data_ptr() % 16 == 0, config, out_dtype)


class _Launch:
    """One recorded single-kernel launch: ``kernel`` with ``args`` where the operand and output
    slots take the tensors of each call."""

    __slots__ = ("kernel", "grid", "args", "slots", "out_shape", "out_dtype", "device_index", "empty", "hooks",
                 "stream")

    def __init__(self, jit_fn, compiled, grid, args: tuple, kwargs: dict, a, b, out):
        import inspect

        import torch
        from triton import knobs
        from triton.runtime.driver import driver

        self.empty, self.hooks, self.stream = torch.empty, knobs.runtime, driver.active.get_current_stream
        bound = inspect.signature(jit_fn.fn).bind(*args, **{k: v for k, v in kwargs.items()
                                                            if k in jit_fn.arg_names})
        bound.apply_defaults()
        values = list(bound.arguments.values())
        self.slots = tuple(next(i for i, v in enumerate(values) if v is t) for t in (a, b, out))
        self.kernel, self.grid, self.args = compiled, tuple(grid) + (1,) * (3 - len(grid)), values
        self.out_shape, self.out_dtype, self.device_index = tuple(out.shape), out.dtype, out.device.index or 0

    def __call__(self, a, b):
        if _hooked(self.hooks.launch_enter_hook) or _hooked(self.hooks.launch_exit_hook):
            return None  # a profiler's hooks expect the generic launcher's metadata
        out = self.empty(self.out_shape, device=a.device, dtype=self.out_dtype)
        args = list(self.args)
        ia, ib, io = self.slots
        args[ia], args[ib], args[io] = a, b, out
        k = self.kernel
        k.run(*self.grid, self.stream(self.device_index), k.function, k.packed_metadata, None, None, None, *args)
        return out


def _hooked(hook) -> bool:
    """Whether a Triton launch hook would run: Triton 3.6 keeps an (empty) HookChain, older
    versions None."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _record_launch(key, jit_fn, grid, args: tuple, kwargs: dict, a, b, out) -> None:
    """Launch through Triton's generic path and, where the launch can be replayed, remember it."""
    compiled = jit_fn[grid](*args, **kwargs)
    if key is None or key in _LAUNCHES or not hasattr(compiled, "packed_metadata") \
            or len(_LAUNCHES) >= _LAUNCH_CACHE_MAX:
        return  # interpreter mode (TRITON_INTERPRET), hooks active, or a full cache: the generic path
    _LAUNCHES[key] = _Launch(jit_fn, compiled, grid, args, kwargs, a, b, out)


def matmul(a, b, config: GemmConfig | None = None, out_dtype=None, out=None):
    """``a @ b`` with the fixed accumulation order of ``config`` (see the module docstring and
    :func:`plan`). a: [M, K], b: [K, N], same dtype (fp32, bf16, fp16, float8_e4m3fn,
    float8_e5m2), each with a unit stride in one dimension (row- or column-major);
    ``persistent`` needs both row-major contiguous. Without ``config``: :func:`shape_config`
    (the M-dependent table, its persistent TMA entry where :func:`tma_ready`; same plan for every M). The fp32 accumulator is rounded (RNE) once to
    ``out_dtype`` (default: the input dtype; fp32 for fp8 inputs). A repeated call with the same
    shapes, strides, dtypes, device, config and alignment launches the recorded kernel directly
    (``_LAUNCHES``: same kernel, same arguments, same bits)."""
    import torch

    key = None
    if LAUNCH_CACHE and out is None and getattr(a, "is_cuda", False):
        key = _launch_key(a, b, config, out_dtype)
        launch = _LAUNCHES.get(key)
        if launch is not None:
            result = launch(a, b)
            if result is not None:
                return result
    kernels = _kernels()
    assert a.ndim == 2 and b.ndim == 2, f"matmul: 2-D operands expected, got {tuple(a.shape)} and {tuple(b.shape)}"
    assert a.shape[1] == b.shape[0], f"matmul: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"matmul: operand dtypes differ: {a.dtype} and {b.dtype}"
    assert a.device == b.device, f"matmul: operands on different devices: {a.device} and {b.device}"
    fmt = _format_of(a.dtype)
    out_dtype = out_dtype or _default_out_dtype(a.dtype)
    if config is None:
        config = shape_config(fmt, a.shape[0], b.shape[1], a.shape[1], tma=tma_ready(a, b, out_dtype))
    for name, t in (("a", a), ("b", b)):
        assert 1 in t.stride() or t.numel() <= 1, f"matmul: {name} needs a unit stride in one dimension, strides {t.stride()}"
    if fmt != "fp32":
        assert config.input_precision == "tf32", "matmul: input_precision applies to fp32 inputs only (leave the default)"
    if config.max_num_imprecise_acc is not None:
        assert fmt in ("e4m3", "e5m2"), "matmul: max_num_imprecise_acc applies to fp8 inputs only"
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = torch.empty((M, N), device=a.device, dtype=out_dtype)
    assert out.shape == (M, N) and out.dtype == out_dtype and out.is_contiguous(), "matmul: bad out tensor"
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    precision = config.input_precision if fmt == "fp32" else None
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=config.enable_fp_fusion)
    blocks = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m)
    tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)

    if config.persistent:
        assert a.is_contiguous() and b.is_contiguous(), "matmul(persistent): TMA needs row-major contiguous operands"
        assert (K * a.element_size()) % 16 == 0 and (N * b.element_size()) % 16 == 0 and (N * out.element_size()) % 16 == 0, \
            f"matmul(persistent): TMA needs 16-byte aligned rows (K={K}, N={N}, {a.dtype} -> {out_dtype})"
        _set_tma_allocator()
        num_sms = _num_sms(a.device.index or 0) if a.is_cuda else 4
        grid = (min(num_sms, tiles),)
        _record_launch(key, kernels["persistent"], grid, (a, b, out, M, N, K),
                       dict(**blocks, NUM_SMS=grid[0], INPUT_PRECISION=precision,
                            MAX_IMPRECISE=config.max_num_imprecise_acc, **launch), a, b, out)
        return out

    _, per_part, parts = _k_tile_split(K, config)
    common = dict(**blocks, INPUT_PRECISION=precision, MAX_IMPRECISE=config.max_num_imprecise_acc,
                  MASK_M=(M % config.block_m) != 0, **launch)
    if parts == 1:
        _record_launch(key, kernels["gemm"], (tiles, 1),
                       (a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), 0, out.stride(0),
                        out.stride(1), per_part), dict(ATOMIC=False, **common), a, b, out)
        return out
    if config.split_k_combine == "atomic":
        acc = torch.zeros((M, N), device=a.device, dtype=torch.float32)
        kernels["gemm"][(tiles, parts)](a, b, acc, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                                        0, acc.stride(0), acc.stride(1), per_part, ATOMIC=True, **common)
        return out.copy_(acc)
    workspace = torch.empty((parts, M, N), device=a.device, dtype=torch.float32)
    kernels["gemm"][(tiles, parts)](a, b, workspace, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                                    workspace.stride(0), workspace.stride(1), workspace.stride(2), per_part,
                                    ATOMIC=False, **common)
    block = 1024
    kernels["combine"][(triton.cdiv(M * N, block),)](workspace, out, M * N, workspace.stride(0), parts, BLOCK=block,
                                                     num_warps=4, num_stages=1, enable_fp_fusion=config.enable_fp_fusion)
    return out
