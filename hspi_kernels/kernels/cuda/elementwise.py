"""Elementwise fp32 probe (``csrc/cuda/elementwise/fma_probe.cu``): wrapper, plan, CPU reference.

``fma(a, b, c, fused=True)``  -> ``out[i] = fma(a[i], b[i], c[i])``    one rounding (RNE)
``fma(a, b, c, fused=False)`` -> ``out[i] = rn(rn(a[i]*b[i]) + c[i])``  two roundings (RNE)

The smallest kernel that proves the cubin / NVRTC path end to end: its result is exactly
specified, so ``reference`` reproduces the GPU's bits and a test compares them with ``==``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.kernels.cuda.loader import LaunchContext, load_module
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.plans import Sequential

SOURCE = "elementwise/fma_probe.cu"
KERNELS = {True: "hspi_fma_f32", False: "hspi_mul_add_f32"}
BLOCK = 256
MAX_GRID = 1 << 16  # the kernels are grid-stride loops
CANONICAL_NAN = np.uint32(0x7FFFFFFF)  # NaN bits an NVIDIA fp32 FFMA/FADD/FMUL writes


def plan(fused: bool = True):
    """The exact operation the kernel performs on each element, as an accumulation plan: a
    one-term dot product accumulated onto ``c`` in fp32 with RNE; fused means the product is
    not rounded before the addition."""
    return Sequential("fp32", fma=bool(fused))


def fma(a: Any, b: Any, c: Any, fused: bool = True, *, prefer: str | None = None) -> Any:
    """Elementwise ``fma(a, b, c)`` (``fused``) or ``rn(rn(a*b) + c)`` on the GPU.

    ``a, b, c``: contiguous float32 arrays of one shape on one CUDA device, all torch tensors or
    all CuPy arrays; the result is of the same kind, computed on the framework's current stream.
    ``prefer`` selects the load path (see :func:`hspi_kernels.kernels.cuda.loader.load_module`).
    """
    arrays = (a, b, c)
    for name, x in zip("abc", arrays):
        _check_array(name, x)
    if not (a.shape == b.shape == c.shape):
        raise ValueError(f"a, b, c must have one shape, got {tuple(a.shape)}, {tuple(b.shape)}, {tuple(c.shape)}")
    with LaunchContext(*arrays) as lc:
        module = load_module(SOURCE, prefer=prefer, device=lc.device_id)
        kernel = module.function(KERNELS[bool(fused)])
        out = lc.empty_like(a)
        n = int(np.prod(a.shape, dtype=np.int64))
        if n:
            grid = min((n + BLOCK - 1) // BLOCK, MAX_GRID)
            views = [lc.view(x) for x in (a, b, c, out)]
            kernel((grid,), (BLOCK,), (*views, np.int64(n)))
    return out


def _check_array(name: str, x: Any) -> None:
    kind = type(x).__module__.split(".")[0]
    if kind == "torch":
        if not x.is_cuda:
            raise ValueError(f"{name}: expected a CUDA tensor, got device {x.device}")
        if str(x.dtype) != "torch.float32":
            raise ValueError(f"{name}: expected float32, got {x.dtype}")
        if not x.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
    elif kind == "cupy":
        if x.dtype != np.float32:
            raise ValueError(f"{name}: expected float32, got {x.dtype}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array")
    else:
        raise ValueError(f"{name}: expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


def sample_inputs(n: int = 1 << 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded probe inputs: wide-range random fp32, specials, and raw random bit patterns.

    ``a, b`` span 2^-70..2^70 and ``c`` 2^-140..2^128 (products and sums underflow, overflow and
    cancel); 1/64 of the entries are specials (signed zeros, infinities, NaN, subnormals, the
    largest finite, neighbours of 1); the first n/16 entries are uniformly random bit patterns.
    """
    rng = np.random.default_rng(seed)

    def draw(lo: int, hi: int) -> np.ndarray:
        sig = rng.uniform(1.0, 2.0, n) * rng.choice([-1.0, 1.0], n)
        return (sig * 2.0 ** rng.integers(lo, hi, n)).astype(np.float32)

    a, b, c = draw(-70, 70), draw(-70, 70), draw(-140, 128)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-149, -(2.0**-149), 2.0**-126,
                         np.finfo(np.float32).max, 1.0, -1.0, 1 + 2.0**-23, 1 - 2.0**-24], np.float32)
    for x in (a, b, c):
        idx = rng.integers(0, n, n // 64)
        x[idx] = rng.choice(specials, idx.size)
    raw = rng.integers(0, 2**32, (3, n // 16), dtype=np.uint64).astype(np.uint32).view(np.float32)
    a[: n // 16], b[: n // 16], c[: n // 16] = raw
    return a, b, c


# ---------------------------------------------------------------------------------------------
# CPU reference: the exact bits
# ---------------------------------------------------------------------------------------------
def reference(a: Any, b: Any, c: Any, fused: bool = True) -> np.ndarray:
    """Exact fp32 result of the kernel on the CPU (numpy float32 array), NaNs canonical: the
    kernel's plan evaluated by the numerics core (one definition of the exact fma)."""
    a32, b32, c32 = (np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for x in (a, b, c))
    out = evaluate(plan(fused), (a32[..., None], b32[..., None]), c=c32)
    bits = out.view(np.uint32).copy()
    bits[np.isnan(out)] = CANONICAL_NAN
    return bits.view(np.float32)
