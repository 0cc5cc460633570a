"""The accumulation order of a fused attention forward as a plan-like value, and its bit-exact
evaluation on q / k / v (:func:`evaluate_attention`).

The plan language (:mod:`.plans`) has no softmax node, so an attention order is its own frozen
dataclass, :class:`AttentionPlan`, serialisable like a plan (``to_json`` / :func:`attention_plan_from_json`,
``repr`` that ``eval``s back). Its fields are the parts of the order that change output bits:

- ``block_n``: keys per block of the online softmax (each block rescales ``l`` and ``acc``);
- ``tile``: query rows sharing one causal loop end (the kernel's BLOCK_M);
- ``domain``: ``"natural"`` (``s = rn(qk * fp32(scale))``, ``p = exp(s - m)``) or ``"log2"``
  (``s = rn(qk * fp32(scale * log2 e))``, ``p = exp2(s - m)``: the Triton tutorial / flash order);
- ``exp``: the exponential: ``"exact"`` (:func:`attention_ref.exp_exact`, the project's fixed IEEE
  sequence; natural domain), ``"numpy"`` (numpy float32 ``exp`` / ``exp2``: the CPU libm and the
  Triton interpreter's stand-in for ``ex2.approx``), ``"sfu"`` (a recorded ``ex2.approx.ftz`` table,
  :class:`attention_ref.SfuTable`, given at evaluation);
- ``rowsum``: the plan of the per-block row sum of p (``None``: the CUDA kernel's quad order,
  :func:`attention_ref.rowsum_order`);
- ``dot``: the plan of both dots, Q·Kᵀ over D and P·V over the block's keys from
  ``c = rn(acc · alpha)`` (``None``: the sm_90 ``wgmma`` tensor-core chain of the input format);
- ``round_p``: P rounded (RNE) to the input format before P·V (the tensor-core path);
- ``splits``: contiguous key splits combined at the end (split-KV).

Per block the steps are those of :func:`attention_ref.replay` (which this module drives: one
definition of the walk): ``m_new = max(m, rowmax s)``, ``alpha = EXP(rn(m - m_new))``,
``p = EXP(rn(s - m_new))``, ``l = rn(rn(l·alpha) + rowsum(p))``, ``acc = dot(P, V, c = rn(acc·alpha))``;
``O = div_rn(acc, l)`` and RNE to the output format. The log-sum-exp output of
``_scaled_dot_product_*`` ops is ``rn(m + log(l))`` (natural) or ``rn(rn(m + log2(l)) · fp32(ln 2))``
(log2), numpy float32 log / log2 (the only part of this module that is a definition rather than a
measured order). Grouped-query attention: query head h reads key/value head ``h // (Hq / Hkv)``.

``walk="flash2"`` is the other family, the order of the flash-attention-2 forward kernel
(:func:`attention_ref.replay_flash2`, which PyTorch's flash SDPA backend runs): max over *raw*
scores, ``p = ex2(fma(s, c, -rn(m·c)))``, key blocks from the last to the first (part of the
walk), the row sum in four lane partials combined once at the end (``lane_fma``: the rescale of
a partial contracted with its first add), ``O = rn(acc · inv)`` with ``inv`` from ``recip``
(``"ieee"``: rn(1/l); ``"sfu"``: rcp.approx, a fast-math build; ``"div"``: div_rn instead); the
default dot there is the sm_90 mma.sync chain (the sm_80 code runs on Hopper). Its log-sum-exp
is ``fma(m, fp32(scale), rn(LG2(l) · fp32(ln 2)))`` (``__logf``; LG2 = lg2.approx from ``sfu``
when exp is "sfu", else numpy log2). SFU instructions come from ``sfu=`` at evaluation (an object
with ``apply(op, x)``: :class:`attention_ref.SfuOutputs` recorded on a GPU, or
``kernels.cuda.sfu.LiveSfu`` there).

The log-sum-exp formula is a field too, because kernels write it differently (``lse``, with the
log function ``log``; ``LN(l)`` = ``rn(LG2(l) · fp32(ln 2))`` for ``log="sfu"`` (``__logf`` of a
fast-math build: LG2 = lg2.approx), numpy float32 ``log(l)`` for ``log="libm"``, CUDA's accurate
``logf`` for ``log="cuda"`` (:func:`attention_ref.cuda_logf`, libdevice ``__nv_logf`` bit for bit: a
build without fast math; flash2 split-KV: the combine kernel's ``logf`` too); "cuda" has no place in
the online log2-domain "auto" form, which takes log2):

- ``lse="auto"``, ``log="auto"``: the forms above (online: numpy log / log2; flash2: ``fma(m,
  fp32(scale), LN(l))`` with LG2 = lg2.approx when exp is "sfu", else numpy log2);
- online walk, log2 domain (m in log2 units): ``"fma_ln2"`` = ``fma(m, fp32(ln 2), LN(l))``,
  ``"mul_ln2"`` = ``rn(rn(m · fp32(ln 2)) + LN(l))``, ``"div_log2e"`` = ``rn(div_rn(m, fp32(log2 e)) + LN(l))``
  (the CUTLASS memory-efficient kernel's ``mi / kLog2e + log(s_prime)``);
- flash2 (m raw): ``"mul_scale"`` = ``rn(rn(m · fp32(scale)) + LN(l))`` (the uncontracted ``__logf`` form).

Fields found on the long H200 captures (defaults = the earlier behaviour, bit for bit):

- ``rowsum_chunk`` (online walk; 0 = the whole block): the block's row sum as partials of that many
  keys, each in the ``rowsum`` order, added to ``rn(l·alpha)`` one after the other (the CUTLASS
  memory-efficient kernel: one partial per 32-key warp column, ``s_prime += addition_storage[i]``);
- ``scale_twice`` (online walk, log2 domain): ``s = rn(rn(S·fp32(scale))·fp32(log2 e))`` (that kernel's
  ``p.scale`` then ``kLog2e``; the same bits as once when the scale is a power of two, D = 64);
- ``combine_log`` / ``combine_exp`` (flash2 split-KV): the combine kernel's ``logf`` / ``expf``:
  ``combine_log="auto"`` is CUDA logf when ``log="cuda"``, else numpy; ``"cuda"`` CUDA's accurate
  ``logf`` whatever the split kernel's ``log`` (PyTorch's flash build has no fast math there: the
  split lse keeps its explicit ``__logf``); ``combine_exp="cuda"``: CUDA's accurate ``expf``
  (:func:`attention_ref.cuda_expf`, ``ex2.approx.ftz`` of a reduced argument in about [0, 1) from
  ``sfu``), ``"libm"`` numpy's float32 exp.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import attention_ref as R
from . import plans as P

__all__ = ["AttentionPlan", "attention_plan_from_json", "evaluate_attention", "DOMAINS", "EXPS", "WALKS", "RECIPS",
           "diff_fields", "candidates", "flash2_candidates", "LSES", "LOGS", "lse_variants"]

DOMAINS = ("natural", "log2")
EXPS = ("exact", "numpy", "sfu")
WALKS = ("online", "flash2")
RECIPS = ("div", "ieee", "sfu")
LSES = ("auto", "fma_ln2", "mul_ln2", "div_log2e", "mul_scale")  # module docstring
LOGS = ("auto", "libm", "sfu", "cuda")
COMBINE_LOGS = ("auto", "libm", "cuda")
COMBINE_EXPS = ("libm", "cuda")
F32 = np.float32
LOG2E = 1.4426950408889634
LN2 = F32(0.6931471805599453)


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """One fused attention order (module docstring)."""

    block_n: int = 64
    tile: int = 128
    domain: str = "natural"
    exp: str = "exact"
    rowsum: Any = None  # a Plan, or None: the CUDA quad order
    dot: Any = None  # a Plan, or None: Chain(TensorCore("sm_90", fmt, "fp32", path="wgmma"), k=16)
    round_p: bool = True
    splits: int = 1
    walk: str = "online"
    recip: str = "div"
    lane_fma: bool = True
    lse: str = "auto"
    log: str = "auto"
    exp_fma: bool = True  # flash2: p = ex2(fma(S, c, -rn(m c))); False: ex2(rn(rn(S c) - rn(m c)))
    rowsum_chunk: int = 0  # online: the block's row sum in partials of this many keys (0: whole block)
    scale_twice: bool = False  # online log2: s = rn(rn(S * fp32(scale)) * fp32(log2 e)) (False: rounded once)
    combine_log: str = "auto"  # flash2 split-KV combine's logf: "auto" (log='cuda': CUDA logf, else numpy)
    combine_exp: str = "libm"  # flash2 split-KV combine's expf: "libm" (numpy) or "cuda" (__nv_expf on SFU ex2)

    def __post_init__(self):
        for name in ("block_n", "tile", "splits"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"AttentionPlan: {name} must be a positive int, got {v!r}")
        if self.domain not in DOMAINS:
            raise ValueError(f"AttentionPlan: domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.exp not in EXPS:
            raise ValueError(f"AttentionPlan: exp must be one of {EXPS}, got {self.exp!r}")
        if self.exp == "exact" and self.domain != "natural":
            raise ValueError("AttentionPlan: exp='exact' is the natural-domain exp (attention_ref.exp_exact)")
        if self.rowsum is None and self.block_n % 8:
            raise ValueError(f"AttentionPlan: the CUDA quad row sum (rowsum=None) needs BLOCK_N % 8 == 0, got {self.block_n}")
        for name in ("rowsum", "dot"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, P.Plan):
                raise ValueError(f"AttentionPlan: {name} must be a Plan or None, got {v!r}")
        if self.walk not in WALKS:
            raise ValueError(f"AttentionPlan: walk must be one of {WALKS}, got {self.walk!r}")
        if self.recip not in RECIPS:
            raise ValueError(f"AttentionPlan: recip must be one of {RECIPS}, got {self.recip!r}")
        if self.walk == "flash2":
            if self.domain != "log2" or self.exp == "exact" or self.rowsum is not None or not self.round_p:
                raise ValueError("AttentionPlan(walk='flash2'): the flash-attention-2 order is log2-domain, "
                                 "exp 'numpy' or 'sfu', lane row sums (rowsum=None), P rounded")
        elif not self.lane_fma or not self.exp_fma or (self.recip != "div" and self.splits != 1):
            raise ValueError("AttentionPlan: lane_fma / exp_fma are fields of walk='flash2'; recip other than 'div' "
                             "needs one split")
        if not isinstance(self.rowsum_chunk, int) or self.rowsum_chunk < 0:
            raise ValueError(f"AttentionPlan: rowsum_chunk must be a non-negative int, got {self.rowsum_chunk!r}")
        if self.rowsum_chunk and (self.walk != "online" or self.block_n % self.rowsum_chunk
                                  or (self.rowsum is None and self.rowsum_chunk % 8)):
            raise ValueError("AttentionPlan: rowsum_chunk is a field of the online walk, a divisor of block_n "
                             "(a multiple of 8 with the quad row sum)")
        if self.scale_twice and (self.walk != "online" or self.domain != "log2"):
            raise ValueError("AttentionPlan: scale_twice is a field of the online walk's log2 domain")
        if self.combine_log not in COMBINE_LOGS or self.combine_exp not in COMBINE_EXPS:
            raise ValueError(f"AttentionPlan: combine_log must be one of {COMBINE_LOGS} and combine_exp one of "
                             f"{COMBINE_EXPS}, got {self.combine_log!r}, {self.combine_exp!r}")
        if (self.combine_log, self.combine_exp) != ("auto", "libm") and self.walk != "flash2":
            raise ValueError("AttentionPlan: combine_log / combine_exp are fields of walk='flash2' (split-KV)")
        if self.lse not in LSES or self.log not in LOGS:
            raise ValueError(f"AttentionPlan: lse must be one of {LSES} and log one of {LOGS}, got {self.lse!r}, {self.log!r}")
        if self.lse == "mul_scale" and self.walk != "flash2":
            raise ValueError("AttentionPlan: lse='mul_scale' is a flash2 form (m on raw scores)")
        if self.lse in ("fma_ln2", "mul_ln2", "div_log2e") and (self.walk != "online" or self.domain != "log2"):
            raise ValueError(f"AttentionPlan: lse={self.lse!r} is an online-walk log2-domain form")
        if self.log == "cuda" and self.lse == "auto" and self.walk == "online" and self.domain == "log2":
            raise ValueError("AttentionPlan: log='cuda' (logf) has no place in the log2-domain lse='auto' form "
                             "(it takes log2(l))")

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default or f.name in ("block_n",):
                parts.append(f"{f.name}={v!r}")
        return "AttentionPlan(" + ", ".join(parts) + ")"

    def to_json(self) -> dict:
        d = {"type": "AttentionPlan"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_json() if isinstance(v, P.Plan) else v
        return d

    def describe(self) -> dict:
        """The order in words (JSON-ready)."""
        if self.walk == "flash2":
            return {
                "walk": "flash-attention-2 forward (attention_ref.replay_flash2)",
                "key_blocks": f"BLOCK_N={self.block_n} keys per block, from the tile's last block down to block 0; "
                              f"causal loop end per {self.tile} query rows",
                "scores": "S = dot(q, k^T) raw; m = max(m, rowmax S) on raw scores",
                "exp": ("ex2.approx.ftz" if self.exp == "sfu" else "numpy float32 exp2")
                       + (" of fma(S, c, -rn(m * c))" if self.exp_fma else " of rn(rn(S * c) - rn(m * c))")
                       + ", c = fp32(scale * log2 e); alpha = EX2(rn(rn(m_prev - m) * c))",
                "rowsum": "lane partials (columns n % 8 in {2t, 2t+1}, increasing n), rescaled by alpha per block"
                          + (" (fma with the first add)" if self.lane_fma else "") + "; (R0 + R2) + (R1 + R3) at the end",
                "pv": "P = RNE(p) to the input format; acc = dot(P, V, c = rn(acc * alpha))",
                "dot": "Chain(TensorCore('sm_90', fmt, 'fp32', path='mma.sync'), k=16)" if self.dot is None else repr(self.dot),
                "output": {"div": "O = div_rn(acc, l)", "ieee": "O = rn(acc * rn(1 / l))",
                           "sfu": "O = rn(acc * rcp.approx(l))"}[self.recip] + ", RNE to the output format",
                "lse": self.describe_lse(),
                "combine": self.describe_combine(),
            }
        return {
            "key_blocks": f"BLOCK_N={self.block_n} keys per block, ascending; causal loop end per {self.tile} query rows",
            "scores": ("s = rn(rn(dot(q, k^T) * fp32(scale)) * fp32(log2 e))" if self.scale_twice else
                       f"s = rn(dot(q, k^T) * fp32(scale{' * log2 e' if self.domain == 'log2' else ''}))"),
            "exp": {"exact": "attention_ref.exp_exact", "numpy": f"numpy float32 {'exp2' if self.domain == 'log2' else 'exp'}",
                    "sfu": "recorded ex2.approx.ftz table" + (" on rn(x * L2E)" if self.domain == "natural" else "")}[self.exp],
            "online_softmax": "m_new = max(m, rowmax s); alpha = EXP(rn(m - m_new)); p = EXP(rn(s - m_new)); "
                              "l = rn(rn(l * alpha) + rowsum(p))",
            "rowsum": ("CUDA quad order" if self.rowsum is None else repr(self.rowsum))
                      + (f", in partials of {self.rowsum_chunk} keys added to rn(l * alpha) one after the other"
                         if self.rowsum_chunk else ""),
            "pv": ("P = RNE(p) to the input format; " if self.round_p else "P = p (fp32); ")
                  + "acc = dot(P, V, c = rn(acc * alpha))",
            "dot": "Chain(TensorCore('sm_90', fmt, 'fp32', path='wgmma'), k=16)" if self.dot is None else repr(self.dot),
            "splits": self.splits,
            "output": {"div": "O = div_rn(acc, l)", "ieee": "O = rn(acc * rn(1 / l))",
                       "sfu": "O = rn(acc * rcp.approx(l))"}[self.recip] + ", RNE to the output format",
            "lse": self.describe_lse(),
        }

    def _log_source(self) -> str:
        if self.log != "auto":
            return self.log
        return "sfu" if self.walk == "flash2" and self.exp == "sfu" else "libm"

    def describe_combine(self) -> str:
        """The split-KV combine kernel's functions (flash2 with splits > 1)."""
        log = "CUDA logf" if self._combine_log() == "cuda" else "numpy float32 log"
        exp = ("CUDA expf (__nv_expf: ex2.approx.ftz of a reduced argument, times 2^k)" if self.combine_exp == "cuda"
               else "numpy float32 exp")
        return f"expf = {exp}; logf = {log}"

    def _combine_log(self) -> str:
        if self.combine_log != "auto":
            return self.combine_log
        return "cuda" if self.log == "cuda" else "libm"

    def describe_lse(self) -> str:
        """The log-sum-exp formula of this plan (module docstring)."""
        ln = {"sfu": "rn(lg2.approx(l) * fp32(ln 2))", "cuda": "logf(l)"}.get(self._log_source(), "log(l)")
        if self.walk == "flash2":
            if self.lse == "mul_scale":
                return f"rn(rn(m * fp32(scale)) + {ln})"
            if self.log in ("libm", "cuda"):
                return f"fma(m, fp32(scale), {ln})"
            lg2 = "lg2.approx(l)" if self._log_source() == "sfu" else "log2(l)"
            return f"fma(m, fp32(scale), rn({lg2} * fp32(ln 2)))"
        if self.lse == "auto":
            if self.domain == "natural":
                return f"rn(m + {ln})"
            lg2 = "lg2.approx(l)" if self._log_source() == "sfu" else "log2(l)"
            return f"rn(rn(m + {lg2}) * fp32(ln 2))"
        return {"fma_ln2": f"fma(m, fp32(ln 2), {ln})", "mul_ln2": f"rn(rn(m * fp32(ln 2)) + {ln})",
                "div_log2e": f"rn(div_rn(m, fp32(log2 e)) + {ln})"}[self.lse]


def attention_plan_from_json(d: dict) -> AttentionPlan:
    if not isinstance(d, dict) or d.get("type") != "AttentionPlan":
        raise ValueError(f"not an AttentionPlan JSON: {d!r}")
    kw = {k: v for k, v in d.items() if k != "type"}
    for name in ("rowsum", "dot"):
        if kw.get(name) is not None:
            kw[name] = P.plan_from_json(kw[name])
    return AttentionPlan(**kw)


def diff_fields(a: AttentionPlan, b: AttentionPlan) -> dict[str, tuple]:
    """{field: (value in a, value in b)} of the fields where two plans differ."""
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(AttentionPlan)
            if getattr(a, f.name) != getattr(b, f.name)}


def _exp_fn(plan: AttentionPlan, ex2_table, sfu=None):
    if plan.exp == "sfu" and ex2_table is None and sfu is not None:
        if plan.domain == "natural":
            def e_nat(x):
                with np.errstate(all="ignore"):
                    return sfu.apply("ex2_ftz", (np.asarray(x, dtype=F32) * R.L2E).astype(F32))
            return e_nat
        return lambda x: sfu.apply("ex2_ftz", x)
    if plan.exp == "numpy":
        fn = np.exp2 if plan.domain == "log2" else np.exp

        def e(x):
            with np.errstate(all="ignore"):
                return fn(np.asarray(x, dtype=F32)).astype(F32)
        return e
    if plan.exp == "sfu":
        if ex2_table is None:
            raise ValueError("AttentionPlan(exp='sfu') needs the recorded ex2 table (ex2_table=) or sfu=")
        if plan.domain == "natural":
            return R.make_exp("native", ex2_table)

        def e2(x):
            return ex2_table.ex2(np.asarray(x, dtype=F32))[0]
        return e2
    return R.exp_exact


def evaluate_attention(plan: AttentionPlan, q, k, v, *, fmt: str, causal: bool = False, scale: float | None = None,
                       ex2_table=None, with_lse: bool = False, backend: str = "native", round_output: bool = True,
                       sfu=None):
    """O [..., Hq, Sq, D] float32 (holding ``fmt`` values after the output RNE) of the order
    ``plan`` on q [..., Hq, Sq, D], k / v [..., Hkv, Sk, D] (float32 arrays holding ``fmt``
    values; Hq a multiple of Hkv). ``scale`` defaults to 1/sqrt(D). ``with_lse``: also the
    log-sum-exp [..., Hq, Sq] (module docstring). Memory: one [Hq, Sq, Sk] score array per
    leading index (evaluated one batch entry at a time). ``round_output=False``: the fp32
    ``div_rn(acc, l)`` before the output RNE (a kernel's fp32-output mode). ``sfu``: the SFU
    instructions of exp / recip / lse "sfu" (module docstring)."""
    q, k, v = (np.asarray(x, dtype=F32) for x in (q, k, v))
    if q.ndim < 3 or k.shape != v.shape or q.shape[:-3] != k.shape[:-3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"evaluate_attention: q [..., H, S, D], k = v [..., Hkv, S, D], got {q.shape}, {k.shape}, {v.shape}")
    Hq, Sq, D = q.shape[-3:]
    Hkv, Sk = k.shape[-3], k.shape[-2]
    if Hq % Hkv:
        raise ValueError(f"evaluate_attention: {Hq} query heads are not a multiple of {Hkv} key/value heads")
    dot = plan.dot
    if fmt == "fp32" and dot is None:
        raise ValueError("evaluate_attention: an fp32 attention needs the plan's dot (no fp32 tensor-core default)")
    lead = q.shape[:-3]
    qf = q.reshape((-1, Hq, Sq, D))
    kf = np.repeat(k.reshape((-1, Hkv, Sk, D)), Hq // Hkv, axis=1)
    vf = np.repeat(v.reshape((-1, Hkv, Sk, D)), Hq // Hkv, axis=1)
    s = 1.0 / np.sqrt(D) if scale is None else float(scale)
    sc = float(F32(s * LOG2E)) if plan.domain == "log2" and not plan.scale_twice else float(F32(s))
    exp = _exp_fn(plan, ex2_table, sfu)
    if plan.walk == "flash2":
        return _flash2(plan, qf, kf, vf, lead, fmt=fmt, causal=causal, scale=s, sc=sc, exp=exp, sfu=sfu,
                       with_lse=with_lse, backend=backend, round_output=round_output)
    outs, lses = [], []
    for b in range(qf.shape[0]):
        stats: dict = {}
        O = R.replay(qf[b], kf[b], vf[b], fmt=fmt, mode="exact", block_n=plan.block_n, splits=plan.splits,
                     causal=causal, scale=sc, round_p=plan.round_p, stats=stats, tile=plan.tile,
                     rowsum=plan.rowsum, backend=backend, exp=exp, dot_plan=dot,
                     dot_path="wgmma", recip=_recip_fn(plan, sfu), rowsum_chunk=plan.rowsum_chunk,
                     scale2=F32(LOG2E) if plan.scale_twice else None)
        outs.append(R.round_to_input(O, fmt) if round_output else O)
        if with_lse:
            if plan.splits != 1:
                raise ValueError("evaluate_attention: the log-sum-exp of a split plan is not defined here")
            with np.errstate(all="ignore"):
                lses.append(_lse(plan, stats["m"], stats["l"], s, sfu))
    O = np.stack(outs).reshape(lead + (Hq, Sq, D))
    if not with_lse:
        return O
    return O, np.stack(lses).reshape(lead + (Hq, Sq))


def _lse(plan: AttentionPlan, m, l, scale: float, sfu) -> np.ndarray:
    """The log-sum-exp of ``plan`` (module docstring) from the walk's row max ``m`` (raw scores for
    flash2, scaled scores of the plan's domain for the online walk) and row sum ``l``, float32."""
    m = np.asarray(m, dtype=F32)
    l = np.asarray(l, dtype=F32)
    src = plan._log_source()
    if src == "sfu" and sfu is None:
        if plan.log == "sfu":
            raise ValueError("AttentionPlan(log='sfu') needs sfu= (the recorded lg2.approx outputs)")
        src = "libm"  # auto on a flash2 plan without SFU outputs: numpy log2 stands in (as before)
    lg2 = sfu.apply("lg2", l) if src == "sfu" else np.log2(l).astype(F32)
    ln = ((lg2 * LN2).astype(F32) if src == "sfu" else R.cuda_logf(l) if src == "cuda" else np.log(l).astype(F32))
    if plan.walk == "flash2":
        if plan.lse == "mul_scale":
            return ((m * F32(scale)).astype(F32) + ln).astype(F32)
        return R.fma32(m, F32(scale), ln if plan.log in ("libm", "cuda") else (lg2 * LN2).astype(F32))
    if plan.lse == "auto":
        if plan.domain == "natural":
            return (m + ln).astype(F32)
        return ((m + lg2).astype(F32) * LN2).astype(F32)
    if plan.lse == "fma_ln2":
        return R.fma32(m, LN2, ln)
    if plan.lse == "mul_ln2":
        return ((m * LN2).astype(F32) + ln).astype(F32)
    return ((m / F32(LOG2E)).astype(F32) + ln).astype(F32)  # div_log2e: IEEE division by fp32(log2 e)


def lse_variants(plan: AttentionPlan) -> list[AttentionPlan]:
    """``plan`` with every log-sum-exp formula and log source valid for its walk and domain (the
    plan itself first); the output is the same for one split, so these differ only in the lse."""
    forms = ("auto", "mul_scale") if plan.walk == "flash2" else (
        ("auto", "fma_ln2", "mul_ln2", "div_log2e") if plan.domain == "log2" else ("auto",))
    out = [plan]
    for lse in forms:
        for log in ("libm", "sfu", "cuda"):
            if log == "cuda" and lse == "auto" and plan.walk == "online" and plan.domain == "log2":
                continue  # that form takes log2(l), not logf
            out.append(dataclasses.replace(plan, lse=lse, log=log))
    return list(dict.fromkeys(out))


def _recip_fn(plan: AttentionPlan, sfu):
    if plan.recip == "sfu":
        if sfu is None:
            raise ValueError("AttentionPlan(recip='sfu') needs sfu= (the recorded rcp.approx outputs)")

        def recip(x):
            return sfu.apply("rcp", x)
    elif plan.recip == "ieee":
        def recip(x):
            return (F32(1) / np.asarray(x, dtype=F32)).astype(F32)
    else:
        recip = None
    return recip


def _combine_expf(plan, sfu):
    """The split-KV combine's expf (None: numpy's, replay_flash2's default)."""
    if plan.combine_exp != "cuda":
        return None
    if sfu is None:
        raise ValueError("AttentionPlan(combine_exp='cuda') needs sfu= (the ex2.approx.ftz outputs __nv_expf uses)")
    return lambda x: R.cuda_expf(x, lambda y: sfu.apply("ex2_ftz", y))


def _flash2(plan, qf, kf, vf, lead, *, fmt, causal, scale, sc, exp, sfu, with_lse, backend, round_output):
    """evaluate_attention for walk='flash2' (one batch entry at a time, like the online walk)."""
    recip = _recip_fn(plan, sfu)

    def lse_fn(m, l):  # a split's (or the kernel's) log-sum-exp: _lse (auto: fma(m, scale, __logf(l)))
        return _lse(plan, m, l, scale, sfu)

    outs, lses = [], []
    for b in range(qf.shape[0]):
        stats: dict = {}
        with np.errstate(all="ignore"):
            O = R.replay_flash2(qf[b], kf[b], vf[b], fmt=fmt, block_n=plan.block_n, tile=plan.tile, causal=causal,
                                scale_log2=sc, ex2=exp, recip=recip, lane_fma=plan.lane_fma, dot_plan=plan.dot,
                                stats=stats, backend=backend, splits=plan.splits, lse_fn=lse_fn,
                                exp_fma=plan.exp_fma, logf=R.cuda_logf if plan._combine_log() == "cuda" else None,
                                expf=_combine_expf(plan, sfu))
        outs.append(R.round_to_input(O, fmt) if round_output else O)
        if with_lse and "lse" in stats:
            lses.append(stats["lse"])
        elif with_lse:
            m, l = stats["m"], stats["l"]
            with np.errstate(all="ignore"):
                ok = (l != 0) & ~np.isnan(l)
                lse = lse_fn(np.where(np.isfinite(m), m, F32(0)), np.where(ok, l, F32(1)).astype(F32))
                lses.append(np.where(ok, lse, F32(np.inf)).astype(F32))
    O = np.stack(outs).reshape(lead + qf.shape[1:])
    if not with_lse:
        return O
    return O, np.stack(lses).reshape(lead + qf.shape[1:3])


def flash2_candidates(fmt: str, *, sfu: bool, tensor_core: bool = True, blocks=(128, 64, 32), tiles=(128, 64),
                      splits=(1,), exps=None, recips=None) -> list[AttentionPlan]:
    """The flash-attention-2 orders a search tries: BLOCK_N in ``blocks`` and tiles (kBlockM) in
    ``tiles`` (the kernel traits of head dims 32..256: 64/128 x 32/64/128/256), split-KV parts in
    ``splits`` (the split kernel + its combine kernel when > 1), SFU or numpy exp2, each recip,
    lane FMA or not, the exp argument unfused (PyTorch's build) or one FFMA (upstream's); the dot: the
    mma.sync chain (tensor core) or fp32 Sequential with fma."""
    dots = [None] if (tensor_core and fmt in ("bf16", "fp16")) else [P.Sequential("fp32", fma=True)]
    exps = exps or (("sfu", "numpy") if sfu else ("numpy",))
    recips = recips or (("sfu", "ieee", "div") if sfu else ("ieee", "div"))
    out = []
    for dot in dots:
        for exp in exps:
            for recip in recips:
                for lane_fma in (True, False):
                    for exp_fma in (False, True):
                        for sp in splits:
                            for bn in blocks:
                                for tile in tiles:
                                    out.append(AttentionPlan(block_n=bn, tile=tile, domain="log2", exp=exp, dot=dot,
                                                             walk="flash2", recip=recip, lane_fma=lane_fma,
                                                             splits=sp, exp_fma=exp_fma))
    return out


def candidates(fmt: str, S: int, *, causal: bool, tensor_core: bool) -> list[AttentionPlan]:
    """Attention orders a replay search tries for an op of sequence length S: BLOCK_N (powers of
    two up to the first >= S: longer blocks are the same order), both domains with the numpy
    exponential and the exact one, row sums (Pairwise, numpy's, Sequential, the quad order), the
    dot (tensor core where the inputs are bf16/fp16 and the trace ran on a GPU, else fp32
    Sequential with and without fma)."""
    blocks, b = [], 4
    while True:
        blocks.append(b)
        if b >= S:
            break
        b *= 2
    if tensor_core and fmt in ("bf16", "fp16"):
        dots = [None]
    else:
        dots = [P.Sequential("fp32", fma=True), P.Sequential("fp32")]
    rowsums = [P.Pairwise(), P.numpy_sum_plan(), P.Sequential()] + [None]
    out = []
    for dot in dots:
        for domain, exp in (("natural", "exact"), ("log2", "numpy"), ("natural", "numpy")):
            for rs in rowsums:
                for bn in blocks:
                    if rs is None and bn % 8:
                        continue
                    # one tile: the causal loop end is bit-neutral (a fully masked block adds
                    # p = 0 with alpha = 1), so tiles are not searched
                    out.append(AttentionPlan(block_n=bn, tile=max(bn, 128), domain=domain, exp=exp, rowsum=rs, dot=dot))
    return out
