"""fp8 presets of issue 19: published hardware vectors N/5000 (when available), hand-computed
blocks that tell the candidate models apart, the ptxas fp8 mma.sync emulation, negative controls.

The published vectors (Khattak & Mikaitis, BSD-2-Clause; github.com/north-numerical-computing/
MATLAB-tensor-core, folder ``model_validation``) are not copied into this repository: point
``HSPI_KM_VECTORS`` at that ``model_validation`` folder (or place it at
``shared/vectors/tensor-core-km``); the vector tests skip without it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.numerics.fp8_emulation import PARTITIONS, mma_sync_fp8_block, mma_sync_fp8_chain
from hspi_kernels.numerics.tensor_core import PRESETS, block_fma, chain, get_preset

F32 = np.float32


def _vector_root() -> Path | None:
    here = Path(__file__).resolve()
    for cand in (os.environ.get("HSPI_KM_VECTORS"), here.parents[1] / "shared" / "vectors" / "tensor-core-km",
                 Path("/work/shared/vectors/tensor-core-km")):
        if cand and (Path(cand) / "Ada" / "E4M3").is_dir():
            return Path(cand)
    return None


ROOT = _vector_root()
needs_vectors = pytest.mark.skipif(ROOT is None, reason="Khattak & Mikaitis vectors not found (HSPI_KM_VECTORS)")


def load(gpu: str, fmt: str, out: str):
    """(a [5000, 32], b, c [5000], d_bits [5000]) of one published set; d is the GPU output as
    fp32 bits (fp16 outputs widened). H100/H200 fp32 files were measured with wgmma and C = 0."""
    folder = ROOT / gpu / fmt

    def hex_rows(name):
        rows = [[int(w, 16) for w in line.split()] for line in (folder / name).read_text().splitlines()]
        return np.array(rows, dtype=np.uint32).view(F32)

    def binary_lines(name):
        return np.array([int(line, 2) for line in (folder / name).read_text().split()], dtype=np.uint32)

    a, b = hex_rows(f"a_{gpu}_{fmt}.txt"), hex_rows(f"b_{gpu}_{fmt}.txt")
    c = binary_lines(f"c_{gpu}_fp32.txt").view(F32)
    d = binary_lines(f"d_{gpu}_{out}.txt")
    assert a.shape == b.shape == (5000, 32) and c.shape == d.shape == (5000,)
    return a, b, c, d


def n_match(ours: np.ndarray, bits: np.ndarray) -> int:
    return int((np.asarray(ours, F32).view(np.uint32) == bits).sum())


# -- published vectors ----------------------------------------------------------------------------
# (gpu folder, format folder, output, preset name or emulation, c used by the GPU)
BLOCK_SETS = [
    ("Ada", "E4M3", "fp32", "sm_89.mma/e4m3->e8m13", "c"),
    ("Ada", "E5M2", "fp32", "sm_89.mma/e5m2->e8m13", "c"),
    ("L40S", "E4M3", "fp32", "sm_89.mma/e4m3->e8m13", "c"),
    ("L40S", "E5M2", "fp32", "sm_89.mma/e5m2->e8m13", "c"),
    ("Ada", "E4M3", "fp16", "sm_89.mma/e4m3->fp16", "c"),
    ("Ada", "E5M2", "fp16", "sm_89.mma/e5m2->fp16", "c"),
    ("H100", "E4M3", "fp32", "sm_90.wgmma/e4m3->e8m13", "zero"),
    ("H100", "E5M2", "fp32", "sm_90.wgmma/e5m2->e8m13", "zero"),
    ("H200", "E4M3", "fp32", "sm_90.wgmma/e4m3->e8m13", "zero"),
    ("H200", "E5M2", "fp32", "sm_90.wgmma/e5m2->e8m13", "zero"),
]
EMULATED_SETS = [("H100", "E4M3", "fp16", "sm_90"), ("H100", "E5M2", "fp16", "sm_90"),
                 ("H200", "E4M3", "fp16", "sm_90"), ("H200", "E5M2", "fp16", "sm_90"),
                 ("B200", "E4M3", "fp32", "sm_100"), ("B200", "E5M2", "fp32", "sm_100"),
                 ("B200", "E4M3", "fp16", "sm_100"), ("B200", "E5M2", "fp16", "sm_100")]


@needs_vectors
@pytest.mark.parametrize("gpu, fmt, out, name, c_used", BLOCK_SETS, ids=lambda v: str(v))
def test_fp8_preset_reproduces_published_vectors(gpu, fmt, out, name, c_used):
    a, b, c, d = load(gpu, fmt, out)
    c = np.zeros_like(c) if c_used == "zero" else c
    model = PRESETS[name]
    assert n_match(chain(model, a, b, c), d) == 5000, name


@needs_vectors
@pytest.mark.parametrize("gpu, fmt", [("Ada", "E4M3"), ("L40S", "E5M2")])
def test_negative_control_old_sm89_fp32_output_is_rejected(gpu, fmt):
    """The sm_89 preset with a full fp32 output (the pre-issue-19 model) misses ~20 %, and so do
    G=32 and F=14 variants of the new one."""
    a, b, c, d = load(gpu, fmt, "fp32")
    old = PRESETS[f"sm_89.mma/{fmt.lower()}->fp32"]
    new = PRESETS[f"sm_89.mma/{fmt.lower()}->e8m13"]
    assert n_match(chain(old, a, b, c), d) < 4200
    assert n_match(chain(replace(new, G=32), a, b, c), d) < 4500
    assert n_match(chain(replace(new, F=14), a, b, c), d) < 4900


@needs_vectors
@pytest.mark.parametrize("gpu, fmt, out, arch", EMULATED_SETS, ids=lambda v: str(v))
def test_fp8_mma_sync_emulation_reproduces_published_vectors(gpu, fmt, out, arch):
    a, b, c, d = load(gpu, fmt, out)
    assert n_match(mma_sync_fp8_block(arch, out, a, b, c), d) == 5000
    if out == "fp16":  # the partition matters only through the fp16 rounding between the HMMAs
        for wrong in PARTITIONS[1:]:
            assert n_match(mma_sync_fp8_block(arch, out, a, b, c, wrong), d) < 4000, wrong
        # and the (hypothetical) fp16-output block preset does not describe mma.sync
        if arch == "sm_90":
            block = PRESETS[f"sm_90.wgmma/{fmt.lower()}->fp16"]
            assert n_match(block_fma(block, a, b, c), d) < 4000


@needs_vectors
def test_b200_mma_sync_fp8_is_not_the_tcgen05_preset():
    """What the issue counted as 'tcgen05 65 %' is the mma.sync emulation, another path."""
    a, b, c, d = load("B200", "E4M3", "fp32")
    assert n_match(chain(PRESETS["sm_100.tcgen05/e4m3->fp32"], a, b, c), d) < 4000


# -- hand-computed blocks (always run) ------------------------------------------------------------
def _block(pairs, G):
    a, b = np.zeros((1, G), F32), np.zeros((1, G), F32)
    for k, (x, y) in pairs.items():
        a[0, k], b[0, k] = x, y
    return a, b


def test_ada_e8m13_output_drops_the_14th_fraction_bit():
    # 1.5 * 1.5 = 2.25 (alignment exponent 0, grid 2^-13) + 2^-6 * 2^-7 = 2^-13: exact sum
    # 2.25 + 2^-13 = 2 * (1.125 + 2^-14) needs 14 fraction bits; e8m13 RZ keeps 13.
    a, b = _block({0: (1.5, 1.5), 3: (2.0**-6, 2.0**-7)}, 16)
    c = np.zeros(1, F32)
    assert block_fma(get_preset("sm_89", "e4m3", "fp32"), a, b, c)[0] == F32(2.25 + 2.0**-13)
    assert block_fma(get_preset("sm_89", "e4m3", "e8m13"), a, b, c)[0] == F32(2.25)


def test_ada_g16_vs_g32_cancellation_in_the_first_half():
    # k=0: +256, k=1: -256, k=20: 2^-6 * 2^-4 = 2^-10. G=16: the first block is exactly 0, the second
    # sees only the small term. G=32: e_max = 8, grid 2^-5 truncates the small term to 0.
    a, b = _block({0: (16.0, 16.0), 1: (-16.0, 16.0), 20: (2.0**-6, 2.0**-4)}, 32)
    c = np.zeros(1, F32)
    g16 = get_preset("sm_89", "e4m3", "e8m13")
    assert chain(g16, a, b, c)[0] == F32(2.0**-10)
    assert chain(replace(g16, G=32), a, b, c)[0] == F32(0.0)
    assert chain(get_preset("sm_90", "e4m3", "fp16", "wgmma"), a, b, c)[0] == F32(0.0)


def test_fp16_output_fp8_blocks_round_to_nearest_even():
    # 1 + 2^-11 + 2^-12 (above the fp16 tie) -> RNE rounds up to 1 + 2^-10; RZ would keep 1.0.
    a, b = _block({0: (1.0, 1.0), 5: (2.0**-6, 2.0**-5), 9: (2.0**-6, 2.0**-6)}, 32)
    c = np.zeros(1, F32)
    for name in ("sm_90.wgmma/e4m3->fp16", "sm_100.tcgen05/e4m3->fp16"):
        assert block_fma(PRESETS[name], a, b, c)[0] == F32(1 + 2.0**-10), name
    # F=13 (Hopper hypothesis) vs F=25 (Blackwell): a term 2^-14 below e_max survives only with F=25
    a, b = _block({0: (1.0, 1.0), 5: (2.0**-6, 2.0**-5), 9: (2.0**-9, 2.0**-6)}, 32)  # 1 + 2^-11 + 2^-15
    assert block_fma(PRESETS["sm_90.wgmma/e4m3->fp16"], a, b, c)[0] == F32(1.0)  # tie after truncation -> even
    assert block_fma(PRESETS["sm_100.tcgen05/e4m3->fp16"], a, b, c)[0] == F32(1 + 2.0**-10)


def test_ada_fp16_output_rounds_between_the_two_k16_blocks():
    # block 0: 1 + 2^-11 (tie) -> 1.0 in fp16; block 1 adds 2^-11 again -> 1.0. One G=32 block
    # would see 1 + 2^-10 exactly.
    a, b = _block({0: (1.0, 1.0), 1: (2.0**-6, 2.0**-5), 17: (2.0**-6, 2.0**-5)}, 32)
    c = np.zeros(1, F32)
    ada = get_preset("sm_89", "e4m3", "fp16")
    assert chain(ada, a, b, c)[0] == F32(1.0)
    assert chain(replace(ada, G=32), a, b, c)[0] == F32(1 + 2.0**-10)


def test_emulation_partition_is_visible_through_fp16_rounding():
    # k=1: 2^-11, k=2: 1.0, k=17: 2^-11. mod4 (k%4 in {0,1} first): HMMA1 = 2^-10, HMMA2 = 1 + 2^-10.
    # halves (k < 16 first): HMMA1 = 1 + 2^-11 -> 1.0 (tie to even), HMMA2 = 1 + 2^-11 -> 1.0.
    a, b = _block({1: (2.0**-6, 2.0**-5), 2: (1.0, 1.0), 17: (2.0**-6, 2.0**-5)}, 32)
    c = np.zeros(1, F32)
    for arch in ("sm_90", "sm_100"):
        assert mma_sync_fp8_block(arch, "fp16", a, b, c)[0] == F32(1 + 2.0**-10)
        assert mma_sync_fp8_block(arch, "fp16", a, b, c, "halves")[0] == F32(1.0)
        # fp32 accumulators keep both: no partition dependence here
        assert mma_sync_fp8_block(arch, "fp32", a, b, c)[0] == F32(1 + 2.0**-10)


def test_emulation_adds_c_after_the_products():
    # fp32: the HMMAs give exactly 1.0, then FADD(1.0, 3 * 2^-24) rounds to nearest: 1 + 2^-22.
    # A fused F=13 block with c (the wgmma preset) truncates c away: 1.0.
    a, b = _block({0: (1.0, 1.0)}, 32)
    c = np.array([3 * 2.0**-24], F32)
    assert mma_sync_fp8_block("sm_90", "fp32", a, b, c)[0] == F32(1 + 2.0**-22)
    assert block_fma(get_preset("sm_90", "e4m3", "e8m13", "wgmma"), a, b, c)[0] == F32(1.0)


def test_emulation_chain_equals_the_validation_emulation():
    from hspi_kernels.kernels.validation import tensor_core as V

    rng = np.random.default_rng(19)
    A, B = V.make_inputs("gdisc", "e4m3", 64, 8, 96, rng)
    C = V.make_c(A, B, "fp32", rng)
    ref = V.fp8_mma_sync_emulated(A, B, C, "mod4")
    a = np.repeat(A[:, None, :], 8, axis=1).reshape(-1, 96)
    b = np.repeat(B.T[None, :, :], 64, axis=0).reshape(-1, 96)
    ours = mma_sync_fp8_chain("sm_90", "fp32", a, b, C.reshape(-1)).reshape(64, 8)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_emulation_refuses_native_fp8_arches_and_bad_shapes():
    a = np.zeros((2, 32), F32)
    with pytest.raises(ValueError, match="native"):
        mma_sync_fp8_block("sm_89", "fp32", a, a, np.zeros(2, F32))
    with pytest.raises(ValueError, match="out_format"):
        mma_sync_fp8_block("sm_90", "e8m13", a, a, np.zeros(2, F32))
    with pytest.raises(ValueError):
        mma_sync_fp8_block("sm_90", "fp32", a[:, :16], a[:, :16], np.zeros(2, F32))


def test_new_fp8_presets_exist_with_their_parameters():
    expect = {"sm_89.mma/e4m3->e8m13": (16, 13, "RZ"), "sm_89.mma/e5m2->fp16": (16, 13, "RNE"),
              "sm_90.wgmma/e4m3->fp16": (32, 13, "RNE"), "sm_90.wgmma/e5m2->fp16": (32, 13, "RNE"),
              "sm_100.tcgen05/e4m3->fp16": (32, 25, "RNE")}
    for name, (G, F, rnd) in expect.items():
        m = PRESETS[name]
        assert (m.G, m.F, m.out_rounding) == (G, F, rnd) and m.source, name
    assert PRESETS["sm_90.wgmma/e4m3->fp16"].emax_floor == -133  # the sm_90 rules apply
