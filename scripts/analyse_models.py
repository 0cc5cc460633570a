"""Tables from one or several model collections (e.g. the H100 and the H200 file of
``scripts/gpu_models.py``), analysed together on any CPU machine:

    python scripts/analyse_models.py H100/models_H100.npz H200/models_H200.npz \
        -o docs/results/models/h100_h200 [--dtypes bf16,fp16] [--queries 32] [--trials 200]

Writes ``<out>.json`` (every number) and ``<out>.md`` (the tables): white-box accuracy per pair
of runs on held-out prompts, black-box per EQC across platforms (top-20, <= 32 queries), the
platform x {bf16, fp16} problem, HSPI-LD and HSPI-BI on the same data, the 6-class SVM fit time
and labels-shuffled controls (see :mod:`hspi_kernels.models.crossplatform`).
"""

from __future__ import annotations

import argparse

import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("collections", nargs="+", help="collection files; PATH=TAG relabels its hardware as "
                    "HW@TAG (e.g. two sessions of one GPU type: a same-hardware negative control)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="output path without suffix")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--models", default="", help="comma-separated subset of models")
    ap.add_argument("--hardware", default="", help="comma-separated subset of hardware labels (after tagging)")
    ap.add_argument("--all-runs", action="store_true", help="also HSPI-LD with one class per run (slow)")
    args = ap.parse_args(argv)

    from hspi_kernels.models import crossplatform as cp

    t0 = time.perf_counter()
    rep = cp.analyse_files(args.collections, args.out, dtypes=tuple(args.dtypes.split(",")), queries=args.queries,
                           k=args.k, d=args.d, trials=args.trials, all_runs=args.all_runs,
                           models=args.models.split(",") if args.models else None,
                           hardware=args.hardware.split(",") if args.hardware else None,
                           progress=lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True))
    print(f"wrote {args.out}.json and {args.out}.md in {rep['analysis_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
