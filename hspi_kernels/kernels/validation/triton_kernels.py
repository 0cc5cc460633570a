"""GPU validation of the Triton kernels (:mod:`hspi_kernels.kernels.triton`): GPU bits == plan bits, N/N.

    python -c "from hspi_kernels.kernels.validation import triton_kernels as V; V.run('docs/results')"

- every GEMM variant (bf16/fp16 default, every entry of the M-dependent shape rule, BLOCK_K 32, fixed split-K, persistent TMA, fp32
  tf32 / ieee with and without fusion, fp8 e4m3/e5m2 with and without max_num_imprecise_acc)
  against ``evaluate.gemm(plan)`` on operands zero-padded to a multiple of BLOCK_K, ``==`` on
  int32 views, counts N/N over >= 10^6 outputs per variant at scale=1 (ragged M, N, K);
  variants without a plan (atomic split-K, tf32x3) report an error bound and determinism;
  a negative control (a wrong plan) must mismatch;
- the explicit row / column sums against their plans; ``tl.sum``'s tree revealed
  (``reveal_tl_sum_order``) and the tl.sum row sum checked against the revealed plan;
- batch invariance ``mm(a[:b], w) == mm(a, w)[:b]`` for b in 1..4096, fixed-order GEMM (``matmul``
  without a config: the M-dependent shape rule, so each b may run another tiling) and
  cuBLAS (``torch.matmul``, expected to violate it at some b);
- attention forward (native and exact modes) vs an fp64 reference, error <= 3x that of torch's
  same-precision SDPA; the exact mode's GPU bits (fp32 and input-format outputs) == its CPU replay
  (``attention.replay``), N/N, over ragged / causal / D 64 and 128 / bf16 and fp16 shapes, with
  negative controls (replay at BLOCK_N 32, sequential row sum; native bits vs the replay).
Writes ``triton_kernels_validation.json`` into out_dir and returns the same dict.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hspi_kernels.kernels.validation import record_verdict
from hspi_kernels.numerics.formats import same_bits
from hspi_kernels import platform
from hspi_kernels.kernels.triton import attention as A
from hspi_kernels.kernels.triton import gemm as G
from hspi_kernels.kernels.triton import reduction as R
from hspi_kernels.kernels.triton.gemm import SHAPE_RULE
from hspi_kernels.kernels.triton.gemm import default_config
from hspi_kernels.kernels.triton.gemm import shape_config
from hspi_kernels.numerics.attention_ref import round_to_input
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.numerics.plans import Chain
from hspi_kernels.numerics.plans import Sequential
from hspi_kernels.numerics.plans import SplitK
from hspi_kernels.numerics.plans import TensorCore
from hspi_kernels.numerics.tensor_core import PRESETS
from hspi_kernels.platform.files import atomic_write_text

RESULT_FILE = "triton_kernels_validation.json"
_CHUNK = 1 << 26  # products per CPU evaluator call (rows of A per chunk)
BATCH_SIZES = (1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 32, 33, 64, 100, 128, 256, 333, 512, 1000, 1024, 2048, 4096)


def _bits(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.int32).copy()
    bits[np.isnan(x)] = 0x7FC00000  # NaNs compare equal whatever their payload
    return bits


def count_equal(got: np.ndarray, ref: np.ndarray) -> int:
    return int(np.count_nonzero(same_bits(np.asarray(got, np.float32), np.asarray(ref, np.float32))))


def _backend() -> str:
    try:
        from hspi_kernels import _native  # noqa: F401
        return "native"
    except ImportError:
        return "numpy"


def _plan_gemm(plan, A: np.ndarray, B: np.ndarray, k_pad: int, backend: str) -> np.ndarray:
    """evaluate.gemm(plan) on A, B zero-padded along K to k_pad, in row chunks."""

    M, K = A.shape
    Ap = np.zeros((M, k_pad), np.float32)
    Ap[:, :K] = A
    Bp = np.zeros((k_pad, B.shape[1]), np.float32)
    Bp[:K] = B
    rows = max(1, _CHUNK // max(1, B.shape[1] * k_pad))
    return np.concatenate([gemm(plan, Ap[i:i + rows], Bp, backend=backend) for i in range(0, M, rows)])


def _gemm_variants():


    bf16 = default_config("bf16")
    # every entry of matmul's M-dependent table (same plan as the default: checked N/N here); the
    # large-M persistent TMA entry exists for 16-bit outputs only, so it is checked at its bf16
    # output against the plan rounded once (RNE) (:data:`OUTPUT_FORMAT`)
    rule = [(f"bf16.rule_m{bound}", "bf16", shape_config("bf16", bound)) for bound, _ in SHAPE_RULE]
    rule.append(("bf16.rule_large.persistent_tma", "bf16", shape_config("bf16", 1 << 20, tma=True)))
    return [
        ("bf16", "bf16", bf16),
        *rule,
        ("bf16.block_k32", "bf16", bf16.replace(block_k=32)),
        ("bf16.fusion_on", "bf16", bf16.replace(enable_fp_fusion=True)),
        ("bf16.split_k4.fixed", "bf16", bf16.replace(split_k=4)),
        ("bf16.split_k4.atomic", "bf16", bf16.replace(split_k=4, split_k_combine="atomic")),
        ("bf16.persistent_tma", "bf16", default_config("bf16", persistent=True)),
        ("fp16", "fp16", default_config("fp16")),
        ("fp16.persistent_tma", "fp16", default_config("fp16", persistent=True)),
        ("fp32.tf32", "fp32", default_config("fp32")),
        ("fp32.tf32.split_k3.fixed", "fp32", default_config("fp32", split_k=3)),
        ("fp32.tf32.persistent_tma", "fp32", default_config("fp32", persistent=True)),
        ("fp32.ieee.nofusion", "fp32", default_config("fp32", input_precision="ieee")),
        ("fp32.ieee.fusion", "fp32", default_config("fp32", input_precision="ieee", enable_fp_fusion=True)),
        ("fp32.tf32x3", "fp32", default_config("fp32", input_precision="tf32x3")),
        ("e4m3", "e4m3", default_config("e4m3")),
        ("e4m3.imprecise32", "e4m3", default_config("e4m3", max_num_imprecise_acc=32)),
        ("e4m3.imprecise128", "e4m3", default_config("e4m3", max_num_imprecise_acc=128)),
        ("e5m2", "e5m2", default_config("e5m2")),
        ("e4m3.persistent_tma", "e4m3", default_config("e4m3", persistent=True)),
    ]


# variants checked at a 16-bit output instead of fp32 (the configuration cannot hold an fp32 output)
OUTPUT_FORMAT = {"bf16.rule_large.persistent_tma": "bf16"}


def _torch_dtype(fmt: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
            "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fmt]


def _operands(fmt: str, M: int, N: int, K: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M, K, generator=g)
    B = torch.randn(K, N, generator=g)
    if fmt == "fp32":  # mixed magnitudes, so tf32 truncation and fma show
        A = A * 2.0 ** torch.randint(-8, 9, (M, K), generator=g)
    return A.to(_torch_dtype(fmt)), B.to(_torch_dtype(fmt))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}"


def _swap_blocks(plan, block_of):
    """plan with every Chain's TensorCore replaced by block_of(block) (None: leave the plan)."""
    import dataclasses


    if isinstance(plan, Chain):
        block = block_of(plan.block)
        G = block.model().G
        return Chain(block, k=plan.k if plan.k % G == 0 else G)
    if isinstance(plan, SplitK):
        return dataclasses.replace(plan, inner=_swap_blocks(plan.inner, block_of))
    return plan


def _diagnose(plan, fmt, got, A32, B32, k_pad, backend, rows=16) -> dict:
    """For a variant whose bits miss its plan: the first mismatches, and how many outputs of the
    first ``rows`` rows other candidate plans explain (plan wrong, or kernel wrong?)."""

    ref = _plan_gemm(plan, A32[:rows], B32, k_pad, backend)
    g, r = _bits(got[:rows]), _bits(ref)
    bad = np.argwhere(g != r)[:6]
    diag = {"sample_rows": rows, "sample_outputs": int(g.size), "sample_equal": int(np.count_nonzero(g == r)),
            "first_mismatches": [{"row": int(i), "col": int(j), "gpu": f"{int(g[i, j]) & 0xFFFFFFFF:08x}",
                                  "plan": f"{int(r[i, j]) & 0xFFFFFFFF:08x}", "ulp": int(g[i, j]) - int(r[i, j])}
                                 for i, j in bad],
            "candidates": {}}
    candidates = {"fp32.fma": Sequential("fp32", fma=True, init="zero"), "fp32.nofma": Sequential("fp32", init="zero")}
    block_format = "tf32" if fmt == "fp32" else fmt
    for m in PRESETS.values():  # the same order with every other tensor-core block of this input format
        if m.in_format == block_format:
            try:
                cand = _swap_blocks(plan, lambda _b, m=m: TensorCore(m.arch, m.in_format, m.out_format, path=m.path))
            except ValueError:
                continue
            if cand != plan:
                candidates[m.name] = cand
    for name, cand in candidates.items():
        try:
            diag["candidates"][name] = count_equal(got[:rows], _plan_gemm(cand, A32[:rows], B32, k_pad, backend))
        except Exception as exc:  # noqa: BLE001 - a candidate the evaluator refuses is reported, not fatal
            diag["candidates"][name] = _error(exc)
    return diag


def _validate_gemm_variant(name, fmt, config, side, backend, seed) -> dict:
    import torch


    M, N, K = side, side, 520
    if config.persistent:  # TMA rows (A: K elements, B and C: N elements) must be 16-byte aligned
        N = -(-side // 16) * 16
        K = -(-K // 16) * 16 if fmt in ("e4m3", "e5m2") else K
    out_format = OUTPUT_FORMAT.get(name, "fp32")
    entry = {"name": name, "format": fmt, "config": dict(vars(config)), "M": M, "N": N, "K": K, "outputs": M * N,
             "output_format": out_format}
    A, B = _operands(fmt, M, N, K, seed)
    a, b = A.cuda(), B.cuda()
    out_dtype = _torch_dtype(out_format)
    got = G.matmul(a, b, config, out_dtype=out_dtype).float()
    again = G.matmul(a, b, config, out_dtype=out_dtype).float()
    torch.cuda.synchronize()
    got_np, again_np = got.cpu().numpy(), again.cpu().numpy()
    entry["repeat_equal"] = count_equal(got_np, again_np)
    A32, B32 = A.float().numpy(), B.float().numpy()
    ref64 = A32.astype(np.float64) @ B32.astype(np.float64)
    entry["max_abs_err_vs_fp64"] = float(np.max(np.abs(got_np - ref64)))
    plan = G.plan(config, fmt, K)
    entry["plan"] = None if plan is None else repr(plan)
    if plan is None:
        entry["nondeterministic_by_design"] = not config.deterministic
        entry["passed"] = None
        return entry
    k_pad = G.padded_k(K, config)
    ref = _plan_gemm(plan, A32, B32, k_pad, backend)
    if out_format != "fp32":  # the kernel rounds its fp32 accumulator once (RNE) to the output format
        ref = torch.from_numpy(ref).to(out_dtype).float().numpy()
    entry["plan_equal"] = count_equal(got_np, ref)
    entry["passed"] = entry["plan_equal"] == M * N and entry["repeat_equal"] == M * N
    if entry["plan_equal"] != M * N:
        entry["diagnosis"] = _diagnose(plan, fmt, got_np, A32, B32, k_pad, backend)
    if name == "bf16":  # negative control: an FMA loop is not the tensor-core chain
        wrong = _plan_gemm(Sequential("fp32", fma=True, init="zero"), A32[:64], B32, k_pad, backend)
        entry["negative_control_equal"] = count_equal(got_np[:64], wrong)
        entry["negative_control_outputs"] = 64 * N
        entry["passed"] &= entry["negative_control_equal"] < 64 * N
        # the bf16 output is the fp32 result rounded once (RNE)
        got16 = G.matmul(a, b, config).cpu()
        entry["bf16_output_equal"] = int((got16.view(torch.int16) == torch.from_numpy(ref).to(torch.bfloat16).view(torch.int16)).sum())
        entry["passed"] &= entry["bf16_output_equal"] == M * N
    return entry


def validate_gemm(scale: float, backend: str, seed: int = 0) -> list[dict]:
    """One entry per variant; a variant that raises (compile error, out of resources, ...) is
    recorded with ``passed: False`` and its error, and the others still run."""
    side = max(16, int(round(1031 * scale ** 0.5)))
    out = []
    for name, fmt, config in _gemm_variants():
        t0 = time.time()
        try:
            entry = _validate_gemm_variant(name, fmt, config, side, backend, seed)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed variant
            entry = {"name": name, "format": fmt, "config": dict(vars(config)), "passed": False, "error": _error(exc)}
        entry["seconds"] = round(time.time() - t0, 2)
        print(f"[triton validation] gemm {name}: passed={entry['passed']} "
              f"{entry.get('plan_equal', '-')}/{entry.get('outputs', '-')} {entry.get('error', '')} ({entry['seconds']}s)",
              flush=True)
        out.append(entry)
    return out


def validate_reductions(scale: float, backend: str, seed: int = 0) -> dict:
    import torch


    g = torch.Generator().manual_seed(seed)
    res: dict = {}
    rows = max(64, int(1_000_000 * scale))
    for name, (r, n, block) in {"row.explicit.short": (rows, 97, 64), "row.explicit.long": (max(8, int(4096 * scale)), 10_007, 1024)}.items():
        x = torch.randn(r, n, generator=g) * 2.0 ** torch.randint(-10, 11, (r, n), generator=g)
        got = R.row_sum(x.cuda(), block=block).cpu().numpy()
        ref = evaluate(R.plan(n, block=block), x.numpy(), backend=backend)
        res[name] = {"rows": r, "n": n, "block": block, "equal": count_equal(got, ref), "outputs": r}
    cols = max(64, int(1_000_000 * scale))
    x = torch.randn(67, cols, generator=g)
    got = R.col_sum(x.cuda(), block_r=8, block_c=256).cpu().numpy()
    ref = evaluate(R.plan(67, block=8), np.ascontiguousarray(x.numpy().T), backend=backend)
    res["col.explicit"] = {"rows": 67, "cols": cols, "block_r": 8, "equal": count_equal(got, ref), "outputs": cols}
    res["tl_sum"] = []
    for block, warps in ((256, 4), (1024, 4), (1024, 8)):
        t0 = time.time()
        try:
            tree = R.reveal_tl_sum_order(block=block, num_warps=warps)
            r, n = max(64, int(100_000 * scale)), 4 * block
            x = torch.randn(r, n, generator=g)
            got = R.row_sum(x.cuda(), block=block, order="tl.sum", num_warps=warps).cpu().numpy()
            ref = evaluate(R.plan(n, block=block, order="tl.sum", tl_sum_tree=tree), x.numpy(), backend=backend)
            entry = {"block": block, "num_warps": warps, "tree": tree.to_json(), "rows": r, "n": n,
                     "equal": count_equal(got, ref), "outputs": r}
        except Exception as exc:  # noqa: BLE001 - recorded as a failed revelation
            entry = {"block": block, "num_warps": warps, "error": _error(exc), "equal": 0, "outputs": -1}
        entry["seconds"] = round(time.time() - t0, 2)
        res["tl_sum"].append(entry)
    return res


def validate_batch_invariance(seed: int = 0) -> dict:
    import torch


    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4096, 4096, generator=g).to(torch.bfloat16).cuda()
    w = torch.randn(4096, 4096, generator=g).to(torch.bfloat16).cuda()
    fixed_full, cublas_full = G.matmul(a, w), torch.matmul(a, w)
    res = {"K": 4096, "N": 4096, "fixed_order": {}, "cublas": {}}
    for b in BATCH_SIZES:
        res["fixed_order"][b] = bool(torch.equal(G.matmul(a[:b], w), fixed_full[:b]))
        res["cublas"][b] = bool(torch.equal(torch.matmul(a[:b], w), cublas_full[:b]))
    res["fixed_order_all_invariant"] = all(res["fixed_order"].values())
    res["cublas_violations"] = [b for b, ok in res["cublas"].items() if not ok]
    return res


# exact mode: (B, H, S, D, causal, dtype) -- ragged S (not a multiple of BLOCK_N 64 / BLOCK_M 128),
# causal and not, D 64 and 128, bf16 and fp16
ATTENTION_EXACT_SHAPES = [(1, 2, 700, 128, True, "bf16"), (1, 2, 700, 128, False, "bf16"),
                          (2, 1, 512, 128, True, "bf16"), (1, 2, 333, 64, True, "bf16"),
                          (1, 2, 333, 64, False, "fp16"), (1, 1, 1000, 64, True, "fp16")]


def _same_bits(a, b) -> int:
    import numpy as np

    return int((np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
                == np.ascontiguousarray(b, dtype=np.float32).view(np.uint32)).sum())


def validate_attention_exact(seed: int = 0, shapes=None, backend: str = "auto") -> list[dict]:
    """Exact mode: GPU bits (fp32 output and input-format output) == the CPU replay of the plan
    (``attention.replay``), N/N per shape; negative controls (the replay with BLOCK_N 32, with a
    sequential row sum; the native mode against the exact replay) must be rejected."""
    import torch


    backend = _backend() if backend == "auto" else backend
    g = torch.Generator().manual_seed(seed + 5)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for i, (B, H, S, D, causal, fmt) in enumerate(shapes or ATTENTION_EXACT_SHAPES):
        q, k, v = (torch.randn(B, H, S, D, generator=g).to(dtypes[fmt]).cuda() for _ in range(3))
        config = A.default_config(D, "exact")
        o32 = A.attention(q, k, v, causal=causal, config=config, out_dtype=torch.float32).cpu().numpy()
        o = A.attention(q, k, v, causal=causal, config=config).float().cpu().numpy()
        o_again = A.attention(q, k, v, causal=causal, config=config, out_dtype=torch.float32).cpu().numpy()
        ref32 = A.replay(q, k, v, causal=causal, config=config, round_output=False, backend=backend)

        ref = round_to_input(ref32, fmt)  # the kernel's final cvt.rn of the same div_rn(acc, l)
        n = o.size
        entry = {"kind": "exact", "shape": [B, H, S, D], "causal": causal, "fmt": fmt, "config": repr(config),
                 "outputs": n, "fp32_equal": _same_bits(o32, ref32), "fmt_equal": _same_bits(o, ref),
                 "repeat_equal": _same_bits(o32, o_again), "plan": A.plan(config, fmt=fmt, head_dim=D, causal=causal)}
        entry["passed"] = entry["fp32_equal"] == entry["fmt_equal"] == entry["repeat_equal"] == n
        out.append(entry)
        if i == 0:  # negative controls on the first shape (causal, ragged)
            controls = {
                "replay_block_n_32": A.replay(q, k, v, causal=causal, config=config, block_n=32, round_output=False,
                                              backend=backend),
                "replay_sequential_rowsum": A.replay(q, k, v, causal=causal, config=config,
                                                     rowsum=Sequential("fp32"), round_output=False, backend=backend),
                "native_mode_gpu": A.attention(q, k, v, causal=causal, out_dtype=torch.float32,
                                               config=A.default_config(D, "native")).cpu().numpy(),
            }
            for name, wrong in controls.items():  # a wrong replay vs the GPU; the native GPU bits vs the replay
                eq = _same_bits(ref32 if name == "native_mode_gpu" else o32, wrong)
                out.append({"kind": "negative_control", "name": name, "shape": [B, H, S, D], "causal": causal,
                            "outputs": n, "fp32_equal": eq, "passed": eq < n})
    return out


def validate_attention(seed: int = 0, backend: str = "auto") -> list[dict]:
    """Native mode vs fp64 (error <= 3x torch's bf16 SDPA, deterministic), then the exact mode's
    N/N checks (:func:`validate_attention_exact`)."""
    import torch
    import torch.nn.functional as F


    g = torch.Generator().manual_seed(seed)
    out = []
    for causal in (False, True):
        for S in (1000, 2048):
            q, k, v = (torch.randn(2, 4, S, 128, generator=g).to(torch.bfloat16).cuda() for _ in range(3))
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
            base = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            base_err = (base.double() - ref).abs().max().item()
            for mode in A.MODES:
                o = A.attention(q, k, v, causal=causal, mode=mode)
                o2 = A.attention(q, k, v, causal=causal, mode=mode)
                err = (o.double() - ref).abs().max().item()
                config = A.default_config(128, mode)
                out.append({"kind": "vs_fp64", "mode": mode, "S": S, "causal": causal, "max_err": err,
                            "impl": "tl" if mode == "exact" or A._gluon_mismatch(config, q, k, v, causal, q.dtype)
                            else "gluon",
                            "torch_bf16_max_err": base_err, "ratio": err / base_err if base_err else None,
                            "deterministic": bool(torch.equal(o, o2)),
                            "passed": err <= 3 * base_err and bool(torch.equal(o, o2)),
                            "plan": A.plan(config, causal=causal)})
    return out + validate_attention_gluon(seed) + validate_attention_exact(seed, backend=backend)


# native mode, Gluon vs tl kernel: (B, H, S, D, causal, dtype)
ATTENTION_GLUON_SHAPES = [(2, 4, 1024, 128, True, "bf16"), (2, 4, 1024, 128, False, "bf16"),
                          (1, 8, 2048, 64, True, "fp16"), (1, 8, 2048, 64, False, "bf16"),
                          (1, 4, 128, 128, True, "fp16"), (4, 16, 4096, 128, True, "bf16")]


def validate_attention_gluon(seed: int = 0, shapes=None) -> list[dict]:
    """The native mode's Gluon kernel (``impl="gluon"``, what ``impl="auto"`` runs where it
    applies) against the tl kernel (``impl="tl"``) of the same order: bits equal N/N per shape;
    negative control: the Gluon kernel with fusion off must differ from the tl kernel with fusion
    on. Where the Gluon kernel does not apply (not sm_90, no Gluon), one entry says why
    (``passed`` None)."""
    from dataclasses import replace

    import torch


    g = torch.Generator().manual_seed(seed + 7)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for B, H, S, D, causal, fmt in shapes or ATTENTION_GLUON_SHAPES:
        q, k, v = (torch.randn(B, H, S, D, generator=g).to(dtypes[fmt]).cuda() for _ in range(3))
        native = A.default_config(D, "native")
        why = A._gluon_mismatch(native, q, k, v, causal, q.dtype)
        if why:
            return [{"kind": "gluon_vs_tl", "skipped": why, "passed": None}]
        tl_out = A.attention(q, k, v, causal=causal, config=replace(native, impl="tl"))
        gl_out = A.attention(q, k, v, causal=causal, config=replace(native, impl="gluon"))
        gl_again = A.attention(q, k, v, causal=causal, config=replace(native, impl="gluon"))
        n = tl_out.numel()
        entry = {"kind": "gluon_vs_tl", "shape": [B, H, S, D], "causal": causal, "fmt": fmt, "outputs": n,
                 "equal": int((gl_out.view(torch.int16) == tl_out.view(torch.int16)).sum()),
                 "repeat_equal": int((gl_out.view(torch.int16) == gl_again.view(torch.int16)).sum())}
        if not out:  # negative control once: another order (fusion off) must not pass as the same bits
            other = A.attention(q, k, v, causal=causal, config=replace(native, impl="gluon", enable_fp_fusion=False))
            entry["negative_control_equal"] = int((other.view(torch.int16) == tl_out.view(torch.int16)).sum())
        entry["passed"] = (entry["equal"] == n and entry["repeat_equal"] == n
                           and entry.get("negative_control_equal", 0) < n)
        out.append(entry)
    return out


def verdict_checks(result: dict) -> dict[str, bool | None]:
    """The named checks of a record's verdict (``hspi_kernels.kernels.validation.verdict``): one
    per section that ran (a section that raised is a failed check; no section, no pass)."""
    checks: dict[str, bool | None] = {}
    for key in ("gemm", "reductions", "batch_invariance", "attention"):
        if key not in result:
            continue
        value = result[key]
        if isinstance(value, dict) and "error" in value:
            checks[key] = False
        elif key == "gemm":
            checks[key] = isinstance(value, list) and all(e["passed"] is not False for e in value)
        elif key == "reductions":
            checks[key] = all(v["equal"] == v["outputs"] for k, v in value.items() if k != "tl_sum") and all(
                t["equal"] == t["outputs"] for t in value["tl_sum"])
        elif key == "batch_invariance":
            checks[key] = bool(value["fixed_order_all_invariant"])
        else:
            # passed None: an entry that did not apply here (the Gluon kernel off sm_90), not a failure
            checks[key] = isinstance(value, list) and all(a["passed"] is not False for a in value) \
                and any(a["passed"] for a in value)
    return checks


def run(out_dir, scale: float = 1.0, *, seed: int = 0, backend: str = "auto", sections=None) -> dict:
    """Run the checks on the GPU (every section, or the names in ``sections``: gemm, reductions,
    batch_invariance, attention), write ``out_dir/triton_kernels_validation.json``, return it."""
    import torch
    import triton


    assert torch.cuda.is_available(), "triton_kernels.run needs a CUDA GPU"
    backend = _backend() if backend == "auto" else backend
    t0 = time.time()
    result = {
        "kind": "triton_kernels_validation",
        "platform": platform.collect(),
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name(0),
        "scale": scale,
        "evaluator_backend": backend,
    }
    checks = {"gemm": lambda: validate_gemm(scale, backend, seed),
                "reductions": lambda: validate_reductions(scale, backend, seed),
                "batch_invariance": lambda: validate_batch_invariance(seed),
                "attention": lambda: validate_attention(seed, backend)}
    chosen = {key: section for key, section in checks.items() if sections is None or key in sections}
    if sections is not None and set(sections) - set(checks):
        raise ValueError(f"unknown sections {sorted(set(sections) - set(checks))}; known: {sorted(checks)}")
    result["sections"] = sorted(chosen)
    for key, section in chosen.items():
        t1 = time.time()
        try:
            result[key] = section()
        except Exception as exc:  # noqa: BLE001 - recorded as a failed section, the others still run
            result[key] = {"error": _error(exc), "passed": False}
        print(f"[triton validation] {key} done ({time.time() - t1:.1f}s)", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    record_verdict(result, verdict_checks(result))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    import sys

    r = run(sys.argv[1] if len(sys.argv) > 1 else ".", float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
    print(json.dumps({k: r[k] for k in ("passed", "seconds")}))
