"""Dump single-instruction tensor-core GEMM blocks (A, B, C and the GPU's D) for offline
analysis of where the block-model presets disagree with the hardware.

    python scripts/tc_dump.py OUT.npz

K equals one instruction's k (16 fp16/bf16, 8 tf32, 32 fp8), so every output is one
instruction applied to one C: the purest view of the unit's arithmetic."""

from __future__ import annotations

import sys

import numpy as np

from hspi_kernels.kernels.validation import tensor_core as V

INSTR_K = {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}


def _signed(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _settling_sets(rng):
    """Inputs that settle what the first dump could not (see tensor_core.py's docstring):
    the e_max floor (a lead product 2^T, T in -145..-125, and one small term 2^(T-d)), the sign
    of all -0 sums, bf16/tf32 subnormal operands, and which emin the c of an fp16-output block
    uses. Yields (name, fmt, out_fmt, A, B, C) with C always given (zeros included)."""
    M, N = 128, 64
    for fmt in ("bf16", "tf32"):
        K = INSTR_K[fmt]
        T = -145 + (np.arange(M) % 21)                      # lead product exponent per row
        d = 1 + (np.arange(N) % 30)                         # small term d bits below it, per column
        A = np.zeros((M, K)); B = np.zeros((K, N))
        A[:, 0] = np.exp2(T + 69.0); B[0, :] = 2.0**-69
        A[:, 1] = -1.5 * np.exp2(T + 69.0); B[1, :] = np.exp2(-69.0 - d)
        yield "floor", fmt, "fp32", V.to_format(A, fmt), V.to_format(B, fmt), np.zeros((M, N), np.float32)
        # subnormal operands: subnormal x normal products set e_max, subnormal^2 ones truncate
        e = rng.integers(-133, -126, size=(M, K))
        A = _signed(rng, (M, K)) * (1 + rng.random((M, K))) * np.exp2(e)
        Bs = _signed(rng, (K, N)) * (1 + rng.random((K, N))) * np.exp2(rng.integers(-133, -126, size=(K, N)))
        Bn = _signed(rng, (K, N)) * (1 + rng.random((K, N))) * np.exp2(rng.integers(0, 9, size=(K, N)))
        B = np.where(rng.random((K, N)) < 0.5, Bs, Bn)
        yield "opsub", fmt, "fp32", V.to_format(A, fmt), V.to_format(B, fmt), np.zeros((M, N), np.float32)
    for fmt, out_fmt in (("fp16", "fp32"), ("bf16", "fp32"), ("tf32", "fp32"), ("fp16", "fp16"), ("e4m3", "fp32")):
        K = INSTR_K[fmt]
        # every product -0 (a = -0 with b > 0, or a = +0 with b < 0), C = -0: is the sum -0?
        A = np.where(rng.random((M, K)) < 0.5, -0.0, 0.0)
        B = np.where(A[:1, :].T > -1, 1.0, 1.0) * (1 + rng.random((K, N)))
        B = np.where(np.signbit(A[0])[:, None], B, -B)
        A = np.tile(A[:1, :], (M, 1))
        C = np.full((M, N), -0.0, np.float32)
        yield "negzero", fmt, out_fmt, V.to_format(A, fmt), V.to_format(B, fmt), C
    # fp16 output: is c aligned at fp16's emin (-14) or fp32's (-126)? A tie at the output plus
    # tiny products that survive only under one of the two.
    K = 16
    A = np.zeros((M, K)); B = np.zeros((K, N))
    A[:, 0] = 2.0**-14; B[0, :] = 2.0**-11
    A[:, 1:] = (2.0**-24) * rng.integers(1, 4, size=(M, K - 1))
    B[1:, :] = _signed(rng, (K - 1, N)) * (2.0**-18) * (1 + rng.integers(0, 2, size=(K - 1, N)))
    C = ((2.0**-24) * rng.integers(1, 8, size=(M, N))).astype(np.float32)
    yield "cemin", "fp16", "fp16", V.to_format(A, "fp16"), V.to_format(B, "fp16"), V.to_format(C, "fp16")


def main(out: str) -> None:
    rng = np.random.default_rng(7)
    arrays = {}
    M, N = 128, 64
    for path in ("mma.sync", "wgmma"):
        for fmt, out_fmt in (("fp16", "fp32"), ("bf16", "fp32"), ("tf32", "fp32"), ("e4m3", "fp32"),
                             ("fp16", "fp16")):
            for gen in ("random", "spread", "cancel", "subnormal", "gdisc"):
                for with_c in (False, True):
                    K = INSTR_K[fmt]
                    A, B = V.make_inputs(gen, fmt, M, N, K, rng)
                    C = V.make_c(A, B, out_fmt, rng) if with_c else None
                    D = V.gpu_gemm(path, A, B, C, fmt, out_fmt)
                    key = f"{path}|{fmt}|{out_fmt}|{gen}|{'c' if with_c else 'z'}"
                    arrays[key + "|A"] = A.astype(np.float32)
                    arrays[key + "|B"] = B.astype(np.float32)
                    arrays[key + "|C"] = (np.zeros((M, N), np.float32) if C is None else C.astype(np.float32))
                    arrays[key + "|D"] = D.astype(np.float32)
    # issue 19: wgmma fp8 with an fp16 accumulator (no mma.sync kernel: ptxas emulates that path)
    for fmt in ("e4m3", "e5m2"):
        for gen in ("random", "spread", "cancel", "subnormal", "gdisc"):
            for with_c in (False, True):
                A, B = V.make_inputs(gen, fmt, M, N, INSTR_K[fmt], rng)
                C = V.make_c(A, B, "fp16", rng) if with_c else None
                D = V.gpu_gemm("wgmma", A, B, C, fmt, "fp16")
                key = f"wgmma|{fmt}|fp16|{gen}|{'c' if with_c else 'z'}"
                C = np.zeros((M, N), np.float32) if C is None else C
                for part, arr in zip("ABCD", (A, B, C, D)):
                    arrays[f"{key}|{part}"] = np.asarray(arr, np.float32)
    for path in ("mma.sync", "wgmma"):
        for name, fmt, out_fmt, A, B, C in _settling_sets(rng):
            D = V.gpu_gemm(path, A, B, C, fmt, out_fmt)
            key = f"{path}|{fmt}|{out_fmt}|{name}|{'c' if np.any(C.view(np.uint32)) else 'z'}"
            for part, arr in zip("ABCD", (A, B, C, D)):
                arrays[f"{key}|{part}"] = np.asarray(arr, np.float32)
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(arrays) // 4} block sets to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
