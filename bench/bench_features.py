"""Native feature extractor vs the equivalent numpy code, 2^26 fp32 values, same run.

For each main feature (fields, ulp_distance, ulp_histogram log2, fraction_bit_frequency) the
native call is timed by pytest-benchmark (``pedantic``, median of rounds) and the numpy
equivalent by ``perf_counter`` in the same test; ``extra_info`` records both medians, the
ratio numpy/native, input GB/s (all input arrays' bytes / median time), GB/s per core (divided
by the OpenMP thread count the extractor used; run with OMP_NUM_THREADS=1 for the per-core
figure), the fresh-allocation copy rate of one input (this machine's memory ceiling) and the
1-minute load average (the CPU is shared), and platform metadata. The results are
re-checked for equality after timing.

    pytest bench/bench_features.py --benchmark-json=bench-features.json
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest

from hspi_kernels.fingerprint import features as F

N = 1 << 26
NATIVE_ROUNDS = 5
NUMPY_ROUNDS = 2


def _threads() -> int:
    from hspi_kernels import _native

    if not _native.openmp:
        return 1
    env = os.environ.get("OMP_NUM_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2026)
    a = rng.standard_normal(N, dtype=np.float32)
    # b: a few ULPs away from a (the typical platform-vs-platform case), with sign crossings
    step = rng.integers(-3, 4, N, dtype=np.int32)
    b = (a.view(np.int32) + step).view(np.float32)
    return a, b


# ------------------------------------------------------------------ numpy equivalents
def np_fields(u):
    return (u >> 31).astype(np.uint8), ((u >> 23) & 0xFF).astype(np.uint8), u & 0x7FFFFF


def _np_ord(u):
    mag = (u & 0x7FFFFFFF).astype(np.int64)
    return np.where((u >> 31) == 1, -mag, mag)


def np_ulp(fa, fb):
    ua, ub = fa.view(np.uint32), fb.view(np.uint32)
    special = (np.isnan(fa) * np.uint8(1)) | (np.isinf(fa) * np.uint8(2))
    special |= (np.isnan(fb) * np.uint8(4)) | (np.isinf(fb) * np.uint8(8))
    d = np.where(special == 0, _np_ord(ua) - _np_ord(ub), 0)
    return d, special


def np_hist_log2(fa, fb):
    d, special = np_ulp(fa, fb)
    d = d[special == 0]
    k = np.frexp(np.abs(d).astype(np.float64))[1]  # bit length of |d| (exact below 2^53)
    return np.bincount(32 + np.sign(d) * k, minlength=65), int(np.count_nonzero(special))


def np_fraction_bits(u):
    v = u[(u & 0x7FFFFFFF) < 0x7F800000]
    counts = np.array([np.count_nonzero((v >> bit) & 1) for bit in range(22, -1, -1)])
    return counts / v.size


def _median_time(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.fixture(scope="module")
def copy_GBps(data):
    """Memory ceiling of this machine in the same run: fresh-allocation copy of one input."""
    a, _ = data
    return a.nbytes / _median_time(a.copy, 3) / 1e9


def _record(benchmark, platform_meta, name, nbytes, numpy_s, copy_GBps):
    native_s = benchmark.stats.stats.median
    threads = _threads()
    gbs = nbytes / native_s / 1e9
    benchmark.extra_info.update(
        {
            "feature": name,
            "n": N,
            "input_bytes": nbytes,
            "native_median_s": native_s,
            "numpy_median_s": numpy_s,
            "ratio_vs_numpy": numpy_s / native_s,
            "native_GBps": gbs,
            "native_GBps_per_core": gbs / threads,
            "numpy_GBps": nbytes / numpy_s / 1e9,
            "threads": threads,
            "numpy_copy_GBps": copy_GBps,
            "loadavg_1min": os.getloadavg()[0],
            "platform": platform_meta,
        }
    )


def test_fields(benchmark, data, platform_meta, copy_GBps):
    a, _ = data
    out = benchmark.pedantic(F.fields, args=(a,), rounds=NATIVE_ROUNDS, warmup_rounds=1)
    u = a.view(np.uint32)
    ref = np_fields(u)
    numpy_s = _median_time(lambda: np_fields(u), NUMPY_ROUNDS)
    _record(benchmark, platform_meta, "fields", a.nbytes, numpy_s, copy_GBps)
    assert all(np.array_equal(x, y) for x, y in zip(out, ref))


def np_fields_out(u, out, tmp):
    sign, expo, frac = out
    np.right_shift(u, 31, out=tmp)
    np.copyto(sign, tmp, casting="unsafe")
    np.right_shift(u, 23, out=tmp)
    np.bitwise_and(tmp, 0xFF, out=tmp)
    np.copyto(expo, tmp, casting="unsafe")
    np.bitwise_and(u, 0x7FFFFF, out=frac)
    return out


def _fields_buffers():
    return np.ones(N, np.uint8), np.ones(N, np.uint8), np.ones(N, np.uint32)


def test_fields_reused_out(benchmark, data, platform_meta, copy_GBps):
    """fields(out=...) with buffers reused across calls (batch-after-batch extraction), against
    numpy writing into reused buffers too: both sides skip the first-touch cost."""
    a, _ = data
    out, np_out, tmp = _fields_buffers(), _fields_buffers(), np.ones(N, np.uint32)
    benchmark.pedantic(
        F.fields, args=(a,), kwargs={"out": out}, rounds=NATIVE_ROUNDS, warmup_rounds=1
    )
    u = a.view(np.uint32)
    numpy_s = _median_time(lambda: np_fields_out(u, np_out, tmp), NUMPY_ROUNDS + 1)
    _record(benchmark, platform_meta, "fields_out_reused", a.nbytes, numpy_s, copy_GBps)
    assert all(np.array_equal(x, y) for x, y in zip(out, np_out))


def test_ulp_distance(benchmark, data, platform_meta, copy_GBps):
    a, b = data
    out = benchmark.pedantic(
        F.ulp_distance, args=(a, b), rounds=NATIVE_ROUNDS, warmup_rounds=1
    )
    ref_d, ref_s = np_ulp(a, b)
    nbytes = a.nbytes + b.nbytes
    numpy_s = _median_time(lambda: np_ulp(a, b), NUMPY_ROUNDS)
    _record(benchmark, platform_meta, "ulp_distance", nbytes, numpy_s, copy_GBps)
    assert np.array_equal(out.distance, ref_d) and np.array_equal(out.special, ref_s)


def test_ulp_histogram(benchmark, data, platform_meta, copy_GBps):
    a, b = data
    out = benchmark.pedantic(
        F.ulp_histogram, args=(a, b), kwargs={"mode": "log2"}, rounds=NATIVE_ROUNDS, warmup_rounds=1
    )
    ref_counts, ref_special = np_hist_log2(a, b)
    nbytes = a.nbytes + b.nbytes
    numpy_s = _median_time(lambda: np_hist_log2(a, b), NUMPY_ROUNDS)
    _record(benchmark, platform_meta, "ulp_histogram_log2", nbytes, numpy_s, copy_GBps)
    assert np.array_equal(out.counts, ref_counts) and out.n_special == ref_special


def test_fraction_bit_frequency(benchmark, data, platform_meta, copy_GBps):
    a, _ = data
    out = benchmark.pedantic(
        F.fraction_bit_frequency, args=(a,), rounds=NATIVE_ROUNDS, warmup_rounds=1
    )
    u = a.view(np.uint32)
    ref = np_fraction_bits(u)
    numpy_s = _median_time(lambda: np_fraction_bits(u), NUMPY_ROUNDS)
    _record(benchmark, platform_meta, "fraction_bit_frequency", a.nbytes, numpy_s, copy_GBps)
    assert np.array_equal(out, ref)
