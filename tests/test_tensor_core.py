"""Tensor-core block models: hardware vectors bit for bit, negative controls, the Fraction
reference, chains, validation and special values."""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from hspi_kernels.numerics import exact
from hspi_kernels.numerics.formats import decode, get_format
from hspi_kernels.numerics.rounding import round_to_format
from hspi_kernels.numerics.tensor_core import PRESETS, BlockModel, block_fma, chain, get_preset

DATA = Path(__file__).parent / "data"

# (GPU folder, arch, input format, output format) of every vector set in tests/data/tensor_core.
VECTOR_SETS = [
    ("V100", "sm_70", "fp16", "fp32"),
    ("V100", "sm_70", "fp16", "fp16"),
    ("A100", "sm_80", "fp16", "fp32"),
    ("A100", "sm_80", "fp16", "fp16"),
    ("A100", "sm_80", "bf16", "fp32"),
    ("A100", "sm_80", "tf32", "fp32"),
    ("H100", "sm_90", "fp16", "fp32"),
    ("H100", "sm_90", "bf16", "fp32"),
]
FP32_OUTPUT_SETS = [v for v in VECTOR_SETS if v[3] == "fp32"]


def set_id(v):
    return f"{v[0]}-{v[2]}->{v[3]}"


def load_vectors(data_dir, gpu, in_format, out_format):
    """(a, b, c, d_bits) of one vector set; layout in tests/data/tensor_core/SOURCE.md."""
    folder = data_dir / "tensor_core" / gpu / in_format

    def hex_rows(name):
        rows = [[int(word, 16) for word in line.split()] for line in (folder / name).read_text().splitlines()]
        return np.array(rows, dtype=np.uint32).view(np.float32)

    def binary_lines(name):
        return np.array([int(line, 2) for line in (folder / name).read_text().split()], dtype=np.uint32)

    a = hex_rows(f"a_{gpu}_{in_format}.txt")
    b = hex_rows(f"b_{gpu}_{in_format}.txt")
    c = binary_lines(f"c_{gpu}_fp32.txt").view(np.float32)
    d = binary_lines(f"d_{gpu}_{out_format}.txt")
    assert a.shape == b.shape and a.shape[0] == c.shape[0] == d.shape[0] == 5000
    return a, b, c, d


def matches(ours: np.ndarray, expected_bits: np.ndarray) -> np.ndarray:
    """Bitwise equality of float32 results; NaNs compare by class."""
    ours_bits = ours.view(np.uint32)
    is_nan = lambda bits: (bits & 0x7FFFFFFF) > 0x7F800000  # noqa: E731
    return np.where(is_nan(ours_bits) | is_nan(expected_bits), is_nan(ours_bits) & is_nan(expected_bits), ours_bits == expected_bits)


@pytest.fixture(scope="module")
def vectors():
    cache = {}

    def get(gpu, in_format, out_format):
        key = (gpu, in_format, out_format)
        if key not in cache:
            cache[key] = load_vectors(DATA, *key)
        return cache[key]

    return get


# -- hardware vectors -----------------------------------------------------------------------
@pytest.mark.parametrize("vector_set", VECTOR_SETS, ids=set_id)
def test_preset_reproduces_hardware_vectors(vectors, vector_set):
    gpu, arch, in_format, out_format = vector_set
    a, b, c, d = vectors(gpu, in_format, out_format)
    model = get_preset(arch, in_format, out_format)
    assert a.shape[1] == model.G
    ok = matches(block_fma(model, a, b, c), d)
    assert ok.sum() == 5000, f"{model.name}: {ok.sum()}/5000 bit-exact"


@pytest.mark.parametrize("in_format", ["fp16", "bf16"])
def test_wgmma_preset_matches_mma_sync_on_h100_vectors(vectors, in_format):
    a, b, c, d = vectors("H100", in_format, "fp32")
    assert matches(block_fma(get_preset("sm_90", in_format, path="wgmma"), a, b, c), d).all()


def mismatch_fraction(model, a, b, c, d):
    return 1.0 - matches(chain(model, a, b, c), d).mean()


@pytest.mark.parametrize("vector_set", FP32_OUTPUT_SETS, ids=set_id)
def test_negative_controls_wrong_parameters_are_rejected(vectors, vector_set):
    """Each deliberately wrong model must disagree with the GPU on many blocks. The minimum
    fractions are below the measured ones (smallest: H100 bf16 with F+1, 3.2%)."""
    gpu, arch, in_format, out_format = vector_set
    a, b, c, d = vectors(gpu, in_format, out_format)
    model = get_preset(arch, in_format, out_format)
    assert mismatch_fraction(model, a, b, c, d) == 0.0
    assert mismatch_fraction(replace(model, F=model.F + 1), a, b, c, d) > 0.025
    assert mismatch_fraction(replace(model, F=model.F - 1), a, b, c, d) > 0.08
    assert mismatch_fraction(replace(model, out_rounding="RNE"), a, b, c, d) > 0.10
    assert mismatch_fraction(replace(model, G=model.G // 2), a, b, c, d) > 0.10  # two chained half blocks


@pytest.mark.parametrize("vector_set", [v for v in VECTOR_SETS if v[3] == "fp16"], ids=set_id)
def test_negative_controls_fp16_output(vectors, vector_set):
    gpu, arch, in_format, out_format = vector_set
    a, b, c, d = vectors(gpu, in_format, out_format)
    model = get_preset(arch, in_format, out_format)
    assert mismatch_fraction(replace(model, out_rounding="RZ"), a, b, c, d) > 0.4
    assert mismatch_fraction(replace(model, G=model.G // 2), a, b, c, d) > 0.2


@pytest.mark.parametrize("in_format", ["fp16", "bf16"])
def test_negative_control_ampere_model_on_hopper_vectors(vectors, in_format):
    a, b, c, d = vectors("H100", in_format, "fp32")
    assert mismatch_fraction(get_preset("sm_80", in_format), a, b, c, d) > 0.2  # measured 0.35 / 0.22


def test_5000_blocks_well_under_a_second(vectors):
    a, b, c, _ = vectors("H100", "bf16", "fp32")
    model = get_preset("sm_90", "bf16")
    block_fma(model, a, b, c)
    start = time.perf_counter()
    block_fma(model, a, b, c)
    assert time.perf_counter() - start < 0.5


# -- the Fraction reference -------------------------------------------------------------------
def reference_block(model: BlockModel, a, b, c) -> np.float32:
    """Steps 1-4 of the model on Fractions, one block (finite inputs)."""
    out_fmt = get_format(model.out_format)
    if model.out_format == "fp16":
        c = decode(round_to_format(np.float32(c), "fp16", "RNE"), "fp16")
    terms = [(Fraction(float(x)) * Fraction(float(y)), int(np.floor(np.log2(abs(float(x))))) + int(np.floor(np.log2(abs(float(y))))))
             for x, y in zip(a, b) if x != 0 and y != 0]
    if c != 0:
        terms.append((Fraction(float(c)), exact.floor_log2(abs(Fraction(float(c))))))
    if not terms:
        negative_zero = all(np.signbit(x) != np.signbit(y) for x, y in zip(a, b)) and np.signbit(c)
        return np.float32(-0.0 if negative_zero else 0.0)
    e_max = max(e for _, e in terms)
    if model.emax_floor is not None:
        e_max = max(e_max, model.emax_floor)
    grid = Fraction(2) ** (e_max - model.F)
    total = sum(int(abs(v) / grid) * grid * (1 if v > 0 else -1) for v, _ in terms)  # int() truncates
    bits = exact.round_fraction(total, out_fmt, model.out_rounding)
    value = exact.to_fraction(bits, out_fmt)
    return np.float32(float(value)) if not isinstance(value, str) else np.float32(value.replace("+", ""))


def random_operands(rng, fmt_name, shape):
    """Random finite values of an input format, wide exponent range, with zeros and subnormals."""
    fmt = get_format(fmt_name)
    bits = rng.integers(0, 1 << fmt.total_bits, shape)
    if fmt_name == "tf32":
        bits = bits & ~(0xFF << fmt.frac_bits) | (rng.integers(90, 160, shape) << fmt.frac_bits)
    values = decode(bits, fmt)
    values = np.where(np.isfinite(values), values, 1.0)
    values = np.where(rng.random(shape) < 0.05, 0.0, values)
    return values.astype(np.float32)


@pytest.mark.parametrize(
    "name",
    ["sm_70.mma/fp16->fp32", "sm_70.mma/fp16->fp16", "sm_80.mma/bf16->fp32", "sm_80.mma/tf32->fp32",
     "sm_89.mma/e4m3->fp32", "sm_90.wgmma/e4m3->e8m13", "sm_90.mma/e5m2->e8m13", "sm_90.mma/tf32->fp32",
     "sm_100.tcgen05/e4m3->fp32", "sm_100.mma/fp16->fp16"],
)
def test_block_matches_fraction_reference(name):
    model = PRESETS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    n = 300
    a = random_operands(rng, model.in_format, (n, model.G))
    b = random_operands(rng, model.in_format, (n, model.G))
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 14, n)).astype(np.float32)  # fp16 c stays finite
    c[::17] = 0.0
    ours = block_fma(model, a, b, c)
    for i in range(n):
        expected = reference_block(model, a[i], b[i], c[i])
        assert ours[i].view(np.uint32) == expected.view(np.uint32), (name, i, ours[i], expected)


def test_emax_floor_only_raises_the_alignment():
    model = get_preset("sm_80", "fp16")
    a = np.float32([[2.0**-14, 2.0**-20, 0, 0, 0, 0, 0, 0]])
    b = np.float32([[2.0**-14, 1.0, 0, 0, 0, 0, 0, 0]])
    c = np.float32([0.0])
    assert block_fma(model, a, b, c)[0] == np.float32(2.0**-28 + 2.0**-20)
    floored = replace(model, emax_floor=-10)  # grid 2^(-10-24) = 2^-34: 2^-28 survives, nothing else changes
    assert block_fma(floored, a, b, c)[0] == np.float32(2.0**-28 + 2.0**-20)
    coarse = replace(model, emax_floor=4)  # grid 2^-20: 2^-28 is truncated away
    assert block_fma(coarse, a, b, c)[0] == np.float32(2.0**-20)
    coarser = replace(model, emax_floor=5)  # grid 2^-19: both terms truncate to 0
    assert block_fma(coarser, a, b, c)[0] == 0.0


# -- e8m13 (Hopper fp8) output ------------------------------------------------------------------
def test_e8m13_output_keeps_13_fraction_bits():
    model = get_preset("sm_90", "e4m3", "e8m13", path="wgmma")
    assert (model.G, model.F, model.out_rounding) == (32, 13, "RZ")
    one_block = np.zeros((1, 32), dtype=np.float32)
    a = one_block.copy()
    a[0, 0] = 1.0
    b = a.copy()
    c = np.float32([1.0 + 2.0**-13])  # sum 2 + 2^-13 needs 14 fraction bits after normalising
    assert block_fma(model, a, b, c)[0] == 2.0
    assert block_fma(replace(model, out_format="fp32"), a, b, c)[0] == np.float32(2.0 + 2.0**-13)
    rng = np.random.default_rng(5)
    d = block_fma(model, random_operands(rng, "e4m3", (2000, 32)), random_operands(rng, "e4m3", (2000, 32)),
                  rng.standard_normal(2000).astype(np.float32))
    assert not (d.view(np.uint32) & 0x3FF).any()  # the low 10 of fp32's 23 fraction bits are zero


# -- chains -----------------------------------------------------------------------------------
def test_chain_is_blocks_in_order():
    model = get_preset("sm_80", "bf16")
    rng = np.random.default_rng(2)
    a = random_operands(rng, "bf16", (50, 64))
    b = random_operands(rng, "bf16", (50, 64))
    c = rng.standard_normal(50).astype(np.float32)
    acc = c
    for k in range(0, 64, 8):
        acc = block_fma(model, a[:, k : k + 8], b[:, k : k + 8], acc)
    np.testing.assert_array_equal(chain(model, a, b, c).view(np.uint32), acc.view(np.uint32))
    zero_start = chain(model, a, b)
    np.testing.assert_array_equal(zero_start, chain(model, a, b, np.zeros(50, np.float32)))
    reversed_order = chain(model, a[:, ::-1].copy(), b[:, ::-1].copy(), c)
    assert (reversed_order != acc).any()  # order matters: the chain is not a plain sum


def test_chain_keeps_batch_shape_and_fp16_output_stays_fp16():
    model = get_preset("sm_70", "fp16", "fp16")
    rng = np.random.default_rng(4)
    a = random_operands(rng, "fp16", (3, 5, 16))
    d = chain(model, a, a)
    assert d.shape == (3, 5) and d.dtype == np.float32
    assert np.array_equal(d.astype(np.float16).astype(np.float32), d)


# -- validation ---------------------------------------------------------------------------------
def test_validation_errors():
    model = get_preset("sm_80", "fp16")
    ones = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"a: 1 operand\(s\) not representable in fp16"):
        bad = ones.copy()
        bad[1, 3] = 1.0 + 2.0**-12
        block_fma(model, bad, ones, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not representable in e4m3"):
        block_fma(get_preset("sm_89", "e4m3"), np.full((1, 16), np.inf, np.float32), np.ones((1, 16), np.float32), np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="K=12 is not a positive multiple of the block size G=8"):
        chain(model, np.ones((2, 12), np.float32), np.ones((2, 12), np.float32))
    with pytest.raises(ValueError, match="G=8"):
        block_fma(model, np.ones((2, 4), np.float32), np.ones((2, 4), np.float32), np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="float32"):
        block_fma(model, np.ones((2, 8)), np.ones((2, 8)), np.zeros(2))
    with pytest.raises(ValueError, match="no tensor-core preset for arch='sm_61'"):
        get_preset("sm_61", "fp16")
    with pytest.raises(ValueError, match="Blackwell mma.sync fp8 path is not modelled"):
        get_preset("sm_100", "e4m3")


def test_tf32_low_bits_ignored_on_hopper_only():
    rng = np.random.default_rng(8)
    a = random_operands(rng, "tf32", (100, 8))
    b = random_operands(rng, "tf32", (100, 8))
    noisy = (a.view(np.uint32) | rng.integers(0, 1 << 13, a.shape).astype(np.uint32)).view(np.float32)
    c = np.zeros(100, np.float32)
    hopper = get_preset("sm_90", "tf32")
    np.testing.assert_array_equal(block_fma(hopper, noisy, b, c), block_fma(hopper, a, b, c))
    with pytest.raises(ValueError, match="not representable in tf32"):
        block_fma(get_preset("sm_80", "tf32"), noisy[:, :4], b[:, :4], c)


# -- special values ------------------------------------------------------------------------------
def one_block(model, pairs, c):
    a = np.zeros((1, model.G), np.float32)
    b = np.zeros((1, model.G), np.float32)
    for i, (x, y) in enumerate(pairs):
        a[0, i], b[0, i] = x, y
    return block_fma(model, a, b, np.float32([c]))[0]


@pytest.mark.parametrize("name", ["sm_80.mma/fp16->fp32", "sm_70.mma/fp16->fp16", "sm_90.mma/e5m2->e8m13"])
def test_nan_and_inf_propagation(name):
    model = PRESETS[name]
    inf, nan = np.inf, np.nan
    assert np.isnan(one_block(model, [(nan, 1.0)], 1.0))
    assert np.isnan(one_block(model, [(1.0, 1.0)], nan))
    assert np.isnan(one_block(model, [(inf, 0.0)], 1.0))  # 0 * inf
    assert np.isnan(one_block(model, [(inf, 1.0), (-inf, 1.0)], 0.0))  # inf - inf
    assert np.isnan(one_block(model, [(inf, 1.0)], -inf))
    assert one_block(model, [(inf, -1.0), (2.0, 3.0)], 5.0) == -inf
    assert one_block(model, [(inf, 1.0), (inf, 2.0)], inf) == inf
    assert one_block(model, [(1.0, 1.0)], -inf) == -inf


def test_signed_zero_results():
    model = get_preset("sm_80", "fp16")
    negative_zero = one_block(model, [(0.0, -1.0)] * 8, -0.0)
    assert negative_zero == 0 and np.signbit(negative_zero)
    assert not np.signbit(one_block(model, [(0.0, -1.0)] * 8, 0.0))
    cancelled = one_block(model, [(2.0, -3.0)], 6.0)
    assert cancelled == 0 and not np.signbit(cancelled)


def test_fp32_output_overflow_is_round_toward_zero():
    model = get_preset("sm_80", "bf16")
    big = np.float32(2.0**127)
    assert one_block(model, [(big, 4.0)], 0.0) == np.finfo(np.float32).max


# -- presets ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch, in_format, G, F",
    [("sm_70", "fp16", 4, 23), ("sm_75", "fp16", 8, 24), ("sm_80", "bf16", 8, 24), ("sm_86", "tf32", 4, 24),
     ("sm_89", "e5m2", 16, 13), ("sm_90", "bf16", 16, 25), ("sm_90", "tf32", 8, 25), ("sm_100", "fp16", 16, 25),
     ("sm_100", "tf32", 8, 25)],
)
def test_preset_table(arch, in_format, G, F):
    model = get_preset(arch, in_format)
    assert (model.G, model.F, model.out_rounding) == (G, F, "RZ") and model.source


def test_presets_serialise():
    for name, model in PRESETS.items():
        assert model.name == name
        assert BlockModel.from_json(model.to_json()) == model
    assert get_preset("sm_90", "tf32").input_low_bits_ignored == 13
    assert get_preset("sm_100", "e4m3", path="tcgen05").F == 25
    assert get_preset("sm_70", "fp16", "fp16").out_rounding == "RNE"
