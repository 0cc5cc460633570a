"""Fused attention forward for Hopper (sm_90) in Gluon, FA3-like: a TMA loader warp, consumer
warpgroups with asynchronous wgmma, and the softmax of key block j overlapped with the P.V
product of block j-1.

``O = softmax(Q K^T * sm_scale [+ causal mask]) V`` for q, k, v [B, H, S, D] (bf16 / fp16,
contiguous), D in {64, 128}, S a multiple of BLOCK_M (= 128; :func:`supported` says why not,
and :func:`attention` raises ValueError so a caller can fall back to
:func:`hspi_kernels.kernels.triton.attention.attention`).

Structure (one CTA = BLOCK_M query rows of one (batch, head); grid (S/BLOCK_M, B*H), causal
query blocks launched longest first when ``CONFIG.reverse_m``):
  * loader partition (1 warp, ``gl.warp_specialize`` worker, few registers): TMA-loads the Q
    tile once, then K_j and V_j of every key block into a ring of ``num_stages`` shared-memory
    buffers; per stage a "ready" mbarrier (expect-tx, signalled by the TMA) and an "empty"
    mbarrier (signalled by the consumers when their wgmma reading the buffer has completed).
  * two consumer partitions of one warpgroup each (the default partition and a 4-warp worker,
    ``setmaxnreg`` 240 registers each): consumer w owns query rows [64w, 64w+64) of the tile,
    runs its own wgmma chain and softmax, and meets the other consumer only through the K/V
    "empty" mbarriers (count 2), so the two drift freely and one's softmax can run under the
    other's wgmma (``consumers=1``: one 8-warp partition instead, lockstep, kept as a variant).
    Pipelined loop (``pipeline=True``), block j >= 1:
        issue S_j = Q K_j^T (async wgmma, A = Q from shared memory);
        issue acc += P_{j-1} V_{j-1} (async wgmma, A = P from registers, C = the accumulator
              already rescaled by alpha_{j-1});
        wait until 1 wgmma group is outstanding (S_j complete; P.V still running);
        softmax of S_j (m, alpha_j, P_j, l) -- overlaps the P.V wgmma on the tensor cores;
        wait for P.V; acc = acc * alpha_j.
    ``pipeline=False``: S_j, wait, softmax, P.V, wait (no overlap inside a warpgroup).

Arithmetic order (identical to attention.py's "native" mode; :func:`plan` states it as data):
per query row, key blocks of BLOCK_N (128) in increasing order from key 0; causal: the blocks
strictly left of the diagonal unmasked, then the diagonal block (BLOCK_N == BLOCK_M) masked
(key > query -> -inf). ``qk_scale = fp32(sm_scale * log2(e))``, sm_scale default 1/sqrt(D).
Per block:
  1. ``qk = dot(q, k^T)`` (wgmma chain over D, fp32 accumulate from +0);
  2. off-diagonal: ``m_new = max(m_old, rowmax(qk) * qk_scale)``; diagonal: ``s = qk *
     qk_scale`` masked, ``m_new = max(m_old, rowmax(s))`` (max is exact and order-free);
  3. ``p = exp2(qk * qk_scale - m_new)`` (off-diagonal; with ``enable_fp_fusion`` one fma) or
     ``exp2(s - m_new)`` (diagonal); ``alpha = exp2(m_old - m_new)``; exp2 = ``gl.exp2`` =
     ``ex2.approx.ftz.f32`` (MUFU);
  4. ``l = l * alpha + rowsum(p)`` (``gl.sum`` over the wgmma layout: per-thread sequential,
     then butterfly shuffles within the row's quad; same layout as the tl kernel, unrevealed);
     ``acc = dot(P, v, C = acc * alpha)`` with ``P = p`` rounded (RNE) to the input format.
     The pipelining only moves *when* ``acc * alpha`` is computed (after the previous P.V
     completes instead of right before the next one): the values are the same.
     First block: m_old = -inf, alpha = 0, l = 0 * 0 + rowsum, acc = 0 * 0 + P.V (the
     accumulator starts at +0, as in the tl kernel).
After the last block ``O = div_rn(acc, l)`` (IEEE division), RNE to the input format, stored
through shared memory (the Q buffer) by TMA. On the H100 the output was bit-equal to the tl
native kernel's (default config: block_n 128, fusion on) on all 24 checked shapes/dtypes.

``enable_fp_fusion`` is passed explicitly on every launch (default True, as the tl native
default; off: step 3 is a separate mul and sub). No autotuning: :data:`CONFIG` holds the fixed
configurations. Importing this module imports neither torch nor Triton; the kernels are built
on first use (:func:`_kernels`), which raises ImportError when Gluon / its Hopper module is
missing, and :func:`attention` raises RuntimeError on a GPU that is not sm_90.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from .attention_order import order_plan, qk_scale, sm_scale_for
from .gemm import SHARED_MEMORY_LIMIT_SM90

__all__ = ["CONFIG", "GluonAttentionConfig", "SHARED_MEMORY_LIMIT_SM90", "attention", "default_config", "plan",
           "supported"]


@dataclass(frozen=True)
class GluonAttentionConfig:
    """Fixed launch configuration (no autotuning).

    ``block_m``: query rows per CTA. ``consumers``: 2 = two 4-warp consumer partitions (the
    default partition and a worker) of block_m/2 rows each, synchronised with each other only
    through the K/V "empty" mbarriers (count 2); 1 = one 8-warp default partition of block_m
    rows (then every mbarrier op of the consumer is preceded by a bar.sync over its 8 warps, so
    its two warpgroups run in lockstep). ``block_n``: keys per block (the online softmax
    rescales per key block: changes the order; causal needs block_n == block_m).
    ``num_stages``: K/V ring depth (shared memory: Q + 2 * num_stages * block_n * D * 2 bytes).
    ``pipeline``: overlap softmax(S_j) with P_{j-1}.V_{j-1} (scheduling only). ``reverse_m``:
    causal query blocks launched longest first (scheduling only). ``maxnreg``: registers per
    thread for the whole kernel (12 warps: consumers + the loader's warpgroup); the workers get
    ``consumer_regs`` (second consumer) and ``loader_regs`` (loader), the default partition the
    rest (setmaxnreg). ``enable_fp_fusion``: step 3 as one fma (changes bits)."""

    block_m: int = 128
    block_n: int = 128
    num_stages: int = 2
    consumers: int = 2
    pipeline: bool = True
    reverse_m: bool = True
    maxnreg: int = 168
    consumer_regs: int = 240
    loader_regs: int = 24
    enable_fp_fusion: bool = True

    def __post_init__(self):
        if self.block_m != 128:
            raise ValueError(f"GluonAttentionConfig: block_m must be 128, got {self.block_m}")
        if self.block_n not in (64, 128) or self.block_m % self.block_n:
            raise ValueError(f"GluonAttentionConfig: block_n must be 64 or 128, got {self.block_n}")
        if self.consumers not in (1, 2):
            raise ValueError(f"GluonAttentionConfig: consumers must be 1 or 2, got {self.consumers}")
        if self.num_stages < 1:
            raise ValueError("GluonAttentionConfig: num_stages must be >= 1")

    @property
    def num_warps(self) -> int:
        """The launch's num_warps (the default partition's warps)."""
        return 4 if self.consumers == 2 else 8


# Fixed configurations per head dim (no autotuning). D=128: 2 stages (Q 32 KiB + K/V 128 KiB);
# D=64: 3 stages (Q 16 KiB + K/V 96 KiB). BLOCK_N = 128 for both (= BLOCK_M, so causal has one
# diagonal block; = the tl native block_n, so the order, and on the H100 the bits, are the tl
# kernel's). Chosen on the H100 (B4 H16 S4096 D128 bf16, two sessions, 3 alternating rounds,
# ratio = cuDNN SDPA time / ours): causal 1.000 / 0.970, non-causal 1.012 / 0.995 (tl native
# 0.828 / 0.803 and 0.840 / 0.828). Variants, causal (non-causal), session 1 / 2: pipeline off
# 0.974 / 0.950 (1.009 / 0.978); 3 stages 0.980 / 0.967 (0.997 / 0.987); reverse_m off 0.976 /
# 0.955 (non-causal: the same kernel, 1.025 / 0.996, i.e. ~2% noise); fusion off 0.958 / 0.932
# (0.989 / 0.961); consumers=1 (one 8-warp partition, lockstep through its bar.syncs) 0.851 /
# 0.822 (0.864 / 0.832).
CONFIG = {
    128: GluonAttentionConfig(num_stages=2),
    64: GluonAttentionConfig(num_stages=3),
}


def default_config(head_dim: int) -> GluonAttentionConfig:
    if head_dim not in CONFIG:
        raise ValueError(f"attention_gluon: head_dim must be one of {sorted(CONFIG)}, got {head_dim}")
    return CONFIG[head_dim]


def shared_memory_bytes(config: GluonAttentionConfig, head_dim: int, elem_bytes: int = 2) -> int:
    """Q tile (reused for O) + the K and V rings (+ mbarriers, small)."""
    return (config.block_m * head_dim + 2 * config.num_stages * config.block_n * head_dim) * elem_bytes




@functools.cache
def _kernels():
    """Build the Gluon kernels (imports Triton and Gluon). ImportError with a message when this
    Triton has no Gluon or no Hopper Gluon module."""
    # the jit functions resolve names (annotations included) in the module's globals
    global triton, gluon, gl, fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    global _loader, _softmax, _qk_issue, _pv_issue, _key_loop, _consumer, _attn_fwd
    try:
        import triton  # noqa: F401
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                       warpgroup_mma, warpgroup_mma_wait)
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    except Exception as exc:  # pragma: no cover - depends on the installed Triton
        raise ImportError(f"attention_gluon needs Triton with Gluon for Hopper (triton>=3.5, "
                          f"triton.experimental.gluon.language.nvidia.hopper): {exc}") from exc

    @gluon.jit
    def _loader(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
                q_row, kv_row, n_total, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                CONSUMERS: gl.constexpr, ROWS: gl.constexpr):
        """One warp: Q once, then K_j / V_j for j = 0 .. n_total-1 into stage j % NUM_STAGES,
        each after the consumers released that stage's previous use (empty barrier; its
        first wait, on phase 1, passes at once: a fresh mbarrier counts as phase 1 complete)."""
        mbarrier.expect(q_bar, CONSUMERS * q_desc.block_type.nbytes)
        for c in gl.static_range(CONSUMERS):
            tma.async_copy_global_to_shared(q_desc, [q_row + c * ROWS, 0], q_bar, q_smem.index(c))
        for j in range(n_total):
            stage = j % NUM_STAGES
            phase = (j // NUM_STAGES) & 1
            row = kv_row + j * BLOCK_N
            mbarrier.wait(k_empty.index(stage), phase ^ 1)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, 0], k_ready.index(stage), k_bufs.index(stage))
            mbarrier.wait(v_empty.index(stage), phase ^ 1)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, 0], v_ready.index(stage), v_bufs.index(stage))

    @gluon.jit
    def _softmax(qk, m_i, l_i, rows, start_n, qk_scale, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                 MASKED: gl.constexpr):
        """Steps 2-4 of the module docstring up to (not including) the P.V product.
        Returns (p fp32, alpha, m_new, l_new)."""
        if MASKED:
            cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            s = qk * qk_scale
            s = gl.where(rows[:, None] >= cols[None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1))
            p = gl.exp2(s - m_new[:, None])
        else:
            # rowmax before the scale (same m: rounding is monotone), then one fma per score
            m_new = gl.maximum(m_i, gl.max(qk, axis=1) * qk_scale)
            p = gl.exp2(qk * qk_scale - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        return p, alpha, m_new, l_i

    @gluon.jit
    def _qk_issue(j, q_smem, k_bufs, k_ready, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_STAGES: gl.constexpr, s_layout: gl.constexpr):
        """Wait for K_j and issue S_j = Q K_j^T (async, fresh fp32 accumulator)."""
        stage = j % NUM_STAGES
        mbarrier.wait(k_ready.index(stage), (j // NUM_STAGES) & 1)
        s0 = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        return warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), s0, use_acc=False, is_async=True)

    @gluon.jit
    def _pv_issue(j, p, acc, v_bufs, v_ready, NUM_STAGES: gl.constexpr):
        """Wait for V_j and issue acc = P_j V_j + acc (async; P from registers)."""
        stage = j % NUM_STAGES
        mbarrier.wait(v_ready.index(stage), (j // NUM_STAGES) & 1)
        return warpgroup_mma(p, v_bufs.index(stage), acc, is_async=True)

    @gluon.jit
    def _key_loop(lo, hi, q_smem, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty, acc, p, m_i, l_i, rows,
                  qk_scale, s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                  MASKED: gl.constexpr, PIPELINE: gl.constexpr):
        """Blocks j = lo .. hi-1 (lo >= 1). On entry p = P_{lo-1} (input format, dot-operand
        layout) and acc = the accumulator rescaled for block lo-1 (the C of its P.V), whose
        P.V is not yet issued; on exit the same for hi-1."""
        for j in range(lo, hi):
            s_tok = _qk_issue(j, q_smem, k_bufs, k_ready, BLOCK_M, BLOCK_N, NUM_STAGES, s_layout)
            if PIPELINE:
                # P_{j-1}.V_{j-1} behind S_j: wait for S_j only (wgmma groups retire in order)
                o_tok = _pv_issue(j - 1, p, acc, v_bufs, v_ready, NUM_STAGES)
                qk = warpgroup_mma_wait(num_outstanding=1, deps=[s_tok])
                mbarrier.arrive(k_empty.index(j % NUM_STAGES), count=1)
                p_new, alpha, m_i, l_i = _softmax(qk, m_i, l_i, rows, j * BLOCK_N, qk_scale, s_layout, BLOCK_N,
                                                  MASKED)
                acc, p = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok, p])
                mbarrier.arrive(v_empty.index((j - 1) % NUM_STAGES), count=1)
            else:
                qk = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
                mbarrier.arrive(k_empty.index(j % NUM_STAGES), count=1)
                o_tok = _pv_issue(j - 1, p, acc, v_bufs, v_ready, NUM_STAGES)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok])
                mbarrier.arrive(v_empty.index((j - 1) % NUM_STAGES), count=1)
                p_new, alpha, m_i, l_i = _softmax(qk, m_i, l_i, rows, j * BLOCK_N, qk_scale, s_layout, BLOCK_N,
                                                  MASKED)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
            p = gl.convert_layout(p_new.to(q_smem.dtype), p_layout)
        return acc, p, m_i, l_i

    @gluon.jit
    def _consumer(q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, q_row, m_base,
                  n_full, n_total, qk_scale, HEAD_DIM: gl.constexpr, ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_STAGES: gl.constexpr, WARPS: gl.constexpr, CAUSAL: gl.constexpr, PIPELINE: gl.constexpr,
                  WG: gl.constexpr):
        """One consumer partition: the module docstring's per-block steps for the ROWS query rows
        q_row + WG*ROWS ..; blocks 0 .. n_full-1 unmasked, n_full .. n_total-1 masked (causal
        diagonal). Runs as the default partition (WG 0) or as a worker (WG 1)."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        my_q = q_smem.index(WG)
        first_row = q_row + WG * ROWS
        rows = m_base + WG * ROWS + gl.arange(0, ROWS, layout=row_layout)  # query index within the head
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_layout)
        l_i = gl.zeros([ROWS], gl.float32, row_layout)
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)

        mbarrier.wait(q_bar, 0)
        # block 0: S_0, softmax (masked when it is the diagonal block, i.e. n_full == 0)
        s_tok = _qk_issue(0, my_q, k_bufs, k_ready, ROWS, BLOCK_N, NUM_STAGES, s_layout)
        qk = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(0), count=1)
        if CAUSAL:
            if n_full == 0:
                p0, alpha, m_i, l_i = _softmax(qk, m_i, l_i, rows, 0, qk_scale, s_layout, BLOCK_N, True)
            else:
                p0, alpha, m_i, l_i = _softmax(qk, m_i, l_i, rows, 0, qk_scale, s_layout, BLOCK_N, False)
        else:
            p0, alpha, m_i, l_i = _softmax(qk, m_i, l_i, rows, 0, qk_scale, s_layout, BLOCK_N, False)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]  # +0 * 0: stays +0
        p = gl.convert_layout(p0.to(my_q.dtype), p_layout)

        if CAUSAL:
            acc, p, m_i, l_i = _key_loop(1, n_full, my_q, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                                         acc, p, m_i, l_i, rows, qk_scale, s_layout, o_layout, p_layout, ROWS,
                                         BLOCK_N, NUM_STAGES, False, PIPELINE)
            acc, p, m_i, l_i = _key_loop(gl.maximum(n_full, 1), n_total, my_q, k_bufs, v_bufs, k_ready, k_empty,
                                         v_ready, v_empty, acc, p, m_i, l_i, rows, qk_scale, s_layout, o_layout,
                                         p_layout, ROWS, BLOCK_N, NUM_STAGES, True, PIPELINE)
        else:
            acc, p, m_i, l_i = _key_loop(1, n_total, my_q, k_bufs, v_bufs, k_ready, k_empty, v_ready, v_empty,
                                         acc, p, m_i, l_i, rows, qk_scale, s_layout, o_layout, p_layout, ROWS,
                                         BLOCK_N, NUM_STAGES, False, PIPELINE)
        # last block's P.V
        o_tok = _pv_issue(n_total - 1, p, acc, v_bufs, v_ready, NUM_STAGES)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok])
        mbarrier.arrive(v_empty.index((n_total - 1) % NUM_STAGES), count=1)

        out = gl.div_rn(acc, gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None])
        # O through this consumer's Q buffer (every wgmma reading it has completed) and a TMA store
        fence_async_shared()
        my_q.store(out.to(my_q.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [first_row, 0], my_q)
        tma.store_wait(0)

    @gluon.jit
    def _attn_fwd(q_desc, k_desc, v_desc, o_desc, qk_scale, N_CTX,
                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_STAGES: gl.constexpr, CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr,
                  PIPELINE: gl.constexpr, REVERSE_M: gl.constexpr, LOADER_REGS: gl.constexpr,
                  CONSUMER_REGS: gl.constexpr):
        """q/k/v/o descriptors over the contiguous [B*H*N_CTX, HEAD_DIM] views (q/o blocks of
        BLOCK_M/CONSUMERS rows); N_CTX % BLOCK_M == 0, so no tile crosses a head. Grid
        (N_CTX / BLOCK_M, B*H, 1). CONSUMERS == 2: two 4-warp consumer partitions (the default
        one and a worker) of BLOCK_M/2 rows each, synchronised only through the K/V mbarriers;
        CONSUMERS == 1: one 8-warp default partition of BLOCK_M rows."""
        ROWS: gl.constexpr = BLOCK_M // CONSUMERS
        WARPS: gl.constexpr = 4 if CONSUMERS == 2 else 8
        if REVERSE_M:
            start_m = gl.num_programs(0) - 1 - gl.program_id(0)
        else:
            start_m = gl.program_id(0)
        off_zh = gl.program_id(1)
        kv_row = off_zh * N_CTX
        q_row = kv_row + start_m * BLOCK_M
        if CAUSAL:
            n_full = (start_m * BLOCK_M) // BLOCK_N
            n_total = ((start_m + 1) * BLOCK_M) // BLOCK_N
        else:
            n_full = N_CTX // BLOCK_N
            n_total = n_full

        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, ROWS, HEAD_DIM], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(NUM_STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=CONSUMERS)  # one arrival per consumer partition
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(v_empty.index(i), count=CONSUMERS)
        fence_async_shared()

        if CONSUMERS == 2:
            gl.warp_specialize([
                (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, q_row,
                             start_m * BLOCK_M, n_full, n_total, qk_scale, HEAD_DIM, ROWS, BLOCK_N, NUM_STAGES, WARPS, CAUSAL,
                             PIPELINE, 0)),
                (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, q_row,
                             start_m * BLOCK_M, n_full, n_total, qk_scale, HEAD_DIM, ROWS, BLOCK_N, NUM_STAGES, WARPS, CAUSAL,
                             PIPELINE, 1)),
                (_loader, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
                           q_row, kv_row, n_total, BLOCK_N, NUM_STAGES, CONSUMERS, ROWS)),
            ], [4, 1], [CONSUMER_REGS, LOADER_REGS])
        else:
            gl.warp_specialize([
                (_consumer, (q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty, o_desc, q_row,
                             start_m * BLOCK_M, n_full, n_total, qk_scale, HEAD_DIM, ROWS, BLOCK_N, NUM_STAGES, WARPS, CAUSAL,
                             PIPELINE, 0)),
                (_loader, (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_bar, k_ready, k_empty, v_ready, v_empty,
                           q_row, kv_row, n_total, BLOCK_N, NUM_STAGES, CONSUMERS, ROWS)),
            ], [1], [LOADER_REGS])

    return {"fwd": _attn_fwd, "gl": gl, "TensorDescriptor": TensorDescriptor}


def constexprs(config: GluonAttentionConfig, *, head_dim: int, causal: bool) -> dict:
    """The kernel's constexpr arguments (also used by the compile-only tests)."""
    return dict(HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, NUM_STAGES=config.num_stages,
                CONSUMERS=config.consumers, CAUSAL=causal, PIPELINE=config.pipeline,
                REVERSE_M=bool(config.reverse_m and causal), LOADER_REGS=config.loader_regs,
                CONSUMER_REGS=config.consumer_regs)


def q_block_rows(config: GluonAttentionConfig) -> int:
    """Rows of the Q / O TMA box: one consumer's share of the tile."""
    return config.block_m // config.consumers


def block_layouts(config: GluonAttentionConfig, head_dim: int, dtype_name: str = "bf16"):
    """(q/o layout, k/v layout) as NVMMASharedLayout (default swizzle for the tiles)."""
    gl = _kernels()["gl"]
    dt = {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype_name]
    return (gl.NVMMASharedLayout.get_default_for([q_block_rows(config), head_dim], dt),
            gl.NVMMASharedLayout.get_default_for([config.block_n, head_dim], dt))


def compile_sm90(config: GluonAttentionConfig | None = None, *, head_dim: int = 128, causal: bool = True,
                 dtype: str = "bf16"):
    """Compile the kernel for sm_90 without a GPU (Triton ships ptxas); returns the
    CompiledKernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``). Used by the
    compile-only tests."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    config = config or default_config(head_dim)
    kernel = _kernels()["fwd"]
    qo, kv = block_layouts(config, head_dim, dtype)
    rows = q_block_rows(config)
    const = constexprs(config, head_dim=head_dim, causal=causal)
    sig = {"q_desc": f"tensordesc<{dtype}[{rows}, {head_dim}],{qo!r}>",
           "k_desc": f"tensordesc<{dtype}[{config.block_n}, {head_dim}],{kv!r}>",
           "v_desc": f"tensordesc<{dtype}[{config.block_n}, {head_dim}],{kv!r}>",
           "o_desc": f"tensordesc<{dtype}[{rows}, {head_dim}],{qo!r}>",
           "qk_scale": "fp32", "N_CTX": "i32", **{n: "constexpr" for n in const}}
    return triton.compile(GluonASTSource(fn=kernel, signature=sig, constexprs=const),
                          target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": config.num_warps, "maxnreg": config.maxnreg,
                                   "enable_fp_fusion": config.enable_fp_fusion})


def _refusal(q, k, v, causal: bool, config: GluonAttentionConfig | None = None) -> tuple[type, str] | None:
    """Why :func:`attention` cannot run these inputs here, as (exception type, reason), or None:
    ValueError for shapes, dtypes, layouts and devices, RuntimeError for a GPU that is not
    sm_90, ImportError without Gluon. Shared by :func:`supported` and :func:`attention`."""
    import torch

    if not (q.ndim == 4 and q.shape == k.shape == v.shape):
        return ValueError, f"q, k, v must be [B,H,S,D] of one shape: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if not (q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16)):
        return ValueError, f"bf16/fp16 inputs of one dtype needed, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        return ValueError, "q, k, v must be contiguous"
    B, H, S, D = q.shape
    if D not in CONFIG:
        return ValueError, f"head_dim must be one of {sorted(CONFIG)}, got {D}"
    config = config or CONFIG[D]
    if S == 0 or S % config.block_m:
        return ValueError, f"S must be a positive multiple of BLOCK_M={config.block_m}, got {S}"
    if causal and config.block_n != config.block_m:
        return ValueError, "causal needs block_n == block_m"
    if not q.is_cuda:
        return ValueError, "inputs must be CUDA tensors"
    cap = torch.cuda.get_device_capability(q.device)
    if cap != (9, 0):
        return RuntimeError, f"needs an sm_90 (Hopper) GPU, got sm_{cap[0]}{cap[1]}"
    try:
        _kernels()
    except ImportError as exc:
        return ImportError, str(exc)
    return None


def supported(q, k, v, causal: bool = False) -> tuple[bool, str]:
    """(True, "") when :func:`attention` can run these inputs here, else (False, reason)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "torch is not installed"
    refusal = _refusal(q, k, v, causal)
    return (True, "") if refusal is None else (False, refusal[1])


def attention(q, k, v, *, causal: bool = False, sm_scale: float | None = None,
              config: GluonAttentionConfig | None = None):
    """Fused attention forward (module docstring); q, k, v [B, H, S, D] contiguous bf16/fp16,
    D in {64, 128}, S % 128 == 0, on an sm_90 GPU. Returns O [B, H, S, D] in the input dtype.
    ValueError for unsupported shapes/dtypes/layouts (fall back to attention.attention),
    ImportError without Gluon, RuntimeError on a non-Hopper GPU."""
    import torch

    refusal = _refusal(q, k, v, causal, config)
    if refusal is not None:
        raise refusal[0](f"attention_gluon: {refusal[1]}")
    B, H, S, D = q.shape
    config = config or default_config(D)
    kernels = _kernels()
    TensorDescriptor = kernels["TensorDescriptor"]
    sm_scale = sm_scale_for(D, sm_scale)
    o = torch.empty_like(q)
    dtype_name = "bf16" if q.dtype == torch.bfloat16 else "fp16"
    qo_layout, kv_layout = block_layouts(config, D, dtype_name)
    rows = B * H * S
    q_desc = TensorDescriptor(q, [rows, D], [D, 1], [q_block_rows(config), D], qo_layout)
    o_desc = TensorDescriptor(o, [rows, D], [D, 1], [q_block_rows(config), D], qo_layout)
    k_desc = TensorDescriptor(k, [rows, D], [D, 1], [config.block_n, D], kv_layout)
    v_desc = TensorDescriptor(v, [rows, D], [D, 1], [config.block_n, D], kv_layout)
    grid = (S // config.block_m, B * H)
    kernels["fwd"][grid](q_desc, k_desc, v_desc, o_desc, qk_scale(sm_scale), S,
                         **constexprs(config, head_dim=D, causal=causal),
                         num_warps=config.num_warps, maxnreg=config.maxnreg,
                         enable_fp_fusion=config.enable_fp_fusion)
    return o


def plan(config: GluonAttentionConfig | None = None, *, fmt: str = "bf16", head_dim: int = 128,
         causal: bool = False, sm_scale: float | None = None, arch: str = "sm_90") -> dict:
    """The order of the forward pass as data (JSON-ready): the native order's one definition
    (:func:`attention_order.order_plan`, which the tl kernel's plan also states) at this BLOCK_M x
    BLOCK_N and ``enable_fp_fusion``, with this kernel's configuration and pipeline schedule
    (which changes no value)."""
    config = config or default_config(head_dim)
    out = order_plan(kind="gluon_attention_fwd", mode="native", block_m=config.block_m, block_n=config.block_n,
                     enable_fp_fusion=config.enable_fp_fusion, impl="gluon", fmt=fmt, head_dim=head_dim,
                     causal=causal, sm_scale=sm_scale, arch=arch)
    out.update(config=asdict(config),
               schedule=("pipelined: S_j issued before P_{j-1}.V_{j-1}, softmax(S_j) while P.V runs, acc*alpha_j "
                         "after P.V completes (values unchanged)") if config.pipeline else "sequential")
    return out
