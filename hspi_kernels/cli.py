"""`hspi` command line (typer + rich): it parses arguments, calls the library and formats the
result (a human table on a terminal, `--json` for machines, non-zero exit on failure). Every job
is a library call (``fingerprint.take``, ``identify``, ``reveal``, ``trace``, ``models``); torch,
triton, cupy, transformers, scikit-learn and matplotlib are imported only by the jobs that use them."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

_IMPORTS_START = time.perf_counter()
from hspi_kernels import fingerprint, identify as ident, platform as plat, report as html_report  # noqa: E402
from hspi_kernels.fingerprint import take as fp_take  # noqa: E402
from hspi_kernels.fingerprint.take import NoProbesSelected, ServerFailed  # noqa: E402
from hspi_kernels.identify import Reference  # noqa: E402
from hspi_kernels.kernels import validation  # noqa: E402
from hspi_kernels.models import analysis, collect as mc, crossplatform as cp, eqc as meqc  # noqa: E402
from hspi_kernels.models import hspi_bi, hspi_ld, matching  # noqa: E402
from hspi_kernels.numerics import tensor_core as TC  # noqa: E402
from hspi_kernels.platform.capabilities import capabilities  # noqa: E402
from hspi_kernels.probes import server as srv  # noqa: E402
from hspi_kernels.reveal import card as C, order as R, targets as reveal_targets  # noqa: E402
from hspi_kernels.trace import explain as E, tracer as T  # noqa: E402

IMPORTS_S = time.perf_counter() - _IMPORTS_START  # the package's imports: `hspi probe`'s "imports" phase

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hspi_kernels: hardware/software platform inference from output bits.")
console = Console()
err_console = Console(stderr=True)


def _error(message: str) -> None:
    """An error line on stderr, never hard-wrapped (a long path stays one piece)."""
    err_console.print(message, soft_wrap=True)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Report Python/torch/triton/cupy/nvcc/driver/CUDA/cuBLAS versions, GPUs and kernel availability."""
    meta = plat.collect()
    meta["capabilities"] = capabilities()
    if as_json:
        _print_json(meta)
        return
    table = Table(title=f"hspi env — {plat.platform_label(meta)}", show_header=False)
    torch_meta = meta["torch"]
    rows = [
        ("hspi_kernels", meta["hspi_kernels"]),
        ("python / numpy", f"{meta['python']} / {meta['numpy']}"),
        ("cpu", f"{meta['cpu_model']} ({meta['cpu_count']} cores)"),
        ("torch", f"{torch_meta.get('version')} (CUDA runtime {torch_meta.get('cuda_runtime')})"),
        ("triton / cupy", f"{meta['triton']} / {meta['cupy']}"),
        ("nvcc (build / PATH)", f"{meta['build'].get('nvcc_version') or '-'} / {meta['nvcc_runtime'] or '-'}"),
        ("driver / cuBLAS", f"{meta['driver']} / {meta['cublas']}"),
    ]
    for gpu in torch_meta.get("gpus", []):
        rows.append((f"gpu {gpu['index']}", f"{gpu['name']} cc {gpu['compute_capability']}, "
                     f"{gpu['sm_count']} SMs, L2 {gpu['l2_bytes'] or 0 >> 20} B, "
                     f"{gpu['memory_bytes'] / 2**30:.1f} GiB"))
    for cubin in meta["build"].get("cubins", []):
        rows.append(("cubin", f"{cubin['cubin']} ({'built' if cubin['built'] else 'not built'}; "
                     f"{' '.join(cubin['flags'])})"))
    for name, cap in meta["capabilities"].items():
        rows.append((name, ("yes" if cap["ok"] else "no") + (f" — {cap['detail']}" if cap["detail"] else "")))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def probe(
    out: Path = typer.Option(Path("fingerprint.json"), "--out", "-o", help="fingerprint JSON to write"),
    only: Optional[str] = typer.Option(None, "--only", help="run only probes whose id contains this"),
    as_json: bool = typer.Option(False, "--json", help="print the fingerprint JSON to stdout"),
    kernels: bool = typer.Option(False, "--kernels/--no-kernels",
                                 help="record the CUDA kernel names of library probes (one torch.profiler "
                                 "session: ~5 s of start-up on an H100); record references with --kernels"),
    timings: bool = typer.Option(False, "--timings", help="print where the wall time went (per phase, "
                                 "slowest probes); the JSON always records it"),
    use_cache: bool = typer.Option(True, "--cache/--no-cache", help="read/write seeded operands, fp64 "
                                   "references and plan evaluations in the on-disk cache ($HSPI_CACHE_DIR)"),
    clear_cache: bool = typer.Option(False, "--clear-cache", help="empty the on-disk cache first"),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="processes the suite runs in (probe groups: "
                             "CUDA kernels, cuBLAS GEMMs, Triton, CPU); 1 = one process; 0 = auto "
                             "(one per group, at most half the cores)"),
    server: str = typer.Option("auto", "--server", help="auto: run the probes in a running `hspi serve` "
                               "(same code) if there is one, else here; on: only there; off: only here"),
) -> None:
    """Run the registered probes on this machine and write a fingerprint (schema hspi-fingerprint/1).
    A second run is faster: operands, fp64 references and plan evaluations come from the on-disk
    cache (checksummed, keyed by the code that made them); the probes themselves always run.
    Probe groups run in parallel worker processes (``--jobs``; records do not depend on it), or
    in a resident ``hspi serve`` process when one runs (``--server``)."""
    progress_console = err_console if as_json else console
    fp = _take(progress_console, transient=False, only=only, kernels=kernels, use_cache=use_cache,
               clear_cache=clear_cache, jobs=jobs, server=server, imports_s=IMPORTS_S)
    records, elapsed = fp["probes"], fp["suite"]["wall_s"]
    fingerprint.save(fp, out)
    failed = [r for r in records if r["status"] == "failed"]
    if as_json:
        _print_json(fp)
    else:
        table = Table(title=f"hspi probe — {fp['label']}")
        table.add_column("probe", no_wrap=True)
        table.add_column("status")
        table.add_column("digest", no_wrap=True)
        table.add_column("determ.")
        table.add_column("time / reason", overflow="fold")
        for r in records:
            det = "" if r["status"] != "ok" else ("yes" if r["deterministic"] else "[yellow]NO[/yellow]")
            digest = r.get("digest") or ("-" if r["status"] != "ok" else "varies")
            time_s = f"{r['time_s'] * 1e3:.1f} ms" if "time_s" in r else r.get("reason", r.get("error", ""))[:60]
            table.add_row(r["id"], r["status"], digest, det, time_s)
        console.print(table)
        console.print(f"wrote {out} ({len(records)} probes, {len(failed)} failed) in {elapsed:.1f} s")
    if timings:
        _print_timings(fp, progress_console)
    if failed:
        raise typer.Exit(1)


def _print_timings(fp: dict, where: Console, top: int = 12) -> None:
    """Where `hspi probe`'s wall time went: suite phases, then the slowest probes by phase."""
    suite = fp.get("suite", {})
    table = Table(title=f"hspi probe timings — wall {suite.get('wall_s', 0):.2f} s "
                        f"(cache {suite.get('cache', {})})")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for name, seconds in suite.get("phases", {}).items():
        table.add_row(name, f"{seconds:.3f}")
    where.print(table)
    ranked = sorted((r for r in fp["probes"] if "timing" in r), key=lambda r: -r["timing"].get("total", 0.0))
    cols = {"total": "total", "inputs": "inp", "runs": "runs", "profiled_run": "prof", "digests": "dig",
            "plans": "plan", "features": "feat"}
    table = Table(title=f"slowest {top} probes (s): " + ", ".join(f"{v} = {k}" for k, v in cols.items() if k != v))
    table.add_column("probe", overflow="fold")
    for short in cols.values():
        table.add_column(short, justify="right", no_wrap=True)
    for r in ranked[:top]:
        table.add_row(r["id"], *(f"{r['timing'].get(c, 0.0):.3f}" for c in cols))
    where.print(table)


def _load_fingerprint(path: Path) -> dict:
    try:
        return fingerprint.load(path)
    except ValueError as exc:
        _error(f"[red]invalid fingerprint:[/red] {exc}")
        raise typer.Exit(1) from None


def _load_database(db: Optional[list[Path]]):
    try:
        return ident.load_database(db or None)
    except ValueError as exc:
        _error(f"[red]invalid reference database:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    idle_timeout: float = typer.Option(900.0, "--idle-timeout", min=1.0, help="seconds without a request "
                                       "after which the server ends"),
    warm: bool = typer.Option(True, "--warm/--no-warm", help="run the whole suite once at start (Triton "
                              "JIT, cubin loads, cuBLAS/cuDNN handles), so the first request is warm too"),
) -> None:
    """Keep a probe server running here (foreground): `hspi probe` and `hspi identify` then run
    their probes in it (a Unix socket in the cache dir, this user only), without importing torch
    or setting up CUDA, cuBLAS and Triton again. It refuses clients of other code and ends after
    --idle-timeout seconds without a request, on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the socket is removed on the way out
    try:
        srv.serve(idle_timeout=idle_timeout, warm=warm, log=lambda msg: console.print(msg))
    except (RuntimeError, ValueError) as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("stopped")


def _take(progress_console: Console, transient: bool, *, server: str, **options) -> dict:
    """``fingerprint.take`` with a progress bar on ``progress_console``; its errors as exit codes."""
    if server not in ("auto", "on", "off"):
        _error(f"[red]--server must be auto, on or off, got {server!r}[/red]")
        raise typer.Exit(2)
    bar = Progress(console=progress_console, transient=transient)
    task = bar.add_task("probing", total=None)

    def progress(done: int, total: int, record: dict | None) -> None:
        if not bar.live.is_started:
            bar.start()
        description = "probing" if record is None else f"{record.get('status', '?'):>7} {record.get('id')}"
        bar.update(task, completed=done, total=total, description=description)

    try:
        return fp_take.take(server=server, progress=progress,
                                note=lambda message: _error(f"[yellow]{message}[/yellow]"), **options)
    except NoProbesSelected as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except ServerFailed as exc:
        _error(f"[red]probe server: {exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        bar.stop()


_VERDICT_STYLE = {"agrees": "green", "differs": "red", "nondeterministic": "yellow", "missing": "dim",
                  "incomparable": "magenta", "failed": "red", "skipped": "dim", "control": "dim"}


def _evidence_table(title: str, rows: list[dict], limit: int, show_all: bool) -> Table:
    table = Table(title=title)
    for col in ("probe", "verdict", "why"):
        table.add_column(col, overflow="fold", no_wrap=col == "probe")
    order = {"differs": 0, "nondeterministic": 1, "agrees": 2}
    shown = rows if show_all else [r for r in rows if r["verdict"] in order]
    for r in sorted(shown, key=lambda r: order.get(r["verdict"], 3))[:limit]:
        style = _VERDICT_STYLE.get(r["verdict"], "")
        table.add_row(r["id"], f"[{style}]{r['verdict']}[/{style}]", r["why"])
    return table


@app.command()
def identify(
    fingerprint_path: Optional[Path] = typer.Argument(None, metavar="[FINGERPRINT]",
                                                      help="fingerprint JSON (default: probe this machine now)"),
    only: Optional[str] = typer.Option(None, "--only", help="when probing: only probes whose id contains this"),
    db: Optional[list[Path]] = typer.Option(None, "--db", help="reference fingerprints (files or folders; "
                                                                 "default: the shipped database)"),
    expect: Optional[str] = typer.Option(None, "--expect", help="exit 1 unless the identified platform's "
                                                                 "label or id contains this text"),
    save: Optional[Path] = typer.Option(None, "--save", help="when probing: also write the fingerprint here"),
    show_all: bool = typer.Option(False, "--all", help="show every probe's evidence, not only agree/differ"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="when probing: processes (as `hspi probe --jobs`)"),
    server: str = typer.Option("auto", "--server", help="when probing: as `hspi probe --server`"),
) -> None:
    """Name the platform that produced a fingerprint: ranked candidates from the reference database,
    confidence, and per-probe evidence (agrees / differs / nondeterministic / missing, and why)."""
    database = _load_database(db)
    if fingerprint_path is not None:
        query = _load_fingerprint(fingerprint_path)
    else:
        query = _take(err_console if as_json else console, transient=True, only=only, kernels=True, jobs=jobs,
                      server=server, timing=False)
        if save is not None:
            fingerprint.save(query, save)
    try:
        result = ident.identify(query, database)
    except ValueError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    expected_ok = expect is None or (result["status"] == "identified" and any(
        expect.lower() in (result[k] or "").lower() for k in ("platform", "reference")))
    if as_json:
        _print_json(result)
    else:
        colour = {"identified": "green", "ambiguous": "yellow", "unknown": "red"}[result["status"]]
        console.print(f"[bold {colour}]{result['status'].upper()}[/bold {colour}]: {result['summary']}")
        table = Table(title=f"candidates for {result['query']} ({result['fingerprint_probes']} fingerprint probes)")
        for col in ("reference", "label", "match", "confidence", "similarity", "coverage", "agree", "differ",
                    "nondet.", "missing"):
            table.add_column(col, overflow="fold")
        for c in result["candidates"]:
            k = c["counts"]
            table.add_row(c["id"], c["label"], "yes" if c["match"] else "no", f"{c['confidence']:.2f}",
                          f"{c['similarity']:.0%}", f"{c['coverage']:.0%}", str(k["agrees"]), str(k["differs"]),
                          str(k["nondeterministic"]), str(k["missing"] + k["incomparable"]))
        console.print(table)
        best = result["candidates"][0]
        console.print(_evidence_table(f"evidence against {best['id']}", best["evidence"], 60, show_all))
        console.print(f"rule: {result['rule']}")
    if not expected_ok:
        _error(f"[red]expected a platform matching {expect!r}, got {result['status']}: "
                          f"{result['summary']}[/red]")
        raise typer.Exit(1)


@app.command()
def compare(
    a: Path = typer.Argument(..., help="fingerprint A"),
    b: Path = typer.Argument(..., help="fingerprint B"),
    show_all: bool = typer.Option(False, "--all", help="include missing / skipped / control rows"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Per-probe diff of two fingerprints: digests, sampled ULP distances, kernel names, and why."""
    result = ident.compare(_load_fingerprint(a), _load_fingerprint(b))
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"A = {result['a']}  vs  B = {result['b']}")
    for col in ("probe", "verdict", "digest A", "digest B", "sampled ULP", "kernels A / B", "why"):
        table.add_column(col, overflow="fold", no_wrap=col == "probe")
    for r in result["rows"]:
        if not show_all and r["verdict"] in ("missing", "skipped", "control"):
            continue
        ulp = r["ulp"]
        ulp_text = f"{ulp['equal_fraction']:.0%} eq, max {ulp['max_abs']}" if ulp else ""
        ka, kb = r["kernels_a"], r["kernels_b"]
        kern = "" if not (ka or kb) else ("same" if ka == kb else f"{' + '.join(ka or ['-'])} / {' + '.join(kb or ['-'])}")
        style = _VERDICT_STYLE.get(r["verdict"], "")
        table.add_row(r["id"], f"[{style}]{r['verdict']}[/{style}]", r["digest_a"] or "-", r["digest_b"] or "-",
                      ulp_text, kern, "" if r["verdict"] == "agrees" else r["why"])
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in result["counts"].items() if v))


@app.command()
def report(
    fingerprints: Optional[list[Path]] = typer.Argument(None, help="fingerprints (default: the reference database)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary of the report"),
) -> None:
    """One self-contained HTML report: agreement matrices, ULP histograms, fraction-bit frequencies."""
    if fingerprints:
        refs = [Reference(id=p.stem, label=fp["label"], fingerprint=fp, path=str(p))
                for p, fp in ((p, _load_fingerprint(p)) for p in fingerprints)]
    else:
        refs = _load_database(None)
    try:
        summary = html_report.write_report(refs, out, console=err_console if as_json else console)
    except (ValueError, OSError) as exc:
        _error(f"[red]report failed:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        _print_json(summary)
    else:
        console.print(f"wrote {out} ({summary['bytes']} bytes, {summary['platforms']} platforms, "
                      f"{summary['probes']} probes, {summary['figures']} figures)")


# ------------------------------------------------------------------------------------------------
# hspi model …: model-level platform inference (hspi_kernels.models)
# ------------------------------------------------------------------------------------------------
model_app = typer.Typer(no_args_is_help=True, help="Model-level platform inference: collect, classify, border, identify.")
app.add_typer(model_app, name="model")


@model_app.command("collect")
def model_collect(
    model: str = typer.Option("tiny-llama", "--model", "-m", help="zoo name or a local checkpoint directory"),
    eqc: Optional[list[str]] = typer.Option(None, "--eqc", "-e", help="EQC name(s), e.g. bf16.sdpa.b8"),
    preset: str = typer.Option("cpu", "--preset", help="EQC preset when no --eqc: cpu, gpu, gpu-quick, vision"),
    device: str = typer.Option("cpu", "--device"),
    n_random: int = typer.Option(32, "--n-random"),
    n_text: int = typer.Option(32, "--n-text"),
    length: int = typer.Option(16, "--length"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("collection.npz"), "--out", "-o"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a model under EQCs on fixed prompt sets and write a compressed collection (.npz)."""
    runner = mc.Runner(model, seed=seed, device=device)
    eqcs = [meqc.parse(e) for e in eqc] if eqc else meqc.preset(preset, runner.kind)
    inputs = mc.make_inputs(runner, n_random, n_text, length, seed)
    with Progress(console=err_console if as_json else console) as progress:
        task = progress.add_task("collecting", total=len(eqcs))
        coll = mc.collect(runner, eqcs, inputs, on_run=lambda r: progress.update(
            task, advance=1, description=f"{r['status']:>11} {r['label']}"))
    coll.save(out)
    summary = [{k: r.get(k) for k in ("label", "status", "deterministic", "time_s", "reason", "error")}
               for r in coll.meta["runs"]]
    if as_json:
        _print_json({"out": str(out), "runs": summary})
    else:
        table = Table(title=f"hspi model collect — {model} on {coll.meta['platform_label']}")
        for col in ("run", "status", "determ.", "time / reason"):
            table.add_column(col, overflow="fold")
        for r in summary:
            tail = f"{r['time_s']:.2f} s" if r.get("time_s") else (r.get("reason") or r.get("error") or "")
            table.add_row(r["label"], r["status"], str(r.get("deterministic", "")), tail)
        console.print(table)
        console.print(f"wrote {out}")
    if any(r["status"] == "failed" for r in summary):
        raise typer.Exit(1)


@model_app.command("classify")
def model_classify(
    collections: list[Path] = typer.Argument(..., help="collections (.npz), e.g. one per GPU"),
    representation: list[str] = typer.Option(["paper", "native"], "--rep", help="paper, paper-logits, native"),
    axis: Optional[list[str]] = typer.Option(None, "--axis", help="only these axes (all, dtype, batch, hardware...)"),
    d: int = typer.Option(64, "--d", help="log-probs per sample used as features"),
    queries: int = typer.Option(32, "--queries", help="black-box query budget"),
    k: int = typer.Option(20, "--k", help="top-k log-probs the black-box API returns"),
    decimals: Optional[int] = typer.Option(None, "--decimals", help="API rounding (default: fp32 as JSON float)"),
    plot_dir: Optional[Path] = typer.Option(None, "--plot-dir", help="write confusion-matrix PNGs here"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the report JSON here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """EQC lattice, HSPI-LD per axis (+ shuffled control), white-box and black-box identification."""
    try:
        hspi_ld.require_sklearn()
    except RuntimeError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    runs = mc.load_many(collections)
    with (err_console if as_json else console).status("classifying") as status:
        report = analysis.analyse(runs, representations=representation, axes=axis, d=d, queries=queries, k=k,
                                  decimals=decimals, plot_dir=plot_dir, progress=lambda s: status.update(s))
    report["collections"] = [str(c) for c in collections]
    if out:
        out.write_text(json.dumps(report, indent=1, default=str))
    if as_json:
        _print_json(report)
        return
    for model, rep in report["models"].items():
        console.print(f"[bold]{model}[/bold]: {len(rep['runs'])} runs, {len(rep['lattice'])} bit-distinct classes")
        for group in rep["lattice"]:
            console.print("  " + " = ".join(group))
        table = Table(title=f"{model}: HSPI-LD (split by prompt)")
        for col in ("group|representation", "classes", "accuracy", "chance", "fit s"):
            table.add_column(col, overflow="fold")
        for key, res in rep["classify"].items():
            if "skipped" in res:
                continue
            table.add_row(key, str(len(res["classes"])), f"{res['accuracy']:.3f}", f"{res['chance']:.3f}",
                          f"{res['fit_s']:.2f}")
        console.print(table)
        console.print(f"white-box, 1 query: {rep['whitebox_1query']['accuracy']:.3f}; "
                      f"all prompts: {rep['whitebox_all']['accuracy']:.3f}")
        for name, by_q in rep["blackbox"].items():
            console.print(f"black-box {name}: " + ", ".join(f"{q} q → {r['accuracy']:.3f}" for q, r in by_q.items()))


@model_app.command("tables")
def model_tables(
    collections: list[str] = typer.Argument(..., help="collections (.npz), e.g. models_H100.npz models_H200.npz; "
                                            "PATH=TAG relabels its hardware HW@TAG"),
    out: Path = typer.Option(..., "--out", "-o", help="output path without suffix (.json and .md are written)"),
    dtypes: str = typer.Option("bf16,fp16", "--dtypes", help="the dtype axis of the hardware x dtype problem"),
    queries: int = typer.Option(32, "--queries", help="black-box query budget"),
    k: int = typer.Option(20, "--k", help="top-k log-probs the black-box API returns"),
    trials: int = typer.Option(200, "--trials"),
    models: Optional[str] = typer.Option(None, "--models", help="comma-separated subset"),
    hardware: Optional[str] = typer.Option(None, "--hardware", help="comma-separated subset of hardware labels"),
) -> None:
    """Cross-platform tables: white-box per pair, black-box per EQC across hardware, hardware x dtype,
    HSPI-LD / HSPI-BI on the same data, 6-class SVM fit time, shuffled-label controls."""
    try:
        hspi_ld.require_sklearn()
    except RuntimeError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    with err_console.status("analysing") as status:
        rep = cp.analyse_files(collections, out, dtypes=tuple(dtypes.split(",")), queries=queries, k=k, trials=trials,
                               models=models.split(",") if models else None,
                               hardware=hardware.split(",") if hardware else None,
                               progress=lambda s: status.update(s))
    console.print(f"wrote {out}.json and {out}.md ({rep['analysis_s']:.1f} s)")


@model_app.command("border")
def model_border(
    model: str = typer.Option("tiny-llama", "--model", "-m"),
    a: str = typer.Option("fp32.b1", "--a", help="first EQC"),
    b: str = typer.Option("bf16.b1", "--b", help="second EQC"),
    device: str = typer.Option("cpu", "--device"),
    budget: int = typer.Option(64, "--budget", help="queries (sequences × 2 EQCs)"),
    length: int = typer.Option(16, "--length"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """HSPI-BI: search border inputs whose top-1 differs between two EQCs."""
    runner = mc.Runner(model, seed=seed, device=device)
    with (err_console if as_json else console).status("searching border inputs"):
        res = hspi_bi.border_search(runner, meqc.parse(a), meqc.parse(b), budget=budget, length=length, seed=seed)
    res["inputs"] = [res["inputs"][i].tolist() for i in res["found"]] if runner.kind == "llm" else len(res["found"])
    if as_json:
        _print_json(res)
    else:
        console.print(f"{res['a']} vs {res['b']}: {res['n_found']} border inputs in {res['queries']} queries "
                      f"(first after {res['queries_to_first']}, {res['queries_per_border']} per border input)")
    if not res["success"]:
        raise typer.Exit(1)


@model_app.command("identify")
def model_identify(
    observed: Path = typer.Argument(..., help="collection from the platform to identify"),
    ref: list[Path] = typer.Option(..., "--ref", help="reference collections of the candidate platforms"),
    blackbox: bool = typer.Option(False, "--blackbox", help="use only rounded top-k log-probs (API view)"),
    k: int = typer.Option(20, "--k"),
    decimals: Optional[int] = typer.Option(None, "--decimals"),
    queries: int = typer.Option(32, "--queries"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Name the EQC behind each run of OBSERVED: white-box bit matching or black-box top-k test."""
    results = matching.identify_runs(mc.load(observed), mc.load_many(ref), blackbox_view=blackbox, k=k,
                                     decimals=decimals, queries=queries)
    if as_json:
        _print_json(results)
    else:
        for r in results:
            console.print(f"{r['observed']} → {r.get('identified', r.get('error'))}")
    if any("error" in r or not r["identified"] for r in results):
        raise typer.Exit(1)


@app.command()
def reveal(
    target: str = typer.Argument(..., help="numpy.sum | torch.sum | torch.matmul (CPU); torch.sum.cuda | torch.matmul.cuda (GPU)"),
    n: int = typer.Option(4096, "--n", help="number of terms (K for matmul)"),
    replay_count: int = typer.Option(10_000, "--replay", help="random inputs for the bit-exact replay"),
    rows: int = typer.Option(8, "--m", help="torch.matmul.cuda: M of [M,K]x[K,N]"),
    cols: int = typer.Option(4096, "--cols", help="torch.matmul.cuda: N of [M,K]x[K,N]"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Reveal the summation order of an op (FPRev masking), as a plan replayed bit for bit.
    torch.matmul.cuda (cuBLAS bf16): the split-K family confirmed by masking (K chunking, split-K
    factor, part bounds, combine) and the op's output digest on seeded inputs."""
    try:
        t = reveal_targets.get_target(target, n, rows, cols)
    except (RuntimeError, ValueError) as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    result = R.reveal(t, replay_count=replay_count)
    out = result.to_json()
    if as_json:
        _print_json(out)
    else:
        table = Table(title=f"hspi reveal — {out['target']}", show_header=False)
        for key in ("revealed", "compact", "plan", "replay", "calls", "calls_bound_4nlog2n", "basic_fprev_calls",
                    "launches", "seconds", "block_size", "structure", "note"):
            table.add_row(key, str(out[key])[:400])
        console.print(table)
    if not result.revealed:
        raise typer.Exit(1)


@app.command()
def card(
    path: str = typer.Option("emulated:sm_90.mma/bf16->fp32", "--path",
                             help="mma.sync | wgmma | triton | cublas | emulated:<preset name>"),
    fmt: str = typer.Option("bf16", "--format", help="input format (GPU paths): bf16 fp16 tf32 e4m3 e5m2"),
    out_format: str = typer.Option("fp32", "--out-format", help="output/accumulator format (GPU mma.sync/wgmma): fp32 | fp16"),
    n_verify: int = typer.Option(100_000, "--verify", help="blocks in the final verification"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Tensor-core numerics card: block-model parameters from feature tests, closed-loop verified."""
    if path.startswith("emulated:"):
        name = path.split(":", 1)[1]
        if name not in TC.PRESETS:
            _error(f"[red]unknown preset {name!r}; known: {sorted(TC.PRESETS)}[/red]")
            raise typer.Exit(2)
        unit = C.emulated_unit(TC.PRESETS[name])
    else:
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            _error(f"[red]--path {path} needs a CUDA GPU (none visible); use --path emulated:<preset> here, "
                   f"or python -m hspi_kernels.reveal.gpu OUT_DIR on the GPU[/red]")
            raise typer.Exit(2)
        from hspi_kernels.reveal import gpu as reveal_gpu

        unit = reveal_gpu.gpu_unit(path, fmt, out_format=out_format)
    result = C.numerics_card(unit, n_verify=n_verify)
    if as_json:
        _print_json(result)
    else:
        console.print(C.card_table(result))
    if not result["exact"]:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------
# hspi trace: op-level trace of one forward, first divergence between two traces, its cause
# --------------------------------------------------------------------------------------------
trace_app = typer.Typer(no_args_is_help=True, help="Trace a model-level divergence to its op and cause.")
app.add_typer(trace_app, name="trace")


@trace_app.command("run")
def trace_run(
    model: str = typer.Option("tiny-llama", "--model", "-m", help="zoo name (tiny-llama, llama-3.2-1b, ...)"),
    dtype: str = typer.Option("bf16", "--dtype"),
    batch: int = typer.Option(1, "--batch"),
    length: int = typer.Option(16, "--length", help="tokens per sequence"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    attn: str = typer.Option("sdpa", "--attn", help="eager, sdpa, sdpa-math, sdpa-flash, ..."),
    gemm: str = typer.Option("torch", "--gemm", help="torch or fixed (Triton fixed-order override, CUDA)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
    keep: str = typer.Option("auto", "--keep", help="auto, all, gemm (see hspi_kernels.trace.tracer)"),
    keep_layers: int = typer.Option(2, "--keep-layers", help="keep=gemm: GEMM inputs of the first N layers"),
    keep_key: Optional[list[str]] = typer.Option(None, "--keep-key", help="also keep this op's arrays"),
    keep_diverging: Optional[Path] = typer.Option(None, "--keep-diverging",
                                                  help="reference trace: keep the arrays of every op whose output differs from it"),
    max_mb: Optional[float] = typer.Option(None, "--max-mb", help="budget for stored arrays (MiB)"),
    inject: Optional[list[str]] = typer.Option(None, "--inject", help="KEY=PLAN: compute that GEMM by a plan (tests, demos)"),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="extra pass for device kernel names"),
    out: Path = typer.Option(Path("trace.npz"), "--out", "-o"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Record one forward pass op by op (digests, kept inputs, kernel names)."""
    keys = list(keep_key or [])
    try:
        reference = T.load(keep_diverging) if keep_diverging is not None else None
        tr = T.run_model(model, dtype=dtype, batch=batch, length=length, seed=seed, device=device, attn=attn,
                         gemm=gemm, threads=threads, keep=keep, keep_layers=keep_layers, keep_keys=keys,
                         max_bytes=None if max_mb is None else int(max_mb * (1 << 20)),
                         inject=T.parse_inject(inject or []), profile=profile, reference=reference)
    except (ValueError, OSError) as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    tr.save(out)
    summary = {"out": str(out), "label": tr.meta["label"], "ops": len(tr.ops), "stored_bytes": tr.meta["stored_bytes"],
               "file_bytes": out.stat().st_size, "logits_digest": tr.meta["logits_digest"],
               "kernel_note": tr.meta["kernel_note"], "seconds": tr.meta["seconds"]}
    if as_json:
        _print_json(summary)
    else:
        console.print(f"{summary['label']}: {summary['ops']} ops, {summary['file_bytes'] / 2**20:.2f} MiB -> {out}")


def _load_traces(a: Path, b: Path):
    try:
        return T.load(a), T.load(b)
    except (OSError, ValueError) as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@trace_app.command("diff")
def trace_diff(
    a: Path = typer.Argument(..., help="trace A (.npz)"),
    b: Path = typer.Argument(..., help="trace B (.npz)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="propagation PNG"),
    html: Optional[Path] = typer.Option(None, "--html", help="single-file HTML view"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the diff JSON here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """First op whose output differs while its inputs are equal; per-layer ULP propagation."""
    ta, tb = _load_traces(a, b)
    d = T.diff(ta, tb)
    if plot is not None:
        T.plot_propagation(d, plot)
    if html is not None:
        T.html_view(d, plot, None, html)
    if out is not None:
        out.write_text(json.dumps(d, indent=1, default=str))
    if as_json:
        _print_json(d)
        return
    fo = d["first_origin"]
    console.print(f"A: {d['a']['label']}\nB: {d['b']['label']}\nlogits equal: {d['logits_equal']}; "
                  f"{d['n_differ']}/{d['n_ops']} ops differ")
    console.print(f"first origin: {fo['key'] if fo else None}")
    if d["divergence_via_unmatched"]:
        console.print(f"divergence enters via ops present in one trace only: {d['divergence_via_unmatched']}")
    table = Table(title="origins (inputs equal, output differs)")
    for col in ("op", "max ULP (sample)", "kernels A", "kernels B"):
        table.add_column(col)
    for r in d["origins"][:30]:
        table.add_row(r["key"], f"{(r['ulp'] or {}).get('max_ulp', '-')}", ", ".join(r["kernels_a"])[:60],
                      ", ".join(r["kernels_b"])[:60])
    console.print(table)
    layers = Table(title="propagation per layer")
    for col in ("layer", "ops", "differ", "max ULP"):
        layers.add_column(col)
    for L in d["layers"]:
        layers.add_row(L["layer"], str(L["ops"]), str(L["differ"]), f"{L['max_ulp']:.0f}")
    console.print(layers)


@trace_app.command("explain")
def trace_explain(
    a: Path = typer.Argument(..., help="trace A (.npz)"),
    b: Path = typer.Argument(..., help="trace B (.npz)"),
    key: Optional[list[str]] = typer.Option(None, "--key", help="explain these op keys (default: the origins)"),
    reveal: Optional[list[Path]] = typer.Option(None, "--reveal", help="revealer output JSON: its plans go first"),
    max_ops: int = typer.Option(8, "--max-ops"),
    max_outputs: int = typer.Option(512, "--max-outputs", help="output positions evaluated per op (all "
                                    "differing ones first)"),
    html: Optional[Path] = typer.Option(None, "--html"),
    plot: Optional[Path] = typer.Option(None, "--plot"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the explanation JSON here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay the origin ops' inputs under candidate plans: which plan gives each platform's bits."""
    ta, tb = _load_traces(a, b)
    from hspi_kernels.trace import counterfactual as C

    try:
        T.check_pair(ta, tb)
        d = T.diff(ta, tb)
        x = C.explain_with_map(ta, tb, d, revealed_paths=reveal or [], max_ops=max_ops, max_outputs=max_outputs,
                               keys=key or [])
    except ValueError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if plot is not None:
        T.plot_propagation(d, plot)
    if html is not None:
        T.html_view(d, plot, x, html)
    if out is not None:
        out.write_text(json.dumps(x, indent=1, default=str))
    if as_json:
        _print_json(x)
    else:
        table = Table(title=f"{x['a']['label']}  vs  {x['b']['label']}")
        for col in ("op", "plan reproducing A", "plan reproducing B", "cause"):
            table.add_column(col)
        for o in x["ops"]:
            na, nb = len(o["a"]["exact"]), len(o["b"]["exact"])
            pa = f"{o['plan_a']} (+{na - 1} more)" if na > 1 else str(o["plan_a"])
            pb = f"{o['plan_b']} (+{nb - 1} more)" if nb > 1 else str(o["plan_b"])
            table.add_row(o["key"], pa, pb, o["cause"])
        console.print(table)
        console.print(x["map_text"], markup=False, highlight=False, soft_wrap=True)
        if x["unexplained"]:
            console.print("[yellow]unexplained:[/yellow] " + "; ".join(x["unexplained"]))
    if not x["ops"] or x["unexplained"]:
        raise typer.Exit(1)


@app.command()
def validate(
    names: list[str] = typer.Argument(..., help="cuda | triton | all, or cuda_core, tensor_core, attention_sfu, triton"),
    out: Path = typer.Option(Path("validation"), "--out", "-o", help="folder for the JSON records"),
    scale: float = typer.Option(1.0, "--scale", help="problem-size scale (1.0: >= 10^6 outputs per variant)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """GPU validation: every kernel's bits against its plan through the evaluator (needs a GPU)."""
    try:
        results = validation.run(names, out, scale)
    except ValueError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    if as_json:
        _print_json(results)
    else:
        table = Table(title="hspi validate")
        for col in ("family", "ok", "record / error"):
            table.add_column(col)
        for name, r in results.items():
            table.add_row(name, "yes" if r["ok"] else "[red]NO[/red]", r.get("out") or r.get("error", ""))
        console.print(table)
    if not all(r["ok"] for r in results.values()):
        raise typer.Exit(1)


def main() -> None:
    """The ``hspi`` entry point: the typer app, then a fast exit once torch is loaded. Tearing
    the interpreter down with torch (and a CUDA context, cuBLAS, Triton) imported takes ~1 s;
    every output is written and flushed by then, so the process ends at once with the command's
    status. (Tests drive ``app`` directly and never reach this.)"""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if "torch" not in sys.modules:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
