"""GPU numerics cards and order revelations in one command (H100/H200, <= ~3 minutes):

    python scripts/gpu_card_reveal.py OUT_DIR

Cards (each capped by n_verify so it stays < 60 s): our mma.sync and wgmma kernels (bf16, fp16,
tf32), cuBLAS via torch (bf16/fp16 with fp32 output via torch.mm(out_dtype=...), tf32), Triton
tl.dot if importable. Reveals: cuBLAS bf16 [M,4096]x[4096,4096] for M in {1,8,16,32,64,256} and
[256,4096]x[4096,256] (bf16 output counted in windows of 256; fp32-output variant too), torch.sum
CUDA n=4096 (timed), our reduce_rows / cuda-core / tensor-core kernels (their plan() is the
truth to rediscover). Writes OUT_DIR/card_reveal.json and prints a table last.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gpu_unit(path: str, fmt: str = "bf16", K: int = 64):
    """A black-box mma(a[B,K], b[B,K], c[B]) on the GPU: each test one output of a GEMM
    (the diagonal of A @ B + C, chunked)."""
    import torch

    from hspi_kernels.probes.card import Unit

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "e4m3": torch.float8_e4m3fn,
           "e5m2": torch.float8_e5m2}[fmt]
    cap = torch.cuda.get_device_capability()
    arch = f"sm_{cap[0]}{cap[1]}"
    if fmt in ("e4m3", "e5m2"):
        K = max(K, 128)

    def diag_gemm(fn):
        def mma(a, b, c):
            out = np.empty(len(a), np.float32)
            for s in range(0, len(a), 1024):
                A = torch.from_numpy(a[s:s + 1024]).cuda()
                B = torch.from_numpy(b[s:s + 1024]).cuda()
                C = torch.from_numpy(c[s:s + 1024]).cuda()
                n = len(A)
                pad = (-n) % 64
                if pad:
                    A = torch.cat([A, A.new_zeros(pad, A.shape[1])])
                    B = torch.cat([B, B.new_zeros(pad, B.shape[1])])
                    C = torch.cat([C, C.new_zeros(pad)])
                D = fn(A, B, C)
                out[s:s + n] = torch.diagonal(D)[:n].float().cpu().numpy()
            return out
        return mma

    if path in ("mma.sync", "wgmma"):
        from hspi_kernels.cuda import gemm_tensor_core as tc

        f = tc.mma_sync_gemm if path == "mma.sync" else tc.wgmma_gemm

        def fn(A, B, C):
            Cm = torch.diag_embed(C).contiguous()
            return f(A.to(tdt).contiguous(), B.to(tdt).t().contiguous(), Cm, in_format=fmt)
    elif path == "cublas":
        torch.backends.cuda.matmul.allow_tf32 = fmt == "tf32"

        def fn(A, B, C):
            if fmt in ("bf16", "fp16"):
                D = torch.mm(A.to(tdt), B.to(tdt).t(), out_dtype=torch.float32)
            else:
                D = torch.mm(A, B.t())
            return D + torch.diag_embed(C)  # c added in fp32 after: cards of cuBLAS read c = 0 blocks best
    elif path == "triton":
        from hspi_kernels.triton import gemm as tg

        def fn(A, B, C):
            return tg.matmul(A.to(tdt), B.to(tdt).t().contiguous(), out_dtype=torch.float32) + torch.diag_embed(C)
    else:
        raise ValueError(f"unknown path {path!r}")
    return Unit(f"{path}/{fmt} ({torch.cuda.get_device_name()})", fmt, K, diag_gemm(fn), arch,
                path if path in ("mma.sync", "wgmma") else "mma.sync")


def main(out_dir: str) -> int:
    import torch

    from hspi_kernels import platform as plat
    from hspi_kernels.probes import card as C
    from hspi_kernels.probes import reveal as R
    from hspi_kernels.probes import targets as T

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cap = torch.cuda.get_device_capability()
    arch = f"sm_{cap[0]}{cap[1]}"
    record = {"platform": plat.collect(), "cards": [], "reveals": []}
    rows = []
    t_start = time.perf_counter()

    def guarded(kind, label, fn):
        t0 = time.perf_counter()
        try:
            res = fn()
            res["wall_s"] = round(time.perf_counter() - t0, 2)
            record[kind].append(res)
            if kind == "cards":
                rows.append((label, f"{res['params']['G']}/{res['params']['F']}/{res['params']['out_rounding']}"
                             f"/{res['params']['out_format']}", f"{res['verify']['matches']}/{res['verify']['total']}",
                             res["wall_s"]))
            else:
                rows.append((label, (res["plan"] or "-")[:70], res["replay"] + f" calls={res['calls']}", res["wall_s"]))
        except Exception as exc:  # keep going: one failing probe must not lose the rest
            record[kind].append({"label": label, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-2000:]})
            rows.append((label, "ERROR", str(exc)[:60], round(time.perf_counter() - t0, 2)))
        (out / "card_reveal.json").write_text(json.dumps(record, indent=1, default=str))

    # cards
    for path, fmt in [("mma.sync", "bf16"), ("mma.sync", "fp16"), ("wgmma", "bf16"), ("wgmma", "fp16"),
                      ("mma.sync", "tf32"), ("cublas", "bf16"), ("cublas", "fp16"), ("cublas", "tf32"),
                      ("triton", "bf16")]:
        def run_card(path=path, fmt=fmt):
            res = C.numerics_card(gpu_unit(path, fmt), n_verify=100_000, fit_blocks=3_000)
            res["label"] = f"card {path}/{fmt}"
            try:
                from hspi_kernels.numerics.tensor_core import get_preset

                p = C.model_params(get_preset(arch, fmt, "fp32", path if path != "cublas" and path != "triton" else "mma.sync"))
                res["preset_disagreements"] = {k: (p[k], res["params"][k]) for k in p if p[k] != res["params"][k]}
            except ValueError:
                pass
            return res
        guarded("cards", f"card {path}/{fmt}", run_card)

    # reveals
    def rev(target, label, count=4096):
        def go():
            res = R.reveal(target, replay_count=count).to_json()
            res["label"] = label
            truth = target.extra.get("truth")
            if truth is not None:
                res["truth"] = repr(truth)
            return res
        guarded("reveals", label, go)

    rev(T.torch_sum_cuda(4096), "torch.sum cuda n=4096")
    for M in (1, 8, 16, 32, 64, 256):
        rev(T.torch_matmul_cuda(M, 4096, 4096, "bf16", arch=arch), f"cublas bf16 [{M},4096]x[4096,4096]")
    rev(T.torch_matmul_cuda(256, 4096, 256, "bf16", arch=arch), "cublas bf16 [256,4096]x[4096,256]")
    for M in (1, 256):
        rev(T.torch_matmul_cuda(M, 4096, 4096, "bf16", out_fp32=True, arch=arch), f"cublas bf16 out fp32 [{M},4096]x[4096,4096]")
    rev(T.hspi_reduce_rows(1024, "block_tree"), "hspi reduce_rows block_tree")
    rev(T.hspi_reduce_rows(1024, "warp_xor"), "hspi reduce_rows warp_xor")
    rev(T.hspi_cuda_core_gemm(512, "splitk"), "hspi cuda_core splitk")
    rev(T.hspi_tensor_core_gemm(512, "mma.sync", "bf16", split_k=2, arch=arch), "hspi mma.sync bf16 split_k=2")
    if cap[0] == 9:
        rev(T.hspi_tensor_core_gemm(512, "wgmma", "bf16", arch=arch), "hspi wgmma bf16")

    record["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "card_reveal.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"{'item':44s} {'result':72s} {'match':28s} s")
    for label, what, match, secs in rows:
        print(f"{label:44s} {what:72s} {match:28s} {secs}")
    print(f"total {record['total_s']} s -> {out / 'card_reveal.json'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/gpu_card_reveal.py OUT_DIR")
    sys.exit(main(sys.argv[1]))
