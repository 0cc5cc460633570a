"""fp8 e4m3 GEMMs on one GPU: which plan gives the bits of ``torch._scaled_mm`` (per-tensor and
per-row scales, ``use_fast_accum`` on and off; the kernels it launches are recorded: cuBLASLt
``nvjet`` kernels for both on torch 2.11) and of the project's Triton fp8 GEMM (positive control: its promotion interval is set
by ``max_num_imprecise_acc``, so the search must find exactly that).

Per op and shape: unit scales, operands from :func:`hspi_kernels.reveal.fp8.operands`, the plan
family of :mod:`hspi_kernels.reveal.fp8` (wgmma fp8 block G = 32, F = 13; promotion every t
products; outer split-K) screened on 512 outputs and the survivors replayed on >= 16384 outputs.
Then the epilogue with non-unit scales (fp32, not powers of two): the found plan's fp32 result
times the scales, each candidate order of ``fp8.EPILOGUES`` compared bit for bit on the bf16
output (fp32 and bf16 for per-tensor scales). Kernel names from torch.profiler. Seconds are wall time, host work included.

    python scripts/gpu_fp8_scaled_mm.py OUT_DIR [--budget 400]

Writes OUT_DIR/fp8_scaled_mm.json (platform metadata, per op: kernels, candidates with N/N) and
prints a short table last.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import numpy as np

from hspi_kernels import platform as plat
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.platform.files import atomic_write_json, check_output_dir
from hspi_kernels.reveal import fp8

SHAPES = [(16, 4096, 4096), (64, 1024, 1024), (1, 8192, 1024), (128, 2048, 2048)]  # M, K, N
CONTROL_SHAPES = [(64, 1024, 1024), (1, 8192, 1024)]  # the Triton control (its full table: triton_kernels_validation.json)
MAC_BUDGET = 2 ** 27  # multiply-adds per full replay on the CPU (rows chosen to fit)


def kernels_of(fn) -> list[str]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
                   and "memset" not in e.name.lower()})


def ops(torch):
    """(name, fn(a8, b8_colmajor, sa, sb) -> tensor, scaling ("tensor" | "row" | None), triton interval)"""
    def scaled(fast, od):
        return lambda a, b, sa, sb: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=od, use_fast_accum=fast)

    out = []
    for scaling, ods in (("tensor", (torch.float32, torch.bfloat16)), ("row", (torch.bfloat16,))):
        for fast in (True, False):
            for od in ods:
                tag = "fp32" if od == torch.float32 else "bf16"
                out.append((f"scaled_mm {scaling} {'fast' if fast else 'slow'} {tag}", scaled(fast, od), scaling, None))
    try:
        from hspi_kernels.kernels.triton import gemm as tg
        for acc in (None, 32, 128):
            cfg = tg.GemmConfig(block_m=128, block_n=256, block_k=128, num_stages=3, max_num_imprecise_acc=acc)
            out.append((f"triton fp8 imprecise={acc}",
                        (lambda c: lambda a, b, sa, sb: tg.matmul(a, b.contiguous(), config=c))(cfg), None, acc))
    except Exception as exc:  # Triton missing: the cuBLAS part still runs
        print(f"triton fp8 GEMM skipped: {exc}", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--budget", type=float, default=400.0)
    args = ap.parse_args(argv)
    out = check_output_dir(args.out_dir)
    path = out / "fp8_scaled_mm.json"
    import torch

    rec = {"platform": plat.metadata.collect(), "what": __doc__.splitlines()[0], "results": []}
    t_all = time.perf_counter()
    e4 = torch.float8_e4m3fn
    for name, fn, scaling, interval in ops(torch):
        rowwise = scaling == "row"
        for M, K, N in (SHAPES if scaling is not None else CONTROL_SHAPES):
            row = {"op": name, "M": M, "K": K, "N": N}
            if time.perf_counter() - t_all > args.budget:
                row["status"] = "skipped: budget spent"
                rec["results"].append(row)
                continue
            t0 = time.perf_counter()
            try:
                rng = np.random.default_rng(K + N + M)
                A, B = fp8.operands(rng, M, K, N)
                a = torch.from_numpy(A).cuda().to(e4)
                b = torch.from_numpy(B).cuda().to(e4).t().contiguous().t()  # column-major B
                assert torch.equal(a.float().cpu(), torch.from_numpy(A)), "operands not exact in e4m3"
                one = torch.ones((), device="cuda")
                sa = torch.ones((M, 1), device="cuda") if rowwise else one
                sb = torch.ones((1, N), device="cuda") if rowwise else one
                run = lambda: fn(a, b, sa, sb)
                D = run().float().cpu().numpy()
                again = run().float().cpu().numpy()
                row["repeat_equal"] = bool(np.array_equal(D.view(np.uint32), again.view(np.uint32)))
                row["kernels"] = kernels_of(run)
                out_fmt = "bf16" if name.endswith("bf16") else "fp32"
                rows = max(1, min(M, MAC_BUDGET // (N * K)))
                res = fp8.find_plans(D, A, B, fp8.family(K), out_format=out_fmt, full_rows=rows)
                exact = [r for r in res if r.get("full") and r["full"].split("/")[0] == r["full"].split("/")[1]]
                row.update(out_format=out_fmt, candidates=[{k: v for k, v in r.items() if k != "plan_json"} for r in res[:6]],
                           exact=[{k: r[k] for k in ("promotion_interval", "split_k", "plan", "plan_json", "full")} for r in exact],
                           best_screen=res[0]["screen"], family_size=len(res))
                if scaling is None:  # the Triton control
                    row["expected_interval"] = interval
                    row["control_found"] = any(r["promotion_interval"] == interval and r["split_k"] == 1 for r in exact)
                # epilogue with non-unit scales (not powers of two), on the exact plan's fp32 result
                if exact and scaling is not None:
                    sa_v = (rng.uniform(0.3, 3.0, (M, 1)) if rowwise else np.float32(rng.uniform(0.3, 3.0))).astype(np.float32)
                    sb_v = (rng.uniform(0.3, 3.0, (1, N)) if rowwise else np.float32(rng.uniform(0.3, 3.0))).astype(np.float32)
                    Ds = fn(a, b, torch.from_numpy(np.asarray(sa_v)).cuda().reshape(sa.shape),
                            torch.from_numpy(np.asarray(sb_v)).cuda().reshape(sb.shape)).float().cpu().numpy()
                    sel = np.arange(rows)
                    acc = gemm(P.plan_from_json(exact[0]["plan_json"]), A[sel], B)
                    want = np.ascontiguousarray(Ds[sel]).view(np.uint32)
                    ep = {}
                    for en in fp8.EPILOGUES:
                        got = fp8.epilogue(en, acc, sa_v[sel] if rowwise else sa_v, sb_v, out_fmt)
                        ep[en] = f"{int(np.sum(got.view(np.uint32) == want))}/{want.size}"
                    row["epilogue"] = ep
                row["status"] = "exact" if exact else "no plan of the family"
            except Exception as exc:  # one op's failure is recorded, the run goes on
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                row["traceback"] = traceback.format_exc()[-1500:]
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rec["results"].append(row)
            rec["total_s"] = round(time.perf_counter() - t_all, 1)
            atomic_write_json(path, rec)
    print(f"{'op':<26} {'MxKxN':<15} {'status':<8} {'interval':>8} {'splitK':>6} {'full':>13} epilogue")
    for r in rec["results"]:
        ex = (r.get("exact") or [{}])[0]
        ep = r.get("epilogue") or {}
        best = max(ep, key=lambda k: int(ep[k].split("/")[0])) if ep else "-"
        print(f"{r['op']:<26} {r['M']}x{r['K']}x{r['N']:<6} {r.get('status', '')[:8]:<8} {str(ex.get('promotion_interval', '-')):>8} "
              f"{str(ex.get('split_k', '-')):>6} {ex.get('full', r.get('best_screen', '-')):>13} {best} {ep.get(best, '')}")
    print(f"total {rec.get('total_s')} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
