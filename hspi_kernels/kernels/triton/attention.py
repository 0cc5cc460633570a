"""Fused attention forward in Triton (the Triton tutorial's online softmax, fixed config), in two
modes: ``"native"`` (fast, ``ex2.approx``) and ``"exact"`` (every rounding replayable on the CPU).

``O = softmax(Q K^T * sm_scale [+ causal mask]) V`` for q, k, v [B, H, S, D] (bf16 / fp16).
One program owns BLOCK_M query rows of one (batch, head) and walks the key blocks of BLOCK_N in
increasing order from key 0 (causal: the blocks strictly left of the diagonal first, unmasked,
then the diagonal blocks up to min((start_m+1)*BLOCK_M, S), masked key > query -> -inf; keys >= S
are masked, their K/V loaded as 0). Per key block, in this order (:func:`plan` states it as data):

native (log2 domain, ``qk_scale = fp32(sm_scale * log2(e))``):
  1. ``qk = dot(q, k^T)`` (tensor-core chain over D, fp32);
  2. ``m_new = max(m_old, rowmax(qk) * qk_scale)`` (off-diagonal) or ``max(m_old, rowmax(s))``
     with ``s = qk * qk_scale`` masked (diagonal); max is exact and order-free;
  3. ``p = exp2(qk * qk_scale - m_new)`` (one fma when ``enable_fp_fusion``), ``alpha =
     exp2(m_old - m_new)``, ``exp2`` = ``ex2.approx.ftz.f32`` (MUFU);
  4. ``l = l * alpha + tl.sum(p, 1)`` (tree of the MMA layout, unrevealed); ``acc = dot(p.to(fmt), v, acc * alpha)``.
exact (natural domain, the CUDA kernel ``csrc/cuda/attention/flash_fwd.cu``'s order, replayed by
:func:`hspi_kernels.numerics.attention_ref.replay` with ``dot_path="wgmma"``, ``tile=BLOCK_M``,
``rowsum=Pairwise()``):
  1. ``s = rn(dot(q, k^T) * fp32(sm_scale))``, masked -> -inf;
  2. ``m_new = max(m_old, rowmax(s))``, ``m_use = m_new`` (never -inf here: every row sees key 0
     of its first block);
  3. ``p = EXP(rn(s - m_use))``, ``alpha = EXP(rn(m_old - m_use))`` with EXP the fixed IEEE
     sequence :func:`~hspi_kernels.numerics.attention_ref.exp_exact` (no MUFU; the constants are
     taken from that module);
  4. ``l = rn(rn(l * alpha) + rowsum)``, rowsum = pairwise tree over the BLOCK_N columns of the
     fp32 p (adjacent pairs level by level: each level is a reshape and a sum of two, so no
     hidden order); ``P = RNE(p)`` to fmt; ``acc = dot(P, v, c = rn(acc * alpha))``.
Both: after the last block ``O = fmt(div_rn(acc, l))`` (IEEE division, then RNE). The order as
data, the qk scale and the row-sum plan are :mod:`.attention_order`'s, shared with the Gluon kernel.

Native mode on sm_90 runs :mod:`hspi_kernels.kernels.triton.attention_gluon` where it applies (Gluon,
Triton's lower-level language: TMA loader warp, two consumer warpgroups, async wgmma overlapping
the softmax; the same order at BLOCK_M = BLOCK_N = 128, checked bit-equal to this kernel on the
GPUs by the validation): ``AttentionConfig.impl``.

``enable_fp_fusion`` is passed on every launch (native: with fusion on, step 3 contracts into an
fma, different bits; exact mode requires it off, the exp's fmas are explicit ``tl.fma``).
Arch: any Triton GPU; the plans' tensor-core blocks name sm_90 (wgmma). Importing this module
imports neither torch nor Triton.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from hspi_kernels.numerics import attention_ref as R

from . import attention_gluon as AG
from .attention_order import order_plan, qk_scale, rowsum_plan, sm_scale_for
from .gemm import _set_tma_allocator, require_triton

__all__ = ["AttentionConfig", "CONFIG_BY_HEAD_DIM", "MODES", "attention", "constexprs", "default_config", "plan", "replay"]

MODES = ("native", "exact")
IMPLS = ("auto", "tl", "gluon")


@dataclass(frozen=True)
class AttentionConfig:
    """Fixed launch configuration (no autotuning). BLOCK_M must be a multiple of BLOCK_N.

    ``mode``: "native" or "exact" (module docstring). ``longest_first``: the grid is (B*H,
    query blocks) and causal query blocks run from the last (most key blocks) to the first
    (scheduling only). ``tma``: K and V tiles through TMA descriptors (``tl.make_tensor_descriptor``)
    over the [B*H*S, D] view, used when q, k, v are contiguous and S is a multiple of BLOCK_M.
    ``reverse_m``: grid (query blocks, B*H) with the query blocks of each head from the last
    (longest, causal) to the first, consecutive programs still sharing one head's K/V in L2.
    ``warp_specialize``: ``tl.range(..., warp_specialize=True)`` on the key loops (scheduling
    only; Triton 3.6 emits no partitions on sm_90, so it is inert there). None of these four
    changes any output's order; BLOCK_N does (the online softmax rescales per key block), and so
    do ``enable_fp_fusion`` (native) and ``mode``. The defaults are the exact mode's D=128 entry
    of :data:`CONFIG_BY_HEAD_DIM` less the mode (kept for explicit configs).
    ``impl`` (native mode): "auto" runs :mod:`.attention_gluon` (the same order as a Gluon
    kernel: TMA loader warp, two consumer warpgroups, async wgmma) where it applies -- sm_90,
    contiguous inputs, D 64/128, S % 128 == 0, BLOCK_M = BLOCK_N = 128, output in the input
    dtype -- and this tl kernel elsewhere; "tl" always this kernel; "gluon" the Gluon kernel or
    a ValueError saying why not. The exact mode is always this kernel."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    enable_fp_fusion: bool = False
    longest_first: bool = False
    tma: bool = False
    mode: str = "native"
    warp_specialize: bool = False
    reverse_m: bool = False
    impl: str = "auto"

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"AttentionConfig: impl must be one of {IMPLS}, got {self.impl!r}")
        if self.block_m % self.block_n:
            raise ValueError(f"AttentionConfig: block_m ({self.block_m}) must be a multiple of block_n ({self.block_n})")
        if self.mode not in MODES:
            raise ValueError(f"AttentionConfig: mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "exact" and self.enable_fp_fusion:
            raise ValueError("AttentionConfig: mode='exact' needs enable_fp_fusion=False (a contracted mul+add "
                             "is not in the replayed order)")
        if self.block_n & (self.block_n - 1):
            raise ValueError(f"AttentionConfig: block_n must be a power of two, got {self.block_n}")


# The fixed configuration per (mode, head_dim): what attention() uses without a config (other
# head dims use the D=128 entry). Chosen on the H100, B4 H16 S4096 D128 bf16 causal, two sessions,
# cuDNN SDPA timed in the same process (ratio = cuDNN time / ours): native 128x128, fusion on,
# 3 stages 0.756 and 0.801 (the best candidate both times); 128x64 fusion off 0.747 / 0.783; fusion
# on 128x64 0.739; 2 stages 0.596; 4 stages 0.737; 128x128 fusion off 0.769; TMA 0.674; 64x64 (4
# warps) 0.748; 256x64 (16 warps) 0.708; reverse_m 0.777. Exact: 3 stages 0.386 (2 stages 0.352).
# The ceiling is structural: every key block of the cp.async (or TMA) pipeline ends in CTA-wide
# BAR.SYNCs, so the two warpgroups run their wgmma and their softmax in lockstep (SASS), and Triton
# 3.6 has no warp specialization on sm_90 (warp_specialize=True emits no partitions there).
CONFIG_BY_HEAD_DIM = {
    ("native", 128): AttentionConfig(block_n=128, enable_fp_fusion=True),
    ("exact", 128): AttentionConfig(mode="exact"),
}


def default_config(head_dim: int, mode: str = "native") -> AttentionConfig:
    """The table entry for (mode, head_dim), else the mode's D=128 entry."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return CONFIG_BY_HEAD_DIM.get((mode, head_dim), CONFIG_BY_HEAD_DIM[(mode, 128)])


@functools.cache
def _kernels():
    global triton, tl, _exp_exact, _pairwise_rowsum, _load_k, _load_v, _softmax_block, _attn_fwd_inner, _attn_fwd_kernel
    global _L2E, _LN2_HI, _LN2_LO, _C7, _C6, _C5, _C4, _C3, _C2, _C1, _C0, _RINT_MAGIC
    require_triton()
    import triton
    import triton.language as tl

    # the exact exp's constants, from their single definition (fp32 values, exact as Python floats)
    _L2E, _LN2_HI, _LN2_LO = (tl.constexpr(float(c)) for c in (R.L2E, R.LN2_HI, R.LN2_LO))
    _C7, _C6, _C5, _C4, _C3, _C2, _C1, _C0 = (tl.constexpr(float(c)) for c in R.EXP_COEFFS)
    _RINT_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (y + M) - M == rint(y) (RNE) for |y| < 2^22

    @triton.jit
    def _exp_exact(x):
        """attention_ref.exp_exact, op for op: clamp, k = rint(rn(x*L2E)), Cody-Waite with fma,
        degree-7 Horner with fma, rn(rn(p * 2^(k>>1)) * 2^(k - (k>>1)))."""
        x = tl.minimum(tl.maximum(x, -104.0), 89.0)  # max.f32 / min.f32: NaN -> -104
        kf = (x * _L2E + _RINT_MAGIC) - _RINT_MAGIC  # |x*L2E| <= 151: exact rint, no contraction (fusion off)
        r = tl.fma(-kf, _LN2_HI, x)
        r = tl.fma(-kf, _LN2_LO, r)
        p = tl.fma(_C7, r, _C6)
        p = tl.fma(p, r, _C5)
        p = tl.fma(p, r, _C4)
        p = tl.fma(p, r, _C3)
        p = tl.fma(p, r, _C2)
        p = tl.fma(p, r, _C1)
        p = tl.fma(p, r, _C0)
        k = kf.to(tl.int32)
        k1 = k >> 1
        s1 = ((k1 + 127) << 23).to(tl.float32, bitcast=True)
        s2 = ((k - k1 + 127) << 23).to(tl.float32, bitcast=True)
        return (p * s1) * s2

    @triton.jit
    def _pairwise_rowsum(p, BLOCK_M: tl.constexpr, LOG2_BLOCK_N: tl.constexpr):
        """Row sums of p[BLOCK_M, BLOCK_N]: v[2j] + v[2j+1] level by level (Pairwise() over the
        BLOCK_N columns); each level sums an axis of two, one fp32 add whatever the layout."""
        for _ in tl.static_range(LOG2_BLOCK_N):
            p = tl.sum(tl.reshape(p, (BLOCK_M, p.shape[1] // 2, 2)), axis=2)
        return tl.reshape(p, (BLOCK_M,))

    @triton.jit
    def _load_k(k_base, k_desc, desc_row, start_n, stride_kn, offs_d, N_CTX, BLOCK_N: tl.constexpr,
                MASK_N: tl.constexpr, USE_TMA: tl.constexpr):
        """K^T tile [HEAD_DIM, BLOCK_N] of keys start_n.. (keys >= N_CTX read as 0)."""
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if USE_TMA:
            k = k_desc.load([desc_row + start_n, 0]).T
        elif MASK_N:
            k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=offs_n[None, :] < N_CTX, other=0.0)
        else:
            k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None])
        return k

    @triton.jit
    def _load_v(v_base, v_desc, desc_row, start_n, stride_vn, offs_d, N_CTX, BLOCK_N: tl.constexpr,
                MASK_N: tl.constexpr, USE_TMA: tl.constexpr):
        """V tile [BLOCK_N, HEAD_DIM] of keys start_n.. (keys >= N_CTX read as 0)."""
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if USE_TMA:
            v = v_desc.load([desc_row + start_n, 0])
        elif MASK_N:
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=offs_n[:, None] < N_CTX, other=0.0)
        else:
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :])
        return v

    @triton.jit
    def _softmax_block(qk, m_i, l_i, offs_m, start_n, N_CTX, qk_scale, DIAGONAL: tl.constexpr, MASK_N: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXACT: tl.constexpr, LOG2_BLOCK_N: tl.constexpr):
        """Steps 1-4 of the module docstring (up to, not including, the P.V dot) for the scores
        qk of key block start_n. Returns (p, alpha, m_new, l_new)."""
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if EXACT:
            s = qk * qk_scale  # qk_scale = fp32(sm_scale) here
            if DIAGONAL:
                s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
            if MASK_N:
                s = tl.where(offs_n[None, :] < N_CTX, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = _exp_exact(m_i - m_new)
            p = _exp_exact(s - m_new[:, None])
            l_i = l_i * alpha + _pairwise_rowsum(p, BLOCK_M, LOG2_BLOCK_N)
        else:
            if DIAGONAL or MASK_N:
                s = qk * qk_scale
                if DIAGONAL:
                    s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
                if MASK_N:
                    s = tl.where(offs_n[None, :] < N_CTX, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.math.exp2(s - m_new[:, None])
            else:
                # rowmax before the scale (same m: rounding is monotone), then one fma per score
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
        return p, alpha, m_new, l_i

    @triton.jit
    def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn, stride_vn, offs_m,
                        offs_d, lo, hi, N_CTX, qk_scale, DIAGONAL: tl.constexpr, MASK_N: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr, EXACT: tl.constexpr,
                        WARP_SPEC: tl.constexpr, LOG2_BLOCK_N: tl.constexpr):
        """Key blocks start_n = lo, lo+BLOCK_N, ... < hi in increasing order (module docstring)."""
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC):
            qk = tl.dot(q, _load_k(k_base, k_desc, desc_row, start_n, stride_kn, offs_d, N_CTX, BLOCK_N, MASK_N,
                                   USE_TMA))
            p, alpha, m_i, l_i = _softmax_block(qk, m_i, l_i, offs_m, start_n, N_CTX, qk_scale, DIAGONAL, MASK_N,
                                                BLOCK_M, BLOCK_N, EXACT, LOG2_BLOCK_N)
            v = _load_v(v_base, v_desc, desc_row, start_n, stride_vn, offs_d, N_CTX, BLOCK_N, MASK_N, USE_TMA)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, qk_scale,
                         stride_qz, stride_qh, stride_qm, stride_kz, stride_kh, stride_kn,
                         stride_vz, stride_vh, stride_vn, stride_oz, stride_oh, stride_om,
                         Z, H, N_CTX,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, MASK_N: tl.constexpr, LONGEST_FIRST: tl.constexpr,
                         USE_TMA: tl.constexpr, EXACT: tl.constexpr, WARP_SPEC: tl.constexpr,
                         LOG2_BLOCK_N: tl.constexpr, REVERSE_M: tl.constexpr):
        """Rows [start_m*BLOCK_M, +BLOCK_M) of one head; key blocks in increasing order.
        LONGEST_FIRST: grid (Z*H, query blocks), start_m counted down; REVERSE_M: grid (query
        blocks, Z*H), start_m counted down within each head (both scheduling only).
        MASK_N: a partial key or query block exists (else no load or store is masked)."""
        if LONGEST_FIRST:
            start_m = tl.num_programs(1) - 1 - tl.program_id(1)
            off_zh = tl.program_id(0)
        elif REVERSE_M:
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
            off_zh = tl.program_id(1)
        else:
            start_m = tl.program_id(0)
            off_zh = tl.program_id(1)
        off_z = off_zh // H
        off_h = off_zh % H
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_base = q_ptr + off_z * stride_qz + off_h * stride_qh
        k_base = k_ptr + off_z * stride_kz + off_h * stride_kh
        v_base = v_ptr + off_z * stride_vz + off_h * stride_vh
        if USE_TMA:
            # contiguous [Z*H*N_CTX, HEAD_DIM] views; N_CTX % BLOCK_M == 0, so no box crosses a head
            k_desc = tl.make_tensor_descriptor(k_ptr, shape=[Z * H * N_CTX, HEAD_DIM], strides=[HEAD_DIM, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
            v_desc = tl.make_tensor_descriptor(v_ptr, shape=[Z * H * N_CTX, HEAD_DIM], strides=[HEAD_DIM, 1],
                                               block_shape=[BLOCK_N, HEAD_DIM])
        else:
            k_desc = k_base
            v_desc = v_base
        desc_row = off_zh * N_CTX
        if MASK_N:
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=offs_m[:, None] < N_CTX, other=0.0)
        else:
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :])
        m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - float("inf")
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        if CAUSAL:
            # blocks left of the diagonal (no mask), then the diagonal blocks (masked)
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn,
                                            stride_vn, offs_m, offs_d, 0, start_m * BLOCK_M, N_CTX, qk_scale,
                                            False, False, BLOCK_M, BLOCK_N, USE_TMA, EXACT, WARP_SPEC, LOG2_BLOCK_N)
            hi = tl.minimum((start_m + 1) * BLOCK_M, N_CTX)
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn,
                                            stride_vn, offs_m, offs_d, start_m * BLOCK_M, hi, N_CTX, qk_scale,
                                            True, MASK_N, BLOCK_M, BLOCK_N, USE_TMA, EXACT, False, LOG2_BLOCK_N)
        else:
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn,
                                            stride_vn, offs_m, offs_d, 0, N_CTX, N_CTX, qk_scale,
                                            False, MASK_N, BLOCK_M, BLOCK_N, USE_TMA, EXACT, WARP_SPEC, LOG2_BLOCK_N)
        out = tl.math.div_rn(acc, l_i[:, None])
        o_base = o_ptr + off_z * stride_oz + off_h * stride_oh
        if MASK_N:
            tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=offs_m[:, None] < N_CTX)
        else:
            tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(o_ptr.dtype.element_ty))

    return {"fwd": _attn_fwd_kernel}


def constexprs(config: AttentionConfig, *, head_dim: int, causal: bool, mask_n: bool, use_tma: bool = False) -> dict:
    """The kernel's constexpr arguments for a launch (also used by the compile-only tests)."""
    return dict(HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, CAUSAL=causal, MASK_N=mask_n,
                LONGEST_FIRST=config.longest_first, USE_TMA=use_tma, EXACT=config.mode == "exact",
                WARP_SPEC=config.warp_specialize, LOG2_BLOCK_N=config.block_n.bit_length() - 1,
                REVERSE_M=config.reverse_m)


def attention(q, k, v, *, causal: bool = False, sm_scale: float | None = None, config: AttentionConfig | None = None,
              mode: str | None = None, out_dtype=None):
    """Fused attention forward; q, k, v [B, H, S, D] of one dtype (bf16 / fp16), last dim
    contiguous, D a power of two in 16..256. Returns O [B, H, S, D] in ``out_dtype`` (default:
    the input dtype; torch.float32 stores div_rn(acc, l) unrounded, which exposes the row-sum
    order that a bf16 output mostly hides).
    ``config`` defaults to :func:`default_config` (D, ``mode`` or "native"); ``mode`` given with
    a config overrides the config's mode. Native mode runs the Gluon kernel where it applies
    (``AttentionConfig.impl``; same order, bit-equal to this kernel on the GPUs)."""
    import torch

    kernels = _kernels()
    assert q.ndim == 4 and q.shape == k.shape == v.shape, f"attention: q, k, v must be [B,H,S,D] of one shape: {q.shape}, {k.shape}, {v.shape}"
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16), f"attention: bf16/fp16 inputs of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.stride(3) == 1 and k.stride(3) == 1 and v.stride(3) == 1, "attention: head_dim must be contiguous"
    B, H, S, D = q.shape
    assert D in (16, 32, 64, 128, 256), f"attention: head_dim must be a power of two in 16..256, got {D}"
    if config is None:
        config = default_config(D, mode or "native")
    elif mode is not None and mode != config.mode:
        config = replace(config, mode=mode, enable_fp_fusion=False if mode == "exact" else config.enable_fp_fusion)
    sm_scale = sm_scale_for(D, sm_scale)
    out_dtype = q.dtype if out_dtype is None else out_dtype
    assert out_dtype in (q.dtype, torch.float32), f"attention: out_dtype must be the input dtype or float32, got {out_dtype}"
    if config.mode == "native" and config.impl != "tl":
        why = _gluon_mismatch(config, q, k, v, causal, out_dtype)
        if not why:
            gluon_config = replace(AG.default_config(D), enable_fp_fusion=config.enable_fp_fusion)
            return AG.attention(q, k, v, causal=causal, sm_scale=sm_scale, config=gluon_config)
        if config.impl == "gluon":
            raise ValueError(f"attention(impl='gluon'): {why}")
    o = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    if q.numel() == 0:
        return o
    m_blocks = triton.cdiv(S, config.block_m)
    mask_n = (S % config.block_n) != 0 or (S % config.block_m) != 0  # a partial key or query block
    use_tma = bool(config.tma and not mask_n and q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    if use_tma:
        _set_tma_allocator()
    grid = (B * H, m_blocks) if config.longest_first else (m_blocks, B * H)
    kernels["fwd"][grid](
        q, k, v, o, qk_scale(sm_scale, config.mode),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        B, H, S, **constexprs(config, head_dim=D, causal=causal, mask_n=mask_n, use_tma=use_tma),
        num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=config.enable_fp_fusion)
    return o


def _gluon_mismatch(config: AttentionConfig, q, k, v, causal: bool, out_dtype) -> str:
    """Why the Gluon kernel cannot stand in for this native launch ("" when it can): it realises
    the native order at BLOCK_M = BLOCK_N = 128 only, writes the input dtype only, and needs
    what :func:`attention_gluon.supported` checks (sm_90, contiguous, D 64/128, S % 128 == 0)."""
    if (config.block_m, config.block_n) != (128, 128):
        return f"the Gluon kernel's order is BLOCK_M = BLOCK_N = 128, the config has {config.block_m}x{config.block_n}"
    if out_dtype != q.dtype:
        return "the Gluon kernel writes the input dtype only"
    ok, why = AG.supported(q, k, v, causal)
    return "" if ok else why


def plan(config: AttentionConfig | None = None, *, fmt: str = "bf16", head_dim: int = 128, causal: bool = False,
         sm_scale: float | None = None, arch: str = "sm_90") -> dict:
    """The order of the forward pass as data (JSON-ready, :func:`attention_order.order_plan`)
    with this kernel's launch configuration. Exact mode: ``"replay"`` holds the arguments of
    :func:`attention_ref.replay` that reproduce the kernel bit for bit (:func:`replay`). Native
    mode states the order only (``ex2.approx`` and the ``tl.sum`` tree of the MMA layout are not
    modelled)."""
    config = config or default_config(head_dim)
    launch = {"num_warps": config.num_warps, "num_stages": config.num_stages, "longest_first": config.longest_first,
              "tma": config.tma, "warp_specialize": config.warp_specialize}
    return order_plan(kind="triton_attention_fwd", mode=config.mode, block_m=config.block_m, block_n=config.block_n,
                      enable_fp_fusion=config.enable_fp_fusion, impl=config.impl if config.mode != "exact" else "tl",
                      fmt=fmt, head_dim=head_dim, causal=causal, sm_scale=sm_scale, arch=arch, launch=launch)


def replay(q, k, v, *, causal: bool = False, sm_scale: float | None = None, config: AttentionConfig | None = None,
           fmt: str | None = None, rowsum=None, block_n: int | None = None, round_output: bool = True,
           backend: str = "native"):
    """CPU replay of the exact mode, bit for bit: O [B, H, S, D] float32, holding fmt values
    (``round_output``) or the unrounded div_rn(acc, l) (attention(..., out_dtype=torch.float32)).
    q, k, v: torch tensors [B, H, S, D] (fmt from their dtype) or float32 numpy arrays holding
    ``fmt`` values. ``rowsum`` (a Plan) / ``block_n`` override the plan's (negative controls);
    ``backend``: the evaluator's ("native" C++ or "numpy", same bits)."""
    def f32(x):
        return np.asarray(x.float().cpu().numpy() if hasattr(x, "float") else x, dtype=np.float32)

    if fmt is None:
        fmt = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(getattr(q, "dtype", "")))
        if fmt is None:
            raise ValueError("replay: give fmt ('bf16' / 'fp16') for numpy inputs")
    Q, K, V = (f32(x) for x in (q, k, v))
    B, H, S, D = Q.shape
    config = config or default_config(D, "exact")
    if config.mode != "exact":
        raise ValueError("replay: only mode='exact' is bit-replayable")
    sm_scale = sm_scale_for(D, sm_scale)
    O = R.replay(Q.reshape(B * H, S, D), K.reshape(B * H, S, D), V.reshape(B * H, S, D), fmt=fmt, mode="exact",
                 block_n=block_n or config.block_n, causal=causal, scale=qk_scale(sm_scale, "exact"),
                 dot_path="wgmma", tile=config.block_m, rowsum=rowsum_plan() if rowsum is None else rowsum,
                 backend=backend)
    return (R.round_to_input(O, fmt) if round_output else O).reshape(B, H, S, D)


attention.plan = plan
attention.replay = replay
