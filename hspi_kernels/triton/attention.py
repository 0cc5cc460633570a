"""Fused attention forward in Triton (the Triton tutorial's online softmax, fixed config).

``O = softmax(Q K^T * sm_scale [+ causal mask]) V`` for q, k, v [B, H, S, D] (bf16 / fp16).
One program owns BLOCK_M query rows of one (batch, head) and walks the key blocks of BLOCK_N in
increasing order (causal: the blocks strictly left of the diagonal first, then the diagonal
blocks with the mask). Per key block, in this order (:func:`plan` states it as data):

1. ``qk = dot(q, k^T)`` (tensor-core chain over D, fp32), ``s = qk * qk_scale`` with
   ``qk_scale = fp32(sm_scale * log2(e))``: the softmax runs in the log2 domain (exp2);
2. ``m_new = max(m_old, rowmax(s))`` (max is exact and order-free);
3. ``p = exp2(s - m_new)``, ``alpha = exp2(m_old - m_new)`` (``ex2.approx`` on the GPU);
4. ``l = l * alpha + tl.sum(p, axis=1)``; ``acc = dot(p.to(fmt), v, acc * alpha)``;
5. after the last block ``O = div_rn(acc, l)`` rounded (RNE) to the input format.

``enable_fp_fusion`` is passed on every launch: with fusion on, steps 1/3 and 4 may contract
into fma (different bits), so it is part of the configuration. Arch: any Triton GPU; the
plan's tensor-core blocks name sm_90. Importing this module imports neither torch nor Triton.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = ["AttentionConfig", "attention", "plan"]

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionConfig:
    """Fixed launch configuration (no autotuning). BLOCK_M must be a multiple of BLOCK_N.

    ``longest_first``: the grid is (B*H, query blocks) and causal query blocks run from the last
    (most key blocks) to the first, so the long programs start first (scheduling only).
    ``tma``: K and V tiles through TMA descriptors (``tl.make_tensor_descriptor``) over the
    [B*H*S, D] view, used when q, k, v are contiguous and S is a multiple of BLOCK_M (else the
    pointer loads). Neither changes any output's order (the plan). Both are off by default: on the
    H100 (B4 H16 S4096 D128 bf16 causal) neither was faster (longest_first 0.693 vs 0.687 ms, TMA
    0.747 ms); BLOCK_N 128 was slower too (0.731 ms at 3 stages) and changes the bits (the online
    softmax rescales per key block), as does any BLOCK_N."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    enable_fp_fusion: bool = False
    longest_first: bool = False
    tma: bool = False

    def __post_init__(self):
        if self.block_m % self.block_n:
            raise ValueError(f"AttentionConfig: block_m ({self.block_m}) must be a multiple of block_n ({self.block_n})")


@functools.cache
def _kernels():
    global triton, tl, _attn_fwd_inner, _attn_fwd_kernel
    from .gemm import require_triton

    require_triton()
    import triton
    import triton.language as tl

    @triton.jit
    def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn, stride_vn, offs_m,
                        offs_d, lo, hi, N_CTX, qk_scale, DIAGONAL: tl.constexpr, MASK_N: tl.constexpr,
                        BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr):
        """Key blocks start_n = lo, lo+BLOCK_N, ... < hi in increasing order (see module docstring)."""
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            if USE_TMA:
                k = k_desc.load([desc_row + start_n, 0]).T
            elif MASK_N:
                k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=offs_n[None, :] < N_CTX, other=0.0)
            else:
                k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None])
            s = tl.dot(q, k) * qk_scale
            if DIAGONAL:
                s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
            if MASK_N:
                s = tl.where(offs_n[None, :] < N_CTX, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if USE_TMA:
                v = v_desc.load([desc_row + start_n, 0])
            elif MASK_N:
                v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=offs_n[:, None] < N_CTX, other=0.0)
            else:
                v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :])
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, qk_scale,
                         stride_qz, stride_qh, stride_qm, stride_kz, stride_kh, stride_kn,
                         stride_vz, stride_vh, stride_vn, stride_oz, stride_oh, stride_om,
                         Z, H, N_CTX,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, MASK_N: tl.constexpr, LONGEST_FIRST: tl.constexpr,
                         USE_TMA: tl.constexpr):
        """Rows [start_m*BLOCK_M, +BLOCK_M) of one head; key blocks in increasing order.
        LONGEST_FIRST: grid (Z*H, query blocks), start_m counted down (scheduling only).
        MASK_N: a partial key or query block exists (else no load or store is masked)."""
        if LONGEST_FIRST:
            start_m = tl.num_programs(1) - 1 - tl.program_id(1)
            off_zh = tl.program_id(0)
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
                                            False, False, BLOCK_N, USE_TMA)
            hi = tl.minimum((start_m + 1) * BLOCK_M, N_CTX)
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn,
                                            stride_vn, offs_m, offs_d, start_m * BLOCK_M, hi, N_CTX, qk_scale,
                                            True, MASK_N, BLOCK_N, USE_TMA)
        else:
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, stride_kn,
                                            stride_vn, offs_m, offs_d, 0, N_CTX, N_CTX, qk_scale,
                                            False, MASK_N, BLOCK_N, USE_TMA)
        out = tl.math.div_rn(acc, l_i[:, None])
        o_base = o_ptr + off_z * stride_oz + off_h * stride_oh
        if MASK_N:
            tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=offs_m[:, None] < N_CTX)
        else:
            tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(o_ptr.dtype.element_ty))

    return {"fwd": _attn_fwd_kernel}


def _qk_scale(sm_scale: float) -> float:
    import numpy as np

    return float(np.float32(sm_scale * _LOG2E))


def attention(q, k, v, *, causal: bool = False, sm_scale: float | None = None, config: AttentionConfig | None = None):
    """Fused attention forward; q, k, v [B, H, S, D] of one dtype (bf16 / fp16), last dim
    contiguous, D a power of two in 16..256. Returns O [B, H, S, D] in the input dtype."""
    import torch

    kernels = _kernels()
    config = config or AttentionConfig()
    assert q.ndim == 4 and q.shape == k.shape == v.shape, f"attention: q, k, v must be [B,H,S,D] of one shape: {q.shape}, {k.shape}, {v.shape}"
    assert q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16), f"attention: bf16/fp16 inputs of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.stride(3) == 1 and k.stride(3) == 1 and v.stride(3) == 1, "attention: head_dim must be contiguous"
    B, H, S, D = q.shape
    assert D in (16, 32, 64, 128, 256), f"attention: head_dim must be a power of two in 16..256, got {D}"
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return o
    m_blocks = triton.cdiv(S, config.block_m)
    mask_n = (S % config.block_n) != 0 or (S % config.block_m) != 0  # a partial key or query block
    use_tma = bool(config.tma and not mask_n and q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    if use_tma:
        from .gemm import _set_tma_allocator

        _set_tma_allocator()
    grid = (B * H, m_blocks) if config.longest_first else (m_blocks, B * H)
    kernels["fwd"][grid](
        q, k, v, o, _qk_scale(sm_scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        B, H, S, HEAD_DIM=D, BLOCK_M=config.block_m, BLOCK_N=config.block_n, CAUSAL=causal,
        MASK_N=mask_n, LONGEST_FIRST=config.longest_first, USE_TMA=use_tma,
        num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=config.enable_fp_fusion)
    return o


def plan(config: AttentionConfig | None = None, *, fmt: str = "bf16", head_dim: int = 128, causal: bool = False,
         sm_scale: float | None = None, arch: str = "sm_90") -> dict:
    """The order of the forward pass as data (JSON-ready): key-block order, the row max / row
    sum / accumulator update formulas in order, and the plans of the two tensor-core dots.
    ``exp2`` is the GPU's ``ex2.approx`` (not bit-modelled), so this states the order only; a
    bit-exact replay needs the GPU's p values."""
    from hspi_kernels.numerics.plans import Chain, TensorCore

    config = config or AttentionConfig()
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    dot = Chain(TensorCore(arch, fmt, "fp32", path="wgmma"), k=16)
    fused = config.enable_fp_fusion
    return {
        "kind": "triton_attention_fwd",
        "block_m": config.block_m,
        "block_n": config.block_n,
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        "longest_first": config.longest_first,
        "tma": config.tma,
        "enable_fp_fusion": fused,
        "causal": causal,
        "qk_scale": {"value": _qk_scale(sm_scale), "formula": "fp32(sm_scale * log2(e))"},
        "key_blocks": ("start_n = 0, BLOCK_N, ... < BLOCK_M*start_m unmasked, then start_m*BLOCK_M .. "
                       "(start_m+1)*BLOCK_M masked (key > query -> -inf)") if causal else "start_n = 0, BLOCK_N, ... < S, ascending",
        "per_block": [
            {"step": "scores", "formula": "s = fp32(dot(q, k^T)) * qk_scale", "dot_plan": dot.to_json(), "over": "head_dim"},
            {"step": "row_max", "formula": "m_new = max(m_old, max_j s_j)", "order": "exact (max is order-free)", "init": "-inf"},
            {"step": "p", "formula": "p = exp2(s - m_new)" + (" (s*qk_scale - m may contract to fma)" if fused else ""),
             "exp2": "ex2.approx.f32 (MUFU)"},
            {"step": "alpha", "formula": "alpha = exp2(m_old - m_new)"},
            {"step": "row_sum", "formula": "l = l * alpha + tl.sum(p, axis=1)" + (" (may be fma)" if fused else " (mul, then add)"),
             "order": "tl.sum tree over BLOCK_N in the MMA accumulator layout (not revealed)", "init": "+0"},
            {"step": "acc", "formula": "acc = dot(bf16(p), v, c = acc * alpha)", "dot_plan": dot.to_json(), "over": "BLOCK_N keys"},
        ],
        "epilogue": "O = fmt(div_rn(acc, l)) (IEEE division, RNE to the input format)",
    }
