"""Fingerprint files: schema ``hspi-fingerprint/1`` (JSON, never pickle).

Layout::

    {
      "schema": "hspi-fingerprint/1",
      "created": "2026-11-22T02:00:00+00:00",      # UTC, ISO 8601
      "label": "NVIDIA H100 80GB HBM3 (sm_90)",     # human name of the platform
      "platform": {...},                            # hspi_kernels.platform.collect()
      "probes": [                                   # one record per probe, in run order
        {"id": str, "family": str, "backend": str, "inputs": {...}, "measures": str,
         "status": "ok" | "failed" | "skipped",
         # status ok:
         "digest": "xxh3_64 hex" | null (null when nondeterministic),
         "digests": [hex, hex], "deterministic": bool,
         "output": {"dtype": str, "shape": [int]}, "time_s": float, "features": {...},
         # status failed: "error", "traceback"; status skipped: "reason"
        }
      ]
    }

``load`` validates before anything reads the content, and every problem is a ``ValueError``
naming the file and the field.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

SCHEMA = "hspi-fingerprint/1"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
STATUSES = ("ok", "failed", "skipped")


def build(platform: dict[str, Any], label: str, probes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "label": label,
        "platform": platform,
        "probes": probes,
    }


def save(fingerprint: dict[str, Any], path: str | Path) -> Path:
    validate(fingerprint, source=str(path))
    path = Path(path)
    path.write_text(json.dumps(fingerprint, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _depth(value: Any, limit: int, level: int = 0) -> None:
    if level > limit:
        raise ValueError(f"nested deeper than {limit} levels")
    if isinstance(value, dict):
        for item in value.values():
            _depth(item, limit, level + 1)
    elif isinstance(value, list):
        for item in value:
            _depth(item, limit, level + 1)


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
        _depth(fp, MAX_DEPTH)
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    schema = fp.get("schema")
    if schema != SCHEMA:
        raise ValueError(f"{source}: schema is {schema!r}, expected {SCHEMA!r}")
    _require(fp, "created", str, source)
    _require(fp, "label", str, source)
    _require(fp, "platform", dict, source)
    probes = _require(fp, "probes", list, source)
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
        _require(rec, "inputs", dict, where)
        if status == "ok":
            deterministic = _require(rec, "deterministic", bool, where)
            digests = _require(rec, "digests", list, where)
            if not digests or not all(isinstance(d, str) and len(d) <= 64 for d in digests):
                raise ValueError(f"{where}: digests must be a non-empty list of hex strings")
            if deterministic:
                digest = _require(rec, "digest", str, where)
                if digest not in digests:
                    raise ValueError(f"{where}: digest is not one of its digests")
            time_s = _require(rec, "time_s", (int, float), where)
            if not 0 <= time_s < 1e6:
                raise ValueError(f"{where}: time_s {time_s!r} out of range")
    return fp


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read fingerprint ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        fp = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None
    return validate(fp, source=str(path))
