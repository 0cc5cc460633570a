"""Fuzz target: _native.features_ulp_distance. Differential (widths <= 32, exact in int64):
distance = ord(a) - ord(b) with ord = +-magnitude, 0 where a NaN/Inf flag is set."""

import atheris
import numpy as np

with atheris.instrument_imports():
    import _native_inputs as I
    from _common import Finding, load_native, main

N = load_native()
ALLOWED = (ValueError, TypeError)


def reference(u, w, e, f, inf):
    u = u.astype(np.uint64)
    mm = np.uint64((1 << (w - 1)) - 1)
    mag = (u & mm).astype(np.int64)
    ords = np.where((u >> np.uint64(w - 1)) != 0, -mag, mag)
    inf_mag = ((1 << e) - 1) << f if inf else None
    nan_min = inf_mag + 1 if inf else (1 << (w - 1)) - 1
    flags = (mag >= nan_min).astype(np.uint8)
    if inf:
        flags |= (mag == inf_mag).astype(np.uint8) << 1
    return ords, flags


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    w, e, f, inf = I.fmt(fdp)
    n = I.size(fdp)
    a = I.bits_array(fdp, w, n)
    b = I.bits_array(fdp, w, n + (fdp.ConsumeIntInRange(-1, 1) if I.rare(fdp, 16) else 0))
    dist, special = N.features_ulp_distance(a, b, w, e, f, inf)
    if w > 32:
        return
    oa, fa = reference(a.reshape(-1).view(I.UINT[w]), w, e, f, inf)
    ob, fb = reference(b.reshape(-1).view(I.UINT[w]), w, e, f, inf)
    fl = fa | (fb << 2)
    want = np.where(fl != 0, 0, oa - ob)
    if not (np.array_equal(special.reshape(-1), fl) and np.array_equal(dist.reshape(-1), want)):
        raise Finding(f"ulp distance differs from the reference for format {(w, e, f, inf)}")


if __name__ == "__main__":
    main(one_input, ALLOWED)
