"""Issue 17: software-stack probes, inference of stack settings from a fingerprint, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hspi_kernels.identify.stack import AXES, format_stack, infer_stack
from hspi_kernels.models import stack as mstack
from hspi_kernels.numerics.plans import BlockTree, Sequential, Strided
from hspi_kernels.probes import catalog, runner
from hspi_kernels.probes import stack as pstack
from hspi_kernels.probes.registry import ProbeUnsupported


def test_stack_probes_registered_and_gpu_ones_skip_with_reason():
    ids = {p.id for p in catalog.all_probes("all")}
    for members in AXES.values():
        for _, pid in members:
            assert pid in ids, pid
    gpu = [p for p in catalog.all_probes("all") if p.family.startswith("stack") and p.backend == "torch-cuda"]
    assert len(gpu) >= 15
    import torch

    if not torch.cuda.is_available():
        rec = runner.run_probe(catalog.get("torch-cuda/scaled-mm/e4m3/16x4096x4096/tensor-fast"))
        assert rec["status"] == "skipped" and "CUDA" in rec["reason"]


def test_jax_missing_is_a_clear_skip(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax -> ImportError
    with pytest.raises(ProbeUnsupported, match="JAX is not installed"):
        pstack.jax_or_unsupported()
    rec = runner.run_probe(catalog.get("jax-cpu/sum/fp32/64x4097"))
    assert rec["status"] == "skipped" and "jax[cpu]" in rec["reason"]
    assert "JAX is not installed" in mstack.check_setting("framework", "jax")
    # the rest of a run continues: a torch-cpu probe after it is fine
    assert runner.run_probe(catalog.get("torch-cpu/sum/fp32/64x4097"))["status"] == "ok"


def test_check_setting_messages():
    assert "CUDA" in mstack.check_setting("quant", "fp8", "cpu")
    assert "CUDA" in mstack.check_setting("attention", "sdpa-flash", "cpu")
    assert mstack.check_setting("quant", "fp8", "cuda") is None
    assert mstack.check_setting("compile", "eager", "cpu") is None


def _rec(pid, digest, status="ok", **kw):
    return {"id": pid, "status": status, "digest": digest, **kw}


def test_infer_stack_verdicts_and_references():
    c = AXES["compile (CPU inductor)"]
    f = AXES["framework (CPU)"]
    fp = {"probes": [_rec(c[0][1], "a"), _rec(c[1][1], "b", explained_by=[{"repr": "P", "matches": 64, "total": 64}]),
                     _rec(f[0][1], "x"), _rec(f[1][1], "x"),
                     _rec(AXES["preferred_blas_library"][0][1], None, "skipped", reason="no usable CUDA device")]}
    ref = {"probes": [_rec(c[1][1], "b"), _rec(c[0][1], "zzz")]}
    out = {e["axis"]: e for e in infer_stack(fp, [("REF", ref)])}
    comp = out["compile (CPU inductor)"]
    assert comp["distinguishable"] is True and comp["pairs"][0]["distinguishable"] is True
    assert comp["pairs"][0]["evidence"][1]["same_as_references"] == ["REF"]
    assert comp["pairs"][0]["evidence"][0]["same_as_references"] == []
    assert comp["pairs"][1]["distinguishable"] is None  # not in the fingerprint
    assert out["framework (CPU)"]["distinguishable"] is False  # control: equal digests -> indistinguishable
    blas = out["preferred_blas_library"]
    assert blas["distinguishable"] is None and "no usable CUDA device" in blas["summary"]
    text = format_stack(infer_stack(fp))
    assert "P: 64/64" in text and "compile (CPU inductor)" in text


def test_identification_counts_synthetic():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 50)).astype(np.float32)
    b = a.copy()
    b[::2, 0] = np.nextafter(b[::2, 0], np.float32(np.inf))  # half the prompts differ, in the top logit? maybe
    r = mstack.identification({"A": a, "B": b}, {"A": a.copy(), "B": b.copy()}, queries=4, trials=20)
    assert r["whitebox"]["right"] == 6  # the 3 differing prompts, both sides; equal prompts are ties
    same = mstack.identification({"A": a, "B": a}, {"A": a, "B": a}, queries=4, trials=10)
    assert same["whitebox"]["right"] == 0 and same["blackbox"]["right"] == 0  # negative control


def test_inductor_cpu_sum_plan_replays_compiled_bits():
    """torch.compile's fused square+sum is Strided(L, Sequential, BlockTree(L)) N/N; eager differs;
    a wrong lane count is rejected (negative control)."""
    if mstack.check_setting("compile", "compiled") is not None:
        pytest.skip(mstack.check_setting("compile", "compiled"))
    probe = catalog.get("torch-inductor-cpu/sumsq-compiled/fp32/64x4097")
    rec = runner.run_probe(probe)
    if rec["status"] == "skipped":
        pytest.skip(rec["reason"])
    (entry,) = rec["explained_by"]
    assert entry["matches"] == entry["total"] == 64
    lanes = pstack.inductor_cpu_lanes()
    wrong = Strided(max(2, lanes // 2), Sequential("fp32"), BlockTree(max(2, lanes // 2)))
    out = probe.run()
    assert np.count_nonzero(probe.plan_eval(wrong.to_json()).view(np.uint32) != out.view(np.uint32)) > 0
    eager = runner.run_probe(catalog.get("torch-cpu/sumsq-eager/fp32/64x4097"))
    assert eager["digest"] != rec["digest"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])  # qwen2: the llama block with q/k/v biases
def test_jax_llama_matches_torch_to_rounding(name):
    pytest.importorskip("jax")
    from hspi_kernels.models import jax_llama, zoo

    model, _ = zoo.build(name, 0)
    model.set_attn_implementation("eager")
    tokens = np.random.default_rng(3).integers(3, 512, size=(1, 8))
    r = jax_llama.compare_logits(model, tokens)
    assert r["max_abs_diff"] < 1e-4 * r["logit_scale"]  # the same model ...
    assert r["argmax_agree"] == r["positions"]
    assert r["equal"] < r["elements"]  # ... with different bits (XLA's kernels)


def test_jax_llama_bf16_serving_knobs():
    pytest.importorskip("jax")
    import torch

    from hspi_kernels.models import jax_llama, zoo

    model, _ = zoo.build("tiny-qwen2", 0)
    model = model.to(torch.bfloat16)
    model.set_attn_implementation("eager")
    tokens = np.random.default_rng(4).integers(3, 512, size=(1, 8))
    params = jax_llama.params_from_torch(model)
    full = jax_llama.make_forward(model, params, dtype="bf16", precision="default")(tokens)
    last = jax_llama.make_forward(model, jax_llama.device_params(params, "bf16"), dtype="bf16",
                                  precision="default", last_only=True)(tokens)
    assert full.shape == (1, 8, 512) and last.shape == (1, 1, 512) and last.dtype == np.float32
    with torch.no_grad():
        ref = model(torch.as_tensor(tokens)).logits[0, -1].float().numpy()
    # bf16 logits: within a few bf16 steps of torch's bf16 forward, the same greedy token
    assert np.abs(last[0, -1] - ref).max() < 0.05 * np.abs(ref).max()
    assert last[0, -1].argmax() == ref.argmax()
    assert np.array_equal(np.asarray(last[0, -1], np.float32).view(np.uint32) & 0xFFFF, np.zeros(512, np.uint32))
    with pytest.raises(ValueError, match="precision"):
        jax_llama.make_forward(model, params, precision="tf32")


def test_jax_llama_refuses_other_architectures():
    pytest.importorskip("jax")
    from hspi_kernels.models import jax_llama, zoo

    model, _ = zoo.build("tiny-gpt2", 0)
    with pytest.raises(ValueError, match="llama architecture"):
        jax_llama.forward(model, jax_llama.params_from_torch(model), np.zeros((1, 4), dtype=np.int64))


@pytest.mark.slow
def test_cpu_model_axes_identify_on_held_out_prompts():
    r = mstack.run_cpu_axes("tiny-llama", n_prompts=8)
    for axis in ("compile", "framework"):
        a = r["axes"][axis]
        if "skipped" in a:
            continue
        assert all(a["repeatable"].values())
        assert a["whitebox"]["accuracy"] == 1.0 and a["blackbox"]["accuracy"] == 1.0


def test_compile_eqc_collects_on_cpu_and_differs_from_eager(monkeypatch):
    """`hspi model collect` runs a compile EQC on the CPU (inductor CPU codegen) where a C++
    compiler exists: the compiled run repeats bit for bit and differs from eager on the tiny
    model; without a compiler the EQC is skipped with the reason."""
    import shutil

    from hspi_kernels.models import collect as mc
    from hspi_kernels.models import eqc as meqc

    compiled = meqc.parse("fp32.sdpa.b1.compile")
    if mstack.check_setting("compile", "compiled") is not None:
        pytest.skip(mstack.check_setting("compile", "compiled"))
    assert meqc.unsupported_reason(compiled, "cpu") is None
    import torch

    torch.manual_seed(0)
    runner = mc.Runner("tiny-llama", device="cpu", slice_size=64, topk=20)
    inputs = mc.make_inputs(runner, n_random=4, n_text=0, length=8)
    coll = mc.collect(runner, ["fp32.sdpa.b1", "fp32.sdpa.b1.compile"], inputs)
    eager, comp = coll.runs()
    assert comp.record["deterministic"] and eager.record["deterministic"]
    a, b = eager.get("logprobs_slice"), comp.get("logprobs_slice")
    assert a.shape == b.shape and not np.array_equal(a.view(np.uint32), b.view(np.uint32))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in meqc.unsupported_reason(compiled, "cpu")
