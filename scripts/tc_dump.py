"""Dump single-instruction tensor-core GEMM blocks (A, B, C and the GPU's D) for offline
analysis of where the block-model presets disagree with the hardware.

    python scripts/tc_dump.py OUT.npz

K equals one instruction's k (16 fp16/bf16, 8 tf32, 32 fp8), so every output is one
instruction applied to one C: the purest view of the unit's arithmetic."""

from __future__ import annotations

import sys

import numpy as np

from hspi_kernels.validation import tensor_core as V

INSTR_K = {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32, "e5m2": 32}


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
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(arrays) // 4} block sets to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
