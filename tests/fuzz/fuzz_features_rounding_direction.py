"""Fuzz target: _native.features_rounding_direction (sign of low - ref, per element).
Checks: counts match the direction and NaN arrays; direction is in {-1, 0, 1}; for the
formats ml_dtypes decodes, the direction equals numpy's comparison of decoded values."""

import atheris
import ml_dtypes
import numpy as np

with atheris.instrument_imports():
    import _native_inputs as I
    from _common import Finding, load_native, main

N = load_native()
ALLOWED = (ValueError, TypeError)
DECODE = {(16, 5, 10, True): np.float16, (16, 8, 7, True): ml_dtypes.bfloat16,
          (8, 4, 3, False): ml_dtypes.float8_e4m3fn, (8, 5, 2, True): ml_dtypes.float8_e5m2,
          (32, 8, 23, True): np.float32, (64, 11, 52, True): np.float64}


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    w, e, f, inf = I.fmt(fdp)
    n = I.size(fdp)
    low = I.bits_array(fdp, w, n)
    ref_width = fdp.PickValueInList([32, 64, 64, 32, 16, 0])
    ref_dt = np.float64 if ref_width == 64 else np.float32
    if I.rare(fdp, 16):
        ref_dt = fdp.PickValueInList([np.uint32, np.uint64, np.float16, np.int64])
    ref = I.float_array(fdp, (n,), ref_dt)
    if low.ndim == 2 and fdp.ConsumeBool():
        ref = ref.reshape(low.shape)
    direction, nan, counts = N.features_rounding_direction(low, ref, w, e, f, inf, ref_width)
    d, m = direction.reshape(-1), nan.reshape(-1)
    if not set(np.unique(d).tolist()) <= {-1, 0, 1}:
        raise Finding("direction outside {-1, 0, 1}")
    want = [int((d < 0).sum()), int(((d == 0) & ~m).sum()), int((d > 0).sum()), int(m.sum())]
    if list(map(int, counts)) != want:
        raise Finding("counts disagree with the direction/NaN arrays")
    dec = DECODE.get((w, e, f, inf))
    if dec is not None and ref.dtype in (np.float32, np.float64):
        lv = low.reshape(-1).view(dec).astype(np.float64)
        rv = ref.reshape(-1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            wd = np.sign(lv - rv)
        wd = np.where(np.isnan(lv) | np.isnan(rv), 0, np.where(lv == rv, 0, np.where(lv > rv, 1, -1)))
        if not (np.array_equal(d, wd) and np.array_equal(m, np.isnan(lv) | np.isnan(rv))):
            raise Finding(f"direction differs from decoded comparison for format {(w, e, f, inf)}")


if __name__ == "__main__":
    main(one_input, ALLOWED)
