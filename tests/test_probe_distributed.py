"""`hspi probe --distributed` (gloo ranks on the CPU) and `hspi probe --all-gpus` (the node
orchestration, run here on CPU probes): the records separate the TP degree, the revealed
all-reduce order and the row-parallel emulation explain their outputs N/N while the controls do
not, and bad arguments are refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from hspi_kernels.cli import app  # noqa: E402
from hspi_kernels.fingerprint import node, schema  # noqa: E402
from hspi_kernels.parallel import probes as DP  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def dist_fp(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "fp.json"
    res = runner.invoke(app, ["probe", "--only", "dist/", "--distributed", "2,4", "--server", "off", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return schema.load(out)


def test_records_are_valid_and_ran(dist_fp):
    ids = [r["id"] for r in dist_fp["probes"]]
    assert ids == DP.probe_ids((2, 4), "gloo")
    assert all(r["status"] == "ok" and r["deterministic"] for r in dist_fp["probes"]), dist_fp["probes"]


def test_tp_degrees_have_distinct_digests(dist_fp):
    d = {r["id"].rsplit("/", 1)[1]: r["digest"] for r in dist_fp["probes"] if "/row-linear/" in r["id"]}
    assert set(d) == {"tp1", "tp2", "tp4"}
    assert len(set(d.values())) == 3, d  # the negative control of the probe: equal digests would not separate


def test_allreduce_order_explains_its_outputs(dist_fp):
    for r in dist_fp["probes"]:
        if "/allreduce/" not in r["id"]:
            continue
        own, fresh = r["explained_by"]
        assert own["matches"] == own["total"] == r["inputs"]["numel"], r["id"]
        assert fresh["matches"] == fresh["total"] == 2 * r["inputs"]["numel"], r["id"]
        trees = own["plan"]["distinct_trees"]
        assert trees == ["(0,1)"] if r["inputs"]["world_size"] == 2 else len(trees) == 4


def test_row_parallel_emulation_matches_and_the_unsplit_control_does_not(dist_fp):
    for r in dist_fp["probes"]:
        if "/row-linear/" not in r["id"] or r["id"].endswith("tp1"):
            continue
        emu, ctrl = r["explained_by"]
        assert emu["matches"] == emu["total"] == 4096, r["id"]
        assert ctrl["matches"] < ctrl["total"] // 2, r["id"]  # TP 1's GEMM does not predict TP w


@pytest.mark.parametrize("args,words", [
    (["--distributed", "1"], "2..64"),
    (["--distributed", "2,x"], "not an integer"),
    (["--distributed", "4,4"], "given twice"),
    (["--distributed", "2", "--dist-backend", "mpi"], "auto, gloo, nccl"),
    (["--dist-backend", "gloo"], "needs --distributed"),
    (["--all-gpus", "--distributed", "2"], "does not combine"),
])
def test_bad_arguments_are_refused_before_work(tmp_path, args, words):
    out = tmp_path / "fp.json"
    res = runner.invoke(app, ["probe", "--only", "dist/", *args, "--out", str(out)])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()


def test_nccl_without_gpus_is_refused_with_the_reason(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine can run NCCL with 2 ranks")
    res = runner.invoke(app, ["probe", "--only", "dist/", "--distributed", "2", "--dist-backend", "nccl",
                              "--out", str(tmp_path / "fp.json")])
    assert res.exit_code == 2 and "nccl" in res.output.lower() and "Traceback" not in res.output


def test_world_size_parsing():
    assert DP.parse_world_sizes("2, 4,8") == (2, 4, 8)
    assert DP.resolve_backend("gloo", (2,)) == "gloo"
    for bad in ("", "0", "65", "a"):
        with pytest.raises(ValueError):
            DP.parse_world_sizes(bad)


# -- --all-gpus ---------------------------------------------------------------------------------
def test_all_gpus_without_a_gpu_is_a_clear_error(tmp_path):
    if node.gpu_indices():
        pytest.skip("this machine has a GPU")
    res = runner.invoke(app, ["probe", "--all-gpus", "--out", str(tmp_path / "node.json")])
    assert res.exit_code == 1 and "no CUDA GPU" in res.output and "Traceback" not in res.output


def test_node_run_probes_each_device_and_compares(tmp_path):
    """Two 'devices' on a CPU-only probe (CUDA_VISIBLE_DEVICES changes nothing for it): two
    fingerprints, bit-identical; a planted third fingerprint that differs is reported."""
    out = tmp_path / "node.json"
    summary = node.run(["0", "1"], out, ["--only", "numpy/sum", "--jobs", "1", "--no-cache"], timeout=600)
    assert json.loads(out.read_text())["schema"] == node.NODE_SCHEMA
    assert summary["all_ran"] and summary["bit_identical"], summary
    files = [tmp_path / g["fingerprint"] for g in summary["gpus"]]
    assert [f.name for f in files] == ["node.gpu0.json", "node.gpu1.json"]
    fps = [schema.load(f) for f in files]
    assert all(fp["probes"] and all(r["status"] == "ok" for r in fp["probes"]) for fp in fps)
    # negative control: the comparison flags a fingerprint whose digest differs
    planted = json.loads(files[1].read_text())
    planted["probes"][0]["digest"] = planted["probes"][0]["digests"][0] = "0" * 16
    assert schema.digest_differences(fps[0], schema.validate(planted, "planted"))


def test_node_run_records_a_failing_device(tmp_path):
    summary = node.run(["0"], tmp_path / "node.json", ["--only", "no-such-probe"], timeout=600)
    g = summary["gpus"][0]
    assert g["status"] == "failed" and g["exit_code"] == 2 and "no probe id contains" in g["log_tail"]
    assert not summary["all_ran"] and not summary["bit_identical"]


def test_partials_split_is_checked():
    with pytest.raises(ValueError):
        DP._split(5)
    x, W = DP._linear_operands()
    assert np.array_equal(DP._partials(x, W, 2, "cpu").shape, (2, 16, 256))


def test_tp1_baseline_does_not_depend_on_the_process_thread_count():
    torch = pytest.importorskip("torch")
    x, W = DP._linear_operands()
    n = torch.get_num_threads()
    try:
        got = []
        for t in (1, 4):
            torch.set_num_threads(t)
            got.append(DP._partials(x, W, 1, "cpu")[0])
            assert torch.get_num_threads() == t  # restored after the one-thread recompute
    finally:
        torch.set_num_threads(n)
    assert got[0].tobytes() == got[1].tobytes()
