"""Fuzz target: _native.features_bit_counts (per-bit set counts over finite values).
Differential: equals a numpy count with the same finite mask."""

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
    totals, n_finite = N.features_bit_counts(x, w, e, f, inf)
    u = x.reshape(-1).view(I.UINT[w]).astype(np.uint64)
    mag = u & np.uint64((1 << (w - 1)) - 1)
    nonfinite_min = (((1 << e) - 1) << f) if inf else (1 << (w - 1)) - 1
    fin = u[mag < np.uint64(nonfinite_min)]
    want = [int(((fin >> np.uint64(b)) & np.uint64(1)).sum()) for b in range(w)]
    if n_finite != fin.size or list(map(int, totals)) != want:
        raise Finding(f"bit counts differ from numpy for format {(w, e, f, inf)}, n={u.size}")


if __name__ == "__main__":
    main(one_input, ALLOWED)
