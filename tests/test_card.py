"""Numerics card on the emulator as a simulated GPU: parameters recovered, negative controls."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.reveal import card as C

ALL = sorted(TC.PRESETS)
# A card takes 1-3 s on the CPU emulator (native evaluator), so the default run fits every preset
# (the acceptance: the card must recover each preset's parameters exactly).
SWEEP = ALL
EXACT_KEYS = ("G", "F", "out_format", "input_low_bits_ignored")


def _card(model, **kw):
    return C.numerics_card(C.emulated_unit(model), n_verify=kw.pop("n_verify", 20_000), fit_blocks=5_000, **kw)


@pytest.mark.parametrize("name", SWEEP)
def test_card_recovers_every_preset(name):
    model = TC.PRESETS[name]
    card = _card(model)
    got, want = card["params"], C.model_params(model)
    for key in EXACT_KEYS:
        assert got[key] == want[key], (key, got[key], want[key])
    # the searched parameters: the preset's value fits as well as the reported one, and when the
    # data tells the values apart the card reports exactly the preset's
    for key in C.SEARCHED:
        same = card["indistinguishable"][key]
        assert want[key] in same, (key, want[key], same)
        if len(same) == 1:
            assert got[key] == want[key], (key, got[key], want[key])
    assert got["epilogue"] == "fused" and card["indistinguishable"]["epilogue"] == ["fused"]
    assert card["exact"], card["verify"]
    assert card["verify_c0"]["total"] > 0 and card["verify_c"]["total"] > 0


def test_card_fp8_and_fp16_output_features():
    """The feature tests alone (before any fit) name Hopper fp8's e8m13 output and fp16 RNE output."""
    fp8 = C._features(C.emulated_unit(TC.PRESETS["sm_90.wgmma/e4m3->e8m13"]))
    assert (fp8["G"]["value"], fp8["F"]["value"], fp8["out_fraction_bits"]["value"]) == (32, 13, 13)
    assert fp8["out_rounding"]["value"] == "RZ" and fp8["monotonic"]["value"] is False
    h16 = C._features(C.emulated_unit(TC.PRESETS["sm_90.mma/fp16->fp16"]))
    assert (h16["G"]["value"], h16["F"]["value"], h16["out_fraction_bits"]["value"]) == (16, 25, 10)
    assert h16["out_rounding"]["value"] == "RNE"
    # sm_89 fp8 keeps fp32 output: every bit above the F=13 grid survives (at least F+1 bits)
    ada = C._features(C.emulated_unit(TC.PRESETS["sm_89.mma/e4m3->fp32"]))
    assert ada["out_fraction_bits"]["value"] == 14 and ada["out_rounding"]["value"] is None


def _library_unit(model, blocks=4):
    """A cuBLAS-like black box: the tensor-core chain from C = 0, then ``+ C`` in fp32."""
    def mma(a, b, c):
        return (TC.chain(model, a, b, np.zeros_like(c)) + c).astype(np.float32)
    return C.Unit(f"library:{model.name}", model.in_format, model.G * blocks, mma, model.arch, model.path)


def test_card_finds_fp32_epilogue_of_library_path():
    model = TC.PRESETS["sm_90.mma/bf16->fp32"]
    card = C.numerics_card(_library_unit(model), n_verify=20_000, fit_blocks=5_000)
    assert card["params"]["epilogue"] == "fp32_add", card["fit"]
    for key in EXACT_KEYS:
        assert card["params"][key] == C.model_params(model)[key]
    assert card["exact"], card["verify"]
    # negative control: the fused model alone does not explain this unit
    va, vb, vc = C._blocks(_library_unit(model), 5_000, 7)
    want = _library_unit(model).mma(va, vb, vc).view(np.uint32)
    assert C._matches(model, va, vb, vc, want, "fused") < len(want)


def test_card_rejects_a_nondeterministic_unit():
    """A unit that is no fixed block model (a random low bit flipped per call) is never exact."""
    model = TC.PRESETS["sm_80.mma/bf16->fp32"]
    rng = np.random.default_rng(0)

    def noisy(a, b, c):
        d = TC.chain(model, a, b, c)
        flip = (rng.random(d.shape) < 0.01).astype(np.uint32)
        return (d.view(np.uint32) ^ flip).view(np.float32)

    card = C.numerics_card(C.Unit("noisy", "bf16", 32, noisy, "sm_80"), n_verify=20_000, fit_blocks=5_000)
    assert not card["exact"] and card["verify"]["matches"] < card["verify"]["total"]


def test_card_verifies_on_1e5_blocks():
    card = C.numerics_card(C.emulated_unit(TC.PRESETS["sm_80.mma/bf16->fp32"]), n_verify=100_000)
    assert card["verify"]["total"] >= 100_000 and card["exact"]


def test_negative_controls_block_size_rounding_monotonicity():
    base = TC.PRESETS["sm_80.mma/bf16->fp32"]
    g16 = replace(base, name="g16", G=16)
    rne = replace(base, name="rne", out_rounding="RNE")
    c8, c16, crne = _card(base), _card(g16), _card(rne)
    assert c8["params"]["G"] == 8 and c16["params"]["G"] == 16
    assert crne["params"]["out_rounding"] == "RNE" and c8["params"]["out_rounding"] == "RZ"
    assert c8["features"]["monotonic"]["value"] is False
    # a monotonic unit: exact products, one fp32 RNE rounding of the whole sum
    def exact_unit(a, b, c):
        s = np.sum(a.astype(np.float64) * b.astype(np.float64), axis=-1) + c.astype(np.float64)
        return s.astype(np.float32)
    mono = C.Unit("exact-sum", "bf16", 32, exact_unit)
    ev = C._features(mono)
    assert ev["monotonic"]["value"] is True
