"""Model-level stack axes on the CPU (issue 17): eager vs ``torch.compile`` and PyTorch vs JAX
on a zoo model, with white-box and black-box identification measured on held-out prompts.

White-box: the verifier recomputes each candidate setting's last-position logits (a first run)
and names the candidate whose digest equals the observed one (a second, independent forward:
the repeatability control). Black-box: only the top-20 token ids and fp32 log-probs of the
observed run; a candidate matches a query when ids and values are equal; the prediction after
``q`` queries is the candidate with most matches (ties: none). Both are measured, never assumed.

:func:`check_setting` turns an unsupported combination (fp8 on a CPU, JAX missing, compile
without a toolchain) into a clear message the caller prints and skips.

The GPU driver (:mod:`hspi_kernels.models.gpu_stack`) reuses these pieces on the H200: the
per-setting switches it needs beyond :func:`hspi_kernels.models.eqc.applied` live here
(:func:`cuda_flags`: the cuBLAS flags and deterministic mode; :func:`quantize_fp8` /
:func:`quantize_int8_weight_only`: the fp8 ``torch._scaled_mm`` variants of the stack probes and
an int8 weight-only linear), and :func:`identification` takes ``query_counts`` (black-box
accuracy at several query budgets) and ``precomputed`` per-setting digests / top-k (so a lattice of
many pairs over a 152k vocabulary sorts each run once).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterable, Sequence

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

__all__ = ["check_setting", "logits_under", "identification", "summarize_run", "cuda_flags", "quantize_fp8",
           "quantize_int8_weight_only", "run_cpu_axes"]


def check_setting(axis: str, setting: str, device: str = "cpu") -> str | None:
    """Why (axis, setting) cannot run on ``device``, or None.

    Settings: quant ``fp8*`` (every fp8 ``torch._scaled_mm`` variant), ``int8`` (``torch._int_mm``),
    ``int8-weight-only`` (runs anywhere); attention ``sdpa-flash|efficient|cudnn``; blas (any: cuBLAS
    flags); gemm ``fixed`` (the fixed-order Triton GEMM); compile (any mode but ``eager``);
    framework ``jax``."""
    cuda = device.startswith("cuda")
    if axis == "quant" and setting.startswith("fp8"):
        if not cuda:
            return "fp8 e4m3 torch._scaled_mm needs a CUDA device (sm_89+); skipped on the CPU"
        cap = _cuda_capability()
        if cap is not None and cap < (8, 9):
            return f"fp8 e4m3 torch._scaled_mm needs sm_89+, this GPU is sm_{cap[0]}{cap[1]}"
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
    if axis == "gemm" and setting == "fixed":
        if not cuda:
            return "the fixed-order Triton GEMM override runs on CUDA only"
        if not _importable("triton"):
            return "the fixed-order Triton GEMM needs Triton (pip install triton==3.6.0)"
    if axis == "compile" and setting != "eager":
        import shutil

        if not cuda and shutil.which("g++") is None and shutil.which("c++") is None:
            return "inductor's CPU codegen needs a C++ compiler (g++/c++ not on PATH)"
        if cuda and not _importable("triton"):
            return "inductor's CUDA codegen needs Triton (not importable)"
    return None


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001
        return False
    return True


def _cuda_capability() -> tuple[int, int] | None:
    try:
        import torch

        return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def _top(logits: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ids (by fp32 log-prob, ties: smaller id first, i.e. a stable sort) and their fp32
    log-probs. Rows of finite values use a partition (O(V)) instead of a full sort (same result)."""
    x = logits.astype(np.float32)
    lse = np.log(np.exp((x - x.max(-1, keepdims=True)).astype(np.float64)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True)
    lp = (x - lse).astype(np.float32)
    V = lp.shape[-1]
    if lp.ndim != 2 or k >= V or not np.isfinite(lp).all():
        ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
        return ids, np.take_along_axis(lp, ids, -1)
    ids = np.empty((lp.shape[0], k), dtype=np.int64)
    for r, row in enumerate(lp):
        thr = row[np.argpartition(row, V - k)[V - k:]].min()  # the k-th largest value
        above = np.flatnonzero(row > thr)
        sel = np.concatenate([above, np.flatnonzero(row == thr)[: k - above.size]])
        ids[r] = sel[np.lexsort((sel, -row[sel]))]
    return ids, np.take_along_axis(lp, ids, -1)


def logits_under(setting: str, model, prompts: np.ndarray, compiled_model=None, *, device: str = "cpu",
                 context: Callable[[], Any] | None = None, last_only: bool = False) -> np.ndarray:
    """Last-position fp32 logits [n, V], one prompt per forward (batch 1), under a setting:
    "eager" | "compiled" (torch; ``compiled_model`` is used) or "jax" (jax_llama on the same weights).
    ``context``: a context-manager factory entered once around all forwards (global switches);
    ``last_only``: ask the model for the last position only (``logits_to_keep=1``: the lm_head GEMM
    runs at M = 1, as in serving and in :mod:`hspi_kernels.models.collect`). Outputs stay on the
    device until the end (one transfer)."""
    import torch

    if setting == "jax":

        params = jax_llama.params_from_torch(model)
        return np.stack([jax_llama.forward(model, params, p[None])[0, -1] for p in prompts])
    fn = compiled_model if setting == "compiled" else model
    kw = {"logits_to_keep": 1} if last_only else {}
    out = []
    with torch.no_grad(), (context() if context is not None else contextlib.nullcontext()):
        for p in prompts:
            x = torch.as_tensor(p[None], dtype=torch.long)
            if device != "cpu":
                x = x.to(device)
            out.append(fn(x, **kw).logits[0, -1].float())
    return torch.stack(out).cpu().numpy()


def summarize_run(logits: np.ndarray, k: int = 20) -> dict[str, Any]:
    """Per-prompt bit digests (``bits.digest`` of each fp32 logits row) and the top-``k`` ids /
    fp32 log-probs of one run: what :func:`identification` compares (``precomputed``)."""
    from hspi_kernels.numerics.bits import digest

    x = np.ascontiguousarray(logits, dtype=np.float32)
    ids, vals = _top(x, k)
    return {"digests": [digest(row) for row in x], "top": (ids, vals)}


def identification(refs: dict[str, np.ndarray] | None, observed: dict[str, np.ndarray] | None, queries: int = 32,
                   trials: int = 200, seed: int = 0, *, query_counts: Sequence[int] = (),
                   precomputed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """White-box (1 query) and black-box (top-20, ``queries`` queries) accuracy of naming the setting
    behind ``observed[s]`` among ``refs`` (same prompts, same order).

    ``whitebox``: per prompt, the candidates whose logits digest equals the observed one; right when
    only the true setting does (a prompt where two settings give the same bits is a tie: wrong).
    ``whitebox_all_prompts``: the verifier recomputes every prompt; right when only the true setting
    matches the observation on all of them (one decision per setting). ``blackbox_at``: the black-box
    accuracy for each budget in ``query_counts`` (``blackbox`` is the one at ``queries``).
    ``precomputed``: {label: {"ref": summarize_run(ref), "obs": summarize_run(observation)}}, used
    instead of ``refs`` / ``observed`` (which may then be None)."""
    if precomputed is None:
        precomputed = {s: {"ref": summarize_run(refs[s]), "obs": summarize_run(observed[s])} for s in refs}
    labels = sorted(precomputed)
    n = len(precomputed[labels[0]]["ref"]["digests"])
    dig = {s: precomputed[s]["ref"]["digests"] for s in labels}
    wb_right = wb_total = 0
    all_right = 0
    for s in labels:
        od = precomputed[s]["obs"]["digests"]
        for i in range(n):
            hits = [c for c in labels if dig[c][i] == od[i]]
            wb_total += 1
            wb_right += hits == [s]
        all_right += [c for c in labels if dig[c] == od] == [s]
    tops = {s: precomputed[s]["ref"]["top"] for s in labels}
    budgets = sorted({min(q, n) for q in (queries, *query_counts)})
    right = {q: 0 for q in budgets}
    total = {q: 0 for q in budgets}
    rng = np.random.default_rng(seed)
    per_query_unique = 0
    for s in labels:
        oid, oval = precomputed[s]["obs"]["top"]
        match = {c: np.array([np.array_equal(tops[c][0][i], oid[i]) and np.array_equal(tops[c][1][i].view(np.uint32),
                                                                                        oval[i].view(np.uint32))
                              for i in range(n)]) for c in labels}
        per_query_unique += int(sum(match[s][i] and not any(match[c][i] for c in labels if c != s) for i in range(n)))
        for q in budgets:
            for _ in range(trials):
                idx = rng.choice(n, size=q, replace=False)
                scores = {c: int(match[c][idx].sum()) for c in labels}
                best = max(scores.values())
                winners = [c for c in labels if scores[c] == best]
                total[q] += 1
                right[q] += winners == [s]
    at = {str(q): {"queries": q, "k": 20, "trials": total[q], "right": right[q], "accuracy": right[q] / total[q]}
          for q in budgets}
    q0 = str(min(queries, n))
    return {"labels": labels, "prompts": n,
            "whitebox": {"queries": 1, "right": wb_right, "total": wb_total, "accuracy": wb_right / wb_total},
            "whitebox_all_prompts": {"queries": n, "right": all_right, "total": len(labels),
                                     "accuracy": all_right / len(labels)},
            "blackbox": {**at[q0], "single_query_unique_matches": per_query_unique, "single_query_total": n * len(labels)},
            "blackbox_at": at}


# --------------------------------------------------------------------------------------------
# setting switches beyond eqc.applied (cuBLAS flags, deterministic mode, fp8 / int8 linears)
# --------------------------------------------------------------------------------------------
CUDA_FLAGS = ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction",
              "preferred_blas_library", "deterministic")
DETERMINISTIC_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def cuda_flags(flags: Iterable[tuple[str, Any]] = ()):
    """Set global cuBLAS / determinism switches for the body and restore them after (also on error).
    ``flags``: (name, value) with name in :data:`CUDA_FLAGS`; ``preferred_blas_library`` takes
    "cublas" | "cublaslt"; ``deterministic`` True (or "warn": ``warn_only=True``) sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in
    ``os.environ`` (what ``use_deterministic_algorithms`` checks for cuBLAS) and
    ``torch.use_deterministic_algorithms(True)``. The cuBLAS workspace itself was sized when this
    process first used cuBLAS, so setting the variable here does not resize it."""
    import torch

    m = torch.backends.cuda.matmul
    undo: list[Callable[[], None]] = []
    try:
        for name, value in flags:
            if name in ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction"):
                old = getattr(m, name)
                setattr(m, name, bool(value))
                undo.append(lambda name=name, old=old: setattr(m, name, old))
            elif name == "preferred_blas_library":
                old = torch.backends.cuda.preferred_blas_library()
                torch.backends.cuda.preferred_blas_library(value)
                undo.append(lambda old=old: torch.backends.cuda.preferred_blas_library(old))
            elif name == "deterministic":
                old_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
                old_det = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
                if value:
                    os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_WORKSPACE

                def restore(old_env=old_env, old_det=old_det):
                    torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])
                    if old_env is None:
                        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
                    else:
                        os.environ["CUBLAS_WORKSPACE_CONFIG"] = old_env

                undo.append(restore)
                torch.use_deterministic_algorithms(bool(value), warn_only=value == "warn")
            else:
                raise ValueError(f"unknown flag {name!r}: {CUDA_FLAGS}")
        yield
    finally:
        for u in reversed(undo):
            u()


def _replace_linears(model, make, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every nn.Linear whose qualified name contains none of ``skip`` by ``make(linear)``."""
    import torch

    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(s in full for s in skip) or not isinstance(child, torch.nn.Linear):
                continue
            setattr(module, child_name, make(child))
            count += 1
    return count


def quantize_fp8(model, scaling: str = "tensor", fast_accum: bool = False, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Every nn.Linear but ``skip`` as a real fp8 e4m3 GEMM (``torch._scaled_mm``, out in the
    activation dtype), as the stack probes quantise their operands (``probes/stack.py``
    ``_scaled_mm``): ``scaling="tensor"``: one scale per weight and per activation tensor (amax /
    448; with ``fast_accum=False`` the same computation as the EQC ``quant=fp8``); ``"row"``: a scale
    per activation row (token) [M, 1] and per weight output channel [1, N]. ``fast_accum``:
    ``use_fast_accum`` (no promotion of the wgmma accumulator). Returns the count replaced."""
    import torch

    if scaling not in ("tensor", "row"):
        raise ValueError(f"scaling {scaling!r}: tensor | row")
    fmax = torch.finfo(torch.float8_e4m3fn).max

    class Fp8Linear(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            w = lin.weight.detach().float()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            if scaling == "tensor":
                ws = (w.abs().amax().clamp(min=1e-12) / fmax).reshape(())
                self.register_buffer("wq", (w / ws).clamp(-fmax, fmax).to(torch.float8_e4m3fn))
                self.register_buffer("w_scale", ws)
            else:
                ws = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / fmax  # [N, 1]
                self.register_buffer("wq", (w / ws).clamp(-fmax, fmax).to(torch.float8_e4m3fn))
                self.register_buffer("w_scale", ws.t().contiguous())  # [1, N]

        def forward(self, x):
            shape = x.shape
            x2 = x.reshape(-1, self.in_features).float()
            if scaling == "tensor":
                xs = (x2.abs().amax().clamp(min=1e-12) / fmax).reshape(())
            else:
                xs = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / fmax  # [M, 1]
            xq = (x2 / xs).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
            y = torch._scaled_mm(xq, self.wq.t(), scale_a=xs, scale_b=self.w_scale, out_dtype=x.dtype,
                                 use_fast_accum=fast_accum)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features)

    return _replace_linears(model, Fp8Linear, skip)


def quantize_int8_weight_only(model, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Every nn.Linear but ``skip`` with int8 weights (per output channel, amax / 127, round to
    nearest), dequantised to the activation dtype at each forward and run as a plain GEMM (the
    unfused weight-only path; a fused dequant-GEMM kernel is another setting)."""
    import torch

    class Int8WeightOnly(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            w = lin.weight.detach().float()
            self.bias = None if lin.bias is None else torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.register_buffer("w_scale", s)
            self.register_buffer("wq", torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8))

        def forward(self, x):
            w = (self.wq.float() * self.w_scale[:, None]).to(x.dtype)
            return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    return _replace_linears(model, Int8WeightOnly, skip)


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
