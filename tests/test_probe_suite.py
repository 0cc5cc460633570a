"""The probe suite as data: declarative records, plans that explain our kernels bit for bit (with a
negative control), skipped-not-failed probes, output samples; on a GPU the full suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hspi_kernels.fingerprint import sample
from hspi_kernels.probes import catalog, runner
from hspi_kernels.numerics.plans import Sequential
from hspi_kernels.probes import cache
from hspi_kernels.probes.registry import Probe, ProbeUnsupported


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """This module's runs use a cache of their own (never the user's ~/.cache)."""
    old = os.environ.get("HSPI_CACHE_DIR")
    os.environ["HSPI_CACHE_DIR"] = str(tmp_path_factory.mktemp("hspi-cache"))
    yield
    if old is None:
        os.environ.pop("HSPI_CACHE_DIR", None)
    else:
        os.environ["HSPI_CACHE_DIR"] = old


def test_registry_is_declarative():
    all_probes = catalog.all_probes()
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
    record = runner.run_probe(catalog.select("numpy/sum/fp32/64x4097")[0])
    (entry,) = record["explained_by"]
    assert entry["matches"] == entry["total"] == 64 and "Pairwise" in entry["repr"]
    record = runner.run_probe(catalog.select("numpy/colsum")[0])
    assert record["explained_by"][0]["matches"] == record["explained_by"][0]["total"]


def test_wrong_plan_is_rejected():
    """Negative control: numpy's pairwise sum is not a left-to-right sum."""
    real = catalog.select("numpy/sum/fp32/64x4097")[0]
    wrong = Probe(id="test/wrong-plan", family="test", backend="numpy", inputs=real.inputs, measures="",
                  run=real.run, plans=(Sequential("fp32").to_json(),), plan_eval=real.plan_eval)
    entry = runner.run_probe(wrong)["explained_by"][0]
    assert entry["matches"] < entry["total"]


def test_unsupported_probe_is_skipped_not_failed():
    def unsupported():
        raise ProbeUnsupported("no kernel for this GPU")

    record = runner.run_probe(Probe(id="test/unsupported", family="test", backend="numpy", inputs={},
                                    measures="", run=unsupported))
    assert record["status"] == "skipped" and record["missing"] == ["backend"]


def test_gpu_probes_skip_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA available")
    record = runner.run_probe(catalog.select("torch-cuda/matmul/bf16/8x4096x4096")[0])
    assert record["status"] == "skipped" and "cuda" in record["missing"]


def test_output_sample_round_trip():
    x = np.arange(1000, dtype=np.float32) * np.float32(0.1)
    s = sample.output_sample(x)
    assert s["n"] == sample.SAMPLE_SIZE and s["format"] == "fp32" and len(s["bits"]) == 8 * s["n"]
    bits = sample.sample_array(s)
    assert bits[0] == x.view(np.uint32)[0] and bits[-1] == x.view(np.uint32)[-1]


def test_cpu_suite_is_fast_and_deterministic():
    import time

    cpu = [p for p in catalog.all_probes() if p.backend in ("numpy", "torch-cpu")]
    start = time.perf_counter()
    records = runner.run_all(cpu)
    assert time.perf_counter() - start < 60
    assert all(r["status"] == "ok" and r["deterministic"] for r in records), \
        [(r["id"], r.get("error")) for r in records if r["status"] != "ok" or not r["deterministic"]]


@pytest.mark.gpu
def test_gpu_suite_kernels_and_plans():
    """On a GPU: library GEMMs record kernel names; our kernels match their plans N/N."""
    records = {r["id"]: r for r in runner.run_all(catalog.select("torch-cuda/matmul/bf16/8x")
                                                  + catalog.select("hspi-cuda/") + catalog.select("triton/"))}
    gemm = records["torch-cuda/matmul/bf16/8x4096x4096"]
    assert gemm["status"] == "ok" and gemm.get("kernels"), gemm
    for pid, r in records.items():
        if r["status"] != "ok" or not r.get("explained_by"):
            continue
        for entry in r["explained_by"]:
            assert "error" not in entry and entry["matches"] == entry["total"], (pid, entry)


# ---------------------------------------------------------------------------------------------
# Suite speed machinery: the cache, the one profiler session, the timing record
# ---------------------------------------------------------------------------------------------
_FAST_CPU = ("numpy/sum/fp32/64x4097", "numpy/colsum", "numpy/dot", "torch-cpu/matmul/bf16/64x1024x64",
             "torch-cpu/sdpa/fp32")


def _fast_cpu_probes():
    return [p for pid in _FAST_CPU for p in catalog.select(pid)]


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timing", "time_s")}


def test_cache_changes_no_record():
    """Uncached, cold cache and warm cache runs give the same records (digests, features, plans)."""
    selected = _fast_cpu_probes()
    cache.set_enabled(False)
    try:
        uncached = [_comparable(r) for r in runner.run_all(selected)]
    finally:
        cache.set_enabled(None)
    suite_timing = {}
    cold = [_comparable(r) for r in runner.run_all(selected, suite_timing=suite_timing)]
    warm_timing = {}
    warm = [_comparable(r) for r in runner.run_all(selected, suite_timing=warm_timing)]
    assert uncached == cold == warm
    assert all(r["status"] == "ok" for r in warm) and warm[0]["explained_by"]
    assert warm_timing["cache"]["hits"] > 0 and warm_timing["cache"]["misses"] == 0


def test_corrupt_cache_changes_no_record():
    """Negative control for the cache: every entry damaged -> recomputed, same records."""
    selected = _fast_cpu_probes()
    reference = [_comparable(r) for r in runner.run_all(selected)]
    root = cache.cache_dir()
    damaged = 0
    for path in root.rglob("*.arr"):
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 0xFF
        path.write_bytes(bytes(blob))
        damaged += 1
    assert damaged
    timing = {}
    again = [_comparable(r) for r in runner.run_all(selected, suite_timing=timing)]
    assert again == reference and timing["cache"]["rejected"] > 0


def test_records_carry_timing():
    record = runner.run_probe(catalog.select("numpy/sum/fp32/64x4097")[0])
    timing = record["timing"]
    assert {"inputs", "runs", "digests", "plans", "features", "total"} <= timing.keys()
    assert all(v >= 0 for v in timing.values())
    assert timing["total"] >= timing["runs"] + timing["features"]
    assert len(record["digests"]) == runner.RUNS_PER_PROBE


def test_attribute_kernels():
    markers = [(100.0, 200.0, "a"), (300.0, 400.0, "b")]
    kernels = [(150.0, "k1"), (120.0, "k0"), (160.0, "k1"), (310.0, "k2"), (250.0, "stray"),
               (205.0, "late_a"), (295.0, "early_b"), (130.0, "Memcpy HtoD"), (330.0, "hspi-probe::b")]
    got = runner.attribute_kernels(markers, kernels, slack_us=10.0)
    assert got == {"a": ["k0", "k1", "late_a"], "b": ["early_b", "k2"]}
    # negative control: no slack -> the kernels just outside the markers are dropped, not moved
    assert runner.attribute_kernels(markers, kernels, slack_us=0.0) == {"a": ["k0", "k1"], "b": ["k2"]}


def test_kernel_recorder_one_session_attributes_per_probe():
    """The suite-wide profiler session attributes each op to the probe that ran it (CPU operators
    stand in for CUDA kernels here: the same events, markers and attribution code)."""
    import time

    import torch

    a = torch.ones(32, 32)
    recorder = runner.KernelRecorder("cpu")
    try:
        recorder.run("p/mm", lambda: (a @ a).numpy())
        time.sleep(0.002)
        b = a.sum()                      # outside every marker: attributed to nobody
        time.sleep(0.002)
        recorder.run("p/cumsum", lambda: a.cumsum(0).numpy())
    finally:
        names = recorder.finish()
    assert b.item() == 1024
    assert set(names) == {"p/mm", "p/cumsum"}
    assert any("mm" in n for n in names["p/mm"]) and not any("cumsum" in n for n in names["p/mm"])
    assert any("cumsum" in n for n in names["p/cumsum"]) and not any("aten::mm" == n for n in names["p/cumsum"])
    assert not any(n == "aten::sum" for ns in names.values() for n in ns)


def test_profiled_run_joins_the_determinism_check(monkeypatch):
    """A probe that records kernel names makes its second run the profiled one: still exactly two
    runs, and a difference between them still flags it nondeterministic."""
    import torch

    class CpuRecorder(runner.KernelRecorder):
        def __init__(self, device="cuda"):
            super().__init__("cpu")

    monkeypatch.setattr(runner, "KernelRecorder", CpuRecorder)
    calls = []
    stable = Probe(id="test/profiled", family="test", backend="torch-cpu", inputs={}, measures="",
                   run=lambda: calls.append(1) or torch.arange(4.0).cumsum(0).numpy(), profile_kernels=True)
    (record,) = runner.run_all([stable])
    assert len(calls) == 2 and record["deterministic"] and len(record["digests"]) == 2
    assert any("cumsum" in k for k in record["kernels"]) and "profiled_run" in record["timing"]
    rng = np.random.default_rng()
    flaky = Probe(id="test/profiled-flaky", family="test", backend="torch-cpu", inputs={}, measures="",
                  run=lambda: rng.standard_normal(4).astype(np.float32), profile_kernels=True)
    (record,) = runner.run_all([flaky])
    assert record["deterministic"] is False and record["digest"] is None


def test_probe_cli_timings_and_no_heavy_imports(tmp_path):
    """`hspi probe` records the suite timing and the cache counts, and never imports the model
    stack (transformers) or the GPU stacks on a CPU run."""
    out = tmp_path / "fp.json"
    code = ("import sys; from hspi_kernels.cli import main; "
            f"sys.argv = ['hspi', 'probe', '--only', 'numpy/sum', '--timings', '--out', {str(out)!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "heavy = [m for m in ('transformers', 'sklearn', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy")
    # cwd: not the source tree, whose uncompiled package would shadow the installed one under `-c`
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, COLUMNS="200", HSPI_CACHE_DIR=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hspi probe timings" in proc.stdout
    fp = json.loads(out.read_text())
    assert fp["suite"]["wall_s"] > 0 and "probes" in fp["suite"]["phases"]
    assert all("timing" in r for r in fp["probes"] if r["status"] == "ok")
