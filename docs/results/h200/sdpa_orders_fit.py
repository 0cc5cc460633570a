"""CPU fit of the flash-attention-2 orders to the H200 capture (sdpa_orders_cases.npz), without the
GPU's SFU: numpy float32 exp2 / 1/x / log2 stand in for ex2.approx / rcp.approx / lg2.approx, so
output bits (bf16) are compared, and the fp32 log-sum-exp only as a max difference.

    python docs/results/h200/sdpa_orders_fit.py   # writes sdpa_orders_fit.json beside it
"""

import json
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.trace import sdpa_orders as SO

HERE = Path(__file__).parent
F32 = np.float32


class NumpySfu:
    def apply(self, op, x):
        x = np.asarray(x, dtype=F32)
        with np.errstate(all="ignore"):
            return {"ex2_ftz": np.exp2, "rcp": lambda y: F32(1) / y, "lg2": np.log2}[op](x).astype(F32)


# cases where PyTorch launched flash_fwd_splitkv_kernel + combine (sdpa_orders.json)
SHAPES = ("long.causal384", "long.full300", "long.d128")


def main():
    z = np.load(HERE / "sdpa_orders_cases.npz")
    rows = []
    t0 = time.time()
    for case, (Hq, Hkv, S, D, causal, fmt, amp) in SO.CASES.items():
        if f"{case}/q" not in z:  # a case added after this capture
            continue
        dt = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
        q, k, v = (z[f"{case}/{n}"].view(dt).astype(F32) for n in "qkv")
        for be in SO.BACKENDS:
            if f"{case}/{be}/out" not in z:
                continue
            want = z[f"{case}/{be}/out"]
            wl = z[f"{case}/{be}/lse"].view(F32) if f"{case}/{be}/lse" in z else None
            plans = SO.fitted_plans(be, fmt, D, split_kv=False)
            if case in SHAPES:  # the split-KV kernel ran: both walks, to show the difference
                plans = SO.fitted_plans(be, fmt, D, split_kv=True) if be == "flash" else plans
            for plan in plans:
                o, lse = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, sfu=NumpySfu(), with_lse=True)
                got = SO._bits(o, fmt)
                rows.append({"case": case, "backend": be, "plan": repr(plan),
                             "out_equal": int((got == want).sum()), "out_total": int(want.size),
                             "lse_max_abs_diff": None if wl is None else float(np.nanmax(np.abs(lse - wl)))})
                print(f"{case:>16} {be:>9}: {rows[-1]['out_equal']}/{rows[-1]['out_total']}  {repr(plan)[:90]}")
    rec = {"note": __doc__.strip().split("\n\n")[0], "rows": rows, "seconds": round(time.time() - t0, 1)}
    (HERE / "sdpa_orders_fit.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
