"""The probe suite's on-disk cache never changes a result: intact entries round-trip bit for bit,
damaged / foreign / unwritable entries fall back to computing (negative controls), only code of
this package with JSON arguments is cached; kernel-name attribution of the one-session profiler."""

from __future__ import annotations

import functools
import os

import ml_dtypes
import numpy as np
import pytest

from hspi_kernels.probes import cache
from hspi_kernels.probes.inputs import generate, generate_cached, spec


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HSPI_CACHE_DIR", str(tmp_path / "cache"))
    cache.set_enabled(True)
    yield
    cache.set_enabled(None)


def _entries(namespace: str) -> list:
    root = cache.cache_dir() / f"v{cache.FORMAT_VERSION}" / namespace
    return sorted(root.rglob("*.arr")) if root.exists() else []


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    (np.arange(10) / 3).astype(ml_dtypes.bfloat16),
    np.asarray(np.float64(1) / 3),                    # 0-d (numpy dot / vector sums)
    np.zeros((0, 5), np.float16),
    np.array([np.nan, -0.0, np.inf], np.float32),
])
def test_round_trip_bits(array):
    calls = []
    first = cache.cached("t", {"k": 1}, lambda: calls.append(1) or array)
    second = cache.cached("t", {"k": 1}, lambda: calls.append(1) or array)
    assert calls == [1] and _same(first, array) and _same(second, array)
    assert not second.flags.writeable  # a cached array is read-only: nobody can corrupt it in memory


@pytest.mark.parametrize("damage", ["flip_data", "truncate", "garbage", "empty"])
def test_damaged_entry_is_recomputed(damage):
    good = np.arange(64, dtype=np.float32)
    cache.cached("t", {"k": "d"}, lambda: good)
    (path,) = _entries("t")
    blob = bytearray(path.read_bytes())
    if damage == "flip_data":
        blob[-1] ^= 0x01
    elif damage == "truncate":
        blob = blob[:-4]
    elif damage == "garbage":
        blob = bytearray(b"not a cache entry at all")
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    rejected = cache.stats["rejected"]
    calls = []
    out = cache.cached("t", {"k": "d"}, lambda: calls.append(1) or good)
    assert calls == [1] and _same(out, good)
    if damage != "empty":
        assert cache.stats["rejected"] == rejected + 1
    # the entry was rewritten: the next read is a hit again
    assert _same(cache.cached("t", {"k": "d"}, lambda: pytest.fail("should be cached")), good)


def test_entry_of_another_key_is_not_returned():
    a, b = np.zeros(4, np.float32), np.ones(4, np.float32)
    cache.cached("t", {"k": "a"}, lambda: a)
    cache.cached("t", {"k": "b"}, lambda: b)
    paths = _entries("t")
    assert len(paths) == 2
    # a hash collision stand-in: put one key's file at the other's path
    data = {p: p.read_bytes() for p in paths}
    paths[0].write_bytes(data[paths[1]])
    paths[1].write_bytes(data[paths[0]])
    assert _same(cache.cached("t", {"k": "a"}, lambda: a), a)
    assert _same(cache.cached("t", {"k": "b"}, lambda: b), b)


def test_disabled_cache_writes_nothing():
    cache.set_enabled(False)
    calls = []
    for _ in range(2):
        cache.cached("t", {"k": 2}, lambda: calls.append(1) or np.ones(3))
    assert calls == [1, 1] and _entries("t") == []


def test_unwritable_cache_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HSPI_CACHE_DIR", str(blocker / "below-a-file"))  # mkdir fails
    errors = cache.stats["write_errors"]
    out = cache.cached("t", {"k": 3}, lambda: np.arange(3.0))
    assert _same(out, np.arange(3.0)) and cache.stats["write_errors"] == errors + 1


@pytest.mark.parametrize("s", [spec(7, (33, 17), "bf16"), spec(8, (5, 9), "fp16", scale=4.0),
                               spec(9, (100,), "fp32")])
def test_generate_cached_is_generate(s):
    direct = generate(s)
    assert _same(generate_cached(s), direct)      # computed and stored
    assert _same(generate_cached(s), direct)      # read back
    assert len(_entries("operand")) == 1
    other = dict(s, seed=s["seed"] + 1)           # negative control: another seed, another array
    assert not _same(generate_cached(other), direct)


def test_only_package_partials_with_json_arguments_are_cached():
    from hspi_kernels.probes import suite

    s = spec(1, (2, 3), "fp32")
    assert cache.derivable_key(functools.partial(suite._reduce_reference, "sum", s)) is not None
    assert cache.derivable_key(lambda: 1) is None
    assert cache.derivable_key(functools.partial(np.sum, [1, 2])) is None          # not our code
    assert cache.derivable_key(functools.partial(suite._reduce_reference, "sum", object())) is None
    calls = []

    def local(x):
        calls.append(x)
        return np.ones(2)

    for _ in range(2):
        cache.derived("reference", functools.partial(local, 1))
    assert calls == [1, 1]  # a test double is never cached


def test_derived_key_follows_the_code():
    from hspi_kernels.probes import suite

    s = spec(1, (2, 3), "fp32")
    k1 = cache.derivable_key(functools.partial(suite._reduce_reference, "sum", s))
    k2 = cache.derivable_key(functools.partial(suite._reduce_plan_eval, s))
    assert k1["code"] != k2["code"] and k1["package"] == k2["package"] == cache.package_digest()
    first = cache.derived("reference", functools.partial(suite._reduce_reference, "sum", s))
    again = cache.derived("reference", functools.partial(suite._reduce_reference, "sum", s))
    assert _same(first, again) and _same(first, suite._reduce_reference("sum", s))


def test_prune_drops_other_code_versions():
    stale = cache.cache_dir() / f"v{cache.FORMAT_VERSION}" / "reference-000000000000"
    stale.mkdir(parents=True)
    (stale / "x.arr").write_bytes(b"old")
    cache._pruned.discard("reference")
    from hspi_kernels.probes import suite

    cache.derived("reference", functools.partial(suite._reduce_reference, "sum", spec(2, (2, 2), "fp32")))
    assert not stale.exists()
    assert os.listdir(cache.cache_dir() / f"v{cache.FORMAT_VERSION}")
