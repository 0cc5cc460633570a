"""PyTorch vs JAX/XLA, op by op (issue 17 item 5): which GEMM and reduction orders each framework
runs at the shapes of the zoo models, found by plan search, so that a framework divergence is
explained ("XLA's CPU dot splits K in two here, torch's does not") rather than only detected.

For every linear shape of the chosen zoo models (M = 16 rows, K x N of the q / MLP / down
projections) and every RMSNorm width, the same seeded fp32 operands go through ``torch`` and
through ``jax.numpy`` (``Precision.HIGHEST``) on one device, and the plan candidates of
:func:`hspi_kernels.trace.explain.gemm_candidates` (plus the CPU BLAS cache-blocking orders of
:func:`blocked_candidates`) / ``reduction_candidates`` are searched for each side's bits: screened on a 2 x 64 corner, then checked N/N on all outputs. Per shape: outputs that
differ between the frameworks, each side's plans, and the cause ("GEMM order: torch A vs XLA B" when
both have a plan; "kernel choice (no plan for X)" otherwise).

    python -m hspi_kernels.trace.frameworks OUT_DIR [--models qwen2.5-0.5b,llama-3.2-1b,gpt2-small] [--device cpu]

Writes ``OUT_DIR/framework_ops.json`` (platform metadata, rows) and ``framework_ops.md``; prints the
table. Needs JAX (``pip install 'jax[cpu]'``); without it, a one-line message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hspi_kernels import platform as plat
from hspi_kernels.numerics import evaluate
from hspi_kernels.platform.errors import one_line
from hspi_kernels.platform.files import atomic_write_text, check_output_dir
from hspi_kernels.trace import explain as E

__all__ = ["shapes", "blocked_candidates", "gemm_row", "reduction_row", "render", "main"]

F32 = np.float32
# (hidden, intermediate) of the zoo models' configs
WIDTHS = {"qwen2.5-0.5b": (896, 4864), "llama-3.2-1b": (2048, 8192), "gpt2-small": (768, 3072),
          "tiny-llama": (64, 192)}


def shapes(models) -> list[tuple[str, int, int]]:
    """(label, K, N) of the linears: q / o projection (K = N = hidden), up (hidden -> inter),
    down (inter -> hidden)."""
    out = []
    for m in models:
        h, i = WIDTHS[m]
        out += [(f"{m} q_proj", h, h), (f"{m} up_proj", h, i), (f"{m} down_proj", i, h)]
    return out


def blocked_candidates(K: int) -> list:
    """CPU BLAS cache blocking: K cut into blocks of ``kc`` (the last one shorter), each a
    sequential fma chain, the block results combined sequentially or pairwise (what Eigen's and
    oneDNN's GEMM kernels do with their kc loop): ``SplitK(ceil(K / kc), tile=kc)``."""
    from hspi_kernels.numerics import plans as P

    out = []
    for kc in (64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 1024):
        if kc >= K:
            continue
        for comb in (P.Sequential(), P.Pairwise()):
            out.append(P.SplitK(-(-K // kc), tile=kc, inner=P.Sequential("fp32", fma=True), combine=comb))
    return out


def _plans(cands, a, b, out, evaluate_fn) -> list[str]:
    """Plans whose bits equal ``out``: screened on a 2 x 64 corner, then N/N on all outputs."""
    corner = out[:2, :64]
    hits = []
    for p in cands:
        try:
            if not np.array_equal(evaluate_fn(p, a[:2], b[:, :64]).view(np.uint32), corner.view(np.uint32)):
                continue
            if np.array_equal(evaluate_fn(p, a, b).view(np.uint32), out.view(np.uint32)):
                hits.append(repr(p))
        except ValueError:
            continue
    return hits


def _cause(eq: int, n: int, pa: list[str], pb: list[str]) -> str:
    if eq == n:
        return "same bits"
    if pa and pb:
        return f"GEMM order: torch {pa[0]} vs XLA {pb[0]}"
    missing = [s for s, p in (("torch", pa), ("XLA", pb)) if not p]
    return f"kernel choice (no plan for {' and '.join(missing)})"


def gemm_row(torch, jnp, jax, label: str, M: int, K: int, N: int, seed: int, device: str) -> dict[str, Any]:
    rng = np.random.default_rng([seed, K, N])
    a = rng.standard_normal((M, K)).astype(F32)
    b = rng.standard_normal((K, N)).astype(F32)
    t0 = time.perf_counter()
    dev = torch.device(device)
    tt = (torch.from_numpy(a).to(dev) @ torch.from_numpy(b).to(dev)).cpu().numpy()
    jd = jax.devices("gpu" if device.startswith("cuda") else "cpu")[0]
    jj = np.asarray(jnp.dot(jax.device_put(a, jd), jax.device_put(b, jd), precision=jax.lax.Precision.HIGHEST))
    eq = int((tt.view(np.uint32) == jj.view(np.uint32)).sum())
    cands = E.gemm_candidates(K, "fp32", (), (), tensor_core=False) + blocked_candidates(K)
    pa = _plans(cands, a, b, tt, evaluate.gemm)
    pb = _plans(cands, a, b, jj, evaluate.gemm)
    return {"op": "gemm", "label": label, "M": M, "K": K, "N": N, "equal": eq, "total": int(tt.size),
            "torch_plans": pa, "xla_plans": pb, "candidates": len(cands), "cause": _cause(eq, tt.size, pa, pb),
            "seconds": round(time.perf_counter() - t0, 2)}


def reduction_row(torch, jnp, jax, label: str, n: int, seed: int, device: str) -> dict[str, Any]:
    """mean(x^2) over the last dim (RMSNorm's statistic), 16 rows of width n."""
    rng = np.random.default_rng([seed, n])
    x = rng.standard_normal((16, n)).astype(F32)
    sq = (x * x).astype(F32)
    dev = torch.device(device)
    tt = torch.from_numpy(sq).to(dev).mean(-1).cpu().numpy()
    jd = jax.devices("gpu" if device.startswith("cuda") else "cpu")[0]
    jj = np.asarray(jnp.mean(jax.device_put(sq, jd), axis=-1))
    eq = int((tt.view(np.uint32) == jj.view(np.uint32)).sum())
    res = {}
    for side, out in (("torch", tt), ("xla", jj)):
        hits = []
        for p in E.reduction_candidates(n):
            s = evaluate.evaluate(p, sq)
            for ep, val in (("div", (s / F32(n)).astype(F32)), ("mul-recip", (s * (F32(1) / F32(n))).astype(F32))):
                if np.array_equal(val.view(np.uint32), out.view(np.uint32)):
                    hits.append(f"{p!r} then {ep}")
        res[side] = hits
    return {"op": "mean", "label": label, "n": n, "equal": eq, "total": int(tt.size), "torch_plans": res["torch"],
            "xla_plans": res["xla"], "cause": _cause(eq, tt.size, res["torch"], res["xla"]).replace("GEMM", "reduction")}


def render(rec: dict) -> str:
    lines = [f"# PyTorch vs JAX/XLA per op on {rec['device']} (fp32, Precision.HIGHEST)", "",
             f"{rec['summary']['differ']} of {rec['summary']['rows']} shapes differ in bits; "
             f"{rec['summary']['explained']} of those explained by plans on both sides.", "",
             "| op | shape | equal | torch plan | XLA plan | cause |", "|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        shape = f"{r['M']}x{r['K']}x{r['N']}" if r["op"] == "gemm" else f"16x{r['n']}"
        lines.append(f"| {r['label']} | {shape} | {r['equal']}/{r['total']} | {(r['torch_plans'] or ['-'])[0]} | "
                     f"{(r['xla_plans'] or ['-'])[0]} | {r['cause']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--models", default="qwen2.5-0.5b,llama-3.2-1b,gpt2-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in WIDTHS]
    if bad:
        print(f"framework ops: unknown model(s) {bad}: expected some of {sorted(WIDTHS)}", file=sys.stderr)
        return 2
    try:
        check_output_dir(args.out_dir)
    except (OSError, ValueError) as exc:
        print(f"framework ops: {exc}", file=sys.stderr)
        return 2
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("framework ops: JAX is not installed (pip install 'jax[cpu]'); nothing was run", file=sys.stderr)
        return 2
    import torch

    jax.config.update("jax_enable_x64", False)
    try:
        rows = [gemm_row(torch, jnp, jax, lab, 16, K, N, args.seed, args.device) for lab, K, N in shapes(models)]
        rows += [reduction_row(torch, jnp, jax, f"{m} RMSNorm mean(x^2)", WIDTHS[m][0], args.seed, args.device)
                 for m in models]
    except Exception as exc:  # e.g. --device cuda without a GPU (torch raises AssertionError), a JAX without one
        print(f"framework ops: {one_line(exc, 380)}", file=sys.stderr)
        return 1
    differ = [r for r in rows if r["equal"] != r["total"]]
    meta = plat.collect()
    rec = {"kind": "hspi-framework-ops/1", "platform": meta, "label": plat.platform_label(meta),
           "device": args.device, "jax": jax.__version__, "models": models, "rows": rows,
           "summary": {"rows": len(rows), "differ": len(differ),
                       "explained": sum(r["cause"].startswith(("GEMM order", "reduction order")) for r in differ)}}
    atomic_write_text(args.out_dir / "framework_ops.json", json.dumps(rec, indent=1, default=str))
    atomic_write_text(args.out_dir / "framework_ops.md", render(rec))
    print(render(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
