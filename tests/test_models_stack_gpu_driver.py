"""Issue 17: the model-level stack lattice driver (hspi_kernels.models.gpu_stack) on the CPU:
the CPU-runnable axes on tiny-llama, the one-line skips of GPU-only settings, the time box and
the rendering. The GPU run is the H200 record (docs/results/stack/h200_models.*)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hspi_kernels.models import gpu_stack as gs
from hspi_kernels.models import stack as mstack


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gs")
    lines: list[str] = []
    rec = gs.run(out, "tiny-llama", budget_s=600, axes=("attention", "framework", "quant", "gemm"), device="cpu",
                 n_prompts=8, length=8, trials=20, say=lines.append)
    return out, rec, lines


def _independent_logits(attn: str, backend=None) -> np.ndarray:
    """Last-position logits of tiny-llama bf16 for the driver's prompts, computed here without
    the driver (full-sequence forward, no logits_to_keep)."""
    import contextlib

    import torch

    from hspi_kernels.models import prompts, zoo

    model, meta = zoo.build("tiny-llama", 0)
    model = model.to(torch.bfloat16)
    model.set_attn_implementation(attn)
    toks = prompts.random_tokens(8, 8, meta["vocab_size"], seed=10_000)
    ctx = contextlib.nullcontext()
    if backend is not None:
        from torch.nn.attention import sdpa_kernel

        ctx = sdpa_kernel([backend])
    rows = []
    with torch.no_grad(), ctx:
        for p in toks:
            rows.append(model(torch.as_tensor(p[None], dtype=torch.long)).logits[0, -1].float().numpy())
    return np.stack(rows)


def test_cpu_axes_lattice_and_files(cpu_run):
    out, rec, lines = cpu_run
    assert sorted(p.name for p in out.iterdir()) == ["cpu_models.json", "cpu_models.md"]
    on_disk = json.loads((out / "cpu_models.json").read_text())
    assert on_disk["model"] == "tiny-llama" and on_disk["prompts"] == 8
    att = on_disk["axes"]["attention backend (bf16)"]
    ran = {k for k, v in att["settings"].items() if v["status"] == "ok"}
    assert ran == {"sdpa (default dispatch)", "sdpa-math", "eager attention"}
    for s in ran:
        assert att["settings"][s]["repeatable"] is True and len(att["settings"][s]["digests"]) == 8
    # the digests are those of logits computed here independently (eager attention, and SDPA forced to math)
    from hspi_kernels.numerics.bits import digest
    from torch.nn.attention import SDPBackend

    eager = _independent_logits("eager")
    math = _independent_logits("sdpa", SDPBackend.MATH)
    assert att["settings"]["eager attention"]["digests"] == [digest(r) for r in eager]
    assert att["settings"]["sdpa-math"]["digests"] == [digest(r) for r in math]
    # the pair count is the number of prompts whose rows differ in bits, recounted here
    pair = next(p for p in att["pairs"] if {p["a"], p["b"]} == {"sdpa-math", "eager attention"})
    differ = int(sum(not np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(eager, math)))
    assert pair["measured"] and pair["prompts_differ"] == differ
    for p in att["pairs"]:
        if p.get("measured") and p["distinguishable"]:  # repeatable settings: the white-box verifier never errs
            assert p["whitebox"] == 1.0 and 0 < p["whitebox_per_prompt"] <= 1.0
            assert set(p["blackbox"]) == {"1", "4", "8"}  # 32 queries capped at the 8 prompts
        elif p.get("measured"):
            assert p["reason"]
    # unmeasured pairs name the reason of the setting that did not run
    flash = [p for p in att["pairs"] if "sdpa-flash" in (p["a"], p["b"])]
    assert flash and all(not p["measured"] and "CUDA" in p["reason"] for p in flash)


def test_gpu_only_settings_are_one_line_skips(cpu_run):
    _, rec, lines = cpu_run
    q = rec["axes"]["quantization (linears but lm_head)"]["settings"]
    fp8 = [k for k in q if k.startswith("fp8")]
    assert len(fp8) == 5
    for k in fp8:
        assert q[k]["status"] == "skipped" and "CUDA" in q[k]["reason"] and "\n" not in q[k]["reason"]
    assert q["int8 weight-only (dequantised GEMM)"]["status"] == "ok"  # runs anywhere
    g = rec["axes"]["GEMM backend (bf16)"]["settings"]["fixed-order Triton GEMM"]
    assert g["status"] == "skipped" and "CUDA" in g["reason"]
    skip_lines = [ln for ln in lines if "skip" in ln and "fp8" in ln]
    assert len(skip_lines) == 5 and all("Traceback" not in ln and "\n" not in ln for ln in skip_lines)
    assert not any("Traceback" in ln for ln in lines)
    # the baseline runs once and is shared by the axes that contain it
    assert q["bf16 (no quantization)"]["same_run_as"] == "sdpa (default dispatch)"


def test_int8_weight_only_differs_from_bf16(cpu_run):
    _, rec, _ = cpu_run
    pairs = rec["axes"]["quantization (linears but lm_head)"]["pairs"]
    p = next(p for p in pairs if p["a"] == "bf16 (no quantization)" and p["b"].startswith("int8 weight-only"))
    assert p["measured"] and p["distinguishable"] and p["prompts_differ"] == 8  # rounded weights: every prompt


def test_time_budget_cuts_steps(tmp_path):
    lines: list[str] = []
    rec = gs.run(tmp_path, "tiny-llama", budget_s=0.0, axes=("attention",), device="cpu", n_prompts=4, length=4,
                 say=lines.append)
    assert rec["cut"] and rec["cut"][0]["step"] == "model build"
    assert all(s["status"] == "skipped" for s in rec["axes"]["attention backend (bf16)"]["settings"].values())
    md = (tmp_path / "cpu_models.md").read_text()
    assert "model build: time budget" in md


def test_fp8_check_and_cli_errors(tmp_path, capsys):
    assert "CUDA" in mstack.check_setting("quant", "fp8-row-fast", "cpu")
    assert mstack.check_setting("quant", "int8-weight-only", "cpu") is None
    assert "CUDA" in mstack.check_setting("gemm", "fixed", "cpu")
    assert gs.main([str(tmp_path), "--axes", "attention,nonsense", "--model", "tiny-llama"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert gs.main([str(tmp_path), "--model", "no-such-model"]) == 2


def _synthetic_record():
    return {"hardware": "H200", "device": "cuda", "model": "m", "prompts": 8, "length": 4, "trials": 10,
            "budget_s": 300, "total_s": 12.5, "cut": [{"step": "compile mode (bf16) / max", "reason": "time budget: x"}],
            "axes": {"toy axis": {
                "settings": {"A": {"status": "ok", "repeatable": True, "seconds": 1.0,
                                   "kernels": {"launches": 10, "distinct": 3}},
                             "B": {"status": "ok", "repeatable": False, "prompts_not_repeatable": 2, "seconds": 2.0},
                             "C": {"status": "ok", "repeatable": True, "seconds": 1.5},
                             "D": {"status": "skipped", "reason": "needs a unicorn"}},
                "pairs": [{"a": "A", "b": "B", "measured": True, "prompts": 8, "prompts_differ": 3, "distinguishable": True,
                           "whitebox": 1.0, "whitebox_per_prompt": 0.375, "blackbox": {"1": 0.25, "4": 0.5, "8": 0.875}},
                          {"a": "A", "b": "C", "measured": True, "prompts": 8, "prompts_differ": 0,
                           "distinguishable": False, "reason": "the same GPU kernels (10 launches)"},
                          {"a": "A", "b": "D", "measured": False, "reason": "D: needs a unicorn"}],
                "classes": [["A", "C"], ["B"]]}}}


def test_markdown_and_table_render():
    rec = _synthetic_record()
    md = gs.render_markdown(rec)
    assert "| A vs B | yes (3/8) | 100 % (38 %) | 25 % | 50 % | 88 % | |" in md
    assert "| A vs C | no (0/8) | - | - | - | - | the same GPU kernels (10 launches) |" in md
    assert "| B | ok | no (2 prompts) |" in md and "| D | skipped: needs a unicorn |" in md
    assert "- compile mode (bf16) / max: time budget: x" in md
    assert "{A, C}; {B}" in md and "1 pair(s) not measured" in md
    table = gs.render_table(rec).splitlines()
    assert table[0].split() == ["axis", "ok/all", "classes", "dist.", "pairs", "white-box", "bb", "q=32"]
    row = table[1].split()
    assert row[:2] == ["toy", "axis"] and row[2:5] == ["3/4", "2", "1/2"]
    assert "min 100 %" in table[1] and "min 88 %" in table[1]  # white-box; black-box at the largest budget
    assert "1 step(s) cut" in table[-1]


# --------------------------------------------------------------------------------------------
# (b) the memory-efficient SDPA row: K/V expanded with repeat_kv; math / flash / cuDNN unchanged
# --------------------------------------------------------------------------------------------
def test_efficient_row_expands_kv_other_backends_unchanged():
    rows = {s.name: s for s in gs.axis_settings("attention")["attention backend (bf16)"]}
    eff = rows[gs.EFFICIENT_NAME]
    assert "repeat_kv" in gs.EFFICIENT_NAME and eff.repeat_kv and eff.eqc.attn == "sdpa-efficient"
    assert eff.key.endswith("|repeat_kv")
    for name, attn in (("sdpa-math", "sdpa-math"), ("sdpa-flash", "sdpa-flash"), ("sdpa-cudnn", "sdpa-cudnn")):
        assert rows[name].eqc.attn == attn and not rows[name].repeat_kv and "repeat_kv" not in rows[name].key
    assert sum(s.repeat_kv for s in rows.values()) == 1
    # on the CPU there is no memory-efficient kernel at all (with or without GQA): a one-line skip
    assert "CUDA" in mstack.check_setting("attention", "sdpa-efficient", "cpu")


def test_repeat_kv_path_on_cpu(monkeypatch):
    """The code path of the efficient row, run on the CPU through the math kernel: SDPA sees K/V with all
    query heads and no enable_gqa; without repeat_kv it sees the KV heads and enable_gqa=True. Same values."""
    import torch

    from hspi_kernels.models import prompts, zoo
    from hspi_kernels.models.eqc import EQC

    master, meta = zoo.build("tiny-llama", 0)
    models = gs._Models(master, "cpu")
    toks = prompts.random_tokens(2, 8, meta["vocab_size"], seed=10_000)
    seen: list[tuple] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((q.shape[1], k.shape[1], v.shape[1], bool(kw.get("enable_gqa", False))))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    math = EQC().replace(attn="sdpa-math")
    r_gqa, runs_gqa = gs._run_setting(gs.Setting("math", eqc=math), models, toks, "cpu")
    gqa_calls, seen[:] = list(seen), []
    r_rep, runs_rep = gs._run_setting(gs.Setting("math, k/v expanded", eqc=math, repeat_kv=True), models, toks, "cpu")
    rep_calls = list(seen)
    heads, kv = master.config.num_attention_heads, master.config.num_key_value_heads
    assert kv < heads and gqa_calls and rep_calls
    assert set(gqa_calls) == {(heads, kv, kv, True)}
    assert set(rep_calls) == {(heads, heads, heads, False)}
    assert r_gqa["status"] == r_rep["status"] == "ok"
    np.testing.assert_allclose(runs_rep["logits"], runs_gqa["logits"], rtol=0, atol=0.05)
    # the patch is scoped to the setting: afterwards transformers decides GQA again
    from transformers.integrations import sdpa_attention

    k = torch.zeros(1, kv, 4, 16)
    assert sdpa_attention.use_gqa_in_sdpa(None, k, k) is True


# --------------------------------------------------------------------------------------------
# (a) compile: the run order, the recorded compile seconds and inductor knobs, the hard limit
# --------------------------------------------------------------------------------------------
class _FakeCompiled:
    """Stands in for torch.compile's result (the CPU has 2 busy cores): calls the model; the first call
    'compiles' for ``sleep`` seconds."""

    def __init__(self, model, sleep):
        self._orig_mod, self.sleep, self.calls = model, sleep, 0

    def __call__(self, *a, **kw):
        import time

        if self.calls == 0 and self.sleep:
            time.sleep(self.sleep)
        self.calls += 1
        return self._orig_mod(*a, **kw)


def _fake_compile(monkeypatch, sleep_by_mode):
    import torch

    modes: list[str] = []

    def fake(model, dynamic=None, mode=None, **kw):
        assert dynamic is False  # one compiled shape
        modes.append(mode or "default")
        return _FakeCompiled(model, sleep_by_mode.get(mode or "default", 0.0))

    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(mstack, "check_setting",
                        lambda axis, setting, device="cpu", _real=mstack.check_setting:
                        None if axis == "compile" else _real(axis, setting, device))
    return modes


def test_axis_order_puts_unmeasured_first():
    assert gs.AXES[:3] == ("attention", "framework", "compile")
    assert set(gs.AXES) == {"attention", "framework", "compile", "blas", "gemm", "quant"}
    names = [s.name for s in gs.axis_settings("compile")["compile mode (bf16)"]]
    assert names == ["eager", "torch.compile (inductor default)", "torch.compile max-autotune-no-cudagraphs"]


def test_compile_axis_records_seconds_and_knobs(tmp_path, monkeypatch):
    modes = _fake_compile(monkeypatch, {"default": 0.3, "max-autotune-no-cudagraphs": 0.6})
    lines: list[str] = []
    rec = gs.run(tmp_path, "tiny-llama", budget_s=600, axes=("compile", "attention"), device="cpu", n_prompts=4,
                 length=4, trials=10, say=lines.append)
    assert rec["axis_order"] == ["compile", "attention"] and list(rec["axes"])[0] == "compile mode (bf16)"
    sets = rec["axes"]["compile mode (bf16)"]["settings"]
    assert modes == ["default", "max-autotune-no-cudagraphs"]
    for name, lo in (("torch.compile (inductor default)", 0.3), ("torch.compile max-autotune-no-cudagraphs", 0.6)):
        assert sets[name]["status"] == "ok" and sets[name]["compile_s"] >= lo
    mx = sets["torch.compile max-autotune-no-cudagraphs"]["inductor"]
    assert mx["max_autotune"] is True and mx["coordinate_descent_tuning"] is True
    assert "max_autotune_gemm_backends" in mx and "max_autotune_gemm_search_space" in mx
    assert sets["torch.compile (inductor default)"]["inductor"].get("max_autotune") is False
    assert not rec["cut"]
    md = (tmp_path / "cpu_models.md").read_text()
    assert f"(compile {sets['torch.compile max-autotune-no-cudagraphs']['compile_s']} s)" in md


def test_compile_past_its_hard_limit_is_cut_and_the_rest_continues(tmp_path, monkeypatch):
    _fake_compile(monkeypatch, {"default": 30.0})  # would sleep 30 s
    monkeypatch.setattr(gs, "COMPILE_EST_S", {"default": 0.5, "max-autotune-no-cudagraphs": 0.5})
    lines: list[str] = []
    rec = gs.run(tmp_path, "tiny-llama", budget_s=600, axes=("compile",), device="cpu", n_prompts=4, length=4,
                 trials=10, say=lines.append)
    sets = rec["axes"]["compile mode (bf16)"]["settings"]
    d = sets["torch.compile (inductor default)"]
    assert d["status"] == "skipped" and d["reason"].startswith("time budget: compile interrupted at the hard limit of 1 s")
    assert 0.9 <= d["compile_s"] < 10 and d["seconds"] < 10
    assert sets["torch.compile max-autotune-no-cudagraphs"]["status"] == "ok"  # the next setting runs
    assert [c["step"] for c in rec["cut"]] == ["compile mode (bf16) / torch.compile (inductor default)"]
    assert not any("Traceback" in ln for ln in lines)
    pairs = rec["axes"]["compile mode (bf16)"]["pairs"]
    assert any(not p["measured"] and "hard limit" in p["reason"] for p in pairs)


def test_time_budget_estimate_for_max_autotune(tmp_path, monkeypatch):
    """A budget that leaves room for the default compile but not for max-autotune's estimate: cut, listed."""
    _fake_compile(monkeypatch, {})
    monkeypatch.setattr(gs, "COMPILE_EST_S", {"default": 1.0, "max-autotune-no-cudagraphs": 1e4})
    rec = gs.run(tmp_path, "tiny-llama", budget_s=300, axes=("compile",), device="cpu", n_prompts=4, length=4,
                 trials=10, say=lambda _m: None)
    sets = rec["axes"]["compile mode (bf16)"]["settings"]
    assert sets["torch.compile (inductor default)"]["status"] == "ok"
    m = sets["torch.compile max-autotune-no-cudagraphs"]
    assert m["status"] == "skipped" and "estimate 10000 s" in m["reason"]
    assert "torch.compile max-autotune-no-cudagraphs: time budget" in (tmp_path / "cpu_models.md").read_text()


# --------------------------------------------------------------------------------------------
# (c) the JAX rows: run on the CPU (jax[cpu]), a clear skip where JAX or its GPU backend is missing
# --------------------------------------------------------------------------------------------
def test_framework_axis_jax_rows_on_cpu(cpu_run):
    pytest.importorskip("jax")
    import torch

    from hspi_kernels.models import jax_llama, prompts, zoo
    from hspi_kernels.numerics.bits import digest

    _, rec, lines = cpu_run
    bf = rec["axes"]["framework (bf16)"]["settings"]
    fp = rec["axes"]["framework (fp32)"]["settings"]
    assert bf["PyTorch bf16 (eager, sdpa, cuBLAS)"]["same_run_as"] == "sdpa (default dispatch)"
    for name in ("JAX bf16 (XLA defaults)", "JAX bf16, precision=HIGHEST"):
        assert bf[name]["status"] == "ok" and bf[name]["framework"] == "jax" and bf[name]["repeatable"]
        assert bf[name]["compile_s"] > 0 and "cpu" in bf[name]["jax_device"].lower()
        assert bf[name]["jax_dtype"] == "bf16" and bf[name]["compile"] == "jax.jit"
    tg = bf["JAX bf16, xla_gpu_enable_triton_gemm=false"]
    assert tg["status"] == "skipped" and "XLA GPU option" in tg["reason"]
    assert fp["PyTorch fp32 (allow_tf32 off)"]["status"] == "ok"
    assert fp["PyTorch tf32 (allow_tf32 on)"]["status"] == "skipped"
    assert fp["JAX fp32, precision=HIGHEST"]["status"] == "ok"
    # the JAX row's digests are jax_llama's logits on the torch fp32 weights and the driver's prompts
    master, meta = zoo.build("tiny-llama", 0)
    toks = prompts.random_tokens(8, 8, meta["vocab_size"], seed=10_000)
    fn = jax_llama.make_forward(master, jax_llama.params_from_torch(master.to(torch.float32)), dtype="fp32",
                                precision="highest", last_only=True)
    assert fp["JAX fp32, precision=HIGHEST"]["digests"] == [digest(fn(p[None])[0, -1]) for p in toks]
    # torch vs JAX: different bits on some prompt, identified white-box
    for title, a, b in (("framework (bf16)", "PyTorch bf16 (eager, sdpa, cuBLAS)", "JAX bf16 (XLA defaults)"),
                        ("framework (fp32)", "PyTorch fp32 (allow_tf32 off)", "JAX fp32, precision=HIGHEST")):
        pair = next(p for p in rec["axes"][title]["pairs"] if {p["a"], p["b"]} == {a, b})
        assert pair["measured"] and pair["distinguishable"] and pair["whitebox"] == 1.0
    assert rec["jax_env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_jax_without_gpu_backend_is_a_reason(monkeypatch):
    pytest.importorskip("jax")
    import jax

    for k, v in gs.JAX_ENV.items():
        monkeypatch.setenv(k, v)
    try:
        jax.devices("gpu")
        pytest.skip("this machine's JAX has a GPU backend")
    except RuntimeError:
        pass
    s = next(x for x in gs.axis_settings("framework")["framework (bf16)"] if x.jax)
    why = gs._jax_reason(s, "cuda")
    assert "no GPU backend" in why and "\n" not in why and "cpu" in why


def test_jax_missing_rows_skip_and_the_rest_runs(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "jax", None)  # import jax -> ImportError
    lines: list[str] = []
    rec = gs.run(tmp_path, "tiny-llama", budget_s=600, axes=("framework",), device="cpu", n_prompts=4, length=4,
                 trials=10, say=lines.append)
    for title in ("framework (bf16)", "framework (fp32)"):
        for name, s in rec["axes"][title]["settings"].items():
            if name.startswith("JAX"):
                assert s["status"] == "skipped" and "JAX is not installed" in s["reason"]
    assert rec["axes"]["framework (fp32)"]["settings"]["PyTorch fp32 (allow_tf32 off)"]["status"] == "ok"
    assert not any("Traceback" in ln for ln in lines)
