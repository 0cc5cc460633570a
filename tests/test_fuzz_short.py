"""The short fuzz run (CI): every target of tests/fuzz/ for a few seconds on its committed
seed corpus, through the driver (tests/fuzz/run.py). No crash, no sanitizer report, no
unexpected exception — except the targets whose loader has an open, reported bug in a module
this test's owner does not own (KNOWN_OPEN below, each with its fix described in
docs/results/reliability.md): those must still not crash, and their findings must be exactly
the known ones (a new kind of finding fails).

With HSPI_FUZZ_SANITIZE=<build dir of the HSPI_SANITIZE=ON build> the native targets run on
the ASan+UBSan build (tests/fuzz/README.md)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(HERE))
import run as driver  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install atheris; in the test extra on Linux)")

SECONDS = int(os.environ.get("HSPI_FUZZ_SECONDS", "4"))  # x 13 targets ~ 60 s with start-up
# signature prefixes of open loader bugs (reported, each with its fix described in
# docs/results/reliability.md): none now. plan_json's evaluate-time TypeErrors were closed by the
# plans' field validation (tests/test_plans_hostile_fields.py walks every kind x field x 12
# hostile values; 10^6 fuzz executions of plan_json found nothing)
KNOWN_OPEN: dict[str, tuple[str, ...]] = {}


@pytest.mark.parametrize("target", driver.TARGETS)
def test_fuzz_target_briefly(target, tmp_path):
    sanitize = os.environ.get("HSPI_FUZZ_SANITIZE")
    r = driver.run_target(target, runs=1_000_000, seconds=SECONDS, sanitize=Path(sanitize) if sanitize else None,
                          workdir=tmp_path, python=sys.executable)
    assert r["executions"] > 0, r
    assert r["crashes"] == 0 and r["asan_reports"] == 0 and r["ubsan_reports"] == 0, Path(r["log"]).read_text()[-4000:]
    assert r["native_leak_reports"] == 0, r
    allowed = KNOWN_OPEN.get(target, ())
    unexpected = [f for f in r["unexpected_exceptions"] if not f["signature"].startswith(allowed)]
    assert not unexpected, unexpected


def test_driver_reports_a_crash_and_a_finding(tmp_path, monkeypatch):
    """Negative control: a harness that raises an unexpected exception and one that aborts are
    both reported (the driver does not mistake them for clean runs)."""
    (tmp_path / "corpus" / "bad").mkdir(parents=True)
    (tmp_path / "corpus" / "bad" / "seed").write_bytes(b"x")
    harness = tmp_path / "fuzz_bad.py"
    harness.write_text("import os, sys\nsys.path.insert(0, %r)\nfrom _common import main\n"
                       "def one(data):\n    if data[:1] == b'x': raise KeyError('planted')\n"
                       "    if len(data) > 3: os.abort()\n"
                       "main(one, (ValueError,))\n" % str(HERE))
    monkeypatch.setattr(driver, "HERE", tmp_path)
    r = driver.run_target("bad", runs=20000, seconds=10, sanitize=None, workdir=tmp_path / "w", python=sys.executable)
    assert any(f["signature"].startswith("KeyError") for f in r["unexpected_exceptions"]), r
    assert r["crashes"] >= 1, r
