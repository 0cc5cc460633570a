"""The long H200 captures (300 / 384 / 200 keys, all 4 heads: docs/results/h200/sdpa_orders_cases.npz),
replayed on the CPU from the SFU outputs the GPU recorded (every table in the repository; an ex2 /
lg2 / rcp input none recorded gives NaN, so its row drops out and is counted as not replayable).
Exact counts on bit patterns, each finding with a negative control (the earlier order misses):

- efficient (CUTLASS memory-efficient kernel): the block's row sum as one partial per 32-key warp
  column added to rn(l * alpha) one after the other (``rowsum_chunk=32``), the score rounded twice
  at D = 128 (``scale_twice``), ``O = rn(acc * rn(1 / l))`` (``recip="ieee"``);
- flash split-KV: the combine kernel's accurate CUDA ``logf`` (``combine_log="cuda"``) and
  ``recip="ieee"``; its ``expf`` (``combine_exp="cuda"``) needs ex2 of positive arguments, which no
  recorded table holds: numpy's exp stands in, every one-split row is N/N and the rest are counted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.numerics import attention_plan as AP
from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.numerics import plans as P
from hspi_kernels.trace import sdpa_orders as SO

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "docs" / "results" / "h200" / "sdpa_orders_cases.npz"
TABLES = ((ROOT / "docs/results/h200/sdpa_orders_sfu_run4.npz", ""), (ROOT / "docs/results/h200/sdpa_orders_sfu_long.npz", ""),
          (ROOT / "tests/data/sdpa_h200/sfu_run4_short.npz", ""), (ROOT / "tests/data/sdpa_h200/cases.npz", "sfu/"))
F32 = np.float32
K8 = P.Chain(block=P.TensorCore("sm_90", "tf32", "fp32", path="mma.sync"), k=8)


class Recorded:
    """Every SFU output the H200 recorded (the tables agree where they overlap); an input none
    recorded gives NaN (``strict``: raises ValueError naming it, like ``SfuOutputs``)."""

    _cache: dict = {}

    def __init__(self, strict: bool = False):
        self.strict = strict
        if not Recorded._cache:
            acc: dict = {}
            for f, pre in TABLES:
                z = np.load(f)
                for op in ("ex2_ftz", "rcp", "lg2"):
                    if pre + op + "_in" in z.files:
                        acc.setdefault(op, []).append((z[pre + op + "_in"], z[pre + op + "_out"]))
            for op, parts in acc.items():
                i = np.concatenate([a for a, _ in parts])
                o = np.concatenate([b for _, b in parts])
                u, idx = np.unique(i, return_index=True)
                assert np.array_equal(o[idx][np.searchsorted(u, i)], o)  # no conflicting records
                Recorded._cache[op] = (u, o[idx])
        self.t = Recorded._cache

    def apply(self, op, x):
        u, o = self.t[op]
        b = np.ascontiguousarray(x, F32).view(np.uint32)
        j = np.minimum(np.searchsorted(u, b), u.size - 1)
        hit = u[j] == b
        if self.strict and not hit.all():
            raise ValueError(f"SfuOutputs: {op} of 0x{int(b[~hit].reshape(-1)[0]):08x} was not recorded")
        return np.where(hit, o[j], np.uint32(0x7FC00000)).view(F32)


def _case(name, backend):
    z = np.load(CASES)
    Hq, Hkv, S, D, causal, fmt, amp = SO.CASES[name]
    q, k, v = (z[f"{name}/{n}"].view(ml_dtypes.bfloat16).astype(F32) for n in "qkv")
    return q, k, v, causal, fmt, z[f"{name}/{backend}/out"], z[f"{name}/{backend}/lse"].view(np.uint32)


def _counts(plan, name, backend, sfu=None):
    """(replayable rows, output bits equal on them, lse equal on them, output bits equal on all rows)."""
    q, k, v, causal, fmt, want_o, want_l = _case(name, backend)
    o, lse = AP.evaluate_attention(plan, q, k, v, fmt=fmt, causal=causal, sfu=sfu or Recorded(), with_lse=True)
    ob, lb = SO._bits(o, fmt), np.asarray(lse, F32)
    ok = ~np.isnan(lb) & ~np.isnan(o).any(-1)
    eq_o = ob == want_o
    return int(ok.sum()), int(eq_o[ok].sum()), int((lb.view(np.uint32) == want_l)[ok].sum()), int(eq_o.sum())


# ------------------------------------------------------------------------------------------
# efficient
# ------------------------------------------------------------------------------------------
def _eff(D=64, **kw):
    base = dict(block_n=64 if D <= 64 else 128, tile=64, domain="log2", exp="sfu", dot=K8, recip="ieee",
                lse="div_log2e", log="cuda", rowsum_chunk=32, scale_twice=True)
    return AP.AttentionPlan(**(base | kw))


def test_fitted_efficient_plans_carry_the_long_case_fields():
    for D in (64, 128):
        plans = SO.fitted_plans("efficient", "bf16", D, split_kv=False)
        assert plans[0] == _eff(D)  # the found order first
        assert all(p.rowsum_chunk == 32 and p.scale_twice for p in plans[:6])
        assert all(p.rowsum_chunk == 0 and not p.scale_twice for p in plans[6:])


def test_efficient_int_long_is_exact_with_warp_column_row_sums():
    """int.long (integer scores: exact in any dot order; every ex2 input recorded): output and lse
    N/N on all 4 heads. Negative controls: the whole-block row sum (1045/1200 lse rows, the GPU wrote
    the 32-key partials' value), recip 'div' (one output bit)."""
    assert _counts(_eff(), "int.long", "efficient") == (1200, 76800, 1200, 76800)
    assert _counts(_eff(rowsum_chunk=0), "int.long", "efficient") == (1200, 76799, 1045, 76799)
    assert _counts(_eff(recip="div"), "int.long", "efficient") == (1200, 76799, 1200, 76799)


def test_efficient_random_long_cases_on_the_replayable_rows():
    """long.causal384: N/N on the 116 rows whose ex2 inputs were recorded (whole-block row sum: 114 lse);
    long.d128: the 7 replayable rows of the twice-rounded score N/N."""
    assert _counts(_eff(), "long.causal384", "efficient")[:3] == (116, 116 * 64, 116)
    assert _counts(_eff(rowsum_chunk=0), "long.causal384", "efficient")[:3] == (116, 116 * 64, 114)
    assert _counts(_eff(128), "long.d128", "efficient")[:3] == (7, 7 * 128, 7)


def test_efficient_d128_scores_are_rounded_twice():
    """Row 0 sees one key (l = 1, logf(1) = 0): lse = div_rn(s, fp32(log2 e)) of one score, no SFU:
    rn(rn(S * scale) * fp32(log2 e)) gives all 4 heads, rn(S * fp32(scale * log2 e)) 1."""
    q, k, v, causal, fmt, _, want_l = _case("long.d128", "efficient")
    S = np.array([R.gemm(K8, q[h, :1], np.ascontiguousarray(k[h, :1].T))[0, 0] for h in range(4)], F32)
    sc = F32(1 / np.sqrt(128))
    twice = ((S * sc).astype(F32) * F32(AP.LOG2E)).astype(F32)
    once = (S * F32(float(sc) * AP.LOG2E)).astype(F32)
    hits = {n: int(((s / F32(AP.LOG2E)).astype(F32).view(np.uint32) == want_l[:, 0]).sum())
            for n, s in (("twice", twice), ("once", once))}
    assert hits == {"twice": 4, "once": 1}


# ------------------------------------------------------------------------------------------
# flash split-KV
# ------------------------------------------------------------------------------------------
def _flash(D=64, **kw):
    base = dict(block_n=256 if D <= 64 else 128, tile=64, domain="log2", exp="sfu", walk="flash2", splits=2,
                exp_fma=False, recip="ieee", combine_log="cuda", combine_exp="libm")
    return AP.AttentionPlan(**(base | kw))


# (out, lse) over all rows: the found order (combine logf, ieee), combine numpy log, run 5's plan (recip sfu)
FLASH = {"int.long": ((76799, 1176), (76798, 1164), (76797, 1164)),
         "long.full300": ((76796, 1183), (76796, 1162), (76796, 1162)),
         "long.causal384": ((98303, 1524), (98303, 1515), (98302, 1515)),
         "long.d128": ((102399, 790), (102399, 786), (102399, 786))}


@pytest.mark.parametrize("name", list(FLASH))
def test_flash_split_kv_combine_logf_and_ieee_recip(name):
    D = SO.CASES[name][3]
    got = []
    for plan in (_flash(D), _flash(D, combine_log="auto"), _flash(D, combine_log="auto", recip="sfu")):
        rows, _, lse, out = _counts(plan, name, "flash")
        assert rows == 4 * SO.CASES[name][2]  # every SFU input of the split kernels was recorded
        got.append((out, lse))
    assert tuple(got) == FLASH[name]


def test_flash_split_kv_rows_of_one_split_are_exact():
    """Causal rows below key 256 (D 64) / 128 (D 128) see one non-empty split (the other writes
    lse = -inf): the combine is then exact whatever its expf (weights expf(0) = 1, expf(-inf) = 0),
    and those rows are N/N on the output and the lse."""
    for name, n1 in (("long.causal384", 256), ("long.d128", 128)):
        q, k, v, causal, fmt, want_o, want_l = _case(name, "flash")
        o, lse = AP.evaluate_attention(_flash(q.shape[-1]), q, k, v, fmt=fmt, causal=True, sfu=Recorded(), with_lse=True)
        rows = slice(0, n1)
        assert (SO._bits(o, fmt)[:, rows] == want_o[:, rows]).all(), name
        assert (np.asarray(lse, F32).view(np.uint32)[:, rows] == want_l[:, rows]).all(), name


def test_flash_combine_expf_needs_unrecorded_ex2_inputs():
    """combine_exp='cuda' (CUDA's __nv_expf) asks the SFU for ex2 of reduced arguments in [0, 1): the
    recorded tables hold none of them, so the replay refuses (naming the input) rather than guess."""
    q, k, v, causal, fmt, _, _ = _case("int.long", "flash")
    with pytest.raises(ValueError, match="ex2_ftz of 0x") as exc:
        AP.evaluate_attention(_flash(combine_exp="cuda"), q[:1], k[:1], v[:1], fmt=fmt, causal=causal,
                              sfu=Recorded(strict=True))
    x = np.array([int(str(exc.value).split("0x")[1][:8], 16)], np.uint32).view(F32)[0]
    assert 0 < x < 1, x  # a positive argument: the walks' own ex2 arguments are all <= 0
    # the split kernels alone replay from the same table (the stand-in combine)
    AP.evaluate_attention(_flash(), q[:1], k[:1], v[:1], fmt=fmt, causal=causal, sfu=Recorded(strict=True))
    assert SO.fitted_plans("flash", "bf16", 64, split_kv=True)[:2] == [_flash(combine_exp="cuda"), _flash()]


# ------------------------------------------------------------------------------------------
# the new functions and fields
# ------------------------------------------------------------------------------------------
def test_cuda_expf_structure():
    """__nv_expf with a correctly rounded exp2 standing in for ex2.approx: within 2 ulp of numpy's
    expf on [-20, 5], exact at 0 and -inf (the combine's weights of the max split / an empty split)."""
    x = np.concatenate([np.linspace(-20, 5, 20001, dtype=F32), np.array([0.0, -0.0, -np.inf], F32)])
    ex2 = lambda y: np.exp2(np.asarray(y, np.float64)).astype(F32)  # noqa: E731
    got = R.cuda_expf(x, ex2)
    ref = np.exp(x.astype(np.float64)).astype(F32)
    fin = np.isfinite(x)
    assert np.abs(got[fin].view(np.int32).astype(np.int64) - ref[fin].view(np.int32)).max() <= 2
    assert got[-3] == 1 and got[-2] == 1 and got[-1] == 0


def test_new_fields_default_to_the_earlier_order_and_refuse_the_other_walk():
    old = AP.AttentionPlan(block_n=64, tile=64, domain="log2", exp="numpy")
    assert "rowsum_chunk" not in repr(old) and "combine" not in repr(old)
    for p in (_eff(), _flash()):
        assert AP.attention_plan_from_json(json.loads(json.dumps(p.to_json()))) == p
        assert eval(repr(p), {**vars(P), **vars(AP)}) == p
    assert "32 keys" in _eff().describe()["rowsum"] and "rn(rn(" in _eff().describe()["scores"]
    assert "CUDA logf" in _flash().describe()["combine"]
    for kw in (dict(rowsum_chunk=24), dict(rowsum_chunk=128), dict(block_n=64, rowsum_chunk=-1)):
        with pytest.raises(ValueError):
            dataclasses.replace(_eff(), **kw)
    with pytest.raises(ValueError, match="log2 domain"):
        AP.AttentionPlan(block_n=64, scale_twice=True)
    with pytest.raises(ValueError, match="walk='flash2'"):
        AP.AttentionPlan(block_n=64, domain="log2", exp="numpy", combine_log="cuda")
    with pytest.raises(ValueError, match="combine_exp"):
        dataclasses.replace(_flash(), combine_exp="fast")
    with pytest.raises(ValueError, match="rowsum_chunk"):
        dataclasses.replace(_flash(), rowsum_chunk=32)
