"""The one verdict schema of the validation records (hspi_kernels.kernels.validation.verdict):
made from named checks, read back by ``passed``, and every stored record under docs/results
carries it, recomputable from the record's own data by its family's ``verdict_checks``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hspi_kernels.kernels import validation as V
from hspi_kernels.kernels.validation import (attention_sfu, cuda_core, foundation, sanitizer, tensor_core,
                                             triton_kernels)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
FAMILIES = {
    "cuda_core_validation.json": cuda_core.verdict_checks,
    "tensor_core_validation.json": tensor_core.verdict_checks,
    "attention_sfu_validation.json": attention_sfu.verdict_checks,
    "triton_kernels_validation.json": triton_kernels.verdict_checks,
    "gpu_sanitize.json": sanitizer.verdict_checks,
    "foundation.json": foundation.verdict_checks,
}
OLD_KEYS = ("all_ok", "all_pass", "ok")


def test_verdict_counts_the_checks_that_applied():
    assert V.verdict({"a": True, "b": None, "c": True}) == {
        "passed": True, "verdict": {"checks": {"a": True, "b": None, "c": True}, "matched": 2, "total": 2}}
    failed = V.verdict({"a": True, "b": False})
    assert failed["passed"] is False and failed["verdict"]["matched"] == 1 and failed["verdict"]["total"] == 2
    assert V.verdict({})["passed"] is False  # nothing checked is not a pass
    assert V.verdict({"only": None})["passed"] is False  # nothing that applied is not a pass either


def test_record_verdict_and_passed():
    record = {"passed": True, "x": 1}
    V.record_verdict(record, {"a": False})
    assert list(record) == ["x", "passed", "verdict"] and not V.passed(record)
    assert V.passed(V.record_verdict({}, {"a": True}))
    assert not V.passed({})  # a record without a verdict has not passed
    assert not V.passed({"passed": "yes"})  # only the boolean counts


def _records():
    return sorted(p for p in RESULTS.rglob("*.json") if p.name in FAMILIES)


@pytest.mark.parametrize("path", _records(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_stored_records_carry_the_one_verdict(path):
    record = json.loads(path.read_text())
    assert isinstance(record["passed"], bool)
    assert not any(k in record or k in record.get("summary", {}) for k in OLD_KEYS)
    assert V.verdict(FAMILIES[path.name](record)) == {"passed": record["passed"], "verdict": record["verdict"]}


def test_there_are_records():
    assert len(_records()) == 12  # 6 H100 + 6 H200 (gpu_sanitize.json on the H200 since the fourth session)
