"""The counterfactual map names fused GPU attention by the fitted orders of ``trace.sdpa_orders``
(issue 15): a trace's ``_scaled_dot_product_{flash,cudnn}_attention`` op is reproduced N/N on its
output *and* fp32 log-sum-exp by its backend's fitted plan, with the SFU instructions of the GPU
it ran on (here: the H200 SFU outputs recorded with the capture, tests/data/sdpa_h200, put in
``counterfactual.SFU_SOURCE``; on the GPU itself, ``LiveSfu``). The ops are the H200 captures of
PyTorch's fused backends on zoo attention shapes, wrapped as one-op traces.

Negative controls: an op of one backend holding another backend's outputs is not reproduced (the
outputs agree, the lse does not: the count says by how much), and a GPU trace read where no GPU
runs gets no fitted plan and says why."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.numerics import attention_ref as R
from hspi_kernels.platform import this_cpu
from hspi_kernels.trace import counterfactual as C
from hspi_kernels.trace import coverage as COV
from hspi_kernels.trace import sdpa_orders as SO
from hspi_kernels.trace import tracer as T
from pathlib import Path

DATA = Path(__file__).parent / "data" / "sdpa_h200"
OPS = {"flash": "_scaled_dot_product_flash_attention", "cudnn": "_scaled_dot_product_cudnn_attention",
       "efficient": "_scaled_dot_product_efficient_attention"}


@pytest.fixture(scope="module")
def capture():
    z = np.load(DATA / "cases.npz")
    z4 = np.load(DATA / "sfu_run4_short.npz")
    return z, R.SfuOutputs.from_arrays({k: z4[k] for k in z4.files})


@pytest.fixture
def recorded_sfu(capture):
    C.SFU_SOURCE[0] = capture[1]
    yield capture[1]
    C.SFU_SOURCE[0] = None


def one_op_trace(z, case: str, label: str, data: str) -> tuple[T.Trace, dict]:
    """A GPU trace with one fused op of backend ``label`` whose inputs are the capture's q, k, v of
    ``case`` (batch 1) and whose outputs are backend ``data``'s recorded output and lse."""
    Hq, Hkv, S, D, causal, fmt, _ = SO.CASES[case]
    dt = {"bf16": "bfloat16", "fp16": "float16"}[fmt]
    arrays, ameta, ins = {}, {}, []
    for n in "qkv":
        b = z[f"{case}/{n}"][None]
        arrays[f"a/{n}"], ameta[n] = b, {"fmt": fmt, "rows": None}
        ins.append({"digest": n, "dtype": dt, "shape": list(b.shape)})
    arrays["a/o"], ameta["o"] = z[f"{case}/{data}/out"][None], {"fmt": fmt, "rows": None}
    arrays["a/l"], ameta["l"] = z[f"{case}/{data}/lse"][None], {"fmt": "fp32", "rows": None}
    t = {"tensor": True}
    # flash (q, k, v, dropout_p, is_causal, return_debug_mask); cuDNN / efficient (q, k, v, attn_bias,
    # compute_log_sumexp, dropout_p, is_causal, ...)
    args = [t, t, t, 0.0, causal, False] if label == "flash" else [t, t, t, None, True, 0.0, causal, False]
    op = {"op": OPS[label], "key": f"model.layers.0.self_attn:{OPS[label]}#0", "layer": "layer0", "inputs": ins,
          "outputs": [{"digest": "o", "dtype": dt}, {"digest": "l", "dtype": "float32"}], "args": [args, {}],
          "kernels": [], "aten": f"aten::{OPS[label]}"}
    meta = {"ops": [op], "arrays": ameta, "run": {"device": "cuda"}, "platform": {}, "policy": {"keep": "all"}}
    return T.Trace(meta, arrays), op


@pytest.mark.parametrize("backend", ["flash", "cudnn"])
@pytest.mark.parametrize("case", ["qwen2.5-0.5b", "gpt2-small", "llama-3.2-1b", "gpt2-small.fp16", "int.short"])
def test_fused_op_is_its_backends_fitted_plan(capture, recorded_sfu, case, backend):
    z, _ = capture
    tr, op = one_op_trace(z, case, backend, backend)
    Hq, _, S, D, *_ = SO.CASES[case]
    plans, n, note = C._attention_plans(tr, op, C._input_values(tr, op), 1)
    assert note is None and len(plans) == 1 and plans[0]["fitted"] == backend
    # every output and every lse value of the op, bit for bit
    assert plans[0]["out_equal"] == plans[0]["out_total"] == Hq * S * D
    assert plans[0]["lse_equal"] == plans[0]["lse_total"] == Hq * S
    assert plans[0]["matches"] == plans[0]["total"] == Hq * S * (D + 1)
    # the plan applied as the map applies a side's implementation (the cross replay): N/N again
    res = C._cross("plan", op, op, tr, C._input_values(tr, op), plans[0], tr)
    assert res["n_diff"] == 0 and res["n"] == Hq * S * (D + 1)


@pytest.mark.parametrize("label,data", [("flash", "cudnn"), ("cudnn", "flash"), ("flash", "efficient"),
                                        ("cudnn", "efficient")])
def test_another_backends_bits_are_rejected(capture, recorded_sfu, label, data):
    z, _ = capture
    tr, op = one_op_trace(z, "qwen2.5-0.5b", label, data)
    plans, n, note = C._attention_plans(tr, op, C._input_values(tr, op), 1)
    assert plans == [] and n >= 1 and f"no fitted {label} order" in note
    # the outputs agree with the other backend's, the lse misses rows (measured: 160-171 of 224 equal)
    fit = C.fitted_attention(op, *C._input_values(tr, op)[:3], tr.arrays["a/o"], tr.arrays["a/l"], fmt="bf16",
                             causal=True, scale=None, sfu=recorded_sfu)
    b = fit["best"]
    assert b["out_equal"] == b["out_total"] == 14 * 16 * 64 and 0 < b["lse_equal"] < b["lse_total"] == 14 * 16


def test_no_gpu_no_fitted_plan_and_why(capture, monkeypatch):
    z, _ = capture
    tr, op = one_op_trace(z, "gpt2-small", "flash", "flash")
    monkeypatch.setattr(C, "kernel_replayable", lambda trace: "recorded on cuda (H200), this process has no GPU")
    C.SFU_SOURCE[0] = None
    plans, n, note = C._attention_plans(tr, op, C._input_values(tr, op), 1)
    assert not any(p.get("fitted") for p in plans) and "SFU" in note and "no GPU" in note


def test_lse_layouts_of_the_backends():
    q_shape = (1, 2, 5, 8)
    flat = np.arange(10, dtype=np.uint32).reshape(1, 2, 5)
    assert np.array_equal(C._lse_ref(flat.reshape(1, 2, 5, 1), q_shape), flat)  # cuDNN [B, H, S, 1]
    padded = np.zeros((1, 2, 32), np.uint32)
    padded[..., :5] = flat
    assert np.array_equal(C._lse_ref(padded, q_shape), flat)  # efficient: S padded to 32
    assert C._lse_ref(np.zeros((1, 3, 5), np.uint32), q_shape) is None  # another head count: not the op's


def test_coverage_row_counts_regions_by_plan():
    def region(own, by_plan, other_found, kernel=True):
        return {"key": "k", "own": own, "kernel_reproduces": kernel, "by_plan": by_plan,
                "other_backend": "_scaled_dot_product_cudnn_attention",
                "other_plan": {"found": {"plan": "p", "out_equal": 1, "out_total": 1} if other_found else None},
                "plans": {"note": None if by_plan else "no fitted flash order of 1 reproduces it"},
                "cause": {"category": "attention backend" if own else "equal", "detail": ""}}
    summary = {"ops": 10, "differ": 0, "own": 0, "propagated_only": 0, "unmatched": []}
    regions = [region(True, True, True), region(True, True, False), region(False, True, True), region(True, False, False)]
    row = COV.coverage_row("m", "a vs b", "label", {"summary": summary, "ops": [], "regions": regions})
    assert (row["regions_by_plan"], row["regions_own_both_plans"], row["regions_own"]) == (3, 1, 3)
    assert row["regions_plan_notes"] == ["no fitted flash order of 1 reproduces it"]
    assert "| 3/4 (1) |" in COV.render_table([row], [])
    # a map made before the fitted plans (regions without by_plan): not measured, shown as "-"
    old = [{k: v for k, v in r.items() if k not in ("by_plan", "other_plan")} for r in regions]
    row = COV.coverage_row("m", "a vs b", "label", {"summary": summary, "ops": [], "regions": old})
    assert "regions_by_plan" not in row and "| - |" in COV.render_table([row], [])


def test_other_sides_backend_rerun_is_named_by_its_fitted_plan(capture, recorded_sfu):
    """A region's other side (cuDNN here), re-run on this side's q, k, v, returns an output only:
    it is named by its backend's fitted plan on the output (N/N), and a math other side is not a
    plan question (its decomposed ops are rows of the map). The output alone is a weaker test than
    output and lse (flash's and cuDNN's outputs are equal on these cases); control: one output bit
    flipped is not reproduced, and the closest plan's count says it misses exactly that one."""
    z, _ = capture
    tr, op = one_op_trace(z, "gpt2-small", "flash", "flash")
    x = C._input_values(tr, op)
    got = z["gpt2-small/cudnn/out"][None]
    res = C._other_side_plan(op, OPS["cudnn"], x, got, "bf16", tr)
    assert res["found"]["out_equal"] == res["found"]["out_total"] == 12 * 16 * 64
    assert C._other_side_plan(op, "math (decomposed)", x, got, "bf16", tr) is None
    bad = got.copy()
    bad[0, 3, 7, 5] ^= 1
    res = C._other_side_plan(op, OPS["cudnn"], x, bad, "bf16", tr)
    assert res["found"] is None and res["closest"]["out_equal"] == res["closest"]["out_total"] - 1


# -- CPU traces: torch's CPU flash kernel named by its replay (numerics.attention_cpu) -----------------
@pytest.fixture(scope="module")
def cpu_fused_vs_math():
    kw = dict(dtype="bf16", batch=2, length=16, profile=False)
    return T.run_model("tiny-llama", **kw), T.run_model("tiny-llama", **kw, attn="sdpa-math")


def _cpu_flash_here() -> str:
    from hspi_kernels.numerics import attention_cpu as AC

    return AC.platform_mismatch(this_cpu())


@pytest.mark.skipif(bool(_cpu_flash_here()), reason=_cpu_flash_here() or "measured CPU")
def test_cpu_regions_are_named_by_the_cpu_flash_replay(cpu_fused_vs_math):
    """Math (decomposed) vs torch's CPU flash kernel: both layers' regions diverge on their own, and
    each fused op is reproduced by the CPU replay on every output and lse value (2 x 4 heads x 16
    tokens x (16 + 1)); the row says so. Control: one lse bit of layer 0's recorded op flipped, that
    region is no longer by plan and the note counts the miss."""
    import copy

    a, b = cpu_fused_vs_math
    m = C.counterfactual(a, b)
    assert [x["by_plan"] for x in m["regions"]] == [True, True] and m["summary"]["regions_by_plan"] == 2
    for x in m["regions"]:
        (p,) = x["plans"]["found"]
        assert p["plan"].startswith("attention_cpu.ORDER") and p["matches"] == p["total"] == 2 * 4 * 16 * 17
        assert "attention_cpu.ORDER" in x["cause"]["detail"] and x["other_plan"] is None  # math: ops of the map
    row = COV.coverage_row("tiny-llama", "flash vs math", "label", m)
    assert "| 2/2 (0) |" in COV.render_table([row], [])

    bad = copy.deepcopy(a)
    op0 = [o for o in bad.ops if o["op"] == "_scaled_dot_product_flash_attention_for_cpu"][0]
    key = f"a/{op0['outputs'][1]['digest']}"
    arr = bad.arrays[key].copy()
    arr.reshape(-1)[5] ^= 1
    bad.arrays[key] = arr
    plans, n, note = C._attention_plans(bad, op0, C._input_values(bad, op0), 1)
    assert not any(p.get("kind") == C.CPU_FLASH for p in plans)
    assert "output 2048/2048, lse 127/128" in note


def test_cpu_flash_miss_on_another_cpu_names_the_difference(cpu_fused_vs_math):
    """A CPU trace recorded on a CPU the replay was not measured on (an Intel Xeon with AMX here, as
    its platform record says) whose fused op the replay misses: the note gives the count and how the
    platform differs. Control: the same miss on the measured platform names no platform."""
    import copy

    a, _ = cpu_fused_vs_math
    bad = copy.deepcopy(a)
    op0 = [o for o in bad.ops if o["op"] == "_scaled_dot_product_flash_attention_for_cpu"][0]
    key = f"a/{op0['outputs'][0]['digest']}"
    arr = bad.arrays[key].copy()
    arr.reshape(-1)[3] ^= 1  # never the replay's bits, on any CPU
    bad.arrays[key] = arr
    for platform, named in (({"cpu_vendor": "GenuineIntel", "cpu_model": "Intel(R) Xeon(R) Processor",
                              "cpu_flags": ["avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"],
                              "torch": {"version": "2.13.0+cpu"}}, True),
                            ({"cpu_vendor": "AuthenticAMD", "cpu_model": "AMD EPYC",
                              "cpu_flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"],
                              "torch": {"version": "2.13.0+cpu"}}, False)):
        bad.meta["platform"] = platform
        plans, n, note = C._attention_plans(bad, op0, C._input_values(bad, op0), 1)
        assert not any(p.get("kind") == C.CPU_FLASH for p in plans) and "the CPU flash replay" in note
        assert ("GenuineIntel" in note and "amx_bf16" in note and "not modelled" in note) == named


def test_cross_replay_skips_outputs_whose_dtype_differs(monkeypatch):
    """CPU vs GPU: native_layer_norm returns mean / rstd in bf16 on the CPU and fp32 on CUDA (the
    H200 gpt2 CPU vs GPU map left 25 such ops undetermined). The cross replay compares the outputs
    of equal dtype (the normalised output) and names the others; control: with no output of equal
    dtype the replay is undetermined, not "no divergence"."""
    import ml_dtypes

    y = np.arange(12, dtype=np.float32).reshape(1, 3, 4).astype(ml_dtypes.bfloat16).view(np.uint16)
    mean_bf16 = np.zeros((1, 3, 1), np.uint16)
    arrays = {"a/y": y, "a/m": mean_bf16, "a/r": mean_bf16}
    meta = {"ops": [], "arrays": {"y": {"fmt": "bf16", "rows": None}, "m": {"fmt": "bf16", "rows": None},
                                  "r": {"fmt": "bf16", "rows": None}}, "run": {"device": "cpu"}, "platform": {}}
    other = T.Trace(meta, arrays)
    op_other = {"op": "native_layer_norm", "outputs": [{"digest": "y", "dtype": "bfloat16"},
                                                       {"digest": "m", "dtype": "bfloat16"},
                                                       {"digest": "r", "dtype": "bfloat16"}]}
    op_self = {"op": "native_layer_norm", "outputs": [{"digest": "y2", "dtype": "bfloat16"},
                                                      {"digest": "m2", "dtype": "float32"},
                                                      {"digest": "r2", "dtype": "float32"}]}
    y_diff = y.copy()
    y_diff[0, 1, 2] ^= 1
    monkeypatch.setattr(C, "_run_kernel", lambda op, values, trace=None: [y_diff, np.zeros((1, 3, 1), np.uint32),
                                                                          np.zeros((1, 3, 1), np.uint32)])
    res = C._cross("kernel", op_self, op_other, other, [np.zeros(1)], None, other)
    assert (res["n"], res["n_diff"]) == (12, 1) and len(res["not_compared"]) == 2
    op_self_all = dict(op_self, outputs=[dict(o, dtype="float32") for o in op_self["outputs"]])
    monkeypatch.setattr(C, "_run_kernel", lambda op, values, trace=None: [np.zeros((1, 3, 4), np.uint32),
                                                                          np.zeros((1, 3, 1), np.uint32),
                                                                          np.zeros((1, 3, 1), np.uint32)])
    res = C._cross("kernel", op_self_all, op_other, other, [np.zeros(1)], None, other)
    assert res["n_diff"] is None and "same dtype" in res["note"]


def test_explain_counts_named_regions_as_explained(cpu_fused_vs_math, monkeypatch):
    """The divergence of a math vs flash pair enters through ops of one trace only; once the map
    names every such region, explain lists it as explained (the CLI exits 0), not unexplained.
    Control: a map whose regions are undetermined keeps the "enters through" entry."""
    a, b = cpu_fused_vs_math
    x = C.explain_with_map(a, b)
    assert "2 attention region(s)" in x["explained_regions"] and "all named" in x["explained_regions"]
    if not _cpu_flash_here():  # the replay's own CPU: both fused ops by plan (elsewhere the count is the CPU's)
        assert "2 fused op(s) reproduced by plan" in x["explained_regions"]
    assert not any(u.startswith("divergence enters through") for u in x["unexplained"])
    real = C._region_rows

    def undetermined(*args, **kw):
        return [dict(r, own=None, cause={"category": "undetermined", "detail": "control"}) for r in real(*args, **kw)]

    monkeypatch.setattr(C, "_region_rows", undetermined)
    x = C.explain_with_map(a, b)
    assert "explained_regions" not in x and any(u.startswith("divergence enters through") for u in x["unexplained"])


def _efficient_op_of_plan(lse_layout: str, flip_lse: bool = False) -> tuple[T.Trace, dict, int]:
    """A GPU trace with one ``_scaled_dot_product_efficient_attention`` op whose output and lse are
    a generic candidate order's (``attention_plan.candidates``) on random bf16 q, k, v, the lse
    stored as the efficient kernel stores it (Sq padded to 32) or in another head count."""
    from hspi_kernels.numerics import attention_plan as AP

    H, S, D = 2, 16, 16  # Sq = 16 of a 32-padded lse; the tensor-core chains need 16-key blocks
    rng = np.random.default_rng(7)
    arrays, ameta, ins, vals = {}, {}, [], []
    for n in "qkv":
        bits = C._to_bits(rng.standard_normal((1, H, S, D)).astype(np.float32), "bf16")
        arrays[f"a/{n}"], ameta[n] = bits, {"fmt": "bf16", "rows": None}
        ins.append({"digest": n, "dtype": "bfloat16", "shape": [1, H, S, D]})
    t = {"tensor": True}
    op = {"op": OPS["efficient"], "key": f"model.layers.0.self_attn:{OPS['efficient']}#0", "layer": "layer0",
          "inputs": ins, "outputs": [{"digest": "o", "dtype": "bfloat16"}, {"digest": "l", "dtype": "float32"}],
          "args": [[t, t, t, None, True, 0.0, True, False], {}], "kernels": [],
          "aten": f"aten::{OPS['efficient']}"}
    meta = {"ops": [op], "arrays": ameta, "run": {"device": "cuda"}, "platform": {}, "policy": {"keep": "all"}}
    tr = T.Trace(meta, arrays)
    q, k, v = C._input_values(tr, op)[:3]
    for plan in AP.candidates("bf16", S, causal=True, tensor_core=True):  # the first that runs at this shape
        try:
            o, lse = AP.evaluate_attention(plan, q, k, v, fmt="bf16", causal=True, with_lse=True)
            break
        except ValueError:
            continue
    lbits = C._to_bits(lse, "fp32").astype(np.uint32)
    if lse_layout == "padded":
        stored = np.zeros((1, H, 32), np.uint32)
        stored[..., :S] = lbits
    else:  # one head too many: the layout of no backend
        stored = np.zeros((1, H + 1, S), np.uint32)
        stored[:, :H] = lbits
    if flip_lse:
        stored.reshape(-1)[1] ^= 1
    arrays["a/o"], ameta["o"] = C._to_bits(o, "bf16"), {"fmt": "bf16", "rows": None}
    arrays["a/l"], ameta["l"] = stored, {"fmt": "fp32", "rows": None}
    return tr, op, H * S


@pytest.mark.parametrize("layout,flip,found", [("padded", False, True), ("padded", True, False),
                                               ("heads", False, False)])
def test_generic_orders_count_the_efficient_lse_in_its_layout(monkeypatch, layout, flip, found):
    """Where the fitted orders cannot run (no SFU), the generic candidate loop counts a padded
    efficient lse on its Sq values (it compared the raw padded array before). Controls: one lse bit
    flipped, and an lse in a layout of no backend, are not called reproduced."""
    monkeypatch.setattr(C, "kernel_replayable", lambda trace: "recorded on cuda, this process has no GPU")
    C.SFU_SOURCE[0] = None
    tr, op, n_lse = _efficient_op_of_plan(layout, flip)
    plans, n, note = C._attention_plans(tr, op, C._input_values(tr, op), 1)
    assert n >= 1
    if found:
        (p,) = plans
        assert p["lse_equal"] == p["lse_total"] == n_lse and p["out_equal"] == p["out_total"] == n_lse * 16
    else:
        assert plans == [] and "SFU" in note
