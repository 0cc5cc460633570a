"""The accumulation orders of PyTorch's fused SDPA backends on this GPU, found by replay (issue 15
item 2): one GPU job that runs the flash, cuDNN and memory-efficient backends on seeded inputs of
real model shapes and searches the attention orders of :mod:`hspi_kernels.numerics.attention_plan`
for the one that reproduces each backend bit for bit::

    python -m hspi_kernels.trace.sdpa_orders OUT_DIR [--budget-s 240]

Per case (shape of a zoo model's attention at batch 1 -- qwen2.5-0.5b 14/2 heads, gpt2-small 12/12,
llama-3.2-1b 32/8, 16 tokens -- and longer sequences that span several key blocks: 300 keys
non-causal, 384 causal, head dim 128; and two integer-score cases, q / k in {-1, 0, 1}, whose
scores are exact in any order, so that they pin the softmax apart from the dot) and backend, the private ATen op is called directly
(``_scaled_dot_product_{flash,cudnn,efficient}_attention``) so that its log-sum-exp output is
compared too; the CUDA kernels it launched are recorded (torch.profiler). Grouped-query inputs go
in unexpanded where the backend takes them, else with k / v expanded (recorded per call).

Search, in two stages (the SFU instructions come from this GPU: ``kernels.cuda.sfu.LiveSfu``):

1. the fitted orders (:func:`fitted_plans`) first, then every candidate
   (:func:`attention_plan.flash2_candidates` and the online-walk family with the mma.sync or wgmma
   dot, each reciprocal) on the short cases, screened on the output bits of the first head and
   then checked on all outputs; each output-exact plan (the first 8) is then tried with every
   log-sum-exp formula (:func:`attention_plan.lse_variants`); per (case, backend) the plans that
   give N/N on the output, those that also give the log-sum-exp N/N with some formula, and the
   best partial / closest all-heads matches when none does;
2. on the long cases (where BLOCK_N, the tile, the block direction, the lane rescale and the
   split-KV kernel become visible): the plans that passed every short case of a backend, with
   each BLOCK_N / tile, and the flash-2 split-KV family (``flash_fwd_splitkv_kernel`` + its
   combine kernel: the kernels PyTorch launches for these lengths on the H200).

Writes ``OUT_DIR/sdpa_orders.json`` (platform metadata, cases, kernel names, per (case, backend)
the matching plans with N/N, partial matches, seconds), ``OUT_DIR/sdpa_orders.md`` (the table) and
``OUT_DIR/sdpa_orders_cases.npz`` (the short cases' q / k / v, every backend's output and
log-sum-exp bits, and the SFU outputs the found plans used on the short cases: the CPU test data
of ``tests/test_sdpa_orders.py``) and ``OUT_DIR/sdpa_orders_sfu_long.npz`` (the SFU outputs the
found, else the closest, plan of each long case used). Needs a GPU; prints the table last. The
search stages alone run anywhere (:func:`fit`, given the capture and an SFU source).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from hspi_kernels import platform as plat
from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics import rounding
from hspi_kernels.platform.files import atomic_write_bytes, atomic_write_text

__all__ = ["CASES", "BACKENDS", "online_candidates", "fitted_plans", "variants", "search", "main"]

F32 = np.float32
# name: (Hq, Hkv, S, D, causal, fmt, q amplitude)
CASES: dict[str, tuple] = {
    "qwen2.5-0.5b": (14, 2, 16, 64, True, "bf16", 2.0),
    "gpt2-small": (12, 12, 16, 64, True, "bf16", 2.0),
    "llama-3.2-1b": (32, 8, 16, 64, True, "bf16", 2.0),
    "gpt2-small.fp16": (12, 12, 16, 64, True, "fp16", 2.0),
    "long.causal384": (4, 4, 384, 64, True, "bf16", 1.0),
    "long.full300": (4, 4, 300, 64, False, "bf16", 1.0),
    "long.d128": (4, 4, 200, 128, True, "bf16", 1.0),
    # q / k in {-1, 0, 1}: every score is an integer, exact in any summation order and any tensor-core
    # alignment, so these cases pin the softmax (ex2 arguments, row sum, lse formula) apart from the dot
    "int.short": (8, 8, 16, 64, True, "bf16", 0.0),
    "int.long": (4, 4, 300, 64, False, "bf16", 0.0),
}
INTEGER_SCORES = {c for c, v in CASES.items() if v[6] == 0.0}
SHORT = [c for c, v in CASES.items() if v[2] <= 16]
BACKENDS = ("flash", "cudnn", "efficient")


def online_candidates(fmt: str, S: int, causal: bool, sfu: bool) -> list[AP.AttentionPlan]:
    """The online walk (the project's kernel order, :func:`attention_ref.replay`) with the dots the
    sm_80 / sm_90 kernels use (mma.sync, wgmma), log2 and natural domains, each reciprocal."""
    out = []
    exps = ("sfu", "numpy") if sfu else ("numpy",)
    recips = ("div", "ieee", "sfu") if sfu else ("div", "ieee")
    for path in ("mma.sync", "wgmma"):
        dot = P.tensor_core_gemm(fmt, "fp32", path=path, arch="sm_90")
        for base in AP.candidates(fmt, S, causal=causal, tensor_core=True):
            if (base.domain == "natural" and base.exp == "exact") or base.block_n % 16:
                continue  # the exact exp is the project's own; tensor-core P.V steps are k = 16
            for exp in exps:
                for recip in recips:
                    out.append(AP.AttentionPlan(block_n=base.block_n, tile=base.tile, domain=base.domain, exp=exp,
                                                rowsum=base.rowsum, dot=dot, recip=recip))
    return list(dict.fromkeys(out))


def fitted_plans(backend: str, fmt: str, D: int, *, split_kv: bool) -> list[AP.AttentionPlan]:
    """The orders fitted to the H200 capture per backend (docs/results/h200/sdpa_orders.md), from
    what the recorded kernel names say (tile shapes, wgmma / sm80 code) and what the CPU fit of the
    capture then singled out; tried first by :func:`main`'s stage 2:

    - flash: the flash-2 walk, BLOCK_N 128 at one block, the final ``1.f / sum`` correctly rounded
      (``recip="ieee"``, what the split-KV long captures single out for the same epilogue and build;
      the 16-token captures pass with ``"sfu"`` as well, kept second: H100 run 7 missed 1 of 32768
      outputs of llama's layer-6 flash op with ``"sfu"``); with ``split_kv`` the split-KV kernel of
      traits 64 x 256 (D 64) / 64 x 128 (D 128) and 2 splits; the exp argument unfused
      (``exp_fma=False``: PyTorch builds its flash-attention copy with ``UNFUSE_FMA``, so
      ``p = ex2(rn(rn(S·c) - rn(m·c)))``; H200 run 4: output and fp32 lse N/N on every 16-token case,
      the FFMA form 79-92 % of the lse rows);
    - cudnn (``sdpa_sm90_flash_fprop_wgmma``, 64 x 128 tiles): the online walk, log2 domain,
      128 keys per block, 64-row tiles, the wgmma chain, the row sum in four lane partials combined
      at the end (``rowsum=None``; run 4: lse N/N at 16 tokens, a sequential row sum 87-89 %), the lse
      ``fma(m, ln 2, rn(lg2.approx(l) · ln 2))``; the sequential row sum kept as a fallback;
    - efficient (``fmha_cutlassF_*_64x64 / 64x128_rf_sm80``, PyTorch's CUTLASS memory-efficient
      kernel): the online walk, log2 domain, 64 (D 64) / 128 (D 128) keys per block, 64-row tiles,
      lane partials (``rowsum=None``), the lse ``rn(div_rn(m, fp32(log2 e)) + logf(l))`` with CUDA's
      accurate ``logf`` (``lse="div_log2e", log="cuda"``: the kernel's ``mi / kLog2e +
      cutlass::fast_log(s_prime)``, ``fast_log`` = ``::logf`` = libdevice ``__nv_logf``). First with
      the dot of the kernel's ``InstructionShape<16, 8, 8>`` (``DefaultGemmType`` of 16-bit inputs,
      sm75+): a chain of ``mma.sync`` m16n8k8 blocks, 8 products per block, F = 25, the Hopper rules
      -- written as the sm_90 tf32 preset (``TensorCore("sm_90", "tf32")``, G = 8, F = 25), which is
      that block for bf16 operands (tf32 holds every bf16 value; fp16: the same except for
      subnormal operands, aligned at their actual exponent here); on the H200 capture it gives the
      lse and output N/N on every 16-token row whose ex2 inputs the GPU recorded (748/748; the k = 16
      chain 728) and the one-key rows' lse of all 70 heads from the scores alone (k = 16: 56;
      tests/test_sdpa_efficient_lse.py). Then the k = 16 chain with that lse (run 4's SFU outputs:
      int.short 128/128, qwen 206/224, gpt2 177/192, llama 473/512, gpt2 fp16 92/192); then the
      earlier orders (the lse formula left to the search; sequential and pairwise row sums). The
      long captures (tests/test_sdpa_long_cases.py) added two fields to the first six: the score
      rounded twice, ``rn(rn(S·scale)·fp32(log2 e))`` (``scale_twice``: the kernel's ``p.scale``, then
      ``kLog2e``; row 0 of long.d128 on all 4 heads, 1 of 4 rounded once; the same bits at D = 64),
      and the block's row sum as one quad-order partial per 32-key warp column added to
      ``rn(l·alpha)`` one after the other (``rowsum_chunk=32``, the kernel's ``s_prime +=
      addition_storage[...]``; the same bits at 16 tokens): int.long (integer scores) output and lse
      N/N on all 4 heads with ``recip="ieee"`` (the epilogue's ``1 / s_prime``; index 1 -- index 0 keeps
      ``recip="div"``, 1 output bit short there -- the whole-block row sum 1045/1200 lse rows).

    Split-KV flash (``split_kv``): first the orders the long captures single out -- the combine
    kernel with CUDA's accurate ``logf`` (``combine_log="cuda"``; PyTorch builds it without fast
    math: the split kernels' lse keeps its explicit ``__logf``), ``recip="ieee"`` (``1.f / sum``
    correctly rounded), and the combine's ``expf`` as CUDA's ``__nv_expf`` (``combine_exp="cuda"``,
    from the source; it asks the SFU for ex2 of arguments in [0, 1), which no recorded table holds,
    so it replays only with a live SFU) or numpy's exp standing in (``"libm"``): every row with one
    non-empty split N/N (output and lse) on the four long captures, every remaining output miss a
    row of two splits that a combine weight within 2 ulp (expf's bound) reproduces."""
    rs_all = (None, P.Sequential(), P.Pairwise())
    if backend == "flash":
        if not split_kv:  # the epilogue's 1.f / sum: IEEE as the split kernels' (same build), rcp.approx kept second
            return [AP.AttentionPlan(block_n=128, tile=128, domain="log2", exp="sfu", walk="flash2", recip=r,
                                     exp_fma=False) for r in ("ieee", "sfu")]
        bn = 256 if D <= 64 else 128
        found = [AP.AttentionPlan(block_n=bn, tile=64, domain="log2", exp="sfu", walk="flash2", recip="ieee", splits=2,
                                  exp_fma=False, combine_log="cuda", combine_exp=ce) for ce in ("cuda", "libm")]
        return found + [AP.AttentionPlan(block_n=bn, tile=64, domain="log2", exp="sfu", walk="flash2", recip=r,
                                         splits=sp, exp_fma=False) for sp in (2, 1) for r in ("sfu", "ieee")]
    if backend == "cudnn":
        dot = P.tensor_core_gemm(fmt, "fp32", path="wgmma", arch="sm_90")
        return [AP.AttentionPlan(block_n=128, tile=64, domain="log2", exp="sfu", rowsum=rs, dot=dot, recip=r,
                                 lse="fma_ln2", log="sfu") for rs in (None, P.Sequential()) for r in ("div", "ieee", "sfu")]
    dot = P.tensor_core_gemm(fmt, "fp32", path="mma.sync", arch="sm_90")
    k8 = P.Chain(block=P.TensorCore("sm_90", "tf32", "fp32", path="mma.sync"), k=8)  # m16n8k8 (docstring)
    bn = 64 if D <= 64 else 128
    return [AP.AttentionPlan(block_n=bn, tile=64, domain="log2", exp="sfu", dot=d, recip=r, lse="div_log2e", log="cuda",
                             rowsum_chunk=32, scale_twice=True)
            for d in (k8, dot) for r in ("ieee", "div", "sfu")] + [  # rn(acc * rn(1/l)) first (int.long)
        AP.AttentionPlan(block_n=bn, tile=64, domain="log2", exp="sfu", rowsum=rs, dot=dot, recip=r)
        for rs in rs_all for r in ("div", "ieee", "sfu")]


def variants(plans) -> list[AP.AttentionPlan]:
    """Each plan with every BLOCK_N in {16, 32, 64, 128} and tile in {64, 128} (what one key
    block cannot show), valid ones only, in a stable order without repeats."""
    import dataclasses

    out = []
    for p in plans:
        for bn in (128, 64, 32, 16):
            for tile in (128, 64):
                try:
                    out.append(dataclasses.replace(p, block_n=bn, tile=tile))
                except ValueError:
                    continue
    return list(dict.fromkeys(out))


def _bits(x: np.ndarray, fmt: str) -> np.ndarray:
    """Bit patterns of float32 values rounded (RNE) to ``fmt`` (the project's one rounding)."""
    return rounding.round_to_format(np.asarray(x, dtype=F32), fmt, "RNE")


def search(plans, q, k, v, out_bits, lse, *, fmt: str, causal: bool, sfu, screen_heads: int = 1,
           max_full: int = 48, lse_plans: int = 8) -> dict:
    """Every plan on the first ``screen_heads`` query heads (output bits only: a bf16 output and an
    fp32 log-sum-exp are separate questions), then the passers on all heads (at most ``max_full``
    of them, the rest counted as ``screen_passed_not_checked``); for the first ``lse_plans`` plans
    exact on the output, each log-sum-exp formula of :func:`attention_plan.lse_variants` against ``lse`` (when given).
    Returns {"exact": [{plan, out N/N, lse N/N of the plan's own formula}], "lse_forms": per exact
    plan the formulas that give the lse N/N, "exact_out_and_lse": how many plans (with a formula)
    give both, "best": the best partial (screen) matches, "best_full": the best plans that passed the
    screen but not all heads (out N/N counts)}."""
    exact, near, partial, checked, unchecked = [], [], [], [], 0
    hs = slice(0, screen_heads)
    n_screen = int(out_bits[hs].size)
    for plan in plans:
        try:  # query heads 0..screen_heads-1 read the first ceil(screen_heads / group) k / v heads
            kv = slice(0, -(-screen_heads * k.shape[0] // q.shape[0]))
            o1 = AP.evaluate_attention(plan, q[hs], k[kv], v[kv], fmt=fmt, causal=causal, sfu=sfu)
        except ValueError as exc:
            partial.append({"plan": repr(plan), "error": str(exc)[:120]})
            continue
        eq = int(np.count_nonzero(_bits(o1, fmt) == out_bits[hs]))
        partial.append({"plan": repr(plan), "screen_equal": eq, "screen_total": n_screen})
        if eq != n_screen:
            continue
        if len(checked) >= max_full:
            unchecked += 1
            continue
        checked.append(plan)
        o, l = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, sfu=sfu, with_lse=True)
        n_out = int(np.count_nonzero(_bits(o, fmt) == out_bits))
        rec = {"plan": repr(plan), "plan_json": plan.to_json(), "out_equal": n_out, "out_total": int(out_bits.size)}
        if lse is not None:
            rec.update(_lse_counts(l, lse))
        if lse is not None and n_out == out_bits.size and len(exact) < lse_plans:
            forms = []
            for pv in AP.lse_variants(plan)[1:]:
                if plan.splits > 1:  # the combine kernel reads the split lse: the output may move too
                    ov, lv = AP.evaluate_attention(pv, q, k, v, fmt=fmt, causal=causal, sfu=sfu, with_lse=True)
                    if int(np.count_nonzero(_bits(ov, fmt) == out_bits)) != out_bits.size:
                        continue
                else:
                    lv = AP.evaluate_attention(pv, q, k, v, fmt=fmt, causal=causal, sfu=sfu, with_lse=True)[1]
                c = _lse_counts(lv, lse)
                forms.append({"lse": pv.lse, "log": pv.log, "formula": pv.describe_lse(), **c})
            rec["lse_forms"] = sorted(forms, key=lambda f: -f["lse_equal"])
        if n_out == out_bits.size:
            exact.append(rec)
        else:
            near.append({k2: rec[k2] for k2 in rec if k2 != "lse_forms"})
    best = sorted((p for p in partial if "screen_equal" in p), key=lambda p: -p["screen_equal"])[:5]
    both = [e for e in exact if lse is not None and (e["lse_equal"] == e["lse_total"]
                                                     or any(f["lse_equal"] == f["lse_total"] for f in e.get("lse_forms", [])))]
    near = sorted(near, key=lambda e: -e["out_equal"])[:5]
    return {"candidates": len(plans), "exact": exact, "exact_out_and_lse": len(both), "checked_full": len(checked),
            "screen_passed_not_checked": unchecked, "best": best, "best_full": near}


def winners(res: dict) -> list[AP.AttentionPlan]:
    """The plans of one ``search`` result that give the output and the log-sum-exp N/N (each with
    the lse formula that does), in search order; the output-exact plans when none does."""
    both, out_only = [], []
    for e in res["exact"]:
        plan = AP.attention_plan_from_json(e["plan_json"])
        out_only.append(plan)
        if "lse_equal" in e and e["lse_equal"] == e["lse_total"]:
            both.append(plan)
        both += [dataclasses.replace(plan, lse=f["lse"], log=f["log"]) for f in e.get("lse_forms", [])
                 if f["lse_equal"] == f["lse_total"]]
    return list(dict.fromkeys(both or out_only))


def best_lse(entry: dict) -> dict | None:
    """The best (plan's own or variant) log-sum-exp match of one ``search`` exact entry."""
    cands = ([{"lse": "own", "formula": "the plan's", "lse_equal": entry["lse_equal"], "lse_total": entry["lse_total"]}]
             if "lse_equal" in entry else []) + list(entry.get("lse_forms", []))
    return max(cands, key=lambda f: f["lse_equal"]) if cands else None


def _lse_counts(got, want) -> dict:
    got = np.asarray(got, dtype=F32)
    want = np.asarray(want, dtype=F32)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return {"lse_equal": int(np.count_nonzero(got.view(np.uint32) == want.view(np.uint32))), "lse_total": int(want.size),
            "lse_max_abs_diff": float(np.nanmax(diff)) if np.isfinite(diff).any() else None}


def _run_backend(torch, name: str, q, k, v, causal: bool):
    """(out, lse or None, how) of one private SDPA op; k / v expanded when GQA is refused."""
    A = torch.ops.aten
    Hq, Hkv = q.shape[1], k.shape[1]

    def call(kk, vv):
        if name == "flash":
            r = A._scaled_dot_product_flash_attention(q, kk, vv, 0.0, causal, False)
        elif name == "cudnn":
            r = A._scaled_dot_product_cudnn_attention(q, kk, vv, None, True, 0.0, causal, False)
        else:
            r = A._scaled_dot_product_efficient_attention(q, kk, vv, None, True, 0.0, causal)
        return r[0], r[1]

    if Hq != Hkv:
        try:
            o, lse = call(k, v)
            return o, lse, "gqa unexpanded"
        except RuntimeError:
            pass
        k, v = (x.repeat_interleave(Hq // Hkv, dim=1) for x in (k, v))
        o, lse = call(k, v)
        return o, lse, "k/v expanded (repeat_interleave)"
    o, lse = call(k, v)
    return o, lse, "equal heads"


def _kernels(torch, fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})


def _lse_cell(exact: list) -> str:
    best = max((b for b in map(best_lse, exact) if b), key=lambda b: b["lse_equal"], default=None)
    return f"{best['lse_equal']}/{best['lse_total']} `{best['formula']}`" if best else "-"


def render(record: dict) -> str:
    lines = ["| case | backend | kernel | plans N/N (out) | with the lse N/N | best lse (formula) | best partial (screen, out) |",
             "|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        ex = r.get("search", {}).get("exact", [])
        best = (r.get("search", {}).get("best") or [{}])[0]
        kern = (r.get("kernels") or ["-"])[0][:60]
        if "error" in r:
            lines.append(f"| {r['case']} | {r['backend']} | - | error: {r['error'][:80]} | - | - | - |")
            continue
        lines.append(f"| {r['case']} | {r['backend']} | {kern} | "
                     + (f"{len(ex)} plan(s), e.g. `{ex[0]['plan']}` {ex[0]['out_equal']}/{ex[0]['out_total']}" if ex else
                        "0" + "".join(f" (closest on all heads: {c['out_equal']}/{c['out_total']} `{c['plan']}`)"
                                      for c in r.get("search", {}).get("best_full", [])[:1]))
                     + f" | {r.get('search', {}).get('exact_out_and_lse', '-')}"
                     + " | " + _lse_cell(ex)
                     + " | " + (f"{best.get('screen_equal')}/{best.get('screen_total')} `{best.get('plan')}`" if best else "-")
                     + " |")
    return "\n".join(lines) + "\n"


def fit(record: dict, data: dict, sfu, *, budget_s: float, start: float, save) -> dict:
    """The search stages of :func:`main` on a capture (module docstring): ``record`` (its "results"
    rows are updated in place: ``search``, ``found``; "skipped", "passed_short"), ``data`` {(case,
    backend): {q, k, v, out, lse}} of float32 inputs / output bits / fp32 lse, ``sfu`` the SFU
    instructions (``LiveSfu`` on the GPU; a stand-in on the CPU), ``save`` called after each search.
    Returns the SFU outputs the found plans use, ``{"short": SfuOutputs, "long": SfuOutputs}``;
    no GPU needed (the CPU tests run it on the recorded capture)."""
    # stage 1: short cases, every candidate; stage 2: long cases, the survivors
    # passed[backend]: the plans (plan JSON -> plan, in search order) that won every short case where
    # some plan gave the output N/N (a case no plan reproduces, e.g. fp16, does not empty the set)
    passed: dict[str, dict | None] = {be: None for be in BACKENDS}
    for stage in (1, 2):
        for r in record["results"]:
            if "error" in r or (r["case"] in SHORT) != (stage == 1):
                continue
            if time.perf_counter() - start > budget_s:
                record["skipped"].append({"case": r["case"], "backend": r["backend"], "why": "budget"})
                continue
            d = data[(r["case"], r["backend"])]
            Hq, Hkv, S, D, causal, fmt, amp = CASES[r["case"]]
            if stage == 1:  # the fitted orders first (their lse formulas are tried), then every candidate
                plans = fitted_plans(r["backend"], fmt, D, split_kv=False)
                plans += AP.flash2_candidates(fmt, sfu=True) + online_candidates(fmt, S, causal, sfu=True)
            else:
                # the survivors at every BLOCK_N / tile, and the fitted split orders with the lse
                # formulas the survivors use (every formula when nothing survived)
                surv = list((passed[r["backend"]] or {}).values())
                forms = list(dict.fromkeys((p.lse, p.log) for p in surv))
                plans = variants(surv)[:64]
                for p in fitted_plans(r["backend"], fmt, D, split_kv=True):
                    plans += [pv for pv in AP.lse_variants(p) if not forms or pv == p or (pv.lse, pv.log) in forms]
                # and the flash-2 family with split-KV (the kernel PyTorch launches at these lengths:
                # flash_fwd_splitkv_kernel + combine, traits 64 x 256 / 64 x 128)
                plans += AP.flash2_candidates(fmt, sfu=True, blocks=(256, 128, 64), tiles=(64, 128), splits=(2, 1, 4),
                                              exps=("sfu",), recips=("ieee", "sfu"))
            plans = list(dict.fromkeys(plans))
            t0 = time.perf_counter()
            try:
                res = search(plans, d["q"], d["k"], d["v"], d["out"], d["lse"], fmt=fmt, causal=causal, sfu=sfu)
            except Exception as exc:
                r["search_error"] = f"{type(exc).__name__}: {exc}"
                r["traceback"] = traceback.format_exc()[-1500:]
                continue
            res["seconds"] = round(time.perf_counter() - t0, 1)
            r["search"] = res
            won = winners(res)
            if won:
                r["found"] = won[0].to_json()
            elif res["best_full"]:  # no exact plan: the closest one, so its SFU outputs are kept too
                r["closest"] = res["best_full"][0]["plan_json"]
            if stage == 1 and won:
                ok = {json.dumps(p.to_json(), sort_keys=True): p for p in won}
                prev = passed[r["backend"]]
                passed[r["backend"]] = ok if prev is None else {k2: p for k2, p in prev.items() if k2 in ok}
            save()
            print(f"{r['case']:>18} {r['backend']:>9}: {len(res['exact'])} exact of {res['candidates']}, "
                  f"{res['exact_out_and_lse']} with the lse ({res['seconds']} s)", flush=True)
    record["passed_short"] = {be: list(v) if v else [] for be, v in passed.items()}

    # the SFU outputs the found (else the closest) plan of each (case, backend) uses: short cases into the cases npz
    # (CPU test data), long cases into sdpa_orders_sfu_long.npz
    recs = {"short": R.SfuOutputs(record=sfu), "long": R.SfuOutputs(record=sfu)}
    for r in record["results"]:
        if "found" not in r and "closest" not in r:
            continue
        d = data[(r["case"], r["backend"])]
        Hq, Hkv, S, D, causal, fmt, amp = CASES[r["case"]]
        AP.evaluate_attention(AP.attention_plan_from_json(r.get("found") or r["closest"]), d["q"], d["k"], d["v"], fmt=fmt,
                              causal=causal, sfu=recs["short" if r["case"] in SHORT else "long"], with_lse=True)
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown or not args.cases:
        print(f"sdpa_orders: unknown case(s) {unknown}: expected some of {list(CASES)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        print("sdpa_orders: needs a CUDA GPU (the fused SDPA backends); nothing was run", file=sys.stderr)
        return 2
    from hspi_kernels.kernels.cuda.sfu import LiveSfu

    live = LiveSfu()
    meta = plat.collect()
    record: dict[str, Any] = {"platform": meta, "label": plat.platform_label(meta), "args": vars(args) | {"out_dir": str(out)},
                              "cases": {c: dict(zip(("Hq", "Hkv", "S", "D", "causal", "fmt", "q_amplitude"), CASES[c]))
                                        for c in args.cases.split(",")},
                              "results": [], "skipped": [], "backends_equal": {}}
    arrays: dict[str, np.ndarray] = {}
    data: dict[tuple, dict] = {}

    def save():
        record["total_s"] = round(time.perf_counter() - start, 1)
        atomic_write_text(out / "sdpa_orders.json", json.dumps(record, indent=1, default=str))
        atomic_write_text(out / "sdpa_orders.md", "# Fused SDPA orders on this GPU\n\n" + render(record))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(out / "sdpa_orders_cases.npz", buf.getvalue())

    # capture
    for case in args.cases.split(","):
        Hq, Hkv, S, D, causal, fmt, amp = CASES[case]
        dt = torch.bfloat16 if fmt == "bf16" else torch.float16
        g = torch.Generator(device="cuda").manual_seed(1000 + list(CASES).index(case))  # per case, whatever --cases lists
        if case in INTEGER_SCORES:
            q = torch.randint(-1, 2, (1, Hq, S, D), generator=g, device="cuda").to(dt)
            k = torch.randint(-1, 2, (1, Hkv, S, D), generator=g, device="cuda").to(dt)
        else:
            q = (torch.randn(1, Hq, S, D, generator=g, device="cuda") * amp).to(dt)
            k = torch.randn(1, Hkv, S, D, generator=g, device="cuda").to(dt)
        v = torch.randn(1, Hkv, S, D, generator=g, device="cuda").to(dt)
        qn, kn, vn = (x[0].float().cpu().numpy() for x in (q, k, v))
        arrays.update({f"{case}/q": _bits(qn, fmt), f"{case}/k": _bits(kn, fmt), f"{case}/v": _bits(vn, fmt)})
        outs = {}
        for be in BACKENDS:
            r: dict[str, Any] = {"case": case, "backend": be}
            try:
                o, lse, how = _run_backend(torch, be, q, k, v, causal)
                kern = _kernels(torch, lambda: _run_backend(torch, be, q, k, v, causal))
                ob = _bits(o[0].float().cpu().numpy(), fmt)
                ln = lse[0].float().cpu().numpy().astype(F32) if lse is not None and lse.numel() else None
                if ln is not None and ln.ndim == 3 and ln.shape[-1] == 1:  # [H, S, 1] (cuDNN)
                    ln = ln[..., 0]
                if ln is not None and ln.ndim == 2 and ln.shape[0] == ob.shape[0] and ln.shape[1] >= ob.shape[1]:
                    ln = np.ascontiguousarray(ln[:, :ob.shape[1]])  # the efficient kernel pads S to 32
                elif ln is not None and ln.shape != ob.shape[:-1]:
                    r["lse_shape"] = list(ln.shape)
                    ln = None
                outs[be] = ob
                data[(case, be)] = {"q": qn, "k": kn, "v": vn, "out": ob, "lse": ln}
                arrays[f"{case}/{be}/out"] = ob
                if ln is not None:
                    arrays[f"{case}/{be}/lse"] = ln.view(np.uint32)
                r.update(how=how, kernels=kern, lse_recorded=ln is not None)
            except Exception as exc:  # a backend that refuses the shape is recorded, the job goes on
                r["error"] = f"{type(exc).__name__}: {exc}"[:300]
            record["results"].append(r)
        names = list(outs)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                record["backends_equal"][f"{case}: {a} vs {b}"] = f"{int((outs[a] == outs[b]).sum())}/{outs[a].size}"
    record["capture_s"] = round(time.perf_counter() - start, 1)
    save()

    recs = fit(record, data, live, budget_s=args.budget_s, start=start, save=save)
    arrays.update({f"sfu/{k}": v for k, v in recs["short"].to_arrays().items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **recs["long"].to_arrays())
    atomic_write_bytes(out / "sdpa_orders_sfu_long.npz", buf.getvalue())
    save()
    print(render(record))
    print(json.dumps(record["backends_equal"], indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
