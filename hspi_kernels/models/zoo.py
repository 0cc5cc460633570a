"""The model zoo: LLM architectures at real sizes (from transformers configs) and vision nets, each
with seeded weights that are the same bits on every machine (no downloads, ever).

Weights: parameters are visited in sorted name order and each is filled on the CPU in fp32 from
its own ``torch.Generator`` seeded with ``seed`` and the xxh32 of its name, so the values depend
neither on the library's init order nor on the device; then the model is cast and moved. Norm
weights are 1, everything else is N(0, std) (biases too, so bias adds take part in the rounding).

A local checkpoint (``build_llm("path/to/dir")``) is loaded offline (``local_files_only``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from hspi_kernels.models import vision

__all__ = ["ModelSpec", "SPECS", "MODELS_EXTRA", "MissingDependency", "get_spec", "require", "build", "seed_parameters",
           "vision_source"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "llm" | "vision"
    arch: str  # transformers model_type, or "resnet18" / "mobilenet_v2"
    config: dict[str, Any] = field(default_factory=dict)
    std: float = 0.02
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "arch": self.arch, "config": dict(self.config),
                "std": self.std, "note": self.note}


_LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                 rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                  "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192},
                 bos_token_id=128000, eos_token_id=128001)
_QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                 bos_token_id=151643, eos_token_id=151643)
_GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024,
                   bos_token_id=50256, eos_token_id=50256)

SPECS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("llama-3.2-1b", "llm", "llama", _LLAMA_1B, note="Llama-3.2-1B architecture, seeded weights"),
    ModelSpec("qwen2.5-0.5b", "llm", "qwen2", _QWEN_05B, note="Qwen2.5-0.5B architecture, seeded weights"),
    ModelSpec("gpt2-small", "llm", "gpt2", _GPT2_SMALL, note="GPT-2 small (124M) architecture, seeded weights"),
    # tiny variants for CPU tests: same code paths (GQA, RoPE, tied head, biases), toy sizes
    ModelSpec("tiny-llama", "llm", "llama",
              dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2), std=0.08),
    ModelSpec("tiny-qwen2", "llm", "qwen2",
              dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2), std=0.08),
    ModelSpec("tiny-gpt2", "llm", "gpt2",
              dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=256,
                   bos_token_id=1, eos_token_id=2), std=0.08),
    ModelSpec("resnet18", "vision", "resnet18", dict(num_classes=1000, image_size=224, width=64)),
    ModelSpec("mobilenet_v2", "vision", "mobilenet_v2", dict(num_classes=1000, image_size=224, width_mult=1.0)),
    ModelSpec("tiny-resnet", "vision", "resnet18", dict(num_classes=10, image_size=32, width=8)),
    ModelSpec("tiny-mobilenet", "vision", "mobilenet_v2", dict(num_classes=10, image_size=32, width_mult=0.25)),
]}


def get_spec(name: str) -> ModelSpec:
    """A zoo spec by name, or a spec for a local checkpoint directory."""
    if name in SPECS:
        return SPECS[name]
    if Path(name).is_dir():
        return ModelSpec(str(Path(name).resolve()), "llm", "local", note="local checkpoint (offline)")
    raise ValueError(f"unknown model {name!r}: expected one of {sorted(SPECS)} or a local checkpoint directory")


MODELS_EXTRA = "pip install 'hspi_kernels[models]'"


class MissingDependency(RuntimeError):
    """An optional package a model job needs is not installed (the message names the extra)."""


def require(spec: ModelSpec | str) -> ModelSpec:
    """The spec, after checking that what builds it imports: torch, and transformers for LLMs.
    ValueError for an unknown model, :class:`MissingDependency` naming the install command."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(f"model {spec.name} needs torch, which is not importable ({exc}); install torch "
                                f"first, then {MODELS_EXTRA}") from None
    if spec.kind == "llm":
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            raise MissingDependency(f"model {spec.name} needs transformers, which is not importable ({exc}): "
                                    f"{MODELS_EXTRA}") from None
    return spec


def _param_seed(seed: int, name: str) -> int:
    return (seed * 0x9E3779B1 + xxhash.xxh32_intdigest(name.encode())) & 0x7FFFFFFFFFFFFFFF


def seed_parameters(model, seed: int, std: float) -> None:
    """Overwrite every parameter (and float buffer that is a running statistic) with seeded values."""
    import torch

    norm_params = {id(p) for m in model.modules() if "Norm" in type(m).__name__
                   for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            g = torch.Generator().manual_seed(_param_seed(seed, name))
            if id(p) in norm_params:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                # fan-in scaling for conv kernels keeps activations O(1) through deep vision nets
                s = std if p.ndim <= 2 else (2.0 / max(1, p[0].numel())) ** 0.5
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * s)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)


def _from_config_fast(auto_cls, config):
    """from_config without the library's random init (every parameter is overwritten anyway),
    with the tied head re-tied; falls back to the plain path when the result is not as expected."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        no_init_weights = None
    if no_init_weights is not None:
        with no_init_weights():
            model = auto_cls.from_config(config, attn_implementation="sdpa")
        model.tie_weights()
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        tied = head is not None and head.weight is emb.weight
        if tied == bool(getattr(config, "tie_word_embeddings", False)):
            return model
    return auto_cls.from_config(config, attn_implementation="sdpa")


def vision_source() -> str:
    """'torchvision' when it imports cleanly (GPU machines), else 'hspi' (our own definitions)."""
    try:
        import torchvision.models  # noqa: F401
    except Exception:
        return "hspi"
    return "torchvision"


def build(spec: ModelSpec | str, seed: int = 0, *, vision_impl: str = "auto"):
    """(model in fp32 on CPU, eval mode, seeded; metadata dict)."""
    spec = require(spec)
    import torch

    meta: dict[str, Any] = {"spec": spec.to_json(), "seed": seed}
    if spec.kind == "llm":
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        meta["transformers"] = transformers.__version__
        if spec.arch == "local":
            model = AutoModelForCausalLM.from_pretrained(spec.name, local_files_only=True,
                                                         dtype=torch.float32, attn_implementation="sdpa")
            meta["weights"] = "checkpoint"
        else:
            config = AutoConfig.for_model(spec.arch, **spec.config)
            model = _from_config_fast(AutoModelForCausalLM, config)
            model.to(torch.float32)
            seed_parameters(model, seed, spec.std)
            meta["weights"] = f"seeded normal(0, {spec.std}) per parameter"
        meta["vocab_size"] = int(model.config.vocab_size)
    else:
        impl = vision_source() if vision_impl == "auto" else vision_impl
        model = vision.build(spec.arch, impl=impl, **spec.config)
        seed_parameters(model, seed, spec.std)
        meta["vision_impl"] = impl
        meta["num_classes"] = spec.config["num_classes"]
        meta["image_size"] = spec.config["image_size"]
    meta["n_params"] = int(sum(p.numel() for p in model.parameters()))
    model.eval()
    return model, meta
