"""hspi_kernels.numerics.attention_cpu: the bit-exact replay of PyTorch's CPU flash attention
(``aten::_scaled_dot_product_flash_attention_for_cpu``, torch 2.13 CPU, AVX512).

Evidence, all compared with ``==`` on bit patterns and asserted as exact N/N counts:

- always: the recorded fixture tests/data/cpu_flash/cases.npz (torch's output and lse bits on
  seeded inputs, and on two planted fp32 cases that single out the tail exp, the rescale exp
  and the fma in the row sum; recorded on the machine the order was measured on, its torch
  version and CPU capability stored in it), and the negative controls on it: each perturbed
  order must miss (mismatch count > 0) where the measured order is N/N;
- live, only where ``torch.__version__`` and ``get_cpu_capability()`` are the measured ones
  (elsewhere skipped, saying why): the zoo models' attention shapes, long cases over several q
  and kv blocks, the fixture against today's torch, and the limits the replay refuses (small
  GEMMs, a single work item at 2 threads).

Re-record the fixture (on the measured platform only): ``python tests/test_attention_cpu_flash.py --record``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from hspi_kernels.numerics import attention_cpu as AC
from hspi_kernels.numerics.attention_ref import round_to_input
from hspi_kernels.numerics.evaluate import fma32
from hspi_kernels.platform import this_cpu

try:
    import torch
except ImportError:  # the fixture tests and controls still run
    torch = None

FIXTURE = Path(__file__).parent / "data" / "cpu_flash" / "cases.npz"
F32 = np.float32

# name: (fmt, Hq, Hkv, Sq, Sk, D, causal, scale, input std, seed). Each exercises one part of
# the order: GQA + causal; 2 q blocks, 2 kv blocks, P·V panels 192/192/128, an 8-key tail;
# fp32 exp_u20 with qSplit 64 (Sq >= 192) and panels [100, 100]; 3 kv blocks; Q·Kᵀ panels over
# D = 256; fp32 with an explicit scale and D = 200.
FIXTURE_CASES = {
    "bf16_gqa_causal": ("bf16", 4, 2, 16, 16, 64, True, None, 1.0, 1),
    "fp16_two_kv_blocks": ("fp16", 2, 1, 40, 600, 16, False, None, 1.5, 2),
    "fp32_causal_200": ("fp32", 1, 1, 200, 200, 16, True, None, 1.5, 3),
    "bf16_three_kv_blocks": ("bf16", 2, 1, 40, 1100, 12, False, None, 2.0, 4),
    "fp16_d256_causal": ("fp16", 2, 1, 8, 16, 256, True, None, 1.0, 5),
    "fp32_d200_scale": ("fp32", 2, 1, 4, 20, 200, False, 0.3, 1.0, 6),
}  # every case has >= 2 work items (B * Hq * q blocks): single-threaded GEMMs at any thread count


def _planted_tail():
    """fp32, 12 keys (all in the scalar tail): q rows one-hot, so row d of a head scores key j
    exactly k[j, d] / 4; key 0 scores 0 (the max), the others x where glibc expf(x) differs from
    rn32(exp(x)); v one-hot, so out[r, j] = rn(P[r, j] · rn(1/l))."""
    rng = np.random.default_rng(7)
    x = -rng.uniform(0.01, 10.0, 1_000_000).astype(F32)
    x = x[AC.expf(x) != AC.rn_exp(x)][:2 * 16 * 11]
    q = np.broadcast_to(np.eye(16, dtype=F32), (1, 2, 16, 16)).copy()
    k = np.zeros((1, 2, 12, 16), F32)
    k[:, :, 1:, :] = (4 * x).reshape(1, 2, 11, 16)
    v = np.zeros((1, 2, 12, 16), F32)
    v[..., np.arange(12), np.arange(12)] = 1
    return q, k, v


def _planted_alpha():
    """fp32, kv blocks of 512 + 12 keys: q = [c, 0, ...]; block 0 scores 0 (key 0) and random
    negatives, block 1 scores c, so the rescale is alpha = exp(-c), with c where glibc expf and
    rn32(exp) differ, and l = fma(alpha, l_old, 12) with an l_old of many bits."""
    rng = np.random.default_rng(8)
    c = rng.uniform(0.1, 3.0, 400_000).astype(F32)
    c = c[AC.expf(-c) != AC.rn_exp(-c)][:2 * 64]
    q = np.zeros((1, 2, 64, 12), F32)
    q[..., 0] = c.reshape(1, 2, 64)
    k = np.zeros((1, 2, 524, 12), F32)
    k[:, :, 1:512, 0] = round_to_input(-rng.uniform(0.01, 4.0, (1, 2, 511)).astype(F32), "bf16")
    k[:, :, 512:, 0] = 4.0  # with scale 0.25: block 1 scores exactly c, block 0 rn(c·k)/4 <= 0
    v = round_to_input(rng.standard_normal((1, 2, 524, 12)).astype(F32), "bf16")
    return q, k, v


PLANTED = {"fp32_planted_tail": (_planted_tail, "fp32", False, 0.25),
           "fp32_planted_alpha": (_planted_alpha, "fp32", False, 0.25)}  # builder, fmt, causal, scale


def _live_reason(fixture_torch: str | None = None) -> str:
    """Empty when torch is a build an order of AC.ORDERS was measured with (``fixture_torch``: that
    build only), on the measured CPU path, else why not."""
    if torch is None:
        return "torch is not installed"
    cap = torch.backends.cpu.get_cpu_capability()
    builds = [fixture_torch] if fixture_torch else [m["torch"] for _, m in AC.ORDERS.values()]
    if torch.__version__ not in builds or cap != AC.MEASURED["cpu_capability"]:
        return (f"live comparison needs torch {' or '.join(builds)} on {AC.MEASURED['cpu_capability']} "
                f"(the replay's measured platforms); here torch {torch.__version__} on {cap}")
    return AC.platform_mismatch(this_cpu())  # the CPU: vendor and the flags that pick MKL / oneDNN kernels


live = pytest.mark.skipif(bool(_live_reason()), reason=_live_reason() or "measured platform")
live_2_13 = pytest.mark.skipif(bool(_live_reason(AC.MEASURED["torch"])),
                               reason=_live_reason(AC.MEASURED["torch"]) or "the fixture's torch")
TV = torch.__version__ if torch is not None else None  # the live tests replay this torch's order


same_libm = pytest.mark.skipif(bool(AC.libm_mismatch()), reason=AC.libm_mismatch() or "measured libm")


def _inputs(fmt, hq, hkv, sq, sk, d, std=1.0, seed=0, batch=1):
    rng = np.random.default_rng(seed)
    shapes = ((batch, hq, sq, d), (batch, hkv, sk, d), (batch, hkv, sk, d))
    return [round_to_input((rng.standard_normal(s) * std).astype(F32), fmt) for s in shapes]


def _torch_flash(q, k, v, fmt, causal, scale=None):
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[fmt]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        *[torch.from_numpy(x).to(dt) for x in (q, k, v)], is_causal=causal, scale=scale)
    return out.float().numpy(), lse.numpy()


def _same(a, b) -> int:
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.sum(a.view(np.uint32) == b.view(np.uint32)))


# -- the fixture ----------------------------------------------------------------------------
def _to_bits(x, fmt):
    x = np.asarray(x, F32)
    return x.view(np.uint32) if fmt == "fp32" else (x.view(np.uint32) >> 16).astype(np.uint16) if fmt == "bf16" \
        else x.astype(np.float16).view(np.uint16)


def _from_bits(b, fmt):
    if fmt == "fp32":
        return np.asarray(b, np.uint32).view(F32)
    if fmt == "bf16":
        return (np.asarray(b, np.uint32) << 16).view(F32)
    return np.asarray(b, np.uint16).view(np.float16).astype(F32)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_fixture(path: Path = FIXTURE) -> dict:
    """Record torch's bits on the FIXTURE_CASES inputs (measured platform only)."""
    reason = _live_reason(AC.MEASURED["torch"])
    if reason:
        raise SystemExit(f"refusing to record: {reason}")
    arrays, cases = {}, {}
    specs = {name: (lambda c=c: _inputs(c[0], *c[1:6], c[8], c[9]), c[0], c[6], c[7])
             for name, c in FIXTURE_CASES.items()}
    specs.update(PLANTED)
    for name, (build, fmt, causal, scale) in specs.items():
        q, k, v = build()
        hq, hkv, sq, sk, d = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
        out, lse = _torch_flash(q, k, v, fmt, causal, scale)
        for key, x in (("q", q), ("k", k), ("v", v), ("out", out)):
            arrays[f"{name}.{key}"] = _to_bits(x, fmt)
        arrays[f"{name}.lse"] = _to_bits(lse, "fp32")
        cases[name] = {"fmt": fmt, "causal": causal, "scale": scale, "hq": hq, "hkv": hkv,
                       "sq": sq, "sk": sk, "d": d}
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": _cpu_model(), "glibc": "-".join(platform.libc_ver()),
            "op": "aten::_scaled_dot_product_flash_attention_for_cpu", "threads": torch.get_num_threads(),
            "cases": cases}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return meta


def _load_fixture():
    with np.load(FIXTURE) as z:
        meta = json.loads(str(z["meta"]))
        data = {}
        for name, c in meta["cases"].items():
            fmt = c["fmt"]
            data[name] = {key: _from_bits(z[f"{name}.{key}"], fmt if key != "lse" else "fp32")
                          for key in ("q", "k", "v", "out", "lse")}
    return meta, data


@pytest.fixture(scope="module")
def fixture():
    return _load_fixture()


def _replay_case(fixture, name, order=AC.ORDER):
    meta, data = fixture
    c, d = meta["cases"][name], data[name]
    out, lse = AC.replay(d["q"], d["k"], d["v"], fmt=c["fmt"], causal=c["causal"], scale=c["scale"], order=order)
    return out, lse, d


def test_fixture_is_from_the_measured_platform(fixture):
    meta, data = fixture
    assert meta["torch"] == AC.MEASURED["torch"] and meta["cpu_capability"] == AC.MEASURED["cpu_capability"]
    assert set(meta["cases"]) == set(FIXTURE_CASES) | set(PLANTED)
    assert FIXTURE.stat().st_size < 300_000


@same_libm
@pytest.mark.parametrize("name", list(FIXTURE_CASES) + list(PLANTED))
def test_fixture_replays_bit_exact(fixture, name):
    out, lse, d = _replay_case(fixture, name)
    n_out, n_lse = d["out"].size, d["lse"].size
    assert (_same(out, d["out"]), _same(lse, d["lse"])) == (n_out, n_lse)


@same_libm
def test_flash_cpu_is_the_measured_order(fixture):
    meta, data = fixture
    c, d = meta["cases"]["bf16_gqa_causal"], data["bf16_gqa_causal"]
    assert (c["fmt"], c["causal"], c["scale"]) == ("bf16", True, None)
    out, lse = AC.flash_cpu(d["q"], d["k"], d["v"], fmt="bf16", causal=True)
    assert (_same(out, d["out"]), _same(lse, d["lse"])) == (d["out"].size, d["lse"].size)
    # [H, S, D] inputs: one batch of the 4-D kernel
    out3, lse3 = AC.flash_cpu(d["q"][0], d["k"][0], d["v"][0], fmt="bf16", causal=True)
    assert (_same(out3, d["out"][0]), _same(lse3, d["lse"][0])) == (d["out"][0].size, d["lse"][0].size)


# -- negative controls: each perturbed order must be rejected -------------------------------
CONTROLS = {
    # name: (fixture case, changes to the order)
    "std exp instead of exp_u20 (fp32)": ("fp32_causal_200", {"exp_bulk": "rn_exp"}),
    "exp_u20 instead of fexp_u20 (bf16)": ("bf16_gqa_causal", {"exp_bulk": "exp_u20"}),
    "exp_u20 instead of fexp_u20 (fp16)": ("fp16_two_kv_blocks", {"exp_bulk": "exp_u20"}),
    "kv block 256 instead of 512": ("fp16_two_kv_blocks", {"kv_split": 256}),
    "kv block 256 instead of 512 (3 blocks)": ("bf16_three_kv_blocks", {"kv_split": 256}),
    "P left unrounded (bf16)": ("bf16_gqa_causal", {"round_p": False}),
    "P left unrounded (fp16)": ("fp16_two_kv_blocks", {"round_p": False}),
    "no P·V panels": ("fp32_causal_200", {"gemm_panel_max": None}),
    "no P·V panels (fp16)": ("fp16_two_kv_blocks", {"gemm_panel_max": None}),
    "no Q·Kᵀ panels over D = 256": ("fp16_d256_causal", {"gemm_panel_max": None}),
    "sequential row sum instead of lanes (fp32)": ("fp32_causal_200", {"sum_accumulators": 0}),
    "sequential row sum instead of lanes (bf16)": ("bf16_three_kv_blocks", {"sum_accumulators": 0}),
    "one lane accumulator for bf16 (fp32's)": ("bf16_three_kv_blocks", {"sum_accumulators": 1}),
    "one lane accumulator for fp16 (fp32's)": ("fp16_two_kv_blocks", {"sum_accumulators": 1}),
    "two lane accumulators for fp32 (bf16's)": ("fp32_causal_200", {"sum_accumulators": 2}),
    "tail exp by glibc expf instead of rn32(exp)": ("fp32_planted_tail", {"exp_tail": "expf"}),
    "tail exp by exp_u20 (the vector code)": ("fp32_planted_tail", {"exp_tail": "exp_u20"}),
    "alpha by rn32(exp) instead of glibc expf": ("fp32_planted_alpha", {"exp_alpha": "rn_exp"}),
    "l = rn(alpha·l_old) + s instead of one fma": ("fp32_planted_alpha", {"l_fma": False}),
}


@pytest.mark.parametrize("control", list(CONTROLS))
def test_negative_control_is_rejected(fixture, control):
    name, change = CONTROLS[control]
    out, lse, d = _replay_case(fixture, name)
    assert (_same(out, d["out"]), _same(lse, d["lse"])) == (d["out"].size, d["lse"].size)  # baseline N/N
    bad_out, bad_lse, _ = _replay_case(fixture, name, dataclasses.replace(AC.ORDER, **change))
    missed = (d["out"].size - _same(bad_out, d["out"])) + (d["lse"].size - _same(bad_lse, d["lse"]))
    assert missed > 0, f"{control}: the perturbed order reproduces {name} too"


# -- pieces ---------------------------------------------------------------------------------
def test_fast_fma_equals_exact_fma32():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(200_000).astype(F32)
    b = (rng.standard_normal(200_000) * np.exp2(rng.integers(-30, 30, 200_000))).astype(F32)
    c = (rng.standard_normal(200_000) * np.exp2(rng.integers(-40, 40, 200_000))).astype(F32)
    # planted double-rounding traps: c a float32 whose sum with a tiny product lands a float64
    # rounding onto a float32 midpoint (c = 1 + 2^-23, product = -(2^-24 + 2^-80))
    a[:4], b[:4] = F32(2.0 ** -24), F32(-(1 + 2.0 ** -23))
    c[:4] = F32(1 + 2.0 ** -23)
    a[4:8], b[4:8], c[4:8] = F32(0.0), F32(-1.0), F32(-0.0)  # zero signs
    a[8:12], b[8:12], c[8:12] = F32(2.0 ** -70), F32(2.0 ** -70), F32(2.0 ** -130)  # subnormal result
    fast, exact = AC._fma(a, b, c), fma32(a, b, c)
    assert np.array_equal(fast.view(np.uint32), exact.view(np.uint32))


def test_exp_functions_fixed_points():
    x = np.array([0.0, -1.0, -10.0, -88.0, -np.inf], F32)
    assert AC.exp_u20(x)[0] == 1.0 and AC.exp_u20(x)[-1] == 0.0 and AC.exp_u20(x)[-2] == 0.0
    fx = AC.fexp_u20(x)
    assert fx.view(np.uint32)[0] == 0x3F7FFC80  # fexp_u20(0) != 1: the Malossi polynomial's offset
    assert fx[-1] == 0.0 and fx[-2] == 0.0
    assert np.all(np.abs(fx[1:3] / np.exp(x[1:3].astype(np.float64)) - 1) < 1e-4)


def test_gemm_panels():
    assert AC.gemm_panels(192) == [192]
    assert AC.gemm_panels(193) == [96, 96, 1]
    assert AC.gemm_panels(300) == [150, 150]
    assert AC.gemm_panels(512) == [192, 192, 128]
    assert AC.gemm_panels(512, None) == [512]
    assert [AC.q_split_size(s) for s in (16, 191, 192, 767, 768)] == [16, 32, 64, 64, 256]


@pytest.mark.parametrize("sq, sk, d, causal", [(3, 16, 64, False), (16, 11, 64, False), (16, 16, 8, False),
                                               (33, 16, 64, False), (16, 523, 64, False)])
def test_refuses_shapes_outside_the_measured_gemm_regime(sq, sk, d, causal):
    q, k, v = _inputs("bf16", 2, 2, sq, sk, d)
    with pytest.raises(NotImplementedError, match="small-matrix"):
        AC.flash_cpu(q, k, v, fmt="bf16", causal=causal, torch_threads=1)


def test_causal_unvisited_short_kv_block_is_accepted():
    q, k, v = _inputs("bf16", 2, 2, 100, 1030, 16)  # kv block 2 (6 keys) starts past row 99
    with pytest.raises(NotImplementedError):
        AC.flash_cpu(q, k, v, fmt="bf16", causal=False)
    out, lse = AC.flash_cpu(q, k, v, fmt="bf16", causal=True)
    assert out.shape == q.shape and lse.shape == q.shape[:-1]


def test_single_work_item_needs_one_thread():
    q, k, v = _inputs("bf16", 1, 1, 16, 16, 64)
    with pytest.raises(NotImplementedError, match="single work item"):
        AC.flash_cpu(q, k, v, fmt="bf16", causal=False)
    out, lse = AC.flash_cpu(q, k, v, fmt="bf16", causal=False, torch_threads=1)
    assert out.shape == q.shape


def test_refuses_another_isa():
    with pytest.raises(NotImplementedError):
        AC.flash_cpu(*_inputs("bf16", 1, 1, 16, 16, 64), fmt="bf16", causal=False, isa="avx2")


def test_bad_inputs():
    q, k, v = _inputs("fp32", 2, 1, 16, 16, 16)
    with pytest.raises(ValueError):  # not bf16 values
        AC.flash_cpu(q, k, v, fmt="bf16", causal=False)
    with pytest.raises(ValueError):  # 2 q heads over 3 kv heads
        AC.flash_cpu(q, np.concatenate([k] * 3, 1), np.concatenate([v] * 3, 1), fmt="fp32", causal=False)
    with pytest.raises(TypeError):
        AC.flash_cpu(q.astype(np.float64), k, v, fmt="fp32", causal=False)


# -- live, on the measured platform only ----------------------------------------------------
ZOO = {"qwen": (14, 2), "gpt2": (12, 12), "llama": (32, 8)}  # q heads, kv heads; batch 1, D 64


@live
@pytest.mark.parametrize("fmt", ["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("model", list(ZOO))
def test_live_zoo_shapes(model, fmt, causal):
    hq, hkv = ZOO[model]
    q, k, v = _inputs(fmt, hq, hkv, 16, 16, 64, seed=len(model))
    t_out, t_lse = _torch_flash(q, k, v, fmt, causal)
    out, lse = AC.flash_cpu(q, k, v, fmt=fmt, causal=causal, torch_version=TV)
    assert (_same(out, t_out), _same(lse, t_lse)) == (hq * 16 * 64, hq * 16)


LONG = {  # (Hq, Hkv, Sq, Sk, D, causal): several q blocks and kv blocks
    "sk600_d128": (2, 1, 64, 600, 128, False),
    "sk1100_d128": (2, 1, 64, 1100, 128, False),
    "sk300_d128": (2, 1, 64, 300, 128, False),
    "600x600_causal": (1, 1, 600, 600, 64, True),
}


@live
@pytest.mark.parametrize("fmt", ["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("case", list(LONG))
def test_live_long(case, fmt):
    hq, hkv, sq, sk, d, causal = LONG[case]
    q, k, v = _inputs(fmt, hq, hkv, sq, sk, d, std=1.5, seed=sk)
    t_out, t_lse = _torch_flash(q, k, v, fmt, causal)
    out, lse = AC.flash_cpu(q, k, v, fmt=fmt, causal=causal, torch_version=TV)
    assert (_same(out, t_out), _same(lse, t_lse)) == (hq * sq * d, hq * sq)


@live_2_13
def test_live_fixture_is_todays_torch(fixture):
    meta, data = fixture
    for name, c in meta["cases"].items():
        d = data[name]
        t_out, t_lse = _torch_flash(d["q"], d["k"], d["v"], c["fmt"], c["causal"], c["scale"])
        assert (_same(t_out, d["out"]), _same(t_lse, d["lse"])) == (d["out"].size, d["lse"].size), name


@live
def test_live_single_work_item_threads():
    """One work item (B * Hq * q blocks == 1): N/N at 1 thread; at 2 threads oneDNN threads the
    bf16 GEMM of a 16-key block itself and the fp32 lse misses (why flash_cpu asks torch_threads)."""
    q, k, v = _inputs("bf16", 1, 1, 8, 16, 64, seed=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        t_out, t_lse = _torch_flash(q, k, v, "bf16", False)
        out, lse = AC.flash_cpu(q, k, v, fmt="bf16", causal=False, torch_threads=1, torch_version=TV)
        assert (_same(out, t_out), _same(lse, t_lse)) == (out.size, lse.size)
        torch.set_num_threads(2)
        t_out2, t_lse2 = _torch_flash(q, k, v, "bf16", False)
    finally:
        torch.set_num_threads(before)
    assert (out.size - _same(out, t_out2)) + (lse.size - _same(lse, t_lse2)) > 0


@live
@pytest.mark.parametrize("fmt, sq, sk, d", [("fp32", 16, 11, 64), ("bf16", 16, 11, 64), ("fp32", 3, 16, 64),
                                            ("fp32", 16, 100, 8)])
def test_live_small_gemm_regime_is_not_the_chain(fmt, sq, sk, d):
    """Why flash_cpu refuses these shapes: the fma-chain model (check=False) misses there."""
    q, k, v = _inputs(fmt, 4, 4, sq, sk, d, seed=sq + sk + d)
    t_out, t_lse = _torch_flash(q, k, v, fmt, False)
    out, lse = AC.replay(q, k, v, fmt=fmt, causal=False, check=False, order=AC.order_for(TV)[1])
    assert (out.size - _same(out, t_out)) + (lse.size - _same(lse, t_lse)) > 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        print(json.dumps(record_fixture(), indent=1))
    else:
        raise SystemExit("usage: python tests/test_attention_cpu_flash.py --record")
