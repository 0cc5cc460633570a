"""Coverage of the per-op counterfactual map on real models: which ops of real inference diverge
between two deployments, which of them diverge *on their own*, and how many of those are explained.

One GPU job (``python -m hspi_kernels.trace.coverage OUT_DIR [--models ...] [--budget-s 420]``)
traces seeded zoo models (bf16, batch 1, one prompt) on one GPU under the deployments the GPU
itself can tell apart, keeping every op's inputs and outputs in memory (nothing has to travel:
the traces never leave the machine), and builds :func:`counterfactual.counterfactual` for each pair
there, where both sides' recorded kernels can be re-executed (same GPU, same torch; the CPU side
on the same host):

    b1          SDPA default backend, cuBLAS           b1_fixed     ... the project's fixed-order Triton GEMM
    b1_math     SDPA math backend                      b1_flash     SDPA flash
    b1_cudnn    SDPA cuDNN                             b1_efficient SDPA memory-efficient
    cpu         the same model on this host's CPU (SDPA default, torch CPU GEMMs)
    b8          batch 8 (SDPA default, cuBLAS), compared on its row 0

Pairs (in this order, time-boxed; a pair that would start after the budget is recorded as
skipped; the budget is also checked per op, and a pair it ends is recorded as skipped with the op
it reached): cuBLAS vs fixed, math vs flash, math vs cuDNN, flash vs cuDNN, math vs efficient, CPU vs
GPU, batch 1 vs row 0 of batch 8 (:mod:`.batch`). Eager vs ``torch.compile`` is not a traced pair
(the dispatch-mode tracer does not see inside a compiled graph): the record names it.

Per pair the row counts: ops compared, ops that differ, ops with an own divergence (cross replay:
one side's implementation on the other side's inputs gives other bits than the other side, N/N
over all outputs of the op), explained (a cause other than "undetermined"; split into *by plans*:
both sides reproduced N/N by a plan of the numerics model, and *by kernel replay*: the cause rests
on the re-executed kernels and their names or layouts), unexplained (named with the reason), and
attention regions present on one side only (another SDPA backend: the other backend re-run on the
same q, k, v). Writes ``coverage.json`` (platform metadata, rows, per-pair own divergences),
``coverage.md`` (the table) and ``maps.json.gz`` (every pair's full map).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hspi_kernels import platform as plat
from hspi_kernels.models import zoo
from hspi_kernels.platform.files import atomic_write_bytes, atomic_write_text
from hspi_kernels.trace import batch as TB
from hspi_kernels.trace import counterfactual as C
from hspi_kernels.trace import tracer as T

__all__ = ["RUNS", "PAIRS", "NOT_COVERED", "coverage_row", "render_table", "main"]

RUNS: dict[str, dict[str, Any]] = {
    "b1": dict(attn="sdpa", gemm="torch"),
    "b1_fixed": dict(attn="sdpa", gemm="fixed"),
    "b1_math": dict(attn="sdpa-math", gemm="torch"),
    "b1_flash": dict(attn="sdpa-flash", gemm="torch"),
    "b1_cudnn": dict(attn="sdpa-cudnn", gemm="torch"),
    "b1_efficient": dict(attn="sdpa-efficient", gemm="torch"),
    "cpu": dict(attn="sdpa", gemm="torch", device="cpu"),
    "b8": dict(attn="sdpa", gemm="torch", batch=8),
}
PAIRS = [("b1", "b1_fixed", "cuBLAS vs fixed-order GEMM"), ("b1_math", "b1_flash", "SDPA math vs flash"),
         ("b1_math", "b1_cudnn", "SDPA math vs cuDNN"), ("b1_flash", "b1_cudnn", "SDPA flash vs cuDNN"),
         ("b1_math", "b1_efficient", "SDPA math vs efficient"), ("cpu", "b1", "CPU vs GPU"),
         ("b1", "b8", "batch 1 vs row 0 of batch 8")]
NOT_COVERED = {
    "eager vs torch.compile": "the dispatch-mode tracer sees a compiled graph's ops only as they run eagerly: the "
                              "per-module map of hspi_kernels.trace.compiled (each module compiled on the eager "
                              "inputs, causes by N/N hypotheses) covers it, not this job",
}


def coverage_row(model: str, pair: str, label: str, cmap: dict) -> dict:
    """One coverage row of a counterfactual map (module docstring)."""
    s = cmap["summary"]
    own = [r for r in cmap["ops"] if r["own"]]
    by_plan = [r for r in own if r["cause"]["category"] != "undetermined" and (r.get("impl_a") or {}).get("plans")
               and (r.get("impl_b") or {}).get("plans")]
    explained = [r for r in own if r["cause"]["category"] != "undetermined"]
    regions = cmap.get("regions", [])
    cats: dict[str, int] = {}
    for r in explained + [x for x in regions if x["own"]]:
        cats[r["cause"]["category"]] = cats.get(r["cause"]["category"], 0) + 1
    unexplained = [{"key": r["key"], "why": r["cause"]["detail"]} for r in own if r["cause"]["category"] == "undetermined"]
    undetermined = [{"key": r["key"], "why": (r.get("cause") or {}).get("detail") or r.get("why_undetermined", "")}
                    for r in cmap["ops"] if r["own"] is None]
    undetermined += [{"key": x["key"], "why": x["cause"]["detail"]} for x in regions if x["own"] is None]
    nn = [(x["n"] - x["n_diff"], x["n"]) for r in own for x in (r["b_on_a"], r["a_on_b"])
          if x and x.get("n_diff") is not None and "n" in x]
    row = {"model": model, "pair": pair, "label": label, "ops": s["ops"], "differ": s["differ"],
            "own": s["own"], "explained": len(explained), "explained_by_plans": len(by_plan),
            "explained_by_kernel_replay": len(explained) - len(by_plan), "propagated_only": s["propagated_only"],
            "attention_regions": len(regions), "regions_own": sum(1 for x in regions if x["own"]),
            **C.region_plan_counts(regions),
            "regions_plan_notes": sorted({(x.get("plans") or {}).get("note") for x in regions
                                          if not x.get("by_plan") and (x.get("plans") or {}).get("note")})[:4],
            "unmatched_ops": len(s["unmatched"]), "causes": cats, "unexplained": unexplained,
            "undetermined": undetermined, "logits_equal": cmap.get("logits_equal"),
            "cross_replay_outputs": {"equal": sum(a for a, _ in nn), "total": sum(b for _, b in nn)},
            "own_divergences": [{"key": r["key"], "category": r["cause"]["category"], "detail": r["cause"]["detail"]}
                                for r in own][:64]}
    if any("by_plan" not in x for x in regions if x.get("kernel_reproduces")):  # a map made before the fitted
        for k in ("regions_by_plan", "regions_own_both_plans", "regions_plan_notes"):  # plans: not measured
            row.pop(k)
    return row


def layout_matrix(ta: T.Trace, tb: T.Trace, key: str) -> dict:
    """For an op whose inputs are equal in value but whose outputs differ (a trace *origin*): each
    side's call re-executed on each side's values in A's, B's and a contiguous layout; which
    recorded output each replay gives ("A", "B", or "other"). A layout cause shows as a column
    that follows the layout, not the side; a process-state cause as replays that match neither."""
    oa, ob = ta.by_key()[key], tb.by_key()[key]
    ya, yb = ([op["outputs"][j]["digest"] for j in T.result_outputs(op)] for op in (oa, ob))
    out: dict[str, Any] = {"key": key, "layouts": {"A": [i.get("layout") for i in oa["inputs"]],
                                                    "B": [i.get("layout") for i in ob["inputs"]]},
                           "kernels": {"A": oa.get("kernels", []), "B": ob.get("kernels", [])}, "replays": {}}
    vals = {"A": C._input_values(ta, oa), "B": C._input_values(tb, ob)}
    for side, op, tr in (("A", oa, ta), ("B", ob, tb)):
        for vside in ("A", "B"):
            for lside, lop in (("A", oa), ("B", ob), ("contiguous", None)):
                call = dict(op, inputs=[dict(i, layout=(lop["inputs"][j].get("layout") if lop else None))
                                        for j, i in enumerate(op["inputs"])])
                try:
                    got = C._run_kernel(call, vals[vside], tr)
                    dg = [T._digest(got[j], T._FMT.get(op["outputs"][j]["dtype"])) for j in T.result_outputs(op)]
                    res = "A" if dg == ya else "B" if dg == yb else "other"
                except Exception as exc:  # recorded, the job goes on
                    res = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
                out["replays"][f"call {side}, values {vside}, layout {lside}"] = res
    return out


def render_table(rows: list[dict], skipped: list[dict]) -> str:
    head = ("| model | pair | ops | differ | own | explained (plans / kernel replay) | unexplained | "
            "undetermined | attention regions (own) | fused ops by plan (own, both sides) | causes |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")

    def by_plan(r):  # rows measured before the fitted plans were wired in have no such count
        if "regions_by_plan" not in r:
            return "-"
        return f"{r['regions_by_plan']}/{r['attention_regions']} ({r['regions_own_both_plans']})"

    body = "".join(
        f"| {r['model']} | {r['label']} | {r['ops']} | {r['differ']} | {r['own']} | {r['explained']} "
        f"({r['explained_by_plans']} / {r['explained_by_kernel_replay']}) | {len(r['unexplained'])} | "
        f"{len(r['undetermined'])} | {r['attention_regions']} ({r['regions_own']}) | {by_plan(r)} | "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["causes"].items())) + " |\n" for r in rows)
    out = head + body
    if skipped:
        out += "\nNot run: " + "; ".join(f"{s['model']} {s['pair']}: {s['why']}" for s in skipped) + "\n"
    return out



class _BudgetCut(Exception):
    """Raised by the per-op progress hook when the job's budget ends inside a pair."""

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--models", default="qwen2.5-0.5b,gpt2-small,llama-3.2-1b")
    ap.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b, _ in PAIRS))
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--part", default="0/1", help="I/N: every N-th differing op and attention region from the "
                    "I-th on (a pair too long for one call, made in N parts -- e.g. N processes at once -- "
                    "whose maps counterfactual.merge_parts joins)")
    args = ap.parse_args(argv)
    try:
        part = tuple(int(x) for x in args.part.split("/"))
        C._check_part(part)
    except ValueError:
        ap.error(f"--part must be I/N with 0 <= I < N, got {args.part!r}")
    start = time.perf_counter()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = plat.collect()
    labels = {(a, b): lab for a, b, lab in PAIRS}
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    record: dict[str, Any] = {"platform": meta, "label": plat.platform_label(meta), "args": vars(args) | {"out_dir": str(out)},
                              "device": device, "rows": [], "skipped": [], "errors": [], "traces": {},
                              "not_covered": NOT_COVERED}
    maps: dict[str, Any] = {}

    def save():
        record["total_s"] = round(time.perf_counter() - start, 1)
        atomic_write_text(out / "coverage.json", json.dumps(record, indent=1, default=str))
        atomic_write_text(out / "coverage.md", render_table(record["rows"], record["skipped"]))
        atomic_write_bytes(out / "maps.json.gz", gzip.compress(json.dumps(maps, default=str).encode(), 6))

    for name in args.models.split(","):
        models: dict[str, Any] = {}
        traces: dict[str, T.Trace] = {}

        def model_on(dev: str):
            if dev not in models:
                m, _ = zoo.build(name, 0)
                models[dev] = m.to(device=dev, dtype=torch.bfloat16).eval()
            return models[dev]

        def trace(run: str) -> T.Trace:
            if run not in traces:
                cfg = dict(RUNS[run])
                dev = cfg.pop("device", device)
                t0 = time.perf_counter()
                traces[run] = T.run_model(name, dtype="bf16", batch=cfg.pop("batch", 1), length=args.length,
                                          device=dev, keep="all",
                                          keep_layers=1 << 10, max_bytes=16 << 30, row_cap_bytes=1 << 40,
                                          model=model_on(dev), **cfg)
                record["traces"][f"{name}/{run}"] = {"seconds": round(time.perf_counter() - t0, 1),
                                                     "ops": len(traces[run].ops),
                                                     "logits": traces[run].meta["logits_digest"],
                                                     "kernel_note": traces[run].meta.get("kernel_note")}
            return traces[run]

        for a, b in pairs:
            pname = f"{a} vs {b}"
            if time.perf_counter() - start > args.budget_s:
                record["skipped"].append({"model": name, "pair": pname, "why": "budget"})
                save()
                continue
            if device != "cuda" and any(RUNS[x].get("attn") in ("sdpa-cudnn", "sdpa-efficient") or
                                        RUNS[x].get("gemm") == "fixed" for x in (a, b)):
                record["skipped"].append({"model": name, "pair": pname, "why": f"needs a GPU (device {device})"})
                continue
            t0 = time.perf_counter()
            try:
                ta, tb = trace(a), trace(b)
                if RUNS[b].get("batch", 1) != 1:  # row 0 of the batch (trace.batch)
                    tb = TB.row_trace(tb, ta, 0)
                def progress(n, total, key, _t=time.perf_counter()):
                    if n % 100 == 0:
                        print(f"  {name} {pname}: op {n}/{total} at {time.perf_counter() - _t:.1f} s", flush=True)
                    if time.perf_counter() - start > args.budget_s:  # checked per op: a long pair stops too
                        raise _BudgetCut(f"budget: cut at op {n}/{total}, {time.perf_counter() - _t:.0f} s into the pair")

                cmap = C.counterfactual(ta, tb, progress=progress, part=part)
                cmap["logits_equal"] = ta.meta["logits_digest"] == tb.meta["logits_digest"]
                row = coverage_row(name, pname, labels.get((a, b), pname), cmap)
                d = T.diff(ta, tb)
                row["origin_layout_matrix"] = [layout_matrix(ta, tb, o["key"]) for o in d["origins"]
                                               if "attention" in o["op"] or o.get("input_layouts_differ")][:3]
                row["seconds"] = round(time.perf_counter() - t0, 1)
                row["part"] = list(part)  # N > 1: this part's ops only (merge the maps: counterfactual.merge_parts)
                record["rows"].append(row)
                maps[f"{name}/{pname}"] = {k: cmap[k] for k in ("a", "b", "part", "layout", "summary", "ops", "regions",
                                                                  "grid", "slots")}
                maps[f"{name}/{pname}"]["text"] = C.render_map(cmap, 120)
            except _BudgetCut as cut:  # the budget ended inside the pair: named, nothing half-recorded
                record["skipped"].append({"model": name, "pair": pname, "why": str(cut)})
                save()
                continue
            except Exception as exc:  # one pair's failure is recorded; the job goes on
                if isinstance(exc, RuntimeError) and "No available kernel" in str(exc):
                    record["skipped"].append({"model": name, "pair": pname, "why": "the backend has no kernel for "
                                              f"this model's attention here (torch: {str(exc)[:60]})"})
                    save()
                    continue
                record["errors"].append({"model": name, "pair": pname, "error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-2500:]})
            save()
        models.clear()
        traces.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
    save()
    print(render_table(record["rows"], record["skipped"]))
    for e in record["errors"]:
        print(f"error: {e['model']} {e['pair']}: {e['error']}")
    return 0 if not record["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
