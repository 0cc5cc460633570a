"""kernels.validation.fp8_f16 on the CPU: the candidate set tells its members apart on the
adversarial generators, and the built-in negative control rejects the preset on wrong data."""

from __future__ import annotations

import numpy as np

from hspi_kernels.kernels.validation import fp8_f16 as D


def test_negative_control_rejects_the_preset():
    check = D.self_check(np.random.default_rng(1))
    assert check["pass"], check
    assert check["preset_matches"] < check["outputs"]


def test_preset_data_is_matched_by_the_preset_and_rejects_the_other_hypotheses():
    rng = np.random.default_rng(2)
    cands = D.candidates("e5m2")
    a_all, b_all, c_all = [], [], []
    for gen in D.GENERATORS:
        for with_c in (False, True):
            A, B, C = D.inputs(rng, "e5m2", gen, 128, with_c)
            a, b, c = D._rows(A[:16], B, None if C is None else C[:16])
            a_all.append(a); b_all.append(b); c_all.append(c)
    a, b, c = np.concatenate(a_all), np.concatenate(b_all), np.concatenate(c_all)
    truth = cands["preset"](a, b, c)
    counts = D.score("e5m2", a, b, c, truth, cands)
    n = truth.size
    same = {k for k, v in counts.items() if v == n}
    # indistinguishable by construction: the preset itself and its own G=32,F=13,RNE spelling
    assert {"preset", "G=32,F=13,RNE"} <= same
    for name in ("G=16,F=13,RNE", "G=32,F=13,RZ", "G=32,F=25,RNE", "e8m13 then fp16",
                 "mma.sync emulation (fp16 HMMA x2 + HADD2)"):
        assert counts[name] < n, (name, counts[name])
