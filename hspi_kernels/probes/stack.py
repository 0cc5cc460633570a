"""Software-stack probes (issue 17): the same seeded inputs through different stack settings.

Families:

- ``torch-inductor-cpu``: ``torch.compile`` (inductor, default mode) on the CPU. Inductor's C++
  reduction is vectorised over the ISA's lanes (16 fp32 lanes on AVX-512, 8 on AVX2): lane ``j``
  adds terms ``j, j+L, …`` left to right (a ``CascadeSumHelper`` with chunk 4096 vectors, i.e.
  plain sequential below 4096·L terms), the masked tail joins the lanes it falls in, then
  ``vec_reduce_all`` folds the lanes with the xor-butterfly (256/128/64/32-bit shuffles), i.e.
  ``Strided(L, Sequential(), BlockTree(L))``. Eager ``torch.sum`` on the CPU uses ATen's own
  multi-accumulator cascade, so the bits differ; the ``sumsq`` probe checks the inductor plan on
  the fused square-and-sum that RMSNorm's variance is.
- ``jax-cpu``: XLA CPU on the same operands as the ``torch-cpu`` GEMM / sum / softmax probes
  (same seeds), so a digest comparison says whether the framework changes the bits. Without JAX
  the probes are skipped with the reason (``ProbeUnsupported``).
- ``torch-cuda`` stack flags (GPU-only, skipped here): ``allow_bf16_reduced_precision_reduction``
  and ``allow_fp16_reduced_precision_reduction`` on a split-K shape, ``preferred_blas_library``
  cublas vs cublaslt, fp8 e4m3 ``torch._scaled_mm`` (per-tensor and per-row scales, fast
  accumulation on / off), int8 ``torch._int_mm`` (exact: a control), inductor (Triton) RMSNorm.
"""

from __future__ import annotations

import dataclasses

from functools import partial
from typing import Any

import numpy as np

from hspi_kernels.models.jax_llama import FrameworkUnavailable, require_jax
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.plans import BlockTree, Sequential, Strided, plan_from_json
from hspi_kernels.probes.basic import device_operand, operand
from hspi_kernels.probes.inputs import from_torch, spec
from hspi_kernels.probes.registry import Probe, ProbeUnsupported, register

__all__ = ["inductor_cpu_lanes", "inductor_cpu_sum_plan", "compiled", "jax_or_unsupported"]

_COMPILED: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------
# torch.compile on the CPU
# --------------------------------------------------------------------------------------------
def inductor_cpu_lanes() -> int:
    """fp32 lanes of the vector ISA inductor's C++ codegen picks on this CPU (0: no vector ISA)."""
    import torch
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.pick_vec_isa()
    return int(isa.nelements(torch.float)) if isa else 0


def inductor_cpu_sum_plan(lanes: int | None = None):
    """The plan of inductor's vectorised fp32 row sum (see the module doc), for up to 4096·lanes terms."""
    lanes = inductor_cpu_lanes() if lanes is None else lanes
    if lanes <= 1:
        return Sequential("fp32")
    return Strided(lanes, Sequential("fp32"), BlockTree(lanes))


def _sumsq(x):
    return (x * x).sum(dim=-1)


def _rmsnorm(x, w, eps: float = 1e-6):
    import torch

    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def _softmax(x):
    return x.softmax(dim=-1)


def _residual_rmsnorm(x, r, w, eps: float = 1e-6):
    import torch

    h = x + r
    return h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * w


_OPS = {"sumsq": _sumsq, "rmsnorm": _rmsnorm, "softmax": _softmax, "residual-rmsnorm": _residual_rmsnorm}


def compiled(op: str, device: str = "cpu"):
    """``torch.compile`` (inductor, default mode, static shapes) of a probe op, once per process."""
    key = f"{op}@{device}"
    if key not in _COMPILED:
        import torch

        try:
            _COMPILED[key] = torch.compile(_OPS[op], dynamic=False)
        except Exception as exc:  # noqa: BLE001 - an unusable compiler is a skip, not a failure
            raise ProbeUnsupported(f"torch.compile unavailable: {type(exc).__name__}: {exc}") from exc
    return _COMPILED[key]


def _run_op(op: str, specs: tuple[dict[str, Any], ...], device: str, compile: bool) -> np.ndarray:
    import torch

    args = [device_operand(s, device) for s in specs]
    if op in ("rmsnorm", "residual-rmsnorm"):
        args.append(torch.ones(args[0].shape[-1], dtype=args[0].dtype, device=device))
    fn = compiled(op, device) if compile else _OPS[op]
    try:
        with torch.no_grad():
            out = fn(*args)
    except ProbeUnsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - inductor's C++ toolchain missing etc.
        if compile:
            raise ProbeUnsupported(f"torch.compile failed on {device}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        raise
    if device == "cuda":
        torch.cuda.synchronize()
    return from_torch(out)


def _sumsq_plan_eval(x_spec, plan_json):
    x = np.ascontiguousarray(operand(x_spec), dtype=np.float32)
    return evaluate(plan_from_json(plan_json), (x, x))


def _sumsq_reference(x_spec):
    x = operand(x_spec).astype(np.float64)
    return (x * x).sum(axis=-1)


def _inductor_plans():
    return (inductor_cpu_sum_plan().to_json(),)


def _compile_probes() -> list[Probe]:
    probes = []
    x = spec(1701, (64, 4097), "fp32")
    for backend, comp in (("torch-cpu", False), ("torch-inductor-cpu", True)):
        probes.append(Probe(
            id=f"{backend}/sumsq-{'compiled' if comp else 'eager'}/fp32/64x4097", family="stack-compile", backend=backend,
            inputs={"x": x, "op": "sum(x*x, -1)", "compile": comp},
            measures=("inductor's fused square+sum (RMSNorm variance): vector lanes and lane fold"
                      if comp else "eager ATen square then sum (the control for the compiled probe)"),
            run=partial(_run_op, "sumsq", (x,), "cpu", comp), requires=("torch",),
            reference=partial(_sumsq_reference, x),
            plans=_inductor_plans if comp else (), plan_eval=partial(_sumsq_plan_eval, x) if comp else None))
    xs = {"rmsnorm": (spec(1702, (64, 896), "fp32"),), "softmax": (spec(1703, (64, 1000), "fp32"),),
          "residual-rmsnorm": (spec(1704, (64, 896), "fp32"), spec(1705, (64, 896), "fp32"))}
    for op, specs in xs.items():
        shape = "x".join(map(str, specs[0]["shape"]))
        for backend, comp in (("torch-cpu", False), ("torch-inductor-cpu", True)):
            probes.append(Probe(
                id=f"{backend}/{op}-{'compiled' if comp else 'eager'}/fp32/{shape}", family="stack-compile", backend=backend,
                inputs={f"x{i}": s for i, s in enumerate(specs)} | {"op": op, "compile": comp},
                measures=(f"inductor's fused {op} kernel (reduction order, vectorised exp/rsqrt)" if comp
                          else f"eager ATen {op} (the control for the compiled probe)"),
                run=partial(_run_op, op, specs, "cpu", comp), requires=("torch",)))
    return probes


# --------------------------------------------------------------------------------------------
# JAX / XLA CPU on the torch-cpu probes' operands
# --------------------------------------------------------------------------------------------
def jax_or_unsupported():
    """The ``jax`` module, or ProbeUnsupported saying why it cannot run here (the probe is skipped)."""
    try:
        return require_jax()
    except FrameworkUnavailable as exc:
        raise ProbeUnsupported(str(exc)) from exc


def _jax_op(op: str, specs, device: str = "cpu") -> np.ndarray:
    jax = jax_or_unsupported()
    import jax.numpy as jnp

    try:
        dev = jax.devices(device)[0]
    except RuntimeError as exc:
        raise ProbeUnsupported(f"JAX has no {device} backend: {exc}") from exc
    arrays = [jax.device_put(jnp.asarray(np.array(operand(s))), dev) for s in specs]
    if op == "matmul":
        out = jnp.matmul(arrays[0], arrays[1], precision=jax.lax.Precision.HIGHEST)
    elif op == "sum":
        out = jnp.sum(arrays[0], axis=-1)
    elif op == "softmax":
        out = jax.nn.softmax(arrays[0], axis=-1)
    elif op == "rmsnorm":
        x = arrays[0]
        out = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    else:
        raise ValueError(op)
    return np.asarray(out)


def _jax_probes() -> list[Probe]:
    a, b = spec(31, (64, 1024), "fp32"), spec(32, (1024, 64), "fp32")  # = torch-cpu/matmul/fp32/64x1024x64
    cases = [("matmul", (a, b), "64x1024x64", "XLA CPU dot (Eigen / oneDNN) K order vs torch's CPU GEMM"),
             ("sum", (spec(51, (64, 4097), "fp32"),), "64x4097", "XLA CPU reduce order vs ATen's sum"),
             ("softmax", (spec(61, (64, 1000), "fp32"),), "64x1000", "XLA CPU exp + reduce vs ATen softmax"),
             ("rmsnorm", (spec(1702, (64, 896), "fp32"),), "64x896", "XLA fused RMSNorm vs eager / inductor")]
    return [Probe(id=f"jax-cpu/{op}/fp32/{shape}", family="stack-framework", backend="jax-cpu",
                  inputs={f"x{i}": s for i, s in enumerate(specs)} | {"op": op, "framework": "jax"},
                  measures=measures, run=partial(_jax_op, op, specs))
            for op, specs, shape, measures in cases]


# --------------------------------------------------------------------------------------------
# GPU-only stack flags (they skip on a CPU machine with the reason)
# --------------------------------------------------------------------------------------------
def _cuda_gemm_flag(a_spec, b_spec, flag: str, value) -> np.ndarray:
    import torch

    a, b = device_operand(a_spec, "cuda"), device_operand(b_spec, "cuda")
    m = torch.backends.cuda.matmul
    if flag == "preferred_blas_library":
        old = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library(value)
        try:
            out = a @ b
            torch.cuda.synchronize()
        finally:
            torch.backends.cuda.preferred_blas_library(old)
        return from_torch(out)
    old = getattr(m, flag)
    setattr(m, flag, value)
    try:
        out = a @ b
        torch.cuda.synchronize()
    finally:
        setattr(m, flag, old)
    return from_torch(out)


def _scaled_mm(a_spec, b_spec, scaling: str, fast_accum: bool) -> np.ndarray:
    import torch

    if torch.cuda.get_device_capability() < (8, 9):
        raise ProbeUnsupported("fp8 torch._scaled_mm needs sm_89+ (Ada / Hopper / Blackwell)")
    a = device_operand(a_spec, "cuda").float()
    b = device_operand(b_spec, "cuda").float()
    fmax = torch.finfo(torch.float8_e4m3fn).max
    if scaling == "tensor":
        sa = (a.abs().amax() / fmax).reshape(())
        sb = (b.abs().amax() / fmax).reshape(())
        aq, bq = (a / sa).to(torch.float8_e4m3fn), (b / sb).to(torch.float8_e4m3fn)
    else:  # per row of A, per column of B
        sa = a.abs().amax(dim=1, keepdim=True) / fmax
        sb = b.abs().amax(dim=0, keepdim=True) / fmax
        aq, bq = (a / sa).to(torch.float8_e4m3fn), (b / sb).to(torch.float8_e4m3fn)
    bq = bq.t().contiguous().t()  # column-major B, as _scaled_mm requires
    try:
        out = torch._scaled_mm(aq, bq, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                               use_fast_accum=fast_accum)
    except RuntimeError as exc:
        raise ProbeUnsupported(f"torch._scaled_mm ({scaling} scales) refused: {str(exc)[:200]}") from exc
    torch.cuda.synchronize()
    return from_torch(out)


def _int_mm(a_spec, b_spec) -> np.ndarray:
    import torch

    a = torch.round(device_operand(a_spec, "cuda").float() * 30).clamp(-127, 127).to(torch.int8)
    b = torch.round(device_operand(b_spec, "cuda").float() * 30).clamp(-127, 127).to(torch.int8)
    out = torch._int_mm(a, b)
    torch.cuda.synchronize()
    # int32 sums (|x| <= 127 * 127 * 4096 < 2^53) as exact fp64: the feature extractor reads float
    # formats (the H200 run failed on the int32 array)
    return out.cpu().numpy().astype(np.float64)


def _int_mm_reference(a_spec, b_spec) -> np.ndarray:
    a = np.clip(np.round(operand(a_spec).astype(np.float32) * np.float32(30)), -127, 127).astype(np.int64)
    b = np.clip(np.round(operand(b_spec).astype(np.float32) * np.float32(30)), -127, 127).astype(np.int64)
    return (a @ b).astype(np.float64)


def _gpu_probes() -> list[Probe]:
    probes = []
    cuda = ("torch", "cuda")
    # the reduced-precision-reduction flags on the split-K shape, one probe per format and setting
    for fmt, seeds in (("bf16", (1801, 1802)), ("fp16", (1803, 1804))):
        a, b = spec(seeds[0], (256, 4096), fmt), spec(seeds[1], (4096, 256), fmt)
        flag = f"allow_{fmt}_reduced_precision_reduction"
        for value in (True, False):
            probes.append(Probe(
                id=f"torch-cuda/matmul-{flag.replace('_', '-')}/{fmt}/256x4096x256/{'on' if value else 'off'}",
                family="stack-blas", backend="torch-cuda", inputs={"a": a, "b": b, flag: value},
                measures=f"cuBLAS split-K reduction with {flag}={value}",
                run=partial(_cuda_gemm_flag, a, b, flag, value), requires=cuda, output_format=fmt,
                profile_kernels=True))
    for m in (8, 256):
        am, bm = spec(1810 + m, (m, 4096), "bf16"), spec(1811 + m, (4096, 4096), "bf16")
        for lib in ("cublas", "cublaslt"):
            probes.append(Probe(
                id=f"torch-cuda/matmul-blas-{lib}/bf16/{m}x4096x4096", family="stack-blas",
                backend="torch-cuda", inputs={"a": am, "b": bm, "preferred_blas_library": lib},
                measures=f"torch.backends.cuda.preferred_blas_library({lib!r}) kernel choice",
                run=partial(_cuda_gemm_flag, am, bm, "preferred_blas_library", lib), requires=cuda,
                output_format="bf16", profile_kernels=True))
    a8, b8 = spec(1821, (16, 4096), "fp32"), spec(1822, (4096, 4096), "fp32")
    for scaling in ("tensor", "row"):
        for fast in (True, False):
            probes.append(Probe(
                id=f"torch-cuda/scaled-mm/e4m3/16x4096x4096/{scaling}-{'fast' if fast else 'slow'}",
                family="stack-quant", backend="torch-cuda",
                inputs={"a": a8, "b": b8, "scaling": scaling, "use_fast_accum": fast},
                measures=("fp8 e4m3 torch._scaled_mm: wgmma fp8 block (G=32, F=13) and whether the "
                          "accumulator is promoted to fp32 (use_fast_accum=False)"),
                run=partial(_scaled_mm, a8, b8, scaling, fast), requires=cuda, output_format="bf16",
                profile_kernels=True))
    ai, bi = spec(1831, (32, 4096), "fp32"), spec(1832, (4096, 4096), "fp32")
    probes.append(Probe(
        id="torch-cuda/int-mm/int8/32x4096x4096", family="stack-quant", backend="torch-cuda",
        inputs={"a": ai, "b": bi, "quant": "round(x*30) int8"},
        measures="int8 torch._int_mm, int32 accumulation: exact, so equal everywhere (a check, not a fingerprint)",
        run=partial(_int_mm, ai, bi), requires=cuda, output_format="fp64",
        reference=partial(_int_mm_reference, ai, bi), role="control", profile_kernels=True))
    for op, shape in (("rmsnorm", (64, 4096)), ("softmax", (64, 1000))):
        x = spec(1840 + len(op), shape, "fp32")
        for comp in (False, True):
            probes.append(Probe(
                id=f"torch-cuda/{op}-{'compiled' if comp else 'eager'}/fp32/{shape[0]}x{shape[1]}",
                family="stack-compile", backend="torch-cuda", inputs={"x": x, "op": op, "compile": comp},
                measures=f"{'inductor Triton' if comp else 'eager ATen'} {op} on CUDA (reduction tree, exp)",
                run=partial(_run_op, op, (x,), "cuda", comp),
                requires=("torch", "cuda", "triton") if comp else cuda, profile_kernels=True))
    return probes


def _register() -> None:
    # the "stack" suite: opt-in (`hspi probe --suite stack`), not part of the default fingerprint
    # (inductor compiles take seconds per op, and the shipped references predate these probes)
    for p in _compile_probes() + _jax_probes() + _gpu_probes():
        register(dataclasses.replace(p, suite="stack"))


_register()
