"""Fingerprint schema validation: good files load, every kind of bad file is rejected with a
message naming the problem (never a crash, never silently accepted)."""

from __future__ import annotations

import json

import pytest

from hspi_kernels import fingerprint


def _valid() -> dict:
    probe = {"id": "numpy/sum/fp32/4x8", "family": "reduction", "backend": "numpy",
             "inputs": {"x": {"seed": 1}}, "measures": "m", "status": "ok",
             "digest": "00ff", "digests": ["00ff", "00ff"], "deterministic": True,
             "output": {"dtype": "float32", "shape": [4]}, "time_s": 0.01, "features": {}}
    return fingerprint.build({"cpu_model": "x"}, "CPU: x", [probe])


def test_round_trip(tmp_path):
    path = fingerprint.save(_valid(), tmp_path / "fp.json")
    assert fingerprint.load(path) == json.loads(path.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda fp: fp.update(schema="hspi-fingerprint/0"), "schema"),
        (lambda fp: fp.pop("platform"), "missing field 'platform'"),
        (lambda fp: fp.update(probes={}), "'probes' must be list"),
        (lambda fp: fp["probes"][0].update(status="great"), "status"),
        (lambda fp: fp["probes"][0].update(deterministic=1), "'deterministic' must be bool"),
        (lambda fp: fp["probes"][0].update(time_s=True), "'time_s' must be"),
        (lambda fp: fp["probes"][0].update(time_s=1e300), "out of range"),
        (lambda fp: fp["probes"][0].update(digest="beef"), "not one of its digests"),
        (lambda fp: fp["probes"].append(dict(fp["probes"][0])), "duplicate probe id"),
        (lambda fp: fp["platform"].update(deep=_nest(100)), "nested deeper"),
    ],
)
def test_rejects_bad_fingerprints(tmp_path, mutate, message):
    fp = _valid()
    mutate(fp)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(fp))
    with pytest.raises(ValueError, match=message):
        fingerprint.load(path)


def _nest(depth: int):
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_rejects_truncated_and_non_json(tmp_path):
    path = tmp_path / "fp.json"
    text = json.dumps(_valid())
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        fingerprint.load(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not UTF-8|not valid JSON"):
        fingerprint.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        fingerprint.load(path)
    with pytest.raises(ValueError, match="cannot read"):
        fingerprint.load(tmp_path / "missing.json")


def test_digest_differences():
    a = _valid()
    b = json.loads(json.dumps(a))
    assert fingerprint.digest_differences(a, b) == []
    b["probes"][0].update(digest="00fe", digests=["00fe", "00fe"])       # negative control
    assert fingerprint.digest_differences(a, b) == [("numpy/sum/fp32/4x8", "00ff", "00fe")]
    c = json.loads(json.dumps(a))
    c["probes"][0]["status"] = "skipped"                               # ran in only one of them
    assert fingerprint.digest_differences(a, c) == [("numpy/sum/fp32/4x8", "00ff", None)]


def test_digest_diff_command(tmp_path, capsys):
    a = _valid()
    b = json.loads(json.dumps(a))
    b["probes"][0].update(digest="00fe", digests=["00fe", "00fe"])
    pa, pb = fingerprint.save(a, tmp_path / "a.json"), fingerprint.save(b, tmp_path / "b.json")
    assert fingerprint.main([str(pa), str(pa)]) == 0
    assert fingerprint.main([str(pa), str(pb)]) == 1 and "00ff != 00fe" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{")
    assert fingerprint.main([str(pa), str(tmp_path / "bad.json")]) == 2


def test_timing_and_suite_sections():
    fp = _valid()
    fp["probes"][0]["timing"] = {"inputs": 0.1, "runs": 0.2, "total": 0.4}
    fp["suite"] = {"wall_s": 3.5, "phases": {"probes": 3.0}, "cache": {"hits": 4, "misses": 0}}
    fingerprint.validate(fp)
    for mutate, message in [
        (lambda f: f["probes"][0]["timing"].update(runs=-1.0), "seconds"),
        (lambda f: f["probes"][0]["timing"].update(runs="fast"), "seconds"),
        (lambda f: f["probes"][0].update(timing=[1]), "'timing' must be dict"),
        (lambda f: f["suite"].update(wall_s=1e9), "out of range"),
        (lambda f: f["suite"]["phases"].update(probes=True), "seconds"),
        (lambda f: f["suite"]["cache"].update(hits=-1), "suite.cache"),
    ]:
        bad = json.loads(json.dumps(fp))
        mutate(bad)
        with pytest.raises(ValueError, match=message):
            fingerprint.validate(bad)


@pytest.mark.parametrize("first", ["hspi_kernels.probes.runner", "hspi_kernels.fingerprint", "hspi_kernels.identify",
                                   "hspi_kernels.probes.parallel", "hspi_kernels.probes.server"])
def test_take_imports_whatever_is_imported_first(first):
    """fingerprint.take imports the probe runner, which imports fingerprint.features: either order works."""
    import subprocess
    import sys

    code = (f"import {first}; from hspi_kernels.fingerprint.take import take; "
            "assert take.__module__ == 'hspi_kernels.fingerprint.take', take")
    subprocess.run([sys.executable, "-c", code], check=True)
