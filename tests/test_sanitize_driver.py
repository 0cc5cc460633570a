"""hspi_kernels.kernels.validation.sanitizer (the compute-sanitizer check) on the CPU: kernel discovery from cubin symbol tables, the
compute-sanitizer log parser, and the summary's verdicts (a clean log passes; an error in any
case, a failed case, a non-zero exit code or an unflagged negative control fails)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hspi_kernels.kernels.validation import sanitizer


@pytest.fixture(scope="module")
def D():
    return sanitizer


CLEAN = """========= COMPUTE-SANITIZER
@@HSPI-CASE reduction.rows BEGIN
@@HSPI-CASE reduction.rows END ok
========= ERROR SUMMARY: 0 errors
"""
DIRTY = """========= COMPUTE-SANITIZER
@@HSPI-CASE reduction.rows BEGIN
========= Invalid __global__ read of size 4 bytes
=========     at hspi_reduce_rows_f32_sequential+0x1b0
=========     by thread (0,0,0) in block (0,0,0)
=========
@@HSPI-CASE reduction.rows END ok
========= ERROR SUMMARY: 1 error
"""
RACE = """========= COMPUTE-SANITIZER
@@HSPI-CASE control.race BEGIN
========= Error: Race reported between Write access at planted_smem_race+0x90
=========     and Read access at planted_smem_race+0xa0 [4 bytes]
@@HSPI-CASE control.race END
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
========= ERROR SUMMARY: 1 error
"""


def test_parse_log(D):
    clean = D.parse_log(CLEAN)
    assert clean["error_summary"] == 0 and clean["per_case"] == {}
    dirty = D.parse_log(DIRTY)
    assert dirty["error_summary"] == 1
    assert dirty["per_case"]["reduction.rows"]["errors"] == 1
    assert dirty["per_case"]["reduction.rows"]["kernels"] == {"hspi_reduce_rows_f32_sequential": 1}
    race = D.parse_log(RACE)
    assert race["per_case"]["control.race"]["kernels"] == {"planted_smem_race": 1}
    assert race["racecheck_summary"] == [{"errors": 1, "warnings": 0}]


def _write(folder: Path, label: str, log: str, rc: int, cases: dict) -> None:
    (folder / f"{label}.log").write_text(log)
    (folder / f"{label}.rc").write_text(f"{rc}\n")
    (folder / f"{label}.cases.json").write_text(json.dumps(cases))


CASE = {"reduction.rows": {"kernels": ["hspi_reduce_rows_f32_sequential"], "ok": True, "error": None, "seconds": 0.1},
        "_discovered": {"reduction/row_reduce.cu": {"kernels": ["hspi_reduce_rows_f32_sequential",
                                                                "hspi_reduce_rows_f32_block_tree"]}}}
CONTROL = {"control.race": {"kernels": [], "ok": True, "error": None, "seconds": 0.0}}


@pytest.mark.parametrize("tool_log,tool_rc,control_log,control_rc,ok", [
    (CLEAN, 0, RACE, 86, True),
    (DIRTY, 86, RACE, 86, False),           # an error in a case
    (CLEAN, 1, RACE, 86, False),            # the process failed
    (CLEAN, 0, CLEAN, 0, False),            # the negative control was not flagged: checker not live
])
def test_summarize_verdicts(D, tmp_path, tool_log, tool_rc, control_log, control_rc, ok):
    _write(tmp_path, "memcheck", tool_log, tool_rc, CASE)
    _write(tmp_path, "control-race-racecheck", control_log, control_rc, CONTROL)
    out = tmp_path / "gpu_sanitize.json"
    rc = D.summarize(str(tmp_path), str(out))
    result = json.loads(out.read_text())
    assert result["passed"] is ok and (rc == 0) is ok
    assert result["coverage"]["not_launched"] == ["hspi_reduce_rows_f32_block_tree"]
    assert "platform" in result


def test_failed_case_is_not_clean(D, tmp_path):
    cases = json.loads(json.dumps(CASE))
    cases["reduction.rows"].update(ok=False, error="ValueError: x")
    _write(tmp_path, "memcheck", CLEAN, 0, cases)
    _write(tmp_path, "control-race-racecheck", RACE, 86, CONTROL)
    assert D.summarize(str(tmp_path), str(tmp_path / "s.json")) == 1


def test_cubin_discovery(D):
    from hspi_kernels.kernels.cuda import loader
    from hspi_kernels.kernels.cuda import reduction as R

    entries = [e for e in loader.build_entries(R.VEC_SOURCE) if e["built"] and e["on_disk"]]
    if not entries:
        pytest.skip("no cubin built here")
    names = D.cubin_kernels(entries[0]["path"])
    assert set(names) == {R.vec4_kernel(u) for u in R.FAST_UNROLLS} | {R.KERNELS["vec4"][1]}
    assert D.cubin_kernels(__file__) == []  # not an ELF file
    assert "reduction/vec_reduce.cu" in D.sources()


# racecheck as compute-sanitizer 2025 prints it on the H100 (no ERROR SUMMARY line, only its own)
RACE_REAL = """========= COMPUTE-SANITIZER
@@HSPI-CASE control.race BEGIN
========= Error: Race reported between Write access at planted_smem_race+0xb0
=========     and Read access at planted_smem_race+0xc0 [256 hazards]
=========
@@HSPI-CASE control.race END
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""
RACE_CLEAN_REAL = """========= COMPUTE-SANITIZER
@@HSPI-CASE reduction.rows BEGIN
@@HSPI-CASE reduction.rows END ok
========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)
"""


@pytest.mark.parametrize("tool_log,control_log,ok", [
    (RACE_CLEAN_REAL, RACE_REAL, True),
    (RACE_CLEAN_REAL, RACE_CLEAN_REAL, False),  # the planted race not reported: checker not live
    (RACE_REAL.replace("control.race", "reduction.rows"), RACE_REAL, False),  # a race in our kernel
])
def test_racecheck_verdicts_from_its_own_summary(D, tmp_path, tool_log, control_log, ok):
    _write(tmp_path, "racecheck", tool_log, 86 if "1 error" in tool_log else 0, CASE)
    _write(tmp_path, "control-race-racecheck", control_log, 86 if "1 error" in control_log else 0, CONTROL)
    assert (D.summarize(str(tmp_path), str(tmp_path / "s.json")) == 0) is ok
    assert D.parse_log(RACE_REAL)["errors_total"] == 1 and D.parse_log(RACE_CLEAN_REAL)["errors_total"] == 0
