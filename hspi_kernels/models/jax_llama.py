"""A llama-architecture forward pass in JAX (XLA CPU/GPU) on the zoo's seeded weights.

Written against the transformers ``LlamaConfig`` of a zoo spec (``arch == "llama"``): RMSNorm
(fp32 variance, weight times the normalised activation), rotary embeddings (default rope:
``inv_freq = 1/theta^(2i/D)``, ``cat(freqs, freqs)``, ``rotate_half``), grouped-query causal
attention with scale ``1/sqrt(D)``, SiLU-gated MLP, tied head. The weights are the torch model's
parameters (``zoo.build``), copied bit for bit, so any bit difference in the logits comes from the
framework's kernels (XLA's dot, reduce, exp, rsqrt and fusions), not from the weights.

JAX is optional: :func:`require_jax` raises :class:`FrameworkUnavailable` with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FrameworkUnavailable", "require_jax", "params_from_torch", "forward", "compare_logits"]


class FrameworkUnavailable(RuntimeError):
    """The framework (JAX) cannot run here; the message says why."""


def require_jax():
    try:
        import jax
        import jax.numpy  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken jaxlib
        raise FrameworkUnavailable(f"JAX is not installed or does not import ({type(exc).__name__}: {exc}); "
                                   "`pip install jax[cpu]` enables the framework axis") from exc
    return jax


def params_from_torch(model) -> dict[str, np.ndarray]:
    """{parameter name: fp32 numpy array} with the torch model's exact bits."""
    return {k: v.detach().float().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _config(model) -> dict[str, Any]:
    c = model.config
    if c.model_type != "llama":
        raise ValueError(f"jax_llama implements the llama architecture, not {c.model_type!r}")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only the default rope is implemented, got {rope.get('rope_type')!r}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(layers=c.num_hidden_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                head_dim=head_dim, eps=float(c.rms_norm_eps), theta=float(rope.get("rope_theta", 10000.0)),
                tied=bool(c.tie_word_embeddings))


_JITTED: dict[int, Any] = {}


def forward(model, params: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits [B, S, V] (fp32) of the JAX forward on ``tokens`` [B, S] (jit-compiled once per shape;
    the jitted function is kept per ``params`` object)."""
    jax = require_jax()
    import jax.numpy as jnp

    key = id(params)
    if key not in _JITTED or _JITTED[key][0] is not params:
        _JITTED[key] = (params, _build(model, params))
    return np.asarray(_JITTED[key][1](jnp.asarray(tokens, dtype=jnp.int32)))


def _build(model, params):
    jax = require_jax()
    import jax.numpy as jnp

    cfg = _config(model)
    H, KV, D, eps = cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["eps"]
    p = {k: jnp.asarray(v) for k, v in params.items()}
    hi = jax.lax.Precision.HIGHEST

    def rms(x, w):
        var = jnp.mean(x * x, axis=-1, keepdims=True)
        return w * (x * jax.lax.rsqrt(var + eps))

    def lin(x, name):
        return jnp.matmul(x, p[name].T, precision=hi)

    def rotate_half(x):
        return jnp.concatenate([-x[..., D // 2:], x[..., : D // 2]], axis=-1)

    @jax.jit
    def run(tok):
        B, S = tok.shape
        x = p["model.embed_tokens.weight"][tok]
        inv_freq = 1.0 / (cfg["theta"] ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D))
        pos = jnp.arange(S, dtype=jnp.float32)
        freqs = jnp.matmul(inv_freq[:, None], pos[None, :], precision=hi).T
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb)[None, None], jnp.sin(emb)[None, None]
        mask = jnp.tril(jnp.ones((S, S), dtype=bool))
        for i in range(cfg["layers"]):
            pre = f"model.layers.{i}."
            h = rms(x, p[pre + "input_layernorm.weight"])
            q = lin(h, pre + "self_attn.q_proj.weight").reshape(B, S, H, D).transpose(0, 2, 1, 3)
            k = lin(h, pre + "self_attn.k_proj.weight").reshape(B, S, KV, D).transpose(0, 2, 1, 3)
            v = lin(h, pre + "self_attn.v_proj.weight").reshape(B, S, KV, D).transpose(0, 2, 1, 3)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k, v = jnp.repeat(k, H // KV, axis=1), jnp.repeat(v, H // KV, axis=1)
            s = jnp.matmul(q, k.transpose(0, 1, 3, 2), precision=hi) * (1.0 / np.sqrt(D))
            s = jnp.where(mask, s, -jnp.inf)
            a = jnp.matmul(jax.nn.softmax(s, axis=-1), v, precision=hi)
            a = a.transpose(0, 2, 1, 3).reshape(B, S, H * D)
            x = x + lin(a, pre + "self_attn.o_proj.weight")
            h = rms(x, p[pre + "post_attention_layernorm.weight"])
            g = lin(h, pre + "mlp.gate_proj.weight")
            x = x + lin(jax.nn.silu(g) * lin(h, pre + "mlp.up_proj.weight"), pre + "mlp.down_proj.weight")
        x = rms(x, p["model.norm.weight"])
        head = p["model.embed_tokens.weight"] if cfg["tied"] else p["lm_head.weight"]
        return jnp.matmul(x, head.T, precision=hi)

    return run


def compare_logits(model, tokens: np.ndarray) -> dict[str, Any]:
    """Bits of JAX vs torch (fp32, CPU, eager SDPA) logits on ``tokens``: equal fraction, ULP spread,
    max |diff| relative to the logit scale, and whether the greedy tokens agree."""
    import torch

    params = params_from_torch(model)
    jl = forward(model, params, tokens)
    with torch.no_grad():
        tl = model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
    a, b = jl.view(np.int32).astype(np.int64), tl.view(np.int32).astype(np.int64)
    ulp = np.abs(a - b)
    return {"elements": int(ulp.size), "equal": int(np.count_nonzero(ulp == 0)),
            "max_ulp": int(ulp.max()), "median_ulp": float(np.median(ulp)),
            "max_abs_diff": float(np.abs(jl - tl).max()), "logit_scale": float(np.abs(tl).max()),
            "argmax_agree": int(np.count_nonzero(jl.argmax(-1) == tl.argmax(-1))),
            "positions": int(tl.shape[0] * tl.shape[1])}
