"""Derive coverage.json / coverage.md from the raw H200 coverage runs (``*_raw.json`` and
``*_maps.json.gz``, each written by ``python -m hspi_kernels.trace.coverage``). A (model, pair) row
comes from the latest run that measured it:

- run 2 (2026-12-03, ``coverage_h200_raw.json``, budget 240): gpt2-small every pair, llama-3.2-1b
  cuBLAS vs fixed (and the qwen rows that run 3 replaces). One correction, fixed in the code
  after that run: it read ``is_causal`` of ``_scaled_dot_product_cudnn_attention`` /
  ``_efficient_attention`` from the flash signature's position (their 5th argument is
  compute_log_sumexp), so its backend replays *on a cuDNN or efficient op's inputs* ran
  non-causal: void, removed from its rows (listed under ``void_regions``);
- run 3 (2026-12-03 second session, ``coverage_h200_run3_raw.json``, budget 330, after the
  is_causal fix and the plan-search limit 3 -> 32): qwen2.5-0.5b every pair (the budget ended
  there: the other models' pairs of that run were skipped);
- run 4 (same session, ``coverage_h200_run4_raw.json``): llama-3.2-1b SDPA math vs flash and
  flash vs cuDNN (its batch 1 vs 8 pair was cut by the device time: not recorded);
- run 5 (2026-12-03 third session, ``coverage_h200_run5_raw.json``, ``--models llama-3.2-1b,qwen2.5-0.5b
  --pairs b1:b8,b1_math:b1_cudnn,cpu:b1 --budget-s 520``): llama-3.2-1b batch 1 vs 8 (159 s) and SDPA
  math vs cuDNN (30 s); its llama CPU vs H200 pair was killed by the call's 560 s limit at op ~500
  of 601 (the job's budget check runs between pairs, not inside one), and the qwen pairs never
  started; the next call to the device was refused (no machine lent): listed in ``CUT``;
- run 6 (2026-12-04, ``coverage_h200_run6_raw.json``, ``--models qwen2.5-0.5b,gpt2-small --pairs b1:b8
  --budget-s 290``, 23 s): qwen2.5-0.5b and gpt2-small batch 1 vs row 0 of batch 8;
- run 7 (2026-12-06, ``coverage_h100_run7_raw.json``, ``--models qwen2.5-0.5b,llama-3.2-1b,gpt2-small
  --pairs b1_math:b1_flash,b1_flash:b1_cudnn,b1_math:b1_cudnn,b1_math:b1_efficient --budget-s 435``,
  91.5 s) on an **H100** (the device tool gave one for a call that asked for the H200): the SDPA
  pairs with the fused ops named by fitted plan. Its rows are kept apart (``gpu`` = "H100"): a row
  is keyed by (model, pair, GPU), so no H100 row replaces an H200 one; the table has one section
  per GPU;
- run 8 (2026-12-07, ``coverage_h100_run8_raw.json``, ``--models gpt2-small --pairs cpu:b1 --budget-s 200``)
  on an **H100** again (the H200 was not lent at the time) with an Intel Xeon (AMX) host CPU: gpt2-small
  CPU vs GPU after the native_layer_norm dtype fix (``STAGES="amiss cov" ... bash scripts/gpu_full.sh``);
- run 9 (2026-12-07, ``coverage_h100_run9p{0,1,2}_raw.json``, ``--models llama-3.2-1b --pairs cpu:b1``
  in ``--part i/3``), **H100**, Intel Xeon (AMX) host, ``OMP_NUM_THREADS=5``: llama-3.2-1b CPU vs GPU; parts 1-2
  at 1d0d547, part 0 at 3c06bf9 (after the column-block full check); merged here only because all 3 parts exist.

The derived table is written to ``coverage_table.md`` and into ``coverage.md`` between the
``<!-- coverage_derive: table -->`` markers, so the page cannot carry a stale copy;
``--check`` rewrites nothing and exits 1 naming each file whose committed text differs from the
derivation (``tests/test_results_coverage.py`` runs it on the committed records).

    python docs/results/trace/coverage_derive.py          # regenerate
    python docs/results/trace/coverage_derive.py --check  # verify the committed files
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

from hspi_kernels.platform.files import atomic_write_text
from hspi_kernels.trace.counterfactual import merge_parts
from hspi_kernels.trace.coverage import coverage_row, render_table

HERE = Path(__file__).parent
BEGIN, END = "<!-- coverage_derive: table -->", "<!-- /coverage_derive: table -->"
VOID_OPS = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_efficient_attention")
RUNS = (("run2", "coverage_h200_raw.json", "coverage_h200_maps.json.gz", True, "H200"),
        ("run3", "coverage_h200_run3_raw.json", "coverage_h200_run3_maps.json.gz", False, "H200"),
        ("run4", "coverage_h200_run4_raw.json", "coverage_h200_run4_maps.json.gz", False, "H200"),
        ("run5", "coverage_h200_run5_raw.json", "coverage_h200_run5_maps.json.gz", False, "H200"),
        ("run6", "coverage_h200_run6_raw.json", "coverage_h200_run6_maps.json.gz", False, "H200"),
        ("run7", "coverage_h100_run7_raw.json", "coverage_h100_run7_maps.json.gz", False, "H100"),
        ("run8", "coverage_h100_run8_raw.json", "coverage_h100_run8_maps.json.gz", False, "H100"),
        ("run9p0", "coverage_h100_run9p0_raw.json", "coverage_h100_run9p0_maps.json.gz", False, "H100"),
        ("run9p1", "coverage_h100_run9p1_raw.json", "coverage_h100_run9p1_maps.json.gz", False, "H100"),
        ("run9p2", "coverage_h100_run9p2_raw.json", "coverage_h100_run9p2_maps.json.gz", False, "H100"))
GPUS = ("H200", "H100")
# pairs a run started but did not record (killed from outside the job: not in its own "skipped")
CUT = ({"model": "llama-3.2-1b", "pair": "cpu vs b1", "run": "run5", "gpu": "H200",
        "why": "killed by the device call's 560 s limit at op ~500/601 of the pair (420 s into it)"},
       {"model": "qwen2.5-0.5b", "pair": "b1 vs b8", "run": "run5", "gpu": "H200",
        "why": "not started (run 5 killed); device refused after"},
       {"model": "qwen2.5-0.5b", "pair": "b1_math vs b1_cudnn", "run": "run5", "gpu": "H200",
        "why": "not started (run 5 killed); device refused after"})

def derive(here: Path) -> dict[str, str]:
    """The derived files (name -> text) from the raw records in ``here``; writes nothing."""
    rows: dict[tuple, dict] = {}
    void, skipped, runs, parts = [], {}, {}, {}

    def add_row(model, pair, gpu, label, cmap, seconds, run):
        row = coverage_row(model, pair, label, cmap)
        row.update(seconds=seconds, run=run, gpu=gpu,
                   layer0_region_check=[x.get("other_region_output_equal") for x in cmap["regions"]
                                        if x.get("other_region_output_equal") is not None])
        rows[(model, pair, gpu)] = row
        skipped.pop((model, pair, gpu), None)
        return row

    for name, raw_file, maps_file, void_fix, gpu in RUNS:
        raw = json.loads((here / raw_file).read_text())
        maps = json.loads(gzip.decompress((here / maps_file).read_bytes()))
        labels = {(r["model"], r["pair"]): r for r in raw["rows"]}
        runs[name] = {"file": raw_file, "total_s": raw.get("total_s"), "args": raw["args"], "traces": raw["traces"],
                      "platform": raw["platform"], "gpu": gpu}
        for key, cmap in maps.items():
            model, pair = key.split("/", 1)
            if cmap.get("part", (0, 1))[1] > 1:  # one part of a map made in parts (coverage --part): merged once all are read
                parts.setdefault((model, pair, gpu), []).append((name, cmap, labels[(model, pair)]))
                continue
            kept = [x for x in cmap["regions"] if not (void_fix and x["op"] in VOID_OPS)]
            if void_fix:
                void += [{"run": name, "model": model, "pair": pair, "key": x["key"]}
                         for x in cmap["regions"] if x["op"] in VOID_OPS]
            add_row(model, pair, gpu, labels[(model, pair)]["label"], dict(cmap, regions=kept),
                    labels[(model, pair)]["seconds"], name)
        for s in raw["skipped"]:
            if (s["model"], s["pair"], gpu) not in rows:
                skipped[(s["model"], s["pair"], gpu)] = dict(s, run=name, gpu=gpu)
    for (model, pair, gpu), got in parts.items():  # the parts of one pair come from parallel processes
        row = add_row(model, pair, gpu, got[0][2]["label"], merge_parts([m for _, m, _ in got]),
                      max(lab["seconds"] for _, _, lab in got),  # wall time: the parts ran at once
                      "+".join(sorted({n for n, _, _ in got})))
        row["merged_from_parts"] = len(got)
    for c in CUT:
        if (c["model"], c["pair"], c["gpu"]) not in rows:
            skipped[(c["model"], c["pair"], c["gpu"])] = dict(c)
    order = {m: i for i, m in enumerate(("qwen2.5-0.5b", "gpt2-small", "llama-3.2-1b"))}
    out_rows = sorted(rows.values(), key=lambda r: (GPUS.index(r["gpu"]), order.get(r["model"], 9)))
    last = json.loads((here / [r for r in RUNS if r[4] == "H200"][-1][1]).read_text())  # the newest H200 run's platform
    out = {"platform": last["platform"], "label": last["label"], "device": last["device"],
           "not_covered": last["not_covered"], "runs": runs,
           "source": "merged by coverage_derive.py (module docstring: which run gives which row, the run-2 correction)",
           "rows": out_rows, "skipped": list(skipped.values()), "void_regions": void}
    table = "\n".join(f"### {gpu}\n\n" + render_table([r for r in out_rows if r["gpu"] == gpu],
                                                       [x for x in out["skipped"] if x["gpu"] == gpu])
                      for gpu in GPUS)
    page = (here / "coverage.md").read_text()
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise SystemExit(f"coverage_derive: {here / 'coverage.md'} needs one {BEGIN} ... {END} block")
    page = page[:page.index(BEGIN) + len(BEGIN)] + "\n" + table + "\n" + page[page.index(END):]
    return {"coverage.json": json.dumps(out, indent=1), "coverage_table.md": table, "coverage.md": page}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    ap.add_argument("--dir", type=Path, default=HERE, help="folder of the records (default: this script's)")
    a = ap.parse_args(argv)
    files = derive(a.dir)
    if a.check:
        stale = [n for n, text in files.items()
                 if not (a.dir / n).exists() or (a.dir / n).read_text() != text]
        for n in stale:
            print(f"stale: {a.dir / n} differs from what coverage_derive.py derives (run it without --check)")
        return 1 if stale else 0
    for n, text in files.items():
        atomic_write_text(a.dir / n, text)
    print(files["coverage_table.md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
