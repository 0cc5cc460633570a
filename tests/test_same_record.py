"""scripts/same_record.py: two records equal apart from timings pass; any other difference fails."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("same_record", ROOT / "scripts" / "same_record.py")
same_record = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_record)

REC = {"pairs": [{"pair": "a vs b", "lr_q95": 2, "curve": [0.5, 0.9, 1.0]}],
       "elapsed_s": 10.0, "timings": {"x": 1.0}, "platform": {"gpus": [{"name": "H100", "uuid": "u1"}]}}


def _write(tmp_path, name, rec):
    p = tmp_path / name
    p.write_text(json.dumps(rec))
    return str(p)


def test_equal_apart_from_timings_and_card(tmp_path, capsys):
    other = json.loads(json.dumps(REC))
    other.update(elapsed_s=12.5, timings={"x": 3.0, "y": 1.0})
    other["platform"]["gpus"][0]["uuid"] = "u2"
    assert same_record.main([_write(tmp_path, "a.json", REC), _write(tmp_path, "b.json", other)]) == 0
    assert "6/6 non-timing leaves equal; 3 timing leaves" in capsys.readouterr().out


def test_a_changed_statistic_fails(tmp_path, capsys):
    other = json.loads(json.dumps(REC))
    other["pairs"][0]["curve"][1] = 0.875
    assert same_record.main([_write(tmp_path, "a.json", REC), _write(tmp_path, "b.json", other)]) == 1
    assert "/pairs[0]/curve[1]" in capsys.readouterr().out


def test_a_missing_field_and_a_type_change_fail(tmp_path):
    other = json.loads(json.dumps(REC))
    del other["pairs"][0]["lr_q95"]
    assert same_record.main([_write(tmp_path, "a.json", REC), _write(tmp_path, "b.json", other)]) == 1
    other = json.loads(json.dumps(REC))
    other["pairs"][0]["lr_q95"] = 2.0  # == in Python, but another type in the record
    assert same_record.main([_write(tmp_path, "a.json", REC), _write(tmp_path, "c.json", other)]) == 1


def test_bad_input_is_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert same_record.main([str(bad), str(bad)]) == 2
    assert same_record.main([str(tmp_path / "missing.json"), str(bad)]) == 2
    assert same_record.main([]) == 2
    assert "Traceback" not in capsys.readouterr().err
