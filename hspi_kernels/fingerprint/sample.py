"""Output sampling: the bits of evenly spaced output elements kept in a probe record
(``features.sample``), enough to measure ULP distances between two platforms' outputs without
storing the outputs. ``output_sample`` writes a sample (the probe runner), ``sample_array``
reads one back (``identify`` compares two).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hspi_kernels.fingerprint import features

__all__ = ["SAMPLE_SIZE", "output_sample", "sample_array"]

SAMPLE_SIZE = 128        # output elements whose bits are kept (evenly spaced): cross-platform ULP distances


def output_sample(output: np.ndarray, n: int = SAMPLE_SIZE) -> dict[str, Any]:
    """The bits of ``n`` evenly spaced output elements (C order) as big-endian hex: enough to
    measure ULP distances between two platforms' outputs without storing the outputs."""
    fmt = features.resolve_format(output)
    flat = np.ascontiguousarray(output).reshape(-1)
    index = np.unique(np.linspace(0, flat.size - 1, min(n, flat.size)).round().astype(np.int64))
    bits = flat[index].view(fmt.bits_dtype).astype(np.dtype(fmt.bits_dtype).newbyteorder(">"))
    return {"format": fmt.name, "n": int(index.size), "size": int(flat.size), "bits": bits.tobytes().hex()}


def sample_array(sample: dict[str, Any]) -> np.ndarray:
    """The raw bits of a recorded sample as an unsigned integer array (native byte order)."""
    fmt = features.FORMATS[sample["format"]]
    big = np.dtype(fmt.bits_dtype).newbyteorder(">")
    return np.frombuffer(bytes.fromhex(sample["bits"]), dtype=big).astype(fmt.bits_dtype)
