"""`hspi` command line (typer + rich): a human table on a terminal, `--json` for machines,
non-zero exit on failure. Heavy imports happen inside the commands, never at import."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hspi_kernels: hardware/software platform inference from output bits.")
console = Console()
err_console = Console(stderr=True)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Report Python/torch/triton/cupy/nvcc/driver/CUDA/cuBLAS versions, GPUs and kernel availability."""
    from hspi_kernels import platform as plat
    from hspi_kernels.capabilities import capabilities

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
    kernels: bool = typer.Option(True, "--kernels/--no-kernels",
                                 help="record CUDA kernel names of library probes (torch.profiler)"),
) -> None:
    """Run the registered probes on this machine and write a fingerprint (schema hspi-fingerprint/1)."""
    from rich.progress import Progress

    from hspi_kernels import fingerprint, platform as plat, probes

    selected = probes.select(only)
    if not selected:
        err_console.print(f"[red]no probe id contains {only!r}[/red]")
        raise typer.Exit(2)
    start = time.perf_counter()
    meta = plat.collect()
    progress_console = err_console if as_json else console
    with Progress(console=progress_console, transient=False) as progress:
        task = progress.add_task("probing", total=len(selected))

        def on_done(p, record):
            progress.update(task, advance=1, description=f"{record['status']:>7} {p.id}")

        records = probes.run_all(selected, on_done, profile_kernels=kernels)
    fp = fingerprint.build(meta, plat.platform_label(meta), records)
    fingerprint.save(fp, out)
    elapsed = time.perf_counter() - start
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
    if failed:
        raise typer.Exit(1)


def _load_fingerprint(path: Path) -> dict:
    from hspi_kernels import fingerprint

    try:
        return fingerprint.load(path)
    except ValueError as exc:
        err_console.print(f"[red]invalid fingerprint:[/red] {exc}")
        raise typer.Exit(1) from None


def _load_database(db: Optional[list[Path]]):
    from hspi_kernels import identify as ident

    try:
        return ident.load_database(db or None)
    except ValueError as exc:
        err_console.print(f"[red]invalid reference database:[/red] {exc}")
        raise typer.Exit(1) from None


def _probe_now(only: Optional[str], progress_console: Console, kernels: bool = True) -> dict:
    """Probe this machine (progress bar on ``progress_console``) and return the fingerprint."""
    from rich.progress import Progress

    from hspi_kernels import fingerprint, platform as plat, probes

    selected = probes.select(only)
    if not selected:
        err_console.print(f"[red]no probe id contains {only!r}[/red]")
        raise typer.Exit(2)
    meta = plat.collect()
    with Progress(console=progress_console, transient=True) as progress:
        task = progress.add_task("probing", total=len(selected))
        records = probes.run_all(selected, lambda p, r: progress.update(task, advance=1, description=p.id),
                                 profile_kernels=kernels)
    return fingerprint.validate(fingerprint.build(meta, plat.platform_label(meta), records), "<this machine>")


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
) -> None:
    """Name the platform that produced a fingerprint: ranked candidates from the reference database,
    confidence, and per-probe evidence (agrees / differs / nondeterministic / missing, and why)."""
    from hspi_kernels import fingerprint, identify as ident

    database = _load_database(db)
    if fingerprint_path is not None:
        query = _load_fingerprint(fingerprint_path)
    else:
        query = _probe_now(only, err_console if as_json else console)
        if save is not None:
            fingerprint.save(query, save)
    try:
        result = ident.identify(query, database)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
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
        err_console.print(f"[red]expected a platform matching {expect!r}, got {result['status']}: "
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
    from hspi_kernels import identify as ident

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
    from hspi_kernels import report as rep
    from hspi_kernels.identify import Reference

    if fingerprints:
        refs = [Reference(id=p.stem, label=fp["label"], fingerprint=fp, path=str(p))
                for p, fp in ((p, _load_fingerprint(p)) for p in fingerprints)]
    else:
        refs = _load_database(None)
    try:
        summary = rep.write_report(refs, out, console=err_console if as_json else console)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]report failed:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        _print_json(summary)
    else:
        console.print(f"wrote {out} ({summary['bytes']} bytes, {summary['platforms']} platforms, "
                      f"{summary['probes']} probes, {summary['figures']} figures)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
