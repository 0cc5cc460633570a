"""hspi_kernels.kernels.bench without a GPU: case selection, the roofline arithmetic, the
geomean, the plot, and the clear refusal when no GPU is there (the timings run on the H200:
docs/results/h200/bench_cli.json)."""

from __future__ import annotations

import pytest

from hspi_kernels.kernels import bench as KB


def test_select_by_name_or_family_and_unknown_patterns_named():
    assert KB.select(None) == KB.CASES
    gemms = KB.select(["gemm.triton"])
    assert gemms and all(c.family == "gemm.triton" for c in gemms)
    assert [c.name for c in KB.select(["vec4"])] == ["cuda_vec4_sum_fp32_268435456"]
    with pytest.raises(ValueError, match="nosuch.*matches no case"):
        KB.select(["vec4", "nosuch"])


def test_case_names_unique_and_geomean_set_is_the_issue_shapes():
    names = KB.case_names()
    assert len(names) == len(set(names))
    geo = [c.name for c in KB.CASES if "gemm_geomean" in c.tags]
    assert geo == [f"triton_gemm_bf16_{m}x4096x4096" for m in (1, 16, 64, 256)] + \
        ["triton_gemm_bf16_4096x4096x4096", "triton_gemm_bf16_8192x8192x8192"]


def test_geomean_and_roofline():
    assert KB.geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert KB.geomean([]) is None
    assert KB.geomean([4.0, None, 0.0]) == pytest.approx(4.0)  # missing ratios are left out
    case = next(c for c in KB.CASES if c.name == "triton_gemm_bf16_8192x8192x8192")
    # compute-bound: 2*8192^3 flop at 1000 TFLOP/s = 1.0995 ms, bytes at 4 TB/s far less
    assert KB._roofline_ms(case, 1000.0, 4.0) == pytest.approx(2 * 8192**3 / 1e12)
    decode = next(c for c in KB.CASES if c.name == "triton_gemm_bf16_1x4096x4096")
    # memory-bound: the 32 MiB weight at 4 TB/s
    assert KB._roofline_ms(decode, 1000.0, 4.0) == pytest.approx(decode.bytes / 4e9)
    assert decode.bytes >= 4096 * 4096 * 2  # at least the bf16 weight
    assert KB._roofline_ms(case, None, 4.0) is None
    assert KB._peaks("NVIDIA H200")["hbm_tbps"] == 4.8 and KB._peaks("Some GPU") is None


def test_run_refuses_cleanly_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the refusal is for GPU-less machines")
    with pytest.raises(KB.BenchUnavailable, match="needs a CUDA GPU"):
        KB.run()
    with pytest.raises(ValueError, match="rounds"):
        KB.run(rounds=0)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    ok = {"status": "ok", "name": "a", "device": {"ratio": 1.1}, "host": {"ratio": 0.9}, "roofline": 0.7}
    record = {"gpu": "test", "cases": [ok, {"status": "skipped", "name": "b"}]}
    out = KB.plot(record, tmp_path / "bench.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="no case ran"):
        KB.plot({"gpu": "x", "cases": [{"status": "skipped", "name": "b"}]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
