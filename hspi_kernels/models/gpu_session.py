"""One time-boxed GPU job per platform: a model-level collection small enough to travel back.

    python python -m hspi_kernels.models.gpu_session OUT_DIR [--budget-s 260] [--max-mib 12]
        [--models llama-3.2-1b,qwen2.5-0.5b] [--n-prompts 64] [--quick]

Measured on one H100 (torch 2.11+cu130): llama-3.2-1b 129 s, qwen2.5-0.5b ~115 s, file 3.4 MiB for
both; so the default (both models, every EQC) takes ~250 s plus ~6 s start. gpt2-small
(``--models llama-3.2-1b,qwen2.5-0.5b,gpt2-small --budget-s 320``) adds ~50 s.

Runs the seeded zoo models (same weights, prompts and seeds on every machine, so an H100 and an
H200 collection are directly comparable) under the EQC grid

    {bf16, fp16} x {batch 1, batch 8} x {sdpa, eager} x {cuBLAS default "torch", fixed-order Triton GEMM}

plus ``fp32.sdpa.torch.b1`` (the reference for the native features), each executed twice (the
repeat is the black-box observation and the determinism check). Stores only what the analysis
uses: per prompt the digests of the full logits row, the first ``--slice`` raw logits and fp32
log-probs, the top-20 ids/log-probs (and those of the repeat).

Writes exactly two files (the GPU machine sends back at most 8 files of <= 16 MiB):
  OUT_DIR/models_<HW>.npz           the collection (all models; hspi-model-collection/1, no pickle),
                                    rewritten after every model (atomic), <= --max-mib or the job
                                    FAILS before writing it
  OUT_DIR/models_<HW>_summary.json  platform metadata (hspi_kernels.platform.collect()), per-step and
                                    per-run times, statuses, errors, file sizes
Steps are time-boxed: a model whose estimate would overrun ``--budget-s`` is skipped, and inside a
model the EQCs that would start after the deadline are recorded as skipped (same order on every
GPU, so a cut is visible, never silent). Then, on any CPU machine:
    python scripts/analyse_models.py H100/models_H100.npz H200/models_H200.npz -o docs/results/models/h100_h200
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from hspi_kernels import platform as plat
from hspi_kernels.models import collect as mc
from hspi_kernels.models import eqc as meqc
from hspi_kernels.platform.files import atomic_write_json

START = time.perf_counter()
GRID = [f"{d}.{a}.{g}.b{b}" for g in ("torch", "fixed") for a in ("sdpa", "eager") for d in ("bf16", "fp16")
        for b in (1, 8)]
EQCS = ["fp32.sdpa.torch.b1"] + GRID
# seconds per model measured on an H100 (2026-11-22: build + 17 EQCs x 2 executions, 128 prompts; the
# eager x fixed-order EQCs dominate: the override runs bmm as one Triton mm per batch entry)
EST_S = {"llama-3.2-1b": 130.0, "qwen2.5-0.5b": 115.0, "gpt2-small": 50.0}


def elapsed() -> float:
    return time.perf_counter() - START


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--budget-s", type=float, default=260.0, help="wall-time budget of the whole job")
    ap.add_argument("--max-mib", type=float, default=12.0, help="size budget of the collection file")
    ap.add_argument("--models", default="llama-3.2-1b,qwen2.5-0.5b")
    ap.add_argument("--n-prompts", type=int, default=64, help="random-token AND text prompts each (32 tokens)")
    ap.add_argument("--slice", type=int, default=128, help="logits / log-probs stored per prompt")
    ap.add_argument("--eqcs", default=",".join(EQCS), help="comma-separated EQC names (same on every GPU!)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--quick", action="store_true", help="16+16 prompts, tiny models (a smoke test)")
    args = ap.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    max_bytes = int(args.max_mib * 2**20)

    import torch


    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    hw = mc.hardware_name(device)
    models = args.models.split(",")
    n_prompts = args.n_prompts
    if args.quick:
        models, n_prompts = ["tiny-llama", "tiny-gpt2"], 16
    eqcs = [meqc.parse(e) for e in args.eqcs.split(",")]
    coll_path = out / f"models_{hw}.npz"
    sum_path = out / f"models_{hw}_summary.json"
    meta = plat.collect()
    summary: dict = {"platform": meta, "label": plat.platform_label(meta), "hardware": hw, "device": device,
                     "argv": sys.argv, "eqcs": [e.name for e in eqcs], "models": models, "n_prompts_per_set": n_prompts,
                     "budget_s": args.budget_s, "max_mib": args.max_mib, "steps": {}, "runs": {}}

    def save_summary():
        summary["elapsed_s"] = elapsed()
        atomic_write_json(sum_path, summary, default=str, allow_nan=True)

    def on_run(rec):
        print(f"[{elapsed():6.1f}s]   {rec['status']:>11} {rec['label']} "
              f"{round(rec['time_s'], 2) if rec.get('time_s') else ''} {rec.get('reason') or rec.get('error') or ''}",
              flush=True)

    coll = None
    failed = False
    for name in models:
        est = EST_S.get(name, 30.0)
        if elapsed() + est > args.budget_s:
            summary["steps"][name] = {"status": "skipped", "reason": f"time budget ({elapsed():.0f} s used, "
                                                                    f"estimate {est:.0f} s)"}
            print(f"[{elapsed():6.1f}s] skip {name}", flush=True)
            save_summary()
            continue
        t = time.perf_counter()
        print(f"[{elapsed():6.1f}s] {name} ...", flush=True)
        try:
            runner = mc.Runner(name, device=device, slice_size=args.slice, topk=20)
            inputs = mc.make_inputs(runner, n_prompts, n_prompts, 32)
            # leave ~10 s at the end for the final save
            coll = mc.collect(runner, eqcs, inputs, on_run=on_run, collection=coll, hardware=hw,
                              deadline=START + args.budget_s - 10.0)
            runner.release()
            del runner
            summary["runs"][name] = [{k: r.get(k) for k in ("label", "status", "deterministic", "rep_rows_differing",
                                                             "time_s", "reason", "error")}
                                     for r in coll.meta["runs"] if r["model"] == name]
            coll.meta["extra"]["gpu_models"] = {"eqcs": [e.name for e in eqcs], "n_prompts_per_set": n_prompts}
            coll.save(coll_path, max_bytes=max_bytes)  # raises CollectionTooLarge before writing
            summary["steps"][name] = {"status": "ok", "time_s": time.perf_counter() - t,
                                      "file_mib": round(coll_path.stat().st_size / 2**20, 3)}
        except mc.CollectionTooLarge as exc:
            summary["steps"][name] = {"status": "failed", "error": str(exc)}
            print(f"FATAL size budget: {exc}", file=sys.stderr, flush=True)
            save_summary()
            return 2
        except Exception as exc:
            failed = True
            summary["steps"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        print(f"[{elapsed():6.1f}s] {name}: {summary['steps'][name]['status']} "
              f"({summary['steps'][name].get('file_mib', '')} MiB)", flush=True)
        save_summary()
    summary["total_s"] = elapsed()
    summary["files"] = {p.name: p.stat().st_size for p in (coll_path, sum_path) if p.exists()}
    save_summary()
    if sum_path.stat().st_size > max_bytes:
        print(f"FATAL: {sum_path} over the size budget", file=sys.stderr)
        return 2
    print(f"done in {elapsed():.1f} s; {summary['files']}", flush=True)
    return 1 if failed or coll is None else 0


if __name__ == "__main__":
    sys.exit(main())
