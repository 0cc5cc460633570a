"""Fuzz target: _native.features_fields (sign / biased exponent / fraction of raw bits, optional
caller-provided outputs). Differential: every valid call equals the numpy bit arithmetic."""

import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    import _native_inputs as I
    from _common import Finding, load_native, main

N = load_native()
ALLOWED = (ValueError, TypeError)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    w, e, f, inf = I.fmt(fdp)
    x = I.bits_array(fdp, w, I.size(fdp))
    out = None
    if I.rare(fdp, 4):
        k = fdp.ConsumeIntInRange(0, 3)
        ew = np.uint8 if 0 < e <= 8 else np.uint16
        n = x.size + (fdp.ConsumeIntInRange(-1, 1) if k == 3 else 0)
        t = (np.zeros(n, np.uint8), np.zeros(n, ew), np.zeros(n, I.UINT.get(w, np.uint32)))
        out = t if k != 1 else list(t) if fdp.ConsumeBool() else t[:2]
        if k == 2:
            out = (t[0], t[0], t[0]) if fdp.ConsumeBool() else (x, t[1], t[2])
    s, ex, fr = N.features_fields(x, w, e, f, inf, out)
    # a valid call: check against numpy
    u = x.reshape(-1).view(I.UINT[w]).astype(np.uint64)
    if not (np.array_equal(s.reshape(-1), (u >> np.uint64(w - 1)).astype(np.uint8))
            and np.array_equal(ex.reshape(-1).astype(np.uint64), (u >> np.uint64(f)) & np.uint64((1 << e) - 1))
            and np.array_equal(fr.reshape(-1).astype(np.uint64), u & np.uint64((1 << f) - 1))):
        raise Finding(f"fields differ from numpy for format {(w, e, f, inf)}")


if __name__ == "__main__":
    main(one_input, ALLOWED)
