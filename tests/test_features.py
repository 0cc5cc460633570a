"""Native feature extractor against independent numpy references, bit for bit.

Each reference below is written from the definition, in numpy (Python ints where int64 would
overflow), and never calls hspi_kernels. Every feature also has a negative control: a
deliberately wrong reference that the same comparison must reject.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import xxhash

from hspi_kernels.fingerprint import features as F

# name -> (dtype, width, exp bits, frac bits)
FMT = {
    "fp64": (np.float64, 64, 11, 52),
    "fp32": (np.float32, 32, 8, 23),
    "fp16": (np.float16, 16, 5, 10),
    "bf16": (ml_dtypes.bfloat16, 16, 8, 7),
    "e4m3": (ml_dtypes.float8_e4m3fn, 8, 4, 3),
    "e5m2": (ml_dtypes.float8_e5m2, 8, 5, 2),
}
ALL = list(FMT)


def _uint(w):
    return np.dtype(f"u{w // 8}")


def special_values(name: str) -> np.ndarray:
    """±0, smallest/largest subnormal, smallest normal, ±max finite, ±Inf, NaN, ±1 (as floats)."""
    dt, w, e, f = FMT[name]
    fi = ml_dtypes.finfo(dt)
    vals = [0.0, -0.0, 1.0, -1.0, float(fi.smallest_subnormal), -float(fi.smallest_subnormal),
            float(fi.smallest_normal), -float(fi.smallest_normal), float(fi.max), -float(fi.max),
            float(fi.smallest_normal) - float(fi.smallest_subnormal), np.nan]  # fmt: skip
    if name != "e4m3":
        vals += [np.inf, -np.inf]
    return np.array(vals, dtype=np.float64).astype(dt)


def random_bits(name: str, n: int, seed: int) -> np.ndarray:
    """Uniform random bit patterns (all classes: NaN, Inf, subnormals, zeros) plus the specials."""
    dt, w, _, _ = FMT[name]
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**w, size=n, dtype=np.uint64 if w == 64 else np.int64).astype(_uint(w))
    return np.concatenate([bits, special_values(name).view(_uint(w))]).view(dt)


def pairs(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): near pairs (a few ULPs apart), far pairs, ±0 pairs and sign crossings."""
    dt, w, _, _ = FMT[name]
    rng = np.random.default_rng(seed)
    a = random_bits(name, n, seed).view(_uint(w)).copy()
    b = a.copy()
    near = rng.random(a.size) < 0.5
    step = rng.integers(-3, 4, size=a.size)
    b[near] = ((b[near].astype(object) + step[near]) % (2**w)).astype(_uint(w))  # may flip sign of 0
    far = ~near
    b[far] = random_bits(name, int(far.sum()) - special_values(name).size, seed + 1).view(_uint(w))[: far.sum()]
    sign = np.array(1 << (w - 1), dtype=_uint(w))
    tiny = np.array([0, 0, 1, 1, 2, 0], dtype=_uint(w))
    other = np.array([sign, 0, sign | 1, sign | 3, sign, sign | 2], dtype=_uint(w))
    a = np.concatenate([a, tiny, other])
    b = np.concatenate([b, other, tiny])
    return a.view(dt), b.view(dt)


# ------------------------------------------------------------------ independent references
def ref_fields(x, name, bias_shift=0):
    _, w, e, f = FMT[name]
    u = x.view(_uint(w)).ravel().astype(object)
    sign = np.array([int(v) >> (w - 1) for v in u])
    expo = np.array([((int(v) >> f) & ((1 << e) - 1)) + bias_shift for v in u])
    frac = np.array([int(v) & ((1 << f) - 1) for v in u], dtype=object)
    return sign, expo, frac


def _ord(u: int, w: int, zero_split: bool = False) -> int:
    mag = u & ((1 << (w - 1)) - 1)
    if u >> (w - 1):
        return -mag - 1 if zero_split else -mag  # zero_split: the wrong one (-0 != +0)
    return mag


def ref_ulp(a, b, name, zero_split=False):
    _, w, _, _ = FMT[name]
    with np.errstate(invalid="ignore"):  # signalling NaNs widen quietly
        fa, fb = a.astype(np.float64), b.astype(np.float64)  # exact; classes from values
    special = (np.isnan(fa) * 1) | (np.isinf(fa) * 2) | (np.isnan(fb) * 4) | (np.isinf(fb) * 8)
    top = 2**63 - 1
    d = [
        max(-top, min(top, _ord(int(x), w, zero_split) - _ord(int(y), w, zero_split)))
        for x, y in zip(a.view(_uint(w)), b.view(_uint(w)))
    ]
    d = np.array(d, dtype=np.int64)
    d[special != 0] = 0
    return d, special.astype(np.uint8)


def ref_hist(a, b, name, mode, clip, shift=0):
    _, w, _, _ = FMT[name]
    d, special = ref_ulp(a, b, name)
    d = [int(v) for v in d[special == 0]]
    if mode == "int":
        counts = np.zeros(2 * clip + 1, dtype=np.int64)
        for v in d:
            counts[(max(-clip, min(clip, v)) + clip + shift) % counts.size] += 1
    else:
        counts = np.zeros(2 * w + 1, dtype=np.int64)
        for v in d:
            k = abs(v).bit_length()
            counts[(w + (k if v > 0 else -k) + shift) % counts.size] += 1
    return counts, int((special != 0).sum())


def ref_fbf(x, name, lsb_first=False):
    _, w, _, f = FMT[name]
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(x.astype(np.float64))
    u = x.view(_uint(w))[finite].astype(object)
    order = range(f) if lsb_first else range(f - 1, -1, -1)  # right: index 0 = bit f-1 (MSB)
    return np.array([np.mean([(int(v) >> bit) & 1 for v in u]) for bit in order])


def ref_rounding(low, ref, flip=False):
    with np.errstate(invalid="ignore"):
        lo = low.astype(np.float64)  # exact for every supported low format
    r = ref.astype(np.float64)
    d = (lo > r).astype(np.int8) - (lo < r).astype(np.int8)
    return (-d if flip else d), np.isnan(lo) | np.isnan(r)


def ref_digest(x, name, with_shape=True):
    shape = "x".join(map(str, x.shape)) if with_shape else ""
    head = f"hspi-digest-v1;{name};{shape};".encode()
    return xxhash.xxh3_64_hexdigest(head + np.ascontiguousarray(x).tobytes())


def same(native, ref) -> bool:
    """Exact equality of values (dtype-independent) and of shape."""
    native, ref = np.asarray(native), np.asarray(ref)
    return native.shape == ref.shape and bool(np.all(native.astype(object) == ref.astype(object)))


# ------------------------------------------------------------------ fields
@pytest.mark.parametrize("name", ALL)
def test_fields(name):
    x = random_bits(name, 3000, 1)
    s, e, f = F.fields(x)
    rs, re, rf = ref_fields(x, name)
    assert same(s, rs) and same(e, re) and same(f, rf)
    assert s.dtype == np.uint8 and f.dtype == _uint(FMT[name][1])
    # integer view with the format named gives the same fields
    s2, e2, f2 = F.fields(x.view(_uint(FMT[name][1])), fmt=name)
    assert same(s2, s) and same(e2, e) and same(f2, f)
    # negative control: an off-by-one exponent is rejected by the same comparison
    assert not same(e, ref_fields(x, name, bias_shift=1)[1])


def test_fields_shape_and_strided():
    x = random_bits("fp32", 600, 2)[:600].reshape(20, 30)
    s, e, f = F.fields(x.T)  # non-contiguous: copied to C order
    rs, re, rf = ref_fields(np.ascontiguousarray(x.T), "fp32")
    assert s.shape == (30, 20)
    assert same(s.ravel(), rs) and same(e.ravel(), re) and same(f.ravel(), rf)


def test_fields_out_reuses_buffers():
    x = random_bits("fp16", 500, 9)
    out = (np.empty(x.size, np.uint8), np.empty(x.size, np.uint8), np.empty(x.size, np.uint16))
    got = F.fields(x, out=out)
    assert all(g is o for g, o in zip(got, out))
    rs, re, rf = ref_fields(x, "fp16")
    assert same(out[0], rs) and same(out[1], re) and same(out[2], rf)
    with pytest.raises(ValueError, match="dtype must be uint16"):
        F.fields(x, out=(out[0], out[1], np.empty(x.size, np.uint32)))
    with pytest.raises(ValueError, match="input's size"):
        F.fields(x, out=(out[0][:-1], out[1], out[2]))
    with pytest.raises(ValueError, match="tuple"):
        F.fields(x, out=out[:2])


# ------------------------------------------------------------------ ULP distance
@pytest.mark.parametrize("name", ALL)
def test_ulp_distance(name):
    a, b = pairs(name, 3000, 3)
    r = F.ulp_distance(a, b)
    d, special = ref_ulp(a, b, name)
    assert r.distance.dtype == np.int64 and r.special.dtype == np.uint8
    assert same(r.distance, d) and same(r.special, special)
    assert np.array_equal(r.finite, special == 0)
    # negative control: treating -0 and +0 as different is rejected
    assert not same(r.distance, ref_ulp(a, b, name, zero_split=True)[0])


def test_ulp_distance_zero_and_crossing():
    z = np.array([0.0, -0.0, 1e-45, -1e-45, 1.0], dtype=np.float32)
    w = np.array([-0.0, 0.0, -1e-45, 1e-45, np.nextafter(np.float32(1), np.float32(2))], dtype=np.float32)
    assert F.ulp_distance(z, w).distance.tolist() == [0, 0, 2, -2, -1]


def test_ulp_distance_fp64_saturates():
    a = np.array([np.finfo(np.float64).max], dtype=np.float64)
    r = F.ulp_distance(a, -a)
    assert r.distance[0] == 2**63 - 1 and F.ulp_distance(-a, a).distance[0] == -(2**63 - 1)


# ------------------------------------------------------------------ histogram
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode,clip", [("log2", 0), ("int", 4), ("int", 0)])
def test_ulp_histogram(name, mode, clip):
    a, b = pairs(name, 3000, 4)
    h = F.ulp_histogram(a, b, mode=mode, clip=clip)
    counts, n_special = ref_hist(a, b, name, mode, clip)
    assert same(h.counts, counts) and h.n_special == n_special
    assert h.total == a.size and h.lo.size == h.hi.size == h.counts.size
    if h.counts.size > 1:  # negative control: bins placed one off
        assert not same(h.counts, ref_hist(a, b, name, mode, clip, shift=1)[0])


def test_ulp_histogram_bins_are_labelled():
    a = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    b = a.view(np.uint32) - np.array([0, 1, 5], dtype=np.uint32)
    h = F.ulp_histogram(a, b.view(np.float32), mode="log2")
    hit = np.nonzero(h.counts)[0]
    assert [(h.lo[i], h.hi[i]) for i in hit] == [(0, 0), (1, 1), (4, 7)]


# ------------------------------------------------------------------ fraction bits
@pytest.mark.parametrize("name", ALL)
def test_fraction_bit_frequency(name):
    x = random_bits(name, 5000, 5)
    freq = F.fraction_bit_frequency(x)
    ref = ref_fbf(x, name)
    assert freq.shape == (FMT[name][3],)
    assert same(freq, ref)
    assert not same(freq, ref_fbf(x, name, lsb_first=True))  # negative control: bit order


def test_fraction_bit_frequency_large_and_all_nan():
    # exercises the blocked carry-save path (several full blocks per thread) on known bits
    x = np.full(300_000, 1.75, dtype=np.float32)  # fraction 0b11000...
    freq = F.fraction_bit_frequency(x)
    assert freq[:2].tolist() == [1.0, 1.0] and not freq[2:].any()
    assert np.isnan(F.fraction_bit_frequency(np.array([np.nan, np.inf], np.float32))).all()


# ------------------------------------------------------------------ rounding direction
@pytest.mark.parametrize("low_name", ["fp32", "fp16", "bf16", "e4m3", "e5m2"])
@pytest.mark.parametrize("ref_dt", [np.float64, np.float32])
def test_rounding_direction(low_name, ref_dt):
    rng = np.random.default_rng(6)
    dt = FMT[low_name][0]
    with np.errstate(over="ignore", invalid="ignore"):
        ref = np.concatenate([rng.standard_normal(4000) * 10.0 ** rng.integers(-8, 8, 4000),
                              [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, 1e-300]]).astype(ref_dt)  # fmt: skip
        low = ref.astype(dt)
    if low_name == "fp32" and ref_dt == np.float32:
        low = (low.view(np.uint32) ^ rng.integers(0, 2, low.size, dtype=np.uint32)).view(np.float32)
    r = F.rounding_direction(low, ref)
    d, nan = ref_rounding(low, ref)
    assert same(r.direction, d) and same(r.nan, nan)
    assert r.down == int((d < 0).sum()) and r.up == int((d > 0).sum())
    assert r.exact == int(((d == 0) & ~nan).sum()) and r.n_nan == int(nan.sum())
    assert not same(r.direction, ref_rounding(low, ref, flip=True)[0])  # negative control


# ------------------------------------------------------------------ digest
@pytest.mark.parametrize("name", ALL)
def test_digest(name):
    x = random_bits(name, 255, 7).reshape(-1, 1)
    assert F.digest(x) == ref_digest(x, name)
    assert F.digest(x.view(_uint(FMT[name][1])), fmt=name) == F.digest(x)
    assert F.digest(x) != ref_digest(x, name, with_shape=False)  # negative control
    assert F.digest(x.reshape(1, -1)) != F.digest(x)


def test_digest_other_dtypes_and_order():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert F.digest(x) == xxhash.xxh3_64_hexdigest(b"hspi-digest-v1;<i4;3x4;" + x.tobytes())
    assert F.digest(x.T) == F.digest(np.ascontiguousarray(x.T))
    assert F.digest(x.astype(">i4")) == F.digest(x)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: F.fields(np.zeros(3, np.complex64)), "unsupported dtype"),
        (lambda: F.fields(np.zeros(3, np.uint16)), "needs fmt="),
        (lambda: F.fields(np.zeros(3, np.uint16), fmt="fp32"), "cannot hold fp32"),
        (lambda: F.fields(np.zeros(3, np.float32), fmt="bf16"), "does not match"),
        (lambda: F.fields(np.zeros(3, np.uint8), fmt="e4m2"), "unknown floating-point format"),
        (lambda: F.fields(np.zeros(0, np.float32)), "empty"),
        (lambda: F.fields([1.0, 2.0]), "numpy array"),
        (lambda: F.ulp_distance(np.zeros(3, np.float32), np.zeros(4, np.float32)), "shape mismatch"),
        (lambda: F.ulp_distance(np.zeros(3, np.float32), np.zeros(3, np.float16)), "formats must match"),
        (lambda: F.ulp_histogram(np.ones(3, np.float32), np.ones(3, np.float32), mode="x"), "mode"),
        (lambda: F.ulp_histogram(np.ones(3, np.float32), np.ones(3, np.float32), mode="int", clip=-1), "clip"),
        (lambda: F.rounding_direction(np.ones(3, np.float16), np.ones(3, np.float16)), "fp64 or fp32"),
        (lambda: F.rounding_direction(np.ones(3, np.float64), np.ones(3, np.float32)), "at least as precise"),
        (lambda: F.rounding_direction(np.ones(3, np.float16), np.ones(2, np.float32)), "shape mismatch"),
        (lambda: F.digest(np.array(["a"])), "unsupported dtype"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_native_rechecks_its_inputs():
    from hspi_kernels import _native

    with pytest.raises(ValueError, match="itemsize"):
        _native.features_fields(np.zeros(4, np.uint16), 32, 8, 23, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.features_fields(np.zeros(8, np.uint32)[::2], 32, 8, 23, True)
    with pytest.raises(ValueError, match="differ in size"):
        _native.features_ulp_distance(np.zeros(4, np.uint32), np.zeros(3, np.uint32), 32, 8, 23, True)


def test_parallel_path_fp32_large():
    """n above the threading threshold, odd length: native == a vectorised int64 reference."""
    rng = np.random.default_rng(8)
    n = 300_001
    a = rng.integers(0, 2**32, n, dtype=np.int64).astype(np.uint32)
    b = (a.astype(np.int64) + rng.integers(-2, 3, n)).astype(np.uint32)

    def ordv(u):
        mag = (u & 0x7FFFFFFF).astype(np.int64)
        return np.where(u >> 31 == 1, -mag, mag)

    fa, fb = a.view(np.float32), b.view(np.float32)
    d = ordv(a) - ordv(b)
    bad = ~(np.isfinite(fa) & np.isfinite(fb))
    d[bad] = 0
    r = F.ulp_distance(fa, fb)
    assert np.array_equal(r.distance, d) and np.array_equal(r.special != 0, bad)
    h = F.ulp_histogram(fa, fb, mode="int", clip=3)
    assert np.array_equal(h.counts, np.bincount(np.clip(d[~bad], -3, 3) + 3, minlength=7))
    assert h.n_special == int(bad.sum())
    s, e, f = F.fields(fa)
    assert np.array_equal(s, a >> 31) and np.array_equal(e, (a >> 23) & 0xFF) and np.array_equal(f, a & 0x7FFFFF)
