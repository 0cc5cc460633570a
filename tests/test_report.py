"""`hspi report`: one self-contained HTML file (inline PNGs, no external resources)."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from hspi_kernels.cli import app

runner = CliRunner()


def test_report_is_self_contained(tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "hspi_kernels/data/cpu-xeon-2core.json",
                                 "docs/results/h100/fingerprint.json", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["platforms"] == 2 and summary["figures"] >= 3
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # every image inline; no external script, stylesheet, image or link
    srcs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    assert "Agreement between platforms" in text and "ULP distance" in text and "Fraction-bit" in text
    assert "numpy/sum/fp32/64x4097" in text


def test_report_default_database(tmp_path):
    out = tmp_path / "db.html"
    result = runner.invoke(app, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
