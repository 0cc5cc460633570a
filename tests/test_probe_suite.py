"""The probe suite as data: declarative records, plans that explain our kernels bit for bit (with a
negative control), skipped-not-failed probes, output samples; on a GPU the full suite."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels import probes
from hspi_kernels.numerics.plans import Sequential
from hspi_kernels.probes.registry import Probe, ProbeUnsupported


def test_registry_is_declarative():
    all_probes = probes.all_probes()
    assert len(all_probes) >= 60
    families = {p.family for p in all_probes}
    assert {"library-gemm", "reduction", "attention", "kernel", "elementwise"} <= families
    backends = {p.backend for p in all_probes}
    assert {"numpy", "torch-cpu", "torch-cuda", "hspi-cuda", "triton"} <= backends
    for p in all_probes:
        assert p.measures and p.role in ("fingerprint", "control")
        assert p.id.startswith(p.backend + "/")
        if p.family == "kernel" and p.role == "fingerprint":
            assert p.plans, f"{p.id}: our kernels declare the plan that explains them"
    # the known small-M heuristics region (DESIGN.md) is covered in bf16 and fp16
    ids = {p.id for p in all_probes}
    for m in (1, 8, 16, 32):
        assert f"torch-cuda/matmul/bf16/{m}x4096x4096" in ids
        assert f"torch-cuda/matmul/fp16/{m}x4096x4096" in ids
    for backend in ("flash", "efficient", "cudnn", "math"):
        assert any(i.startswith("torch-cuda/sdpa/") and i.endswith("/" + backend) for i in ids)


def test_cpu_probes_explained_by_plans():
    record = probes.run_probe(probes.select("numpy/sum/fp32/64x4097")[0])
    (entry,) = record["explained_by"]
    assert entry["matches"] == entry["total"] == 64 and "Pairwise" in entry["repr"]
    record = probes.run_probe(probes.select("numpy/colsum")[0])
    assert record["explained_by"][0]["matches"] == record["explained_by"][0]["total"]


def test_wrong_plan_is_rejected():
    """Negative control: numpy's pairwise sum is not a left-to-right sum."""
    real = probes.select("numpy/sum/fp32/64x4097")[0]
    wrong = Probe(id="test/wrong-plan", family="test", backend="numpy", inputs=real.inputs, measures="",
                  run=real.run, plans=(Sequential("fp32").to_json(),), plan_eval=real.plan_eval)
    entry = probes.run_probe(wrong)["explained_by"][0]
    assert entry["matches"] < entry["total"]


def test_unsupported_probe_is_skipped_not_failed():
    def unsupported():
        raise ProbeUnsupported("no kernel for this GPU")

    record = probes.run_probe(Probe(id="test/unsupported", family="test", backend="numpy", inputs={},
                                    measures="", run=unsupported))
    assert record["status"] == "skipped" and record["missing"] == ["backend"]


def test_gpu_probes_skip_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA available")
    record = probes.run_probe(probes.select("torch-cuda/matmul/bf16/8x4096x4096")[0])
    assert record["status"] == "skipped" and "cuda" in record["missing"]


def test_output_sample_round_trip():
    x = np.arange(1000, dtype=np.float32) * np.float32(0.1)
    s = probes.output_sample(x)
    assert s["n"] == probes.SAMPLE_SIZE and s["format"] == "fp32" and len(s["bits"]) == 8 * s["n"]
    bits = probes.sample_array(s)
    assert bits[0] == x.view(np.uint32)[0] and bits[-1] == x.view(np.uint32)[-1]


def test_cpu_suite_is_fast_and_deterministic():
    import time

    cpu = [p for p in probes.all_probes() if p.backend in ("numpy", "torch-cpu")]
    start = time.perf_counter()
    records = probes.run_all(cpu)
    assert time.perf_counter() - start < 60
    assert all(r["status"] == "ok" and r["deterministic"] for r in records), \
        [(r["id"], r.get("error")) for r in records if r["status"] != "ok" or not r["deterministic"]]


@pytest.mark.gpu
def test_gpu_suite_kernels_and_plans():
    """On a GPU: library GEMMs record kernel names; our kernels match their plans N/N."""
    records = {r["id"]: r for r in probes.run_all(probes.select("torch-cuda/matmul/bf16/8x")
                                                  + probes.select("hspi-cuda/") + probes.select("triton/"))}
    gemm = records["torch-cuda/matmul/bf16/8x4096x4096"]
    assert gemm["status"] == "ok" and gemm.get("kernels"), gemm
    for pid, r in records.items():
        if r["status"] != "ok" or not r.get("explained_by"):
            continue
        for entry in r["explained_by"]:
            assert "error" not in entry and entry["matches"] == entry["total"], (pid, entry)
