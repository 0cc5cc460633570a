"""Opt-in override of ``aten::mm`` / ``aten::addmm`` / ``aten::bmm`` on CUDA tensors by the
fixed-order Triton GEMM (:mod:`.gemm`), so that a whole model runs with one known, batch-invariant
matmul order::

    with fixed_order_matmul():
        logits = model(tokens)

Nothing is registered at import: the ``torch.library`` registrations live only inside the context
manager (and are removed on exit, also on error). Inside it, for CUDA fp32/bf16/fp16 operands:

- ``mm(a, b)`` = ``gemm.matmul(a, b, config)`` (fp32 accumulate, K in order, RNE to the dtype);
- ``addmm(bias, a, b, beta, alpha)`` = ``dtype(beta * bias + alpha * fp32(mm))``, the epilogue in
  fp32 torch elementwise ops (each element on its own: batch-invariant), ``beta == 0`` ignores bias;
- ``bmm`` = one ``mm`` per batch entry (same order per entry).

Other dtypes fall back to torch's own ``*.out`` kernels (not overridden). Configurations come
from ``gemm.matmul``'s shape rule (``gemm.shape_config``: the fixed M table; same per-output order) unless ``configs`` maps a format ("fp32", "bf16", "fp16") to a
GemmConfig; split-K with the atomic combine is refused (nondeterministic).
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from . import gemm

__all__ = ["fixed_order_matmul", "active"]

_lock = threading.Lock()
_depth = 0


def active() -> bool:
    """Whether a fixed_order_matmul() context is open (in any thread)."""
    return _depth > 0


@contextlib.contextmanager
def fixed_order_matmul(configs: dict | None = None, *, dispatch_key: str = "CUDA"):
    """Route CUDA ``aten::mm``, ``aten::addmm``, ``aten::bmm`` through the fixed-order GEMM while
    the context is open. ``configs``: optional {"fp32" | "bf16" | "fp16": GemmConfig}.
    ``dispatch_key``: "CUDA"; the CPU tests use "CPU" with the Triton interpreter."""
    global _depth
    import torch

    gemm.require_triton()
    configs = dict(configs or {})
    for fmt, config in configs.items():
        if not config.deterministic:
            raise ValueError(f"fixed_order_matmul: config for {fmt} is nondeterministic (atomic split-K)")
    formats = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

    def config_for(dtype):
        # None: matmul's own shape rule (gemm.shape_config, with its persistent-TMA check)
        return configs.get(formats[dtype])

    def supported(*tensors) -> bool:
        return all(t.dtype in formats and t.dtype == tensors[0].dtype for t in tensors)

    def as_gemm_operand(t):
        # the kernel takes row- or column-major operands; anything else is copied (same values)
        return t if (1 in t.stride() or t.numel() <= 1) else t.contiguous()

    def mm(a, b):
        if not supported(a, b):
            out = torch.empty((a.shape[0], b.shape[1]), dtype=torch.result_type(a, b), device=a.device)
            return torch.ops.aten.mm.out(a, b, out=out)
        return gemm.matmul(as_gemm_operand(a), as_gemm_operand(b), config_for(a.dtype))

    def addmm(bias, a, b, *, beta=1, alpha=1):
        if not supported(bias, a, b):
            out = torch.empty((a.shape[0], b.shape[1]), dtype=torch.result_type(a, b), device=a.device)
            return torch.ops.aten.addmm.out(bias, a, b, beta=beta, alpha=alpha, out=out)
        acc = gemm.matmul(as_gemm_operand(a), as_gemm_operand(b), config_for(a.dtype), out_dtype=torch.float32)
        if alpha != 1:
            acc = acc * alpha
        if beta != 0:
            acc = acc + (bias.float() * beta if beta != 1 else bias.float())
        return acc.to(a.dtype)

    def bmm(a, b):
        if not supported(a, b):
            out = torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.result_type(a, b), device=a.device)
            return torch.ops.aten.bmm.out(a, b, out=out)
        out = torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=a.dtype, device=a.device)
        config = config_for(a.dtype)
        for i in range(a.shape[0]):
            gemm.matmul(as_gemm_operand(a[i]), as_gemm_operand(b[i]), config, out=out[i])
        return out

    lib = torch.library.Library("aten", "IMPL")
    with _lock:
        _depth += 1
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel" is the point
            warnings.simplefilter("ignore", UserWarning)
            lib.impl("mm", mm, dispatch_key)
            lib.impl("addmm", addmm, dispatch_key)
            lib.impl("bmm", bmm, dispatch_key)
        yield
    finally:
        lib._destroy()
        with _lock:
            _depth -= 1
