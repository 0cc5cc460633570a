"""Fuzz target: _native.features_ulp_histogram ("int" and "log2" modes, any clip).
Differential: the fused histogram equals one built from features_ulp_distance."""

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
    n = I.size(fdp)
    a = I.bits_array(fdp, w, n)
    b = I.bits_array(fdp, w, n)
    mode = fdp.PickValueInList(["int", "log2", "int", "log2", "", "lin"])
    # clip: small mostly; the full range [0, 2^24] and beyond rarely (2^24 allocates ~1 GiB)
    clip = fdp.ConsumeIntInRange(0, 64) if not I.rare(fdp, 64) else fdp.ConsumeIntInRange(-2, (1 << 24) + 2)
    if clip > 1 << 20 and n < I.BIG_N:
        clip = fdp.PickValueInList([-1, (1 << 24) + 1, 1 << 20])
    counts, n_special = N.features_ulp_histogram(a, b, w, e, f, inf, mode, clip)
    if int(counts.sum()) + n_special != a.size:
        raise Finding("histogram counts do not add up to the number of pairs")
    dist, special = N.features_ulp_distance(a, b, w, e, f, inf)
    d = dist.reshape(-1)[special.reshape(-1) == 0]
    if mode == "int":
        want = np.bincount(np.clip(d, -clip, clip) + clip, minlength=2 * clip + 1)
    else:
        mag = np.abs(d.astype(np.float64))
        k = np.where(d == 0, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) + 1)
        if w == 64:  # float64 log2 is not exact near 2^53 and beyond: skip the comparison
            return
        want = np.bincount(w + np.sign(d) * k, minlength=2 * w + 1)
    if n_special != int((special != 0).sum()) or not np.array_equal(counts, want):
        raise Finding(f"histogram differs from the distances ({mode}, clip {clip}, format {(w, e, f, inf)})")


if __name__ == "__main__":
    main(one_input, ALLOWED)
