"""Equivalence classes of inference configurations (EQCs) and how a run applies one.

An :class:`EQC` is a software configuration; the hardware is the platform the run happens on (the
collection's metadata), so a sample's label is ``"<hardware>/<eqc name>"``. Names are dot-joined
tokens, order-free when parsed, defaults filled from :data:`BASELINE`::

    bf16.sdpa.torch.b1              the baseline
    fp32.eager.torch.b8             fp32, eager attention, batch 8
    tf32.sdpa-math.fixed.b1.compile fp32 operands with TF32 GEMMs, math SDPA, fixed-order Triton GEMM, compiled
    bf16.sdpa.torch.b1.fp8          real fp8 GEMMs (torch._scaled_mm) in every linear layer but the head

Axes: dtype (fp64 | fp32 | tf32 | bf16 | fp16), attn (eager | sdpa | sdpa-math | sdpa-flash |
sdpa-efficient | sdpa-cudnn), gemm (torch | fixed), batch (1…), compile, quant (none | fp8 | int8).
``fp64`` exists as the reference for feature extraction, not as a serving configuration.

Low-precision kernels are real kernels, not fake quantisation: fp8 = per-tensor e4m3 weights and
dynamic per-tensor e4m3 activations through ``torch._scaled_mm`` (Hopper+), bf16 out; int8 =
per-output-channel int8 weights and dynamic per-token int8 activations through ``torch._int_mm``
(int32 accumulate), rescaled in fp32, bf16 out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

from hspi_kernels.kernels.triton.torch_override import fixed_order_matmul

__all__ = ["EQC", "BASELINE", "AXES", "parse", "unsupported_reason", "applied", "quantize_linears"]

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16")
ATTNS = ("eager", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
GEMMS = ("torch", "fixed")
QUANTS = ("none", "fp8", "int8")
AXES = ("dtype", "attn", "gemm", "batch", "compile", "quant")


@dataclass(frozen=True, order=True)
class EQC:
    dtype: str = "bf16"
    attn: str = "sdpa"
    gemm: str = "torch"
    batch: int = 1
    compile: bool = False
    quant: str = "none"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        if self.attn not in ATTNS:
            raise ValueError(f"attn {self.attn!r} not in {ATTNS}")
        if self.gemm not in GEMMS:
            raise ValueError(f"gemm {self.gemm!r} not in {GEMMS}")
        if self.quant not in QUANTS:
            raise ValueError(f"quant {self.quant!r} not in {QUANTS}")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            raise ValueError(f"batch must be a positive int, got {self.batch!r}")

    @property
    def name(self) -> str:
        parts = [self.dtype, self.attn, self.gemm, f"b{self.batch}"]
        if self.compile:
            parts.append("compile")
        if self.quant != "none":
            parts.append(self.quant)
        return ".".join(parts)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EQC":
        return cls(**d)

    def differs_from(self, other: "EQC") -> list[str]:
        return [a for a in AXES if getattr(self, a) != getattr(other, a)]

    def replace(self, **kw) -> "EQC":
        return dataclasses.replace(self, **kw)

    @property
    def torch_dtype_name(self) -> str:
        """Parameter/activation dtype of the model copy this EQC runs."""
        return {"fp64": "float64", "fp32": "float32", "tf32": "float32", "bf16": "bfloat16",
                "fp16": "float16"}[self.dtype]


BASELINE = EQC()


def parse(text: str) -> EQC:
    """An EQC from dot-joined tokens in any order; missing axes take the baseline value."""
    kw: dict[str, Any] = {}
    for tok in filter(None, text.strip().split(".")):
        if tok in DTYPES:
            kw["dtype"] = tok
        elif tok in ATTNS:
            kw["attn"] = tok
        elif tok in GEMMS:
            kw["gemm"] = tok
        elif tok in ("fp8", "int8"):
            kw["quant"] = tok
        elif tok == "compile":
            kw["compile"] = True
        elif tok[0] == "b" and tok[1:].isdigit():
            kw["batch"] = int(tok[1:])
        else:
            raise ValueError(f"unknown EQC token {tok!r} in {text!r}")
    return EQC(**kw)


def unsupported_reason(eqc: EQC, device: str, kind: str = "llm") -> str | None:
    """Why this EQC cannot run on ``device`` ("cpu" | "cuda"), or None."""
    import torch

    cuda = device.startswith("cuda")
    if eqc.dtype == "tf32" and not cuda:
        return "tf32 is a CUDA tensor-core mode"
    if eqc.gemm == "fixed" and not cuda:
        return "the fixed-order Triton GEMM override runs on CUDA only"
    if eqc.attn in ("sdpa-efficient", "sdpa-cudnn") and not cuda:
        return f"{eqc.attn} is a CUDA backend"
    if eqc.attn == "sdpa-flash" and cuda and eqc.dtype not in ("bf16", "fp16"):
        return "flash attention on CUDA needs bf16/fp16"
    if eqc.attn == "sdpa-cudnn" and eqc.dtype not in ("bf16", "fp16"):
        return "cuDNN attention needs bf16/fp16"
    if kind == "vision" and eqc.attn not in ("sdpa", "eager"):
        return "vision nets have no attention"
    if eqc.quant == "fp8":
        if not cuda:
            return "fp8 torch._scaled_mm needs a CUDA device"
        if torch.cuda.get_device_capability() < (8, 9):
            return "fp8 torch._scaled_mm needs sm_89+"
    if eqc.quant != "none" and eqc.dtype not in ("bf16", "fp16"):
        return "fp8/int8 linears take bf16/fp16 activations"
    if eqc.quant != "none" and kind == "vision":
        return "quantised kernels are wired for LLM linears only"
    if eqc.compile and not cuda:
        from hspi_kernels.models.stack import check_setting  # one definition of what inductor needs

        return check_setting("compile", "compiled", device)  # inductor's CPU codegen: needs a C++ compiler
    return None


@contextlib.contextmanager
def applied(eqc: EQC, model, device: str, kind: str = "llm") -> Iterator[None]:
    """Global switches of an EQC around a forward: TF32 flags, attention implementation and SDPA
    backend, fixed-order GEMM override. Restores everything on exit."""
    import torch

    stack = contextlib.ExitStack()
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = eqc.dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # pinned: cuDNN's own default is True
    try:
        if kind == "llm":
            impl = "eager" if eqc.attn == "eager" else "sdpa"
            target = getattr(model, "_orig_mod", model)
            if getattr(target.config, "_attn_implementation", None) != impl:
                target.set_attn_implementation(impl)
            if eqc.attn.startswith("sdpa-"):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                backend = {"sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
                           "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                           "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[eqc.attn]
                stack.enter_context(sdpa_kernel([backend]))
        if eqc.gemm == "fixed":
            stack.enter_context(fixed_order_matmul())
        with stack:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------------------------
# real low-precision linears
# --------------------------------------------------------------------------------------------
def _linear_weight(module):
    """(weight [out, in], bias or None) of an nn.Linear or a transformers Conv1D ([in, out])."""
    if type(module).__name__ == "Conv1D":
        return module.weight.t(), module.bias
    return module.weight, module.bias


def _make_quant_linear(module, quant: str):
    import torch

    weight, bias = _linear_weight(module)
    weight = weight.detach()
    out_features, in_features = weight.shape

    class QuantLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = quant
            self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
            w = weight.float()
            if quant == "fp8":
                fmax = torch.finfo(torch.float8_e4m3fn).max
                self.register_buffer("w_scale", (w.abs().amax().clamp(min=1e-12) / fmax).reshape(()))
                self.register_buffer("wq", (w / self.w_scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn))
            else:
                self.register_buffer("w_scale", w.abs().amax(dim=1).clamp(min=1e-12) / 127.0)
                self.register_buffer("wq", torch.round(w / self.w_scale[:, None]).clamp(-127, 127).to(torch.int8))

        def forward(self, x):
            shape = x.shape
            x2 = x.reshape(-1, in_features)
            if self.quant == "fp8":
                fmax = torch.finfo(torch.float8_e4m3fn).max
                xs = (x2.float().abs().amax().clamp(min=1e-12) / fmax).reshape(())
                xq = (x2.float() / xs).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
                y = torch._scaled_mm(xq, self.wq.t(), scale_a=xs, scale_b=self.w_scale, out_dtype=x.dtype)
            else:
                xs = x2.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
                xq = torch.round(x2.float() / xs[:, None]).clamp(-127, 127).to(torch.int8)
                m = xq.shape[0]
                if xq.is_cuda and m <= 16:  # cuBLASLt int8 GEMM needs M > 16: pad with zero rows
                    xq = torch.cat([xq, xq.new_zeros((17 - m, in_features))])
                acc = torch._int_mm(xq, self.wq.t())[:m]
                y = (acc.float() * xs[:, None] * self.w_scale[None, :]).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], out_features)

    return QuantLinear()


def quantize_linears(model, quant: str, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every Linear / Conv1D (but ``skip``) by a real fp8 or int8 GEMM; returns the count."""
    import torch

    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(s in full for s in skip):
                continue
            if isinstance(child, torch.nn.Linear) or type(child).__name__ == "Conv1D":
                setattr(module, child_name, _make_quant_linear(child, quant))
                count += 1
    return count


# --------------------------------------------------------------------------------------------
# presets: each axis alone (baseline elsewhere) and the combinations worth a lattice
# --------------------------------------------------------------------------------------------
def preset(name: str, kind: str = "llm") -> list[EQC]:
    """EQC lists: "cpu" (what a CPU can run), "gpu" (every axis, GPU), "gpu-quick", "vision"."""
    b = BASELINE
    if name == "cpu":
        return [EQC(dtype=d, attn=a, batch=n) for d in ("fp32", "bf16") for a in ("eager", "sdpa")
                for n in (1, 8)]
    if name == "vision":
        return [EQC(dtype=d, batch=n) for d in ("fp32", "tf32", "bf16", "fp16") for n in (1, 8, 32)]
    if name in ("gpu", "gpu-quick"):
        quick = name == "gpu-quick"
        out = [b.replace(dtype=d) for d in ("fp32", "tf32", "bf16", "fp16")]
        out += [b.replace(attn=a) for a in ("eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")]
        batches = (2, 8, 32) if quick else (2, 4, 8, 16, 32, 64)
        out += [b.replace(dtype=d, batch=n) for d in ("bf16", "fp16") for n in batches]
        out += [b.replace(gemm="fixed"), b.replace(gemm="fixed", batch=8)]
        out += [b.replace(compile=True)] + ([] if quick else [b.replace(compile=True, batch=8)])
        out += [b.replace(quant="fp8"), b.replace(quant="int8")]
        if not quick:  # combinations
            out += [b.replace(dtype=d, batch=8) for d in ("fp32", "tf32")]
            out += [b.replace(attn=a, batch=8) for a in ("eager", "sdpa-flash", "sdpa-math")]
            out += [b.replace(dtype="fp16", gemm="fixed"), b.replace(quant="fp8", batch=8),
                    b.replace(quant="int8", batch=8), b.replace(dtype="fp16", compile=True)]
        seen, uniq = set(), []
        for e in out:
            if e not in seen:
                seen.add(e)
                uniq.append(e)
        return uniq
    raise ValueError(f"unknown preset {name!r}: cpu, vision, gpu, gpu-quick")
