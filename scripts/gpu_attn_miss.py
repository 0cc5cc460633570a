"""Which part of the fitted fused-attention order misses on the ops no fitted plan reproduces
(issue 15; coverage run 7: llama-3.2-1b layer 6's flash SDPA, output 32767/32768 under
``sdpa_orders.fitted_plans('flash')``)::

    python scripts/gpu_attn_miss.py OUT_DIR [--model llama-3.2-1b]

Traces the model on this GPU under SDPA flash and under SDPA cuDNN (batch 1, the coverage job's
prompt), keeping every attention op's q, k, v and outputs; then, per layer, evaluates the fitted
orders and each one-field variant of them (flash: reciprocal sfu / ieee / div, the exp argument
fused or not, the lane row sum's first add fused or not; cuDNN: its six fitted orders) with this
GPU's SFU instructions, and counts output and lse bits N/N. Each miss is located (head, query row,
column, the recorded and replayed bits). Writes ``OUT_DIR/attn_miss.json`` (platform metadata,
per layer and plan the counts and misses), ``OUT_DIR/attn_miss_sfu.npz`` (every SFU output the
replays used: the CPU replays of ``tests/``) and the two traces (``llama_flash.npz``,
``llama_cudnn.npz``); prints a table last. Needs a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def variants(backend: str, base):
    """The fitted orders of ``backend``; for flash each with every reciprocal, exp-argument and
    lane-row-sum form."""
    if backend != "flash":
        return list(base)
    out = []
    for p in base:
        for recip in ("sfu", "ieee", "div"):
            for exp_fma in (False, True):
                for lane_fma in (True, False):
                    out.append(dataclasses.replace(p, recip=recip, exp_fma=exp_fma, lane_fma=lane_fma))
    return list(dict.fromkeys(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", default="llama-3.2-1b")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from hspi_kernels import platform as plat
    from hspi_kernels.kernels.cuda.sfu import LiveSfu
    from hspi_kernels.numerics import attention_plan as AP
    from hspi_kernels.numerics import attention_ref as R
    from hspi_kernels.platform.files import atomic_write_npz, atomic_write_text
    from hspi_kernels.trace import counterfactual as C
    from hspi_kernels.trace import sdpa_orders as SO
    from hspi_kernels.trace import tracer as T

    sfu = R.SfuOutputs(record=LiveSfu())
    t0 = time.perf_counter()
    record = {"platform": plat.collect(), "model": args.model, "backends": {}}
    table = []
    for backend in ("flash", "cudnn"):
        opname = f"_scaled_dot_product_{backend}_attention"
        keys = [f"model.layers.{i}.self_attn:{opname}#0" for i in range(64)]  # every layer of a zoo model
        tr = T.run_model(args.model, device="cuda", attn=f"sdpa-{backend}", keep="gemm", keep_layers=0, keep_keys=keys)
        tr.save(args.out_dir / f"{args.model.split('-')[0]}_{backend}.npz")
        rows = []
        for op in tr.ops:
            if op["op"] != opname:
                continue
            q, k, v = C._input_values(tr, op)[:3]
            call = C._attention_call(op)
            ob = C._output_bits(tr, op, 0)[0]
            lb = C._output_bits(tr, op, 1)[0]
            fmt = T._FMT.get(op["inputs"][0]["dtype"])
            base = SO.fitted_plans(backend, fmt, q.shape[-1], split_kv=False)
            for plan in variants(backend, base):
                o, lse = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=call["causal"], scale=call["scale"],
                                               sfu=sfu, with_lse=True)
                cnt = C._attention_counts(o, lse, ob, lb, fmt, q.shape)
                got = C._to_bits(o, fmt).reshape(ob.shape)
                miss = np.argwhere(got != ob)
                rows.append({"key": op["key"], "plan": repr(plan), **cnt,
                             "misses": [{"index": [int(i) for i in m], "recorded": int(ob[tuple(m)]),
                                         "replayed": int(got[tuple(m)])} for m in miss[:8]]})
                print(f"{backend} {op['key'].split(':')[0]} {cnt['out_equal']}/{cnt['out_total']} "
                      f"lse {cnt['lse_equal']}/{cnt['lse_total']} {plan!r}", flush=True)
        record["backends"][backend] = {"label": tr.meta["label"], "rows": rows,
                                       "kernels": sorted({kn for op in tr.ops if op["op"] == opname
                                                          for kn in op.get("kernels", [])})}
        by_plan: dict[str, list] = {}
        for r in rows:
            by_plan.setdefault(r["plan"], []).append(r)
        for plan, rs in by_plan.items():
            n = sum(r["out_equal"] == r["out_total"] and r["lse_equal"] == r["lse_total"] for r in rs)
            table.append((backend, n, len(rs), sum(r["out_equal"] for r in rs), sum(r["out_total"] for r in rs), plan))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_npz(args.out_dir / "attn_miss_sfu.npz", sfu.to_arrays())
    atomic_write_text(args.out_dir / "attn_miss.json", json.dumps(record, indent=1, default=str))
    print(f"\n{'backend':8} {'ops N/N':>8} {'outputs':>16}  plan")
    for b, n, tot, oe, ot, plan in table:
        print(f"{b:8} {n:>3}/{tot:<4} {oe:>8}/{ot:<8} {plan}")
    print(f"{record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
