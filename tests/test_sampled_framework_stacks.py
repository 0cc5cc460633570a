"""The compile-mode and framework axes of sampled-text identification (issue 21) on the CPU: the
``compile`` and ``jax`` stack tokens, their refusals, the JAX decode loop (padded static-shape
sequence, head at the last real position) against the torch model and against itself, and the
compiled forward being what the ``compile`` stack runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hspi_kernels.models import prompts, sampled  # noqa: E402

A, J = "fp32.torch.batched", "fp32.jax.batched"


def _jax_or_skip():
    from hspi_kernels.models import jax_llama

    _, _, why = jax_llama.backend("cpu")
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("text", ["bf16.torch.batched.compile", "fp32.sdpa-math.fixed.b8.det.compile",
                                  "bf16.jax.batched", "fp32.jax.b8.ulp+1", "bf16.jax.rowwise"])
def test_new_tokens_round_trip(text):
    s = sampled.Stack.parse(text)
    assert s.name == text and sampled.Stack.parse(s.name) == s


def test_jax_refuses_torch_only_settings():
    assert sampled.Stack.parse("jax.bf16.b4") == sampled.Stack(dtype="bf16", batch="b4", framework="jax")
    for bad in ("fp32.jax.fixed.batched", "fp32.jax.sdpa-math.batched", "fp32.jax.batched.det",
                "fp32.jax.batched.compile"):
        with pytest.raises(ValueError, match="torch settings"):
            sampled.Stack.parse(bad)
    with pytest.raises(ValueError, match="framework"):
        sampled.Stack(framework="tf")


def test_jax_on_an_architecture_it_does_not_implement_is_refused():
    _jax_or_skip()
    with pytest.raises(sampled.StackUnsupported, match="llama architecture"):
        sampled.Platform(J, spec="tiny-gpt2", device="cpu")


def test_jax_without_jax_is_refused_with_the_reason(monkeypatch):
    from hspi_kernels.models import jax_llama

    def broken():
        raise jax_llama.FrameworkUnavailable("JAX is not installed (test)")

    monkeypatch.setattr(jax_llama, "require_jax", broken)
    reason = sampled.unsupported_reason(J, "cpu")
    assert reason and J in reason and "not installed" in reason
    with pytest.raises(sampled.StackUnsupported, match="not installed"):
        sampled.Platform(J, device="cpu")


def test_jax_decode_is_the_torch_model_to_rounding_and_replays_its_generation():
    """The JAX stack's decode (no cache, padded to JAX_BUCKET) gives the torch model's logits to
    fp32 rounding at every step (weights and architecture are the same), its replay of its own
    generation is bit-identical, and its bits differ from torch's somewhere (XLA's kernels: the
    framework axis is observable). A crossing of the padding bucket is included."""
    _jax_or_skip()
    plats = sampled.candidates([A, J])
    n_prompt = sampled.JAX_BUCKET - 3  # prompt + 6 steps cross one bucket boundary
    pr = prompts.random_tokens(3, n_prompt, 512, seed=5)
    toks = plats[J].generate(pr, 6, temperature=0.7, seed=2)
    lj = plats[J].replay(pr, toks)
    assert np.array_equal(lj.view(np.uint32), plats[J].replay(pr, toks).view(np.uint32))
    again = plats[J].generate(pr, 6, temperature=0.7, seed=2)
    assert np.array_equal(again, toks)
    lt = plats[A].replay(pr, toks)
    assert np.allclose(lj, lt, atol=2e-4, rtol=1e-4)
    assert not np.array_equal(lj.view(np.uint32), lt.view(np.uint32))
    # negative control: a decode that ignored the generated tokens would not match the torch replay
    stale = plats[A].replay(pr, np.roll(toks, 1, axis=1))
    assert not np.allclose(lj[:, 1:], stale[:, 1:], atol=1e-3)


def test_jax_chunks_are_separate_batches():
    """b<N> on the jax stack: each chunk its own forward (rows of a chunk equal to the chunk run alone)."""
    _jax_or_skip()
    plats = sampled.candidates(["fp32.jax.b2", "fp32.jax.rowwise"])
    pr = prompts.random_tokens(4, 8, 512, seed=7)
    tok = np.random.default_rng(3).integers(3, 512, size=(4, 2))
    b2 = plats["fp32.jax.b2"].replay(pr, tok)
    alone = np.concatenate([plats["fp32.jax.b2"].replay(pr[i:i + 2], tok[i:i + 2]) for i in (0, 2)])
    assert np.array_equal(b2.view(np.uint32), alone.view(np.uint32))
    assert np.allclose(b2, plats["fp32.jax.rowwise"].replay(pr, tok), atol=2e-4, rtol=1e-4)


def test_compile_stack_runs_the_compiled_forward(monkeypatch):
    """``compile``: the decode goes through torch.compile's wrapper (one per model, shared by the
    platforms of a cache), not the eager module. The wrapper is stubbed here (inductor's CPU
    codegen would compile C++ for minutes in CI); the GPU job measures the real one."""
    calls = []

    def fake_compile(model, **kw):
        def wrapped(*a, **k):
            calls.append(a[0].shape)
            return model(*a, **k)
        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    from hspi_kernels.models import stack as mstack

    monkeypatch.setattr(mstack, "check_setting", lambda axis, setting, device="cpu": None)
    cache: dict = {}
    pc = sampled.Platform("fp32.torch.batched.compile", _models=cache, device="cpu")
    pe = sampled.Platform(A, _models=cache, device="cpu")
    assert pe.forward is pe.model and pc.forward is not pc.model
    pr = prompts.random_tokens(2, 5, 512, seed=1)
    tok = np.array([[7, 9], [11, 13]])
    lc = pc.replay(pr, tok)
    assert [tuple(s) for s in calls] == [(2, 5), (2, 1)]
    assert np.array_equal(lc.view(np.uint32), pe.replay(pr, tok).view(np.uint32))  # the stub is eager
    assert sampled.Platform("fp32.torch.batched.compile", _models=cache, device="cpu").forward is pc.forward


def test_compile_without_a_compiler_is_refused(monkeypatch):
    from hspi_kernels.models import stack as mstack

    monkeypatch.setattr(mstack, "check_setting", lambda axis, setting, device="cpu": "no C++ compiler (test)")
    reason = sampled.unsupported_reason("fp32.torch.batched.compile", "cpu")
    assert reason and "no C++ compiler (test)" in reason
