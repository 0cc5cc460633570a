"""Attention forward with an online softmax (``csrc/cuda/attention/flash_fwd.cu``): wrapper and
the order it implements (:func:`plan`; replayed bit for bit by
:func:`hspi_kernels.numerics.attention_ref.replay`).

``O = softmax(Q·Kᵀ·scale)·V`` per (batch·head, query row); Q [BH, Sq, D] (or [B, H, Sq, D]),
K, V [BH, Sk, D]; bf16 or fp16 (torch ``bfloat16`` / ``float16``; CuPy ``float16``, or
``uint16`` / ``int16`` bits with ``fmt=``); O is float32 of Q's leading shape. One warp per 16
query rows, mma.sync m16n8k16 for Q·Kᵀ and P·V, KV blocks of ``block_n`` keys, ``splits``
contiguous KV parts combined in a fixed order, ``causal`` top-left (key j visible to query i iff
j <= i).

``mode="exact"``: exp is a fixed sequence of IEEE fp32 operations and the final division a
correctly rounded integer long division -- the kernel contains no MUFU instruction.
``mode="native"``: ``ex2.approx.ftz.f32(rn(x·log2e))`` (MUFU.EX2) and ``__fdiv_rn``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hspi_kernels.kernels.cuda.loader import LaunchContext, load_module
from hspi_kernels.numerics.attention_ref import describe, split_chunk

SOURCE = "attention/flash_fwd.cu"
HEAD_DIMS = (32, 64, 128)
BLOCK_NS = (16, 32, 64)
MODES = ("exact", "native")
FORMATS = ("bf16", "fp16")
WARPS_PER_BLOCK = 4
_FMT_TAG = {"bf16": "bf16", "fp16": "f16"}
_TORCH_FMT = {"bfloat16": "bf16", "float16": "fp16"}


def kernel_name(fmt: str, mode: str, head_dim: int, block_n: int) -> str:
    _check_config(fmt, mode, head_dim, block_n, 1)
    return f"hspi_attn_fwd_{_FMT_TAG[fmt]}_{mode}_d{head_dim}_n{block_n}"


def _check_config(fmt, mode, head_dim, block_n, splits) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head dim D={head_dim} not instantiated; one of {HEAD_DIMS}")
    if block_n not in BLOCK_NS:
        raise ValueError(f"block_n must be one of {BLOCK_NS}, got {block_n!r}")
    if not isinstance(splits, (int, np.integer)) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits must be a positive int, got {splits!r}")


def default_scale(head_dim: int) -> float:
    """rn32(1 / sqrt(D))."""
    return float(np.float32(1.0 / math.sqrt(head_dim)))


def plan(*, fmt: str = "bf16", mode: str = "exact", head_dim: int = 64, block_n: int = 32, splits: int = 1,
         causal: bool = False) -> dict:
    """The order a launch implements, as a dict (the plan language has no softmax / online-max
    node; the two matrix products inside it are the mma.sync ``Chain`` plans named there)."""
    _check_config(fmt, mode, head_dim, block_n, splits)
    d = describe(fmt=fmt, mode=mode, block_n=block_n, splits=splits, causal=causal)
    d["kernel_name"] = kernel_name(fmt, mode, head_dim, block_n)
    return d


def _kind(x: Any) -> str:
    module = type(x).__module__.split(".")[0]
    if module not in ("torch", "cupy"):
        raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")
    return module


def _infer_fmt(x: Any, fmt: str | None) -> str:
    name = str(x.dtype).replace("torch.", "")
    if name in _TORCH_FMT:
        inferred = _TORCH_FMT[name]
        if fmt is not None and fmt != inferred:
            raise ValueError(f"fmt={fmt!r} contradicts the operand dtype {name}")
        return inferred
    if name in ("uint16", "int16"):
        if fmt is None:
            raise ValueError(f"operands hold raw {name} bits: pass fmt='bf16' or fmt='fp16'")
        return fmt
    raise ValueError(f"operand dtype {name} is not bf16/fp16 (or uint16/int16 bits with fmt=)")


def check_arguments(Q, K, V, fmt, mode, block_n, splits) -> tuple[str, int, int, int, int]:
    """Validate a launch (no GPU work); returns (fmt, BH, Sq, Sk, D)."""
    kind = _kind(Q)
    for name, x in (("K", K), ("V", V)):
        if _kind(x) != kind:
            raise ValueError(f"{name}: all arrays must come from one framework ({kind})")
    fmt = _infer_fmt(Q, fmt)
    for name, x in (("K", K), ("V", V)):
        if str(x.dtype) != str(Q.dtype):
            raise ValueError(f"{name}: dtype {x.dtype} differs from Q's {Q.dtype}")
    if kind == "torch":
        for name, x in (("Q", Q), ("K", K), ("V", V)):
            if not x.is_cuda:
                raise ValueError(f"{name}: expected a CUDA tensor, got one on {x.device}")
    for name, x in (("Q", Q), ("K", K), ("V", V)):
        if x.ndim not in (3, 4):
            raise ValueError(f"{name}: expected [BH, S, D] or [B, H, S, D], got shape {tuple(x.shape)}")
        if not (x.is_contiguous() if kind == "torch" else x.flags.c_contiguous):
            raise ValueError(f"{name}: expected a contiguous array")
    if not (Q.ndim == K.ndim == V.ndim):
        raise ValueError("Q, K, V must have the same number of dimensions")
    *lead, Sq, D = (int(s) for s in Q.shape)
    *lead_k, Sk, Dk = (int(s) for s in K.shape)
    if tuple(K.shape) != tuple(V.shape):
        raise ValueError(f"K {tuple(K.shape)} and V {tuple(V.shape)} must have one shape")
    if lead != lead_k or D != Dk:
        raise ValueError(f"Q {tuple(Q.shape)} and K {tuple(K.shape)} disagree on batch/head or D")
    _check_config(fmt, mode, D, block_n, splits)
    BH = int(np.prod(lead))
    if BH == 0 or Sq == 0 or Sk == 0:
        raise ValueError("empty batch, query or key dimension")
    if BH > 65535 or splits > 65535:
        raise ValueError("BH and splits are grid dimensions: at most 65535")
    if max(BH * Sq * D, BH * Sk * D) >= 2**31:
        raise ValueError("tensor too large for 32-bit row indices")
    return fmt, BH, Sq, Sk, D


def attention_forward(Q: Any, K: Any, V: Any, *, fmt: str | None = None, mode: str = "exact", block_n: int = 32,
                      splits: int = 1, causal: bool = False, scale: float | None = None,
                      prefer: str | None = None) -> Any:
    """O (float32, Q's leading shape) of the online-softmax attention; see the module doc."""
    fmt, BH, Sq, Sk, D = check_arguments(Q, K, V, fmt, mode, block_n, splits)
    scale = default_scale(D) if scale is None else float(np.float32(scale))
    kind = _kind(Q)
    chunk = split_chunk(Sk, block_n, splits)
    with LaunchContext(Q, K, V) as lc:
        cupy = lc.cupy
        module = load_module(SOURCE, prefer=prefer, device=lc.device_id)
        kernel = module.function(kernel_name(fmt, mode, D, block_n))
        out_shape = tuple(int(s) for s in Q.shape[:-1]) + (D,)
        O = cupy.empty(out_shape, dtype=cupy.float32)
        if splits > 1:
            part_m = cupy.empty((splits, BH * Sq), dtype=cupy.float32)
            part_l = cupy.empty((splits, BH * Sq), dtype=cupy.float32)
            part_acc = cupy.empty((splits, BH * Sq, D), dtype=cupy.float32)
        else:
            part_m = part_l = part_acc = O  # never written
        q_tiles = -(-Sq // 16)
        grid = (-(-q_tiles // WARPS_PER_BLOCK), BH, splits)
        views = [lc.view(x) for x in (Q, K, V)]
        kernel(grid, (32 * WARPS_PER_BLOCK, 1, 1),
               (*views, O, part_m, part_l, part_acc, np.int32(BH), np.int32(Sq), np.int32(Sk), np.float32(scale),
                np.int32(splits), np.int32(chunk), np.int32(bool(causal))))
        if splits > 1:
            combine = module.function(f"hspi_attn_combine_{mode}")
            rows = BH * Sq
            combine((min(rows, 1 << 16), 1, 1), (D, 1, 1),
                    (part_m, part_l, part_acc, O, np.int64(rows), np.int32(D), np.int32(splits)))
        if kind == "torch":
            import torch

            return torch.from_dlpack(O)
    return O
