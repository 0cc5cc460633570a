"""The full probe suite beyond ``basic``: every probe is data (id, family, backend, seeded inputs,
what it measures, the plans that should explain it) plus a run function.

Families (ids are ``<backend>/<op>/<dtype>/<shape>[/<variant>]``):

- ``library-gemm``  torch CUDA GEMMs at decode (M = 1..64) and prefill (M = 128..1024) shapes in
  bf16 / fp16 / tf32 / fp32, one shared B per dtype so an M sweep changes nothing but M
  (DESIGN.md: cuBLAS picks different kernels on H100 and H200 for M <= 32); CUDA kernel names
  are recorded (nvjet_* / splitKreduce_kernel); CPU GEMM (torch CPU fp16).
- ``reduction``     sums, softmax and layer norm on CPU (numpy, torch) and CUDA; numpy's sums come
  with the plans that explain them bit for bit.
- ``elementwise``   exp / tanh / gelu (SIMD libm on the CPU: AVX2 vs AVX-512 paths; SFU or
  libdevice on the GPU).
- ``attention``     ``scaled_dot_product_attention`` with each backend forced (flash, efficient,
  cudnn, math) through ``torch.nn.attention.sdpa_kernel``; CPU default backend.
- ``kernel``        our CUDA kernels (CUDA-core GEMM orders, row/grid reductions, mma.sync and
  wgmma tensor-core GEMMs, fma) and Triton kernels (fixed-order GEMM, explicit-order row sum):
  each records ``explained_by`` = its declared plan evaluated exactly on the probe's inputs
  (``numerics.evaluate``), expected N/N. The atomicAdd reduction is a *control*.

Every probe is small (≤ 1024×4096×4096 GEMM, ≤ 4M-element reductions): the suite costs seconds
on a GPU; operand generation is shared through ``basic.operand`` / ``basic.device_operand``.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from hspi_kernels.kernels.cuda import elementwise, gemm_cuda_core
from hspi_kernels.kernels.cuda import gemm_tensor_core as tc
from hspi_kernels.kernels.cuda import reduction as cuda_reduction
from hspi_kernels.kernels.triton import gemm as triton_gemm
from hspi_kernels.kernels.triton import reduction as triton_reduction
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.evaluate import gemm as evaluate_gemm
from hspi_kernels.numerics.plans import Sequential, plan_from_json
from hspi_kernels.probes.basic import device_operand, operand
from hspi_kernels.probes.inputs import from_torch, spec
from hspi_kernels.probes.registry import Probe, ProbeUnsupported, register

_FP64_REFERENCE_MAC_LIMIT = 2**31
_CUDA = ("torch", "cuda")
_HSPI_CUDA = ("torch", "cuda", "cupy")
_TRITON = ("torch", "cuda", "triton")


def _device_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Library GEMMs
# ---------------------------------------------------------------------------------------------
def _torch_mm(a_spec, b_spec, device: str, precision: str):
    import torch

    a, b = device_operand(a_spec, device), device_operand(b_spec, device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        out = a @ b
        _sync(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return from_torch(out)


def _numpy_mm(a_spec, b_spec):
    return operand(a_spec) @ operand(b_spec)


def _mm_reference(a_spec, b_spec):
    return operand(a_spec).astype(np.float64) @ operand(b_spec).astype(np.float64)


def _gemm(backend: str, m: int, k: int, n: int, dtype: str, a_seed: int, b_seed: int, measures: str,
          precision: str | None = None) -> Probe:
    """``[m,k] @ [k,n]``; ``precision`` "tf32" lets cuBLAS use tf32 tensor cores for fp32 operands."""
    a_spec, b_spec = spec(a_seed, (m, k), dtype), spec(b_seed, (k, n), dtype)
    label = precision or dtype
    device = "cuda" if backend == "torch-cuda" else "cpu"
    if backend == "numpy":
        run, requires = partial(_numpy_mm, a_spec, b_spec), ()
    else:
        run = partial(_torch_mm, a_spec, b_spec, device, label)
        requires = _CUDA if device == "cuda" else ("torch",)
    return Probe(
        id=f"{backend}/matmul/{label}/{m}x{k}x{n}",
        family="library-gemm",
        backend=backend,
        inputs={"a": a_spec, "b": b_spec, "allow_tf32": label == "tf32"},
        measures=measures,
        run=run,
        requires=requires,
        output_format="fp32" if label == "tf32" else dtype,
        reference=partial(_mm_reference, a_spec, b_spec) if m * k * n <= _FP64_REFERENCE_MAC_LIMIT else None,
        profile_kernels=device == "cuda",
    )


def _register_gemms() -> None:
    # bf16: M = 1..256 at [M,4096]x[4096,4096] are in basic (one B per M, kept for the older
    # records); these share one B, so the sweep isolates the heuristics' reaction to M.
    for m in (2, 4, 128, 1024):
        register(_gemm("torch-cuda", m, 4096, 4096, "bf16", 1200 + m, 1200,
                       "cuBLAS bf16 kernel choice at this M (split-K / stream-K, tile shape)"))
    for m in (1, 16, 32, 64, 256):
        register(_gemm("torch-cuda", m, 4096, 4096, "fp16", 1500 + m, 1500,
                       "cuBLAS fp16 kernel choice at this M (split-K or not, tile K)"))
    for m in (8, 256):
        register(_gemm("torch-cuda", m, 4096, 4096, "fp32", 1600 + m, 1600,
                       "cuBLAS tf32 tensor-core kernel at this M (operand truncation, split-K)", precision="tf32"))
    register(_gemm("torch-cuda", 8, 4096, 4096, "fp32", 1700, 1600,
                   "cuBLAS fp32 (FFMA, no tensor cores) at decode M: split-K and K order"))
    register(_gemm("torch-cuda", 8, 4096, 11008, "bf16", 1800, 1801,
                   "cuBLAS bf16 decode GEMM at a Llama MLP width (N = 11008): kernel choice"))
    # CPU BLAS
    register(_gemm("torch-cpu", 64, 1024, 64, "fp16", 2200, 2201,
                   "torch CPU fp16 GEMM: accumulation format and K blocking"))


# ---------------------------------------------------------------------------------------------
# Reductions and normalisations
# ---------------------------------------------------------------------------------------------
def _numpy_reduce(op: str, x_spec):
    x = operand(x_spec)
    if op == "colsum":
        return x.sum(axis=0)
    if op == "dot":
        return np.asarray(np.dot(x[0], x[1]))
    raise ValueError(op)


def _torch_reduce(op: str, x_spec, device: str):
    import torch

    x = device_operand(x_spec, device)
    if op == "sum":
        out = x.sum(dim=-1)
    elif op == "vector_sum":
        out = x.sum()
    elif op == "softmax":
        out = x.softmax(dim=-1)
    elif op == "layer_norm":
        out = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-5)
    elif op == "logsumexp":
        out = x.logsumexp(dim=-1)
    else:
        raise ValueError(op)
    _sync(device)
    return from_torch(out)


def _reduce_reference(op: str, x_spec):
    x = operand(x_spec).astype(np.float64)
    if op == "sum":
        return x.sum(axis=-1)
    if op == "vector_sum":
        return np.asarray(x.sum())
    if op == "colsum":
        return x.sum(axis=0)
    if op == "dot":
        return np.asarray(np.dot(x[0], x[1]))
    if op == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if op == "layer_norm":
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5)
    if op == "logsumexp":
        mx = x.max(axis=-1)
        return mx + np.log(np.exp(x - mx[:, None]).sum(axis=-1))
    raise ValueError(op)


def _colsum_plan_eval(x_spec, plan_json):
    return evaluate(plan_from_json(plan_json), np.ascontiguousarray(operand(x_spec).T, dtype=np.float32))


def _reduction(backend: str, op: str, shape: tuple[int, ...], dtype: str, seed: int, measures: str,
               plans=(), plan_eval=None) -> Probe:
    x_spec = spec(seed, shape, dtype)
    device = "cuda" if backend == "torch-cuda" else "cpu"
    if backend == "numpy":
        run, requires = partial(_numpy_reduce, op, x_spec), ()
    else:
        run = partial(_torch_reduce, op, x_spec, device)
        requires = _CUDA if device == "cuda" else ("torch",)
    return Probe(
        id=f"{backend}/{op}/{dtype}/{'x'.join(map(str, shape))}",
        family="reduction",
        backend=backend,
        inputs={"x": x_spec, "dim": 0 if op == "colsum" else -1},
        measures=measures,
        run=run,
        requires=requires,
        output_format=dtype,
        reference=partial(_reduce_reference, op, x_spec),
        plans=plans,
        plan_eval=plan_eval,
        profile_kernels=device == "cuda",
    )


def _register_reductions() -> None:
    col_spec_seed = 2300
    register(_reduction("numpy", "colsum", (1000, 64), "fp32", col_spec_seed,
                        "numpy sum over a strided axis: row-by-row accumulation (no pairwise blocks)",
                        plans=(Sequential("fp32", init="zero").to_json(),),
                        plan_eval=partial(_colsum_plan_eval, spec(col_spec_seed, (1000, 64), "fp32"))))
    register(_reduction("numpy", "dot", (2, 65536), "fp32", 2310,
                        "BLAS sdot kernel of this CPU (vector width, unrolling: AVX2 vs AVX-512 paths)"))
    register(_reduction("torch-cpu", "sum", (64, 4097), "bf16", 2320,
                        "torch CPU bf16 sum: fp32 accumulation lanes and final rounding"))
    register(_reduction("torch-cpu", "layer_norm", (64, 4096), "fp32", 2330,
                        "torch CPU layer norm: mean/variance algorithm (Welford vs two-pass) and rsqrt"))
    register(_reduction("torch-cpu", "logsumexp", (64, 1000), "fp32", 2340,
                        "torch CPU logsumexp: vectorised exp/log and reduction order"))
    register(_reduction("torch-cuda", "sum", (64, 4097), "bf16", 2400,
                        "torch CUDA bf16 row sum: block reduction tree and vector width"))
    register(_reduction("torch-cuda", "vector_sum", (1 << 22,), "fp32", 2410,
                        "torch CUDA full-tensor sum: grid size (SM count) and two-pass tree"))
    register(_reduction("torch-cuda", "layer_norm", (64, 4096), "fp32", 2420,
                        "torch CUDA layer norm kernel: Welford combine order, rsqrt"))
    register(_reduction("torch-cuda", "layer_norm", (64, 4096), "bf16", 2430,
                        "torch CUDA bf16 layer norm: vectorised kernel choice and rounding"))
    register(_reduction("torch-cuda", "softmax", (64, 4096), "bf16", 2440,
                        "torch CUDA bf16 softmax: exp path and reduction order"))


# ---------------------------------------------------------------------------------------------
# Elementwise transcendental functions
# ---------------------------------------------------------------------------------------------
def _elementwise(op: str, x_spec, backend: str):
    if backend == "numpy":
        return getattr(np, op)(operand(x_spec))
    import torch

    device = "cuda" if backend == "torch-cuda" else "cpu"
    x = device_operand(x_spec, device)
    out = torch.nn.functional.gelu(x) if op == "gelu" else getattr(torch, op)(x)
    _sync(device)
    return from_torch(out)


def _elementwise_reference(op: str, x_spec):
    x = operand(x_spec).astype(np.float64)
    if op == "gelu":
        erf = np.frompyfunc(math.erf, 1, 1)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))
    return getattr(np, op)(x)


def _register_elementwise() -> None:
    n = 1 << 14
    for backend, ops in (("numpy", ("exp", "tanh")), ("torch-cpu", ("exp", "tanh", "gelu")),
                         ("torch-cuda", ("exp", "tanh", "gelu"))):
        for i, op in enumerate(ops):
            x_spec = spec(2500 + i, (n,), "fp32", scale=4.0)
            device = "cuda" if backend == "torch-cuda" else "cpu"
            where = {"numpy": "numpy SIMD loops (AVX2 / AVX-512 / scalar libm)",
                     "torch-cpu": "torch CPU vectorised (SLEEF, ISA level)",
                     "torch-cuda": "CUDA math (libdevice / fast intrinsics)"}[backend]
            register(Probe(
                id=f"{backend}/{op}/fp32/{n}",
                family="elementwise",
                backend=backend,
                inputs={"x": x_spec},
                measures=f"{op} implementation of {where}",
                run=partial(_elementwise, op, x_spec, backend),
                requires=() if backend == "numpy" else (_CUDA if device == "cuda" else ("torch",)),
                reference=partial(_elementwise_reference, op, x_spec),
                profile_kernels=False,
            ))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}


def _sdpa(q_spec, k_spec, v_spec, device: str, backend: str | None, causal: bool):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (device_operand(s, device) for s in (q_spec, k_spec, v_spec))
    if backend is None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        try:
            with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except RuntimeError as exc:
            if "No available kernel" in str(exc):
                raise ProbeUnsupported(f"sdpa backend {backend} has no kernel here: {str(exc)[:200]}") from None
            raise
    _sync(device)
    return from_torch(out)


def _sdpa_reference(q_spec, k_spec, v_spec, causal: bool):
    q, k, v = (operand(s).astype(np.float64) for s in (q_spec, k_spec, v_spec))
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = scores.shape[-1]
        scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v


def _attention(device_backend: str, sdpa_backend: str | None, dtype: str, shape: tuple[int, int, int, int],
               seed: int, causal: bool = True) -> Probe:
    q_spec, k_spec, v_spec = (spec(seed + i, shape, dtype) for i in range(3))
    device = "cuda" if device_backend == "torch-cuda" else "cpu"
    variant = sdpa_backend or "default"
    what = {"flash": "FlashAttention-2 kernel (tile order of the online softmax)",
            "efficient": "memory-efficient (xformers/CUTLASS) kernel",
            "cudnn": "cuDNN fused attention (version-dependent kernels)",
            "math": "unfused math path (bmm + softmax + bmm through cuBLAS)",
            "default": "the backend torch picks by default and its order"}[variant]
    return Probe(
        id=f"{device_backend}/sdpa/{dtype}/{'x'.join(map(str, shape))}/{variant}",
        family="attention",
        backend=device_backend,
        inputs={"q": q_spec, "k": k_spec, "v": v_spec, "is_causal": causal, "sdpa_backend": variant},
        measures=f"scaled_dot_product_attention, {what}",
        run=partial(_sdpa, q_spec, k_spec, v_spec, device, sdpa_backend, causal),
        requires=_CUDA if device == "cuda" else ("torch",),
        output_format=dtype,
        reference=partial(_sdpa_reference, q_spec, k_spec, v_spec, causal),
        profile_kernels=device == "cuda",
    )


def _register_attention() -> None:
    shape = (1, 8, 256, 64)
    for i, backend in enumerate(SDPA_BACKENDS):
        register(_attention("torch-cuda", backend, "bf16", shape, 2600 + 10 * i))
    register(_attention("torch-cuda", "math", "fp32", shape, 2650))
    register(_attention("torch-cpu", None, "fp32", shape, 2660))


# ---------------------------------------------------------------------------------------------
# Our CUDA kernels: the bits must equal the declared plan's, N/N
# ---------------------------------------------------------------------------------------------
def _as_f32(s) -> np.ndarray:
    return np.ascontiguousarray(operand(s), dtype=np.float32)


def _gemm_plan_eval(a_spec, b_spec, plan_json, out_dtype=np.float32):
    return evaluate_gemm(plan_from_json(plan_json), _as_f32(a_spec), _as_f32(b_spec)).astype(out_dtype)


def _run_cuda_core_gemm(a_spec, b_spec, order: str, fused: bool):
    out = gemm_cuda_core.gemm(device_operand(a_spec, "cuda"), device_operand(b_spec, "cuda"), order, fused)
    _sync("cuda")
    return from_torch(out)


def _run_tc_gemm(a_spec, b_spec, fmt: str, path: str, split_k: int):
    fn = tc.wgmma_gemm if path == "wgmma" else tc.mma_sync_gemm
    out = fn(device_operand(a_spec, "cuda"), device_operand(b_spec, "cuda"), in_format=fmt, split_k=split_k)
    _sync("cuda")
    return from_torch(out)


def _tc_plans(fmt: str, path: str, split_k: int):
    return (tc.plan(in_format=fmt, split_k=split_k, path=path, arch=_device_arch()).to_json(),)


def _run_rows(x_spec, variant: str):
    out = cuda_reduction.reduce_rows(device_operand(x_spec, "cuda"), variant)
    _sync("cuda")
    return from_torch(out)


def _run_vector(x_spec, atomic: bool):
    fn = cuda_reduction.reduce_vector_atomic if atomic else cuda_reduction.reduce_vector
    out = fn(device_operand(x_spec, "cuda"))
    _sync("cuda")
    return from_torch(out)


def _reduce_plan_eval(x_spec, plan_json):
    return evaluate(plan_from_json(plan_json), _as_f32(x_spec))


def _fma_inputs(seed: int):
    return elementwise.sample_inputs(1 << 16, seed)


def _run_fma(seed: int, fused: bool):
    import torch

    a, b, c = (torch.from_numpy(x).cuda() for x in _fma_inputs(seed))
    out = elementwise.fma(a, b, c, fused)
    _sync("cuda")
    return from_torch(out)


def _fma_plan_eval(seed: int, fused: bool, plan_json):
    return elementwise.reference(*_fma_inputs(seed), fused=fused)  # the plan, NaNs canonical


def _kernel_probe(pid: str, measures: str, inputs: dict, run, plans, plan_eval, requires=_HSPI_CUDA,
                  role: str = "fingerprint", output_format: str = "fp32", backend: str = "hspi-cuda") -> Probe:
    return Probe(id=pid, family="kernel", backend=backend, inputs=inputs, measures=measures, run=run,
                 requires=requires, output_format=output_format, plans=plans, plan_eval=plan_eval, role=role)


def _register_hspi_cuda() -> None:
    a_spec, b_spec = spec(3000, (64, 1024), "fp32"), spec(3001, (1024, 64), "fp32")
    for order, fused, extra in (("sequential", True, {}), ("sequential", False, {}),
                                ("strided", True, {"lanes": 8}), ("splitk", True, {"parts": 4})):
        p = gemm_cuda_core.plan(order, "fp32", fused, **extra).to_json()
        tag = order + ("" if fused else "-mul-add")
        register(_kernel_probe(
            f"hspi-cuda/gemm-cuda-core/fp32/64x1024x64/{tag}",
            f"our CUDA-core GEMM, order {tag}: FFMA vs FMUL+FADD and the stated order on this GPU",
            {"a": a_spec, "b": b_spec, "order": order, "fused": fused, **extra},
            partial(_run_cuda_core_gemm, a_spec, b_spec, order, fused), (p,),
            partial(_gemm_plan_eval, a_spec, b_spec)))
    for fmt, path, split_k, seed in (("bf16", "mma.sync", 1, 3100), ("fp16", "mma.sync", 1, 3110),
                                     ("bf16", "mma.sync", 4, 3120), ("bf16", "wgmma", 1, 3130),
                                     ("fp16", "wgmma", 1, 3140)):
        dtype = fmt
        ta, tb = spec(seed, (64, 1024), dtype), spec(seed + 1, (1024, 64), dtype)
        requires = _HSPI_CUDA + (("sm_90",) if path == "wgmma" else ("sm_80",))
        register(_kernel_probe(
            f"hspi-cuda/{path}/{fmt}/64x1024x64" + (f"/splitk{split_k}" if split_k > 1 else ""),
            f"tensor-core block arithmetic ({path} {fmt}: block size G, alignment F, truncation) of this GPU",
            {"a": ta, "b": tb, "path": path, "split_k": split_k},
            partial(_run_tc_gemm, ta, tb, fmt, path, split_k), partial(_tc_plans, fmt, path, split_k),
            partial(_gemm_plan_eval, ta, tb), requires=requires))
    x_spec = spec(3200, (64, 4097), "fp32")
    for variant in cuda_reduction.ROW_VARIANTS:
        register(_kernel_probe(
            f"hspi-cuda/reduce-rows/fp32/64x4097/{variant}",
            f"our row reduction, {variant} order (shuffles, shared-memory tree) on this GPU",
            {"x": x_spec, "variant": variant}, partial(_run_rows, x_spec, variant),
            (cuda_reduction.plan(variant).to_json(),), partial(_reduce_plan_eval, x_spec)))
    v_spec = spec(3210, (1 << 20,), "fp32")
    register(_kernel_probe(
        "hspi-cuda/reduce-vector/fp32/1048576/grid_two_pass",
        "our deterministic two-pass grid reduction (fixed grid, not the SM count)",
        {"x": v_spec, "variant": "grid_two_pass"}, partial(_run_vector, v_spec, False),
        (cuda_reduction.plan("grid_two_pass").to_json(),), partial(_reduce_plan_eval, v_spec)))
    register(_kernel_probe(
        "hspi-cuda/reduce-vector/fp32/1048576/atomic",
        "control: atomicAdd in arrival order must be flagged nondeterministic",
        {"x": v_spec, "variant": "atomic"}, partial(_run_vector, v_spec, True), (), None, role="control"))
    for fused in (True, False):
        register(_kernel_probe(
            f"hspi-cuda/fma/fp32/65536/{'fused' if fused else 'mul-add'}",
            "exactly specified fp32 fma / mul+add incl. specials: must be identical on every GPU",
            {"seed": 3300, "generator": "cuda.elementwise.sample_inputs", "n": 1 << 16, "fused": fused},
            partial(_run_fma, 3300, fused), (elementwise.plan(fused).to_json(),), partial(_fma_plan_eval, 3300, fused)))


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
def _triton_gemm_config(fmt: str):
    if fmt == "fp32":
        return triton_gemm.default_config(fmt, input_precision="ieee")
    return triton_gemm.default_config(fmt)


def _run_triton_gemm(a_spec, b_spec, fmt: str):
    import torch

    out = triton_gemm.matmul(device_operand(a_spec, "cuda"), device_operand(b_spec, "cuda"), _triton_gemm_config(fmt),
                      out_dtype=torch.float32)
    _sync("cuda")
    return from_torch(out)


def _triton_gemm_plans(fmt: str, k: int):
    p = triton_gemm.plan(_triton_gemm_config(fmt), fmt, k, arch=_device_arch())
    return () if p is None else (p.to_json(),)


def _run_triton_row_sum(x_spec, block: int):
    out = triton_reduction.row_sum(device_operand(x_spec, "cuda"), block=block, order="explicit")
    _sync("cuda")
    return from_torch(out)


def _triton_row_sum_plans(n: int, block: int):
    return (triton_reduction.plan(n, block=block).to_json(),)


def _register_triton() -> None:
    for fmt, seed in (("bf16", 3400), ("fp32", 3410)):
        a_spec, b_spec = spec(seed, (64, 1024), fmt), spec(seed + 1, (1024, 64), fmt)
        register(_kernel_probe(
            f"triton/gemm/{fmt}/64x1024x64",
            "our fixed-order Triton GEMM: " + ("wgmma/mma block arithmetic of this GPU" if fmt == "bf16"
                                               else "CUDA-core fma chain (must match every GPU)"),
            {"a": a_spec, "b": b_spec, "config": "default_config" + ("(ieee)" if fmt == "fp32" else "")},
            partial(_run_triton_gemm, a_spec, b_spec, fmt), partial(_triton_gemm_plans, fmt, 1024),
            partial(_gemm_plan_eval, a_spec, b_spec), requires=_TRITON, backend="triton"))
    x_spec = spec(3420, (64, 4097), "fp32")
    register(_kernel_probe(
        "triton/row-sum/fp32/64x4097/explicit",
        "our Triton row sum with an explicit lane + halving-tree order",
        {"x": x_spec, "block": 1024, "order": "explicit"}, partial(_run_triton_row_sum, x_spec, 1024),
        partial(_triton_row_sum_plans, 4097, 1024),
        partial(_reduce_plan_eval, x_spec), requires=_TRITON, backend="triton"))


def _register_suite() -> None:
    _register_gemms()
    _register_reductions()
    _register_elementwise()
    _register_attention()
    _register_hspi_cuda()
    _register_triton()


_register_suite()
