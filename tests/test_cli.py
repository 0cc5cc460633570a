"""The `hspi` CLI on a CPU machine: env and probe run, write valid JSON, and a failing probe is
recorded as failed while the rest still run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from hspi_kernels import fingerprint
from hspi_kernels.cli import app
from hspi_kernels.probes import catalog
from hspi_kernels.probes.registry import Probe
from hspi_kernels.probes.runner import run_all, run_probe

runner = CliRunner()


def test_env_json():
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["python"] and meta["numpy"]
    assert meta["capabilities"]["native"]["ok"]
    assert meta["build"]["available"]


def test_env_table():
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    assert "hspi env" in result.stdout


def test_probe_cpu_writes_valid_fingerprint(tmp_path):
    out = tmp_path / "fp.json"
    result = runner.invoke(app, ["probe", "--only", "numpy/", "--out", str(out)])
    assert result.exit_code == 0, result.output
    fp = fingerprint.load(out)
    ok = [r for r in fp["probes"] if r["status"] == "ok"]
    assert ok, fp["probes"]
    for record in ok:
        assert record["deterministic"] and len(record["digest"]) == 16
        assert len(record["features"]["fraction_bit_frequency"]) == 23


def test_probe_unknown_filter_exits_nonzero(tmp_path):
    result = runner.invoke(app, ["probe", "--only", "no-such-probe", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2


def test_failing_probe_recorded_and_rest_run():
    def boom():
        raise RuntimeError("deliberate failure")

    good = catalog.select("numpy/sum")[0]
    bad = Probe(id="test/boom", family="test", backend="numpy", inputs={}, measures="", run=boom)
    records = run_all([bad, good])
    assert records[0]["status"] == "failed" and "deliberate failure" in records[0]["error"]
    assert records[1]["status"] == "ok"


def test_nondeterministic_probe_is_flagged():
    rng = np.random.default_rng()
    flaky = Probe(id="test/flaky", family="test", backend="numpy", inputs={}, measures="",
                  run=lambda: rng.standard_normal(8).astype(np.float32))
    record = run_probe(flaky)
    assert record["status"] == "ok" and record["deterministic"] is False and record["digest"] is None


def test_probe_ids_unique_and_specs_seeded():
    all_ids = [p.id for p in catalog.all_probes()]
    assert len(all_ids) == len(set(all_ids))
    for p in catalog.all_probes():
        for spec in p.inputs.values():
            if isinstance(spec, dict):
                assert "seed" in spec


def test_import_is_light():
    code = ("import sys, hspi_kernels, hspi_kernels.cli, hspi_kernels.probes.catalog, hspi_kernels.probes.runner, "
            "hspi_kernels.fingerprint.features; "
            "heavy = [m for m in ('torch', 'triton', 'cupy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv", [["--help"], ["probe", "--help"]])
def test_module_entry_point(argv):
    out = subprocess.run([sys.executable, "-m", "hspi_kernels", *argv], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_public_api_names_shadow_no_subpackage():
    """``from hspi_kernels import identify`` is the subpackage, never the lazily loaded function of
    the same job (a name clash broke ``hspi identify`` once); every public name resolves."""
    import pkgutil

    import hspi_kernels

    subpackages = {m.name for m in pkgutil.iter_modules(hspi_kernels.__path__)}
    assert not subpackages & set(hspi_kernels._API), subpackages & set(hspi_kernels._API)
    code = ("from hspi_kernels import identify, reveal, fingerprint, trace; import types; "
            "assert all(isinstance(m, types.ModuleType) for m in (identify, reveal, fingerprint, trace))")
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in hspi_kernels._API:
        assert callable(getattr(hspi_kernels, name)), name
    assert "take_fingerprint" in (hspi_kernels.__doc__ or "") and "identify_fingerprint" in hspi_kernels.__doc__
