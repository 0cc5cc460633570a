"""The sm_90 tensor-core presets reproduce our H100 kernels' single-instruction blocks bit for bit.

Data: tests/data/gpu_blocks/h100_tc_blocks.npz (mma.sync and wgmma GEMMs with K = one
instruction's k, on an H100 80GB HBM3, nvcc 13.0; generators of validation/tensor_core.py).
100 sets of 128x64 = 8192 outputs: {mma.sync, wgmma} x {fp16->fp32, bf16->fp32, tf32->fp32,
e4m3->fp32, fp16->fp16} x {random, spread, cancel, subnormal, gdisc} x {C = 0, C != 0}.

- Every block set: N/N through numpy (tensor_core.chain) and the C++ evaluator (evaluate.gemm).
- mma.sync e4m3 is not one block on Hopper (ptxas emits two fp16 HMMAs and an fp32 FADD of C):
  N/N against validation.tensor_core.fp8_mma_sync_emulated.
- Negative controls: each sm_90 rule reverted on its own fails on exactly the counted outputs
  (scripts/analyse_tc_blocks.py prints the same table).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.numerics.tensor_core import chain, get_preset
from hspi_kernels.numerics.formats import same_bits

DATA = Path(__file__).parent / "data" / "gpu_blocks" / "h100_tc_blocks.npz"
OUTPUTS = 128 * 64


def _load() -> dict[str, dict[str, np.ndarray]]:
    npz = np.load(DATA)
    sets: dict[str, dict[str, np.ndarray]] = {}
    for key in npz.files:
        name, part = key.rsplit("|", 1)
        sets.setdefault(name, {})[part] = npz[key]
    return sets


SETS = _load()
BLOCK_SETS = sorted(k for k in SETS if not (k.startswith("mma.sync|") and k.split("|")[1] in ("e4m3", "e5m2")))
FP8_MMA_SYNC_SETS = sorted(set(SETS) - set(BLOCK_SETS))


def _model(name: str):
    path, fmt, out, _, _ = name.split("|")
    return get_preset("sm_90", fmt, "e8m13" if fmt in ("e4m3", "e5m2") else out, path)


def _numpy(model, s) -> np.ndarray:
    A, B = s["A"], s["B"]
    M, K = A.shape
    N = B.shape[1]
    a = np.ascontiguousarray(np.broadcast_to(A[:, None, :], (M, N, K)))
    b = np.ascontiguousarray(np.broadcast_to(B.T[None, :, :], (M, N, K)))
    return chain(model, a, b, s["C"])


def test_data_layout():
    # 100 sets of the first dump + 20 settling sets (floor, opsub, negzero, cemin)
    assert len(SETS) == 120 and len(BLOCK_SETS) == 109 and len(FP8_MMA_SYNC_SETS) == 11
    for name, s in SETS.items():
        assert s["D"].shape == s["C"].shape == (128, 64), name
        assert s["A"].shape[1] == {"fp16": 16, "bf16": 16, "tf32": 8, "e4m3": 32}[name.split("|")[1]], name
        if name.endswith("|z"):
            assert not np.any(s["C"]), name


@pytest.mark.parametrize("name", BLOCK_SETS)
def test_preset_reproduces_gpu_blocks_numpy(name):
    s = SETS[name]
    assert int(same_bits(_numpy(_model(name), s), s["D"]).sum()) == OUTPUTS


@pytest.mark.parametrize("name", BLOCK_SETS)
def test_preset_reproduces_gpu_blocks_native(name):
    s = SETS[name]
    model = _model(name)
    plan = P.Chain(P.TensorCore("sm_90", model.in_format, model.out_format, model.path), k=s["A"].shape[1])
    assert int(same_bits(gemm(plan, s["A"], s["B"], s["C"]), s["D"]).sum()) == OUTPUTS


@pytest.mark.parametrize("name", FP8_MMA_SYNC_SETS)
def test_mma_sync_fp8_is_the_ptxas_emulation(name):
    from hspi_kernels.kernels.validation.tensor_core import fp8_mma_sync_emulated

    s = SETS[name]
    got = fp8_mma_sync_emulated(s["A"], s["B"], s["C"] if name.endswith("|c") else None, "mod4")
    assert int(same_bits(got, s["D"]).sum()) == OUTPUTS


# Each rule of the sm_90 model reverted on its own: matches per affected set (all other sets
# stay N/N). subnormal_exponent covers operands (fp16, e4m3 sets: their inputs are subnormal)
# and c (bf16, tf32 sets: their inputs are normal, C holds fp32 subnormals).
def _FLOOR_SETS(matches: int) -> dict[str, int]:
    return {f"{path}|{fmt}|fp32|floor|z": matches for path in ("mma.sync", "wgmma") for fmt in ("bf16", "tf32")}


REVERTED = {
    "subnormal_exponent": ({"subnormal_exponent": "actual"}, {
        "mma.sync|bf16|fp32|subnormal|c": 8091, "mma.sync|tf32|fp32|subnormal|c": 7862,
        "wgmma|bf16|fp32|subnormal|c": 8074, "wgmma|tf32|fp32|subnormal|c": 7818,
        "mma.sync|fp16|fp32|subnormal|c": 4819, "mma.sync|fp16|fp32|subnormal|z": 3598,
        "wgmma|fp16|fp32|subnormal|c": 4928, "wgmma|fp16|fp32|subnormal|z": 3491,
        "mma.sync|fp16|fp16|subnormal|c": 8191, "mma.sync|fp16|fp16|subnormal|z": 8191,
        "wgmma|fp16|fp16|subnormal|z": 8190,
        "wgmma|e4m3|fp32|gdisc|c": 7718, "wgmma|e4m3|fp32|gdisc|z": 7335,
        "wgmma|e4m3|fp32|subnormal|c": 5248, "wgmma|e4m3|fp32|subnormal|z": 2745,
        # settling sets (second dump): tf32 subnormal operands; fp16-output c at fp16's emin -14
        "mma.sync|tf32|fp32|opsub|z": 6958, "wgmma|tf32|fp32|opsub|z": 6714,
        "mma.sync|fp16|fp16|cemin|c": 4045, "wgmma|fp16|fp16|cemin|c": 4343,
    }),
    "zero_sign": ({"zero_sign": "ieee"}, {
        "mma.sync|bf16|fp32|subnormal|c": 8027, "wgmma|bf16|fp32|subnormal|c": 8059,
        "mma.sync|tf32|fp32|subnormal|c": 7901, "wgmma|tf32|fp32|subnormal|c": 7789,
        "mma.sync|fp16|fp16|cancel|c": 8186, "wgmma|fp16|fp16|cancel|c": 8188,
        "mma.sync|fp16|fp16|subnormal|c": 7666, "wgmma|fp16|fp16|subnormal|c": 7660,
        "mma.sync|fp16|fp16|subnormal|z": 8191, "wgmma|fp16|fp16|random|c": 8191,
        # settling sets: every product -0 and c = -0 -- the GPU still writes +0 (IEEE says -0)
        **{f"{path}|{fmt}|negzero|c": 0 for path in ("mma.sync", "wgmma")
           for fmt in ("bf16|fp32", "fp16|fp16", "fp16|fp32", "tf32|fp32")},
        "wgmma|e4m3|fp32|negzero|c": 0,
    }),
    # First pinned by two outputs of the first dump; the floor sweep of the second dump (lead
    # product 2^T, T in -145..-125, one small term below it) then decides it on ~1000 outputs.
    "emax_floor": ({"emax_floor": None}, {"mma.sync|bf16|fp32|subnormal|z": 8191, **_FLOOR_SETS(7210)}),
    "emax_floor -134": ({"emax_floor": -134}, {"mma.sync|bf16|fp32|subnormal|z": 8191, **_FLOOR_SETS(8044)}),
    "emax_floor -132": ({"emax_floor": -132}, {"wgmma|tf32|fp32|subnormal|z": 8191, **_FLOOR_SETS(8032)}),
}


@pytest.mark.parametrize("rule", sorted(REVERTED))
def test_negative_control_each_rule_reverted(rule):
    change, expected = REVERTED[rule]
    got = {}
    for name in BLOCK_SETS:
        s = SETS[name]
        matches = int(same_bits(_numpy(dataclasses.replace(_model(name), **change), s), s["D"]).sum())
        if matches != OUTPUTS:
            got[name] = matches
    assert got == expected


def test_h200_blocks_equal_h100_blocks():
    """The same inputs on an H200 (scripts/tc_dump.py, seed 7): every output bit-identical to the
    H100's, so the sm_90 model that reproduces the H100 sets reproduces the H200 ones too."""
    h100 = np.load(DATA)
    h200 = np.load(DATA.with_name("h200_tc_blocks.npz"))
    assert sorted(h100.files) == sorted(h200.files)
    inputs = [k for k in h100.files if not k.endswith("|D")]
    assert all(np.array_equal(h100[k].view(np.uint32), h200[k].view(np.uint32)) for k in inputs)
    outputs = [k for k in h100.files if k.endswith("|D")]
    equal = sum(int(np.sum(h100[k].view(np.uint32) == h200[k].view(np.uint32))) for k in outputs)
    assert (len(outputs), equal) == (120, 120 * OUTPUTS)
