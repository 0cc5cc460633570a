"""GPU validation runs (bits of a kernel == bits of its plan), one module per kernel family.

``REGISTRY`` maps a name to the module whose ``run(out_dir, scale=1.0) -> dict`` runs on a GPU
machine and writes its JSON record into ``out_dir``; ``GROUPS`` names the sets `hspi validate`
and ``python -m hspi_kernels.kernels.validation`` accept. Importing this package imports none of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

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


def _passed(result: dict[str, Any]) -> bool:
    """The families report their verdict under slightly different keys."""
    for holder in (result, result.get("summary", {})):
        for key in ("all_ok", "all_pass", "passed"):
            if key in holder:
                return bool(holder[key])
    return False


def run(names: list[str], out_dir: str | Path, scale: float = 1.0) -> dict[str, Any]:
    """Run the named validations into ``out_dir/<name>/``; one failing run is recorded, the rest go on."""
    results: dict[str, Any] = {}
    for name in resolve(names):
        target = Path(out_dir) / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            result = importlib.import_module(REGISTRY[name]).run(str(target), scale=scale)
            results[name] = {"ok": _passed(result), "out": str(target)}
        except Exception as exc:  # recorded, and the other families still run
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results
