"""Model-level stack axes on the CPU (issue 17): eager vs ``torch.compile`` and PyTorch vs JAX
on a zoo model, with white-box and black-box identification measured on held-out prompts.

White-box: the verifier recomputes each candidate setting's last-position logits (a first run)
and names the candidate whose digest equals the observed one (a second, independent forward:
the repeatability control). Black-box: only the top-20 token ids and fp32 log-probs of the
observed run; a candidate matches a query when ids and values are equal; the prediction after
``q`` queries is the candidate with most matches (ties: none). Both are measured, never assumed.

:func:`check_setting` turns an unsupported combination (fp8 on a CPU, JAX missing, compile
without a toolchain) into a clear message the caller prints and skips.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from hspi_kernels.identify.stack import infer_stack
from hspi_kernels.models import jax_llama
from hspi_kernels.models import zoo
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.numerics.plans import BlockTree
from hspi_kernels.numerics.plans import Pairwise
from hspi_kernels.numerics.plans import Sequential
from hspi_kernels.numerics.plans import SplitK
from hspi_kernels.numerics.plans import Strided
from hspi_kernels.platform import metadata
from hspi_kernels.probes import catalog
from hspi_kernels.probes import runner
from hspi_kernels.probes.basic import operand

__all__ = ["check_setting", "logits_under", "identification", "run_cpu_axes"]


def check_setting(axis: str, setting: str, device: str = "cpu") -> str | None:
    """Why (axis, setting) cannot run on ``device``, or None."""
    cuda = device.startswith("cuda")
    if axis == "quant" and setting in ("fp8", "fp8-rowwise") and not cuda:
        return "fp8 e4m3 torch._scaled_mm needs a CUDA device (sm_89+); skipped on the CPU"
    if axis == "quant" and setting == "int8" and not cuda:
        return "int8 torch._int_mm serving is measured on the GPU (cuBLASLt); skipped on the CPU"
    if axis == "framework" and setting == "jax":
        try:
            import jax  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"JAX is not installed ({type(exc).__name__}); `pip install jax[cpu]` enables the framework axis"
    if axis == "attention" and setting in ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn") and not cuda:
        return f"{setting} is a CUDA attention backend"
    if axis == "blas" and not cuda:
        return f"{setting} is a cuBLAS flag (GPU only)"
    if axis == "compile" and setting == "compiled":
        import shutil

        if not cuda and shutil.which("g++") is None and shutil.which("c++") is None:
            return "inductor's CPU codegen needs a C++ compiler (g++/c++ not on PATH)"
    return None


def _top(logits: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float32)
    lse = np.log(np.exp((x - x.max(-1, keepdims=True)).astype(np.float64)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True)
    lp = (x - lse).astype(np.float32)
    ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    return ids, np.take_along_axis(lp, ids, -1)


def logits_under(setting: str, model, prompts: np.ndarray, compiled_model=None) -> np.ndarray:
    """Last-position fp32 logits [n, V], one prompt per forward (batch 1), under a setting:
    "eager" | "compiled" (torch) or "jax" (jax_llama on the same weights)."""
    import torch

    if setting == "jax":

        params = jax_llama.params_from_torch(model)
        return np.stack([jax_llama.forward(model, params, p[None])[0, -1] for p in prompts])
    fn = compiled_model if setting == "compiled" else model
    out = []
    with torch.no_grad():
        for p in prompts:
            out.append(fn(torch.as_tensor(p[None], dtype=torch.long)).logits[0, -1].float().numpy().copy())
    return np.stack(out)


def identification(refs: dict[str, np.ndarray], observed: dict[str, np.ndarray], queries: int = 32,
                   trials: int = 200, seed: int = 0) -> dict[str, Any]:
    """White-box (1 query) and black-box (top-20, ``queries`` queries) accuracy of naming the setting
    behind ``observed[s]`` among ``refs`` (same prompts, same order)."""
    labels = sorted(refs)
    n = len(next(iter(refs.values())))
    dig = {s: [refs[s][i].tobytes() for i in range(n)] for s in labels}
    wb_right = wb_total = 0
    for s in labels:
        for i in range(n):
            hits = [c for c in labels if dig[c][i] == observed[s][i].tobytes()]
            wb_total += 1
            wb_right += hits == [s]
    tops = {s: _top(refs[s]) for s in labels}
    rng = np.random.default_rng(seed)
    bb_right = bb_total = 0
    per_query_unique = 0
    for s in labels:
        oid, oval = _top(observed[s])
        match = {c: np.array([np.array_equal(tops[c][0][i], oid[i]) and np.array_equal(tops[c][1][i].view(np.uint32),
                                                                                        oval[i].view(np.uint32))
                              for i in range(n)]) for c in labels}
        per_query_unique += int(sum(match[s][i] and not any(match[c][i] for c in labels if c != s) for i in range(n)))
        for _ in range(trials):
            idx = rng.choice(n, size=min(queries, n), replace=False)
            scores = {c: int(match[c][idx].sum()) for c in labels}
            best = max(scores.values())
            winners = [c for c in labels if scores[c] == best]
            bb_total += 1
            bb_right += winners == [s]
    return {"labels": labels, "prompts": n,
            "whitebox": {"queries": 1, "right": wb_right, "total": wb_total, "accuracy": wb_right / wb_total},
            "blackbox": {"queries": min(queries, n), "k": 20, "trials": bb_total, "right": bb_right,
                         "accuracy": bb_right / bb_total,
                         "single_query_unique_matches": per_query_unique, "single_query_total": n * len(labels)}}


def run_cpu_axes(model_name: str = "tiny-llama", n_prompts: int = 64, length: int = 16, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The CPU model-level measurements: compile (eager vs inductor default) and framework (torch vs
    JAX) on ``model_name`` fp32, batch 1; held-out prompts drawn from a seed the probes never use."""
    import torch


    say = progress or (lambda _m: None)
    model, meta = zoo.build(model_name, seed)
    model.set_attn_implementation("sdpa")
    vocab = meta["vocab_size"]
    prompts = np.random.default_rng(10_000 + seed).integers(3, vocab, size=(n_prompts, length))
    out: dict[str, Any] = {"model": model_name, "dtype": "fp32", "batch": 1, "length": length,
                           "prompts": n_prompts, "prompt_seed": 10_000 + seed, "torch": torch.__version__, "axes": {}}
    # compile
    reason = check_setting("compile", "compiled")
    if reason:
        out["axes"]["compile"] = {"skipped": reason}
    else:
        t = time.time()
        cm = torch.compile(model, dynamic=False)
        refs = {"eager": logits_under("eager", model, prompts), "compiled": logits_under("compiled", model, prompts, cm)}
        obs = {"eager": logits_under("eager", model, prompts), "compiled": logits_under("compiled", model, prompts, cm)}
        rep = {s: bool(np.array_equal(refs[s].view(np.uint32), obs[s].view(np.uint32))) for s in refs}
        differ = int(sum(not np.array_equal(refs["eager"][i].view(np.uint32), refs["compiled"][i].view(np.uint32))
                         for i in range(n_prompts)))
        out["axes"]["compile"] = {"settings": ["eager", "compiled (inductor default)"], "repeatable": rep,
                                  "prompts_with_different_bits": differ, "seconds": round(time.time() - t, 1),
                                  **identification(refs, obs)}
        say(f"compile: {differ}/{n_prompts} prompts differ")
    # framework
    reason = check_setting("framework", "jax")
    if reason:
        out["axes"]["framework"] = {"skipped": reason}
    else:
        t = time.time()
        model.set_attn_implementation("eager")
        refs = {"torch": logits_under("eager", model, prompts), "jax": logits_under("jax", model, prompts)}
        obs = {"torch": logits_under("eager", model, prompts), "jax": logits_under("jax", model, prompts)}
        rep = {s: bool(np.array_equal(refs[s].view(np.uint32), obs[s].view(np.uint32))) for s in refs}
        differ = int(sum(not np.array_equal(refs["torch"][i].view(np.uint32), refs["jax"][i].view(np.uint32))
                         for i in range(n_prompts)))
        out["axes"]["framework"] = {"settings": ["torch (eager attention)", "jax (XLA CPU)"], "repeatable": rep,
                                    "prompts_with_different_bits": differ, "seconds": round(time.time() - t, 1),
                                    "max_abs_diff": float(np.abs(refs["torch"] - refs["jax"]).max()),
                                    **identification(refs, obs)}
        say(f"framework: {differ}/{n_prompts} prompts differ")
    return out


# --------------------------------------------------------------------------------------------
# the CPU lattice record (docs/results/stack/cpu_lattice.json + .md)
# --------------------------------------------------------------------------------------------
GPU_ONLY = {
    "attention backend (math / flash / efficient / cuDNN)": "existing torch-cuda/sdpa/* probes; EQC attn axis",
    "allow_tf32": "torch-cuda/matmul/tf32/* (existing) vs fp32 probes; EQC dtype tf32",
    "allow_bf16_reduced_precision_reduction": "torch-cuda/matmul-allow-bf16-reduced-precision-reduction/*/{on,off}",
    "allow_fp16_reduced_precision_reduction": "torch-cuda/matmul-allow-fp16-reduced-precision-reduction/*/{on,off}",
    "preferred_blas_library cublas / cublaslt": "torch-cuda/matmul-blas-{cublas,cublaslt}/bf16/{8,256}x4096x4096",
    "fp8 e4m3 torch._scaled_mm (tensor / row scales, fast accum on / off)": "torch-cuda/scaled-mm/e4m3/16x4096x4096/*",
    "int8 torch._int_mm": "torch-cuda/int-mm/int8/32x4096x4096 (exact: control)",
    "compile on CUDA (inductor Triton)": "torch-cuda/{rmsnorm,softmax}-{eager,compiled}/fp32/*",
}


def _plan_search(observed: np.ndarray, evaluate_plan, plans) -> list[dict[str, Any]]:
    obs = observed.view(np.uint32)
    rows = [{"plan": repr(p), "matches": int(np.count_nonzero(evaluate_plan(p).view(np.uint32) == obs)),
             "total": int(obs.size)} for p in plans]
    return sorted(rows, key=lambda r: -r["matches"])


def framework_plans() -> dict[str, Any]:
    """Which plan reproduces XLA CPU's / torch CPU's fp32 GEMM and row sum on the probes' operands."""

    out: dict[str, Any] = {}
    gp = catalog.get("jax-cpu/matmul/fp32/64x1024x64")
    A = np.asarray(operand(gp.inputs["x0"]), np.float32)
    B = np.asarray(operand(gp.inputs["x1"]), np.float32)
    gemm_plans = [Sequential("fp32", fma=f) for f in (False, True)]
    gemm_plans += [SplitK(k, inner=Sequential("fp32", fma=f)) for k in (2, 4, 8, 16) for f in (False, True)]
    gemm_plans += [Strided(L, Sequential("fp32", fma=True), c) for L in (4, 8, 16) for c in (Sequential("fp32"), BlockTree(L))]
    sp = catalog.get("jax-cpu/sum/fp32/64x4097")
    x = np.asarray(operand(sp.inputs["x0"]), np.float32)
    sum_plans = [Sequential("fp32"), Pairwise()]
    sum_plans += [Strided(L, Sequential("fp32"), c) for L in (4, 8, 16, 32, 64) for c in (Sequential("fp32"), BlockTree(L), Pairwise())]
    for pid, kind in (("jax-cpu/matmul/fp32/64x1024x64", "gemm"), ("torch-cpu/matmul/fp32/64x1024x64", "gemm"),
                      ("jax-cpu/sum/fp32/64x4097", "sum"), ("torch-cpu/sum/fp32/64x4097", "sum")):
        probe = catalog.get(pid)
        try:
            obs = probe.run()
        except Exception as exc:  # noqa: BLE001 - JAX missing: recorded, the rest continues
            out[pid] = {"skipped": str(exc)}
            continue
        if kind == "gemm":
            rows = _plan_search(obs, lambda p: gemm(p, A, B), gemm_plans)
        else:
            rows = _plan_search(obs, lambda p: evaluate(p, x), sum_plans)
        best = rows[0]
        out[pid] = {"candidates_tried": len(rows), "best": rows[:3],
                    "explained": best["matches"] == best["total"]}
    return out


def cpu_lattice(n_prompts: int = 64, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the CPU stack probes, the plan searches and the model-level axes; the lattice record."""

    say = progress or (lambda _m: None)
    probes = [p for p in catalog.all_probes("all") if p.family.startswith("stack") or
              p.id in ("torch-cpu/matmul/fp32/64x1024x64", "torch-cpu/sum/fp32/64x4097", "torch-cpu/softmax/fp32/64x1000")]
    records = []
    for p in probes:
        records.append(runner.run_probe(p, profile_kernels=False))
        say(f"{p.id}: {records[-1]['status']}")
    fp = {"probes": records}
    try:
        platform = metadata.collect()
    except Exception as exc:  # noqa: BLE001
        platform = {"error": str(exc)}
    return {"schema": "hspi-stack-lattice/1", "platform": platform,
            "probe_axes": infer_stack(fp), "framework_plans": framework_plans(),
            "model_axes": run_cpu_axes(n_prompts=n_prompts, progress=say),
            "gpu_only": GPU_ONLY}
