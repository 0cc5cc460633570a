"""GPU validation of the tensor-core rungs against the block model: the GPU is the truth.

``run(out_dir, scale=1.0)`` (on an H100/H200; needs torch with CUDA) launches
``mma_sync_gemm``, ``wgmma_gemm`` (and ``wgmma_fast_gemm``, below) for every input/output format, on seeded random and
adversarial inputs, with ``C = 0`` and ``C != 0``, and compares the output bits with the bits of
the plan the launch declares (``gemm_tensor_core.plan`` through ``numerics.evaluate.gemm``).
Every variant reports ``matches / outputs`` (N/N is the only pass).

Because no public vectors cover them, tf32 and fp8 (and, for comparison, fp16/bf16) are also
tested against a grid of alternative block models on a subset of each variant: G in
{4, 8, 16, 32}, F in {13, 23, 24, 25}, output fp32-RZ or e8m13 -- plus, for mma.sync fp8 on
sm_90, the emulation that ptxas emits (fp8 -> fp16 unpack, two HMMA.16816.F32 over the k with
``k % 4 in {0, 1}`` and then ``{2, 3}``, the first from +0, then an fp32 RNE FADD of C) in three
partitions. Hypotheses matching the whole subset are re-run on the whole variant. Per
(path, format) the report lists the hypotheses that match every output of every variant.

Generators (A [M, K], B [K, N], C [M, N], all exactly representable in their formats):
  random       normal values rounded to the format;
  spread       random exponents over (most of) the format's range: exposes F and e_max;
  cancel       pairs of equal-magnitude products of opposite sign (some nudged by one ulp):
               large e_max, small exact result;
  subnormal    operands at the bottom of the format (fp16/e5m2/e4m3 subnormals; bf16/tf32
               products below 2^-126), and subnormal fp32 C;
  rawfp32      (tf32 only) fp32 operands with non-zero low 13 bits: truncated or rounded?
  gdisc        Fasi / Khattak style G/F discriminators: one large term per row at a random k,
               many small same-signed terms 2^-10..2^-30 below it elsewhere: small terms that
               share a block with the large one are truncated away, earlier blocks accumulate
               them; which k they sit at decides the output when G is wrong.
C for ``c != 0``: ``±|A·B| · 2^U(-8, 8)``, 20% of entries ``-(A·B)`` (cancellation with c),
10% tiny (subnormal fp32 or the fp16 minimum), 10% huge (``2^20 ·``).

A negative control runs a deliberately wrong preset (sm_80's G=8, F=24 on Hopper bf16) on the
gdisc inputs; it must be rejected (fewer than N/N matches).

The fast Hopper GEMM (``wgmma_fast_gemm``, path ``"wgmma_fast"``; :func:`validate_fast`) declares
the slow wgmma rung's split_k=1 plan. For bf16 and fp16, every generator, C = 0 and C != 0, and
both kernel variants (cluster 1 and 2, a short persistent grid included so that CTAs walk several
tiles and wrap the stage ring): its bits must equal the plan's on every output (shapes
[256, 512, K], K in {64, 320, 1024}; over 10^6 outputs) AND the slow ``wgmma_gemm`` kernel's on
every output (B handed to it as B_nk transposed), plus a [1024, 1024, 4096] case (full outputs vs
the slow kernel, the first 64 rows vs the plan). Negative control: the split-K=2 plan of the same
chain must be rejected on the fast kernel's outputs.

Output: ``<out_dir>/tensor_core_validation.json``; the returned dict is the same document.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from hspi_kernels.kernels.validation import record_verdict
from hspi_kernels.numerics import formats
from hspi_kernels.numerics.tensor_core import BlockModel, get_preset
from hspi_kernels.kernels.cuda import gemm_tensor_core as tc
from hspi_kernels.kernels.cuda.gemm_tensor_core import preset_out_format
from hspi_kernels.numerics import evaluate as E
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm as eval_gemm
from hspi_kernels.numerics.formats import TF32
from hspi_kernels.numerics.formats import decode
from hspi_kernels.numerics.rounding import round_to_format
from hspi_kernels.numerics.tensor_core import chain
from hspi_kernels.platform.files import atomic_write_text

CONFIGS = (("fp16", "fp32"), ("bf16", "fp32"), ("fp16", "fp16"), ("tf32", "fp32"), ("e4m3", "fp32"),
           ("e5m2", "fp32"))
GENERATORS = ("random", "spread", "cancel", "subnormal", "gdisc")
HYP_G = (4, 8, 16, 32)
HYP_F = (13, 23, 24, 25)
HYP_OUT = ("fp32", "e8m13")
_ML = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "e4m3": ml_dtypes.float8_e4m3fn,
       "e5m2": ml_dtypes.float8_e5m2}
# exponent range used by the generators: (lowest normal, highest safe) per format
_EXP = {"fp16": (-14, 6), "bf16": (-60, 60), "tf32": (-60, 60), "e4m3": (-6, 7), "e5m2": (-14, 7)}
_SUB = {"fp16": (-24, -15), "bf16": (-75, -60), "tf32": (-75, -60), "e4m3": (-9, -7), "e5m2": (-16, -15)}
BLOCK_K = {"fp16": 64, "bf16": 64, "tf32": 64, "e4m3": 128, "e5m2": 128}
RESULT_FILE = "tensor_core_validation.json"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values rounded (RNE) to ``fmt``, as float32. Overflow saturates to the largest
    finite value (a generator never wants inf/NaN)."""
    x = np.asarray(x, dtype=np.float32)
    if fmt == "tf32":

        return decode(round_to_format(x, TF32, "RNE"), TF32).astype(np.float32)
    if fmt == "fp32":
        return x
    dt = _ML[fmt]
    big = float(ml_dtypes.finfo(dt).max)
    return np.clip(x, -big, big).astype(dt).astype(np.float32)


def _pow2(rng, lo, hi, shape) -> np.ndarray:
    """Random significand in [1, 2) times 2^U{lo..hi}, random sign."""
    e = rng.integers(lo, hi + 1, size=shape)
    sig = 1.0 + rng.random(shape)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return (sign * sig * np.exp2(e)).astype(np.float64)


def make_inputs(gen: str, fmt: str, M: int, N: int, K: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A [M, K], B [K, N] float32, representable in ``fmt``."""
    lo, hi = _EXP[fmt]
    if gen == "random":
        s = 4.0 if fmt in ("e4m3", "e5m2") else 1.0
        A, B = rng.standard_normal((M, K)) * s, rng.standard_normal((K, N)) * s
    elif gen == "spread":
        A, B = _pow2(rng, lo, hi // 2, (M, K)), _pow2(rng, lo, hi // 2, (K, N))
    elif gen == "cancel":
        A, B = _pow2(rng, lo // 2, hi // 2, (M, K)), _pow2(rng, lo // 2, hi // 2, (K, N))
        A, B = to_format(A, fmt).astype(np.float64), to_format(B, fmt).astype(np.float64)
        # product pairs (2j, 2j+1) cancel: b_{2j+1} = b_{2j}, a_{2j+1} = -a_{2j} (some nudged)
        B[1::2, :] = B[0::2, :]
        nudge = np.where(rng.random((M, K // 2)) < 0.3, 1.0 + 2.0 ** -rng.integers(2, 11, (M, K // 2)), 1.0)
        A[:, 1::2] = -A[:, 0::2] * nudge
        # a few live terms on top of the cancellation
        live = rng.random((M, K)) < 0.05
        A = np.where(live, _pow2(rng, lo, lo + (hi - lo) // 3, (M, K)), A)
    elif gen == "subnormal":
        slo, shi = _SUB[fmt]
        A, B = _pow2(rng, slo, shi, (M, K)), _pow2(rng, slo, max(slo, shi), (K, N))
        if fmt in ("fp16", "e4m3", "e5m2"):  # subnormal a times normal b: also products near 2^-24
            B = np.where(rng.random((K, N)) < 0.5, B, _pow2(rng, 0, hi // 2, (K, N)))
    elif gen == "rawfp32":  # tf32 only: full fp32 operand words (the low 13 bits are not tf32)
        return (rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32))
    elif gen == "gdisc":
        # one large term per row at k = big[i]; small same-signed terms 2^-10..2^-30 below it
        top = min(hi, 8) if fmt in ("e4m3", "e5m2") else min(hi, 12)
        gap = rng.integers(10, 31, size=(M, 1))
        e_small = np.maximum(top - gap + rng.integers(-2, 3, size=(M, K)), _SUB[fmt][0])
        A = (1.0 + rng.random((M, K))) * np.exp2(e_small)
        A = np.where(rng.random((M, K)) < 0.85, A, -A)
        big = rng.integers(0, K, size=M)
        A[np.arange(M), big] = (1.0 + rng.random(M)) * 2.0**top * np.where(rng.random(M) < 0.5, -1, 1)
        span = 8 if fmt in ("e4m3", "e5m2") else 2
        B = (1.0 + rng.random((K, N))) * np.exp2(rng.integers(-span, span + 1, size=(K, N)))
        B = np.where(rng.random((K, N)) < 0.9, B, -B)
    else:
        raise ValueError(f"unknown generator {gen!r}")
    return to_format(A, fmt), to_format(B, fmt)


def make_c(A: np.ndarray, B: np.ndarray, out_format: str, rng) -> np.ndarray:
    """A non-zero accumulator input (see the module doc), representable in ``out_format``."""
    ref = A.astype(np.float64) @ B.astype(np.float64)
    M, N = ref.shape
    mag = np.where(ref == 0, 1.0, np.abs(ref))
    C = mag * np.exp2(rng.integers(-8, 9, size=(M, N))) * np.where(rng.random((M, N)) < 0.5, -1, 1)
    u = rng.random((M, N))
    C = np.where(u < 0.2, -ref, C)
    tiny = 2.0**-24 if out_format == "fp16" else 2.0**-140
    C = np.where((u >= 0.2) & (u < 0.3), tiny * rng.integers(1, 8, size=(M, N)), C)
    C = np.where((u >= 0.3) & (u < 0.4), mag * 2.0**20, C)
    if out_format == "fp16":
        return to_format(np.clip(C, -6e4, 6e4).astype(np.float32), "fp16")
    return np.clip(C, -3e38, 3e38).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def model_gemm(model: BlockModel, A: np.ndarray, B: np.ndarray, C: np.ndarray | None) -> np.ndarray:
    """Chain of ``model`` blocks along K for every (row of A, column of B), from C (or +0).

    Works for any BlockModel (also ones that are not presets): the native evaluator runs the
    chain program of a preset plan with the model's parameters swapped in; without the native
    module, :func:`tensor_core.chain` (numpy) in chunks.
    """
    A = np.ascontiguousarray(A, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    K = A.shape[1]
    try:

        base = P.Chain(P.TensorCore("sm_70", "fp16", "fp32"), k=4)  # any K % 4 == 0: one chain op
        prog = dataclasses.replace(P.lower(base, K, True, C is not None), model=model)
        Bt = np.ascontiguousarray(B.T)
        if model.input_low_bits_ignored:
            mask = np.uint32((0xFFFFFFFF << model.input_low_bits_ignored) & 0xFFFFFFFF)
            A = (A.view(np.uint32) & mask).view(np.float32)
            Bt = (Bt.view(np.uint32) & mask).view(np.float32)
        Cc = None if C is None else np.ascontiguousarray(C, dtype=np.float32)
        return E._run_native(prog, A, Bt, Cc, True)
    except (ImportError, AttributeError, TypeError):

        M, N = A.shape[0], B.shape[1]
        out = np.empty((M, N), np.float32)
        rows = max(1, (1 << 16) // max(N, 1))
        for r in range(0, M, rows):
            a = np.broadcast_to(A[r:r + rows, None, :], (min(rows, M - r), N, K))
            b = np.broadcast_to(B.T[None, :, :], a.shape)
            c = None if C is None else C[r:r + rows]
            out[r:r + rows] = chain(model, np.ascontiguousarray(a), np.ascontiguousarray(b), c)
        return out


def hypothesis(base: BlockModel, G: int, F: int, out_format: str) -> BlockModel:
    return dataclasses.replace(base, name=f"G={G},F={F},out={out_format}", G=G, F=F, out_format=out_format,
                               out_rounding="RNE" if out_format == "fp16" else "RZ", source="hypothesis")


def _fp8_partition(kind: str) -> np.ndarray:
    k = np.arange(32)
    if kind == "mod4":  # what the SASS shows: low fp16 halves of each register first
        return np.concatenate([k[k % 4 < 2], k[k % 4 >= 2]])
    if kind == "mod4_swapped":
        return np.concatenate([k[k % 4 >= 2], k[k % 4 < 2]])
    return k  # contiguous halves


def fp8_mma_sync_emulated(A, B, C, partition: str = "mod4") -> np.ndarray:
    """Hopper mma.sync fp8 as ptxas 13.0 emits it: per m16n8k32 instruction, two fp16-model
    blocks (G=16, F=25, fp32 RZ) over the partition's halves from +0, then ``rn32(acc + x)``."""
    model16 = dataclasses.replace(get_preset("sm_90", "fp16", "fp32", "mma.sync"), name="fp16-emulation",
                                  in_format="fp16")
    perm = _fp8_partition(partition)
    M, N = A.shape[0], B.shape[1]
    acc = np.zeros((M, N), np.float32) if C is None else np.array(C, dtype=np.float32)
    for k0 in range(0, A.shape[1], 32):
        idx = k0 + perm
        x = model_gemm(model16, A[:, idx], B[idx, :], None)
        acc = (acc + x).astype(np.float32)  # FADD: fp32 RNE
    return acc


def expected_bits(path: str, in_format: str, out_format: str, arch: str, split_k: int, A, B, C) -> tuple[str, np.ndarray]:
    """(what, bits) the kernel should produce: its plan through the evaluator, except Hopper
    mma.sync fp8, which is no tensor-core block (ptxas emits two fp16 HMMAs + an FADD per
    instruction): there the emulation, per split-K part from +0, parts added to C in order."""

    if path == "mma.sync" and in_format in ("e4m3", "e5m2") and arch == "sm_90":
        K = A.shape[1]
        bounds = np.linspace(0, K // 32, split_k + 1).astype(int) * 32 if split_k > 1 else [0, K]
        acc = np.zeros((A.shape[0], B.shape[1]), np.float32) if C is None else np.asarray(C, np.float32)
        if split_k == 1:
            return "fp8_mma_sync_emulated(mod4)", fp8_mma_sync_emulated(A, B, C, "mod4")
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            acc = (acc + fp8_mma_sync_emulated(A[:, lo:hi], B[lo:hi], None, "mod4")).astype(np.float32)
        return f"SplitK({split_k}) of fp8_mma_sync_emulated(mod4), combined in fp32", acc
    plan = tc.plan(in_format=in_format, out_format=out_format, split_k=split_k, path=path, arch=arch)
    return repr(plan), eval_gemm(plan, A, B, C)


def same_bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise bit equality as float32 (fp16 outputs arrive widened; any NaN equals any NaN)."""
    return formats.same_bits(np.asarray(x, np.float32), np.asarray(y, np.float32))


# ---------------------------------------------------------------------------------------------
# GPU side
# ---------------------------------------------------------------------------------------------
def _to_device(x: np.ndarray, fmt: str):
    import torch

    if fmt == "fp16":
        t = torch.from_numpy(x.astype(np.float16))
    elif fmt == "bf16":
        t = torch.from_numpy(x.astype(ml_dtypes.bfloat16).view(np.int16)).view(torch.bfloat16)
    elif fmt in ("tf32", "fp32"):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        t = torch.from_numpy(x.astype(_ML[fmt]).view(np.uint8))
    return t.contiguous().cuda()


def gpu_gemm(path: str, A, B, C, in_format: str, out_format: str, split_k: int = 1) -> np.ndarray:
    import torch


    fn = tc.mma_sync_gemm if path == "mma.sync" else tc.wgmma_gemm
    dA, dB = _to_device(A, in_format), _to_device(B, in_format)
    dC = None if C is None else _to_device(C, out_format)
    D = fn(dA, dB, dC, in_format=in_format, out_format=out_format, split_k=split_k)
    torch.cuda.synchronize()
    return D.float().cpu().numpy()


def gpu_fast_gemm(A, B, C, in_format: str, cluster: int, grid: int | None = None) -> np.ndarray:
    """The fast kernel on A [M, K] and B [K, N] (handed over as B_nk = B^T, its native layout)."""
    import torch


    dA, dB = _to_device(A, in_format), _to_device(np.ascontiguousarray(B.T), in_format)
    dC = None if C is None else _to_device(C, "fp32")
    D = tc.wgmma_fast_gemm(dA, dB, dC, in_format=in_format, cluster=cluster, grid=grid)
    torch.cuda.synchronize()
    return D.cpu().numpy()


FAST_K = (64, 320, 1024)


def validate_fast(rng, arch: str, scale: float = 1.0) -> dict:
    """The fast wgmma GEMM against its plan and against the slow wgmma kernel (module doc)."""

    variants = []
    M, N = 256, max(256, int(round(512 * scale / 256)) * 256)
    i = 0
    for fmt in tc.FAST_FORMATS:
        plan = tc.wgmma_fast_gemm.plan(fmt, arch=arch)
        for gen in GENERATORS:
            for with_c in (False, True):
                K = FAST_K[i % len(FAST_K)]
                cluster, grid = (1, 2) if i % 2 else (2, None if i % 4 == 0 else 2)
                i += 1
                t0 = time.perf_counter()
                A, B = make_inputs(gen, fmt, M, N, K, rng)
                C = make_c(A, B, "fp32", rng) if with_c else None
                fast = gpu_fast_gemm(A, B, C, fmt, cluster, grid)
                slow = gpu_gemm("wgmma", A, B, C, fmt, "fp32")
                ref = eval_gemm(plan, A, B, C)
                ok_plan, ok_slow = same_bits(fast, ref), same_bits(fast, slow)
                rec = {"in_format": fmt, "generator": gen, "c": "nonzero" if with_c else "zero", "M": M, "N": N,
                       "K": K, "cluster": cluster, "grid": grid, "plan": repr(plan), "outputs": int(ok_plan.size),
                       "plan_matches": int(ok_plan.sum()), "slow_outputs": int(ok_slow.size),
                       "slow_matches": int(ok_slow.sum()),
                       "pass": bool(ok_plan.all() and ok_slow.all()), "seconds": round(time.perf_counter() - t0, 3)}
                if not ok_plan.all():
                    r, c = (int(v) for v in np.argwhere(~ok_plan)[0])
                    rec["first_mismatch"] = {"row": r, "col": c, "gpu": f"0x{int(fast.view(np.uint32)[r, c]):08x}",
                                             "plan": f"0x{int(ref.view(np.uint32)[r, c]):08x}"}
                variants.append(rec)
    # one larger shape: full outputs vs the slow kernel, the first rows vs the plan
    big = []
    for fmt in tc.FAST_FORMATS:
        Mb, Nb, Kb = 1024, 1024, 4096
        A, B = make_inputs("random", fmt, Mb, Nb, Kb, rng)
        C = make_c(A, B, "fp32", rng)
        fast = gpu_fast_gemm(A, B, C, fmt, 2)
        slow = gpu_gemm("wgmma", A, B, C, fmt, "fp32")
        rows = 64
        ref = eval_gemm(tc.wgmma_fast_gemm.plan(fmt, arch=arch), A[:rows], B, C[:rows])
        ok_slow, ok_plan = same_bits(fast, slow), same_bits(fast[:rows], ref)
        big.append({"in_format": fmt, "M": Mb, "N": Nb, "K": Kb, "cluster": 2, "slow_outputs": int(ok_slow.size),
                    "slow_matches": int(ok_slow.sum()), "outputs": int(ok_plan.size),
                    "plan_matches": int(ok_plan.sum()), "pass": bool(ok_slow.all() and ok_plan.all())})
    # negative control: the split-K=2 plan of the same chain (gdisc bf16 data, C != 0)
    A, B = make_inputs("gdisc", "bf16", M, N, 1024, rng)
    C = make_c(A, B, "fp32", rng)
    fast = gpu_fast_gemm(A, B, C, "bf16", 2)
    wrong = eval_gemm(tc.plan(in_format="bf16", split_k=2, path="wgmma", arch=arch), A, B, C)
    right = eval_gemm(tc.wgmma_fast_gemm.plan("bf16", arch=arch), A, B, C)
    n_wrong, n_right = int(same_bits(fast, wrong).sum()), int(same_bits(fast, right).sum())
    negative = {"wrong_plan": "SplitK(2) of the same chain", "outputs": int(fast.size), "wrong_matches": n_wrong,
                "right_matches": n_right, "rejected": n_wrong < fast.size,
                "pass": n_wrong < fast.size and n_right == fast.size}
    everything = variants + big
    return {
        "kernel": "hspi_kernels.kernels.cuda.gemm_tensor_core.wgmma_fast_gemm (csrc/cuda/gemm/wgmma_fast_gemm.cu)",
        "variants": variants, "large": big, "negative_control": negative,
        "plan_outputs": sum(v["outputs"] for v in everything),
        "plan_matches": sum(v["plan_matches"] for v in everything),
        "slow_outputs": sum(v["slow_outputs"] for v in everything),
        "slow_matches": sum(v["slow_matches"] for v in everything),
        "pass": all(v["pass"] for v in everything) and negative["pass"],
    }


def _platform() -> dict:
    out = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        out.update(torch=torch.__version__, cuda=torch.version.cuda, device=torch.cuda.get_device_name(0),
                   capability=list(torch.cuda.get_device_capability(0)))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out["torch_error"] = str(exc)
    try:
        from hspi_kernels import _build_info

        out["build"] = {k: getattr(_build_info, k) for k in dir(_build_info) if k.isupper() and k != "CUBINS"}
    except Exception:  # noqa: BLE001
        pass
    return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _hypotheses(path: str, in_format: str, out_format: str, arch: str) -> dict[str, Callable]:
    """name -> f(A, B, C) giving reference bits, for the alternative models of a config."""

    base = get_preset(arch, in_format, preset_out_format(arch, in_format, out_format, path), path)
    outs = ("fp16",) if out_format == "fp16" else HYP_OUT
    hyps: dict[str, Callable] = {}
    for G in HYP_G:
        for F in HYP_F:
            for out in outs:
                m = hypothesis(base, G, F, out)
                hyps[m.name] = lambda A, B, C, m=m: model_gemm(m, A, B, C)
    if in_format == "tf32":  # fp32 operand bits rounded (RNE) to tf32 instead of truncated
        m = dataclasses.replace(base, name="preset,operands RNE to tf32", input_low_bits_ignored=0)
        hyps[m.name] = lambda A, B, C, m=m: model_gemm(m, to_format(A, "tf32"), to_format(B, "tf32"), C)
    if in_format in ("e4m3", "e5m2") and path == "mma.sync":
        for part in ("mod4", "mod4_swapped", "contiguous"):
            hyps[f"emulated fp16 HMMA x2 ({part}) + FADD"] = (
                lambda A, B, C, part=part: fp8_mma_sync_emulated(A, B, C, part))
    return hyps


def _variant(path, in_format, out_format, gen, with_c, split_k, M, N, K, rng, arch, subset, hyp_on) -> dict:
    t0 = time.perf_counter()
    A, B = make_inputs(gen, in_format, M, N, K, rng)
    C = make_c(A, B, out_format, rng) if with_c else None
    gpu = gpu_gemm(path, A, B, C, in_format, out_format, split_k)
    plan, ref = expected_bits(path, in_format, out_format, arch, split_k, A, B, C)
    ok = same_bits(gpu, ref)
    rec = {
        "path": path, "in_format": in_format, "out_format": out_format, "generator": gen,
        "c": "nonzero" if with_c else "zero", "split_k": split_k, "M": M, "N": N, "K": K,
        "plan": plan, "outputs": int(ok.size), "matches": int(ok.sum()), "pass": bool(ok.all()),
    }
    if not ok.all():
        i, j = (int(v) for v in np.argwhere(~ok)[0])
        rec["first_mismatch"] = {"row": i, "col": j, "gpu": f"0x{int(gpu.view(np.uint32)[i, j]):08x}",
                                 "plan": f"0x{int(ref.view(np.uint32)[i, j]):08x}"}
    if hyp_on and split_k == 1:
        rows = max(1, min(M, subset // N))
        As, Cs = A[:rows], None if C is None else C[:rows]
        counts, full = {}, {}
        for name, fn in _hypotheses(path, in_format, out_format, arch).items():
            try:
                counts[name] = int(same_bits(gpu[:rows], fn(As, B, Cs)).sum())
            except ValueError as exc:  # e.g. K not a multiple of G
                counts[name] = f"n/a: {exc}"
                continue
            if counts[name] == rows * N:  # whole subset: re-check on the whole variant
                full[name] = int(same_bits(gpu, fn(A, B, C)).sum())
        rec["hypotheses_subset"] = {"outputs": rows * N, "matches": counts}
        rec["hypotheses_full"] = full
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def run(out_dir: str | os.PathLike, scale: float = 1.0, *, paths=("mma.sync", "wgmma", "wgmma_fast"),
        seed: int = 20251122,
        configs=CONFIGS, generators: tuple = GENERATORS, hypotheses_for=("tf32", "e4m3", "e5m2", "fp16", "bf16"),
        subset: int = 1 << 15) -> dict:
    """Run the validation (see the module doc); writes ``<out_dir>/tensor_core_validation.json``.

    ``scale``: 1.0 gives 1024×1024 = 1,048,576 outputs per variant; outputs scale linearly.
    """
    import torch

    cc = torch.cuda.get_device_capability(0)
    arch = f"sm_{cc[0]}{cc[1]}"
    side = max(64, int(round(1024 * np.sqrt(scale) / 64)) * 64)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    variants = []
    for path in paths:
        if path in ("wgmma", "wgmma_fast") and cc != (9, 0):
            continue
        if path == "wgmma_fast":  # its own variants (validate_fast), below
            continue
        for in_format, out_format in configs:
            for gen in generators + (("rawfp32",) if in_format == "tf32" else ()):
                for with_c in (False, True):
                    variants.append(_variant(path, in_format, out_format, gen, with_c, 1, side, side,
                                             BLOCK_K[in_format], rng, arch, subset, in_format in hypotheses_for))
            if out_format == "fp32":  # split-K with the fixed fp32 combine
                for parts in (2, 4):
                    variants.append(_variant(path, in_format, out_format, "random", True, parts, side // 2,
                                             side // 2, BLOCK_K[in_format] * parts, rng, arch, subset, False))

    # Negative control: Ampere's G=8, F=24 block on Hopper bf16 gdisc data must be rejected.
    negative = {}
    if cc == (9, 0):
        A, B = make_inputs("gdisc", "bf16", side, side, 64, rng)
        gpu = gpu_gemm("mma.sync", A, B, None, "bf16", "fp32")
        wrong = model_gemm(get_preset("sm_80", "bf16", "fp32", "mma.sync"), A, B, None)
        right = model_gemm(get_preset("sm_90", "bf16", "fp32", "mma.sync"), A, B, None)
        n_wrong, n_right = int(same_bits(gpu, wrong).sum()), int(same_bits(gpu, right).sum())
        negative = {"wrong_model": "sm_80.mma/bf16->fp32 (G=8, F=24)", "outputs": int(gpu.size),
                    "wrong_matches": n_wrong, "right_matches": n_right,
                    "rejected": n_wrong < gpu.size, "pass": n_wrong < gpu.size and n_right == gpu.size}

    fast = validate_fast(rng, arch, scale) if "wgmma_fast" in paths and cc == (9, 0) else None

    summary = _summarise(variants)
    if fast is not None:
        summary["wgmma_fast bf16/fp16->fp32"] = {
            "variants": len(fast["variants"]) + len(fast["large"]), "outputs": fast["plan_outputs"],
            "matches": fast["plan_matches"], "slow_outputs": fast["slow_outputs"], "slow_matches": fast["slow_matches"],
            "failing": [f"{v['in_format']}/{v.get('generator', 'random')}/c={v.get('c', 'nonzero')}/K={v['K']}"
                        for v in fast["variants"] + fast["large"] if not v["pass"]],
            "preset_pass": fast["pass"], "hypotheses_matching_everything": None}
    doc = {
        "what": "tensor-core GEMM rungs (mma.sync, wgmma) vs the block-model presets; GPU bits are the truth",
        "platform": _platform(), "arch": arch, "scale": scale, "seed": seed, "subset": subset,
        "variants": variants, "negative_control": negative, "wgmma_fast": fast, "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    record_verdict(doc, verdict_checks(doc))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULT_FILE, json.dumps(doc, indent=1))
    return doc


def verdict_checks(doc: dict) -> dict[str, bool | None]:
    """The named checks of a record's verdict (``hspi_kernels.kernels.validation.verdict``); the
    negative control runs on sm_90 only and the fast kernel only when asked for (None otherwise)."""
    negative, fast = doc["negative_control"], doc["wgmma_fast"]
    return {"variants": all(v["pass"] for v in doc["variants"]),
            "negative_control": negative["pass"] if "pass" in negative else None,
            "wgmma_fast": None if fast is None else bool(fast["pass"])}


def _summarise(variants: list[dict]) -> dict:
    """Per (path, in->out): preset N/N over all variants, and the hypotheses that matched every
    output of every variant that tested them."""
    groups: dict[str, dict] = {}
    for v in variants:
        key = f"{v['path']} {v['in_format']}->{v['out_format']}"
        g = groups.setdefault(key, {"variants": 0, "outputs": 0, "matches": 0, "failing": [], "_hyp": None})
        g["variants"] += 1
        g["outputs"] += v["outputs"]
        g["matches"] += v["matches"]
        if not v["pass"]:
            g["failing"].append(f"{v['generator']}/c={v['c']}/split_k={v['split_k']}")
        if "hypotheses_full" in v:
            good = {n for n, m in v["hypotheses_full"].items() if m == v["outputs"]}
            g["_hyp"] = good if g["_hyp"] is None else g["_hyp"] & good
    for g in groups.values():
        hyp = g.pop("_hyp")
        g["preset_pass"] = not g["failing"]
        g["hypotheses_matching_everything"] = sorted(hyp) if hyp is not None else None
    return groups


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--paths", default="mma.sync,wgmma,wgmma_fast")
    args = ap.parse_args(argv)
    doc = run(args.out_dir, args.scale, paths=tuple(args.paths.split(",")))
    for key, g in doc["summary"].items():
        print(f"{key:28s} preset {g['matches']}/{g['outputs']} {'PASS' if g['preset_pass'] else 'FAIL ' + str(g['failing'])}"
              f"  hypotheses matching all: {g['hypotheses_matching_everything']}")
    print("negative control:", doc["negative_control"])
    if doc.get("wgmma_fast"):
        f = doc["wgmma_fast"]
        print(f"wgmma_fast: plan {f['plan_matches']}/{f['plan_outputs']}, slow kernel {f['slow_matches']}/"
              f"{f['slow_outputs']}, negative control {f['negative_control']}")
    print("passed:", doc["passed"], doc["verdict"], f"({doc['seconds']} s)")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
