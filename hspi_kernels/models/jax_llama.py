"""A llama-architecture forward pass in JAX (XLA CPU/GPU) on the zoo's seeded weights.

Written against the transformers ``LlamaConfig`` / ``Qwen2Config`` of a zoo spec (``arch`` llama or
qwen2, the llama block with q/k/v biases): RMSNorm (fp32 variance, weight times the normalised
activation), rotary embeddings (default rope: ``inv_freq = 1/theta^(2i/D)``, ``cat(freqs, freqs)``,
``rotate_half``), grouped-query causal attention with scale ``1/sqrt(D)``, SiLU-gated MLP, tied head.
The weights are the torch model's parameters (``zoo.build``), copied bit for bit, so any bit
difference in the logits comes from the framework's kernels (XLA's dot, reduce, exp, rsqrt and
fusions), not from the weights.

:func:`forward` is the fp32 model with ``Precision.HIGHEST`` on every dot (the CPU framework axis);
:func:`make_forward` adds the serving knobs the GPU lattice measures (``hspi_kernels.models.gpu_stack``):
bf16 (the transformers bf16 path: RMSNorm and softmax in fp32, rounded to bf16), XLA's default dot
precision vs HIGHEST, per-compilation XLA options (``xla_gpu_enable_triton_gemm``), a device, and
the head at the last position only. Parameters are jit arguments (never constants baked into the
executable).

JAX is optional: :func:`require_jax` raises :class:`FrameworkUnavailable` with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FrameworkUnavailable", "require_jax", "backend", "JAX_ENV", "params_from_torch", "device_params",
           "make_forward", "forward", "compare_logits"]

# set before JAX starts a backend, so XLA shares the GPU with torch (no 75 % preallocation)
JAX_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.35"}


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


def backend(device: str) -> tuple[Any, Any, str | None]:
    """(jax, the jax Device matching the torch-style ``device`` ("cpu" | "cuda[:i]"), None) or
    (None, None, why JAX cannot run there). Sets :data:`JAX_ENV` (unless already set) first."""
    import os

    from hspi_kernels.platform.errors import one_line

    for k, v in JAX_ENV.items():
        os.environ.setdefault(k, v)
    try:
        jax = require_jax()
    except Exception as exc:  # noqa: BLE001 - FrameworkUnavailable or anything a broken jaxlib raises
        return None, None, str(exc).splitlines()[0][:300]
    platform = "gpu" if device.startswith("cuda") else "cpu"
    try:
        devs = jax.devices(platform)
    except Exception as exc:  # noqa: BLE001 - RuntimeError: unknown backend
        try:
            have = sorted({d.platform for d in jax.devices()})
        except Exception:  # noqa: BLE001
            have = ["none"]
        return None, None, (f"JAX {jax.__version__} has no {platform.upper()} backend here (backends: {', '.join(have)}; "
                            f"{one_line(exc)[:160]}); the JAX rows are not run")
    if not devs:
        return None, None, f"JAX {jax.__version__}: no {platform} device"
    idx = 0
    if platform == "gpu" and ":" in device:
        idx = int(device.split(":")[1])
    return jax, devs[min(idx, len(devs) - 1)], None


def params_from_torch(model) -> dict[str, np.ndarray]:
    """{parameter name: fp32 numpy array} with the torch model's exact bits."""
    return {k: v.detach().float().cpu().numpy().copy() for k, v in model.state_dict().items()}


ARCHS = ("llama", "qwen2")  # qwen2: the llama block with q/k/v biases


def _config(model) -> dict[str, Any]:
    c = model.config
    if c.model_type not in ARCHS:
        raise ValueError(f"jax_llama implements the llama architecture ({', '.join(ARCHS)}), not {c.model_type!r}")
    if getattr(c, "use_sliding_window", False):
        raise ValueError("sliding-window attention is not implemented")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only the default rope is implemented, got {rope.get('rope_type')!r}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(layers=c.num_hidden_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                head_dim=head_dim, eps=float(c.rms_norm_eps), theta=float(rope.get("rope_theta", 10000.0)),
                tied=bool(c.tie_word_embeddings))


DTYPES = ("fp32", "bf16")
PRECISIONS = ("highest", "default")

_JITTED: dict[int, Any] = {}


def forward(model, params: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits [B, S, V] (fp32) of the fp32 JAX forward (``precision=HIGHEST`` on every dot) on
    ``tokens`` [B, S] (jit-compiled once per shape; the forward is kept per ``params`` object)."""
    key = id(params)
    if key not in _JITTED or _JITTED[key][0] is not params:
        _JITTED[key] = (params, make_forward(model, params))
    return _JITTED[key][1](tokens)


def device_params(params: dict[str, np.ndarray], dtype: str = "fp32", device=None) -> dict[str, Any]:
    """The parameters as JAX arrays of ``dtype`` ("fp32" | "bf16") on ``device`` (a jax Device; None:
    JAX's default). bf16 from a bf16 torch model is exact (its values are bf16 numbers)."""
    jax = require_jax()
    import jax.numpy as jnp

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    dt = jnp.float32 if dtype == "fp32" else jnp.bfloat16
    return {k: jax.device_put(jnp.asarray(v, dtype=jnp.float32).astype(dt), device) for k, v in params.items()}


def make_forward(model, params, *, dtype: str = "fp32", precision: str = "highest",
                 compiler_options: dict[str, Any] | None = None, device=None, last_only: bool = False,
                 position: bool = False):
    """A function ``tokens [B, S] -> fp32 numpy logits [B, S, V]`` (``[B, 1, V]`` with ``last_only``:
    the head GEMM at M = 1, as ``logits_to_keep=1``), jit-compiled on the first call per shape.
    ``position``: the function is ``(tokens [B, S], pos) -> [B, 1, V]``, the head at column ``pos``
    only (a traced index: one executable per S for every pos; the decode loop of a padded,
    static-shape sequence, :class:`hspi_kernels.models.sampled.JaxDecoder`).

    ``params``: numpy (:func:`params_from_torch`) or :func:`device_params` arrays; ``dtype``: "fp32"
    (every op in fp32) or "bf16" (the transformers bf16 path: bf16 weights and activations, RMSNorm
    and softmax in fp32, rounded to bf16 after); ``precision``: "highest" (``Precision.HIGHEST`` on
    every dot, as ``jax_default_matmul_precision='highest'``) or "default" (XLA's default: on a GPU
    an fp32 dot may use TF32); ``compiler_options``: XLA debug options for this compilation (e.g.
    ``{"xla_gpu_enable_triton_gemm": False}``: cuBLAS for every dot); ``device``: a jax Device."""
    jax = require_jax()
    import jax.numpy as jnp

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    cfg = _config(model)
    dt = jnp.float32 if dtype == "fp32" else jnp.bfloat16
    if any(isinstance(v, np.ndarray) for v in params.values()):
        params = device_params(params, dtype, device)
    H, KV, D, eps = cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["eps"]
    prec = jax.lax.Precision.HIGHEST if precision == "highest" else None

    def run(p, tok, at=None):
        def rms(x, w):
            xf = x.astype(jnp.float32)
            var = jnp.mean(xf * xf, axis=-1, keepdims=True)
            return w * (xf * jax.lax.rsqrt(var + eps)).astype(dt)

        def lin(x, name):
            y = jnp.matmul(x, p[name + ".weight"].T, precision=prec)
            return y + p[name + ".bias"] if name + ".bias" in p else y

        def rotate_half(x):
            return jnp.concatenate([-x[..., D // 2:], x[..., : D // 2]], axis=-1)

        B, S = tok.shape
        x = p["model.embed_tokens.weight"][tok]
        inv_freq = 1.0 / (cfg["theta"] ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D))
        pos = jnp.arange(S, dtype=jnp.float32)
        freqs = jnp.matmul(inv_freq[:, None], pos[None, :], precision=jax.lax.Precision.HIGHEST).T
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb)[None, None].astype(dt), jnp.sin(emb)[None, None].astype(dt)
        mask = jnp.tril(jnp.ones((S, S), dtype=bool))
        for i in range(cfg["layers"]):
            pre = f"model.layers.{i}."
            h = rms(x, p[pre + "input_layernorm.weight"])
            q = lin(h, pre + "self_attn.q_proj").reshape(B, S, H, D).transpose(0, 2, 1, 3)
            k = lin(h, pre + "self_attn.k_proj").reshape(B, S, KV, D).transpose(0, 2, 1, 3)
            v = lin(h, pre + "self_attn.v_proj").reshape(B, S, KV, D).transpose(0, 2, 1, 3)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k, v = jnp.repeat(k, H // KV, axis=1), jnp.repeat(v, H // KV, axis=1)
            s = jnp.matmul(q, k.transpose(0, 1, 3, 2), precision=prec) * jnp.asarray(1.0 / np.sqrt(D), dt)
            s = jnp.where(mask, s, -jnp.inf)
            a = jnp.matmul(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(dt), v, precision=prec)
            a = a.transpose(0, 2, 1, 3).reshape(B, S, H * D)
            x = x + lin(a, pre + "self_attn.o_proj")
            h = rms(x, p[pre + "post_attention_layernorm.weight"])
            g = lin(h, pre + "mlp.gate_proj")
            x = x + lin(jax.nn.silu(g) * lin(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
        if at is not None:
            x = jax.lax.dynamic_slice_in_dim(x, at, 1, axis=1)
        elif last_only:
            x = x[:, -1:]
        x = rms(x, p["model.norm.weight"])
        head = p["model.embed_tokens.weight"] if cfg["tied"] else p["lm_head.weight"]
        return jnp.matmul(x, head.T, precision=prec).astype(jnp.float32)

    jitted = jax.jit(run, compiler_options=dict(compiler_options)) if compiler_options else jax.jit(run)

    def fn(tokens: np.ndarray, pos: int | None = None) -> np.ndarray:
        if position != (pos is not None):
            raise TypeError("make_forward(position=True) takes (tokens, pos); position=False takes (tokens)")
        tok = jax.device_put(jnp.asarray(np.asarray(tokens), dtype=jnp.int32), device)
        if pos is None:
            return np.asarray(jitted(params, tok))
        return np.asarray(jitted(params, tok, jnp.asarray(pos, dtype=jnp.int32)))

    return fn


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
