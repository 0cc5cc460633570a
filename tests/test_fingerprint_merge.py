"""fingerprint.merge: a reference gains the probes of a later run on the same platform; a run on
another platform (different torch or GPU) is refused; failed records are left out and listed."""

from __future__ import annotations

import copy

import pytest

from hspi_kernels import identify
from hspi_kernels.fingerprint.merge import merge


def _fp(probes, torch_version="2.11.0+cu130", gpu="NVIDIA H200"):
    return {"schema": "hspi-fingerprint/1", "created": "2026-12-02T00:00:00+00:00", "label": "x",
            "platform": {"torch": {"version": torch_version, "gpus": [{"name": gpu, "compute_capability": "9.0",
                                                                       "uuid": "u1"}]}},
            "probes": probes}


def test_merge_adds_absent_ok_probes_with_provenance():
    base = _fp([{"id": "a", "status": "ok"}])
    extra = _fp([{"id": "a", "status": "ok", "digest": "other"}, {"id": "b", "status": "ok"},
                 {"id": "c", "status": "failed"}])
    out = merge(base, extra, "later.json")
    assert [r["id"] for r in out["probes"]] == ["a", "b"]
    assert "digest" not in out["probes"][0]  # the base's own record is kept
    assert out["merged"][-1]["probes"] == ["b"] and out["merged"][-1]["left_out"] == ["c"]
    assert base["probes"] == [{"id": "a", "status": "ok"}]  # inputs untouched


@pytest.mark.parametrize("kw", [{"torch_version": "2.10.0"}, {"gpu": "NVIDIA H100 80GB HBM3"}])
def test_merge_refuses_another_platform(kw):
    with pytest.raises(ValueError, match="differ"):
        merge(_fp([]), _fp([{"id": "b", "status": "ok"}], **kw), "other.json")


def test_shipped_h200_reference_carries_the_stack_probes():
    h200 = next(r for r in identify.load_database() if r.id == "h200").fingerprint
    ids = {r["id"] for r in h200["probes"]}
    merged = h200["merged"][0]
    assert set(merged["probes"]) <= ids and len(merged["probes"]) == 16
    assert any("scaled-mm" in p for p in merged["probes"]) and merged["left_out"] == ["torch-cuda/int-mm/int8/32x4096x4096"]
    again = merge(copy.deepcopy(h200), h200, "same")  # idempotent: nothing absent, nothing added
    assert again["probes"] == h200["probes"] and again["merged"][-1]["probes"] == []
