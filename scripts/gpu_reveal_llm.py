"""`hspi reveal torch.matmul.cuda` at the GEMM shapes of real LLMs, on one GPU, as a user runs it.

For every (K, N) of the table below (the q/o, gate/up and down projections of 1B-70B configs,
N capped at 8192) and every M in {1, 2, 4, 8, 16, 64, 256} (batch x tokens): the structured
search (split-K family over chains of tensor-core blocks, masked queries on a sample of K,
hspi_kernels.reveal.order) and a replay of the plan on >= 4096 fresh random outputs (bf16 in,
bf16 out, cuBLAS through torch.matmul). Each shape is time-boxed (30 s); the record is rewritten
after every shape so a timeout keeps what is done. Seconds include host work (building masked
inputs, the CPU emulation of the replay) as a user would see them: ``seconds`` is the whole call
(search, replay, and the output digest on fixed seeded inputs that ``hspi reveal`` records),
``reveal_s`` the part that returns the replayed plan, ``digest_s`` the rest.

    python scripts/gpu_reveal_llm.py OUT_DIR [--budget 480] [--box 30]

Writes OUT_DIR/reveal_llm_shapes.json (platform metadata, per shape: plan, split-K, part sizes,
seconds, calls vs 4 n log2 n, replay N/N, or what was ruled out) and prints a short table last.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

from hspi_kernels import platform as plat
from hspi_kernels.platform.files import atomic_write_json, check_output_dir
from hspi_kernels.reveal import order as R
from hspi_kernels.reveal import targets as T
from hspi_kernels.reveal.gpu import StepTimeout, timebox

# (K, N, where it occurs): in_features x out_features of the linears
SHAPES = [
    (2048, 2048, "llama-3.2-1B q/o"),
    (3072, 3072, "llama-3.2-3B q/o"),
    (4096, 4096, "llama-2/3-7B/8B q/o"),
    (5120, 5120, "llama-2-13B q/o"),
    (8192, 8192, "llama-70B q/o; 1B down K"),
    (11008, 4096, "llama-2-7B down"),
    (13824, 5120, "llama-2-13B down"),
    (14336, 4096, "llama-3-8B / mistral-7B down"),
    (18944, 3584, "qwen2-7B down"),
    (28672, 8192, "llama-70B down"),
]
MS = [1, 2, 4, 8, 16, 64, 256]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all shapes")
    ap.add_argument("--box", type=float, default=30.0, help="seconds per shape")
    ap.add_argument("--replay", type=int, default=4096)
    ap.add_argument("--skip", type=int, default=0, help="leave out the first SKIP shapes (a second session's part)")
    ap.add_argument("--quick", action="store_true", help="CPU check: emulated cuBLAS-like plans, two shapes")
    args = ap.parse_args(argv)
    out = check_output_dir(args.out_dir)
    path = out / "reveal_llm_shapes.json"
    rec = {"platform": plat.metadata.collect(), "budget_s": args.budget, "box_s": args.box, "shapes": []}
    t_all = time.perf_counter()
    shapes = [(K, N, w, M) for K, N, w in SHAPES for M in MS][args.skip:]
    if args.quick:
        from hspi_kernels.numerics import plans as P
        TC = P.TensorCore("sm_90", "bf16", "fp32")
        shapes = [(2048, 512, "quick", 1), (4096, 512, "quick", 4)]
    for K, N, where, M in shapes:
        row = {"K": K, "N": N, "M": M, "where": where}
        left = args.budget - (time.perf_counter() - t_all)
        if left < 3:
            row["status"] = "skipped: session budget spent"
            rec["shapes"].append(row)
            continue
        t0 = time.perf_counter()
        try:
            with timebox(min(args.box, left)):
                if args.quick:
                    truth = P.SplitK(3, inner=P.Chain(TC, k=16), tile=64)
                    target = T.emulated_gemm(truth, K, M=M, N=N, in_format="bf16", block=TC, out_format="bf16")
                else:
                    target = T.torch_matmul_cuda(M, K, N, "bf16")
                r = R.reveal(target, replay_count=args.replay)
            j = r.to_json()
            st = j.get("structure") or {}
            row.update(status="revealed" if r.revealed else "not revealed", plan=j["plan"], plan_json=j["plan_json"],
                       split_k=st.get("split_k"), part_sizes=st.get("part_sizes"), combine=st.get("combine"),
                       layout=st.get("layout"), seconds=round(time.perf_counter() - t0, 2),
                       reveal_s=round(r.seconds, 2), digest_s=round(time.perf_counter() - t0 - r.seconds, 2), calls=r.calls,
                       launches=r.launches, calls_bound_4nlog2n=int(4 * K * math.log2(K)),
                       replay=j["replay"], note=j["note"], digest=j["digest"])
        except StepTimeout as exc:
            row.update(status=f"timeout: {exc}", seconds=round(time.perf_counter() - t0, 2))
        except Exception as exc:  # one shape's failure is recorded; the run goes on
            row.update(status=f"error: {type(exc).__name__}: {exc}", seconds=round(time.perf_counter() - t0, 2),
                       traceback=traceback.format_exc()[-2000:])
        rec["shapes"].append(row)
        rec["total_s"] = round(time.perf_counter() - t_all, 1)
        atomic_write_json(path, rec)
    rows = rec["shapes"]
    done = [r for r in rows if r.get("status") == "revealed"]
    rec["summary"] = {"shapes": len(rows), "revealed": len(done),
                      "within_30s": sum(1 for r in done if r["seconds"] <= 30),
                      "max_seconds": max((r.get("seconds", 0) for r in rows), default=0)}
    atomic_write_json(path, rec)
    print(f"{'K':>6} {'N':>5} {'M':>4} {'status':<13} {'splitK':>6} {'s':>6} {'calls':>6} replay")
    for r in rows:
        print(f"{r['K']:>6} {r['N']:>5} {r['M']:>4} {r['status'][:13]:<13} {str(r.get('split_k') or '-'):>6} "
              f"{r.get('seconds', 0):>6} {r.get('calls', 0):>6} {r.get('replay', '-')}")
    print(f"revealed {len(done)}/{len(rows)}, within 30 s {rec['summary']['within_30s']}, total {rec['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
