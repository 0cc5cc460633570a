"""Numerics card on the emulator as a simulated GPU: parameters recovered, negative controls."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.probes import card as C

FP32_OUT = [n for n, m in TC.PRESETS.items() if m.out_format == "fp32" and m.in_format in ("fp16", "bf16", "tf32")]
# Each card fits on the CPU emulator (15-60 s): the default run covers one preset per arch family
# and input format; `pytest -m slow` runs every preset.
QUICK = {"sm_70.mma/fp16->fp32", "sm_80.mma/bf16->fp32", "sm_80.mma/tf32->fp32",
         "sm_90.mma/bf16->fp32", "sm_90.wgmma/tf32->fp32", "sm_100.mma/fp16->fp32"}
assert QUICK <= set(FP32_OUT), sorted(QUICK - set(FP32_OUT))
SWEEP = [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in FP32_OUT]
# one representative per open family (each takes 15-60 s)
OPEN = ["sm_80.mma/fp16->fp16", "sm_90.mma/fp16->fp16", "sm_89.mma/e4m3->fp32", "sm_90.mma/e5m2->e8m13"]


def _card(model, **kw):
    return C.numerics_card(C.emulated_unit(model), n_verify=kw.pop("n_verify", 20_000), fit_blocks=5_000, **kw)


@pytest.mark.parametrize("name", SWEEP)
def test_card_recovers_fp32_output_presets(name):
    model = TC.PRESETS[name]
    card = _card(model)
    got, want = card["params"], C.model_params(model)
    for key in ("G", "F", "out_format", "out_rounding", "input_low_bits_ignored"):
        assert got[key] == want[key], (key, got[key], want[key])
    assert want["emax_floor"] in card["emax_floor_indistinguishable"]
    assert card["exact"], card["verify"]


@pytest.mark.slow
@pytest.mark.xfail(reason="open: fp16-output and fp8 presets are not yet recovered by the feature tests", strict=False)
@pytest.mark.parametrize("name", OPEN)
def test_card_recovers_other_presets(name):
    card = _card(TC.PRESETS[name], n_verify=5_000)
    assert card["exact"]


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
