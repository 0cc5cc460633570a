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
    rec = gs.run(out, "tiny-llama", budget_s=600, axes=("attention", "quant", "gemm"), device="cpu",
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
