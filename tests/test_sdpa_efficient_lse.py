"""The log-sum-exp of PyTorch's memory-efficient SDPA backend (CUTLASS ``fmha_cutlassF_*_rf_sm80``) on
the H200 capture (tests/data/sdpa_h200), replayed on the CPU:

- the kernel writes ``mi / kLog2e + cutlass::fast_log(s_prime)``, ``fast_log`` = ``::logf``, which a
  build without fast math takes from libdevice (``__nv_logf``): ``AttentionPlan(lse="div_log2e",
  log="cuda")`` with :func:`attention_ref.cuda_logf`, its bit-exact transcription;
- its dots are ``InstructionShape<16, 8, 8>`` (PyTorch's ``DefaultGemmType`` for 16-bit inputs):
  chains of m16n8k8 blocks, 8 products, F = 25 on Hopper (the sm_90 tf32 preset's block, exact for
  bf16 operands), not the k = 16 chain of the flash kernel.

The SFU outputs (ex2.approx.ftz) come from the GPU runs: run 4's short-case table covers the k = 16
plan whole; the k = 8 plan's ex2 inputs are recorded for part of the rows only (the union of every
table in the repository), so it is counted on those rows (a missing input gives NaN: its row drops
out)."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import gemm
from hspi_kernels.trace import sdpa_orders as SO

ROOT = Path(__file__).parents[1]
DATA = ROOT / "tests" / "data" / "sdpa_h200"
F32 = np.float32
SHORT = ("int.short", "qwen2.5-0.5b", "gpt2-small", "llama-3.2-1b", "gpt2-small.fp16")
K8 = P.Chain(block=P.TensorCore("sm_90", "tf32", "fp32", path="mma.sync"), k=8)


# ------------------------------------------------------------------------------------------
# the fp32 fma emulation (attention_ref.fma32) and cuda_logf
# ------------------------------------------------------------------------------------------
def _rne32(x: Fraction) -> float:
    """Exact RNE of a rational to fp32 (subnormals, overflow to inf), as a float."""
    if x == 0:
        return 0.0
    s, a = (-1 if x < 0 else 1), abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    q = max(e, -126) - 23
    t = a / Fraction(2) ** q
    n = math.floor(t)
    if t - n > Fraction(1, 2) or (t - n == Fraction(1, 2) and n % 2):
        n += 1
    v = n * Fraction(2) ** q
    return s * math.inf if v >= 2**128 else s * float(v)


def _fma_cases(n=3000, seed=11):
    """(a, b, c) float32 triples: random, near-cancelling, exponent offsets around 24-26 (where
    the sum meets fp32 rounding boundaries), subnormal and overflowing results, and sums a hair
    below an fp32 midpoint (where rounding twice goes wrong)."""
    rng = random.Random(seed)

    def f(m_bits, e):
        return float(np.float32(math.ldexp(1 + rng.getrandbits(m_bits) / 2**m_bits if m_bits else 1.0, e)
                                * rng.choice((-1, 1))))

    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            a, b, c = f(23, rng.randint(-60, 60)), f(23, rng.randint(-60, 60)), f(23, rng.randint(-120, 120))
        elif kind == 1:  # c ~ -a*b: cancellation
            a, b = f(23, rng.randint(-20, 20)), f(23, rng.randint(-20, 20))
            c = -float(np.float32(a * b)) * (1 + rng.choice((0, 2**-23, -2**-23)))
        elif kind == 2:  # short products against c at 24-26 binades above: boundary cases
            a, b = f(rng.randint(0, 11), rng.randint(-10, 10)), f(rng.randint(0, 11), rng.randint(-10, 10))
            c = f(rng.randint(0, 23), int(math.floor(math.log2(abs(a * b)))) + rng.randint(22, 27))
        elif kind == 3:  # subnormal results
            a, b, c = f(23, rng.randint(-80, -60)), f(23, rng.randint(-80, -60)), f(23, rng.randint(-149, -126))
        elif kind == 4:  # near overflow
            a, b, c = f(23, rng.randint(60, 64)), f(23, rng.randint(60, 64)), f(23, rng.randint(120, 127))
        else:  # a*b + c just below the midpoint above an odd c: one float64 rounding lands on the midpoint
            e, j, sg = rng.randint(-90, 90), rng.randint(15, 20), rng.choice((-1, 1))
            c = sg * math.ldexp(2**23 + 2 * rng.getrandbits(22) + 1, e - 23)
            a, b = sg * math.ldexp(1 + 2.0**-j, e - 24), 1 - 2.0**-j
        out.append((np.float32(a), np.float32(b), np.float32(c)))
    return np.array(out, dtype=F32)


def test_fma32_is_exact_against_fractions():
    """fma32 (one rounding of a*b + c) against exact rational arithmetic on 3000 triples; the naive
    float64 ``a*b + c`` then cast (double rounding) is wrong on some of them (the test reaches the
    boundaries where it matters)."""
    t = _fma_cases()
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    with np.errstate(all="ignore"):
        got = R.fma32(a, b, c).astype(np.float64)
        naive = (a.astype(np.float64) * b + c).astype(F32).astype(np.float64)
    want = np.array([_rne32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in t])
    assert np.array_equal(got, want), np.nonzero(got != want)[0][:5]
    assert int((naive != want).sum()) >= 400  # the midpoint family: double rounding is wrong on each
    assert int((np.abs(want) < 2.0**-126).sum()) > 100 and int(np.isinf(want).sum()) > 10


def test_cuda_logf_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -2.0**-149, 1.0], F32)
    y = R.cuda_logf(x)
    assert np.array_equal(y[:2], [-np.inf, -np.inf]) and y[2] == np.inf and y[7] == 0
    assert (y[3:7].view(np.uint32) == 0x7FFFFFFF).all()  # NaN: the GPU's canonical pattern
    # subnormal inputs take the 2^23 rescale; the largest finite input
    x = np.array([2.0**-149, 2.0**-140, np.float32(1.5e-39), np.finfo(F32).max], F32)
    ref = np.log(x.astype(np.float64))
    assert np.abs(R.cuda_logf(x) - ref).max() < 1e-5


def _ulp32(t):
    return np.ldexp(1.0, np.floor(np.log2(np.abs(t))).astype(int) - 23)


def test_cuda_logf_within_one_ulp_and_not_numpy():
    """libdevice documents logf's maximum error as 1 ulp: on 400k inputs (random positive finite
    patterns, subnormals, [0.5, 2) densely) the error against float64 log stays below 1 ulp (0.864
    over every non-negative finite input, measured with a C transcription); the function is not
    correctly rounded (a few % of inputs) and not numpy's float32 log."""
    rng = np.random.default_rng(3)
    bits = np.concatenate([rng.integers(1, 0x7F800000, 250_000), rng.integers(1, 0x800000, 20_000),
                           rng.integers(0x3F000000, 0x40000000, 130_000)]).astype(np.uint32)
    x = bits.view(F32)
    y = R.cuda_logf(x).astype(np.float64)
    t = np.log(x.astype(np.float64))
    nz = t != 0
    err = np.abs(y - t)[nz] / _ulp32(t[nz])
    assert err.max() < 0.87, err.max()
    cr = t.astype(F32).astype(np.float64)
    assert 0.01 < float((y != cr).mean()) < 0.1
    assert int((R.cuda_logf(x) != np.log(x)).sum()) > 500


# inputs -> libdevice __nv_logf outputs, cross-checked against a C transcription with the C
# library's fmaf (the same bits on every non-negative finite input); where given, not the
# correctly rounded log (the last digit of each is 1 ulp above it)
PINNED = {0x499838FC: 0x41609483, 0x400B9699: 0x3F47A1E6, 0x3D4AA7E6: 0xC0406684, 0x4836DE57: 0x41423E6C,
          0x3F23B4AB: 0xBEE4EB34, 0x00000001: 0xC2CE8ED0, 0x007FFFFF: 0xC2AEAC50, 0x7F7FFFFF: 0x42B17218,
          0x3F800001: 0x33FFFFFF, 0x3F7FFFFF: 0xB3800000}


def test_cuda_logf_pinned_values():
    x = np.array(list(PINNED), np.uint32).view(F32)
    assert R.cuda_logf(x).view(np.uint32).tolist() == list(PINNED.values())


# ------------------------------------------------------------------------------------------
# the H200 capture
# ------------------------------------------------------------------------------------------
def _case(name):
    z = np.load(DATA / "cases.npz")
    Hq, Hkv, S, D, causal, fmt, amp = SO.CASES[name]
    dt = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
    q, k, v = (z[f"{name}/{n}"].view(dt).astype(F32) for n in "qkv")
    return q, k, v, causal, fmt, z[f"{name}/efficient/out"], z[f"{name}/efficient/lse"].view(np.uint32)


def _run4_sfu():
    z = np.load(DATA / "sfu_run4_short.npz")
    return R.SfuOutputs.from_arrays({k: z[k] for k in z.files})


class _AllRecorded:
    """ex2.approx.ftz outputs of every H200 table in the repository (the runs agree wherever they
    overlap); an input none recorded gives NaN, so its row drops out of the counts."""

    def __init__(self):
        ins, outs = [], []
        for f, pre in ((ROOT / "docs/results/h200/sdpa_orders_sfu_run4.npz", ""),
                       (ROOT / "docs/results/h200/sdpa_orders_sfu_long.npz", ""),
                       (DATA / "sfu_run4_short.npz", ""), (DATA / "cases.npz", "sfu/")):
            z = np.load(f)
            ins.append(z[pre + "ex2_ftz_in"])
            outs.append(z[pre + "ex2_ftz_out"])
        i, o = np.concatenate(ins), np.concatenate(outs)
        self.inp, idx = np.unique(i, return_index=True)
        self.out = o[idx]
        assert np.array_equal(self.out[np.searchsorted(self.inp, i)], o)  # no conflicting records

    def apply(self, op, x):
        assert op == "ex2_ftz", op
        b = np.ascontiguousarray(x, F32).view(np.uint32)
        j = np.minimum(np.searchsorted(self.inp, b), self.inp.size - 1)
        return np.where(self.inp[j] == b, self.out[j], np.uint32(0x7FC00000)).view(F32)


def _plan(fmt, dot=None, **kw):
    dot = dot or P.tensor_core_gemm(fmt, "fp32", path="mma.sync", arch="sm_90")
    return AP.AttentionPlan(block_n=64, tile=64, domain="log2", exp="sfu", dot=dot, **kw)


def _walk(plan, name, sfu, monkeypatch):
    """(output bits, {(lse, log): lse bits}) of ``plan`` on the capture, every lse form computed
    from the one walk's (m, l)."""
    q, k, v, causal, fmt, _, _ = _case(name)
    seen = []
    orig = AP._lse
    monkeypatch.setattr(AP, "_lse", lambda p, m, l, s, f: seen.append((m, l, s)) or orig(p, m, l, s, f))
    o = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, sfu=sfu, with_lse=True)[0]
    monkeypatch.setattr(AP, "_lse", orig)
    (m, l, s), = seen
    forms = {}
    with np.errstate(all="ignore"):
        for lse, log in (("div_log2e", "cuda"), ("div_log2e", "libm"), ("auto", "auto"), ("fma_ln2", "cuda")):
            p = AP.AttentionPlan(block_n=64, tile=64, domain="log2", exp="sfu", dot=plan.dot, lse=lse, log=log)
            forms[(lse, log)] = AP._lse(p, m, l, s, None).reshape(-1, m.shape[-1]).view(np.uint32)
    return SO._bits(o, fmt), forms


# lse rows N/N of the k = 16 plan from run 4's SFU outputs (all rows), per lse form
K16_LSE = {"int.short": (128, 125, 80), "qwen2.5-0.5b": (206, 202, 144), "gpt2-small": (177, 173, 124),
           "llama-3.2-1b": (473, 457, 314), "gpt2-small.fp16": (92, 90, 78)}


@pytest.mark.parametrize("name", SHORT)
def test_efficient_lse_div_log2e_with_cuda_logf(name, monkeypatch):
    """The efficient kernel's lse form with CUDA's logf on the k = 16 plan, every row (run 4's SFU
    table covers it): int.short (integer scores, exact in any dot order) N/N; the others as
    measured. Negative controls: numpy's log, and the default lse form, give fewer rows. The output
    bits N/N (gpt2 fp16: 12287/12288 with recip 'ieee', 12286 with 'div')."""
    _, _, _, _, fmt, want_o, want_l = _case(name)
    plan = SO.fitted_plans("efficient", fmt, 64, split_kv=False)[3]  # the k = 16 chain, lse div_log2e / cuda
    assert plan.dot == P.tensor_core_gemm(fmt, "fp32", path="mma.sync", arch="sm_90")
    assert (plan.lse, plan.log, plan.rowsum, plan.recip) == ("div_log2e", "cuda", None, "ieee")
    ob, forms = _walk(plan, name, _run4_sfu(), monkeypatch)
    forms_order = (("div_log2e", "cuda"), ("div_log2e", "libm"), ("auto", "auto"))
    counts = tuple(int((forms[f] == want_l).sum()) for f in forms_order)
    assert counts == K16_LSE[name], counts
    assert counts[0] > counts[1] > counts[2]
    assert int((ob == want_o).sum()) == want_o.size - (1 if name == "gpt2-small.fp16" else 0)
    if name == "int.short":  # the rows where logf and numpy's log differ: the GPU wrote logf's value
        cuda, libm = forms[("div_log2e", "cuda")], forms[("div_log2e", "libm")]
        d = cuda != libm
        assert int(d.sum()) == 3 and (cuda[d] == want_l[d]).all() and not (libm[d] == want_l[d]).any()


def test_efficient_row0_scores_are_the_k8_chain():
    """Row 0 sees one key: l = 1, logf(1) = 0, so its lse is div_rn(rn(rn(S·1/8)·fp32(log2 e)),
    fp32(log2 e)) of one score, no SFU involved: the k = 8 chain (8 products per block, F = 25)
    gives all 70 heads of the four random-score cases, the k = 16 chain 56 (and the A100-era
    sm_80 k8 block, F = 24, 62)."""
    L2E = F32(1.4426950408889634)
    hits = {"k8": 0, "k16": 0, "sm80": 0}
    total = 0
    for name in SHORT[1:]:
        q, k, v, causal, fmt, _, want_l = _case(name)
        k = np.repeat(k, q.shape[0] // k.shape[0], 0)
        dots = {"k8": K8, "k16": P.tensor_core_gemm(fmt, "fp32", path="mma.sync", arch="sm_90"),
                "sm80": P.tensor_core_gemm(fmt, "fp32", path="mma.sync", arch="sm_80")}
        for tag, dot in dots.items():
            S0 = np.array([gemm(dot, q[h, :1], np.ascontiguousarray(k[h, :1].T))[0, 0] for h in range(q.shape[0])], F32)
            m = ((S0 * F32(0.125)).astype(F32) * L2E).astype(F32)
            hits[tag] += int(((m / L2E).astype(F32).view(np.uint32) == want_l[:, 0]).sum())
        total += q.shape[0]
    assert total == 70 and hits == {"k8": 70, "k16": 56, "sm80": 62}, hits


# rows whose ex2 inputs (k = 8 plan) are all recorded; rows there where the k = 8 and k = 16 lse
# differ; lse rows N/N there with numpy's log instead of logf (negative control)
K8_COVERED = {"int.short": (128, 0, 125), "qwen2.5-0.5b": (153, 6, 149), "gpt2-small": (114, 1, 111),
              "llama-3.2-1b": (331, 6, 319), "gpt2-small.fp16": (22, 7, 21)}


def test_efficient_k8_plan_is_exact_on_every_recorded_row(monkeypatch):
    """The fitted plan (k = 8 chain, lse div_log2e with logf): output and lse N/N on every row whose
    ex2 inputs the H200 recorded (748 of 1248 rows); on the 20 of them where its lse differs from the
    k = 16 plan's, the GPU wrote the k = 8 value every time (k = 16: none)."""
    sfu = _AllRecorded()
    for name in SHORT:
        _, _, _, _, fmt, want_o, want_l = _case(name)
        plan = SO.fitted_plans("efficient", fmt, 64, split_kv=False)[0]
        assert plan.dot == K8 and (plan.lse, plan.log, plan.rowsum, plan.recip) == ("div_log2e", "cuda", None, "ieee")
        ob8, f8 = _walk(plan, name, sfu, monkeypatch)
        ob16, f16 = _walk(_plan(fmt), name, sfu, monkeypatch)
        l8, l16 = f8[("div_log2e", "cuda")], f16[("div_log2e", "cuda")]
        ok = ~np.isnan(l8.view(F32)) & ~np.isnan(l16.view(F32))
        diff = ok & (l8 != l16)
        libm = int((f8[("div_log2e", "libm")] == want_l)[ok].sum())
        assert (int(ok.sum()), int(diff.sum()), libm) == K8_COVERED[name], (name, int(ok.sum()), int(diff.sum()), libm)
        assert (l8 == want_l)[ok].all() and (ob8 == want_o)[ok].all(), name
        assert not (l16 == want_l)[diff].any(), name


def test_fitted_efficient_plans_keep_the_earlier_orders():
    plans = SO.fitted_plans("efficient", "bf16", 64, split_kv=False)
    assert [p.dot for p in plans[:3]] == [K8] * 3 and all((p.lse, p.log) == ("div_log2e", "cuda") for p in plans[:6])
    old = [AP.AttentionPlan(block_n=64, tile=64, domain="log2", exp="sfu", rowsum=rs, recip=r,
                            dot=P.tensor_core_gemm("bf16", "fp32", path="mma.sync", arch="sm_90"))
           for rs in (None, P.Sequential(), P.Pairwise()) for r in ("div", "ieee", "sfu")]
    assert plans[6:] == old
    assert SO.fitted_plans("efficient", "bf16", 128, split_kv=False)[0].block_n == 128


def test_log_cuda_field():
    p = AP.AttentionPlan(block_n=32, domain="log2", exp="numpy", lse="div_log2e", log="cuda")
    assert "logf(l)" in p.describe()["lse"] and AP.attention_plan_from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="log2-domain"):
        AP.AttentionPlan(block_n=32, domain="log2", exp="numpy", log="cuda")
    assert ("div_log2e", "cuda") in {(v.lse, v.log) for v in AP.lse_variants(p)}
    f2 = AP.AttentionPlan(block_n=32, domain="log2", exp="numpy", walk="flash2", recip="ieee", log="cuda", splits=2)
    q = np.ones((1, 40, 64), F32) * F32(0.5)
    o, lse = AP.evaluate_attention(f2, q, q, q, fmt="bf16", with_lse=True)
    assert np.isfinite(lse).all() and np.abs(lse - (0.25 * 64 / 8 + np.log(40))).max() < 1e-5
