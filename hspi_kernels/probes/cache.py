"""On-disk cache of the probe suite's host arrays: seeded operands, fp64 references and plan
evaluations. A warm ``hspi probe`` reads them back instead of recomputing them (drawing a
4096×4096 normal operand costs ~0.4 s; the fp64 references and exact plan evaluations cost
seconds together; H100: 5.7 s of operands, 1.8 s of features and 0.6 s of plans cold, 0.36 +
0.18 + 0.02 s warm), while the probes themselves still run every time.

Where: ``$HSPI_CACHE_DIR``, else ``$XDG_CACHE_HOME/hspi_kernels``, else ``~/.cache/hspi_kernels``.
Off: ``HSPI_CACHE=0`` (or ``set_enabled(False)``, ``hspi probe --no-cache``); emptied by
``hspi probe --clear-cache``. Size: ~0.6 GB for the full GPU suite (its operands), ~15 MB for
the CPU probes.

A cache must never change a result, so:

- the key is the full JSON of *what* was computed and *by which code*: operands by generator
  (its code object), spec, numpy and ml_dtypes versions; derived arrays (``derived``) by the
  probe, its inputs, the plan, the function and its arguments, and a digest of every source file
  of the package plus the native module (any code change makes a new key);
- an entry stores its full key, dtype, shape, size and an xxh3-128 checksum of the data; a file
  that is truncated, corrupted, of another key (hash collision) or unreadable is ignored and
  rewritten with the freshly computed array, never returned;
- only plain numeric dtypes travel (no pickle, no object arrays); writes are atomic
  (temporary file + rename) and a failed write (read-only or full disk) only costs speed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import os
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np
import xxhash

import hspi_kernels

MAGIC = b"HSPIARR1"
FORMAT_VERSION = 1
_MAX_HEADER = 1 << 20
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
           "uint64", "uint32", "uint16", "uint8", "bool")

_enabled: bool | None = None      # None: from $HSPI_CACHE
_lock = threading.Lock()
stats = {"hits": 0, "misses": 0, "rejected": 0, "write_errors": 0}


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("HSPI_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def set_enabled(value: bool | None) -> None:
    """True / False forces the cache on / off for this process; None: back to ``$HSPI_CACHE``."""
    global _enabled
    _enabled = value


def cache_dir() -> Path:
    if os.environ.get("HSPI_CACHE_DIR"):
        return Path(os.environ["HSPI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hspi_kernels"


def unusable_reason() -> str | None:
    """Why the cache directory cannot hold entries (None when it can): a path that is a file or
    under one, or a directory this process cannot write (tried with a real file, so read-only
    mounts and permissions count for root too). The caller then runs without the disk cache."""
    root = cache_dir()
    where = f"cache directory {root}" + (" ($HSPI_CACHE_DIR)" if os.environ.get("HSPI_CACHE_DIR") else "")
    if root.exists() and not root.is_dir():
        return f"{where} is not a directory"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-probe-", dir=root)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"{where} is not writable ({exc.strerror or exc})"
    return None


def _numpy_dtype(name: str) -> np.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not cacheable")
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _checksum(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def _path(namespace: str, key_text: str) -> Path:
    digest = hashlib.sha256(key_text.encode()).hexdigest()
    return cache_dir() / f"v{FORMAT_VERSION}" / namespace / digest[:2] / f"{digest}.arr"


def read(path: Path, key_text: str) -> np.ndarray | None:
    """The array stored at ``path`` for exactly this key, or None (absent, other key, damaged)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        if blob[:8] != MAGIC:
            raise ValueError("bad magic")
        (header_len,) = struct.unpack("<Q", blob[8:16])
        if header_len > _MAX_HEADER:
            raise ValueError("header too long")
        header = json.loads(blob[16:16 + header_len].decode("utf-8"))
        if not isinstance(header, dict) or header.get("key") != key_text:
            raise ValueError("other key")
        dtype = _numpy_dtype(header["dtype"])
        shape = tuple(int(d) for d in header["shape"])
        data = memoryview(blob)[16 + header_len:]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if any(d < 0 for d in shape) or len(data) != expected or header.get("nbytes") != expected:
            raise ValueError("size mismatch")
        if _checksum(data) != header.get("xxh3_128"):
            raise ValueError("checksum mismatch")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error):
        stats["rejected"] += 1
        return None
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # read-only view of the file's bytes


def write(path: Path, key_text: str, array: np.ndarray) -> bool:
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    data = array.reshape(-1).view(np.uint8).data if array.size else b""
    header = json.dumps({"key": key_text, "dtype": array.dtype.name, "shape": list(array.shape),
                         "nbytes": array.nbytes, "xxh3_128": _checksum(data)}).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<Q", len(header)) + header)
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        stats["write_errors"] += 1
        return False
    return True


def cached(namespace: str, key: dict[str, Any], compute: Callable[[], Any]) -> np.ndarray:
    """``compute()`` as a numpy array, from the cache when an intact entry of this key exists.
    Arrays of a dtype the cache does not store are computed and returned uncached."""
    if not enabled():
        return np.asarray(compute())
    key_text = _key_text({"namespace": namespace, **key})
    path = _path(namespace, key_text)
    array = read(path, key_text)
    if array is not None:
        stats["hits"] += 1
        return array
    stats["misses"] += 1
    array = np.asarray(compute())
    if array.dtype.name in _DTYPES and array.dtype != object:
        write(path, key_text, array)
    return array


def code_digest(fn: Callable) -> str:
    """sha256 of a function's code object (bytecode, constants, names): changes when it is edited."""
    return hashlib.sha256(marshal.dumps(fn.__code__)).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """sha256 over every source file of hspi_kernels and its native module: the code version
    that derived arrays (references, plan evaluations) are keyed by."""
    root = Path(hspi_kernels.__file__).parent
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and (
        p.suffix == ".py" or (p.name.startswith("_native") and p.suffix in (".so", ".pyd"))))
    # a source checkout (editable install) also keys by the C++ the native module is built from
    csrc = root.parent / "csrc"
    if csrc.is_dir():
        files += sorted(p for p in csrc.rglob("*") if p.is_file() and p.suffix in (".cpp", ".cc", ".h", ".hpp"))
    for p in files:
        h.update(str(p.relative_to(root.parent)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:32]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return False
    return True


def derivable_key(fn: Callable) -> dict[str, Any] | None:
    """A cache key for ``fn()`` when it is a ``functools.partial`` of a module-level function of
    this package with JSON arguments (the built-in probes' references and plan evaluations);
    None for anything else (lambdas, closures, test doubles): those are never cached."""
    if not isinstance(fn, functools.partial):
        return None
    func = fn.func
    module = getattr(func, "__module__", "") or ""
    qualname = getattr(func, "__qualname__", "")
    if not module.startswith("hspi_kernels.") or "<" in qualname or not hasattr(func, "__code__"):
        return None
    if not _jsonable(list(fn.args)) or not _jsonable(fn.keywords):
        return None
    return {"function": f"{module}.{qualname}", "code": code_digest(func), "args": list(fn.args),
            "keywords": fn.keywords, "package": package_digest()}


def derived(kind: str, fn: Callable, extra_args: tuple = (), key: dict[str, Any] | None = None) -> np.ndarray:
    """``fn(*extra_args)`` through the cache when ``fn`` has a derivable key (see above)."""
    base = derivable_key(fn)
    if base is None or not _jsonable(list(extra_args)):
        return np.asarray(fn(*extra_args))
    namespace = f"{kind}-{base['package'][:12]}"
    _prune_once(kind, namespace)
    return cached(namespace, {**base, "extra": list(extra_args), **(key or {})}, lambda: fn(*extra_args))


_pruned: set[str] = set()


def _prune_once(kind: str, keep: str) -> None:
    """Derived entries of other code versions can never be read again: drop them (once per
    process and kind) so that editing the package does not grow the cache without bound."""
    if kind in _pruned or not enabled():
        return
    _pruned.add(kind)
    root = cache_dir() / f"v{FORMAT_VERSION}"
    try:
        stale = [p for p in root.iterdir() if p.name.startswith(f"{kind}-") and p.name != keep]
    except OSError:
        return
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


def clear() -> None:
    """Remove every cached entry of this format version (``hspi probe --clear-cache``)."""
    with _lock:
        shutil.rmtree(cache_dir() / f"v{FORMAT_VERSION}", ignore_errors=True)
