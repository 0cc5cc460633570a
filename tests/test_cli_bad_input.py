"""Every `hspi` verb with each class of bad input: the exit code (2 usage, 1 run time), a one-line
message, no traceback, and no output file left behind (nor a temporary one). Then the output
that must fit a terminal: `hspi probe`, `hspi compare` and `hspi bench` at 80 and 200 columns.

The CLI runs in-process (typer's CliRunner) with the consoles fixed at a width, so no test
depends on the terminal or on how long the temporary paths are. A missing optional dependency
is simulated by ``sys.modules[name] = None`` (``import name`` then raises ImportError).

Unwritable outputs: these tests run as root in CI, and root writes a chmod-0555 directory
anyway, so unwritability is simulated by paths no user can create: a path under a regular
file (``afile/sub/out.json``: ENOTDIR) and a path under ``/proc`` (no files can be created
there).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from hspi_kernels import cli

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
CPU_REF = str(REPO / "hspi_kernels/data/cpu-xeon-2core.json")
H100_REF = str(REPO / "docs/results/h100/fingerprint.json")
MODELS_HINT = "pip install 'hspi_kernels[models]'"


def _set_width(monkeypatch, width: int) -> None:
    monkeypatch.setattr(cli, "console", Console(width=width, force_terminal=False, color_system=None))
    monkeypatch.setattr(cli, "err_console", Console(width=width, stderr=True, force_terminal=False,
                                                    color_system=None))


@pytest.fixture
def width80(monkeypatch):
    _set_width(monkeypatch, 80)


def invoke(argv: list[str], env: dict | None = None):
    return runner.invoke(cli.app, argv, env={"COLUMNS": "80", "TERMINAL_WIDTH": "80", **(env or {})})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def paths(tmp_path):
    """Bad paths of every class, under tmp_path (and /proc)."""
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "empty.npz").write_bytes(b"")
    return {
        "missing": str(tmp_path / "missing.json"),
        "missing_npz": str(tmp_path / "missing.npz"),
        "empty": str(tmp_path / "empty.json"),
        "empty_npz": str(tmp_path / "empty.npz"),
        "dir": str(tmp_path / "adir"),
        "under_file": str(tmp_path / "afile" / "sub" / "out.json"),
        "under_file_png": str(tmp_path / "afile" / "plot.png"),
        "proc": "/proc/hspi-test/out.json",
        "afile": str(tmp_path / "afile"),
    }


# (verb, class, argv with {placeholders}, exit code, message, sys.modules entries set to None)
CASES = [
    ("env", "unknown option", ["env", "--bogus"], 2, "No such option", ()),
    ("probe", "output is a directory", ["probe", "--out", "{dir}"], 2, "is a directory", ()),
    ("probe", "unwritable output (under a file)", ["probe", "--out", "{under_file}"], 2, "Not a directory", ()),
    ("probe", "unwritable output (/proc)", ["probe", "--out", "{proc}"], 2, "cannot create directory", ()),
    ("probe", "unknown name", ["probe", "--only", "no-such-probe", "--out", "{dir}/fp.json"], 2,
     "no probe id contains", ()),
    ("probe", "unknown name", ["probe", "--server", "bogus", "--out", "{dir}/fp.json"], 2, "--server must be", ()),
    ("probe", "out-of-range number", ["probe", "--jobs", "-1"], 2, "Invalid value", ()),
    ("serve", "out-of-range number", ["serve", "--idle-timeout", "0"], 2, "Invalid value", ()),
    ("serve", "unusable cache dir", ["serve", "--no-warm"], 1, "is not a directory", ()),
    ("identify", "missing input", ["identify", "{missing}"], 1, "invalid fingerprint", ()),
    ("identify", "empty input", ["identify", "{empty}"], 1, "invalid fingerprint", ()),
    ("identify", "input is a directory", ["identify", "{dir}"], 1, "invalid fingerprint", ()),
    ("identify", "unwritable output (under a file)", ["identify", "--save", "{under_file}"], 2, "Not a directory", ()),
    ("identify", "unwritable output (/proc)", ["identify", "--save", "{proc}"], 2, "cannot create directory", ()),
    ("identify", "bad combination", ["identify", CPU_REF, "--save", "{dir}/fp.json"], 2, "nothing is probed", ()),
    ("identify", "missing input", ["identify", CPU_REF, "--db", "{missing}"], 1, "invalid reference database", ()),
    ("compare", "missing input", ["compare", "{missing}", CPU_REF], 1, "invalid fingerprint", ()),
    ("compare", "empty input", ["compare", CPU_REF, "{empty}"], 1, "invalid fingerprint", ()),
    ("compare", "input is a directory", ["compare", "{dir}", CPU_REF], 1, "invalid fingerprint", ()),
    ("report", "missing input", ["report", "{missing}", "--out", "{dir}/r.html"], 1, "invalid fingerprint", ()),
    ("report", "output is a directory", ["report", CPU_REF, "--out", "{dir}"], 2, "is a directory", ()),
    ("report", "unwritable output (under a file)", ["report", CPU_REF, "--out", "{under_file}"], 2,
     "Not a directory", ()),
    ("card", "unknown name", ["card", "--path", "nonsense"], 2, "unknown --path 'nonsense'", ()),
    ("card", "unknown name", ["card", "--path", "emulated:sm_1.nope"], 2, "unknown preset", ()),
    ("card", "unknown name", ["card", "--format", "bogus"], 2, "unknown --format 'bogus'", ()),
    ("card", "unknown name", ["card", "--out-format", "bf8"], 2, "unknown --out-format", ()),
    ("card", "out-of-range number", ["card", "--verify", "0"], 2, "--verify must be >= 100", ()),
    ("card", "no GPU", ["card", "--path", "wgmma"], 1, "needs a CUDA GPU", ()),
    ("reveal", "out-of-range number", ["reveal", "numpy.sum", "--n", "0"], 2, "--n must be between 2", ()),
    ("reveal", "out-of-range number", ["reveal", "numpy.sum", "--n", "-5"], 2, "--n must be between 2", ()),
    ("reveal", "out-of-range number", ["reveal", "numpy.sum", "--n", "10000000000"], 2, "--n must be between 2", ()),
    ("reveal", "out-of-range number", ["reveal", "numpy.sum", "--replay", "0"], 2, "--replay must be >= 1", ()),
    ("reveal", "unknown name", ["reveal", "numpy.nope"], 2, "unknown target 'numpy.nope'", ()),
    ("reveal", "no GPU", ["reveal", "torch.sum.cuda", "--n", "64"], 1, "needs a CUDA GPU", ()),
    ("validate", "unknown name", ["validate", "nope", "--out", "{dir}/v"], 2, "unknown validation 'nope'", ()),
    ("validate", "unwritable output (under a file)", ["validate", "cuda", "--out", "{under_file}"], 2,
     "Not a directory", ()),
    ("validate", "unwritable output (/proc)", ["validate", "cuda", "--out", "{proc}"], 2, "cannot create it", ()),
    ("validate", "out-of-range number", ["validate", "cuda", "--scale", "0", "--out", "{dir}/v"], 2,
     "scale must be > 0", ()),
    ("bench", "unknown name", ["bench", "--only", "nope", "--only", "gemm"], 2, "--only nope matches no case", ()),
    ("bench", "out-of-range number", ["bench", "--rounds", "0"], 2, "--rounds must be >= 1", ()),
    ("bench", "unwritable output (under a file)", ["bench", "--plot", "{under_file_png}"], 2, "not a directory", ()),
    ("bench", "unwritable output (/proc)", ["bench", "--out", "{proc}"], 2, "cannot create directory", ()),
    ("bench", "no GPU", ["bench", "--out", "{dir}/bench.json"], 1, "needs a CUDA GPU", ()),
    ("bench", "missing optional dependency", ["bench", "--plot", "{dir}/b.png"], 1, MODELS_HINT, ("matplotlib",)),
    ("model collect", "missing optional dependency", ["model", "collect", "--out", "{dir}/c.npz"], 1, MODELS_HINT,
     ("transformers",)),
    ("model collect", "unknown name", ["model", "collect", "--model", "nope"], 2, "unknown model 'nope'", ()),
    ("model collect", "unknown name", ["model", "collect", "--eqc", "bf16.bogus"], 2, "unknown EQC token", ()),
    ("model collect", "unknown name", ["model", "collect", "--preset", "bogus"], 2, "unknown preset", ()),
    ("model collect", "out-of-range number", ["model", "collect", "--length", "0"], 2, "--length must be >= 1", ()),
    ("model collect", "unwritable output (under a file)", ["model", "collect", "--out", "{under_file}"], 2,
     "Not a directory", ()),
    ("model collect", "output is a directory", ["model", "collect", "--out", "{dir}"], 2, "is a directory", ()),
    ("model classify", "missing input", ["model", "classify", "{missing_npz}"], 1, "invalid collection", ()),
    ("model classify", "empty input", ["model", "classify", "{empty_npz}"], 1, "invalid collection", ()),
    ("model classify", "input is a directory", ["model", "classify", "{dir}"], 1, "invalid collection", ()),
    ("model classify", "unwritable output (under a file)", ["model", "classify", "{missing_npz}", "--out",
                                                            "{under_file}"], 2, "Not a directory", ()),
    ("model classify", "missing optional dependency", ["model", "classify", "{missing_npz}"], 1, MODELS_HINT,
     ("sklearn",)),
    ("model tables", "missing input", ["model", "tables", "{missing_npz}", "--out", "{dir}/t"], 1,
     "invalid collection", ()),
    ("model tables", "unwritable output (under a file)", ["model", "tables", "{missing_npz}", "--out",
                                                          "{afile}/t"], 2, "not a directory", ()),
    ("model tables", "missing optional dependency", ["model", "tables", "{missing_npz}", "--out", "{dir}/t"], 1,
     MODELS_HINT, ("sklearn",)),
    ("model border", "missing optional dependency", ["model", "border"], 1, MODELS_HINT, ("transformers",)),
    ("model border", "unknown name", ["model", "border", "--a", "fp32.zzz"], 2, "unknown EQC token", ()),
    ("model border", "out-of-range number", ["model", "border", "--budget", "0"], 2, "--budget must be >= 1", ()),
    ("model identify", "missing input", ["model", "identify", "{missing_npz}", "--ref", "{missing_npz}"], 1,
     "invalid collection", ()),
    ("model identify", "empty input", ["model", "identify", "{empty_npz}", "--ref", "{empty_npz}"], 1,
     "invalid collection", ()),
    ("model identify", "input is a directory", ["model", "identify", "{dir}", "--ref", "{dir}"], 1,
     "invalid collection", ()),
    ("model identify", "out-of-range number", ["model", "identify", "{missing_npz}", "--ref", "{missing_npz}",
                                               "--k", "0"], 2, "--k must be >= 1", ()),
    ("trace run", "missing optional dependency", ["trace", "run", "--out", "{dir}/t.npz"], 1, MODELS_HINT,
     ("transformers",)),
    ("trace run", "unknown name", ["trace", "run", "--model", "nope"], 2, "unknown model 'nope'", ()),
    ("trace run", "unknown name", ["trace", "run", "--keep", "bogus", "--out", "{dir}/t.npz"], 2,
     "--keep must be auto, all or gemm", ()),
    ("trace run", "unknown name", ["trace", "run", "--attn", "bogus", "--out", "{dir}/t.npz"], 2, "attn 'bogus'", ()),
    ("trace run", "out-of-range number", ["trace", "run", "--batch", "0", "--out", "{dir}/t.npz"], 2,
     "--batch must be >= 1", ()),
    ("trace run", "out-of-range number", ["trace", "run", "--row-cap-mb", "0", "--out", "{dir}/t.npz"], 2,
     "--row-cap-mb must be > 0", ()),
    ("trace run", "output is a directory", ["trace", "run", "--out", "{dir}"], 2, "is a directory", ()),
    ("trace run", "unwritable output (under a file)", ["trace", "run", "--out", "{under_file}"], 2,
     "Not a directory", ()),
    ("trace run", "missing input", ["trace", "run", "--keep-diverging", "{missing_npz}", "--out", "{dir}/t.npz"], 1,
     "--keep-diverging", ()),
    ("trace tp", "missing optional dependency", ["trace", "tp"], 1, MODELS_HINT, ("transformers",)),
    ("trace tp", "unknown name", ["trace", "tp", "--model", "nope"], 2, "unknown model 'nope'", ()),
    ("trace tp", "out-of-range number", ["trace", "tp", "--degree", "1"], 2, "--degree must be in 2..8", ()),
    ("trace tp", "unknown name", ["trace", "tp", "--dtype", "fp8"], 2, "fp32 or bf16", ()),
    ("trace tp", "output is a directory", ["trace", "tp", "--out", "{dir}"], 2, "is a directory", ()),
    ("trace tp", "unwritable output (under a file)", ["trace", "tp", "--out", "{under_file}"], 2, "Not a directory", ()),
    ("trace diff", "missing input", ["trace", "diff", "{missing_npz}", "{missing_npz}"], 1, "invalid trace", ()),
    ("trace diff", "empty input", ["trace", "diff", "{empty_npz}", "{empty_npz}"], 1, "invalid trace", ()),
    ("trace diff", "input is a directory", ["trace", "diff", "{dir}", "{dir}"], 1, "invalid trace", ()),
    ("trace diff", "unwritable output (under a file)", ["trace", "diff", "{empty_npz}", "{empty_npz}", "--out",
                                                        "{under_file}"], 2, "Not a directory", ()),
    ("trace diff", "missing optional dependency", ["trace", "diff", "{empty_npz}", "{empty_npz}", "--plot",
                                                   "{dir}/p.png"], 1, MODELS_HINT, ("matplotlib",)),
    ("trace explain", "missing input", ["trace", "explain", "{missing_npz}", "{missing_npz}"], 1, "invalid trace", ()),
    ("trace explain", "out-of-range number", ["trace", "explain", "{empty_npz}", "{empty_npz}", "--max-ops", "0"],
     2, "--max-ops must be >= 1", ()),
    ("trace explain", "unwritable output (/proc)", ["trace", "explain", "{empty_npz}", "{empty_npz}", "--html",
                                                    "{proc}"], 2, "cannot create directory", ()),
    ("trace explain", "missing input", ["trace", "explain", "{empty_npz}", "{empty_npz}", "--reveal",
                                        "{missing}"], 1, "no such file", ()),
]

VERBS = {"env", "probe", "serve", "identify", "compare", "report", "card", "reveal", "validate", "bench",
         "model collect", "model classify", "model tables", "model border", "model identify",
         "trace run", "trace diff", "trace explain", "trace tp"}


def test_every_verb_is_covered():
    assert {c[0] for c in CASES} == VERBS
    import typer.main

    group = typer.main.get_command(cli.app)
    registered = set()
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        registered |= {f"{name} {sub}" for sub in subs} if subs else {name}
    assert registered == VERBS, registered ^ VERBS


@pytest.mark.parametrize("verb, klass, argv, code, message, missing", CASES,
                         ids=[f"{c[0]}: {c[1]} ({' '.join(c[2][1 if ' ' not in c[0] else 2:])})" for c in CASES])
def test_bad_input(verb, klass, argv, code, message, missing, paths, tmp_path, monkeypatch, width80):
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)
    env = {"HSPI_CACHE_DIR": paths["afile"]} if klass == "unusable cache dir" else {}
    before = _files(tmp_path)
    result = invoke([a.format(**paths) for a in argv], env=env)
    output = result.output
    assert result.exit_code == code, (result.exit_code, output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())  # typer's own usage errors come in a box
    assert message in output or message in flat, output
    if not message.startswith(("No such option", "Invalid value")):  # ours: one line, never hard-wrapped
        line = next(ln for ln in output.splitlines() if message in ln)
        assert len(line) > 80 or len(output.strip().splitlines()) <= 3, output
    assert _files(tmp_path) == before, "output left behind: " + ", ".join(sorted(_files(tmp_path) - before))


def test_missing_extra_message_is_printed_verbatim(monkeypatch, width80):
    """rich markup would swallow '[models]': the hint must print as typed."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = invoke(["model", "collect"])
    assert result.exit_code == 1 and MODELS_HINT in result.output, result.output


def test_env_prints_install_hints_verbatim(monkeypatch, width80):
    """`hspi env` names the GPU extra as typed (it showed "pip install 'hspi_kernels'" before)."""
    _set_width(monkeypatch, 200)
    result = invoke(["env"])
    assert result.exit_code == 0
    if "CuPy is not importable" in result.output:
        assert "'hspi_kernels[gpu]'" in result.output, result.output


def test_probe_creates_missing_parents_and_summary_counts(tmp_path, width80):
    out = tmp_path / "nodir" / "sub" / "fp.json"
    result = invoke(["probe", "--only", "numpy/sum", "--jobs", "1", "--server", "off", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["schema"] == "hspi-fingerprint/1"
    assert re.search(r"\d+ probes: \d+ ok, (\d+ skipped, )?0 failed", result.output), result.output
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unusable_cache_dir_warns_and_runs(tmp_path, where, width80):
    cache = tmp_path / "afile" if where == "file" else Path("/proc/hspi-cache")
    if where == "file":
        cache.write_text("x")
    out = tmp_path / "fp.json"
    result = invoke(["probe", "--only", "numpy/sum", "--jobs", "1", "--server", "off", "--out", str(out)],
                    env={"HSPI_CACHE_DIR": str(cache)})
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "running without the disk cache" in result.output, result.output
    assert out.is_file()


def test_card_help_lists_presets(width80):
    from hspi_kernels.numerics import tensor_core as TC

    result = invoke(["card", "--help"])
    assert result.exit_code == 0
    flat = "".join(result.output.split())
    for name in TC.PRESETS:
        assert name in flat, name


# ---------------------------------------------------------------------------------------------
# output that fits a terminal
# ---------------------------------------------------------------------------------------------
def _render(table, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 200])
def test_probe_table_fits(width):
    fp = json.loads(Path(CPU_REF).read_text())
    lines = _render(cli._probe_table(fp, width), width)
    assert max(map(len, lines)) <= width
    text = "\n".join(lines)
    header = next(ln for ln in lines if "probe" in ln and "status" in ln)
    assert ("digest" in header) == (width >= 120)  # the column dropped first
    for r in fp["probes"]:  # status and determinism never squeezed: every status word whole
        row = next(ln for ln in lines if r["id"][:30] in ln)
        assert f" {r['status']} " in row, row
        if r["status"] == "ok":
            assert " yes " in row and " ms " in row, row
    assert text.count(" skipped ") == sum(r["status"] == "skipped" for r in fp["probes"])


@pytest.mark.parametrize("width", [80, 200])
def test_compare_shows_differing_by_default(monkeypatch, width):
    _set_width(monkeypatch, width)
    result = runner.invoke(cli.app, ["compare", CPU_REF, H100_REF])
    full = runner.invoke(cli.app, ["compare", CPU_REF, H100_REF, "--all"])
    data = json.loads(runner.invoke(cli.app, ["compare", CPU_REF, H100_REF, "--json"]).stdout)
    assert result.exit_code == 0 and full.exit_code == 0
    for out in (result.output, full.output):
        assert max(map(len, out.splitlines())) <= width
    differing = [r for r in data["rows"] if r["verdict"] not in cli.COMPARE_HIDDEN]
    assert f"{len(differing)} of {len(data['rows'])} probes shown" in result.output
    assert f"{len(data['rows'])} of {len(data['rows'])} probes shown" in full.output
    agree = next(r["id"] for r in data["rows"] if r["verdict"] == "agrees")
    assert agree not in result.output and agree in full.output
    assert ("digest A" in result.output) == (width >= 160)


def _fake_bench_record() -> dict:
    def ok(name, dev, host, roof, tags=("gemm_geomean",)):
        return {"name": name, "status": "ok", "tags": list(tags), "roofline": roof,
                "device": {"ms": 0.1, "ratio": dev}, "host": {"ms": 0.2, "ratio": host}}
    cases = [ok("triton_gemm_bf16_1x4096x4096", 0.95, 0.62, 0.4),
             ok("triton_gemm_bf16_8192x8192x8192", 1.0, 1.0, 0.7),
             {"name": "cuda_vec4_sum_fp32_268435456", "status": "skipped", "tags": [],
              "reason": "cupy not importable (No module named 'cupy')"}]
    return {"gpu": "NVIDIA H200", "rounds": 3, "cases": cases,
            "summary": {"cases": 3, "ok": 2, "failed": 0, "skipped": 1, "triton_gemm_geomean_host": 0.787,
                        "triton_gemm_geomean_device": 0.975,
                        "triton_gemm_geomean_shapes": [c["name"] for c in cases[:2]]}}


@pytest.mark.parametrize("width", [80, 200])
def test_bench_formats_the_library_record(monkeypatch, tmp_path, width):
    _set_width(monkeypatch, width)
    seen = {}

    def fake_run(only, rounds, progress):
        seen.update(only=only, rounds=rounds)
        return _fake_bench_record()
    monkeypatch.setattr(cli.kbench, "run", fake_run)
    out = tmp_path / "bench.json"
    result = runner.invoke(cli.app, ["bench", "--only", "gemm", "--rounds", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert seen == {"only": ["gemm"], "rounds": 2}
    assert max(map(len, result.output.splitlines())) <= width
    flat = " ".join(result.output.split())
    assert "host 0.787x, device 0.975x" in flat and "skipped" in flat
    for col in ("ms (device)", "ms (host)", "roofline"):
        assert col.split()[0] in flat
    assert json.loads(out.read_text())["summary"]["ok"] == 2
