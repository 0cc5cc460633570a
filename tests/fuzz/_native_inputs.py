"""Structure-aware inputs for the native entry points: mostly well-formed calls (so the fuzzer
reaches the kernels, the OpenMP path included) with a share of malformed ones (wrong widths,
fields, dtypes, sizes, non-contiguous or read-only arrays, bad `out`, hostile programs).

gcc builds give atheris no coverage of the C++ (no -fsanitize=fuzzer with gcc): coverage comes
from the Python harness, so the input structure is decided here, byte by byte."""

from __future__ import annotations

import numpy as np

UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
OTHER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_,
                np.complex64, object]
# IEEE-like layouts the package uses, then anything the fields allow
KNOWN = [(8, 4, 3, False), (8, 5, 2, True), (16, 5, 10, True), (16, 8, 7, True), (32, 8, 23, True),
         (64, 11, 52, True)]
BIG_N = 70_000  # above the extractor's kParallelMin (2^16): the OpenMP path


def rare(fdp, one_in: int) -> bool:
    return fdp.ConsumeIntInRange(0, one_in - 1) == 0


def fmt(fdp):
    """(width, exp_bits, frac_bits, has_inf): a known format, any consistent one, or garbage."""
    k = fdp.ConsumeIntInRange(0, 9)
    if k < 6:
        return KNOWN[k]
    width = fdp.PickValueInList([8, 16, 32, 64])
    if k < 9:
        e = fdp.ConsumeIntInRange(1, width - 1)
        return width, e, width - 1 - e, fdp.ConsumeBool()
    return (fdp.ConsumeIntInRange(-70, 140), fdp.ConsumeIntInRange(-70, 140), fdp.ConsumeIntInRange(-70, 140),
            fdp.ConsumeBool())


def size(fdp) -> int:
    if rare(fdp, 200):
        return BIG_N + fdp.ConsumeIntInRange(0, 5000)
    return fdp.ConsumeIntInRange(0, 96)


def bits_array(fdp, width: int, n: int, dtype=None):
    """n raw bit patterns of `width` bits (fuzz bytes, repeated to length), maybe reshaped,
    made non-contiguous, read-only or of another dtype."""
    width = width if width in UINT else 32
    dt = np.dtype(dtype if dtype is not None else UINT[width])
    if dtype is None and rare(fdp, 12):
        dt = np.dtype(fdp.PickValueInList(OTHER_DTYPES))
    if dt == np.dtype(object):
        return np.array([fdp.ConsumeInt(2) for _ in range(min(n, 8))], dtype=object)
    raw = fdp.ConsumeBytes(min(n, 512) * dt.itemsize)
    if not raw:
        raw = b"\x00"
    nbytes = n * dt.itemsize
    buf = (raw * (nbytes // len(raw) + 1))[:nbytes]
    a = np.frombuffer(buf, dtype=dt).copy()
    if n and rare(fdp, 4):
        rows = fdp.ConsumeIntInRange(1, 8)
        if n % rows == 0:
            a = a.reshape(rows, n // rows)
    if rare(fdp, 16):
        a = a[::2]
    if rare(fdp, 16):
        a.setflags(write=False)
    return a


def float_array(fdp, shape, dtype):
    n = int(np.prod(shape))
    dt = np.dtype(dtype)
    raw = fdp.ConsumeBytes(min(n, 256) * dt.itemsize) or b"\x00" * dt.itemsize
    nbytes = n * dt.itemsize
    buf = (raw * (nbytes // len(raw) + 1))[:nbytes]
    return np.frombuffer(buf, dtype=dt).copy().reshape(shape)
