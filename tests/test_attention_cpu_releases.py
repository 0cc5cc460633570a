"""numerics.attention_cpu's per-release orders (ORDERS): torch 2.11's CPU flash kernel against its
recorded bits, and the trace's choice of the order by the trace's torch version.

Fixture tests/data/cpu_flash/amd_torch211.npz: a ``scripts/cpu_flash_capture.py`` capture on the
AMD EPYC (Zen 4) host of the 2.13 fixture, torch 2.11.0+cu130 (the GPU machines' wheel), cut down
by :func:`probes.cpu_attention.slim_capture`: every one of the 45 probe cases' lse, the output of
six. The inputs are rebuilt from their seeds (digests checked). Counts are ``==`` on bit patterns.

Re-make it from a new capture: ``python tests/test_attention_cpu_releases.py CAPTURE.npz``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.numerics import attention_cpu as AC
from hspi_kernels.probes import cpu_attention as P

FIXTURE = Path(__file__).parent / "data" / "cpu_flash" / "amd_torch211.npz"
KEEP_OUT = ("zoo_gpt2_bf16_causal", "zoo_gpt2_fp16_causal", "zoo_gpt2_fp32_causal", "long_sk600_d128_bf16",
            "long_sk600_d128_fp16", "long_600x600_causal_fp16")
# lse values 2.13's order misses on torch 2.11's bits (the one long reduced case it gets right: sk300 bf16)
MISSED_BY_213 = {"long_sk600_d128_bf16": 3, "long_600x600_causal_bf16": 28, "long_sk300_d128_fp16": 8,
                 "long_sk600_d128_fp16": 6, "long_600x600_causal_fp16": 27, "long_sk300_d128_bf16": 0}


same_libm = pytest.mark.skipif(bool(AC.libm_mismatch()), reason=AC.libm_mismatch() or "measured libm")


@pytest.fixture(scope="module")
def cap():
    meta, arrays = P.load_capture(FIXTURE)
    cases = {row["name"]: (P.case_of(row), row["digest"]) for row in meta["cases"]}
    return meta, arrays, cases


def _counts(cap, name, order):
    """((out equal, lse equal), (out total, lse total)); an unrecorded output counts 0 of 0."""
    n = P.replay_counts(cap[2][name][0], cap[1], order)
    return (n["out"] or 0, n["lse"]), (n["out_total"] or 0, n["lse_total"])


def test_fixture_is_the_torch211_amd_capture(cap):
    meta, arrays, cases = cap
    assert meta["platform"]["torch"]["version"] == AC.MEASURED_2_11["torch"]
    assert meta["platform"]["cpu_vendor"] == AC.MEASURED_2_11["cpu_vendor"] and meta["cpu_capability"] == "AVX512"
    assert AC.platform_mismatch(meta["platform"]) == ""
    assert len(cases) == 45 and set(meta["out_kept"]) == set(KEEP_OUT)
    for c, dig in cases.values():  # the inputs the kernel saw, rebuilt from the seeds
        assert P.digest(*P.build(c)) == dig, c.name
    assert FIXTURE.stat().st_size < 400_000


@same_libm
def test_torch211_order_replays_every_recorded_value(cap):
    """All 45 cases: every recorded output and lse value N/N under ORDERS['2.11']."""
    _, order = AC.order_for("2.11.0+cu130")
    got = want = np.zeros(2, int)
    for name in cap[2]:
        g, w = _counts(cap, name, order)
        assert g == w, name
        got, want = got + g, want + w
    # outputs: 3 gpt2 causal (12 heads x 16 x 64), 2 sk600 (2 x 64 x 128), 600x600 (600 x 64); lse: 18
    # dominant probes (512 x 16), 18 zoo cases (3 formats x 2 x (14 + 12 + 32) x 16), 9 long ones
    assert tuple(want) == (108_032, 18 * 8192 + 3 * 2 * 58 * 16 + 3 * (128 + 128 + 600))
    assert tuple(got) == tuple(want)


@same_libm
@pytest.mark.parametrize("name", list(MISSED_BY_213))
def test_torch213_order_is_rejected_on_long_reduced_cases(cap, name):
    """Negative control: 2.13's two row-sum accumulators miss lse values of 5 of the 6 long bf16 /
    fp16 cases that 2.11's one accumulator gives N/N (sk300 bf16: two 16-key chunks' alternation
    happens to round alike on all 128 rows)."""
    g, w = _counts(cap, name, AC.ORDER)
    assert w[1] - g[1] == MISSED_BY_213[name]


@same_libm
def test_readback_is_the_fma_chain_dot(cap):
    """The dominant-key probes (18 cases x 512 heads): the Q·Kᵀ dot read back from torch 2.11's lse
    is the index-order fma chain (probes.cpu_attention.chain_dots) on 9216/9216; controls: the exact
    float64 dot and a shifted assignment are not."""
    _, arrays, cases = cap
    same = exact = shifted = total = 0
    for c, _ in cases.values():
        if c.kind != "dominant":
            continue
        q, k, _v = P.build(c)
        got = P.readback(c, arrays[f"{c.name}.lse"]).view(np.uint32)
        chain = P.chain_dots(c, q, k).view(np.uint32)
        same += int(np.sum(got == chain))
        exact += int(np.sum(got == P.exact_dots(c, q, k).astype(np.float32).view(np.uint32)))
        shifted += int(np.sum(np.roll(got, 1) == chain))
        total += c.hq
    assert (same, total) == (9216, 9216)
    assert exact < total // 2 and shifted == 0


def test_order_for_and_release():
    assert AC.release_of("2.11.0+cu130") == "2.11" and AC.release_of("2.13.0+cpu") == "2.13"
    assert AC.release_of(None) is None and AC.release_of("") is None
    assert AC.order_for()[1] is AC.ORDER and AC.order_for("2.13.1")[1] is AC.ORDER
    assert AC.order_for("2.11.0")[1] is AC.ORDER_2_11 and AC.ORDER_2_11.sum_accumulators == 1
    assert dataclasses.replace(AC.ORDER_2_11, sum_accumulators="auto") == AC.ORDER  # the one difference
    with pytest.raises(NotImplementedError, match="no CPU flash order was measured for torch 2.9"):
        AC.order_for("2.9.0")
    q = np.zeros((2, 16, 64), np.float32)
    with pytest.raises(NotImplementedError, match="torch 2.9"):
        AC.flash_cpu(q, q, q, fmt="bf16", causal=False, torch_version="2.9.0")


def test_platform_mismatch_knows_both_releases():
    amd = {"cpu_vendor": "AuthenticAMD", "cpu_model": "AMD EPYC", "cpu_flags": list(AC.MEASURED["cpu_flags"])}
    for v in ("2.13.0+cpu", "2.11.0+cu130"):
        assert AC.platform_mismatch({**amd, "torch": {"version": v}}) == ""
    why = AC.platform_mismatch({**amd, "torch": {"version": "2.9.1"}})
    assert "torch 2.9.1" in why and "2.11.0+cu130" in why and "2.13.0+cpu" in why
    intel = AC.platform_mismatch({"cpu_vendor": "GenuineIntel", "cpu_flags": ["avx512f", "avx512_bf16", "amx_bf16"],
                                  "torch": {"version": "2.11.0+cu130"}})
    assert "GenuineIntel" in intel and "amx_bf16" in intel and "torch 2.11" not in intel.split("this platform")[1]


@same_libm
def test_trace_replay_picks_the_release_that_reproduces(cap):
    """trace.counterfactual.cpu_flash on a torch 2.11 op: the 2.11 order is exact (tried first for
    a 2.11 trace, and found too when the trace says 2.13: equal bits are their own evidence);
    control: with one lse bit flipped no release is exact and the note counts the miss."""
    from hspi_kernels.numerics.rounding import encode
    from hspi_kernels.trace import counterfactual as C

    _, arrays, cases = cap
    c, _ = cases["long_sk600_d128_fp16"]
    q, k, v = P.build(c)
    out16 = encode(arrays[f"{c.name}.out"].view(np.float32), "fp16").reshape(q.shape)  # the op's fp16 bits
    lse = arrays[f"{c.name}.lse"].reshape(q.shape[:-1])
    for version in ("2.11.0+cu130", "2.13.0+cpu"):
        r = C.cpu_flash(q, k, v, out16, lse, fmt="fp16", causal=False, scale=None,
                        platform={"torch": {"version": version}})
        assert r["exact"]["plan"].startswith("attention_cpu.ORDERS['2.11']")
        assert r["exact"]["matches"] == r["exact"]["total"] == out16.size + lse.size
    bad = lse.copy()
    bad.reshape(-1)[7] ^= 1
    r = C.cpu_flash(q, k, v, out16, bad, fmt="fp16", causal=False, scale=None, platform={"torch": {"version": "2.11.0"}})
    assert "exact" not in r and f"lse {lse.size - 1}/{lse.size}" in r["note"] and "ORDERS['2.11']" in r["note"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: test_attention_cpu_releases.py CAPTURE.npz  (a cpu_flash_capture.py output)")
    np.savez_compressed(FIXTURE, **P.slim_capture(*P.load_capture(sys.argv[1]), set(KEEP_OUT)))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
