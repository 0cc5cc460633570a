"""The probe suite over worker processes (hspi_kernels.probes.parallel) and the CLI's fast exit:
records do not depend on the process they come from, a worker that dies fails its probes (never
loses them), the exit status survives os._exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hspi_kernels.probes import catalog, runner
from hspi_kernels.probes import parallel
from hspi_kernels.probes.registry import Probe


def _fake(pid: str, backend: str, family: str = "reduction") -> Probe:
    return Probe(id=pid, family=family, backend=backend, inputs={}, measures="-", run=lambda: None)


def test_partition_groups_and_job_counts():
    ps = [_fake("a", "torch-cuda"), _fake("b", "numpy"), _fake("c", "triton", "kernel"),
          _fake("d", "torch-cuda", "library-gemm"), _fake("e", "hspi-cuda", "kernel"), _fake("f", "torch-cpu")]
    assert [parallel.group_of(p) for p in ps] == ["main", "cpu", "triton", "library-gemm", "main", "cpu"]
    own, workers = parallel.partition(ps, 1)
    assert own == ps and workers == []
    own, workers = parallel.partition(ps, 4)
    assert [p.id for p in own] == ["a", "e"]
    assert [[p.id for p in w] for w in workers] == [["d"], ["c"], ["b", "f"]]
    own, workers = parallel.partition(ps, 2)  # one worker takes every other group, in GROUPS order
    assert [p.id for p in own] == ["a", "e"] and [[p.id for p in w] for w in workers] == [["d", "c", "b", "f"]]
    own, workers = parallel.partition(ps, 3)
    assert [[p.id for p in w] for w in workers] == [["d", "b", "f"], ["c"]]
    only_cpu = [ps[1], ps[5]]
    assert parallel.partition(only_cpu, 4) == (only_cpu, [])  # one group: no worker
    with pytest.raises(ValueError):
        parallel.partition(ps, 0)
    assert 1 <= parallel.default_jobs() <= len(parallel.GROUPS)


def _digests(records):
    return {r["id"]: (r["status"], r.get("digest"), r.get("deterministic")) for r in records}


def test_worker_records_equal_the_serial_suite(tmp_path, monkeypatch):
    """CPU probes run in a worker process give the records (status, digest, determinism) of the
    same probes run in this process; the merged list keeps the selection order."""
    monkeypatch.setenv("HSPI_CACHE_DIR", str(tmp_path / "cache"))
    selected = [p for p in catalog.all_probes() if p.backend in ("numpy", "torch-cpu")][:6]
    selected += [p for p in catalog.all_probes() if p.backend == "torch-cuda"][:2]  # main group (skipped without CUDA)
    serial = runner.run_all(selected, profile_kernels=False)
    seen = []
    suite = parallel.start(selected, 2, on_done=lambda p, r: seen.append(p.id))
    assert len(suite.workers) == 1 and [p.id for p in suite.own] == [p.id for p in selected[6:]]
    timing: dict = {}
    own = runner.run_all(suite.own, suite.report_own, profile_kernels=False, suite_timing=timing)
    merged = suite.finish(own, timing)
    assert [r["id"] for r in merged] == [p.id for p in selected]
    assert sorted(seen) == sorted(p.id for p in selected)  # every record reported once
    assert _digests(merged) == _digests(serial)
    assert sum(r["status"] == "ok" for r in merged) >= 5  # the CPU probes really ran
    assert timing["worker0.wall"] > 0 and timing["cache"]["hits"] + timing["cache"]["misses"] > 0


def test_a_dead_worker_fails_its_probes_with_the_reason():
    """Negative control: a worker given a probe this version does not have exits non-zero; every
    probe it did not report is a failed record carrying its stderr tail, none is dropped."""
    ghost = _fake("numpy/no-such-probe", "numpy")
    suite = parallel.start([_fake("torch-cuda/x", "torch-cuda"), ghost], 2)
    assert len(suite.workers) == 1
    merged = suite.finish([{"id": "torch-cuda/x", "status": "skipped"}])
    assert [r["id"] for r in merged] == ["torch-cuda/x", "numpy/no-such-probe"]
    dead = merged[1]
    assert dead["status"] == "failed" and "exited with status" in dead["error"]
    assert "has no probes" in dead["traceback"]


def test_cli_jobs_do_not_change_the_fingerprint(tmp_path):
    """`hspi probe -j 2` and `-j 1` in fresh processes (outside the source tree) write the same
    digests; the parallel one reports its worker in the suite phases (schema-valid)."""
    from hspi_kernels import fingerprint

    env = dict(os.environ, HSPI_CACHE_DIR=str(tmp_path / "cache"))
    out = {}
    for jobs in (1, 2):
        path = tmp_path / f"fp{jobs}.json"
        proc = subprocess.run([sys.executable, "-m", "hspi_kernels", "probe", "--only", "/sum/", "-j", str(jobs),
                               "--out", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "wrote" in proc.stdout  # flushed before the fast exit
        out[jobs] = fingerprint.load(path)
    assert _digests(out[1]["probes"]) == _digests(out[2]["probes"])
    assert any(r["status"] == "ok" for r in out[2]["probes"])
    assert "worker0.wall" in out[2]["suite"]["phases"] and "worker0.wall" not in out[1]["suite"]["phases"]


@pytest.mark.parametrize("code, status, message", [(3, 3, ""), (None, 0, ""), (0, 0, ""), ("bad input", 1, "bad input")])
def test_main_fast_exit_keeps_the_status(monkeypatch, capsys, code, status, message):
    """With torch loaded, main() ends through os._exit with the command's status (a message
    status is printed and becomes 1); without torch it is a normal SystemExit."""
    from hspi_kernels import cli

    pytest.importorskip("torch")

    def app():
        raise SystemExit(code)

    class Exited(Exception):
        pass

    def fake_exit(value):
        raise Exited(value)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(Exited) as info:
        cli.main()
    assert info.value.args[0] == status
    assert message in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "torch")
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == code


_NOISY_WORKER = """
import dataclasses, runpy, sys
from hspi_kernels.probes import catalog, registry

probe_id = sys.argv[1]
probe = catalog.get(probe_id)


def noisy():
    print("noise from a probe")  # a probe (or a library) printing on stdout
    return probe.run()


registry._REGISTRY[probe_id] = dataclasses.replace(probe, run=noisy)
runpy.run_module("hspi_kernels.probes.parallel", run_name="__main__")
"""


def test_worker_protocol_keeps_stdout_clean(tmp_path):
    """What a probe prints in a worker goes to its stderr: stdout carries protocol lines only."""
    ids = [p.id for p in catalog.all_probes() if p.backend == "numpy"][:2]
    script = tmp_path / "noisy_worker.py"
    script.write_text(_NOISY_WORKER)
    proc = subprocess.run([sys.executable, str(script), ids[0]], input=json.dumps({"ids": ids, "use_cache": False}),
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, HSPI_CACHE_DIR=str(tmp_path / "c")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "noise from a probe" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is protocol JSON
    assert [m["record"]["id"] for m in lines if "record" in m] == ids
    assert lines[-1].keys() == {"suite"}


_FORK_SCRIPT = """
import json, sys
import torch  # as the CLI: torch imported, no CUDA context, one thread
from hspi_kernels.probes import catalog, runner
from hspi_kernels.probes import parallel
from hspi_kernels.probes.registry import Probe

ready, why = parallel.fork_ready()
selected = [p for p in catalog.all_probes() if p.backend in ("numpy", "torch-cpu")][:4]
selected += [p for p in catalog.all_probes() if p.backend == "torch-cuda"][:1]
ghost = Probe(id="triton/no-such-probe", family="kernel", backend="triton", inputs={}, measures="-", run=lambda: None)
suite = parallel.start(selected + [ghost], 4, how="fork")
own = runner.run_all(suite.own, profile_kernels=False)
merged = suite.finish(own)
serial = runner.run_all(selected, profile_kernels=False)
print(json.dumps({"ready": ready, "how": suite.how, "workers": len(suite.workers),
                  "merged": [[r["id"], r["status"], r.get("digest"), r.get("error", ""), r.get("traceback", "")[-300:]]
                             for r in merged],
                  "serial": [[r["id"], r["status"], r.get("digest")] for r in serial]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork mode is Linux only")
def test_fork_mode_workers_match_serial_and_fail_loudly(tmp_path):
    """Workers forked after `import torch` (what `hspi probe` does on Linux) give the serial
    records; a forked worker handed an unknown probe dies and its probe is a failed record."""
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600, env=dict(os.environ, HSPI_CACHE_DIR=str(tmp_path / "c")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["ready"] and res["how"] == "fork" and res["workers"] == 2  # cpu group; triton group (the ghost)
    merged = {m[0]: m for m in res["merged"]}
    for pid, status, digest in res["serial"]:
        assert merged[pid][1:3] == [status, digest]
    ghost = merged["triton/no-such-probe"]
    assert ghost[1] == "failed" and "exited with status 1" in ghost[3] and "has no probes" in ghost[4]


def test_spawned_worker_imports_this_package_not_the_working_directory(tmp_path, monkeypatch):
    """A spawned worker started where another `hspi_kernels` sits in the working directory (CI runs
    from the source tree, whose uncompiled package shadows the installed one under `-m`) still
    imports the package this process runs."""
    shadow = tmp_path / "hspi_kernels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing package was imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HSPI_CACHE_DIR", str(tmp_path / "cache"))
    selected = [p for p in catalog.all_probes() if p.backend == "numpy"][:2]
    selected += [p for p in catalog.all_probes() if p.backend == "torch-cuda"][:1]
    suite = parallel.start(selected, 2, how="spawn")
    merged = suite.finish(runner.run_all(suite.own, profile_kernels=False))
    assert [r["status"] for r in merged[:2]] == ["ok", "ok"], [r.get("traceback", "")[-300:] for r in merged]
