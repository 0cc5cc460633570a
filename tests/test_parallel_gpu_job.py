"""The multi-GPU job (hspi_kernels.parallel.gpu_job) run on the CPU with gloo: every step runs
and is recorded, the records carry platform metadata, the NCCL settings change nothing on gloo
(the comparison finds no difference there), the markdown and the short table are written, and a
bad world size is refused before any work. The NCCL run itself needs a multi-GPU machine."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from hspi_kernels.parallel import gpu_job  # noqa: E402


def test_job_on_gloo(tmp_path, capsys):
    out = tmp_path / "o"
    rc = gpu_job.main([str(out), "--world", "2", "--backend", "gloo", "--settings", "2", "--all-gpus-only", "skip"])
    assert rc == 0
    rec = json.loads((out / gpu_job.JSON_NAME).read_text())
    assert rec["platform"]["label"] and list(rec["settings"]) == ["default", "NCCL_ALGO=Ring"]
    for s in rec["settings"].values():
        assert [r["status"] for r in s["records"]] == ["ok"] * 4
        ar = [r for r in s["records"] if "/allreduce/" in r["id"]]
        assert all(r["explained_by"][0]["matches"] == r["explained_by"][0]["total"] for r in ar)
    assert rec["setting_differences"] == {}  # gloo ignores NCCL_ALGO: the same bits
    assert all(s["status"] == "ok" for s in rec["steps"])
    md = (out / gpu_job.MD_NAME).read_text()
    assert "| setting | probe |" in md and "NCCL_ALGO=Ring" in md
    text = capsys.readouterr().out.splitlines()
    assert text[-9].startswith("setting") and len(text[text.index(text[-9]):]) == 9


def test_job_refuses_a_bad_world_size(tmp_path):
    assert gpu_job.main([str(tmp_path / "o"), "--world", "1", "--backend", "gloo"]) == 2
    assert not (tmp_path / "o").exists()


def test_nccl_without_gpus_is_a_recorded_skip(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine can run NCCL")
    out = tmp_path / "o"
    assert gpu_job.main([str(out), "--world", "2", "--all-gpus-only", "skip"]) == 0
    rec = json.loads((out / gpu_job.JSON_NAME).read_text())
    assert rec["steps"][0]["status"] == "skipped" and "NCCL" in rec["steps"][0]["reason"]
