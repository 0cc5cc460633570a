"""The committed coverage records agree with their derivation: coverage.json, coverage_table.md and the
table block of coverage.md are what ``coverage_derive.py`` derives from the raw run records, so no page
carries a stale hand-pasted copy. Negative controls: an edited table cell and a removed marker are caught."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

TRACE = Path(__file__).resolve().parents[1] / "docs" / "results" / "trace"


def _derive_module():
    spec = importlib.util.spec_from_file_location("coverage_derive", TRACE / "coverage_derive.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only: writes nothing on import
    return mod


def _copy_records(tmp_path: Path) -> Path:
    mod = _derive_module()
    d = tmp_path / "trace"
    d.mkdir()
    names = {"coverage.json", "coverage_table.md", "coverage.md"}
    names |= {f for run in mod.RUNS for f in run[1:3]}
    for n in names:
        shutil.copy(TRACE / n, d / n)
    return d


def test_committed_records_match_the_derivation(capsys):
    assert _derive_module().main(["--check"]) == 0, capsys.readouterr().out


def test_the_page_table_is_the_derived_table():
    mod = _derive_module()
    page = (TRACE / "coverage.md").read_text()
    block = page[page.index(mod.BEGIN) + len(mod.BEGIN):page.index(mod.END)].strip()
    assert block == (TRACE / "coverage_table.md").read_text().strip()
    assert "| llama-3.2-1b | CPU vs GPU |" in block  # the merged run-9 row is in it


def test_an_edited_table_cell_is_reported_stale(tmp_path, capsys):
    d = _copy_records(tmp_path)
    page = (d / "coverage.md").read_text()
    edited = page.replace("| 181 (13 / 168) |", "| 180 (13 / 167) |", 1)
    assert edited != page
    (d / "coverage.md").write_text(edited)
    assert _derive_module().main(["--check", "--dir", str(d)]) == 1
    out = capsys.readouterr().out
    assert "coverage.md" in out and "coverage.json" not in out
    assert (d / "coverage.md").read_text() == edited  # --check rewrites nothing


def test_regenerating_restores_an_edited_page(tmp_path, capsys):
    d = _copy_records(tmp_path)
    (d / "coverage.md").write_text((d / "coverage.md").read_text().replace("| 181 (13 / 168) |", "| 1 |", 1))
    mod = _derive_module()
    assert mod.main(["--dir", str(d)]) == 0
    assert (d / "coverage.md").read_text() == (TRACE / "coverage.md").read_text()
    assert mod.main(["--check", "--dir", str(d)]) == 0


def test_a_page_without_markers_is_refused(tmp_path):
    d = _copy_records(tmp_path)
    mod = _derive_module()
    (d / "coverage.md").write_text((d / "coverage.md").read_text().replace(mod.END, ""))
    with pytest.raises(SystemExit, match="needs one"):
        mod.main(["--check", "--dir", str(d)])
