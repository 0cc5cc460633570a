"""The fingerprint file: schema ``hspi-fingerprint/1`` (JSON, never pickle). Full reference:
docs/fingerprint.md.

Layout::

    {
      "schema": "hspi-fingerprint/1",
      "created": "2026-11-22T02:00:00+00:00",      # UTC, ISO 8601
      "label": "NVIDIA H100 80GB HBM3 (sm_90)",     # human name of the platform
      "platform": {...},                            # hspi_kernels.platform.collect()
      "probes": [                                   # one record per probe, in run order
        {"id": str, "family": str, "backend": str, "inputs": {...}, "measures": str,
         "role": "fingerprint" | "control",         # optional (absent in older files: from the registry)
         "status": "ok" | "failed" | "skipped",
         # status ok:
         "digest": "xxh3_64 hex" | null (null when nondeterministic),
         "digests": [hex, ...], "deterministic": bool,
         "output": {"dtype": str, "shape": [int]}, "time_s": float,
         "features": {                              # optional keys
            "fraction_bit_frequency": [float in [0, 1]],
            "ulp_vs_fp64": {"mean_abs", "max_abs", "exact_fraction",
                            "histogram": {"mode": "log2", "counts": [int], "n_special": int}},
            "sample": {"format": str, "n": int, "size": int, "bits": hex}},
         "kernels": [str],                          # optional: CUDA kernels of one run (torch.profiler)
         "kernels_error": str,                      # optional: why the kernel names are missing
         "explained_by": [{"plan": {...}, "repr": str, "matches": int, "total": int} | {"error": str}],
         "timing": {phase: seconds},                # optional: inputs, runs, profiled_run, digests,
                                                    # plans, features, total (probes.runner.run_probe)
         # status failed: "error", "traceback"; status skipped: "reason", "missing": [capability]
        }
      ],
      "suite": {"wall_s": float, "phases": {name: seconds}, "cache": {name: int}}  # optional
    }

``load`` validates before anything reads the content, and every problem is a ``ValueError``
naming the file and the field. Hostile files are refused before and while parsing: more than
``MAX_FILE_BYTES``, nesting deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` values, strings
longer than ``MAX_STRING`` characters, lists longer than ``MAX_LIST``, non-finite or huge
numbers (``NaN``, ``Infinity``, ``1e999``, integers beyond 2^63), duplicate object keys.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Any

from hspi_kernels.platform.files import atomic_write_text

__all__ = ["SCHEMA", "STATUSES", "ROLES", "build", "digests", "digest_differences", "save", "validate",
           "load", "loads", "main"]

SCHEMA = "hspi-fingerprint/1"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 2_000_000       # JSON values in one file
MAX_STRING = 256 * 1024     # characters in one string (tracebacks are the longest legitimate ones)
MAX_LIST = 1_000_000        # items in one list
MAX_INT = 2**63             # |int| must be below this
MAX_PROBES = 10_000
STATUSES = ("ok", "failed", "skipped")
ROLES = ("fingerprint", "control")


def build(platform: dict[str, Any], label: str, probes: list[dict[str, Any]],
          suite: dict[str, Any] | None = None) -> dict[str, Any]:
    fp = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "label": label,
        "platform": platform,
        "probes": probes,
    }
    if suite is not None:
        fp["suite"] = suite
    return fp


def digests(fp: dict[str, Any]) -> dict[str, str | None]:
    """{probe id: digest} of the probes that ran (status ok; None when nondeterministic)."""
    return {r["id"]: r.get("digest") for r in fp["probes"] if r.get("status") == "ok"}


def digest_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """[(probe id, digest in a, digest in b)] for every probe that ran in both with different
    digests, or ran (ok) in only one of them. Empty: the two fingerprints are bit-identical on
    every probe they ran."""
    da, db = digests(a), digests(b)
    return [(pid, da.get(pid), db.get(pid)) for pid in sorted(set(da) | set(db))
            if pid not in da or pid not in db or da[pid] != db[pid]]


def save(fingerprint: dict[str, Any], path: str | Path) -> Path:
    validate(fingerprint, source=str(path))
    text = json.dumps(fingerprint, indent=1, sort_keys=False) + "\n"
    return atomic_write_text(path, text)  # a reader never sees half a fingerprint


def _walk(root: Any, limit: int) -> None:
    """Structural limits on any JSON value, iteratively (no recursion a hostile file can exhaust)."""
    stack = [(root, 0, "$")]
    nodes = 0
    while stack:
        value, level, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} JSON values")
        if level > limit:
            raise ValueError(f"nested deeper than {limit} levels (at {path[:80]})")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: object keys must be strings")
                if len(key) > 256:
                    raise ValueError(f"{path}: object key longer than 256 characters")
                stack.append((item, level + 1, f"{path}.{key}"))
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                raise ValueError(f"{path}: list of {len(value)} items is longer than {MAX_LIST}")
            stack.extend((item, level + 1, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise ValueError(f"{path}: string of {len(value)} characters is longer than {MAX_STRING}")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if abs(value) >= MAX_INT:
                raise ValueError(f"{path}: integer out of range (|x| >= 2^63)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{path}: number is not finite")
        else:
            raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a JSON true/false is accepted only where bool is asked for
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def validate(fp: Any, source: str = "<fingerprint>") -> dict[str, Any]:
    if not isinstance(fp, dict):
        raise ValueError(f"{source}: a fingerprint is a JSON object, got {type(fp).__name__}")
    try:
        _walk(fp, MAX_DEPTH)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    schema = fp.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"{source}: schema is {schema!r}, expected {SCHEMA!r}")
    _require(fp, "created", str, source)
    _require(fp, "label", str, source)
    platform = _require(fp, "platform", dict, source)
    _validate_platform(platform, f"{source}: platform")
    probes = _require(fp, "probes", list, source)
    if len(probes) > MAX_PROBES:
        raise ValueError(f"{source}: {len(probes)} probes is more than {MAX_PROBES}")
    seen = set()
    for index, rec in enumerate(probes):
        where = f"{source}: probes[{index}]"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: must be an object")
        pid = _require(rec, "id", str, where)
        if pid in seen:
            raise ValueError(f"{where}: duplicate probe id {pid!r}")
        seen.add(pid)
        status = _require(rec, "status", str, where)
        if status not in STATUSES:
            raise ValueError(f"{where}: status {status!r} not one of {STATUSES}")
        if len(pid) > 256:
            raise ValueError(f"{where}: id longer than 256 characters")
        _require(rec, "inputs", dict, where)
        for key in ("family", "backend", "measures", "reason", "error", "traceback", "kernels_error"):
            _optional(rec, key, str, where)
        role = _optional(rec, "role", str, where)
        if role is not None and role not in ROLES:
            raise ValueError(f"{where}: role {role!r} not one of {ROLES}")
        missing = _optional(rec, "missing", list, where)
        if missing is not None and not all(isinstance(m, str) for m in missing):
            raise ValueError(f"{where}: 'missing' must be a list of capability names")
        if status == "ok":
            deterministic = _require(rec, "deterministic", bool, where)
            digests = _require(rec, "digests", list, where)
            if not digests or not all(isinstance(d, str) and len(d) <= 64 for d in digests):
                raise ValueError(f"{where}: digests must be a non-empty list of hex strings")
            if deterministic:
                digest = _require(rec, "digest", str, where)
                if digest not in digests:
                    raise ValueError(f"{where}: digest is not one of its digests")
            if not all(_HEX.fullmatch(d) for d in digests):
                raise ValueError(f"{where}: digests must be hex strings")
            time_s = _require(rec, "time_s", (int, float), where)
            if not 0 <= time_s < 1e6:
                raise ValueError(f"{where}: time_s {time_s!r} out of range")
            output = _optional(rec, "output", dict, where)
            if output is not None:
                _optional(output, "dtype", str, f"{where}.output")
                shape = _optional(output, "shape", list, f"{where}.output")
                if shape is not None and not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                 for d in shape):
                    raise ValueError(f"{where}.output: shape must be a list of non-negative integers")
            features = _optional(rec, "features", dict, where)
            if features is not None:
                _validate_features(features, f"{where}.features")
            kernels = _optional(rec, "kernels", list, where)
            if kernels is not None and not all(isinstance(k, str) and len(k) <= 1024 for k in kernels):
                raise ValueError(f"{where}: 'kernels' must be a list of kernel names (strings)")
            explained = _optional(rec, "explained_by", list, where)
            if explained is not None:
                _validate_explained_by(explained, f"{where}.explained_by")
        timing = _optional(rec, "timing", dict, where)
        if timing is not None:
            _seconds(timing, f"{where}.timing")
    suite = _optional(fp, "suite", dict, source)
    if suite is not None:
        wall = _optional(suite, "wall_s", (int, float), f"{source}: suite")
        if wall is not None and not 0 <= wall < 1e6:
            raise ValueError(f"{source}: suite: wall_s {wall!r} out of range")
        phases = _optional(suite, "phases", dict, f"{source}: suite")
        if phases is not None:
            _seconds(phases, f"{source}: suite.phases")
        counts = _optional(suite, "cache", dict, f"{source}: suite")
        if counts is not None:
            _number_list(list(counts.values()), f"{source}: suite.cache", 0, MAX_INT - 1, integer=True)
    return fp


def _seconds(phases: dict[str, Any], where: str) -> None:
    """A {phase: seconds} map: numbers in [0, 1e6)."""
    for key, value in phases.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
            raise ValueError(f"{where}: {key!r} must be a number of seconds in [0, 1e6), got {value!r}")


_HEX = re.compile(r"[0-9a-f]{1,64}")
_HEX_BITS = re.compile(r"[0-9a-f]*")


def _optional(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """The value of an optional field (None when absent), type-checked like ``_require``."""
    if key not in obj or obj[key] is None:
        return None
    return _require(obj, key, kind, where)


def _number_list(values: Any, where: str, lo: float, hi: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if not isinstance(values, list) or not all(
            isinstance(v, kinds) and not isinstance(v, bool) and lo <= v <= hi for v in values):
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{where}: must be a list of {kind} in [{lo}, {hi}]")


def _validate_features(features: dict[str, Any], where: str) -> None:
    if "fraction_bit_frequency" in features:
        freq = features["fraction_bit_frequency"]
        _number_list(freq, f"{where}.fraction_bit_frequency", 0.0, 1.0)
        if len(freq) > 64:
            raise ValueError(f"{where}.fraction_bit_frequency: more than 64 fraction bits")
    ulp = _optional(features, "ulp_vs_fp64", dict, where)
    if ulp is not None:
        for key in ("mean_abs", "max_abs", "exact_fraction"):
            value = _optional(ulp, key, (int, float), f"{where}.ulp_vs_fp64")
            if value is not None and value < 0:
                raise ValueError(f"{where}.ulp_vs_fp64: {key} must be >= 0")
        hist = _optional(ulp, "histogram", dict, f"{where}.ulp_vs_fp64")
        if hist is not None:
            counts = _require(hist, "counts", list, f"{where}.ulp_vs_fp64.histogram")
            if len(counts) > 2 * 64 + 1:
                raise ValueError(f"{where}.ulp_vs_fp64.histogram: more than 129 log2 bins")
            _number_list(counts, f"{where}.ulp_vs_fp64.histogram.counts", 0, MAX_INT - 1, integer=True)
            mode = _optional(hist, "mode", str, f"{where}.ulp_vs_fp64.histogram")
            if mode not in (None, "log2"):
                raise ValueError(f"{where}.ulp_vs_fp64.histogram: mode {mode!r} is not 'log2'")
    sample = _optional(features, "sample", dict, where)
    if sample is not None:
        w = f"{where}.sample"
        fmt = _require(sample, "format", str, w)
        widths = {"fp64": 16, "fp32": 8, "fp16": 4, "bf16": 4, "e4m3": 2, "e5m2": 2}
        if fmt not in widths:
            raise ValueError(f"{w}: format {fmt!r} not one of {sorted(widths)}")
        n = _require(sample, "n", int, w)
        bits = _require(sample, "bits", str, w)
        if not 0 < n <= 4096 or len(bits) != n * widths[fmt] or not _HEX_BITS.fullmatch(bits):
            raise ValueError(f"{w}: bits must be {n} {fmt} values as lower-case hex ({n * widths[fmt]} characters)")


def _validate_explained_by(entries: list, where: str) -> None:
    for i, entry in enumerate(entries):
        w = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{w}: must be an object")
        if "error" in entry:
            _require(entry, "error", str, w)
            continue
        _require(entry, "plan", dict, w)
        _optional(entry, "repr", str, w)
        matches = _require(entry, "matches", int, w)
        total = _require(entry, "total", int, w)
        if not 0 <= matches <= total:
            raise ValueError(f"{w}: matches {matches} must lie in [0, total={total}]")


def _validate_platform(platform: dict[str, Any], where: str) -> None:
    """Types of the platform keys that identify/report read (all optional: older files lack some)."""
    for key in ("hspi_kernels", "python", "os", "machine", "cpu_model", "numpy", "ml_dtypes", "triton",
                "cupy", "nvcc_runtime", "driver", "cublas"):
        _optional(platform, key, str, where)
    _optional(platform, "cpu_count", int, where)
    _optional(platform, "cpu_vendor", str, where)
    _optional(platform, "cpu_flags", list, where)
    torch = _optional(platform, "torch", dict, where)
    if torch is not None:
        _optional(torch, "version", str, f"{where}.torch")
        _optional(torch, "cuda_runtime", str, f"{where}.torch")
        gpus = _optional(torch, "gpus", list, f"{where}.torch")
        for i, gpu in enumerate(gpus or []):
            w = f"{where}.torch.gpus[{i}]"
            if not isinstance(gpu, dict):
                raise ValueError(f"{w}: must be an object")
            _optional(gpu, "name", str, w)
            _optional(gpu, "compute_capability", str, w)
    _optional(platform, "build", dict, where)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read fingerprint ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read fingerprint ({exc.strerror})") from None
    return loads(text, source=str(path))


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"integer {text[:40]}... is out of range")
    return int(text)


def loads(text: str, source: str = "<fingerprint>") -> dict[str, Any]:
    """Parse and validate fingerprint JSON text (the only way in: no pickle, no eval)."""
    if len(text) > MAX_FILE_BYTES:
        raise ValueError(f"{source}: {len(text)} characters is larger than the {MAX_FILE_BYTES} limit")
    try:  # the json module recurses per nesting level: RecursionError long before a crash
        fp = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                        parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{source}: rejected ({exc})") from None
    return validate(fp, source=source)


def main(argv: list[str] | None = None) -> int:
    """``python -m hspi_kernels.fingerprint A.json B.json``: the probes whose digests differ
    (or that ran in only one file); exit 0 when there are none, 1 when there are, 2 on a bad file."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hspi_kernels.fingerprint A.json B.json", file=sys.stderr)
        return 2
    try:
        a, b = load(args[0]), load(args[1])
    except ValueError as exc:
        print(f"invalid fingerprint: {exc}", file=sys.stderr)
        return 2
    diff = digest_differences(a, b)
    for pid, da, db in diff:
        print(f"{pid}: {da} != {db}")
    print(f"{len(digests(a))} / {len(digests(b))} probes ran; {len(diff)} differ")
    return 1 if diff else 0

