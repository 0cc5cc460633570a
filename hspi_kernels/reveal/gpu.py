"""The GPU side of revelation: card units on real tensor-core paths (``gpu_unit``, what
`hspi card --path mma.sync|wgmma|cublas|triton` measures) and the time-boxed session of numerics
cards and order revelations (``session``; H100/H200, <= 240 s in all):

    python -m hspi_kernels.reveal.gpu OUT_DIR [--budget 240]     (scripts/gpu_card_reveal.py drives it)

Cards: our mma.sync and wgmma kernels x {bf16, fp16, fp16->fp16, tf32} and wgmma x {e4m3, e5m2}
(fp8 output e8m13, c != 0 included), cuBLAS via torch (bf16/fp16 with fp32 output via
torch.mm(out_dtype=...), tf32) and Triton tl.dot (bf16): those add C after the GEMM in fp32, which
the card finds as its ``epilogue`` (c = 0 and c != 0 verified separately). Reveals: torch.sum CUDA
n=4096, then cuBLAS bf16 [M,4096]x[4096,4096] for M in {1,8,16,32,64,256} and [256,4096]x[4096,256]
(split-K family confirmed by masking, replayed on 4096 fresh outputs, output digest on seeded
inputs for the H100-vs-H200 table: ``hspi_kernels.reveal.order.compare_records``, driven by
scripts/compare_reveals.py A.json B.json).

Every step is time-boxed (SIGALRM) and the compact record OUT_DIR/card_reveal.json is rewritten
after each step, so a timeout still leaves everything done so far. A short table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from hspi_kernels.platform.files import atomic_write_json
from hspi_kernels import platform as plat
from hspi_kernels.kernels.cuda import gemm_tensor_core as tc
from hspi_kernels.numerics.tensor_core import get_preset
from hspi_kernels.kernels.triton import gemm as tg
from hspi_kernels.reveal.card import Unit, model_params, numerics_card
from hspi_kernels.reveal import order as R
from hspi_kernels.reveal import targets as T


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def timebox(seconds: float):
    """Raise StepTimeout in this (main) thread after ``seconds``."""
    def fire(signum, frame):
        raise StepTimeout(f"time box of {seconds:.0f} s exceeded")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


CHUNK = 2048  # blocks per GEMM launch of a card unit (the diagonal of a CHUNK x CHUNK output)
_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "tf32": "float32", "e4m3": "float8_e4m3fn",
                "e5m2": "float8_e5m2"}


def gpu_unit(path: str, fmt: str = "bf16", K: int | None = None, out_format: str = "fp32"):
    """A black-box mma(a[B,K], b[B,K], c[B]) on the GPU: each block is one diagonal output of
    ``A @ B^T (+ C)`` over chunks of CHUNK blocks. mma.sync / wgmma take C inside the kernel; the
    cuBLAS and Triton paths compute ``A @ B^T`` and add ``diag(C)`` in fp32 afterwards."""
    import torch

    tdt = getattr(torch, _TORCH_DTYPE[fmt])
    cap = torch.cuda.get_device_capability()
    arch = f"sm_{cap[0]}{cap[1]}"
    K = K or (128 if fmt in ("e4m3", "e5m2") else 64)
    cdt = torch.float16 if out_format == "fp16" else torch.float32

    def diag_gemm(fn):
        def mma(a, b, c):
            out = np.empty(len(a), np.float32)
            for s in range(0, len(a), CHUNK):
                A = torch.from_numpy(np.ascontiguousarray(a[s:s + CHUNK])).cuda()
                B = torch.from_numpy(np.ascontiguousarray(b[s:s + CHUNK])).cuda()
                C = torch.from_numpy(np.ascontiguousarray(c[s:s + CHUNK])).cuda()
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
        f = tc.mma_sync_gemm if path == "mma.sync" else tc.wgmma_gemm

        def fn(A, B, C):
            Cm = torch.diag_embed(C).to(cdt).contiguous()
            return f(A.to(tdt).contiguous(), B.to(tdt).t().contiguous(), Cm, in_format=fmt, out_format=out_format)
    elif path == "cublas":
        def fn(A, B, C):
            torch.backends.cuda.matmul.allow_tf32 = fmt == "tf32"
            if fmt in ("bf16", "fp16"):
                D = torch.mm(A.to(tdt), B.to(tdt).t(), out_dtype=torch.float32)
            else:
                D = torch.mm(A, B.t())
            return D + torch.diag_embed(C)
    elif path == "triton":
        def fn(A, B, C):
            return tg.matmul(A.to(tdt), B.to(tdt).t().contiguous(), out_dtype=torch.float32) + torch.diag_embed(C)
    else:
        raise ValueError(f"unknown path {path!r}")
    tag = f"{fmt}->{out_format}" if out_format != "fp32" else fmt
    return Unit(f"{path}/{tag} ({torch.cuda.get_device_name()})", fmt, K, diag_gemm(fn), arch,
                path if path in ("mma.sync", "wgmma") else "mma.sync")


CARDS = [("mma.sync", "bf16", "fp32"), ("mma.sync", "fp16", "fp32"), ("mma.sync", "tf32", "fp32"),
         ("mma.sync", "fp16", "fp16"), ("wgmma", "bf16", "fp32"), ("wgmma", "fp16", "fp32"),
         ("wgmma", "tf32", "fp32"), ("wgmma", "fp16", "fp16"), ("wgmma", "e4m3", "fp32"), ("wgmma", "e5m2", "fp32"),
         ("cublas", "bf16", "fp32"), ("cublas", "fp16", "fp32"), ("cublas", "tf32", "fp32"), ("triton", "bf16", "fp32")]
GEMM_SHAPES = [(M, 4096, 4096) for M in (1, 8, 16, 32, 64, 256)] + [(256, 4096, 256)]  # (M, K, N)


def _compact_card(res: dict) -> dict:
    keep = ("unit", "in_format", "K", "params", "indistinguishable", "verify", "verify_c0", "verify_c", "exact",
            "seconds", "fit")
    out = {k: res[k] for k in keep if k in res}
    out["features"] = {k: v.get("value") for k, v in res.get("features", {}).items()}
    out["evidence"] = {k: v.get("evidence") for k, v in res.get("features", {}).items()}
    return out


def session(out_dir: str, budget: float = 240.0) -> int:
    """Reveals, then cards, each time-boxed; OUT_DIR/card_reveal.json rewritten after every step;
    a table printed last. Returns 0 (a failing step is recorded, not raised)."""
    import torch

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cap = torch.cuda.get_device_capability()
    arch = f"sm_{cap[0]}{cap[1]}"
    record = {"platform": plat.collect(), "budget_s": budget, "cards": [], "reveals": []}
    rows = []
    left = lambda: budget - (time.perf_counter() - t_start)

    def save():
        record["total_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(out / "card_reveal.json", record, default=str, allow_nan=True)  # rewritten per step

    def step(kind, label, fn, box):
        t0 = time.perf_counter()
        box = min(box, left() - 2)
        if box < 3:
            record[kind].append({"label": label, "skipped": "total budget spent"})
            rows.append((label, "SKIPPED", "budget", 0.0))
            save()
            return
        try:
            with timebox(box):
                res = fn()
            res["label"] = label
            res["wall_s"] = round(time.perf_counter() - t0, 2)
            record[kind].append(res)
            if kind == "cards":
                p = res["params"]
                rows.append((label, f"G={p['G']} F={p['F']} {p['out_format']} {p['out_rounding']} {p['epilogue']}",
                             f"{res['verify']['matches']}/{res['verify']['total']} (c=0 {res['verify_c0']['matches']}/"
                             f"{res['verify_c0']['total']})", res["wall_s"]))
            else:
                s = res.get("structure") or {}
                what = (f"P={s.get('split_k')} parts={s.get('part_sizes')} {s.get('combine')}" if s
                        else (res.get("plan") or "-")[:60])
                dig = (res.get("digest") or {}).get("sha256", "")[:10]
                rows.append((label, what[:70], f"{res['replay']} launches={res['launches']} bits {dig}", res["wall_s"]))
        except Exception as exc:  # one failing or slow step must not lose the rest
            record[kind].append({"label": label, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-1500:]})
            rows.append((label, "ERROR", f"{type(exc).__name__}: {exc}"[:60], round(time.perf_counter() - t0, 2)))
        save()

    # -- reveals --------------------------------------------------------------------------------
    def rev(target, label, box, count=4096):
        def go():
            return R.reveal(target, replay_count=count).to_json()
        step("reveals", label, go, box)

    rev(T.torch_sum_cuda(4096), "torch.sum cuda n=4096", box=15)
    for M, K, N in GEMM_SHAPES:
        rev(T.torch_matmul_cuda(M, K, N, "bf16", arch=arch), f"cublas bf16 [{M},{K}]x[{K},{N}]", box=30)

    # -- cards (after the reveals, which are the key acceptance; about 8 s each) ------------------
    for path, fmt, out_fmt in CARDS:
        def run_card(path=path, fmt=fmt, out_fmt=out_fmt):
            res = _compact_card(numerics_card(gpu_unit(path, fmt, out_format=out_fmt), n_verify=100_000,
                                                fit_blocks=3_000))
            try:
                pp = path if path in ("mma.sync", "wgmma") else "wgmma"
                want_out = out_fmt if fmt not in ("e4m3", "e5m2") else "e8m13"
                p = model_params(get_preset(arch, fmt, want_out, pp))
                res["preset_disagreements"] = {k: (p[k], res["params"][k]) for k in p if p[k] != res["params"][k]}
            except ValueError:
                pass
            return res
        tag = fmt if out_fmt == "fp32" else f"{fmt}->{out_fmt}"
        step("cards", f"card {path}/{tag}", run_card, box=15)

    save()
    print(f"{'item':36s} {'result':70s} {'match':34s} s")
    for label, what, match, secs in rows:
        print(f"{label:36s} {what:70s} {match:34s} {secs}")
    print(f"total {record['total_s']} s (budget {budget}) -> {out / 'card_reveal.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for the whole run")
    a = ap.parse_args(argv)
    return session(a.out_dir, a.budget)


if __name__ == "__main__":
    sys.exit(main())
