"""Seeded inputs. A probe's input spec (JSON) regenerates the exact same operand bits anywhere:
float32 standard normals from numpy's PCG64 stream, scaled, then rounded RNE to the operand
format (numpy/ml_dtypes conversion, which is RNE)."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from hspi_kernels.probes import cache

NUMPY_DTYPES = {
    "fp64": np.float64,
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
}


def spec(seed: int, shape: tuple[int, ...], dtype: str, scale: float = 1.0) -> dict[str, Any]:
    return {"seed": seed, "shape": list(shape), "dtype": dtype, "dist": "normal", "scale": scale}


def generate(s: dict[str, Any]) -> np.ndarray:
    """The operand array of a spec, in its numpy dtype (bf16 as ml_dtypes.bfloat16)."""
    if s.get("dist") != "normal":
        raise ValueError(f"unsupported input distribution {s.get('dist')!r}")
    if s["dtype"] not in NUMPY_DTYPES:
        raise ValueError(f"unsupported input dtype {s['dtype']!r}; expected one of {sorted(NUMPY_DTYPES)}")
    rng = np.random.default_rng(s["seed"])
    values = rng.standard_normal(tuple(s["shape"]), dtype=np.float32) * np.float32(s["scale"])
    return values.astype(NUMPY_DTYPES[s["dtype"]])


def generate_cached(s: dict[str, Any]) -> np.ndarray:
    """generate(s) through the on-disk cache (``probes.cache``): the same bits, read back on a
    warm run. Keyed by this generator's code, the spec and the numpy / ml_dtypes versions (the
    PCG64 normal stream and the RNE conversion belong to them). Read-only result."""
    key = {"generator": f"{__name__}.generate", "code": cache.code_digest(generate), "spec": s,
           "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__}
    return cache.cached("operand", key, lambda: generate(s))


def to_torch(array: np.ndarray, device: str):
    """numpy (incl. ml_dtypes bf16) → torch tensor with the same bits on `device`."""
    import torch

    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).to(device)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def from_torch(tensor) -> np.ndarray:
    """torch tensor → host numpy array with the same bits (bf16 → ml_dtypes.bfloat16)."""
    import torch

    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
