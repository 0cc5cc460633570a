"""fp64 tensor-core MMA (DMMA): ``mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64`` on sm_80 (A100)
and sm_90 (H100/H200; PTX 7.8 adds m16n8k4/k8/k16 f64 shapes there). Hopper's ``wgmma`` has no
fp64 form (PTX ISA: wgmma types are f16/bf16/tf32/e4m3/e5m2/s8/u8/b1), so DMMA is mma.sync only.

Model (literature only): an IEEE binary64 fma chain in k order seeded with c,
``d = fma(a_3, b_3, fma(a_2, b_2, fma(a_1, b_1, fma(a_0, b_0, c))))``, every step rounded to
nearest-even -- MMA-Sim (``mmasim/simulator/nv_ptx.py``, ``mma.__call__``: for f64 operands
``sum = fma(A[i, l], B[l, j], sum)`` for l in range(k)); the PTX ISA specifies ``.rn`` as the
rounding of the f64 mma (it is IEEE-compliant: no fused block, no truncation, subnormals kept).
A K-long product chained over k4 instructions is then one fma chain over all of K, i.e. the plan
``Sequential("fp64", fma=True)`` with c as its seed, which is what :data:`DMMA_PLAN` is.
AMD's CDNA2/3 fp64 MFMA (``v_mfma_f64_16x16x4f64``) is the same chain in MMA-Sim.

The alternative a fused unit would give -- c plus the four exact products, rounded once -- is
:func:`dmma_fused_candidate`; ``tests/test_dmma.py`` has blocks on which the two (and a reversed
chain) differ, so one GPU run decides. No fp64 tensor-core vectors are public or in ``shared/``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from . import plans as P
from .evaluate import evaluate, fma64

__all__ = ["DMMA_ARCHS", "DMMA_K", "DMMA_PLAN", "dmma_plan", "dmma_block", "dmma_chain", "dmma_fused_candidate"]

DMMA_ARCHS = ("sm_80", "sm_90")
DMMA_K = 4
DMMA_PLAN = P.Sequential("fp64", fma=True)
SOURCE = ("MMA-Sim (Microsoft) 2025, nv_ptx.mma: f64 = sequential fma in k order; NVIDIA PTX ISA mma .f64 "
          "(.rn); literature only")


def dmma_plan(arch: str) -> P.Plan:
    """The plan of an fp64 mma.sync chain on ``arch`` (ValueError where there is no DMMA path)."""
    if arch not in DMMA_ARCHS:
        raise ValueError(f"no fp64 tensor-core (DMMA) model for {arch!r}; modelled: {DMMA_ARCHS} "
                         "(sm_90 wgmma has no fp64 form)")
    return DMMA_PLAN


def dmma_block(a, b, c) -> np.ndarray:
    """One m8n8k4 instruction per row: a, b float64 [N, 4], c float64 [N]: the fma chain."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != DMMA_K:
        raise ValueError(f"a, b must be [N, {DMMA_K}], got {a.shape}, {b.shape}")
    acc = np.asarray(c, np.float64).reshape(a.shape[0])
    for k in range(DMMA_K):
        acc = fma64(a[:, k], b[:, k], acc)
    return acc


def dmma_chain(a, b, c=None, backend: str = "native") -> np.ndarray:
    """K-long fp64 dot products as chained DMMA instructions, through the plan evaluator."""
    a = np.asarray(a, np.float64)
    if a.shape[-1] % DMMA_K:
        raise ValueError(f"K={a.shape[-1]} is not a multiple of {DMMA_K}")
    c = np.zeros(a.shape[:-1]) if c is None else c
    return evaluate(DMMA_PLAN, (a, np.asarray(b, np.float64)), c=c, backend=backend)


def dmma_fused_candidate(a, b, c) -> np.ndarray:
    """The rejected-until-measured alternative: c + sum of the four exact products, one RNE
    rounding to binary64 (Python's float(Fraction) rounds correctly)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = []
    for row_a, row_b, cv in zip(a, b, np.asarray(c, np.float64).reshape(-1)):
        s = Fraction(float(cv)) + sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(row_a, row_b))
        out.append(float(s))
    return np.array(out, np.float64)
