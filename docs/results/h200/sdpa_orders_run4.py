"""GPU run 4 of the fused-SDPA orders (issue 15): the two lse findings of the CPU analysis of the
run-3 integer-score case, checked on every captured case with the H200's live SFU.

- flash: PyTorch builds flash-attention-2 with ``UNFUSE_FMA``, so ``p = ex2(rn(rn(S·c) - rn(m·c)))``
  (``AttentionPlan(exp_fma=False)``), not the FFMA the upstream kernel writes;
- cuDNN / efficient: the row sum as four lane partials combined at the end (``rowsum=None``, the
  quad layout) instead of a sequential or pairwise row sum.

Each variant against the found plan (the control) on the capture ``sdpa_orders_cases.npz`` (all
heads): output bits N/N and, per lse formula of ``lse_variants``, lse rows N/N. The SFU outputs of
every input used are recorded (``rec.npz``) so the CPU can replay the result.

    python docs/results/h200/sdpa_orders_run4.py OUT [--budget-s 300]
"""

import argparse
import dataclasses as dc
import json
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.numerics import plans as P
from hspi_kernels.trace import sdpa_orders as SO

HERE = Path(__file__).parent
SHORT = ("int.short", "qwen2.5-0.5b", "gpt2-small", "llama-3.2-1b", "gpt2-small.fp16")
LONG = ("int.long", "long.full300", "long.causal384", "long.d128")


def candidates(be: str, fmt: str, D: int, split_kv: bool):
    """(name, plan) pairs: the found plan first (the control), then the variant."""
    out = []
    for b0 in SO.fitted_plans(be, fmt, D, split_kv=split_kv)[:2 if split_kv else 1]:
        tag = f"splits={b0.splits},recip={b0.recip}"
        if be == "flash":
            out += [(f"ffma {tag}", b0), (f"unfused {tag}", dc.replace(b0, exp_fma=False))]
        else:
            rows = (P.Sequential(), None) if be == "cudnn" else (P.Sequential(), P.Pairwise(), None)
            out += [(f"rowsum={'lanes' if r is None else type(r).__name__} {tag}", dc.replace(b0, rowsum=r)) for r in rows]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--cases", default=",".join(SHORT + LONG))
    args = ap.parse_args(argv)
    from hspi_kernels.kernels.cuda import sfu as SF

    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    live = R.SfuOutputs(record=SF.LiveSfu())
    z = np.load(HERE / "sdpa_orders_cases.npz")
    res, skipped = {}, []
    for n in args.cases.split(","):
        Hq, Hkv, S, D, causal, fmt, _ = SO.CASES[n]
        dt = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
        q, k, v = (z[f"{n}/{x}"].view(dt).astype(np.float32) for x in "qkv")
        for be in SO.BACKENDS:
            if f"{n}/{be}/out" not in z.files:
                continue
            want_o, want_l = z[f"{n}/{be}/out"], z[f"{n}/{be}/lse"].view(np.uint32)
            for name, plan in candidates(be, fmt, D, split_kv=(n in LONG and be == "flash")):
                if time.time() - t0 > args.budget_s:
                    skipped.append(f"{n}|{be}|{name}")
                    continue
                seen = []
                orig = AP._lse
                AP._lse = lambda p, m, l, sc, sf: (seen.append((m, l, sc)), orig(p, m, l, sc, sf))[1]
                try:
                    o = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, sfu=live, with_lse=True)[0]
                except Exception as exc:  # noqa: BLE001 - record and go on
                    res[f"{n}|{be}|{name}"] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                finally:
                    AP._lse = orig
                out_eq = int((SO._bits(o, fmt) == want_o).sum())
                lse = {}
                if seen and plan.splits == 1:
                    m = np.concatenate([np.ravel(x[0]) for x in seen])
                    l = np.concatenate([np.ravel(x[1]) for x in seen])
                    for p in AP.lse_variants(plan):
                        L = orig(p, m, l, seen[0][2], live).reshape(want_l.shape)
                        lse[p.describe_lse()] = int((L.view(np.uint32) == want_l).sum())
                best = max(lse.items(), key=lambda kv: kv[1]) if lse else (None, None)
                res[f"{n}|{be}|{name}"] = {"out": [out_eq, int(want_o.size)], "lse_best": [best[1], int(want_l.size)],
                                           "lse_best_formula": best[0], "lse_all": lse, "plan": plan.describe()}
                print(f"{n:16} {be:9} {name:28} out {out_eq}/{want_o.size}  lse {best[1]}/{want_l.size} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    np.savez_compressed(args.out_dir / "sfu_run4.npz", **live.to_arrays())
    rec = {"results": res, "skipped": skipped, "seconds": round(time.time() - t0, 1)}
    try:
        from hspi_kernels import platform as plat
        rec["platform"] = plat.collect()
    except Exception as exc:  # noqa: BLE001
        rec["platform"] = {"error": str(exc)}
    (args.out_dir / "sdpa_orders_run4.json").write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
