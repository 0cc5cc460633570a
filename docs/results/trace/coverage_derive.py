"""Derive coverage.json / coverage.md from the raw H200 coverage run (coverage_h200_raw.json and
coverage_h200_maps.json.gz, written by ``python -m hspi_kernels.trace.coverage``).

One correction, applied here and fixed in the code after the run: the run read ``is_causal`` of
``_scaled_dot_product_cudnn_attention`` / ``_efficient_attention`` from the flash signature's
position (their 5th argument is compute_log_sumexp), so the backend replays *on a cuDNN or
efficient op's inputs* ran non-causal and their verdicts are void. They are removed from the rows
(listed under ``void_regions``); the replays on flash ops' inputs and every non-attention row stand.

    python docs/results/trace/coverage_derive.py
"""

import gzip
import json
from pathlib import Path

from hspi_kernels.trace.coverage import coverage_row, render_table

HERE = Path(__file__).parent
VOID_OPS = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_efficient_attention")

raw = json.loads((HERE / "coverage_h200_raw.json").read_text())
maps = json.loads(gzip.decompress((HERE / "coverage_h200_maps.json.gz").read_bytes()))
labels = {(r["model"], r["pair"]): r for r in raw["rows"]}
rows, void = [], []
for key, cmap in maps.items():
    model, pair = key.split("/", 1)
    kept = [x for x in cmap["regions"] if x["op"] not in VOID_OPS]
    void += [{"model": model, "pair": pair, "key": x["key"]} for x in cmap["regions"] if x["op"] in VOID_OPS]
    row = coverage_row(model, pair, labels[(model, pair)]["label"], dict(cmap, regions=kept))
    row["seconds"] = labels[(model, pair)]["seconds"]
    row["layer0_region_check"] = [x.get("other_region_output_equal") for x in kept
                                  if x.get("other_region_output_equal") is not None]
    rows.append(row)
out = {k: raw[k] for k in ("platform", "label", "args", "device", "skipped", "errors", "traces", "not_covered")}
out.update({"source": "coverage_h200_raw.json + coverage_h200_maps.json.gz (module docstring: the correction)",
            "rows": rows, "void_regions": void})
(HERE / "coverage.json").write_text(json.dumps(out, indent=1))

print(render_table(rows, raw["skipped"]))
