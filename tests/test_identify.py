"""identify / compare against the shipped reference database, on a CPU machine: this machine is
named, a changed digest makes a platform unknown (with the right nearest neighbour), the H100
record names the H100, and bad fingerprint files are refused with a clear message."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from hspi_kernels import fingerprint, identify, platform as plat
from hspi_kernels.cli import app

runner = CliRunner()
CPU_REF = "cpu-xeon-2core"
H100_REF = "h100-80gb-hbm3-basic19"


@pytest.fixture(scope="module")
def db():
    return identify.load_database()


def _ref(db, ref_id):
    return next(r for r in db if r.id == ref_id)


def test_database_ships_cpu_and_h100(db):
    ids = {r.id for r in db}
    assert {CPU_REF, H100_REF} <= ids
    assert "H100" in _ref(db, H100_REF).label


def test_identify_this_cpu_machine(db, tmp_path):
    ref = _ref(db, CPU_REF)
    here = plat.cpu_model()
    if here != ref.fingerprint["platform"]["cpu_model"]:
        pytest.skip(f"this CPU ({here}) is not the database's CPU reference")
    out = tmp_path / "here.json"
    result = runner.invoke(app, ["identify", "--json", "--save", str(out), "--expect", CPU_REF])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["status"] == "identified" and res["reference"] == CPU_REF
    assert res["candidates"][0]["counts"]["differs"] == 0
    # the H100 reference ran CUDA probes this machine cannot: device class differs
    h100 = next(c for c in res["candidates"] if c["id"] == H100_REF)
    assert not h100["match"] and h100["counts"]["differs"] > 0
    assert fingerprint.load(out)["probes"]


def test_reference_identifies_itself(db):
    for ref in db:
        res = identify.identify(ref.fingerprint, db)
        assert res["status"] == "identified" and res["reference"] == ref.id, res["summary"]


def test_h100_record_is_h100(db):
    result = runner.invoke(app, ["identify", "docs/results/h100/fingerprint.json", "--json", "--expect", "H100"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["status"] == "identified" and "H100" in res["platform"]


@pytest.mark.parametrize("ref_id", [CPU_REF, H100_REF])
def test_changed_digest_becomes_unknown_with_right_neighbour(db, ref_id):
    fp = copy.deepcopy(_ref(db, ref_id).fingerprint)
    rec = next(r for r in fp["probes"] if r["status"] == "ok" and r["deterministic"]
               and identify.record_role(r) == "fingerprint")
    rec["digest"] = "0123456789abcdef"
    rec["digests"] = [rec["digest"]] * len(rec["digests"])
    res = identify.identify(fp, db)
    assert res["status"] == "unknown", res["summary"]
    assert res["nearest"][0] == ref_id
    best = res["candidates"][0]
    assert best["counts"]["differs"] == 1
    row = next(r for r in best["evidence"] if r["id"] == rec["id"])
    assert row["verdict"] == "differs" and rec["measures"] in row["why"]
    # the CLI says so and --expect turns it into a failure
    path = _write(fp)
    result = runner.invoke(app, ["identify", str(path), "--expect", ref_id])
    assert result.exit_code == 1 and "UNKNOWN" in result.output


def _write(fp, name="fp.json"):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / name
    path.write_text(json.dumps(fp))
    return path


def test_nondeterministic_and_control_are_not_evidence(db):
    fp = copy.deepcopy(_ref(db, CPU_REF).fingerprint)
    rec = next(r for r in fp["probes"] if r["status"] == "ok")
    rec.update(deterministic=False, digest=None, digests=["00", "11"])
    res = identify.identify(fp, db)
    assert res["status"] == "identified"
    row = next(r for r in res["candidates"][0]["evidence"] if r["id"] == rec["id"])
    assert row["verdict"] == "nondeterministic"


def test_too_few_comparable_probes_is_not_a_match(db):
    fp = copy.deepcopy(_ref(db, CPU_REF).fingerprint)
    fp["probes"] = [r for r in fp["probes"] if r["id"].startswith("numpy/sum")]
    res = identify.identify(fp, db)
    assert res["status"] == "unknown"


def test_changed_inputs_are_incomparable(db):
    fp = copy.deepcopy(_ref(db, H100_REF).fingerprint)
    a = copy.deepcopy(fp["probes"][0])
    b = copy.deepcopy(a)
    b["inputs"] = {"x": {"seed": 999}}
    b["digest"] = "ffff"
    b["digests"] = ["ffff", "ffff"]
    assert identify.compare_records(a, b)["verdict"] == "incomparable"


def test_compare_cli_json_and_table():
    a = "hspi_kernels/data/cpu-xeon-2core.json"
    b = "docs/results/h100/fingerprint.json"
    result = runner.invoke(app, ["compare", a, b, "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    verdicts = {r["id"]: r["verdict"] for r in res["rows"]}
    assert verdicts["numpy/sum/fp32/64x4097"] == "agrees"
    assert verdicts["torch-cuda/matmul/bf16/8x4096x4096"] == "differs"
    assert res["counts"]["agrees"] >= 6
    table = runner.invoke(app, ["compare", a, b])
    assert table.exit_code == 0 and "differs" in table.stdout


def test_compare_reports_kernels_and_sampled_ulp(db):
    a = copy.deepcopy(_ref(db, CPU_REF).fingerprint)
    rec = next(r for r in a["probes"] if r["id"] == "numpy/sum/fp32/64x4097")
    b_rec = copy.deepcopy(rec)
    rec["kernels"] = ["nvjet_sm90_tst_64x8_64x16_4x1_v_bz_NNT"]
    b_rec["kernels"] = ["nvjet_sm90_tst_64x8_64x16_4x1_v_bz_splitK_NNT", "splitKreduce_kernel"]
    bits = b_rec["features"]["sample"]["bits"]
    b_rec["features"]["sample"]["bits"] = bits[:-1] + format((int(bits[-1], 16) ^ 1), "x")  # one ULP off
    b_rec["digest"] = "0badbadbadbadbad"
    b_rec["digests"] = [b_rec["digest"]] * 2
    row = identify.compare_records(rec, b_rec)
    assert row["verdict"] == "differs"
    assert "splitKreduce_kernel" in row["why"] and "nvjet_sm90_tst_64x8" in row["why"]
    assert row["ulp"]["max_abs"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        (None, "not valid JSON"),  # truncated real file
        ('{"schema": "hspi-fingerprint/2", "created": "", "label": "", "platform": {}, "probes": []}', "schema"),
        ("[" * 5000 + "]" * 5000, "nested"),
        ('{"schema": "hspi-fingerprint/1", "x": 1e999}', "out of range"),
        ('{"schema": "hspi-fingerprint/1", "x": NaN}', "NaN"),
        ('{"schema": "hspi-fingerprint/1", "x": ' + "9" * 6000 + "}", "out of range"),
        ('{"schema": "hspi-fingerprint/1", "schema": "hspi-fingerprint/1"}', "duplicate key"),
    ],
)
def test_cli_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if content is None:
        text = open("docs/results/h100/fingerprint.json").read()
        content = text[: len(text) // 3]
    path.write_text(content)
    for argv in (["identify", str(path)], ["compare", str(path), "docs/results/h100/fingerprint.json"],
                 ["report", str(path), "--out", str(tmp_path / "r.html")]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, (argv, result.output)
        assert "invalid fingerprint" in result.output and message in result.output.replace("\n", "")


def test_hostile_fields_rejected(db, tmp_path):
    base = _ref(db, CPU_REF).fingerprint
    cases = [
        (lambda fp: fp["probes"][0].update(kernels="nvjet"), "'kernels' must be list"),
        (lambda fp: fp["probes"][0].update(kernels=[1, 2]), "kernel names"),
        (lambda fp: fp["probes"][0].update(explained_by=[{"plan": {}, "matches": 5, "total": 3}]), "matches"),
        (lambda fp: fp["probes"][0]["features"].update(fraction_bit_frequency=[2.0]), "fraction_bit_frequency"),
        (lambda fp: fp["probes"][0]["features"]["sample"].update(bits="zz"), "hex"),
        (lambda fp: fp["probes"][0].update(measures="x" * 300_000), "longer than"),
        (lambda fp: fp["platform"].update(junk=[0] * 1_100_000), "longer than"),
        (lambda fp: fp["platform"].update(torch={"gpus": ["H100"]}), "must be an object"),
        (lambda fp: fp["probes"][0].update(role="oracle"), "role"),
        (lambda fp: fp["probes"][0].update(time_s=10**30), "out of range"),
    ]
    for mutate, message in cases:
        fp = copy.deepcopy(base)
        mutate(fp)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(fp))
        with pytest.raises(ValueError, match=message):
            fingerprint.load(path)


def test_no_pickle_anywhere():
    import pathlib

    for path in pathlib.Path("hspi_kernels").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path


def test_identify_reports_the_stack_axes_of_the_shipped_h200(db, tmp_path):
    """`hspi identify` on the shipped H200 reference (default + stack suite): the fp8 accumulation
    and CUDA compile axes differ in bits, the BLAS flags do not, and every setting's probes equal
    the H200 reference's; negative control: a copy whose fp8 slow-accumulation digest changed no
    longer names the H200 for that setting (and still does for fast)."""
    from pathlib import Path

    h200 = Path(identify.__file__).parents[1] / "data" / "h200.json"
    result = runner.invoke(app, ["identify", str(h200), "--json"])
    assert result.exit_code == 0, result.output
    stack = {e["axis"]: e for e in json.loads(result.stdout)["stack"]}
    assert stack["fp8 _scaled_mm accumulation"]["distinguishable"] is True
    assert stack["compile (CUDA inductor)"]["distinguishable"] is True
    assert stack["preferred_blas_library"]["distinguishable"] is False
    assert stack["compile (CPU inductor)"]["distinguishable"] is None  # not in this fingerprint
    for e in stack.values():
        for p in e["pairs"]:
            for ev in p["evidence"]:
                if ev["status"] == "ok":
                    assert "h200" in ev["same_as_references"]
    fp = fingerprint.load(h200)
    for rec in fp["probes"]:
        if rec["id"].endswith("tensor-slow"):
            rec["digest"] = "0" * 16
            rec["digests"] = ["0" * 16] * len(rec["digests"])
    changed = tmp_path / "h200-changed.json"
    fingerprint.save(fp, changed)
    result = runner.invoke(app, ["identify", str(changed), "--json"])
    fp8 = {e["axis"]: e for e in json.loads(result.stdout)["stack"]}["fp8 _scaled_mm accumulation"]
    tensor = fp8["pairs"][0]
    assert tensor["settings"] == ["fast", "slow"]
    assert "h200" in tensor["evidence"][0]["same_as_references"]
    assert "h200" not in tensor["evidence"][1]["same_as_references"]
    # and the table prints without a traceback at any width
    text = runner.invoke(app, ["identify", str(h200)]).output
    assert "software stack" in text and "fp8" in text
