"""fp8 ``mma.sync`` on Hopper and Blackwell datacenter parts: not a tensor-core block.

``mma.sync.m16n8k32 ... .e4m3/.e5m2`` has no native form on sm_90a or sm_100a: ptxas (nvcc 13.0)
lowers it to F2FP.F16.E4M3.UNPACK_B (exact fp8 -> fp16), two ``HMMA.16816`` and an add of C
(SASS checked here with cuobjdump, no GPU needed):

- fp32 accumulator: ``HMMA.16816.F32 R, a0, b0, RZ`` over the k with ``k % 4 in {0, 1}``, then
  ``HMMA.16816.F32 R, a1, b1, R`` over ``k % 4 in {2, 3}``, then ``FADD`` of C (fp32 RNE);
- fp16 accumulator: the same with ``HMMA.16816.F16`` (fp16 RNE block outputs), then ``HADD2`` of C
  (fp16 RNE).

(sm_89 and sm_120a have a native ``QMMA.16832``: there fp8 is a block, see the sm_89 presets in
:mod:`tensor_core`.) Each HMMA is the arch's fp16 block model (G=16) on the unpacked operands,
so :func:`mma_sync_fp8_block` reuses the fp16 presets.

Evidence (Khattak & Mikaitis' published hardware vectors, 5000 blocks of K=32 each, measured by
``tests/test_fp8_presets.py``): H100 and H200 e4m3/e5m2 -> fp16 5000/5000 each (the ``k % 4``
partition; the contiguous, even/odd and swapped partitions fail, 3433-3850); B200 e4m3/e5m2 ->
fp32 and -> fp16 5000/5000 each with the sm_100 fp16 presets (fp32 output cannot tell the
partitions apart on these vectors, fp16 output can: 3421-3855 for the wrong ones). Our own H100
dump: the fp32 path 8192/8192 in all 10 block sets (``validation.tensor_core``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["EMULATED_ARCHS", "PARTITIONS", "mma_sync_fp8_block", "mma_sync_fp8_chain"]

EMULATED_ARCHS = ("sm_90", "sm_100")
K_INST = 32


def _partition(kind: str) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(K_INST)
    if kind == "mod4":  # what the SASS shows: the low fp16 halves of each register first
        return k[k % 4 < 2], k[k % 4 >= 2]
    if kind == "mod4_swapped":
        return k[k % 4 >= 2], k[k % 4 < 2]
    if kind == "halves":
        return k[:16], k[16:]
    if kind == "evenodd":
        return k[0::2], k[1::2]
    raise ValueError(f"unknown partition {kind!r}; one of {PARTITIONS}")


PARTITIONS = ("mod4", "mod4_swapped", "halves", "evenodd")


def _fp16_block_model(arch: str, out_format: str):
    from .tensor_core import get_preset

    if arch not in EMULATED_ARCHS:
        raise ValueError(f"fp8 mma.sync is emulated by ptxas on {EMULATED_ARCHS}, not on {arch!r} "
                         "(sm_89 has a native fp8 block: use tensor_core.get_preset)")
    if out_format not in ("fp32", "fp16"):
        raise ValueError(f"out_format must be 'fp32' or 'fp16', got {out_format!r}")
    base = get_preset(arch, "fp16", out_format, "mma.sync")
    return dataclasses.replace(base, name=f"{arch}.mma/fp8-emulated-{out_format}", in_format="fp16")


def _fp16_round(x: np.ndarray) -> np.ndarray:
    """float32/float64 -> fp16 RNE (numpy's cast is correctly rounded), widened to float32."""
    return np.asarray(x, np.float64).astype(np.float16).astype(np.float32)


def mma_sync_fp8_block(arch: str, out_format: str, a, b, c, partition: str = "mod4") -> np.ndarray:
    """One emulated ``mma.sync m16n8k32`` fp8 instruction per row: a, b float32 [N, 32] (e4m3 or
    e5m2 values: both are exact in fp16), c float32 [N] (fp16 output: c is rounded to fp16 first,
    as the fp16 accumulator register holds it). Returns float32 [N]."""
    from .tensor_core import block_fma

    model = _fp16_block_model(arch, out_format)
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    c = np.asarray(c, np.float32)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != K_INST or c.shape != a.shape[:1]:
        raise ValueError(f"a, b must be [N, {K_INST}] and c [N]; got {a.shape}, {b.shape}, {c.shape}")
    p0, p1 = _partition(partition)
    zero = np.zeros(a.shape[0], np.float32)
    x = block_fma(model, a[:, p0], b[:, p0], zero)
    x = block_fma(model, a[:, p1], b[:, p1], x)
    if out_format == "fp16":  # HADD2: exact sum of two fp16 values, one RNE rounding to fp16
        return _fp16_round(x.astype(np.float64) + _fp16_round(c).astype(np.float64))
    return (x + c).astype(np.float32)  # FADD: fp32 RNE


def mma_sync_fp8_chain(arch: str, out_format: str, a, b, c=None, partition: str = "mod4") -> np.ndarray:
    """A K-long dot product as emulated instructions k = 0, 32, 64, ...; each output is the next c."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] % K_INST or a.shape[1] == 0:
        raise ValueError(f"a, b must be [N, K] with K a positive multiple of {K_INST}; got {a.shape}, {b.shape}")
    acc = np.zeros(a.shape[0], np.float32) if c is None else np.asarray(c, np.float32)
    for k0 in range(0, a.shape[1], K_INST):
        acc = mma_sync_fp8_block(arch, out_format, a[:, k0:k0 + K_INST], b[:, k0:k0 + K_INST], acc, partition)
    return acc
