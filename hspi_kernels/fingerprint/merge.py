"""Add the probe records of one fingerprint to another of the same platform (a reference that
gains the stack suite's probes recorded in a later run on the same kind of machine).

Only a platform with the same software and GPU model is accepted (torch, CUDA, cuDNN, cuBLAS,
driver, hspi build, GPU names and compute capabilities; machine-specific fields such as the GPU
UUID and the kernel build may differ); only probes absent from the base are added, ``ok`` ones
only unless ``keep_failed``; the result says where every added record came from (``merged``).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["merge", "SAME_PLATFORM_FIELDS"]

SAME_PLATFORM_FIELDS = ("python", "numpy", "ml_dtypes", "triton", "cupy", "nvcc_runtime", "driver", "cublas")


def _gpu_signature(platform: dict[str, Any]) -> tuple:
    t = platform.get("torch") or {}
    gpus = t.get("gpus") or []
    return (t.get("version"), t.get("cuda_runtime"), t.get("cudnn"),
            tuple((g.get("name"), g.get("compute_capability"), g.get("sm_count")) for g in gpus))


def merge(base: dict[str, Any], extra: dict[str, Any], source: str, keep_failed: bool = False) -> dict[str, Any]:
    """A new fingerprint: ``base`` plus the records of ``extra`` whose ids ``base`` lacks.
    ValueError when the two platforms differ in software or GPU model (the field is named)."""
    pa, pb = base.get("platform") or {}, extra.get("platform") or {}
    if _gpu_signature(pa) != _gpu_signature(pb):
        raise ValueError(f"merge: {source}: torch / CUDA / GPU differ: {_gpu_signature(pb)} vs {_gpu_signature(pa)}")
    for key in SAME_PLATFORM_FIELDS:
        if pa.get(key) != pb.get(key):
            raise ValueError(f"merge: {source}: platform field {key!r} differs: {pb.get(key)!r} vs {pa.get(key)!r}")
    have = {r["id"] for r in base["probes"]}
    added = [copy.deepcopy(r) for r in extra["probes"]
             if r["id"] not in have and (keep_failed or r.get("status") == "ok")]
    left = [r["id"] for r in extra["probes"] if r["id"] not in have and not keep_failed and r.get("status") != "ok"]
    out = copy.deepcopy(base)
    out["probes"] = out["probes"] + added
    gpus = (pb.get("torch") or {}).get("gpus") or []
    out.setdefault("merged", []).append({
        "source": source, "created": extra.get("created"), "probes": [r["id"] for r in added],
        "left_out": left, "gpu_uuid": [g.get("uuid") for g in gpus]})
    return out
