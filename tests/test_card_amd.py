"""``hspi card`` on the AMD CDNA MFMA presets (numerics.amd) as emulated units (issue #19): the
pairwise (CDNA1/CDNA2) presets are recovered, closed loop, as the card's pairwise family; every
other preset is reported, with its reason, as not described (no crash, no claimed model); negative
controls: a card on one preset never reports another."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import amd as A
from hspi_kernels.numerics import tensor_core as TC
from hspi_kernels.reveal import card as C

ALL = sorted(A.AMD_PRESETS)
PAIRWISE = sorted(n for n, m in A.AMD_PRESETS.items() if m.kind == "pairwise")
N_VERIFY, FIT = 5_000, 2_000
_CARDS: dict = {}


def _card(name):
    if name not in _CARDS:
        _CARDS[name] = C.numerics_card(C.amd_unit(A.AMD_PRESETS[name]), n_verify=N_VERIFY, fit_blocks=FIT)
    return _CARDS[name]


def test_blocks_past_k_are_unbuilt_not_an_index_error():
    """The root cause: a feature test placing more terms than the unit's K (or than fit after the
    last-block offset) wrote past the operand row (IndexError); such a block is now unbuilt."""
    m = A.AMD_PRESETS["cdna1.mfma/bf16->fp32"]
    o = C._Ops(C.amd_unit(m, blocks=1))  # K = G = 2
    a, b, c, ok = o.blocks([[(0, 1.0, 0), (1, -1.0, 0)], [(0, 1.0, 0), (1, -1.0, 0), (2, 1.0, -3)]])
    assert ok.tolist() == [True, False] and not a[1].any() and a.shape == (2, 2)
    o.offset = 1
    assert o.blocks([[(0, 1.0, 0), (1, 1.0, 0)]])[3].tolist() == [False]
    assert o.run([[(0, 1.0, 0), (1, 1.0, 0), (2, 1.0, 0)]]) is None  # nothing buildable: no call
    C._features(C.amd_unit(m, blocks=1))  # every feature test runs on a K = 2 unit


@pytest.mark.parametrize("name", PAIRWISE)
def test_card_recovers_every_pairwise_preset(name):
    m = A.AMD_PRESETS[name]
    card = _card(name)
    assert card["family"] == "pairwise" and card["described"] and card["exact"], card["reason"]
    p = card["params"]
    assert (p["G"], p["flush_denormals"], p["in_format"], p["out_format"]) == (m.G, m.flush_denormals,
                                                                                m.in_format, "fp32")
    # the data tells every candidate apart: the preset's values are the only ones that fit
    assert card["indistinguishable"] == {"G": [m.G], "flush_denormals": [m.flush_denormals]}
    v = card["verify"]
    assert v["matches"] == v["total"] >= N_VERIFY
    assert card["verify_c0"]["total"] > 0 and card["verify_c"]["total"] > 0
    # the block model does not describe it: the card says so, with the counts
    bm = card["block_model"]["verify"]
    assert bm["matches"] < bm["total"] and "no block model describes the unit" in card["reason"]


@pytest.mark.parametrize("name", sorted(set(ALL) - set(PAIRWISE)))
def test_card_reports_every_other_preset_with_a_reason(name):
    m = A.AMD_PRESETS[name]
    card = _card(name)
    assert not card["described"] and not card["exact"] and card["family"] != "pairwise"
    reason = card["reason"]
    if m.kind == "fma":  # fp32 / fp64 MFMA: no input format of the card, the plan named
        assert card["family"] is None and card["features"] == {} and card["verify"]["total"] == 0
        assert f"{m.in_format} operands are no input format" in reason and "fma=True" in reason
    elif m.kind == "fused_rd_evenodd":  # fnuz fp8
        assert card["family"] is None and "fnuz fp8 formats" in reason
    else:  # CDNA3 fp16 / bf16 / xf32: feature tests and both families ran, neither verifies
        assert m.kind == "fused_rd" and card["family"] == "block"
        assert reason.startswith("not described by the card's parameter models")
        v = card["verify"]
        assert 0 < v["matches"] < v["total"]
        if m.in_format in C.PAIRWISE_FORMATS:
            pw = card["pairwise"]["verify"]
            assert pw["matches"] < pw["total"]
    C.card_table(card)  # renders


def test_every_preset_is_covered():
    assert len(ALL) == 17 and len(PAIRWISE) == 5
    for name in ALL:
        card = _card(name)
        assert card["described"] == (name in PAIRWISE) and isinstance(card["reason"], str) and card["reason"]


def test_negative_control_no_card_reports_another_preset():
    """Each pairwise card's model reproduces its own unit and no other pairwise preset does:
    on the unit's blocks every other preset (G or flush differs) mismatches."""
    recovered = {}
    for name in PAIRWISE:
        p = _card(name)["params"]
        recovered[name] = (A.AMD_PRESETS[name].in_format, p["G"], p["flush_denormals"])
    assert len(set(recovered.values())) == len(PAIRWISE)  # five presets, five different cards
    compared = 0
    for name in PAIRWISE:
        m = A.AMD_PRESETS[name]
        unit = C.amd_unit(m)
        a, b, c = C._blocks(unit, 5_000, 77)
        want = unit.mma(a, b, c).view(np.uint32)
        for other in PAIRWISE:
            o = A.AMD_PRESETS[other]
            if o.in_format != m.in_format or unit.K % o.G:
                continue
            same = int(np.sum(A.mfma_chain(o, a, b, c).view(np.uint32) == want))
            if other == name:
                assert same == len(want)
            elif (o.G, o.flush_denormals) != (m.G, m.flush_denormals):
                assert same < len(want), (name, other)
                compared += 1
    assert compared == 8  # fp16: cdna1 <-> cdna2 (2); bf16: the three G / flush variants, each against both others (6)


def test_negative_control_families():
    """An NVIDIA block unit stays a block card (never pairwise); a CDNA3 unit is no pairwise card."""
    nv = C.numerics_card(C.emulated_unit(TC.PRESETS["sm_80.mma/bf16->fp32"]), n_verify=N_VERIFY, fit_blocks=FIT)
    assert nv["family"] == "block" and nv["exact"] and nv["described"] and nv["reason"] is None
    assert "pairwise" not in nv and "block_model" not in nv
    assert _card("cdna3.mfma/fp16->fp32")["family"] == "block"


def test_card_cli_takes_amd_presets():
    """`hspi card --path emulated:<AMD preset>`: a CDNA1 fp16 unit comes back as the pairwise
    family, exact on the fresh verification blocks; an unknown preset is a usage error."""
    import json

    from typer.testing import CliRunner

    from hspi_kernels.cli import app

    r = CliRunner().invoke(app, ["card", "--path", "emulated:cdna1.mfma/fp16->fp32", "--verify", "300", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["exact"] and res.get("family") == "pairwise"
    bad = CliRunner().invoke(app, ["card", "--path", "emulated:cdna9.mfma/fp16->fp32"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output


def test_pairwise_card_table_lists_no_block_model_features():
    """A pairwise card's table shows the pairwise parameters only: none of the block model's
    feature rows (F, term rounding, carries, ...) that the block-family table lists."""
    from rich.console import Console

    def text(card):
        con = Console(record=True, width=200)
        con.print(C.card_table(card))
        return con.export_text()

    pw = text(_card("cdna1.mfma/fp16->fp32"))
    assert "flush_denormals" in pw and "block-model feature tests" in pw
    for row in ("term_rounding", "carries", "monotonic", "product_exact", "out_fraction_bits"):
        assert row not in pw, row
    nv = text(C.numerics_card(C.emulated_unit(TC.PRESETS["sm_80.mma/bf16->fp32"]), n_verify=300, fit_blocks=500))
    assert "term_rounding" in nv and "carries" in nv  # negative control: a block card keeps them
