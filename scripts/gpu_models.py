"""One GPU job per platform: collect everything model-level platform inference needs.

    python scripts/gpu_models.py OUT_DIR [--quick] [--budget-s 280] [--border-from OTHER/border.json]

Writes (at most 7 files, each well under 16 MiB):
  OUT_DIR/llama.npz   Llama-3.2-1B-like: every EQC axis alone and in combination (preset "gpu"),
                      plus CPU fp32/bf16 runs of the same prompts (hardware axis "CPU")
  OUT_DIR/qwen.npz    Qwen2.5-0.5B-like and OUT_DIR/gpt2.npz GPT-2-small-like: dtype × batch × attn
  OUT_DIR/vision.npz  ResNet-18 and MobileNet-V2 (torchvision when importable): dtype × batch
  OUT_DIR/border.json HSPI-BI: LLM token-search and vision PGD border inputs per EQC pair, and the
                      top-1 of every border candidate under several EQCs (cross-GPU transfer)
  OUT_DIR/summary.json platform metadata, per-step times, run statuses, errors
Then, on any CPU machine, with the collections of both GPUs:
    hspi model classify H100/llama.npz H200/llama.npz --plot-dir plots -o llama_report.json
A step that would overrun ``--budget-s`` is skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer prompts and EQCs (about a minute)")
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip steps that would start after this")
    ap.add_argument("--border-from", type=Path, default=None, help="another GPU's border.json: re-query its "
                    "border candidates here (cross-GPU transfer)")
    args = ap.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from hspi_kernels import platform as plat
    from hspi_kernels.models import collect as mc, eqc as meqc, hspi_bi

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    meta = plat.collect()
    summary: dict = {"platform": meta, "label": plat.platform_label(meta), "quick": args.quick, "steps": {}}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_prompts = 32 if args.quick else 64

    def save_summary():
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    def step(name: str, est_s: float, fn):
        if elapsed() + est_s > args.budget_s:
            summary["steps"][name] = {"status": "skipped", "reason": f"time budget ({elapsed():.0f} s used)"}
            print(f"[{elapsed():6.1f}s] skip {name}", flush=True)
            save_summary()
            return None
        t = time.perf_counter()
        print(f"[{elapsed():6.1f}s] {name} ...", flush=True)
        try:
            result = fn()
            summary["steps"][name] = {"status": "ok", "time_s": time.perf_counter() - t}
        except Exception as exc:
            summary["steps"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
            result = None
        print(f"[{elapsed():6.1f}s] {name}: {summary['steps'][name]['status']}", flush=True)
        save_summary()
        return result

    def on_run(rec):
        print(f"    {rec['status']:>11} {rec['label']} {rec.get('time_s', '') and round(rec['time_s'], 2)} "
              f"{rec.get('reason') or rec.get('error') or ''}", flush=True)

    runners = {}

    def llm(name: str, fname: str, eqcs, cpu_eqcs=()):
        runner = mc.Runner(name, device=device, slice_size=128, topk=20)
        runners[name] = runner
        inputs = mc.make_inputs(runner, n_prompts, n_prompts, 32)
        coll = mc.collect(runner, eqcs, inputs, on_run=on_run)
        if cpu_eqcs:
            cpu_runner = mc.Runner.__new__(mc.Runner)
            cpu_runner.__dict__.update(runner.__dict__, device="cpu", _copies={}, _compiled={})
            cpu_inputs = {k: v[: n_prompts // 2 * 2] for k, v in inputs.items()}
            coll = mc.collect(cpu_runner, cpu_eqcs, cpu_inputs, on_run=on_run, collection=coll, repeat=False)
        runner.release()
        coll.save(out / fname)
        summary.setdefault("runs", {})[name] = [{k: r.get(k) for k in ("label", "status", "deterministic",
                                                  "rep_rows_differing", "time_s", "reason", "error")}
                                                 for r in coll.meta["runs"]]

    gpu_eqcs = meqc.preset("gpu-quick" if args.quick else "gpu")
    # CPU runs of the 1B model need the same prompts; only the full run spends the time on them
    cpu_eqcs = [] if args.quick else [meqc.parse("fp32.b8"), meqc.parse("bf16.b8")]
    step("llama-3.2-1b", 90, lambda: llm("llama-3.2-1b", "llama.npz", gpu_eqcs, cpu_eqcs))
    small = [meqc.parse(e) for e in ("fp32.b1", "tf32.b1", "bf16.b1", "fp16.b1", "bf16.b8", "fp16.b8",
                                     "bf16.eager.b1", "bf16.b32")]
    step("qwen2.5-0.5b", 40, lambda: llm("qwen2.5-0.5b", "qwen.npz", small))
    step("gpt2-small", 25, lambda: llm("gpt2-small", "gpt2.npz", small))

    def vision():
        coll = None
        eqcs = meqc.preset("vision")
        if args.quick:
            eqcs = [e for e in eqcs if e.batch in (1, 8)]
        for name in ("resnet18", "mobilenet_v2"):
            runner = mc.Runner(name, device=device, slice_size=1000, topk=20)
            runners[name] = runner
            inputs = mc.make_inputs(runner, n_prompts, 0, 0)
            coll = mc.collect(runner, eqcs, inputs, on_run=on_run, collection=coll)
            summary.setdefault("runs", {})[name] = [{k: r.get(k) for k in ("label", "status", "deterministic")}
                                                     for r in coll.meta["runs"] if r["model"] == name]
        coll.save(out / "vision.npz")

    step("vision", 40, vision)

    border: dict = {"pairs": [], "pool": {}}

    def llm_border():
        runner = runners.get("llama-3.2-1b") or mc.Runner("llama-3.2-1b", device=device)
        surrogate = meqc.EQC(dtype="fp64", attn="sdpa-math", batch=64)
        cands, margins = hspi_bi.llm_candidates(runner, surrogate, n_pool=512, length=32, n_keep=64, rounds=6)
        pool_eqcs = [meqc.parse(e) for e in ("bf16.b1", "fp16.b1", "bf16.b8", "fp16.b8", "fp32.b1", "tf32.b1")]
        border["pool"]["llama-3.2-1b"] = {"inputs": cands.tolist(), "surrogate_margin": margins.tolist(),
                                          "top1": {e.name: runner.greedy(e, cands).tolist() for e in pool_eqcs}}
        for a, b in (("bf16.b1", "fp16.b1"), ("bf16.b1", "bf16.b8"), ("fp32.b1", "bf16.b1"), ("fp32.b1", "tf32.b1")):
            res = hspi_bi.query_border(lambda x, e=meqc.parse(a): runner.greedy(e, x),
                                       lambda x, e=meqc.parse(b): runner.greedy(e, x), cands, budget=64, batch=8)
            res.update(model="llama-3.2-1b", a=a, b=b)
            border["pairs"].append(res)
        if args.border_from and args.border_from.exists():
            other = json.loads(args.border_from.read_text())
            pool = other.get("pool", {}).get("llama-3.2-1b")
            if pool:
                x = np.asarray(pool["inputs"], dtype=np.int32)
                border["transfer_from_other"] = {
                    "source": str(args.border_from),
                    "top1_here": {e: runner.greedy(meqc.parse(e), x).tolist() for e in pool["top1"]},
                    "top1_there": pool["top1"]}
        runner.release()

    def vision_border():
        runner = runners.get("resnet18") or mc.Runner("resnet18", device=device)
        surrogate = meqc.EQC(dtype="fp32", batch=16)
        cands, margins = hspi_bi.vision_candidates(runner, surrogate, n=32, steps=30)
        pool_eqcs = [meqc.parse(e) for e in ("bf16.b1", "fp16.b1", "bf16.b8", "fp32.b1", "tf32.b1")]
        border["pool"]["resnet18"] = {"surrogate_margin": margins.tolist(),
                                      "top1": {e.name: runner.greedy(e, cands).tolist() for e in pool_eqcs}}
        for a, b in (("bf16.b1", "fp16.b1"), ("fp32.b1", "tf32.b1"), ("bf16.b1", "bf16.b8")):
            res = hspi_bi.query_border(lambda x, e=meqc.parse(a): runner.greedy(e, x),
                                       lambda x, e=meqc.parse(b): runner.greedy(e, x), cands, budget=64, batch=8)
            res.update(model="resnet18", a=a, b=b)
            border["pairs"].append(res)
        runner.release()

    step("border-llm", 30, llm_border)
    step("border-vision", 15, vision_border)
    (out / "border.json").write_text(json.dumps(border, default=str))
    summary["total_s"] = elapsed()
    save_summary()
    print(f"done in {elapsed():.1f} s; files: {sorted(p.name for p in out.iterdir())}", flush=True)
    failed = [k for k, v in summary["steps"].items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
