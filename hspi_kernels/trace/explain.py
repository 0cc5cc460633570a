"""Explain a traced divergence: replay an origin op's exact inputs under candidate accumulation
plans and report which plan reproduces each platform's output bits, bit for bit.

For an origin op (inputs equal in both traces, outputs differ; see :func:`trace.diff`) the inputs
are the same arrays on both sides, so every candidate is evaluated once and compared with both
platforms' stored outputs. Candidates, in the order they are reported:

- GEMMs (mm / addmm / bmm): plans the order revealer produced for that library and shape
  (``revealed``: JSON files holding ``plan_json`` or ``plan``), then per tensor-core preset
  (the traced GPU's own arch first, then sm_90, sm_80) and operand format: split-K factor 1..16 ×
  layout (contiguous / interleaved, K tiles of G..128) × combine (Sequential / Pairwise) over a
  ``Chain`` of blocks, and K chunking (fresh accumulator every 64..512 terms, summed in fp32);
  then the CUDA-core / CPU family: Sequential with and without fma, Strided lanes, split-K of
  sequential parts. The plan's fp32 result goes through the op's epilogue (addmm: bias as the
  accumulator input, or added after) and is rounded RNE to the output format
  (:func:`numerics.rounding.round_to_format`) before the bits are compared.
- row reductions (sum / mean over the last dim): Sequential, Pairwise, numpy's sum plan,
  Strided lanes with Pairwise / Sequential / WarpButterfly combines; mean = rn(sum / n).
- anything else (SFU transcendentals, softmax, fused attention, ...): no replay model; such ops
  are listed as unexplained with a category, never dropped.

Screening: each candidate is first evaluated on a few random output positions; only those that
match there on either side are evaluated on all kept outputs (at most ``max_outputs`` positions).
A plan *explains* a side when it matches N/N of the evaluated positions.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hspi_kernels.numerics import evaluate, rounding
from hspi_kernels.numerics import plans as P
from hspi_kernels.platform.files import read_json_bounded, size_limit
from hspi_kernels.trace import tracer as T

MAX_REVEALED_BYTES = 64 << 20  # one revealer output (JSON); $HSPI_MAX_RECORD_MB overrides
MAX_REVEALED_ENV = "HSPI_MAX_RECORD_MB"

__all__ = ["gemm_candidates", "reduction_candidates", "load_revealed", "explain_op", "explain", "classify"]


# -- candidates --------------------------------------------------------------------------------
def _simt_candidates(K: int) -> list[P.Plan]:
    out: list[P.Plan] = []
    for fma in (False, True):
        out += [P.Sequential(fma=fma), P.Sequential(fma=fma, init="zero")]
    for parts in range(2, 17):
        for layout in ("contiguous", "interleaved"):
            for fma in (False, True):
                for combine in (P.Sequential(), P.Pairwise()):
                    out.append(P.SplitK(parts, layout, inner=P.Sequential(fma=fma), combine=combine))
    for lanes in (2, 4, 8, 16, 32, 64):
        for fma in (False, True):
            for combine in (P.Sequential(), P.Pairwise()):
                out.append(P.Strided(lanes, inner=P.Sequential(fma=fma), combine=combine))
    out.append(P.numpy_sum_plan())
    return out


def _tc_candidates(K: int, fmt: str, archs: Iterable[str]) -> list[P.Plan]:
    out: list[P.Plan] = []
    seen_models = set()
    for arch in archs:
        try:
            block = P.TensorCore(arch, fmt, "fp32")
        except ValueError:
            continue
        model = block.model()
        sig = (model.G, model.F, model.emax_floor, model.out_rounding)
        if sig in seen_models:
            continue
        seen_models.add(sig)
        G = model.G
        if K % G:
            continue
        chain = P.Chain(block, k=G)
        out.append(chain)
        for parts in range(2, 17):
            for combine in (P.Sequential(), P.Pairwise()):
                # contiguous parts are cut on K-tile boundaries: when K/tile is not a multiple of
                # parts, the tile size decides the part lengths (cuBLAS split-K 3 of K=8192 on
                # H200 cuts on 64-wide tiles: 43/43/42 tiles)
                for tile in sorted({G, 32, 64, 128}):
                    if tile % G == 0:
                        out.append(P.SplitK(parts, "contiguous", inner=chain, combine=combine, tile=tile))
                for tile in sorted({G, 32, 64, 128}):
                    if tile % G == 0:
                        out.append(P.SplitK(parts, "interleaved", inner=chain, combine=combine, tile=tile))
        for chunk in (64, 128, 256, 512):
            if K > chunk and chunk % G == 0:
                out.append(P.SplitK(-(-K // chunk), "contiguous", inner=chain, combine=P.Sequential(), tile=chunk))
    return out


def gemm_candidates(K: int, in_fmt: str | None, archs: Iterable[str] = (), revealed: Iterable[P.Plan] = (),
                    tensor_core: bool = True) -> list[P.Plan]:
    """Candidate plans for a GEMM with reduction length K and operands in ``in_fmt``."""
    out = list(revealed)
    if tensor_core and in_fmt in ("bf16", "fp16"):
        out += _tc_candidates(K, in_fmt, list(archs) + ["sm_90", "sm_80"])
    out += _simt_candidates(K)
    uniq, seen = [], set()
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def reduction_candidates(n: int) -> list[P.Plan]:
    out: list[P.Plan] = [P.Sequential(), P.Sequential(init="zero"), P.numpy_sum_plan(), P.Pairwise()]
    for leaf in (8, 16, 32, 64, 128):
        out.append(P.Pairwise(leaf_size=leaf))
    for lanes in (2, 4, 8, 16, 32, 64, 128, 256):
        for combine in (P.Sequential(), P.Pairwise()):
            out.append(P.Strided(lanes, inner=P.Sequential(), combine=combine))
        if lanes <= 32:
            out.append(P.Strided(lanes, inner=P.Sequential(), combine=P.WarpButterfly(lanes)))
    for size in (32, 64, 128, 256, 512, 1024):
        if n <= size:
            out.append(P.BlockTree(size))
    return out


def load_revealed(paths: Iterable[str | Path]) -> list[P.Plan]:
    """Plans from revealer outputs (RevealResult.to_json or lists of them; ``plan_json`` or a
    ``plan`` repr). A missing, too large (``MAX_REVEALED_BYTES``), truncated or corrupt file is a
    ValueError naming it."""
    plans = []
    for path in paths:
        try:
            data = read_json_bounded(path, size_limit(MAX_REVEALED_BYTES, MAX_REVEALED_ENV), kind="revealer output")
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        items = data if isinstance(data, list) else data.get("results", [data]) if isinstance(data, dict) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("plan_json"):
                plans.append(P.plan_from_json(item["plan_json"]))
            elif isinstance(item.get("plan"), str):
                try:
                    plans.append(eval(item["plan"], {"__builtins__": {}}, {n: getattr(P, n) for n in P.__all__}))
                except Exception:
                    pass
    return plans


# -- operands --------------------------------------------------------------------------------
class MissingInputs(RuntimeError):
    pass


# regenerated, digest-checked parameters (float32 values, read-only), least recently used dropped
# past HSPI_PARAM_CACHE_MIB (default 4096): a whole-model map regenerates each weight once, not per op
_PARAMS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()


def _remember_param(key: tuple, vals: np.ndarray) -> None:
    budget = int(os.environ.get("HSPI_PARAM_CACHE_MIB", "4096")) << 20
    if vals.nbytes > budget:
        return
    _PARAMS[key] = vals
    while sum(v.nbytes for v in _PARAMS.values()) > budget:
        _PARAMS.popitem(last=False)


def _operand(trace: T.Trace, info: dict) -> tuple[np.ndarray, int | None]:
    """(float32 values, stored leading rows or None for the full array) of an op input."""
    import torch

    if "param" in info and trace.meta["policy"].get("params_by_reference"):
        p = info["param"]
        key = (trace.meta["model"]["name"], trace.meta["model"]["seed"], trace.meta["model"]["spec"].get("std"),
               trace.meta["run"]["torch_dtype"], p["name"], tuple(info["shape"]), tuple(p["stride"]), p["offset"],
               info["digest"])
        hit = _PARAMS.get(key)
        if hit is not None:
            _PARAMS.move_to_end(key)
            return hit, None
        w = T.regenerate_param(trace.meta, p["name"])
        view = torch.as_strided(w, info["shape"], p["stride"], p["offset"])
        arr, fmt = T._to_numpy(view)
        if T._digest(arr, fmt) != info["digest"]:
            raise MissingInputs(f"regenerated parameter {p['name']} does not match the traced digest")
        vals = T.array_of(arr, fmt).astype(np.float32)
        vals.setflags(write=False)
        _remember_param(key, vals)
        return vals, None
    got = trace.stored(info["digest"])
    if got is None:
        raise MissingInputs(f"input {info['digest']} ({info['shape']}) was not stored (keep policy: "
                            f"{trace.meta['policy']['keep']}; rerun with --keep-key for this op)")
    arr, meta = got
    return np.asarray(arr).astype(np.float32) if arr.dtype.kind == "f" or meta["fmt"] else arr, meta["rows"]


def _output_bits(trace: T.Trace, info: dict) -> tuple[np.ndarray, str, int | None]:
    if info["digest"] not in trace.meta["arrays"]:
        raise MissingInputs(f"output of this op was not stored in {trace.source}")
    bits = trace.arrays[f"a/{info['digest']}"]
    meta = trace.meta["arrays"][info["digest"]]
    return bits, meta["fmt"], meta["rows"]


def _round_bits(d32: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "fp32":
        return d32.astype(np.float32).view(np.uint32)
    return rounding.round_to_format(d32.astype(np.float32), fmt, "RNE")


def _archs(trace: T.Trace) -> list[str]:
    gpus = trace.meta["platform"].get("torch", {}).get("gpus") or []
    return [f"sm_{g['compute_capability'].replace('.', '')}" for g in gpus[:1]]


# -- GEMM replay ------------------------------------------------------------------------------
def _gemm_problem(ta: T.Trace, tb: T.Trace, oa: dict, ob: dict):
    """(list of (A[M,K], B[K,N], C or None) per batch entry, out bits A, out bits B, fmt, rows)."""
    op = oa["op"]
    ins = oa["inputs"]
    alpha_beta = {}
    if op == "addmm" or op == "baddbmm":
        kw = oa["args"][1] if isinstance(oa["args"], list) and len(oa["args"]) > 1 else {}
        alpha_beta = {k: kw.get(k, 1) for k in ("alpha", "beta")} if isinstance(kw, dict) else {}
        if alpha_beta.get("alpha", 1) != 1 or alpha_beta.get("beta", 1) != 1:
            raise MissingInputs(f"{op} with alpha/beta {alpha_beta} is not modelled")
        (c, _), (a, _), (b, rb) = (_operand(ta, ins[0]), _operand(ta, ins[1]), _operand(ta, ins[2]))
    else:
        (a, _), (b, rb) = _operand(ta, ins[0]), _operand(ta, ins[1])
        c = None
    bits_a, fmt, rows_a = _output_bits(ta, oa["outputs"][0])
    bits_b, fmt_b, rows_b = _output_bits(tb, ob["outputs"][0])
    rows = min(x for x in (a.shape[0], bits_a.shape[0], bits_b.shape[0]) if x is not None)
    if rb is not None and op in ("bmm", "baddbmm"):
        rows = min(rows, b.shape[0])
    return a, b, c, bits_a[:rows], bits_b[:rows], fmt, rows


def _positions(shape: tuple, count: int, seed: int, must: np.ndarray | None = None) -> np.ndarray:
    """Flat output positions to evaluate: all of ``must`` (where the platforms differ: a bf16
    output hides most fp32-level differences, so a random sample could miss every one of them),
    then random others up to ``count``."""
    total = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    if total <= count:
        return np.arange(total)
    must = np.zeros(0, np.int64) if must is None else np.asarray(must, np.int64)[:count]
    rest = rng.choice(total, size=min(total, count), replace=False)
    rest = rest[~np.isin(rest, must)][: max(0, count - must.size)]
    return np.sort(np.concatenate([must, rest]))


def _dot_terms(a, b, c, pos, out_shape, batched: bool):
    """Row operands a_i, column operands b_j (and c) of the output positions ``pos``."""
    idx = np.unravel_index(pos, out_shape)
    if batched:
        e, i, j = idx
        av, bv = a[e, i, :], np.swapaxes(b, 1, 2)[e, j, :]
        cv = None if c is None else np.broadcast_to(c, out_shape)[e, i, j]
    else:
        i, j = idx
        av, bv = a[i, :], b.T[j, :]
        cv = None if c is None else np.broadcast_to(c, out_shape)[i, j]
    return np.ascontiguousarray(av), np.ascontiguousarray(bv), None if cv is None else np.ascontiguousarray(cv, np.float32)


def _eval_plan(plan, av, bv, cv, epilogue: str, fmt: str) -> np.ndarray:
    if cv is not None and epilogue == "bias-as-c":
        d = evaluate.evaluate(plan, (av, bv), c=cv)
    else:
        d = evaluate.evaluate(plan, (av, bv))
        if cv is not None:
            d = (d + cv).astype(np.float32)
    return _round_bits(d, fmt)


def _search(candidates, av, bv, cv, targets: dict[str, np.ndarray], fmt: str, screen: np.ndarray,
            epilogues=("none",), max_exact: int = 3, stage: int = 128) -> dict[str, dict]:
    """Per side, the first ``max_exact`` candidates (in order) matching N/N on every position
    given. Staged: the screen positions, then ``stage`` positions, then all; a candidate that
    misses a position of both sides at a stage is dropped there. Stops once both sides have
    ``max_exact`` plans (``not_ruled_out`` counts the candidates left unexamined then)."""
    found: dict[str, list[dict]] = {s: [] for s in targets}
    best: dict[str, dict] = {}
    n = len(next(iter(targets.values())))
    mid = np.union1d(screen, np.linspace(0, n - 1, min(n, stage)).astype(np.int64))
    examined = 0
    done_at: dict[str, int] = {}  # per side: candidates examined when it reached max_exact
    for plan in candidates:
        for s in targets:
            if len(found[s]) >= max_exact and s not in done_at:
                done_at[s] = examined
        if all(len(f) >= max_exact for f in found.values()):
            break
        examined += 1
        for ep in epilogues:
            alive = {s for s in targets if len(found[s]) < max_exact}
            try:
                for idx in (screen, mid, None):
                    sel = slice(None) if idx is None else idx
                    got = _eval_plan(plan, av[sel], bv[sel], None if cv is None else cv[sel], ep, fmt)
                    hits = {s: int(np.sum(got == targets[s][sel])) for s in alive}
                    total = len(got)
                    for s, h in hits.items():
                        if h < total and (h > best.get(s, {}).get("matches", -1) or idx is None):
                            best[s] = {"plan": repr(plan), "epilogue": ep, "matches": h, "total": total}
                    alive = {s for s, h in hits.items() if h == total}
                    if not alive:
                        break
            except ValueError:
                break  # the plan does not fit this K or these operands
            for s in alive:
                found[s].append({"plan": repr(plan), "plan_json": plan.to_json(), "epilogue": ep,
                                 "matches": n, "total": n})
    for s in targets:
        if len(found[s]) >= max_exact and s not in done_at:
            done_at[s] = examined
    # candidates never examined for that side (the search stops per side at max_exact plans)
    return {s: {"exact": found[s], "best_inexact": best.get(s),
                "not_ruled_out": len(candidates) - done_at.get(s, examined)} for s in targets}


def _plan_family(plan_json: dict) -> dict:
    """(tensor-core arch or None, split-K parts, layout, tile) of a candidate plan."""
    p = P.plan_from_json(plan_json)
    arch = None
    parts, layout, tile = 1, "contiguous", None
    node = p
    if isinstance(node, P.SplitK):
        parts, layout, tile = node.parts, node.layout, node.tile
        node = node.inner
    if isinstance(node, P.Chain):
        arch = node.block.arch
    elif isinstance(node, P.TensorCore):
        arch = node.arch
    return {"arch": arch, "parts": parts, "layout": layout, "tile": tile, "kind": type(p).__name__}


def classify(op: str, kernels_a: list[str], kernels_b: list[str], plan_a: dict | None, plan_b: dict | None) -> str:
    """The cause of an origin op's divergence, from kernel names and the explaining plans."""
    kernel_diff = bool(kernels_a or kernels_b) and sorted(set(kernels_a)) != sorted(set(kernels_b))
    if op in T.GEMM_OPS or op in T.REDUCTION_OPS:
        if plan_a is None or plan_b is None:
            base = "unexplained: no candidate plan reproduces " + ("either side" if plan_a is None and plan_b is None
                                                                   else ("A" if plan_a is None else "B"))
            return ("library kernel selection (kernel names differ); " + base) if kernel_diff else base
        fa, fb = _plan_family(plan_a["plan_json"]), _plan_family(plan_b["plan_json"])
        if fa["arch"] != fb["arch"] and fa["arch"] and fb["arch"]:
            detail = f"tensor-core block arithmetic (G/F): {fa['arch']} vs {fb['arch']}"
        elif (fa["parts"], fa["layout"], fa["tile"]) != (fb["parts"], fb["layout"], fb["tile"]):
            detail = (f"split-K parameter: {fa['parts']} part(s) {fa['layout']} vs {fb['parts']} part(s) {fb['layout']}"
                      if fa["kind"] == fb["kind"] == "SplitK" or {fa['kind'], fb['kind']} & {"SplitK"}
                      else "accumulation order")
        else:
            detail = "accumulation order"
        if kernel_diff:
            return f"library kernel selection (kernel names differ) -> {detail}"
        return detail + (" (same kernel names: a runtime parameter)" if kernels_a else "")
    if op in T.TRANSCENDENTAL_OPS:
        return "SFU / transcendental implementation (no replay model): unexplained"
    if "attention" in op:
        return "attention kernel (fused; no replay model here): unexplained" + (" — kernel names differ" if kernel_diff else "")
    return "elementwise op differs with equal inputs (contraction/fusion?): unexplained" + (
        " — kernel names differ" if kernel_diff else "")


def explain_op(ta: T.Trace, tb: T.Trace, key: str, *, revealed: Iterable[P.Plan] = (), max_outputs: int = 512,
               screen_count: int = 16, seed: int = 0, extra_candidates: Iterable[P.Plan] = ()) -> dict:
    """Replay one op (by key) under the candidates; which plan reproduces A's bits, which B's."""
    oa, ob = ta.by_key()[key], tb.by_key()[key]
    res: dict[str, Any] = {"key": key, "op": oa["op"], "layer": oa["layer"], "kernels_a": oa.get("kernels", []),
                           "kernels_b": ob.get("kernels", []), "shapes": [i["shape"] for i in oa["inputs"]]}
    op = oa["op"]
    try:
        if op in T.GEMM_OPS:
            a, b, c, bits_a, bits_b, fmt, rows = _gemm_problem(ta, tb, oa, ob)
            batched = op in ("bmm", "baddbmm")
            a = a[:rows]
            if batched:
                b = b[:rows]
            out_shape = bits_a.shape
            K = a.shape[-1]
            in_fmt = T._FMT.get(oa["inputs"][-1]["dtype"])
            differ = np.flatnonzero(bits_a.reshape(-1) != bits_b.reshape(-1))
            pos = _positions(out_shape, max_outputs, seed, differ)
            av, bv, cv = _dot_terms(a, b, c, pos, out_shape, batched)
            targets = {"a": bits_a.reshape(-1)[pos], "b": bits_b.reshape(-1)[pos]}
            on_gpu = bool(_archs(ta) or _archs(tb)) and (ta.meta["run"]["device"] != "cpu" or tb.meta["run"]["device"] != "cpu")
            cands = list(extra_candidates) + gemm_candidates(K, in_fmt, _archs(ta) + _archs(tb), revealed, tensor_core=on_gpu)
            # screen on a few positions, half of them where the platforms differ
            in_pos = np.flatnonzero(np.isin(pos, differ))
            screen = _positions((len(pos),), min(screen_count, len(pos)), seed + 1, in_pos[: screen_count // 2])
            eps = ("none",) if c is None else ("bias-as-c", "bias-after")
            found = _search(cands, av, bv, cv, targets, fmt, screen, eps)
            res.update({"evaluated_outputs": int(len(pos)), "differing_outputs": int(differ.size),
                        "differing_evaluated": int(np.isin(pos, differ).sum()), "total_outputs": int(np.prod(oa["outputs"][0]["shape"])),
                        "candidates": len(cands), "a": found["a"], "b": found["b"]})
        elif op in T.REDUCTION_OPS:
            res.update(_explain_reduction(ta, tb, oa, ob, max_outputs, seed))
        else:
            res.update({"a": {"exact": []}, "b": {"exact": []}, "note": "no replay model for this op"})
    except T_MISSING as exc:
        res.update({"a": {"exact": []}, "b": {"exact": []}, "note": str(exc)})
    pa = res["a"]["exact"][0] if res["a"]["exact"] else None
    pb = res["b"]["exact"][0] if res["b"]["exact"] else None
    res["plan_a"] = pa["plan"] if pa else None
    res["plan_b"] = pb["plan"] if pb else None
    res["explained"] = pa is not None and pb is not None
    res["cause"] = classify(op, res["kernels_a"], res["kernels_b"], pa, pb)
    return res


T_MISSING = MissingInputs


def _explain_reduction(ta, tb, oa, ob, max_outputs, seed) -> dict:
    args = oa["args"][0] if isinstance(oa["args"], list) else []
    dims = args[1] if len(args) > 1 else None
    x, _ = _operand(ta, oa["inputs"][0])
    if isinstance(dims, int):
        dims = [dims]
    if not dims or [d % x.ndim for d in dims] != [x.ndim - 1]:
        raise MissingInputs(f"{oa['op']} over dims {dims}: only last-dim reductions are modelled")
    bits_a, fmt, _ = _output_bits(ta, oa["outputs"][0])
    bits_b, _, _ = _output_bits(tb, ob["outputs"][0])
    rows = min(x.shape[0], bits_a.shape[0], bits_b.shape[0])
    n = x.shape[-1]
    xs = x[:rows].reshape(-1, n)
    ta_, tb_ = bits_a[:rows].reshape(-1), bits_b[:rows].reshape(-1)
    pos = _positions((xs.shape[0],), max_outputs, seed, np.flatnonzero(ta_ != tb_))
    xs, ta_, tb_ = xs[pos], ta_[pos], tb_[pos]
    out = {"a": {"exact": []}, "b": {"exact": []}, "evaluated_outputs": int(len(pos))}
    for plan in reduction_candidates(n):
        try:
            s = evaluate.evaluate(plan, xs)
        except ValueError:
            continue
        variants = [("sum", s)] if oa["op"] == "sum" else [("div", (s / np.float32(n)).astype(np.float32)),
                                                           ("mul-recip", (s * (np.float32(1) / np.float32(n))).astype(np.float32))]
        for ep, v in variants:
            got = _round_bits(v, fmt)
            for side, t in (("a", ta_), ("b", tb_)):
                m = int(np.sum(got == t))
                if m == t.size:
                    out[side]["exact"].append({"plan": repr(plan), "plan_json": plan.to_json(), "epilogue": ep,
                                               "matches": m, "total": int(t.size)})
    return out


def explain(ta: T.Trace, tb: T.Trace, d: dict | None = None, *, revealed_paths: Iterable[str | Path] = (),
            max_ops: int = 8, max_outputs: int = 512, keys: Iterable[str] = ()) -> dict:
    """Explain the origins of the divergence between two traces (or the given op keys); with
    the per-op counterfactual map: :func:`counterfactual.explain_with_map`. Traces of different
    models or prompts: ValueError."""
    T.check_pair(ta, tb)
    d = d or T.diff(ta, tb)
    revealed = load_revealed(revealed_paths)
    keys = list(keys) or [r["key"] for r in d["origins"]][:max_ops]
    ops = [explain_op(ta, tb, k, revealed=revealed, max_outputs=max_outputs) for k in keys]
    unexplained = [o["key"] for o in ops if not o["explained"]]
    skipped = [r["key"] for r in d["origins"]][len(keys):] if not list(keys) == [] else []
    out = {"a": d["a"], "b": d["b"], "logits_equal": d["logits_equal"], "first_origin": d["first_origin"]["key"]
           if d["first_origin"] else None, "ops": ops, "unexplained": unexplained,
           "not_examined": [r["key"] for r in d["origins"] if r["key"] not in keys],
           "divergence_via_unmatched": d["divergence_via_unmatched"]}
    if d["divergence_via_unmatched"]:
        out["unexplained"].append("divergence enters through ops present in one trace only: "
                                  + ", ".join((d["divergence_via_unmatched"]["unmatched_a"]
                                               + d["divergence_via_unmatched"]["unmatched_b"])[:8]))
    del skipped
    return out
