"""Model-level software-stack lattice on one GPU (issue 17): which settings of each stack axis a
verifier can tell apart from a model's outputs, white-box and black-box.

    python -m hspi_kernels.models.gpu_stack OUT_DIR [--model qwen2.5-0.5b] [--budget-s 300]
        [--axes attention,framework,compile,blas,gemm,quant] [--n-prompts 64] [--length 16] [--device cuda]

A seeded zoo model (``zoo.build``: the same weights on every machine), bf16 unless an axis needs
another dtype, runs ``--n-prompts`` held-out random prompts (``prompts.random_tokens``, seed
10000 + ``--seed``, never used by the collections) one at a time (batch 1, ``--length`` tokens),
keeping the last-position logits (``logits_to_keep=1``), under every setting of every axis. Each
setting is applied for the whole forward and restored after: attention backend / fixed-order GEMM
/ TF32 through :func:`hspi_kernels.models.eqc.applied`, the cuBLAS flags and deterministic mode
through :func:`hspi_kernels.models.stack.cuda_flags`, fp8 / int8 linears through
:func:`~hspi_kernels.models.stack.quantize_fp8` / ``eqc.quantize_linears`` /
:func:`~hspi_kernels.models.stack.quantize_int8_weight_only`, compile through ``torch.compile``, JAX
through :func:`hspi_kernels.models.jax_llama.make_forward` (the torch copy's weights bit for bit, jit
arguments; llama and qwen2 architectures; the head at the last position, like ``logits_to_keep=1``).

Per setting: two independent executions (the first is the white-box reference, the repeat is the
observation, so a nondeterministic setting shows as a white-box miss), the per-prompt digests of
the logits rows, and on CUDA the names of the GPU kernels one forward launches (torch.profiler),
which is the evidence behind "indistinguishable" verdicts. Per axis: every pair of settings,
distinguishable or not and at how many prompts the bits differ; white-box accuracy (all prompts,
and per single prompt) and black-box accuracy (top-20 ids + fp32 log-probs, 1 / 4 / 32 queries,
200 random query sets) from :func:`hspi_kernels.models.stack.identification`; the classes of
bit-identical settings and the identification among them.

Axes, in the default run order (the priority under the time box: what the last H200 record lacks first,
the axes it already measured last):
  attention  sdpa (default dispatch) / sdpa-math / sdpa-flash / sdpa-efficient (k/v expanded, repeat_kv) /
             sdpa-cudnn / eager. transformers calls SDPA with enable_gqa=True, which the memory-efficient
             kernel refuses ("No available kernel"); a serving stack on that kernel expands K/V with
             transformers' repeat_kv first, and so does this row (math / flash / cuDNN keep enable_gqa)
  framework  bf16: PyTorch / JAX (XLA defaults) / JAX with xla_gpu_enable_triton_gemm=false (a per-compile
             XLA option: cuBLAS for every dot) / JAX precision=HIGHEST; fp32: PyTorch fp32 / tf32 (the
             blas axis's runs) / JAX default precision / JAX HIGHEST. JAX shares the GPU with torch:
             XLA_PYTHON_CLIENT_PREALLOCATE=false, MEM_FRACTION 0.35, set before JAX starts a backend; no
             JAX, or a JAX without a GPU backend, is a recorded skip reason per row, never a crash
  compile    eager / torch.compile (inductor default) / mode="max-autotune-no-cudagraphs" (one compiled
             shape: batch 1, --length tokens, dynamic=False; the compile seconds and the inductor knobs
             in effect are recorded; a compile past COMPILE_LIMIT_FACTOR x its estimate, or past the
             budget, is interrupted and recorded as cut)
  blas       bf16 model: default / allow_bf16_reduced_precision_reduction off / preferred_blas_library
             cublas, cublaslt / use_deterministic_algorithms(True); fp16 model:
             allow_fp16_reduced_precision_reduction on / off; fp32 model: allow_tf32 off / on
  gemm       cuBLAS (torch) / the project's fixed-order Triton GEMM
  quant      bf16 / fp8 e4m3 _scaled_mm {tensor, row scales} x use_fast_accum {on, off} / fp8 as the
             EQC quant=fp8 (control: = tensor, slow) / int8 torch._int_mm (EQC quant=int8) / int8
             weight-only (dequantised bf16 GEMM)

Time-boxed: a step (model build, one setting) whose estimate would end after ``--budget-s`` (minus a
reserve for the analysis and the files) is recorded as skipped with the reason, never run; an
unsupported setting (fp8 on a CPU, flash attention off CUDA...) is one printed line and a recorded
reason; a failing setting is one line and its error, and the rest continues. Writes (atomically,
after every axis) ``OUT_DIR/<hw>_models.json`` and ``OUT_DIR/<hw>_models.md`` (``<hw>``: ``h200`` on an
H200, ``cpu`` on the CPU; ``--name`` overrides) and prints a short table last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hspi_kernels.models import eqc as meqc
from hspi_kernels.models import jax_llama
from hspi_kernels.models import prompts as mprompts
from hspi_kernels.models import stack as mstack
from hspi_kernels.models import zoo
from hspi_kernels.platform.errors import one_line
from hspi_kernels.models.eqc import EQC
from hspi_kernels.platform.files import atomic_write_text, check_output_dir

__all__ = ["Setting", "AXES", "axis_settings", "run", "render_markdown", "render_table", "main"]

SCHEMA = "hspi-stack-models/1"
# the run order is the priority under the time box: what the last H200 record lacks first (attention with
# the efficient kernel, the JAX rows, max-autotune), the axes it already measured last (a cut is recorded)
AXES = ("attention", "framework", "compile", "blas", "gemm", "quant")
EFFICIENT_NAME = "sdpa-efficient (k/v expanded, repeat_kv)"
QUERY_COUNTS = (1, 4, 32)
RESERVE_S = 12.0  # analysis + files after the last step
# whole-setting estimates (first forward = compile, two runs, the profiled forward) on an H200, qwen2.5-0.5b.
# Measured 2026-12-03 (torch 2.11): inductor default compiled in 32.4 s, its runs 1.3 s each (the 65 s of
# that record included a recompile under the profiler, since fixed): 40 s. max-autotune-no-cudagraphs is
# not measured yet: 120 s is a guess (7 GEMM shapes autotuned + coordinate-descent tuning of the fused
# kernels); the compile is interrupted at COMPILE_LIMIT_FACTOR x the estimate (or at the budget), recorded
COMPILE_EST_S = {"default": 40.0, "max-autotune-no-cudagraphs": 120.0}
COMPILE_LIMIT_FACTOR = 2.0
# a JAX setting before one is measured (jit of the unrolled 24-layer graph with XLA's GEMM autotuning,
# 2 x 64 forwards, the parameter upload); afterwards 1.5 x the slowest measured JAX setting
JAX_EST_S = 30.0
# inductor knobs recorded with each compiled setting (what the mode set, and what bounds autotuning)
INDUCTOR_KNOBS = ("max_autotune", "max_autotune_gemm", "max_autotune_pointwise", "coordinate_descent_tuning",
                  "max_autotune_gemm_backends", "max_autotune_gemm_search_space", "autotune_in_subproc",
                  "compile_threads", "fx_graph_cache", "autotune_local_cache")
# JAX shares the GPU with torch in this process: no 75 % preallocation (set before JAX initialises a backend)
JAX_ENV = jax_llama.JAX_ENV


class StepTimeout(BaseException):
    """A step ran past its hard limit (a BaseException: inductor's autotuner catches Exception per choice)."""


@contextlib.contextmanager
def _hard_limit(seconds: float | None):
    """Raise StepTimeout in the main thread after ``seconds`` (SIGALRM; Python code only, so a long C++ call
    ends first). No limit off the main thread or without setitimer."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise StepTimeout(f"interrupted at the hard limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class Setting:
    """One point of an axis. ``model``: which model copy ("bf16", "fp16", "fp32", "fp8:<scaling>:<fast|slow>",
    "fp8-eqc", "int8-mm", "int8-wo"); ``eqc``: attention / GEMM / TF32 via eqc.applied; ``flags``:
    stack.cuda_flags; ``compile``: None or an inductor mode ("default", "max-autotune-no-cudagraphs");
    ``check``: the (axis, setting) that stack.check_setting judges. Settings with equal ``key`` are the
    same run (the baseline appears in several axes and runs once)."""

    name: str
    model: str = "bf16"
    eqc: EQC = EQC()
    flags: tuple = ()
    compile: str | None = None
    check: tuple[str, str] | None = None
    note: str = ""
    repeat_kv: bool = False  # SDPA without enable_gqa: K/V heads expanded first (transformers' repeat_kv)
    jax: tuple = ()  # a JAX/XLA setting (jax_llama.make_forward): (("dtype", ..), ("precision", ..), ("xla", ((opt, v),)))

    @property
    def key(self) -> str:
        if self.jax:
            return "jax|" + "|".join(f"{k}={v}" for k, v in self.jax)
        flags = ",".join(f"{k}={v}" for k, v in self.flags)
        return f"{self.model}|{self.eqc.name}|{flags}|{self.compile or 'eager'}" + ("|repeat_kv" if self.repeat_kv else "")

    @property
    def framework(self) -> str:
        return "jax" if self.jax else "torch"


BASE = Setting("bf16 default", note="bf16, sdpa (default dispatch), cuBLAS, eager, default flags")


def axis_settings(axis: str) -> dict[str, list[Setting]]:
    """{sub-axis title: settings} of one axis (a sub-axis shares one model dtype)."""
    e = EQC()
    if axis == "attention":
        out = [dataclasses_replace(BASE, name="sdpa (default dispatch)")]
        out += [Setting(a, eqc=e.replace(attn=a), check=("attention", a))
                for a in ("sdpa-math", "sdpa-flash")]
        # transformers passes enable_gqa=True (no mask, head dim <= 256), which the memory-efficient kernel refuses
        # ("No available kernel"): a serving stack on that kernel expands K/V with transformers' repeat_kv first
        # (the same values; the kernel decides the bits). math / flash / cuDNN keep enable_gqa (unchanged)
        out += [Setting(EFFICIENT_NAME, eqc=e.replace(attn="sdpa-efficient"), check=("attention", "sdpa-efficient"),
                        repeat_kv=True, note="K/V expanded with transformers' repeat_kv (SDPA without enable_gqa): "
                                             "the memory-efficient kernel has no GQA")]
        out += [Setting("sdpa-cudnn", eqc=e.replace(attn="sdpa-cudnn"), check=("attention", "sdpa-cudnn"))]
        out += [Setting("eager attention", eqc=e.replace(attn="eager"), check=("attention", "eager"))]
        return {"attention backend (bf16)": out}
    if axis == "blas":
        det = ("deterministic", True)
        return {
            "BLAS flags (bf16 model)": [
                dataclasses_replace(BASE, name="default"),
                Setting("bf16 reduced-precision reduction off", flags=(("allow_bf16_reduced_precision_reduction", False),),
                        check=("blas", "allow_bf16_reduced_precision_reduction")),
                Setting("preferred_blas_library cublas", flags=(("preferred_blas_library", "cublas"),),
                        check=("blas", "preferred_blas_library")),
                Setting("preferred_blas_library cublaslt", flags=(("preferred_blas_library", "cublaslt"),),
                        check=("blas", "preferred_blas_library")),
                Setting("use_deterministic_algorithms", flags=(det,), check=("blas", "use_deterministic_algorithms"),
                        note="CUBLAS_WORKSPACE_CONFIG=:4096:8 set in-process: satisfies the determinism check, "
                             "but the cuBLAS workspace was sized at this process's first cuBLAS call"),
            ],
            "BLAS flags (fp16 model)": [
                Setting("fp16 reduced-precision reduction on", model="fp16", eqc=e.replace(dtype="fp16"),
                        flags=(("allow_fp16_reduced_precision_reduction", True),),
                        check=("blas", "allow_fp16_reduced_precision_reduction")),
                Setting("fp16 reduced-precision reduction off", model="fp16", eqc=e.replace(dtype="fp16"),
                        flags=(("allow_fp16_reduced_precision_reduction", False),),
                        check=("blas", "allow_fp16_reduced_precision_reduction")),
            ],
            "allow_tf32 (fp32 model)": [
                Setting("fp32 (allow_tf32 off)", model="fp32", eqc=e.replace(dtype="fp32"), check=("blas", "allow_tf32")),
                Setting("tf32 (allow_tf32 on)", model="fp32", eqc=e.replace(dtype="tf32"), check=("blas", "allow_tf32")),
            ],
        }
    if axis == "quant":
        out = [dataclasses_replace(BASE, name="bf16 (no quantization)")]
        for scaling in ("tensor", "row"):
            for fast in (True, False):
                out.append(Setting(f"fp8 {scaling} scales, fast accum {'on' if fast else 'off'}",
                                   model=f"fp8:{scaling}:{'fast' if fast else 'slow'}",
                                   check=("quant", f"fp8-{scaling}-{'fast' if fast else 'slow'}")))
        out.append(Setting("fp8 as EQC quant=fp8", model="fp8-eqc", check=("quant", "fp8"),
                           note="eqc.quantize_linears(fp8): the same computation as tensor scales, fast accum off"))
        out.append(Setting("int8 torch._int_mm (EQC quant=int8)", model="int8-mm", check=("quant", "int8")))
        out.append(Setting("int8 weight-only (dequantised GEMM)", model="int8-wo", check=("quant", "int8-weight-only")))
        return {"quantization (linears but lm_head)": out}
    if axis == "gemm":
        return {"GEMM backend (bf16)": [dataclasses_replace(BASE, name="cuBLAS (torch)"),
                                        Setting("fixed-order Triton GEMM", eqc=e.replace(gemm="fixed"),
                                                check=("gemm", "fixed"))]}
    if axis == "framework":
        cpu_note = "the CPU has no TF32"

        def jx(name, dtype, precision, xla=(), note=""):
            return Setting(name, model=dtype, jax=(("dtype", dtype), ("precision", precision), ("xla", tuple(xla))),
                           check=("framework", "jax"), note=note)

        return {
            "framework (bf16)": [
                dataclasses_replace(BASE, name="PyTorch bf16 (eager, sdpa, cuBLAS)"),
                jx("JAX bf16 (XLA defaults)", "bf16", "default"),
                jx("JAX bf16, xla_gpu_enable_triton_gemm=false", "bf16", "default",
                   (("xla_gpu_enable_triton_gemm", False),), note="every dot through cuBLAS (no XLA Triton GEMM fusions)"),
                jx("JAX bf16, precision=HIGHEST", "bf16", "highest",
                   note="Precision.HIGHEST on every dot (= jax_default_matmul_precision='highest')"),
            ],
            "framework (fp32)": [
                # the same runs as the allow_tf32 rows of the blas axis (equal keys); the torch fp32 row also runs on a CPU
                Setting("PyTorch fp32 (allow_tf32 off)", model="fp32", eqc=e.replace(dtype="fp32")),
                Setting("PyTorch tf32 (allow_tf32 on)", model="fp32", eqc=e.replace(dtype="tf32"), check=("blas", "allow_tf32")),
                jx("JAX fp32 (XLA default precision)", "fp32", "default",
                   note="XLA's DEFAULT dot precision (on an sm_80+ GPU XLA may run fp32 dots as TF32: the bits "
                        "vs the HIGHEST row say whether it did; " + cpu_note + ")"),
                jx("JAX fp32, precision=HIGHEST", "fp32", "highest",
                   note="Precision.HIGHEST on every dot (= jax_default_matmul_precision='highest')"),
            ],
        }
    if axis == "compile":
        return {"compile mode (bf16)": [
            dataclasses_replace(BASE, name="eager"),
            Setting("torch.compile (inductor default)", compile="default", check=("compile", "compiled")),
            Setting("torch.compile max-autotune-no-cudagraphs", compile="max-autotune-no-cudagraphs",
                    check=("compile", "max-autotune-no-cudagraphs")),
        ]}
    raise ValueError(f"unknown axis {axis!r}: {AXES}")


def dataclasses_replace(s: Setting, **kw) -> Setting:
    import dataclasses

    return dataclasses.replace(s, **kw)


# --------------------------------------------------------------------------------------------
# the runner: model copies, one setting's two executions, kernel names
# --------------------------------------------------------------------------------------------
class _Models:
    def __init__(self, master, device: str):
        self.master, self.device, self.cache = master, device, {}

    def get(self, kind: str):
        import torch

        if kind not in self.cache:
            if kind in ("bf16", "fp16", "fp32"):
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kind]
                m = copy.deepcopy(self.master).to(device=self.device, dtype=dtype)
            else:
                m = copy.deepcopy(self.get("bf16"))
                if kind.startswith("fp8:"):
                    _, scaling, fast = kind.split(":")
                    mstack.quantize_fp8(m, scaling, fast == "fast")
                elif kind == "fp8-eqc":
                    meqc.quantize_linears(m, "fp8")
                elif kind == "int8-mm":
                    meqc.quantize_linears(m, "int8")
                elif kind == "int8-wo":
                    mstack.quantize_int8_weight_only(m)
                else:
                    raise ValueError(kind)
            m.eval()
            self.cache[kind] = m
        return self.cache[kind]

    def release(self, keep=("bf16",)):
        import torch

        for k in [k for k in self.cache if k not in keep]:
            del self.cache[k]
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _kernel_names(forward: Callable[[], Any]) -> list[str] | str:
    """Names of the GPU kernels one forward launches, in launch order (torch.profiler, CUDA)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            forward()
            torch.cuda.synchronize()
        evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        evs.sort(key=lambda e: e.time_range.start)
        return [e.name for e in evs]
    except Exception as exc:  # noqa: BLE001 - no CUPTI: the verdicts lose their evidence, not the run
        return f"kernel list not recorded: {one_line(exc)}"


def _kernel_summary(names: list[str] | str) -> dict[str, Any]:
    import xxhash

    if isinstance(names, str):
        return {"error": names}
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return {"launches": len(names), "sequence_digest": xxhash.xxh3_64_hexdigest("\n".join(names).encode()), "distinct": len(counts),
            "names": {k[:160]: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}}


def _inductor_knobs(mode: str) -> dict[str, Any]:
    """The inductor config a compile in ``mode`` runs under: the mode's own options over the global config."""
    import torch._inductor
    import torch._inductor.config as ic

    try:
        opts = torch._inductor.list_mode_options(None if mode == "default" else mode)
    except Exception:  # noqa: BLE001
        opts = {}
    out = {k: opts.get(k, getattr(ic, k, None)) for k in INDUCTOR_KNOBS if k in opts or hasattr(ic, k)}
    out.update({k: v for k, v in opts.items() if k not in out})
    return {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v) for k, v in out.items()}


def _run_setting(s: Setting, models: _Models, tokens: np.ndarray, device: str,
                 limit_s: float | None = None) -> tuple[dict[str, Any], dict]:
    """(record, {"ref": summarize_run, "obs": summarize_run}) of one setting: two executions. ``limit_s``:
    the hard limit of a compile (the first forward), StepTimeout past it."""
    if s.jax:
        return _run_jax_setting(s, models, tokens, device)
    import torch

    model = models.get(s.model)
    compiled = None
    rec: dict[str, Any] = {}
    if s.compile:
        torch._dynamo.reset()
        rec["inductor"] = _inductor_knobs(s.compile)
        compiled = torch.compile(model, dynamic=False, **({} if s.compile == "default" else {"mode": s.compile}))

    def ctx():
        stack = __import__("contextlib").ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(meqc.applied(s.eqc, compiled if compiled is not None else model, device))
        stack.enter_context(mstack.cuda_flags(s.flags))
        if s.repeat_kv:
            from unittest import mock

            from transformers.integrations import sdpa_attention

            stack.enter_context(mock.patch.object(sdpa_attention, "use_gqa_in_sdpa", lambda *a, **k: False))
        return stack

    which = "compiled" if compiled is not None else "eager"
    t = time.perf_counter()
    if compiled is not None:  # the first forward compiles (one shape: batch 1, --length tokens): timed on its own
        try:
            with _hard_limit(limit_s):
                mstack.logits_under(which, model, tokens[:1], compiled, device=device, context=ctx, last_only=True)
        except StepTimeout as exc:
            torch._dynamo.reset()
            exc.compile_s = round(time.perf_counter() - t, 2)
            exc.inductor = rec["inductor"]
            raise
        rec["compile_s"] = round(time.perf_counter() - t, 2)
    t1 = time.perf_counter()
    ref = mstack.logits_under(which, model, tokens, compiled, device=device, context=ctx, last_only=True)
    rec["run_s"] = round(time.perf_counter() - t1, 2)
    t1 = time.perf_counter()
    obs = mstack.logits_under(which, model, tokens, compiled, device=device, context=ctx, last_only=True)
    rec["repeat_s"] = round(time.perf_counter() - t1, 2)
    t1 = time.perf_counter()
    if device.startswith("cuda"):
        def forward():  # the same call path as the runs (a compiled model must not recompile)
            mstack.logits_under(which, model, tokens[:1], compiled, device=device, context=ctx, last_only=True)

        rec["kernels"] = _kernel_summary(_kernel_names(forward))
        rec["profile_s"] = round(time.perf_counter() - t1, 2)
    else:
        rec["kernels"] = {"error": "kernel list not recorded on the CPU"}
    if compiled is not None:
        del compiled
        torch._dynamo.reset()
    return _finished(rec, ref, obs)


def _finished(rec: dict, ref, obs) -> tuple[dict, dict]:
    """A setting's record completed from its two runs (reference, observation): repeatability per
    prompt, digests, finiteness; and the runs (with the reference logits) for the pair tables."""
    runs = {"ref": mstack.summarize_run(ref), "obs": mstack.summarize_run(obs)}
    rep = [a != b for a, b in zip(runs["ref"]["digests"], runs["obs"]["digests"])]
    rec.update(status="ok", repeatable=not any(rep), prompts_not_repeatable=int(sum(rep)),
               digests=runs["ref"]["digests"], finite=bool(np.isfinite(ref).all()),
               max_abs_logit=float(np.nanmax(np.abs(ref))) if ref.size else 0.0)
    runs["logits"] = ref
    return rec, runs


_JAX_STATE: dict[str, Any] = {}  # per run: {"params": {dtype: device arrays}} (released after each axis)


def _jax_backend(device: str) -> tuple[Any, Any, str | None]:
    """(jax, the jax Device matching ``device``, None) or (None, None, why JAX cannot run there)."""
    return jax_llama.backend(device)


def _jax_reason(s: Setting, device: str) -> str | None:
    _, _, why = _jax_backend(device)
    if why:
        return why
    xla = dict(dict(s.jax).get("xla", ()))
    if not device.startswith("cuda") and any(k.startswith("xla_gpu_") for k in xla):
        return f"{', '.join(k for k in xla if k.startswith('xla_gpu_'))} is an XLA GPU option; skipped on the CPU"
    return None


def _run_jax_setting(s: Setting, models: _Models, tokens: np.ndarray, device: str) -> tuple[dict[str, Any], dict]:
    """A JAX setting: jax_llama on the torch model's weights (the bf16 / fp32 copy, bit for bit), the same prompts,
    batch 1, the head at the last position only; two executions, the kernels (torch.profiler records the CUDA
    kernels of the whole process, XLA's included)."""

    jax, jdev, why = _jax_backend(device)
    if why:
        raise RuntimeError(why)
    opts = dict(s.jax)
    dtype, precision, xla = opts["dtype"], opts["precision"], dict(opts.get("xla", ()))
    model = models.get(s.model)
    rec: dict[str, Any] = {"framework": "jax", "jax": jax.__version__, "jax_device": str(jdev), "jax_dtype": dtype,
                           "jax_precision": precision, "xla_options": xla,
                           "jax_env": {k: os.environ.get(k) for k in JAX_ENV}}
    t = time.perf_counter()
    cache = _JAX_STATE.setdefault("params", {})
    if dtype not in cache:
        cache[dtype] = jax_llama.device_params(jax_llama.params_from_torch(model), dtype, jdev)
    rec["params_s"] = round(time.perf_counter() - t, 2)
    fn = jax_llama.make_forward(model, cache[dtype], dtype=dtype, precision=precision, compiler_options=xla or None,
                                device=jdev, last_only=True)
    t = time.perf_counter()
    fn(tokens[:1])
    rec["compile_s"] = round(time.perf_counter() - t, 2)  # jit: trace + XLA compile (+ its GEMM autotuning) + 1 forward

    def logits():
        return np.stack([fn(p[None])[0, -1] for p in tokens]).astype(np.float32)

    t = time.perf_counter()
    ref = logits()
    rec["run_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    obs = logits()
    rec["repeat_s"] = round(time.perf_counter() - t, 2)
    if device.startswith("cuda"):
        t = time.perf_counter()
        rec["kernels"] = _kernel_summary(_kernel_names(lambda: fn(tokens[:1])))
        rec["profile_s"] = round(time.perf_counter() - t, 2)
    else:
        rec["kernels"] = {"error": "kernel list not recorded on the CPU"}
    return _finished(rec, ref, obs)


# --------------------------------------------------------------------------------------------
# the lattice of one sub-axis
# --------------------------------------------------------------------------------------------
def _kernel_diff(ka: dict, kb: dict) -> str:
    if "error" in ka or "error" in kb:
        return ka.get("error") or kb.get("error")
    if ka["sequence_digest"] == kb["sequence_digest"]:
        return f"the same GPU kernels ({ka['launches']} launches, names equal in order)"
    only_a = [n for n in ka["names"] if n not in kb["names"]]
    only_b = [n for n in kb["names"] if n not in ka["names"]]
    if not only_a and not only_b:
        return f"the same kernel names, other launch order or counts ({ka['launches']} vs {kb['launches']} launches)"

    def short(ns):
        return "; ".join(n[:70] for n in ns[:2]) + (f" (+{len(ns) - 2})" if len(ns) > 2 else "")

    return f"different kernels (only in A: {short(only_a) or '-'}; only in B: {short(only_b) or '-'})"


def _pair_reason(a: Setting, b: Setting, ra: dict, rb: dict, n: int) -> str:
    kd = _kernel_diff(ra.get("kernels", {}), rb.get("kernels", {}))
    if kd.startswith("the same GPU kernels"):
        why = f"{kd}: the setting does not change the kernels at these shapes"
    elif kd.startswith("different kernels") or kd.startswith("the same kernel names"):
        why = f"{kd}, yet equal bits on all {n} prompts"
    else:
        why = f"equal bits on all {n} prompts ({kd})"
    notes = [x.note for x in (a, b) if x.note and x is not BASE and not x.note.startswith("bf16, sdpa")]
    return why + ("; " + "; ".join(notes) if notes else "")


def _lattice(settings: list[Setting], records: dict[str, dict], runs: dict[str, dict], n: int,
             trials: int) -> dict[str, Any]:
    ok = [s for s in settings if records[s.name].get("status") == "ok"]
    pairs = []
    for a, b in itertools.combinations(settings, 2):
        entry: dict[str, Any] = {"a": a.name, "b": b.name}
        if a not in ok or b not in ok:
            bad = a if a not in ok else b
            entry.update(measured=False, reason=f"{bad.name}: {records[bad.name].get('reason') or records[bad.name].get('error')}")
            pairs.append(entry)
            continue
        ra, rb = runs[a.key], runs[b.key]
        differ = int(sum(x != y for x, y in zip(ra["ref"]["digests"], rb["ref"]["digests"])))
        entry.update(measured=True, prompts_differ=differ, prompts=n, distinguishable=differ > 0)
        if a.key == b.key:
            entry["same_run"] = True
        if differ:
            ident = mstack.identification(None, None, precomputed={a.name: ra, b.name: rb},
                                          query_counts=QUERY_COUNTS, trials=trials)
            entry.update(whitebox=ident["whitebox_all_prompts"]["accuracy"],
                         whitebox_per_prompt=ident["whitebox"]["accuracy"],
                         blackbox={q: v["accuracy"] for q, v in ident["blackbox_at"].items()},
                         max_abs_logit_diff=float(np.max(np.abs(ra["logits"] - rb["logits"]))))
        else:
            entry["reason"] = ("the same setting (one run)" if a.key == b.key
                               else _pair_reason(a, b, records[a.name], records[b.name], n))
        pairs.append(entry)
    # classes of bit-identical settings and the identification among them
    classes: list[list[Setting]] = []
    for s in ok:
        for c in classes:
            if runs[c[0].key]["ref"]["digests"] == runs[s.key]["ref"]["digests"]:
                c.append(s)
                break
        else:
            classes.append([s])
    out: dict[str, Any] = {"pairs": pairs, "classes": [[s.name for s in c] for c in classes]}
    if len(classes) >= 2:
        ident = mstack.identification(None, None, precomputed={" = ".join(x.name for x in c): runs[c[0].key]
                                                               for c in classes},
                                      query_counts=QUERY_COUNTS, trials=trials)
        out["identification"] = {"whitebox": ident["whitebox_all_prompts"]["accuracy"],
                                 "whitebox_per_prompt": ident["whitebox"]["accuracy"],
                                 "blackbox": {q: v["accuracy"] for q, v in ident["blackbox_at"].items()}}
    return out


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------
def run(out_dir: Path, model_name: str = "qwen2.5-0.5b", budget_s: float = 300.0, axes=AXES, device: str | None = None,
        n_prompts: int = 64, length: int = 16, seed: int = 0, trials: int = 200, name: str | None = None,
        start: float | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the lattice; write ``<name>.json`` / ``<name>.md`` into ``out_dir``; return the record."""
    start = time.perf_counter() if start is None else start
    import torch

    from hspi_kernels import platform as plat
    from hspi_kernels.models.collect import hardware_name

    out_dir = check_output_dir(out_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hw = hardware_name(device)
    name = name or f"{hw.lower()}_models"

    def elapsed() -> float:
        return time.perf_counter() - start

    def log(msg: str) -> None:
        say(f"[{elapsed():6.1f}s] {msg}")

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if "framework" in axes:  # before anything initialises a JAX backend: torch keeps the GPU memory it needs
        for k, v in JAX_ENV.items():
            os.environ.setdefault(k, v)
    try:
        meta = plat.collect()
    except Exception as exc:  # noqa: BLE001
        meta = {"error": one_line(exc)}
    rec: dict[str, Any] = {"schema": SCHEMA, "platform": meta, "label": plat.platform_label(meta) if "error" not in meta else hw,
                           "hardware": hw, "device": device, "argv": sys.argv, "model": model_name, "dtype": "bf16",
                           "batch": 1, "length": length, "prompts": n_prompts, "prompt_seed": 10_000 + seed,
                           "weights_seed": seed, "budget_s": budget_s, "query_counts": list(QUERY_COUNTS),
                           "trials": trials, "axes": {}, "cut": [], "torch": torch.__version__,
                           "axis_order": list(axes)}
    if "framework" in axes:
        rec["jax_env"] = {k: os.environ.get(k) for k in JAX_ENV}
    if device.startswith("cuda"):
        m = torch.backends.cuda.matmul
        rec["defaults"] = {"allow_bf16_reduced_precision_reduction": m.allow_bf16_reduced_precision_reduction,
                           "allow_fp16_reduced_precision_reduction": m.allow_fp16_reduced_precision_reduction,
                           "preferred_blas_library": str(torch.backends.cuda.preferred_blas_library()),
                           "CUBLAS_WORKSPACE_CONFIG_at_start": __import__("os").environ.get("CUBLAS_WORKSPACE_CONFIG")}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"

    def save():
        import json

        rec["seconds"] = round(elapsed(), 1)
        atomic_write_text(json_path, json.dumps(rec, indent=1, default=str, allow_nan=True))
        atomic_write_text(md_path, render_markdown(rec))

    deadline = budget_s - RESERVE_S
    models = None
    if elapsed() + 5.0 > deadline:
        rec["cut"].append({"step": "model build", "reason": f"time budget ({elapsed():.0f} s used of {budget_s:.0f} s)"})
        log(f"skip: model build (time budget {budget_s:.0f} s)")
    else:
        t = time.perf_counter()
        try:
            master, mmeta = zoo.build(model_name, seed)
            rec["model_meta"] = {k: mmeta[k] for k in ("weights", "n_params", "vocab_size", "transformers") if k in mmeta}
            tokens = mprompts.random_tokens(n_prompts, length, mmeta["vocab_size"], seed=10_000 + seed)
            models = _Models(master, device)
            models.get("bf16")
            rec["build_s"] = round(time.perf_counter() - t, 1)
            log(f"built {model_name} ({mmeta['n_params'] / 1e6:.0f} M params) on {device} in {rec['build_s']} s")
        except Exception as exc:  # noqa: BLE001
            rec["build_error"] = one_line(exc)
            log(f"model build failed: {rec['build_error']}")
    runs: dict[str, dict] = {}  # key -> summarize_run pair (+ logits)
    results: dict[str, dict] = {}  # key -> record
    per_setting_s: list[float] = []
    jax_s: list[float] = []
    axis_keys = [{s.key for ss in axis_settings(a).values() for s in ss} for a in axes]
    for i_axis, axis in enumerate(axes):
        for title, settings in axis_settings(axis).items():
            arec: dict[str, Any] = {"axis": axis, "settings": {}}
            rec["axes"][title] = arec
            t_axis = time.perf_counter()
            for s in settings:
                reason = None
                if models is not None:
                    reason = ((mstack.check_setting(*s.check, device) if s.check else None)
                              or meqc.unsupported_reason(s.eqc, device) or (_jax_reason(s, device) if s.jax else None))
                if models is None:
                    r = {"status": "skipped", "reason": "no model (build skipped or failed)"}
                elif reason:
                    r = {"status": "skipped", "reason": reason}
                    log(f"skip {title} / {s.name}: {reason}")
                elif s.key in results:
                    r = dict(results[s.key], same_run_as=results[s.key]["_name"])
                else:
                    if s.compile:
                        est = COMPILE_EST_S.get(s.compile, 90.0)
                    elif s.jax:
                        est = 1.5 * max(jax_s) if jax_s else JAX_EST_S
                    else:
                        est = 2.0 * float(np.median(per_setting_s)) if per_setting_s else 0.0
                    if elapsed() + est > deadline:
                        r = {"status": "skipped", "reason": f"time budget: {elapsed():.0f} s used, estimate "
                                                             f"{est:.0f} s, budget {budget_s:.0f} s"}
                        rec["cut"].append({"step": f"{title} / {s.name}", "reason": r["reason"]})
                        log(f"skip {title} / {s.name}: {r['reason']}")
                    else:
                        t = time.perf_counter()
                        limit = (min(deadline - elapsed(), COMPILE_LIMIT_FACTOR * est) if s.compile else None)
                        try:
                            r, runs[s.key] = _run_setting(s, models, tokens, device, limit_s=limit)
                        except StepTimeout as exc:  # a compile past its hard limit: a recorded cut
                            r = {"status": "skipped", "reason": f"time budget: compile {exc} (estimate {est:.0f} s, "
                                                                f"{elapsed():.0f} s used of {budget_s:.0f} s)",
                                 "compile_s": getattr(exc, "compile_s", None),
                                 "inductor": getattr(exc, "inductor", None)}
                            rec["cut"].append({"step": f"{title} / {s.name}", "reason": r["reason"]})
                        except Exception as exc:  # noqa: BLE001 - one line, the rest continues
                            r = {"status": "failed", "error": one_line(exc),
                                 "traceback_tail": traceback.format_exc()[-1500:]}
                            if device.startswith("cuda"):
                                torch._dynamo.reset()
                            if ("deterministic", True) in s.flags and "CUBLAS_WORKSPACE_CONFIG" in str(exc):
                                # the variable was read at the first cuBLAS call: strict mode refuses
                                # cuBLAS in this process; warn_only runs the deterministic kernels
                                # of the other ops and says so
                                log(f"{title} / {s.name}: strict mode refused ({r['error'][:120]}); "
                                    "retrying with warn_only=True")
                                s2 = dataclasses_replace(s, flags=(("deterministic", "warn"),))
                                try:
                                    r2, runs[s.key] = _run_setting(s2, models, tokens, device)
                                    r = dict(r2, strict_error=r["error"],
                                             fallback="use_deterministic_algorithms(True, warn_only=True)")
                                except Exception as exc2:  # noqa: BLE001
                                    r["fallback_error"] = one_line(exc2)
                        r["seconds"] = round(time.perf_counter() - t, 2)
                        if r["status"] == "ok" and s.jax:
                            jax_s.append(r["seconds"])
                        elif r["status"] == "ok" and not s.compile:
                            per_setting_s.append(r["seconds"])
                        if r["status"] == "ok":
                            msg = (f"ok {r['seconds']} s" + (f" (compile {r['compile_s']} s)" if "compile_s" in r else "")
                                   + ("" if r["repeatable"] else f", NOT repeatable at {r['prompts_not_repeatable']} prompts"))
                        elif r["status"] == "skipped":
                            msg = f"cut: {r['reason']}"
                        else:
                            msg = f"failed: {r['error']}"
                        log(f"{title} / {s.name}: {msg}")
                    r["_name"] = s.name
                    results[s.key] = r
                out = {k: v for k, v in r.items() if not k.startswith("_")}
                out.update(model=s.model, eqc=s.eqc.name, flags=[list(f) for f in s.flags], compile=s.compile or "eager",
                           framework=s.framework)
                if s.jax:
                    out.update(eqc="-", compile="jax.jit")
                if s.repeat_kv:
                    out["repeat_kv"] = True
                if s.note:
                    out["note"] = s.note
                arec["settings"][s.name] = out
            arec.update(_lattice(settings, {s.name: arec["settings"][s.name] for s in settings}, runs, n_prompts, trials))
            arec["seconds"] = round(time.perf_counter() - t_axis, 1)
        _JAX_STATE.clear()  # the JAX parameter copies on the device
        if models is not None:
            models.release()
            later = set().union(*axis_keys[i_axis + 1:]) if i_axis + 1 < len(axes) else set()
            for k in [k for k in runs if k != BASE.key and k not in later]:
                runs.pop(k)  # keep the baseline and the runs a later axis reuses (host memory: 2 x 39 MB per setting)
        try:
            save()
        except Exception as exc:  # noqa: BLE001
            log(f"saving failed: {one_line(exc)}")
    rec["total_s"] = round(elapsed(), 1)
    save()
    say(render_table(rec))
    return rec


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def render_markdown(rec: dict[str, Any]) -> str:
    n = rec.get("prompts")
    lines = [f"# Model-level software-stack lattice: {rec.get('label', rec.get('hardware'))}", "",
             f"`python -m hspi_kernels.models.gpu_stack` on {rec.get('hardware')} ({rec.get('device')}), torch "
             f"{rec.get('torch')}: model `{rec.get('model')}` (seeded weights, seed {rec.get('weights_seed')}), batch 1, "
             f"{rec.get('length')} tokens, {n} held-out random prompts (seed {rec.get('prompt_seed')}), last-position "
             f"logits. White-box: the verifier recomputes each candidate's logits (first run) and compares digests with "
             f"the observation (a second run) on all {n} prompts (per prompt in brackets). Black-box: top-20 ids + fp32 "
             f"log-probs of the observation, {rec.get('trials')} random query sets per budget; ties count as wrong. "
             f"Total {rec.get('total_s', rec.get('seconds'))} s of a {rec.get('budget_s')} s budget.", ""]
    if rec.get("defaults"):
        lines += ["Defaults of this process: " + ", ".join(f"`{k}`={v}" for k, v in rec["defaults"].items()), ""]
    for title, a in rec.get("axes", {}).items():
        lines += [f"## {title}", "", "| setting | status | repeatable | kernels (launches / distinct) | seconds |",
                  "|---|---|---|---|---|"]
        for sname, s in a.get("settings", {}).items():
            k = s.get("kernels") or {}
            kern = f"{k['launches']} / {k['distinct']}" if "launches" in k else "-"
            status = s.get("status", "?")
            if status != "ok":
                status += ": " + str(s.get("reason") or s.get("error"))
            elif s.get("same_run_as"):
                status += f" (same run as {s['same_run_as']})"
            rep = "-" if s.get("status") != "ok" else ("yes" if s.get("repeatable") else f"no ({s.get('prompts_not_repeatable')} prompts)")
            extra = f" (compile {s['compile_s']} s)" if "compile_s" in s else ""
            lines.append(f"| {sname} | {status} | {rep} | {kern} | {s.get('seconds', '-')}{extra} |")
        notes = [(sn, s["note"]) for sn, s in a.get("settings", {}).items() if s.get("note") and not s.get("same_run_as")]
        if notes:
            lines += [""] + [f"- {sn}: {nt}" for sn, nt in notes]
        lines += ["", "| pair | distinguishable (prompts) | white-box | black-box q=1 | q=4 | q=32 | why indistinguishable |",
                  "|---|---|---|---|---|---|---|"]
        unmeasured = 0
        for p in a.get("pairs", []):
            pair = f"{p['a']} vs {p['b']}"
            if not p.get("measured"):
                unmeasured += 1
            elif p["distinguishable"]:
                bb = p.get("blackbox", {})
                lines.append(f"| {pair} | yes ({p['prompts_differ']}/{p['prompts']}) | {_pct(p.get('whitebox'))} "
                             f"({_pct(p.get('whitebox_per_prompt'))}) | {_pct(bb.get('1'))} | {_pct(bb.get('4'))} | "
                             f"{_pct(bb.get(str(min(32, p['prompts']))))} | |")
            else:
                lines.append(f"| {pair} | no (0/{p['prompts']}) | - | - | - | - | {p.get('reason', '')} |")
        if unmeasured:
            lines += ["", f"{unmeasured} pair(s) not measured: a setting above was not run (its reason)."]
        if a.get("classes"):
            lines += ["", "Classes of bit-identical settings: " + "; ".join("{" + ", ".join(c) + "}" for c in a["classes"])]
        if a.get("identification"):
            i = a["identification"]
            bb = i["blackbox"]
            lines += [f"Among the classes: white-box {_pct(i['whitebox'])} (per prompt {_pct(i['whitebox_per_prompt'])}), "
                      "black-box " + ", ".join(f"q={q}: {_pct(v)}" for q, v in bb.items()) + "."]
        lines.append("")
    cut = rec.get("cut") or []
    lines += ["## What was cut", ""]
    if cut:
        lines += [f"- {c['step']}: {c['reason']}" for c in cut]
    else:
        lines.append("- nothing was cut by the time budget")
    skipped = [(t, sn, s.get("reason")) for t, a in rec.get("axes", {}).items() for sn, s in a.get("settings", {}).items()
               if s.get("status") == "skipped" and not str(s.get("reason", "")).startswith("time budget")]
    if skipped:
        lines += ["", "Unsupported here (not run):"] + [f"- {t} / {sn}: {r}" for t, sn, r in skipped]
    failed = [(t, sn, s.get("error")) for t, a in rec.get("axes", {}).items() for sn, s in a.get("settings", {}).items()
              if s.get("status") == "failed"]
    if failed:
        lines += ["", "Failed:"] + [f"- {t} / {sn}: {e}" for t, sn, e in failed]
    if rec.get("build_error"):
        lines += ["", f"Model build failed: {rec['build_error']}"]
    return "\n".join(lines) + "\n"


def render_table(rec: dict[str, Any]) -> str:
    """A short fixed-format summary: one row per sub-axis."""
    rows = [("axis", "ok/all", "classes", "dist. pairs", "white-box", "bb q=32"), ]
    for title, a in rec.get("axes", {}).items():
        sets = a.get("settings", {})
        ok = sum(s.get("status") == "ok" for s in sets.values())
        dist = [p for p in a.get("pairs", []) if p.get("measured") and p.get("distinguishable")]
        measured = [p for p in a.get("pairs", []) if p.get("measured")]
        wb = min((p["whitebox"] for p in dist), default=None)
        bb = min((p["blackbox"][max(p["blackbox"], key=int)] for p in dist), default=None)
        rows.append((title[:40], f"{ok}/{len(sets)}", str(len(a.get("classes", []))), f"{len(dist)}/{len(measured)}",
                     "min " + _pct(wb) if wb is not None else "-", "min " + _pct(bb) if bb is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    cut = len(rec.get("cut") or [])
    return text + f"\n{cut} step(s) cut by the time budget; total {rec.get('total_s', rec.get('seconds'))} s"


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    ap = argparse.ArgumentParser(prog="python -m hspi_kernels.models.gpu_stack", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--axes", default=",".join(AXES), help=f"comma-separated subset of {','.join(AXES)}")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--name", default=None, help="file stem (default: <hw>_models, e.g. h200_models)")
    args = ap.parse_args(argv)
    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    bad = [a for a in axes if a not in AXES]
    if bad:
        print(f"error: unknown axis {', '.join(bad)} (choose from {', '.join(AXES)})", file=sys.stderr)
        return 2
    try:
        zoo.require(args.model)
    except (ValueError, zoo.MissingDependency) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run(args.out_dir, args.model, args.budget_s, axes, args.device, args.n_prompts, args.length, args.seed,
            args.trials, args.name, start=start)
    except ValueError as exc:  # an unusable output folder, a bad device name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
