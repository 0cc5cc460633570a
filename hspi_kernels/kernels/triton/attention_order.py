"""The order of the fused attention forward, as data: the one definition that both Triton
attention kernels (:mod:`.attention`, the tl kernel in both modes, and :mod:`.attention_gluon`,
the Gluon Hopper kernel of the native order) declare and launch with.

Owns the fp32 score scale (:func:`qk_scale`: ``fp32(sm_scale * log2(e))`` native,
``fp32(sm_scale)`` exact), the default ``sm_scale = 1/sqrt(D)`` (:func:`sm_scale_for`), the
row-sum order of the exact mode (:func:`rowsum_plan`) and :func:`order_plan`, the JSON-ready
statement of the key-block walk and the per-block steps that each kernel's ``plan()`` extends
with its own launch configuration. The kernels' module docstrings describe the same order in
prose. Importing this module imports neither torch nor Triton.
"""

from __future__ import annotations

import math

import numpy as np

from hspi_kernels.numerics.plans import Chain, Pairwise, TensorCore

__all__ = ["LOG2E", "order_plan", "qk_scale", "rowsum_plan", "sm_scale_for"]

LOG2E = 1.4426950408889634


def sm_scale_for(head_dim: int, sm_scale: float | None = None) -> float:
    """``sm_scale`` when given, else the default 1/sqrt(head_dim)."""
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale


def qk_scale(sm_scale: float, mode: str = "native") -> float:
    """The fp32 scale the kernels multiply the scores by: sm_scale*log2(e) (native, exp2
    domain) or sm_scale (exact, natural domain)."""
    return float(np.float32(sm_scale * LOG2E if mode == "native" else sm_scale))


def rowsum_plan():
    """The exact mode's row sum over the BLOCK_N columns of p: adjacent pairs level by level."""
    return Pairwise()


def order_plan(*, kind: str, mode: str, block_m: int, block_n: int, enable_fp_fusion: bool, impl: str,
               fmt: str = "bf16", head_dim: int = 128, causal: bool = False, sm_scale: float | None = None,
               arch: str = "sm_90", launch: dict | None = None) -> dict:
    """The forward pass's order as data (JSON-ready): key-block order, the row max / row sum /
    accumulator update formulas in order, and the plans of the two tensor-core dots, for a kernel
    of ``kind`` walking BLOCK_M x BLOCK_N tiles in ``mode``. ``launch``: the kernel's own launch
    fields, listed after the block sizes. Exact mode: ``"replay"`` holds the arguments of
    :func:`hspi_kernels.numerics.attention_ref.replay` that reproduce the kernel bit for bit.
    Native mode states the order only (``ex2.approx`` and the row-sum tree of the MMA layout
    are not modelled)."""
    sm_scale = sm_scale_for(head_dim, sm_scale)
    dot = Chain(TensorCore(arch, fmt, "fp32", path="wgmma"), k=16)
    fused = enable_fp_fusion
    common = {
        "kind": kind, "mode": mode, "fmt": fmt, "head_dim": head_dim, "block_m": block_m, "block_n": block_n,
        **(launch or {}), "enable_fp_fusion": fused, "causal": causal, "impl": impl,
        "key_blocks": ("start_n = 0, BLOCK_N, ... < BLOCK_M*start_m unmasked, then start_m*BLOCK_M .. "
                       "min((start_m+1)*BLOCK_M, S) masked (key > query -> -inf)") if causal
        else "start_n = 0, BLOCK_N, ... < S, ascending (keys >= S masked -> -inf, K = V = 0)",
        "epilogue": "O = div_rn(acc, l) (IEEE division), RNE to the output format (input format, or fp32 unrounded)",
    }
    if mode == "exact":
        return {**common,
                "qk_scale": {"value": qk_scale(sm_scale, "exact"), "formula": "fp32(sm_scale)"},
                "per_block": [
                    {"step": "scores", "formula": "s = rn(fp32(dot(q, k^T)) * qk_scale)", "dot_plan": dot.to_json(),
                     "over": "head_dim, from +0"},
                    {"step": "row_max", "formula": "m_new = max(m_old, max_j s_j); m_use = m_new (never -inf)",
                     "init": "-inf"},
                    {"step": "p", "formula": "p = EXP(rn(s - m_use)); alpha = EXP(rn(m_old - m_use))",
                     "exp": "attention_ref.exp_exact (IEEE ops and fma, no MUFU)"},
                    {"step": "row_sum", "formula": "l = rn(rn(l * alpha) + rowsum(p))",
                     "order": rowsum_plan().to_json(), "init": "+0"},
                    {"step": "acc", "formula": "acc = dot(RNE_fmt(p), v, c = rn(acc * alpha))", "dot_plan": dot.to_json(),
                     "over": "BLOCK_N keys"},
                ],
                "replay": {"fmt": fmt, "mode": "exact", "block_n": block_n, "tile": block_m,
                           "dot_path": "wgmma", "rowsum": "Pairwise()", "causal": causal,
                           "scale": qk_scale(sm_scale, "exact"), "output": f"RNE to {fmt}"}}
    return {**common,
            "qk_scale": {"value": qk_scale(sm_scale), "formula": "fp32(sm_scale * log2(e))"},
            "per_block": [
                {"step": "scores", "formula": "qk = fp32(dot(q, k^T))", "dot_plan": dot.to_json(), "over": "head_dim"},
                {"step": "row_max", "formula": "m_new = max(m_old, rn(max_j qk_j * qk_scale)) (diagonal: max of masked "
                                               "s = rn(qk * qk_scale))", "order": "exact (max is order-free)", "init": "-inf"},
                {"step": "p", "formula": ("p = exp2(fma(qk, qk_scale, -m_new))" if fused else
                                          "p = exp2(rn(rn(qk * qk_scale) - m_new))") + "; diagonal: exp2(rn(s - m_new))",
                 "exp2": "ex2.approx.ftz.f32 (MUFU)"},
                {"step": "alpha", "formula": "alpha = exp2(rn(m_old - m_new))"},
                {"step": "row_sum", "formula": "l = l * alpha + tl.sum(p, axis=1)" + (" (may be fma)" if fused else " (mul, then add)"),
                 "order": "tl.sum tree over BLOCK_N in the MMA accumulator layout (not revealed)", "init": "+0"},
                {"step": "acc", "formula": "acc = dot(fmt(p), v, c = acc * alpha)", "dot_plan": dot.to_json(),
                 "over": "BLOCK_N keys"},
            ]}
