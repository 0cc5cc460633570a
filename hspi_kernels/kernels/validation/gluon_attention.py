"""GPU check and benchmark of the Gluon Hopper attention (hspi_kernels/kernels/triton/attention_gluon.py).

    PYTHONPATH=. python3 python -m hspi_kernels.kernels.validation.gluon_attention OUT_DIR [--variants] [--skip-check]

1. correctness against torch SDPA (math backend, fp32 inputs upcast from the bf16/fp16 ones) on
   several shapes (causal / non-causal, D 64 / 128, S 128..4096, B*H small and large), max abs
   error (bound 2e-2 for bf16, 5e-3 for fp16), the tl kernel's error on the same inputs for
   scale;
2. determinism: two runs bit-equal;
3. timing (hspi_kernels.platform.timing.gpu_time_ms: do_bench median, L2 flushed) of ours vs the tl
   kernel (attention.attention, default native config) vs SDPA cuDNN / flash / efficient on
   B4 H16 S4096 D128 bf16 causal and non-causal, 3 alternating rounds, median of the rounds;
   ``--variants`` adds a few fixed config variants of ours to the rounds.
Writes OUT_DIR/attention_gluon.json after every stage (partial results survive a crash or a
hang killed by a timeout) and prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import traceback
from dataclasses import asdict, replace
from hspi_kernels.kernels.triton import attention as A
from hspi_kernels.kernels.triton import attention_gluon as AG
from hspi_kernels.platform import collect
from hspi_kernels.platform.files import atomic_write_text
from hspi_kernels.platform.timing import gpu_time_ms



def _platform():
    import torch

    meta = {}
    try:

        meta = collect()
    except Exception as exc:  # the platform module is optional here
        meta = {"collect_error": repr(exc)[:300]}
    p = torch.cuda.get_device_properties(0)
    meta["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                      "memory_gib": round(p.total_memory / 2**30, 1)}
    import triton

    meta["triton_version"] = triton.__version__
    meta["torch_version"] = torch.__version__
    meta["cudnn"] = torch.backends.cudnn.version()
    return meta


def _sdpa(backend):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
          "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def run(q, k, v, causal):
        with sdpa_kernel([be]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--variants", action="store_true", help="also time config variants of ours")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    out_path = os.path.join(args.out_dir, "attention_gluon.json")

    import torch


    res = {"platform": _platform(), "config": {str(d): asdict(c) for d, c in AG.CONFIG.items()},
           "correctness": [], "determinism": [], "timing": {}, "errors": []}

    def dump():
        atomic_write_text(out_path, json.dumps(res, indent=1, default=str))

    dump()
    print("device:", res["platform"]["device"], flush=True)
    math_ref = _sdpa("math")

    # -- 1/2. correctness and determinism ----------------------------------------------------
    if not args.skip_check:
        shapes = [(1, 1, 128, 128), (2, 3, 256, 64), (1, 2, 384, 128), (2, 4, 1024, 64), (1, 2, 2048, 128),
                  (4, 16, 4096, 128), (32, 16, 512, 64)]
        for (B, H, S, D) in shapes:
            for causal in (True, False):
                for dtype in ((torch.bfloat16, torch.float16) if S <= 1024 else (torch.bfloat16,)):
                    rec = {"shape": [B, H, S, D], "causal": causal, "dtype": str(dtype).split(".")[-1]}
                    try:
                        g = torch.Generator(device="cuda").manual_seed(1234 + S + D)
                        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=dtype, generator=g) for _ in range(3))
                        ref = math_ref(q.float(), k.float(), v.float(), causal)
                        o1 = AG.attention(q, k, v, causal=causal)
                        o2 = AG.attention(q, k, v, causal=causal)
                        torch.cuda.synchronize()
                        err = (o1.float() - ref).abs().max().item()
                        o_tl = A.attention(q, k, v, causal=causal)
                        tl_err = (o_tl.float() - ref).abs().max().item()
                        # same documented order as the tl native kernel: expect the same bits
                        rec["equal_to_tl_native"] = bool(torch.equal(o1, o_tl))
                        rec["max_abs_diff_to_tl_native"] = (o1.float() - o_tl.float()).abs().max().item()
                        bound = 2e-2 if dtype == torch.bfloat16 else 5e-3
                        rec.update(max_abs_err=err, tl_max_abs_err=tl_err, bound=bound, ok=bool(err < bound),
                                   finite=bool(torch.isfinite(o1).all().item()),
                                   deterministic=bool(torch.equal(o1, o2)))
                        del ref
                    except Exception as exc:
                        rec.update(ok=False, error=repr(exc)[:500])
                        res["errors"].append(traceback.format_exc()[-2000:])
                    res["correctness"].append(rec)
                    print("check", rec, flush=True)
                    dump()
        res["determinism"] = all(r.get("deterministic", False) for r in res["correctness"])
        dump()

    # -- 3. timing ------------------------------------------------------------------------------
    impls = {
        "gluon": lambda q, k, v, c: AG.attention(q, k, v, causal=c),
        "tl_native": lambda q, k, v, c: A.attention(q, k, v, causal=c),
        "sdpa_cudnn": _sdpa("cudnn"),
        "sdpa_flash": _sdpa("flash"),
        "sdpa_efficient": _sdpa("efficient"),
    }
    if args.variants:
        base = AG.CONFIG[128]
        variants = {
            "gluon.no_pipeline": replace(base, pipeline=False),
            "gluon.consumers1": replace(base, consumers=1),
            "gluon.stages3": replace(base, num_stages=3),
            "gluon.no_reverse_m": replace(base, reverse_m=False),
            "gluon.fusion_off": replace(base, enable_fp_fusion=False),
        }
        for name, cfg in variants.items():
            impls[name] = (lambda cfg: lambda q, k, v, c: AG.attention(q, k, v, causal=c, config=cfg))(cfg)
        res["variants"] = {n: asdict(c) for n, c in variants.items()}
    B, H, S, D = 4, 16, 4096, 128
    g = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    times = {f"{name}.{'causal' if c else 'full'}": [] for c in (True, False) for name in impls}
    ok_impl = {}
    for name, fn in impls.items():  # warm up / compile, drop what fails
        for c in (True, False):
            key = f"{name}.{'causal' if c else 'full'}"
            try:
                fn(q, k, v, c)
                torch.cuda.synchronize()
                ok_impl[key] = True
            except Exception as exc:
                ok_impl[key] = False
                res["errors"].append(f"{key}: {exc!r}"[:500])
                print("skip", key, repr(exc)[:200], flush=True)
    for r in range(args.rounds):
        for c in (True, False):
            for name, fn in impls.items():
                key = f"{name}.{'causal' if c else 'full'}"
                if not ok_impl[key]:
                    continue
                times[key].append(gpu_time_ms(lambda: fn(q, k, v, c)))
        res["timing"] = {"shape": [B, H, S, D], "dtype": "bf16", "rounds_ms": times,
                         "median_ms": {k_: statistics.median(t) for k_, t in times.items() if t}}
        dump()
        print(f"round {r}:", {k_: round(t[-1], 4) for k_, t in times.items() if t}, flush=True)
    med = res["timing"]["median_ms"]
    flops = {True: 4 * B * H * S * S * D / 2, False: 4 * B * H * S * S * D}
    table = []
    for c in (True, False):
        tag = "causal" if c else "full"
        cud = med.get(f"sdpa_cudnn.{tag}")
        for name in impls:
            key = f"{name}.{tag}"
            if key in med:
                table.append({"impl": key, "ms": med[key], "tflops": flops[c] / med[key] / 1e9,
                              "cudnn_over_this": (cud / med[key]) if cud else None})
    res["table"] = table
    dump()
    if res["correctness"]:
        worst = max((r.get("max_abs_err", math.inf) for r in res["correctness"]), default=None)
        print(f"correctness: all ok={all(r.get('ok') for r in res['correctness'])} worst max_abs_err={worst:.3e} "
              f"deterministic={res['determinism']} "
              f"bit-equal to tl native: {sum(bool(r.get('equal_to_tl_native')) for r in res['correctness'])}"
              f"/{len(res['correctness'])}")
    print(f"{'impl':32s} {'ms':>8s} {'TFLOP/s':>8s} {'cuDNN/this':>10s}")
    for row in table:
        ratio = f"{row['cudnn_over_this']:.3f}" if row["cudnn_over_this"] else "-"
        print(f"{row['impl']:32s} {row['ms']:8.4f} {row['tflops']:8.1f} {ratio:>10s}")
    print("wrote", out_path)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.1f} s")
