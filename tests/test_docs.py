"""The documentation stays true: every Python block of docs/*.md runs (they are written to run on
a CPU), and the site, with its API reference generated from the docstrings, builds in mkdocs'
strict mode (a warning, e.g. a broken reference or an unresolvable member, fails)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


PAGES = sorted(p for p in DOCS.glob("*.md") if _blocks(p))


def test_the_guide_has_runnable_examples():
    assert {p.name for p in PAGES} >= {"concepts.md", "jobs.md"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(_blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # name the block, keep the original error
            raise AssertionError(f"{page.name}, python block {i} failed: {type(exc).__name__}: {exc}") from exc


def test_a_failing_block_is_reported(tmp_path):
    """Negative control: the runner above does fail on a wrong example."""
    page = tmp_path / "bad.md"
    page.write_text("text\n\n```python\nassert 1 + 1 == 3, 'wrong'\n```\n")
    with pytest.raises(AssertionError, match="bad.md, python block 0 failed"):
        test_python_blocks_run(page)


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    api = (site / "api" / "index.html").read_text()
    for name in ("evaluate", "numerics_card", "reveal", "identify", "load"):
        assert f"id=\"hspi_kernels." in api and name in api, f"API reference lacks {name}"
