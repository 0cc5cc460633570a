"""Triton probe kernels on the CPU: the Triton interpreter (TRITON_INTERPRET=1) runs every kernel
on small shapes with ragged edges, and sm_90 compile-only checks read the PTX.

The interpreter's ``tl.dot`` is numpy matmul in fp32, not tensor-core arithmetic, so GEMM and
attention are checked against fp64 within the bound of fp32 accumulation
(``|err| <= 2 K u32 sum|a b| + u_out |ref|``, u32 = 2^-24) or, for attention, against k x the
error of torch's same-precision baseline (flash-attention style); orders made of fp32 additions
(split-K combine, the reductions, the revealed tl.sum tree) are compared with ``==`` against
their plans. Skipped with the reason when torch or triton is missing.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the kernels are defined lazily)

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the Triton kernels need torch")
triton = pytest.importorskip("triton", reason="the Triton kernels need triton (pip install triton==3.6.0)")


def _interpreter_shims():
    """Three Triton 3.6 interpreter defects, patched for this module only: scalars are 1-element
    arrays whose ``__index__`` uses ``int(array)`` (an error with numpy >= 2.4, breaking
    ``range(tensor, tensor)``), bf16 ``tl.dot`` multiplies the raw uint16 storage, and
    fp32 -> bf16 casts truncate (the GPU's ``cvt.rn.bf16.f32`` rounds to nearest even)."""
    import ml_dtypes
    import triton.language as tl
    import triton.runtime.interpreter as interp

    patch_tensor = interp._patch_lang_tensor

    def patched_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    create_dot = interp.InterpreterBuilder.create_dot

    def widened_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(h):
            if h.dtype == tl.bfloat16:
                return interp.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            return h

        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    cast_impl = interp.InterpreterBuilder.cast_impl

    def rounding_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return interp.TensorHandle(src.data.astype(ml_dtypes.bfloat16).view(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    interp._patch_lang_tensor = patched_tensor
    interp.InterpreterBuilder.create_dot = widened_dot
    interp.InterpreterBuilder.cast_impl = rounding_cast
    return lambda: (setattr(interp, "_patch_lang_tensor", patch_tensor),
                    setattr(interp.InterpreterBuilder, "create_dot", create_dot),
                    setattr(interp.InterpreterBuilder, "cast_impl", cast_impl))


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    undo = _interpreter_shims()
    yield
    undo()


from hspi_kernels.numerics.evaluate import evaluate, gemm as plan_gemm  # noqa: E402
from hspi_kernels.kernels.triton import attention as A  # noqa: E402
from hspi_kernels.kernels.triton import gemm as G  # noqa: E402
from hspi_kernels.kernels.triton import reduction as R  # noqa: E402

SMALL = G.GemmConfig(block_m=16, block_n=32, block_k=16, group_m=2, num_warps=4, num_stages=2)
U32 = 2.0**-24
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "e4m3": torch.float8_e4m3fn}
U_OUT = {torch.float32: U32, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _bits(t) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(t, dtype=np.float32)).view(np.int32)


def _gemm_bound(a, b, out_dtype, input_rounding: float = 0.0):
    a64, b64 = a.double(), b.double()
    ref = a64 @ b64
    mag = a64.abs() @ b64.abs()
    K = a.shape[1]
    return ref, (2 * K * U32 + 2 * input_rounding) * mag + U_OUT[out_dtype] * ref.abs() + 1e-30


def test_import_is_lazy():
    import subprocess
    import sys

    code = ("import sys, hspi_kernels.kernels.triton as t, hspi_kernels.kernels.triton.gemm, hspi_kernels.kernels.triton.reduction, "
            "hspi_kernels.kernels.triton.attention, hspi_kernels.kernels.triton.torch_override; "
            "assert 'triton' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["plain", "split_k", "atomic", "persistent", "transposed_b"])
def test_gemm_vs_fp64(dtype, variant):
    torch.manual_seed(1)
    M, N, K = 37, 48, 72  # ragged in M and K tiles; N, K 16-byte aligned rows for TMA
    a = torch.randn(M, K).to(dtype)
    b = torch.randn(K, N).to(dtype)
    config = {"plain": SMALL, "split_k": SMALL.replace(split_k=3), "atomic": SMALL.replace(split_k=3, split_k_combine="atomic"),
              "persistent": SMALL.replace(persistent=True), "transposed_b": SMALL}[variant]
    if variant == "transposed_b":
        b = b.t().contiguous().t()
    if dtype == torch.float32:
        config = config.replace(input_precision="ieee")
    out = G.matmul(a, b, config)
    assert out.dtype == dtype and out.shape == (M, N)
    ref, bound = _gemm_bound(a, b, dtype)
    assert bool(((out.double() - ref).abs() <= bound).all())


@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_gemm_fp32_tensor_core_precisions(precision):
    torch.manual_seed(2)
    a, b = torch.randn(20, 40), torch.randn(40, 24)
    out = G.matmul(a, b, SMALL.replace(input_precision=precision))
    ref, bound = _gemm_bound(a, b, torch.float32, input_rounding=2.0**-11 if precision == "tf32" else 0.0)
    assert bool(((out.double() - ref).abs() <= bound).all())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("imprecise", [None, 32])
def test_gemm_fp8(fmt, imprecise):
    torch.manual_seed(3)
    dtype = torch.float8_e4m3fn if fmt == "e4m3" else torch.float8_e5m2
    a, b = torch.randn(20, 80).to(dtype), torch.randn(80, 24).to(dtype)
    config = G.GemmConfig(block_m=16, block_n=16, block_k=64, max_num_imprecise_acc=imprecise)
    out = G.matmul(a, b, config)
    assert out.dtype == torch.float32
    ref, bound = _gemm_bound(a.float(), b.float(), torch.float32)
    assert bool(((out.double() - ref).abs() <= bound).all())
    assert G.plan(config, fmt, 80) is not None


def test_split_k_fixed_combine_equals_its_plan():
    """Parts computed by the same kernel (split_k=1 on each K slice), then the combine kernel's
    bits must be the plan's combine: ((p0 + p1) + p2) in fp32."""
    from hspi_kernels.numerics.plans import Sequential

    torch.manual_seed(4)
    M, N, K = 19, 33, 80  # 5 K tiles of 16 in 3 parts: 2 + 2 + 1
    a = torch.randn(M, K) * 2.0 ** torch.randint(-12, 13, (M, K))
    b = torch.randn(K, N)
    config = SMALL.replace(split_k=3, input_precision="ieee")
    out = G.matmul(a, b, config)
    parts = [G.matmul(a[:, s].contiguous(), b[s].contiguous(), config.replace(split_k=1))
             for s in (slice(0, 32), slice(32, 64), slice(64, 80))]
    combined = evaluate(Sequential("fp32"), np.stack([p.numpy() for p in parts], axis=-1), backend="numpy")
    assert np.array_equal(_bits(out), _bits(combined))
    plan = G.plan(config, "fp32", K)
    assert plan.parts == 3 and plan.tile == 16 and plan.combine == Sequential("fp32")
    assert repr(G.plan(SMALL.replace(split_k=3, split_k_combine="atomic"), "bf16", K)) == "None"


def test_gemm_plans_evaluate():
    """Every plan the GEMM declares is accepted by the evaluator on padded operands."""
    rng = np.random.default_rng(5)
    for fmt, config in [("bf16", G.default_config("bf16")), ("fp16", G.default_config("fp16", split_k=2)),
                        ("fp32", G.default_config("fp32")), ("fp32", G.default_config("fp32", input_precision="ieee")),
                        ("e4m3", G.default_config("e4m3")), ("e4m3", G.default_config("e4m3", max_num_imprecise_acc=32))]:
        kp = G.padded_k(200, config)
        a = torch.from_numpy(rng.standard_normal((3, kp)).astype(np.float32)).to(_DTYPES[fmt]).float().numpy()
        b = torch.from_numpy(rng.standard_normal((kp, 2)).astype(np.float32)).to(_DTYPES[fmt]).float().numpy()
        got = plan_gemm(G.plan(config, fmt, 200), a, b, backend="numpy")
        assert np.all(np.abs(got - a.astype(np.float64) @ b) <= 1e-2 * (np.abs(a) @ np.abs(b)))
    assert G.plan(G.default_config("fp32", input_precision="tf32x3"), "fp32", 64) is None


def test_shape_rule_keeps_the_plan():
    """matmul's M-dependent table (shape_config) changes tiles, warps and stages only: for every
    M the plan equals the default configuration's plan (same K chain: batch invariance), the
    rule is a deterministic function of M, split-K never appears, and matmul without a config
    runs exactly the configuration shape_config names."""
    for fmt in ("bf16", "fp16", "fp32", "e4m3", "e5m2"):
        default = G.default_config(fmt)
        for K in (16, 520, 4096):
            want = repr(G.plan(default, fmt, K))
            for M in (*range(1, 300), 511, 512, 1024, 1025, 4096, 8192, 65536):
                for tma in (False, True):
                    config = G.shape_config(fmt, M, 4096, K, tma=tma)
                    assert config == G.shape_config(fmt, M, 4096, K, tma=tma)
                    assert config.split_k == 1 and config.deterministic
                    # the persistent TMA kernel only above the table, only for 16-bit inputs, only if asked
                    assert config.persistent == (tma and fmt in ("bf16", "fp16") and M > G.SHAPE_RULE[-1][0])
                    assert config.block_m >= 64 and config.num_warps % 4 == 0  # wgmma: one warpgroup, 64 rows
                    assert repr(G.plan(config, fmt, K)) == want, (fmt, M, K, config)
    assert G.shape_config("bf16", 8192) == G.default_config("bf16")
    assert G.shape_config("bf16", 8192, tma=True) == G.default_config("bf16").replace(**G.LARGE_M_TMA)
    assert G.shape_config("bf16", 1).block_m == 64
    torch.manual_seed(11)
    a, w = torch.randn(3, 40).to(torch.bfloat16), torch.randn(40, 24).to(torch.bfloat16)
    assert torch.equal(G.matmul(a, w), G.matmul(a, w, G.shape_config("bf16", 3, 24, 40)))


def test_large_m_takes_the_persistent_kernel_only_when_tma_ready():
    """Above the M table, matmul without a config runs the persistent TMA entry exactly when the
    operands allow it (row-major, 16-byte rows, 16-bit output), and its bits equal the plain
    kernel's (same plan); a column-major operand, an fp32 output or 8-byte rows refuse it."""
    torch.manual_seed(12)
    a, w = torch.randn(300, 64).to(torch.bfloat16), torch.randn(64, 272).to(torch.bfloat16)
    assert G.tma_ready(a, w, torch.bfloat16)
    assert not G.tma_ready(a, w, torch.float32)  # the fp32 staging tile does not fit shared memory
    assert not G.tma_ready(a.t().contiguous().t(), w, torch.bfloat16)  # column-major a
    assert not G.tma_ready(torch.randn(300, 60).to(torch.bfloat16), torch.randn(60, 272).to(torch.bfloat16),
                           torch.bfloat16)  # K rows of 120 bytes
    rule = G.shape_config("bf16", 300, tma=True)
    assert rule.persistent and rule.block_n == 256
    got = G.matmul(a, w)
    assert torch.equal(got, G.matmul(a, w, rule))
    assert torch.equal(got, G.matmul(a, w, G.default_config("bf16")))
    assert torch.equal(G.matmul(a, w, out_dtype=torch.float32), G.matmul(a, w, G.default_config("bf16"), out_dtype=torch.float32))


def test_gemm_rejects_bad_input():
    with pytest.raises(AssertionError):
        G.matmul(torch.randn(4, 5), torch.randn(6, 4))
    with pytest.raises(TypeError):
        G.matmul(torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError):
        G.GemmConfig(max_num_imprecise_acc=48)


def test_batch_invariance_interpreter():
    torch.manual_seed(6)
    a, w = torch.randn(40, 32).to(torch.bfloat16), torch.randn(32, 48).to(torch.bfloat16)
    full = G.matmul(a, w, SMALL)
    for rows in (1, 3, 16, 17):
        assert torch.equal(G.matmul(a[:rows], w, SMALL), full[:rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_and_col_sum_equal_their_plans(dtype):
    torch.manual_seed(7)
    x = (torch.randn(6, 203) * 2.0 ** torch.randint(-20, 21, (6, 203))).to(dtype)
    xf = x.float().numpy()
    got = R.row_sum(x, block=32)
    assert np.array_equal(_bits(got), _bits(evaluate(R.plan(203, block=32), xf, backend="numpy")))
    got = R.col_sum(x, block_r=4, block_c=64)
    ref = evaluate(R.plan(6, block=4), np.ascontiguousarray(xf.T), backend="numpy")
    assert np.array_equal(_bits(got), _bits(ref))
    # negative control: a wrong combine tree must not explain the bits
    from hspi_kernels.numerics.plans import Sequential, Strided

    wrong = evaluate(Strided(32, inner=Sequential(init="zero"), combine=Sequential()), xf, backend="numpy")
    assert not np.array_equal(_bits(R.row_sum(x, block=32)), _bits(wrong))


def test_reveal_tl_sum_order_reproduces_tl_sum():
    tree = R.reveal_tl_sum_order(block=32, num_warps=1, device="cpu")
    assert sorted(tree.leaves()) == list(range(32))
    torch.manual_seed(8)
    x = torch.randn(9, 96) * 2.0 ** torch.randint(-20, 21, (9, 96))
    got = R.row_sum(x, block=32, order="tl.sum", num_warps=1)
    ref = evaluate(R.plan(96, block=32, order="tl.sum", tl_sum_tree=tree), x.numpy(), backend="numpy")
    assert np.array_equal(_bits(got), _bits(ref))


ATT_SMALL = A.AttentionConfig(block_m=32, block_n=16, num_warps=4)


@pytest.mark.parametrize("mode", A.MODES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("S", [64, 50])
def test_attention_vs_fp64(causal, S, mode):
    torch.manual_seed(9)
    q, k, v = (torch.randn(1, 2, S, 16, dtype=torch.bfloat16) for _ in range(3))
    out = A.attention(q, k, v, causal=causal, config=ATT_SMALL, mode=mode)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = sdpa(q.double(), k.double(), v.double(), is_causal=causal)
    base_err = (sdpa(q, k, v, is_causal=causal).double() - ref).abs().max().item()
    err = (out.double() - ref).abs().max().item()
    assert err <= 4 * base_err, (err, base_err)
    import json

    json.dumps(A.plan(A.default_config(16, mode), causal=causal))


@pytest.fixture
def exact_interpreter():
    """The interpreter with the GPU's arithmetic where it differs: ``tl.fma`` fused (one
    rounding, :func:`fma32`; the interpreter rounds a*b then +c) and ``tl.dot`` the sm_90 wgmma
    tensor-core chain (the plan the GPU validation checks; the interpreter uses fp32 matmul).
    Every other op the exact mode uses is IEEE fp32 in numpy already."""
    import triton.language as tl
    import triton.runtime.interpreter as interp

    from hspi_kernels.numerics.evaluate import fma32
    from hspi_kernels.numerics.evaluate import gemm as model_gemm

    fma, dot = interp.InterpreterBuilder.create_fma, interp.InterpreterBuilder.create_dot

    def fused(self, x, y, z):
        return interp.TensorHandle(fma32(x.data, y.data, z.data), z.dtype.scalar)

    def tensor_core_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        fmt = {tl.bfloat16: "bf16", tl.float16: "fp16"}[a.dtype.scalar]

        def widen(h):
            if h.dtype.scalar == tl.bfloat16:
                return (h.data.astype(np.uint32) << 16).view(np.float32)
            return h.data.astype(np.float32)

        plan = A.plan(A.AttentionConfig(mode="exact"), fmt=fmt)["per_block"][0]["dot_plan"]
        from hspi_kernels.numerics.plans import plan_from_json

        c = None if not np.any(d.data.view(np.uint32)) else d.data  # all +0: the scores' dot from +0
        return interp.TensorHandle(model_gemm(plan_from_json(plan), widen(a), widen(b), c), tl.float32)

    interp.InterpreterBuilder.create_fma, interp.InterpreterBuilder.create_dot = fused, tensor_core_dot
    yield
    interp.InterpreterBuilder.create_fma, interp.InterpreterBuilder.create_dot = fma, dot


@pytest.mark.parametrize("causal, S, D, dtype", [(True, 50, 32, torch.bfloat16), (False, 70, 16, torch.float16),
                                                 (True, 64, 16, torch.float16), (False, 33, 32, torch.bfloat16)])
def test_attention_exact_mode_equals_its_replay(exact_interpreter, causal, S, D, dtype):
    """The exact-mode kernel, run op for op with GPU arithmetic, == A.replay (the plan) bit for bit,
    fp32 and input-format outputs; the replay with BLOCK_N 32 or a sequential row sum differs."""
    from hspi_kernels.numerics.plans import Sequential

    torch.manual_seed(11)
    q, k, v = (torch.randn(1, 2, S, D, dtype=dtype) * 2 for _ in range(3))
    config = A.AttentionConfig(block_m=32, block_n=16, num_warps=4, mode="exact")
    out32 = A.attention(q, k, v, causal=causal, config=config, out_dtype=torch.float32)
    out = A.attention(q, k, v, causal=causal, config=config)
    ref32 = A.replay(q, k, v, causal=causal, config=config, round_output=False)
    assert np.array_equal(_bits(out32), _bits(ref32))
    assert np.array_equal(_bits(out.float()), _bits(A.replay(q, k, v, causal=causal, config=config)))
    for wrong in (A.replay(q, k, v, causal=causal, config=config, block_n=32, round_output=False),
                  A.replay(q, k, v, causal=causal, config=config, rowsum=Sequential("fp32"), round_output=False)):
        assert not np.array_equal(_bits(out32), _bits(wrong))


def test_attention_exact_exp_is_attention_ref_exp(exact_interpreter):
    """The kernel's EXP (tl ops, fused fma) == attention_ref.exp_exact bit for bit on the inputs
    softmax feeds it (<= 0, -inf, the clamp, subnormal results) and some positive ones."""
    import triton.language as tl

    from hspi_kernels.numerics.attention_ref import exp_exact

    A._kernels()

    @triton.jit
    def _exp_kernel(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(y_ptr + offs, A._exp_exact(tl.load(x_ptr + offs)))

    rng = np.random.default_rng(3)
    x = np.concatenate([-rng.exponential(8.0, 4000), rng.uniform(-110, 95, 4000), -(2.0 ** rng.uniform(-140, 7, 88)),
                        [0.0, -0.0, -np.inf, np.inf, -104.0, -103.99, 89.0, -87.3, -1e-45]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(8192 - x.size, np.float32)])
    y = torch.empty(x.size, dtype=torch.float32)
    _exp_kernel[(1,)](torch.from_numpy(x), y, N=x.size)
    assert np.array_equal(_bits(y), _bits(exp_exact(x)))
    assert (exp_exact(x)[np.isfinite(x) & (x < -103.98)] < 2.0**-126).all()  # the clamp's subnormal tail is in range


def test_attention_rejects_fused_exact_mode():
    with pytest.raises(ValueError):
        A.AttentionConfig(mode="exact", enable_fp_fusion=True)
    with pytest.raises(ValueError):
        A.AttentionConfig(mode="fast")


def test_torch_override_routes_mm_addmm_bmm():
    from hspi_kernels.kernels.triton import torch_override as T

    config = SMALL.replace(input_precision="ieee")
    torch.manual_seed(10)
    a, w, bias = torch.randn(20, 40), torch.randn(24, 40), torch.randn(24)
    with T.fixed_order_matmul({"fp32": config}, dispatch_key="CPU"):
        assert T.active()
        z = a @ w.t()
        y = torch.nn.functional.linear(a, w, bias)
        bb = torch.bmm(a[None].repeat(2, 1, 1), w.t()[None].repeat(2, 1, 1))
    assert not T.active()
    ref = G.matmul(a, w.t(), config)
    assert torch.equal(z, ref) and torch.equal(bb[1], ref)
    assert torch.equal(y, ref + bias)


# -- compile-only for sm_90 (no GPU needed: Triton ships ptxas) ----------------------------------
_COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hspi_kernels.kernels.triton import gemm as G

kernel = G._kernels()["gemm"]
ints = ("M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cp", "stride_cm", "stride_cn",
        "TILES_PER_PART")
consts = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "INPUT_PRECISION", "MAX_IMPRECISE", "ATOMIC", "MASK_M")
out = {}
for name, elem, precision, blocks, warps, fusion in [
        ("bf16", "bf16", None, (128, 128, 64), 8, False),
        ("bf16.rule64", "bf16", None, (64, 32, 128), 4, False),
        ("bf16.rule256", "bf16", None, (64, 128, 64), 4, False),
        ("tf32", "fp32", "tf32", (128, 128, 32), 8, False),
        ("e4m3", "fp8e4nv", None, (128, 128, 64), 8, False),
        ("ieee.nofusion", "fp32", "ieee", (32, 32, 16), 4, False),
        ("ieee.fusion", "fp32", "ieee", (32, 32, 16), 4, True)]:
    sig = {"a_ptr": "*" + elem, "b_ptr": "*" + elem, "c_ptr": "*fp32", **{n: "i32" for n in ints},
           **{n: "constexpr" for n in consts}}
    const = dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), blocks), GROUP_M=8, INPUT_PRECISION=precision,
                 MAX_IMPRECISE=None, ATOMIC=False, MASK_M=False)
    c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps, "num_stages": 2, "enable_fp_fusion": fusion})
    ptx = c.asm["ptx"]
    out[name] = {"wgmma": "wgmma.mma_async" in ptx, "mma": "mma" in ptx, "fma": "fma.rn.f32" in ptx}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sm90_ptx() -> dict:
    """Facts about the PTX of the GEMM kernel compiled for sm_90 in a subprocess (kernels defined
    under TRITON_INTERPRET=1 are interpreter objects and cannot be compiled)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"sm_90 compile-only not available here: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["bf16", "bf16.rule64", "bf16.rule256", "tf32", "e4m3"])
def test_sm90_tensor_core_paths_use_wgmma_without_fma(sm90_ptx, name):
    assert sm90_ptx[name]["wgmma"]
    assert not sm90_ptx[name]["fma"]


@pytest.mark.parametrize("fusion", [False, True])
def test_sm90_ieee_fp32_dot_is_fma_whatever_fusion(sm90_ptx, fusion):
    """The CUDA-core fp32 dot is llvm.fmuladd, lowered to fma.rn.f32 even with
    enable_fp_fusion=False (it only stops contracting separate mul/add): the plan says fma."""
    facts = sm90_ptx["ieee.fusion" if fusion else "ieee.nofusion"]
    assert not facts["mma"]
    assert facts["fma"]
    assert G.plan(G.GemmConfig(input_precision="ieee", enable_fp_fusion=fusion), "fp32", 64).fma


_SMEM_SCRIPT = r"""
import json
from hspi_kernels.kernels.triton import gemm as G

out = {}
for fmt, extra in [("bf16", {}), ("fp16", {}), ("fp32", {}), ("fp32", {"input_precision": "ieee"}), ("e4m3", {}),
                   ("e5m2", {})]:
    for persistent in (False, True):
        config = G.default_config(fmt, persistent=persistent, **extra)
        name = f"{fmt}.{extra.get('input_precision', 'tc')}.{'persistent' if persistent else 'plain'}"
        out[name] = G.shared_memory_bytes(config, fmt, "fp32")  # fp32 output: the largest epilogue
for bound, _ in G.SHAPE_RULE:
    for fmt in ("bf16", "fp16"):
        out[f"{fmt}.rule{bound}"] = G.shared_memory_bytes(G.shape_config(fmt, bound), fmt, "fp32")
for fmt in ("bf16", "fp16"):  # the large-M persistent entry: 16-bit outputs only (tma_ready)
    out[f"{fmt}.rule_large_tma"] = G.shared_memory_bytes(G.shape_config(fmt, 8192, tma=True), fmt, fmt)
print(json.dumps(out))
"""


def test_sm90_default_configs_fit_shared_memory():
    """Every default configuration (plain and persistent TMA, fp32 output) compiles for sm_90
    within 227 KiB of shared memory: the H100 launch of 128x256x64 persistent bf16 failed with
    'Required: 327712, Hardware limit: 232448' before the persistent default moved to 128x128."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SMEM_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"sm_90 compile-only not available here: {proc.stderr.strip().splitlines()[-1:]}")
    sizes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sizes and all(0 < s <= G.SHARED_MEMORY_LIMIT_SM90 for s in sizes.values()), sizes
    # the old persistent configuration is over the limit: the check can fail
    script = ("from hspi_kernels.kernels.triton import gemm as G; "
              "print(G.shared_memory_bytes(G.GemmConfig(persistent=True), 'bf16', 'fp32'))")
    old = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert int(old.stdout.strip().splitlines()[-1]) > G.SHARED_MEMORY_LIMIT_SM90


_ATTN_COMPILE_SCRIPT = r"""
import inspect, json, re, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hspi_kernels.kernels.triton import attention as A

kernel = A._kernels()["fwd"]
params = list(inspect.signature(kernel.fn).parameters)
out = {}
for name, config, fusion in [("exact", A.default_config(128, "exact"), False), ("native", A.default_config(128), False),
                             ("exact.fusion_on", A.default_config(128, "exact"), True)]:
    const = A.constexprs(config, head_dim=128, causal=True, mask_n=True)
    sig = {p: "constexpr" if p in const else "*bf16" if p.endswith("_ptr") else "fp32" if p == "qk_scale" else "i32"
           for p in params}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr") or p.startswith("stride")}
    c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": config.num_warps, "num_stages": config.num_stages, "enable_fp_fusion": fusion})
    ptx = c.asm["ptx"]
    fmas = re.findall(r"fma\.rn\.f32\s+[^;]*;", ptx)
    facts = {"ex2_approx": "ex2.approx" in ptx, "wgmma": "wgmma.mma_async" in ptx, "fma": len(fmas),
             "fma_without_immediate": sum("0f" not in f for f in fmas), "sass_mufu": None}
    try:
        from hspi_kernels.kernels.cuda import sass
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"]); f.flush()
            ops = [o for fn in sass.dump_sass(f.name).values() for o in sass.opcodes(fn)]
        facts["sass_mufu"] = sorted({o for o in ops if o.startswith("MUFU")})
    except Exception as exc:  # no cuobjdump/nvdisasm: the PTX facts still count
        facts["sass_error"] = str(exc)[:200]
    out[name] = facts
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sm90_attention() -> dict:
    """PTX / SASS facts of the attention kernel compiled for sm_90 (causal, ragged, D=128)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _ATTN_COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"sm_90 compile-only not available here: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sm90_attention_exact_mode_has_no_sfu_and_no_contraction(sm90_attention):
    """Exact mode: wgmma dots, no ex2.approx in the PTX, no MUFU.EX2 in the SASS (MUFU.RCP may
    remain: div.rn.f32 is IEEE-correctly rounded whatever its internals), and every fma is one of
    the exp's explicit tl.fma (an fp32 immediate operand: a coefficient or ln2 part): nothing
    contracted. Controls: the native mode has ex2.approx / MUFU.EX2; the exact kernel built with
    fusion on has contracted fmas (no immediate)."""
    exact, native, fused = (sm90_attention[k] for k in ("exact", "native", "exact.fusion_on"))
    assert exact["wgmma"] and not exact["ex2_approx"]
    assert exact["fma"] > 0 and exact["fma_without_immediate"] == 0, exact
    assert native["ex2_approx"]
    assert fused["fma_without_immediate"] > 0, fused
    if exact["sass_mufu"] is not None:
        assert "MUFU.EX2" not in exact["sass_mufu"], exact["sass_mufu"]
        assert "MUFU.EX2" in native["sass_mufu"]


def test_validation_verdict_judges_only_the_sections_that_ran():
    from hspi_kernels.kernels.validation import triton_kernels, verdict

    def _passed(result):
        return verdict(triton_kernels.verdict_checks(result))["passed"]

    good_att = [{"passed": True}, {"passed": True}]
    assert _passed({"attention": good_att})
    assert not _passed({"attention": good_att + [{"passed": False}]})  # one failing entry fails it
    assert not _passed({"attention": {"error": "boom", "passed": False}})
    assert not _passed({})  # nothing ran is not a pass
    skipped = {"kind": "gluon_vs_tl", "skipped": "needs sm_90", "passed": None}
    assert _passed({"attention": good_att + [skipped]})  # an entry that did not apply is not a failure
    assert not _passed({"attention": [skipped]})  # ... nor a pass on its own
    red = {"row": {"equal": 5, "outputs": 5}, "tl_sum": [{"equal": 3, "outputs": 4}]}
    assert not _passed({"attention": good_att, "reductions": red})


def test_attention_impl_dispatch_falls_back_with_a_reason():
    """Native mode runs the Gluon kernel only where it realises the same order (BLOCK 128x128,
    input-dtype output, sm_90 CUDA inputs); elsewhere "auto" falls back to the tl kernel and
    impl="gluon" says why. Here (CPU tensors) the reason is the device; a 128x64 config is refused
    for its order before anything else."""
    from dataclasses import replace

    from hspi_kernels.kernels.triton import attention as A

    q = k = v = torch.randn(1, 1, 128, 64).to(torch.bfloat16)
    native = A.default_config(64, "native")
    assert (native.block_m, native.block_n) == (128, 128)
    assert "CUDA" in A._gluon_mismatch(native, q, k, v, True, q.dtype)
    assert "128x64" in A._gluon_mismatch(replace(native, block_n=64), q, k, v, True, q.dtype)
    assert "input dtype" in A._gluon_mismatch(native, q, k, v, True, torch.float32)
    with pytest.raises(ValueError, match="impl='gluon'"):
        A.attention(q, k, v, causal=True, config=replace(native, impl="gluon"))
    with pytest.raises(ValueError):
        A.AttentionConfig(impl="cuda")
    out = A.attention(q, k, v, causal=True)  # auto: the tl kernel (interpreter) runs
    assert torch.equal(out, A.attention(q, k, v, causal=True, config=replace(native, impl="tl")))



# -- the attention plan (numerics.attention_plan) against the project's own Triton kernels ----------
def _att_inputs(S, D, dtype, seed=21):
    torch.manual_seed(seed)
    return [torch.randn(1, 2, S, D, dtype=dtype) * 2 for _ in range(3)]


def _att_eval(plan, q, k, v, causal, fmt, round_output=True):
    from hspi_kernels.numerics.attention_plan import evaluate_attention

    f = [x.float().numpy() for x in (q, k, v)]
    return evaluate_attention(plan, *f, fmt=fmt, causal=causal, round_output=round_output)


@pytest.mark.parametrize("causal, S, D, dtype", [(True, 50, 32, torch.bfloat16), (False, 70, 16, torch.float16),
                                                 (False, 64, 16, torch.bfloat16)])
def test_attention_plan_reproduces_exact_mode(exact_interpreter, causal, S, D, dtype):
    """AttentionPlan(natural, exact exp, Pairwise row sum, BLOCK_N 16, tile 32) == the exact-mode
    kernel N/N (fp32 and input-format outputs); BLOCK_N 32, a Sequential row sum and the log2 domain
    each miss some fp32 outputs (negative controls). (The tile -- the causal loop end -- is
    bit-neutral in this order: a fully masked block adds p = 0 with alpha = 1.)"""
    from dataclasses import replace

    from hspi_kernels.numerics.attention_plan import AttentionPlan
    from hspi_kernels.numerics.plans import Pairwise, Sequential

    q, k, v = _att_inputs(S, D, dtype)
    fmt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    config = A.AttentionConfig(block_m=32, block_n=16, num_warps=4, mode="exact")
    out32 = A.attention(q, k, v, causal=causal, config=config, out_dtype=torch.float32)
    out = A.attention(q, k, v, causal=causal, config=config)
    plan = AttentionPlan(block_n=16, tile=32, domain="natural", exp="exact", rowsum=Pairwise())
    got = _att_eval(plan, q, k, v, causal, fmt)
    assert np.array_equal(_bits(out.float()), _bits(got)), f"{np.sum(_bits(out.float()) != _bits(got))}/{got.size}"
    o32 = _bits(out32)
    assert np.array_equal(o32, _bits(_att_eval(plan, q, k, v, causal, fmt, round_output=False)))
    wrongs = [replace(plan, block_n=32), replace(plan, rowsum=Sequential())]
    wrongs += [replace(plan, domain="log2", exp="numpy")]
    for wrong in wrongs:
        assert not np.array_equal(o32, _bits(_att_eval(wrong, q, k, v, causal, fmt, round_output=False))), wrong


@pytest.mark.parametrize("causal, S, D, dtype", [(True, 50, 32, torch.bfloat16), (False, 70, 16, torch.float16),
                                                 (False, 64, 16, torch.bfloat16)])
def test_attention_plan_reproduces_native_mode(exact_interpreter, causal, S, D, dtype):
    """The native-mode tl kernel (fusion off) == AttentionPlan(log2 domain, exp2, BLOCK_N 16,
    tile 32, numpy's row-sum order) N/N. Under the interpreter ``tl.math.exp2`` is numpy's
    float32 exp2 and ``tl.sum`` numpy's sum (the GPU's are ex2.approx and the MMA-layout tree:
    not replayable here), so the plan names exactly those; the dots are the sm_90 tensor-core
    chain (the fixture). Negative controls: BLOCK_N 32, the natural domain, a Pairwise row sum."""
    from dataclasses import replace

    from hspi_kernels.numerics.attention_plan import AttentionPlan
    from hspi_kernels.numerics.plans import Pairwise, numpy_sum_plan

    q, k, v = _att_inputs(S, D, dtype)
    fmt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    config = A.AttentionConfig(block_m=32, block_n=16, num_warps=4, mode="native", enable_fp_fusion=False, impl="tl")
    out = A.attention(q, k, v, causal=causal, config=config)
    out32 = A.attention(q, k, v, causal=causal, config=config, out_dtype=torch.float32)
    plan = AttentionPlan(block_n=16, tile=32, domain="log2", exp="numpy", rowsum=numpy_sum_plan())
    got = _att_eval(plan, q, k, v, causal, fmt)
    ob, o32 = _bits(out.float()), _bits(out32)
    assert np.array_equal(ob, _bits(got)), f"{np.sum(ob != _bits(got))}/{got.size} differ"
    assert np.array_equal(o32, _bits(_att_eval(plan, q, k, v, causal, fmt, round_output=False)))
    for wrong in (replace(plan, block_n=32), replace(plan, domain="natural"), replace(plan, rowsum=Pairwise())):
        assert not np.array_equal(o32, _bits(_att_eval(wrong, q, k, v, causal, fmt, round_output=False))), wrong
