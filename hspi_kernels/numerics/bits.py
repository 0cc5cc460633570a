"""Which storage format an array holds, and the digest of its bits: the identity of an output.

``resolve_format`` reads the format from a float dtype (fp64, fp32, fp16, bf16, e4m3, e5m2) or
from ``fmt=`` for an integer bit view; ``digest`` hashes type, shape and contents with xxh3-64.
Both are used wherever bits are compared or recorded (kernels' tables, probes, traces,
fingerprints), so they live with the formats; ``fingerprint.features`` re-exports them.
"""

from __future__ import annotations

import numpy as np
import xxhash

from hspi_kernels.numerics.formats import Format, get_format

__all__ = ["FORMATS", "DIGEST_VERSION", "resolve_format", "digest"]

# The storage formats the extractor reads: one definition of each layout, in numerics.formats.
FORMATS: dict[str, Format] = {n: get_format(n) for n in ("fp64", "fp32", "fp16", "bf16", "e4m3", "e5m2")}
_BY_DTYPE = {f.numpy_dtype: f for f in FORMATS.values()}


def _format_named(fmt: str) -> Format:
    f = get_format(fmt)
    if f.name not in FORMATS:
        raise ValueError(f"unsupported format {fmt!r} for features; expected one of {sorted(FORMATS)}")
    return f


def resolve_format(x: np.ndarray, fmt: str | None = None, *, name: str = "x") -> Format:
    """The format of ``x``: from its float dtype, or from ``fmt`` for an integer bit view."""
    dt = x.dtype.newbyteorder("=") if x.dtype.byteorder not in "=|" else x.dtype
    if dt in _BY_DTYPE:
        f = _BY_DTYPE[dt]
        if fmt is not None and _format_named(fmt) != f:
            raise ValueError(f"{name}: fmt={fmt!r} does not match the array dtype {x.dtype} ({f.name})")
        return f
    if dt.kind in "iu":
        if fmt is None:
            raise ValueError(
                f"{name}: integer array of dtype {x.dtype} needs fmt= naming its format "
                f"(one of {sorted(FORMATS)})"
            )
        f = _format_named(fmt)
        if dt.itemsize * 8 != f.total_bits:
            raise ValueError(
                f"{name}: integer view of dtype {x.dtype} ({dt.itemsize * 8} bits) cannot hold "
                f"{f.name} ({f.total_bits} bits)"
            )
        return f
    raise ValueError(
        f"{name}: unsupported dtype {x.dtype}; expected one of {sorted(FORMATS)} "
        "or an integer bit view"
    )


DIGEST_VERSION = "hspi-digest-v1"


def digest(x: np.ndarray, fmt: str | None = None) -> str:
    """64-bit digest of an array's type, shape and contents, as 16 lowercase hex digits.

    Exactly what is hashed, with ``xxhash.xxh3_64`` (seed 0), in this order:
    1. the ASCII header ``"hspi-digest-v1;<type>;<shape>;"`` where ``<type>`` is the format
       name (``fp32``, ``bf16``, ``e4m3fn``, ...) for a supported float dtype or an integer view
       with ``fmt=``, and otherwise numpy's little-endian ``dtype.str`` (e.g. ``<i4``, ``|b1``);
       ``<shape>`` is the dimensions joined by ``x`` (``"4x8"``; ``""`` for a 0-d array);
    2. the element bytes in C order, little-endian.
    So a bf16 array and its uint16 view with ``fmt="bf16"`` have the same digest; a reshape or a
    dtype change gives a different one. Empty arrays are allowed (only the header is hashed).
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x: expected a numpy array, got {type(x).__name__}")
    if x.dtype.kind in "fiub" or x.dtype in _BY_DTYPE or fmt is not None:
        try:
            type_name = resolve_format(x, fmt).name
        except ValueError:
            if fmt is not None:
                raise
            type_name = None
    else:
        raise ValueError(f"x: unsupported dtype {x.dtype} for digest (numeric arrays only)")
    dt = x.dtype.newbyteorder("<") if x.dtype.byteorder not in "|" else x.dtype
    if type_name is None:
        type_name = dt.str
    data = np.ascontiguousarray(x, dtype=dt)
    shape = "x".join(str(d) for d in x.shape)
    h = xxhash.xxh3_64(f"{DIGEST_VERSION};{type_name};{shape};".encode("ascii"))
    if data.size:
        h.update(memoryview(data.reshape(-1).view(np.uint8)))
    return h.hexdigest()
