"""GPU validation runs (bits of a kernel == bits of its plan), one module per kernel family.

``REGISTRY`` maps a name to the module whose ``run(out_dir, scale=1.0) -> dict`` runs on a GPU
machine and writes its JSON record into ``out_dir``; ``GROUPS`` names the sets `hspi validate`
and ``python -m hspi_kernels.kernels.validation`` accept. Importing this package imports none of them.

Every validation record carries one verdict, made by :func:`verdict` from the family's named
checks (each family module's public ``checks(record) -> {name: bool | None}``, a pure function
of the record, so the verdict can be recomputed from a stored record):

    "passed":  true | false                        (the one key every reader reads)
    "verdict": {"checks": {name: true | false | null}, "matched": k, "total": n}

``null`` is a check that did not apply on this machine (e.g. an sm_90-only section elsewhere);
``total`` counts the checks that applied, ``matched`` those that passed; ``passed`` is
``total > 0 and matched == total``. :func:`passed` reads it back.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from hspi_kernels.platform.files import check_output_dir

REGISTRY = {
    "cuda_core": "hspi_kernels.kernels.validation.cuda_core",
    "tensor_core": "hspi_kernels.kernels.validation.tensor_core",
    "attention_sfu": "hspi_kernels.kernels.validation.attention_sfu",
    "triton": "hspi_kernels.kernels.validation.triton_kernels",
}
GROUPS = {
    "cuda": ("cuda_core", "tensor_core", "attention_sfu"),
    "triton": ("triton",),
    "all": tuple(REGISTRY),
}


def resolve(names: list[str]) -> list[str]:
    """Expand group names; ValueError naming the unknown ones."""
    out: list[str] = []
    for name in names:
        members = GROUPS.get(name, (name,))
        unknown = [m for m in members if m not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown validation {name!r}; known: {sorted(REGISTRY)} and groups {sorted(GROUPS)}")
        out += [m for m in members if m not in out]
    return out


def verdict(checks: dict[str, bool | None]) -> dict[str, Any]:
    """``{"passed", "verdict"}`` of a record from its named checks (see the module doc)."""
    applied = {name: bool(ok) for name, ok in checks.items() if ok is not None}
    matched = sum(applied.values())
    return {"passed": bool(applied) and matched == len(applied),
            "verdict": {"checks": {name: (None if ok is None else bool(ok)) for name, ok in checks.items()},
                        "matched": matched, "total": len(applied)}}


def record_verdict(record: dict[str, Any], checks: dict[str, bool | None]) -> dict[str, Any]:
    """Write the verdict of ``checks`` into ``record`` (last keys, replacing any earlier one); returns it."""
    record.pop("passed", None)
    record.pop("verdict", None)
    record.update(verdict(checks))
    return record


def passed(record: dict[str, Any]) -> bool:
    """The verdict of a validation record: its ``"passed"`` key (False when it has none)."""
    return record.get("passed") is True


def run(names: list[str], out_dir: str | Path, scale: float = 1.0) -> dict[str, Any]:
    """Run the named validations into ``out_dir/<name>/``; one failing run is recorded, the rest go on.
    ValueError (before any work) for an unknown name, a scale <= 0 or an output folder that
    cannot be written (:class:`~hspi_kernels.platform.files.OutputPathError`)."""
    selected = resolve(names)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    check_output_dir(out_dir, kind="validation output folder")
    results: dict[str, Any] = {}
    for name in selected:
        target = Path(out_dir) / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            result = importlib.import_module(REGISTRY[name]).run(str(target), scale=scale)
            results[name] = {"ok": passed(result), "out": str(target)}
        except Exception as exc:  # recorded, and the other families still run
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results
