"""Revelation: recover how a black-box op or a tensor-core unit does its arithmetic.

- :mod:`.order`    the summation order of a black-box reduction or GEMM as a plan (FPRev-style
                   masking; for cuBLAS the K chunking, split-K factor, part bounds and combine
                   order), replayed bit for bit before it is reported (``hspi reveal``);
- :mod:`.card`     a tensor-core numerics card: block-model parameters from feature tests and a
                   closed-loop fit (``hspi card``);
- :mod:`.fp8`      the plan of an fp8 GEMM (``torch._scaled_mm``, Triton fp8): wgmma fp8 block,
                   fp32 promotion interval, split-K and epilogue, found by replay (fp8 inputs
                   cannot carry masking values);
- :mod:`.targets`  the paths a card can be taken on (emulated presets, our kernels, cuBLAS,
                   Triton) and the operand generators they share.

Nothing here imports torch at package import time.
"""

from __future__ import annotations

__all__ = ["order", "card", "fp8", "targets"]
