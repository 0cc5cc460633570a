"""Eager vs torch.compile per module (trace.compiled): on the CPU with inductor's C++ codegen, every
own divergence of the tiny llama is found and explained N/N by an eager re-run that changes one
thing, with negative controls; bad input gives a clear error."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hspi_kernels.trace import compiled as TC  # noqa: E402


@pytest.fixture(scope="module")
def llama_map():
    return TC.compile_map("tiny-llama", dtype="bf16", length=16)


def test_compile_map_finds_and_explains_the_fusions(llama_map):
    rec = llama_map
    assert rec["logits_equal"] < rec["logits_total"]  # compiled and eager logits differ
    own = {r["module"]: r for r in rec["modules"] if r["own"]}
    kinds = {r["kind"] for r in own.values()}
    assert {"mlp", "self_attn"} <= kinds
    for r in own.values():
        assert r["equal"] < r["total"]
        assert not r["cause"].startswith("undetermined"), r
        hit = [h for h in r["hypotheses"] if h["hypothesis"] == r["cause"]]
        assert hit and hit[0]["equal"] == hit[0]["total"]
    # the norms compile to one fused kernel but keep the eager bits (HF's RMSNorm already runs in fp32)
    norms = [r for r in rec["modules"] if r["kind"] == "input_layernorm"]
    assert norms and all(not r["own"] for r in norms)
    assert any("cpp_fused" in k for r in norms for k in r["kernels"])
    assert rec["summary"]["own"] == rec["summary"]["explained"] == len(own)


def test_hypotheses_reject_the_eager_bits():
    """Negative control: fed the module's own eager output as the 'compiled' one, no hypothesis
    claims N/N (they are not the eager order in disguise)."""
    from hspi_kernels.models import prompts, zoo

    model, _ = zoo.build("tiny-llama", 0)
    model = model.to(torch.bfloat16).eval()
    mlp = model.model.layers[0].mlp
    x = torch.as_tensor(prompts.random_tokens(1, 16, 64, seed=1)).float().reshape(1, 16, 1)
    x = (x.expand(1, 16, model.config.hidden_size) / 7.0 - 3.0).sin().to(torch.bfloat16)
    with torch.no_grad():
        eager = mlp(x)
    hyp = TC._hypotheses(torch, "mlp", mlp, (x,), {}, eager)
    assert hyp and all(e < n for _, e, n in hyp)


def test_cli_bad_input(tmp_path, capsys):
    assert TC.main([str(tmp_path / "o"), "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert TC.main([str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_render_and_json(llama_map, tmp_path):
    md = TC.render(llama_map)
    assert "own divergences" in md and "fused activation" in md
    json.dumps(llama_map, default=str)


def test_cli_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert TC.main([str(tmp_path / "o"), "--model", "tiny-llama", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("compile map: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
