"""One GPU job: op-level traces of the Llama-3.2-1B-like model (seeded weights) for `hspi trace`.

    python python -m hspi_kernels.trace.gpu_session OUT_DIR [--reference OTHER_GPU_DIR] [--budget-s 170] [--length 16]

Writes (at most 6 files, each kept under 16 MiB: parameters are never stored, the explainer
regenerates them from the seed; activations are stored by the keep policy below):
  OUT_DIR/b1.npz         bf16, batch 1 (H100 and H200 logits differ here): GEMM inputs/outputs of
                         the first 8 decoder layers + lm_head (leading rows of arrays > 1 MiB)
  OUT_DIR/b8.npz         bf16, batch 8 (logits agree across H100/H200): GEMMs of layer 0 + lm_head
  OUT_DIR/b1_fixed.npz   batch 1 under the fixed-order Triton GEMM override (vs b1: cuBLAS)
  OUT_DIR/b1_math.npz    batch 1, SDPA math backend
  OUT_DIR/b1_flash.npz   batch 1, SDPA flash backend (vs b1_math: flash vs math)
  OUT_DIR/summary.json   platform, per-step seconds/sizes/errors, and (with --reference) the
                         diff of b1/b8 against the other GPU's traces
With ``--reference DIR`` (the other GPU's OUT_DIR, carried into the working tree) every op whose
output differs from the reference while its inputs agree keeps its arrays too (4 MiB reserve),
whatever its layer, so the explainer always has the first origin.

Then on any CPU machine:
    hspi trace diff H100/b1.npz H200/b1.npz --plot b1.png --html b1.html -o b1_diff.json
    hspi trace explain H100/b1.npz H200/b1.npz --json -o b1_explain.json
    hspi trace explain H100/b1.npz H100/b1_fixed.npz      # cuBLAS vs fixed-order Triton
    hspi trace diff H100/b1_flash.npz H100/b1_math.npz     # SDPA flash vs math (unmatched ops)
A step that would start after ``--budget-s`` is skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from hspi_kernels import platform as plat
from hspi_kernels.models import zoo
from hspi_kernels.platform.files import atomic_write_text
from hspi_kernels.trace import tracer as T

START = time.perf_counter()
MAX_FILE = 15.5 * 2**20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--reference", type=Path, default=None, help="the other GPU's OUT_DIR (b1.npz, b8.npz)")
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=170.0)
    args = ap.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    import torch


    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = plat.collect()
    summary: dict = {"platform": meta, "label": plat.platform_label(meta), "steps": {}, "args": vars(args)}

    def save_summary():
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))

    t0 = time.perf_counter()
    model, _ = zoo.build(args.model, 0)
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    summary["build_s"] = round(time.perf_counter() - t0, 2)
    save_summary()

    steps = [  # (file, batch, attn, gemm, keep_layers, est seconds)
        ("b1", 1, "sdpa", "torch", 8, 25),
        ("b8", 8, "sdpa", "torch", 1, 25),
        ("b1_fixed", 1, "sdpa", "fixed", 8, 45),
        ("b1_math", 1, "sdpa-math", "torch", 2, 20),
        ("b1_flash", 1, "sdpa-flash", "torch", 2, 20),
    ]
    for name, batch, attn, gemm, keep_layers, est in steps:
        step = summary["steps"].setdefault(name, {})
        if time.perf_counter() - START + est > args.budget_s:
            step["status"] = "skipped (budget)"
            save_summary()
            continue
        t1 = time.perf_counter()
        try:
            ref = None
            if args.reference is not None and (args.reference / f"{name}.npz").exists():
                ref = T.load(args.reference / f"{name}.npz")
            max_bytes = 11 << 20
            tr = T.run_model(args.model, dtype="bf16", batch=batch, length=args.length, device=device, attn=attn,
                             gemm=gemm, keep="gemm", keep_layers=keep_layers, max_bytes=max_bytes, model=model,
                             reference=ref)
            path = tr.save(out / f"{name}.npz")
            size = path.stat().st_size
            if size > MAX_FILE:  # retry leaner rather than lose the file on the way back
                tr = T.run_model(args.model, dtype="bf16", batch=batch, length=args.length, device=device,
                                 attn=attn, gemm=gemm, keep="gemm", keep_layers=1, max_bytes=6 << 20, model=model,
                                 reference=ref, profile=False)
                path = tr.save(out / f"{name}.npz")
                size = path.stat().st_size
                step["lean_retry"] = True
            step.update({"status": "ok", "ops": len(tr.ops), "file_bytes": size, "stored_bytes": tr.meta["stored_bytes"],
                         "logits_digest": tr.meta["logits_digest"], "kernel_note": tr.meta["kernel_note"]})
            if ref is not None:
                d = T.diff(ref, tr)
                step["diff_vs_reference"] = {k: d[k] for k in ("logits_equal", "n_ops", "n_differ", "first_origin",
                                                               "divergence_via_unmatched", "layers")}
                step["diff_vs_reference"]["origins"] = [r["key"] for r in d["origins"]]
        except Exception as exc:
            step.update({"status": "error", "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-3000:]})
        step["seconds"] = round(time.perf_counter() - t1, 2)
        save_summary()
        if device == "cuda":
            torch.cuda.empty_cache()
    summary["total_s"] = round(time.perf_counter() - START, 2)
    save_summary()
    print(json.dumps({k: {kk: v.get(kk) for kk in ("status", "seconds", "file_bytes", "error")}
                      for k, v in summary["steps"].items()}, indent=1))
    return 0 if all(s.get("status") == "ok" for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
