"""``hspi card`` on the AMD CDNA MFMA presets (numerics.amd) as emulated units (issue #19): every
preset is recovered, closed loop: the pairwise (CDNA1/CDNA2) presets as the card's pairwise
family, the CDNA3 fused_rd presets (fp16, bf16, xf32, the four fnuz fp8/bf8 pairings) as its
late-c family, the fp32/fp64 fma chains as its plan family (``Sequential(fmt, fma=True)``).
Negative controls: a card on one preset never reports another; each family rejects units of the
other kinds (a pairwise or NVIDIA block unit is no late-c unit, a late-c unit with another c
rounding / c drop / sum rounding is not the preset's, a non-fused or reversed chain is no fma
chain in k order)."""

from __future__ import annotations

from dataclasses import replace

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


LATE_C = sorted(n for n, m in A.AMD_PRESETS.items() if m.kind.startswith("fused"))
FMA = sorted(n for n, m in A.AMD_PRESETS.items() if m.kind == "fma")


@pytest.mark.parametrize("name", LATE_C)
def test_card_recovers_every_late_c_preset(name):
    """CDNA3 fp16/bf16/xf32 (after the block and pairwise families miss) and the four fnuz fp8/bf8
    pairings: the late-c family verifies N/N with the preset's parameters, each the only value of
    its parameter that fits the data."""
    m = A.AMD_PRESETS[name]
    want = C.late_c_of(m)
    card = _card(name)
    assert card["family"] == "late_c" and card["described"] and card["exact"], card["reason"]
    p = card["params"]
    assert {k: p[k] for k in C.LATE_C_PARAMS} == {k: getattr(want, k) for k in C.LATE_C_PARAMS}
    assert (p["in_format"], p["in_format_b"], p["out_format"], p["out_rounding"]) == (want.a_format, want.b_format,
                                                                                        "fp32", "RNE")
    assert (p["G"], p["F"], p["split"], p["c_drop"]) == (m.G, 24, "evenodd" if m.in_format.endswith("fnuz") else "none",
                                                         25 if m.kind == "fused_rd_evenodd" else None)
    assert card["indistinguishable"] == {k: [getattr(want, k)] for k in C.LATE_C_PARAMS}
    v = card["verify"]
    assert v["matches"] == v["total"] >= N_VERIFY
    assert card["verify_c0"]["total"] > 0 and card["verify_c"]["total"] > 0
    # the late-c probes measure what the fit finds
    feats = card["late_c_features"]
    assert {k: feats[k]["value"] for k in ("G", "split", "c_rounding", "c_drop", "sum_bits", "sum_rounding")} == \
        {"G": m.G, "split": want.split, "c_rounding": "down", "c_drop": want.c_drop, "sum_bits": 31, "sum_rounding": "down"}
    if m.in_format.endswith("fnuz"):  # no block model: the feature tests ran on the fnuz operands
        assert "fnuz fp8 operands" in card["reason"] and "block_model" not in card
        assert card["features"]["F"]["value"] == 24 and "G" in card["features"]
    else:  # the block model (and for fp16/bf16 the pairwise unit) ran first and missed
        bm = card["block_model"]["verify"]
        assert bm["matches"] < bm["total"] and "no block model describes the unit" in card["reason"]
        if m.in_format in C.PAIRWISE_FORMATS:
            assert card["pairwise"]["verify"]["matches"] < card["pairwise"]["verify"]["total"]
    C.card_table(card)  # renders


@pytest.mark.parametrize("name", FMA)
def test_card_recovers_every_fma_preset(name):
    """fp32 / fp64 MFMA: the plan family recognises the fma chain in k order seeded with c and
    reports the plan; every rival candidate mismatches on the fit blocks."""
    m = A.AMD_PRESETS[name]
    card = _card(name)
    assert card["family"] == "plan" and card["described"] and card["exact"], card["reason"]
    p = card["params"]
    assert p["plan"] == repr(A.plan_of(m)) == f'Sequential("{m.out_format}", fma=True)'
    assert (p["order"], p["fma"], p["c"], p["in_format"]) == ("k", True, "seed", m.in_format)
    v = card["verify"]
    assert v["matches"] == v["total"] >= N_VERIFY
    assert card["verify_c0"]["total"] > 0 and card["verify_c"]["total"] > 0
    fit = card["fit"][-1]
    assert len(fit["candidates"]) == len(C.PLAN_CANDIDATES) and card["indistinguishable"]["candidate"] == [fit["model"]]
    assert sorted(fit["candidates"].values())[-2] < fit["of"]  # the best rival misses
    C.card_table(card)


def test_every_preset_is_covered():
    assert len(ALL) == 17 and (len(PAIRWISE), len(LATE_C), len(FMA)) == (5, 7, 5)
    family = {"pairwise": "pairwise", "fused_rd": "late_c", "fused_rd_evenodd": "late_c", "fma": "plan"}
    for name in ALL:
        card = _card(name)
        assert card["described"] and card["family"] == family[A.AMD_PRESETS[name].kind], name
        assert isinstance(card["reason"], str) and card["reason"]


def test_late_c_evaluator_equals_the_presets():
    """``card.late_c_chain`` at a preset's parameters is ``amd.mfma_chain`` of that preset."""
    for name in LATE_C:
        m = A.AMD_PRESETS[name]
        u = C.amd_unit(m)
        a, b, c = C._blocks(u, 1000, 9)
        assert np.array_equal(C.late_c_chain(C.late_c_of(m), a, b, c).view(np.uint32),
                              A.mfma_chain(m, a, b, c).view(np.uint32)), name
    with pytest.raises(ValueError):
        C.late_c_of(A.AMD_PRESETS["cdna1.mfma/fp16->fp32"])


def _late_c_direct(unit, fit=FIT, n_verify=N_VERIFY, seed=0):
    """The late-c family alone on ``unit`` (no block model first): its closed-loop result."""
    ev = C._features(unit)
    a, b, c = C._blocks(unit, fit, seed)
    want_c = unit.mma(a, b, c).view(np.uint32)
    want_0 = unit.mma(a, b, np.zeros_like(c)).view(np.uint32)
    return C._late_c_card(unit, ev, a, b, c, want_c, want_0, n_verify, seed)


def test_late_c_family_rejects_other_units():
    """Negative control: on pairwise units (CDNA1 fp16, CDNA2 bf16_1k) and on an NVIDIA block unit
    (sm_80 bf16: c enters the block as a term) the best late-c unit does not verify."""
    units = [C.amd_unit(A.AMD_PRESETS["cdna1.mfma/fp16->fp32"]), C.amd_unit(A.AMD_PRESETS["cdna2.mfma/bf16_1k->fp32"]),
             C.emulated_unit(TC.PRESETS["sm_80.mma/bf16->fp32"])]
    for u in units:
        r = _late_c_direct(u)
        assert r["ok"].sum() < r["ok"].size, u.name


def _late_c_unit(name, **change):
    m = replace(C.late_c_of(A.AMD_PRESETS[name]), **change)
    return m, C.Unit(f"emulated:{name} {change}", C.amd_unit(A.AMD_PRESETS[name]).in_format, 4 * m.G,
                     lambda a, b, c: C.late_c_chain(m, a, b, c), "cdna3", "mfma")


@pytest.mark.parametrize("name,change", [("cdna3.mfma/fp16->fp32", {"c_rounding": "trunc"}),
                                         ("cdna3.mfma/fp16->fp32", {"c_rounding": "RNE"}),
                                         ("cdna3.mfma/bf16->fp32", {"sum_rounding": "trunc"}),
                                         ("cdna3.mfma/fp8_bf8->fp32", {"c_drop": None})])
def test_late_c_changed_unit_is_recovered_not_the_preset(name, change):
    """Negative control: a late-c unit whose c rounding (or sum rounding, or fp8 c drop) differs
    from the preset's: the preset's parameters mismatch on its fresh blocks, and the family
    recovers the changed value (closed loop, N/N), the only one that fits."""
    m, u = _late_c_unit(name, **change)
    preset = C.late_c_of(A.AMD_PRESETS[name])
    va, vb, vc = C._blocks(u, N_VERIFY, 5)
    want = u.mma(va, vb, vc).view(np.uint32)
    assert np.sum(C.late_c_chain(preset, va, vb, vc).view(np.uint32) == want) < len(want)
    if name.endswith("fp8_bf8->fp32"):  # fnuz: the whole card (no block model to run first)
        card = C.numerics_card(u, n_verify=N_VERIFY, fit_blocks=FIT)
        assert card["family"] == "late_c" and card["exact"], card["reason"]
        got, same = card["params"], card["indistinguishable"]
        assert card["verify"]["matches"] == card["verify"]["total"] >= N_VERIFY
    else:
        r = _late_c_direct(u)
        assert r["ok"].all() and r["ok"].size >= N_VERIFY
        got, same = {k: getattr(r["model"], k) for k in C.LATE_C_PARAMS}, r["indistinguishable"]
    assert {k: got[k] for k in C.LATE_C_PARAMS} == {k: getattr(m, k) for k in C.LATE_C_PARAMS}
    for k, v in change.items():
        assert same[k] == [v]


@pytest.mark.parametrize("fmt", ["fp32", "fp64"])
def test_plan_family_rejects_non_fused_and_reversed_chains(fmt):
    """Negative control: units that are not an fma chain in k order (rn(a*b) then add in k order;
    an fma chain in reversed order) are described as what they are, never as
    Sequential(fmt, fma=True); the fma-chain candidate mismatches on their blocks."""
    from hspi_kernels.numerics import evaluate as E
    from hspi_kernels.numerics import plans as P

    fma_k = f"{fmt} fma(a_k, b_k, acc) in k order, seeded with c"
    units = {("k", False): lambda a, b, c: E.evaluate(P.Sequential(fmt, fma=False), (a, b), c=c),
             ("reversed", True): lambda a, b, c: E.evaluate(P.Sequential(fmt, fma=True), (a[:, ::-1].copy(),
                                                                                         b[:, ::-1].copy()), c=c)}
    for (order, fma), fn in units.items():
        card = C.numerics_card(C.Unit(f"chain {order} fma={fma}", fmt, 4, fn, "cdna3", "mfma"),
                               n_verify=N_VERIFY, fit_blocks=FIT)
        p = card["params"]
        assert card["family"] == "plan" and card["exact"] and (p["order"], p["fma"], p["c"]) == (order, fma, "seed")
        assert p["plan"] == (repr(P.Sequential(fmt, fma=False)) if order == "k" else None)
        fit = card["fit"][-1]
        assert fit["candidates"][fma_k] < fit["of"], (order, fma)


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
    """An NVIDIA block unit stays a block card (never pairwise or late-c); a CDNA3 unit is no
    pairwise card (the pairwise unit ran and missed) but a late-c one; a pairwise unit is no
    late-c card (the pairwise family verifies first)."""
    nv = C.numerics_card(C.emulated_unit(TC.PRESETS["sm_80.mma/bf16->fp32"]), n_verify=N_VERIFY, fit_blocks=FIT)
    assert nv["family"] == "block" and nv["exact"] and nv["described"] and nv["reason"] is None
    assert "pairwise" not in nv and "block_model" not in nv and "late_c" not in nv
    cd3 = _card("cdna3.mfma/fp16->fp32")
    assert cd3["family"] == "late_c" and cd3["pairwise"]["verify"]["matches"] < cd3["pairwise"]["verify"]["total"]
    for name in PAIRWISE:
        assert _card(name)["family"] == "pairwise" and "late_c_features" not in _card(name)


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
    for name, family in (("cdna3.mfma/fp8_fp8->fp32", "late_c"), ("cdna3.mfma/fp64->fp64", "plan")):
        r = CliRunner().invoke(app, ["card", "--path", f"emulated:{name}", "--verify", "300", "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert res["exact"] and res["family"] == family and res["verify"]["matches"] == res["verify"]["total"] >= 300
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


# -- Khattak & Mikaitis' MI100 candidate (exact group, one RNE): the card's exact-group family ----------
@pytest.mark.parametrize("name", sorted(A.AMD_CANDIDATES))
def test_card_recovers_the_exact_group_candidate_and_tells_it_from_pairwise(name):
    m = A.AMD_CANDIDATES[name]
    card = C.numerics_card(C.amd_unit(m), n_verify=N_VERIFY, fit_blocks=FIT)
    assert card["described"] and card["exact"], card["reason"]
    v = card["verify"]
    assert v["matches"] == v["total"] >= N_VERIFY
    if card["family"] == "exact_group":
        assert card["params"]["G"] == m.G and card["indistinguishable"] == {"G": [m.G]}
        assert card["pairwise"]["verify"]["matches"] < card["pairwise"]["verify"]["total"]  # not pairwise
    else:  # one rounding of c + G exact products is also a block model with a wide enough alignment
        assert card["family"] == "block", card["family"]
    # negative control: the MMA-Sim pairwise preset of the same unit is not this model
    pw = _card(name.replace(".km/", ".mfma/"))
    assert pw["family"] == "pairwise" and "exact_group" not in (pw.get("params") or {}).get("family", "")


def test_exact_group_and_pairwise_differ_where_the_sum_is_rounded_once():
    """Products 1 and 2^-28 with c = -1 (an fp16 group of 4, two zeros): the pairwise tree rounds
    1 + 2^-28 to 1 in fp32 before c joins (result 0); the exact group rounds c + 1 + 2^-28 once (2^-28)."""
    km = A.AMD_CANDIDATES["cdna1.km/fp16->fp32"]
    pw = A.AMD_PRESETS["cdna1.mfma/fp16->fp32"]
    a = np.array([[1.0, 2.0 ** -14, 0.0, 0.0]], np.float32)
    c = np.array([-1.0], np.float32)
    assert A.mfma_block(km, a, a, c)[0] == np.float32(2.0 ** -28)
    assert A.mfma_block(pw, a, a, c)[0] == 0.0
    # a zero sum of negative zeros stays -0 (IEEE addition), any +0 term makes it +0
    z = np.array([[-0.0, 0.0, 0.0, 0.0]], np.float32)
    one = np.array([[1.0, 1.0, 1.0, 1.0]], np.float32)
    assert np.signbit(A.mfma_block(km, np.full((1, 4), -0.0, np.float32), one, np.array([-0.0], np.float32))[0])
    assert not np.signbit(A.mfma_block(km, z, one, np.array([-0.0], np.float32))[0])
