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

        records = probes.run_all(selected, on_done)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
