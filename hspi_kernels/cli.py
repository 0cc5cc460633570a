"""`hspi` command line (typer + rich): it parses arguments, calls the library and formats the
result (a human table on a terminal, `--json` for machines, non-zero exit on failure). Every job
is a library call (``fingerprint.take``, ``identify``, ``reveal``, ``trace``, ``models``); torch,
triton, cupy, transformers, scikit-learn and matplotlib are imported only by the jobs that use them."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

_IMPORTS_START = time.perf_counter()
from hspi_kernels import fingerprint, platform as plat, report as html_report  # noqa: E402
from hspi_kernels.identify import references as ident  # noqa: E402  (hspi_kernels.identify is also the API function)
from hspi_kernels.fingerprint import take as fp_take  # noqa: E402
from hspi_kernels.fingerprint.take import NoProbesSelected, ServerFailed  # noqa: E402
from hspi_kernels.identify import Reference, stack as ident_stack  # noqa: E402
from hspi_kernels.kernels import bench as kbench, validation  # noqa: E402
from hspi_kernels.models import analysis, collect as mc, crossplatform as cp, eqc as meqc  # noqa: E402
from hspi_kernels.models import hspi_bi, hspi_ld, matching, zoo  # noqa: E402
from hspi_kernels.numerics import amd as AMD, tensor_core as TC  # noqa: E402
from hspi_kernels.platform.capabilities import capabilities  # noqa: E402
from hspi_kernels.platform.files import (OutputPathError, atomic_write_json, atomic_write_text, check_output_dir,  # noqa: E402
                                         check_output_path)
from hspi_kernels.probes import cache as probe_cache, server as srv  # noqa: E402
from hspi_kernels.reveal import card as C, order as R, targets as reveal_targets  # noqa: E402
from hspi_kernels.trace import batch as TB, counterfactual as C_map, tracer as T  # noqa: E402

IMPORTS_S = time.perf_counter() - _IMPORTS_START  # the package's imports: `hspi probe`'s "imports" phase

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="hspi_kernels: hardware/software platform inference from output bits.")
console = Console()
err_console = Console(stderr=True)


def _error(message: str, style: str = "red") -> None:
    """An error line on stderr: plain text (brackets in it, e.g. ``'hspi_kernels[models]'``, print
    as they are, never as rich markup) and never hard-wrapped (a long path stays one piece)."""
    err_console.print(escape(message), style=style, soft_wrap=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    """One error line, then exit: 2 for a usage error (bad argument, unwritable output), 1 for a
    failure at run time (unreadable input, missing dependency, no GPU)."""
    _error(message)
    raise typer.Exit(code)


def _output(path: Path, kind: str) -> Path:
    """An output file checked before any work (``platform.files.check_output_path``): exit 2 if not writable."""
    try:
        return check_output_path(path, kind=kind)
    except OutputPathError as exc:
        _fail(str(exc), 2)


def _output_dir(path: Path, kind: str) -> Path:
    try:
        return check_output_dir(path, kind=kind)
    except OutputPathError as exc:
        _fail(str(exc), 2)


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """A write that fails after the checks (disk full, I/O error) as one line and exit 1; the
    atomic writers have left the previous file (or none) in place."""
    try:
        yield
    except OSError as exc:
        _fail(f"cannot write {what}: {exc.strerror or exc}", 1)


def _need(module: str, purpose: str) -> None:
    """Exit 1 with the install command when an optional package of the models extra is missing."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        _fail(f"{purpose} needs {module}, which is not importable ({exc}): {zoo.MODELS_EXTRA}", 1)


def _model_spec(model: str) -> zoo.ModelSpec:
    """A model name checked before any work: exit 2 when unknown, 1 when its packages are missing."""
    try:
        return zoo.require(model)
    except ValueError as exc:
        _fail(str(exc), 2)
    except zoo.MissingDependency as exc:
        _fail(str(exc), 1)


def _positive(value: float, option: str) -> None:
    if not value >= 1:
        _fail(f"{option} must be >= 1, got {value}", 2)


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
        table.add_row(key, escape(str(value)))  # e.g. "pip install 'hspi_kernels[gpu]'" prints as typed
    console.print(table)


@app.command()
def probe(
    out: Path = typer.Option(Path("fingerprint.json"), "--out", "-o", help="fingerprint JSON to write"),
    only: Optional[str] = typer.Option(None, "--only", help="run only probes whose id contains this"),
    suite: str = typer.Option("default", "--suite", help="default: the fingerprint suite; stack: the "
                              "software-stack probes (torch.compile, JAX, BLAS flags, fp8; slow); all"),
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
    distributed: Optional[str] = typer.Option(None, "--distributed", help="also run the distributed probes "
                                              "at these world sizes, e.g. 2,4: all-reduce order and a "
                                              "row-parallel linear at TP 1 and each size (gloo ranks on the "
                                              "CPU, or NCCL with one GPU per rank)"),
    dist_backend: str = typer.Option("auto", "--dist-backend", help="auto (NCCL when there is a GPU per "
                                     "rank, else gloo), gloo or nccl"),
    all_gpus: bool = typer.Option(False, "--all-gpus", help="the suite on every GPU of this node at once (one "
                                  "process per GPU): --out becomes the node summary, each GPU's fingerprint "
                                  "is written next to it as <name>.gpu<i>.json"),
) -> None:
    """Run the registered probes on this machine and write a fingerprint (schema hspi-fingerprint/1).
    A second run is faster: operands, fp64 references and plan evaluations come from the on-disk
    cache (checksummed, keyed by the code that made them); the probes themselves always run.
    Probe groups run in parallel worker processes (``--jobs``; records do not depend on it), or
    in a resident ``hspi serve`` process when one runs (``--server``)."""
    if suite not in ("default", "stack", "all"):
        _fail(f"--suite must be default, stack or all, got {suite!r}", 2)
    world_sizes: tuple[int, ...] = ()
    if distributed is not None:
        from hspi_kernels.parallel import probes as dist_probes

        try:
            world_sizes = dist_probes.parse_world_sizes(distributed)
            dist_backend = dist_probes.resolve_backend(dist_backend, world_sizes)
        except ValueError as exc:
            _fail(f"--distributed / --dist-backend: {exc}", 2)
        from hspi_kernels.parallel.group import backend_unavailable

        reason = backend_unavailable(dist_backend, max(world_sizes))
        if reason is not None:  # before any probe runs
            _fail(f"--distributed {distributed} on {dist_backend}: {reason}", 2)
    elif dist_backend != "auto":
        _fail("--dist-backend needs --distributed (the world sizes)", 2)
    if all_gpus:
        if distributed is not None or as_json:
            _fail("--all-gpus runs one process per GPU: it does not combine with --distributed or --json", 2)
        _probe_all_gpus(out, only=only, suite=suite, kernels=kernels, use_cache=use_cache, clear_cache=clear_cache,
                        jobs=jobs)
        return
    out = _output(out, "fingerprint")  # before the probes run, not after
    progress_console = err_console if as_json else console
    fp = _take(progress_console, transient=False, only=only, suite=suite, kernels=kernels, use_cache=use_cache,
               clear_cache=clear_cache, jobs=jobs, server=server, imports_s=IMPORTS_S,
               distributed=world_sizes, dist_backend=dist_backend)
    records, elapsed = fp["probes"], fp["suite"]["wall_s"]
    with _writing(f"fingerprint {out}"):
        fingerprint.save(fp, out)
    failed = [r for r in records if r["status"] == "failed"]
    if as_json:
        _print_json(fp)
    else:
        console.print(_probe_table(fp, console.width))
        console.print(f"wrote {out} ({probe_summary(records)}) in {elapsed:.1f} s")
    if timings:
        _print_timings(fp, progress_console)
    if failed:
        raise typer.Exit(1)


def _probe_all_gpus(out: Path, *, only, suite, kernels, use_cache, clear_cache, jobs) -> None:
    """`hspi probe --all-gpus`: one `hspi probe` per GPU in parallel and the node summary."""
    from hspi_kernels.fingerprint import node

    devices = node.gpu_indices()
    if not devices:
        _fail("--all-gpus: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "run `hspi probe` without it", 1)
    out = _output(out, "node summary")
    for dev in devices:  # every per-GPU file is checked before any GPU starts
        _output(node.per_gpu_path(out, dev), "fingerprint")
    args = [*(["--only", only] if only else []), "--suite", suite, "--kernels" if kernels else "--no-kernels",
            "--cache" if use_cache else "--no-cache", *(["--clear-cache"] if clear_cache else []), "--jobs", str(jobs)]
    console.print(f"probing {len(devices)} GPU(s) in parallel: {', '.join(devices)}")
    with _writing(f"node summary {out}"):
        summary = node.run(devices, out, args,
                           on_done=lambda g: console.print(f"  GPU {g['device']}: {g['status']} in {g['wall_s']:.1f} s"))
    table = Table(title=f"hspi probe --all-gpus — {len(devices)} GPU(s), {summary['wall_s']:.1f} s")
    for col in ("GPU", "status", "label", "probes", "differ from first"):
        table.add_column(col, overflow="fold")
    for g in summary["gpus"]:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(g.get("probes", {}).items()))
        differ = str(len(g["differing_probes"])) if "differing_probes" in g else "-"
        table.add_row(escape(g["device"]), g["status"], escape(g.get("label", g.get("error", ""))), counts, differ)
    console.print(table)
    verdict = ("bit-identical on every probe" if summary["bit_identical"] else
               "NOT bit-identical (see differing_probes)" if summary["all_ran"] else "some GPUs failed (see their logs)")
    console.print(f"wrote {out} (node: {verdict})")
    if not summary["all_ran"]:
        raise typer.Exit(1)


def probe_summary(records: list[dict]) -> str:
    """'77 probes: 18 ok, 59 skipped, 0 failed' (every status present is named; failed always)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    counts.setdefault("failed", 0)
    order = ["ok", "skipped"] + sorted(set(counts) - {"ok", "skipped", "failed"}) + ["failed"]
    return f"{len(records)} probes: " + ", ".join(f"{counts[k]} {k}" for k in order if k in counts)


def _probe_table(fp: dict, width: int) -> Table:
    """`hspi probe`'s table for a terminal ``width`` columns wide. Below 120 columns the digest is
    dropped (it is in the JSON) and reasons are cut to fit, so status, determinism and time keep
    their full width and the probe id takes the rest (it wraps only when longer than that)."""
    wide = width >= 120
    table = Table(title=f"hspi probe — {fp['label']}")
    if wide:
        table.add_column("probe", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("digest", no_wrap=True)
        table.add_column("determ.", no_wrap=True)
        table.add_column("time / reason", overflow="fold")
        reason_chars = 60
    else:
        reason_chars = 13 if width < 100 else 30
        # 4 columns: 5 borders + 2 padding each = 13; status 7, det. 4 ("yes", "NO")
        id_width = max(16, width - 13 - 7 - 4 - reason_chars)
        longest = max((len(r["id"]) for r in fp["probes"]), default=8)
        table.add_column("probe", overflow="fold", min_width=min(longest, id_width), max_width=id_width)
        table.add_column("status", no_wrap=True, min_width=7)
        table.add_column("det.", no_wrap=True, min_width=4)
        table.add_column("time / reason", no_wrap=True, overflow="ellipsis", max_width=reason_chars)
    for r in fp["probes"]:
        det = "" if r["status"] != "ok" else ("yes" if r["deterministic"] else "[yellow]NO[/yellow]")
        digest = r.get("digest") or ("-" if r["status"] != "ok" else "varies")
        reason = r.get("reason", r.get("error", ""))
        if len(reason) > reason_chars:
            reason = reason[:reason_chars - 1] + "…"
        time_s = f"{r['time_s'] * 1e3:.1f} ms" if "time_s" in r else escape(reason)
        table.add_row(escape(r["id"]), r["status"], *([digest] if wide else []), det, time_s)
    return table


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
    except (ValueError, OSError) as exc:
        _fail(f"invalid fingerprint: {exc}", 1)


def _load_database(db: Optional[list[Path]]):
    try:
        return ident.load_database(db or None)
    except (ValueError, OSError) as exc:
        _fail(f"invalid reference database: {exc}", 1)


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
    unusable = probe_cache.unusable_reason()
    if unusable is not None:
        _fail(f"probe server: {unusable}; its socket lives there (point HSPI_CACHE_DIR at a writable folder)", 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the socket is removed on the way out
    try:
        srv.serve(idle_timeout=idle_timeout, warm=warm, log=lambda msg: console.print(msg))
    except (RuntimeError, ValueError, OSError) as exc:
        _fail(f"probe server: {exc}", 1)
    except KeyboardInterrupt:
        console.print("stopped")


def _take(progress_console: Console, transient: bool, *, server: str, **options) -> dict:
    """``fingerprint.take`` with a progress bar on ``progress_console``; its errors as exit codes."""
    if server not in ("auto", "on", "off"):
        _fail(f"--server must be auto, on or off, got {server!r}", 2)
    bar = Progress(console=progress_console, transient=transient)
    task = bar.add_task("probing", total=None)

    def progress(done: int, total: int, record: dict | None) -> None:
        if not bar.live.is_started:
            bar.start()
        description = "probing" if record is None else f"{record.get('status', '?'):>7} {record.get('id')}"
        bar.update(task, completed=done, total=total, description=description)

    try:
        return fp_take.take(server=server, progress=progress,
                            note=lambda message: _error(f"warning: {message}", style="yellow"), **options)
    except NoProbesSelected as exc:
        _fail(str(exc), 2)
    except ServerFailed as exc:
        _fail(f"probe server: {exc}", 1)
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
    if save is not None:
        if fingerprint_path is not None:
            _fail("--save writes the fingerprint this run probes; with a FINGERPRINT argument nothing is probed", 2)
        save = _output(save, "--save fingerprint")
    database = _load_database(db)
    if fingerprint_path is not None:
        query = _load_fingerprint(fingerprint_path)
    else:
        query = _take(err_console if as_json else console, transient=True, only=only, kernels=True, jobs=jobs,
                      server=server, timing=False)
        if save is not None:
            with _writing(f"fingerprint {save}"):
                fingerprint.save(query, save)
    try:
        result = ident.identify(query, database)
    except ValueError as exc:
        _fail(str(exc), 1)
    # software-stack settings: per axis, whether the settings' probes differ in bits here, and which
    # references give the same bits on each probe (evidence per probe in the JSON)
    result["stack"] = ident_stack.infer_stack(query, [(r.id, r.fingerprint) for r in database])
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
        _print_stack(result["stack"])
    if not expected_ok:
        _fail(f"expected a platform matching {expect!r}, got {result['status']}: {result['summary']}", 1)


def _print_stack(entries: list[dict]) -> None:
    """The stack axes this fingerprint measured: verdict, and per setting the references with the
    same bits on every probe of that setting."""
    measured = [e for e in entries if e["distinguishable"] is not None]
    if measured:
        table = Table(title="software stack (stack probes of this fingerprint)")
        for col in ("axis", "bits", "summary", "same bits as"):
            table.add_column(col, overflow="fold")
        for e in measured:
            same: dict[str, set] = {}
            for p in e["pairs"]:
                for setting, ev in zip(p["settings"], p["evidence"]):
                    if "same_as_references" in ev:
                        refs = set(ev["same_as_references"])
                        same[setting] = refs if setting not in same else same[setting] & refs
            text = "; ".join(f"{k}: {', '.join(sorted(v)) or 'none'}" for k, v in same.items())
            table.add_row(e["axis"], "differ" if e["distinguishable"] else "equal", e["summary"], text)
        console.print(table)
    rest = len(entries) - len(measured)
    if rest:
        console.print(f"{rest} stack axes not measured in this fingerprint (`hspi probe --suite stack` "
                      "records them; GPU axes need CUDA)")


@app.command()
def compare(
    a: Path = typer.Argument(..., help="fingerprint A"),
    b: Path = typer.Argument(..., help="fingerprint B"),
    show_all: bool = typer.Option(False, "--all", help="every probe (agrees / missing / skipped / control too), "
                                  "not only those that differ"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output (every probe)"),
) -> None:
    """Per-probe diff of two fingerprints: digests, sampled ULP distances, kernel names, and why.
    The table shows the probes that differ (differs / nondeterministic / incomparable / failed);
    ``--all`` shows every probe."""
    result = ident.compare(_load_fingerprint(a), _load_fingerprint(b))
    if as_json:
        _print_json(result)
        return
    shown = [r for r in result["rows"] if show_all or r["verdict"] not in COMPARE_HIDDEN]
    console.print(_compare_table(result, shown, console.width))
    hidden = len(result["rows"]) - len(shown)
    console.print(f"{len(shown)} of {len(result['rows'])} probes shown"
                  + (f" (the {hidden} that agree, are missing, skipped or controls: --all)" if hidden else "")
                  + "; " + ", ".join(f"{k} {v}" for k, v in result["counts"].items() if v))


COMPARE_HIDDEN = ("agrees", "missing", "skipped", "control")  # `hspi compare` rows shown only with --all


def _compare_table(result: dict, rows: list[dict], width: int) -> Table:
    """Below 160 columns only probe / verdict / why (digests, ULP and kernels are in --json)."""
    wide = width >= 160
    cols = ("probe", "verdict", "digest A", "digest B", "sampled ULP", "kernels A / B", "why") if wide \
        else ("probe", "verdict", "why")
    table = Table(title=f"A = {result['a']}  vs  B = {result['b']}")
    for col in cols:
        table.add_column(col, overflow="fold", no_wrap=col == "probe" and wide,
                         min_width=len("nondeterministic") if col == "verdict" else None)
    for r in rows:
        style = _VERDICT_STYLE.get(r["verdict"], "")
        why = "" if r["verdict"] == "agrees" else escape(r["why"])
        verdict = f"[{style}]{r['verdict']}[/{style}]"
        if not wide:
            table.add_row(escape(r["id"]), verdict, why)
            continue
        ulp = r["ulp"]
        ulp_text = f"{ulp['equal_fraction']:.0%} eq, max {ulp['max_abs']}" if ulp else ""
        ka, kb = r["kernels_a"], r["kernels_b"]
        kern = "" if not (ka or kb) else ("same" if ka == kb else f"{' + '.join(ka or ['-'])} / {' + '.join(kb or ['-'])}")
        table.add_row(escape(r["id"]), verdict, r["digest_a"] or "-", r["digest_b"] or "-", ulp_text, escape(kern), why)
    return table


@app.command()
def report(
    fingerprints: Optional[list[Path]] = typer.Argument(None, help="fingerprints (default: the reference database)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary of the report"),
) -> None:
    """One self-contained HTML report: agreement matrices, ULP histograms, fraction-bit frequencies."""
    out = _output(out, "report")
    if fingerprints:
        refs = [Reference(id=p.stem, label=fp["label"], fingerprint=fp, path=str(p))
                for p, fp in ((p, _load_fingerprint(p)) for p in fingerprints)]
    else:
        refs = _load_database(None)
    try:
        summary = html_report.write_report(refs, out, console=err_console if as_json else console)
    except (ValueError, OSError) as exc:
        _fail(f"report failed: {exc}", 1)
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
    """Run a model under EQCs on fixed prompt sets and write a compressed collection (.npz).
    LLMs need the models extra: pip install 'hspi_kernels[models]'."""
    spec = _model_spec(model)
    try:
        eqcs = [meqc.parse(e) for e in eqc] if eqc else meqc.preset(preset, spec.kind)
    except ValueError as exc:
        _fail(str(exc), 2)
    for value, option in ((n_random + n_text, "--n-random + --n-text"), (length, "--length")):
        _positive(value, option)
    if min(n_random, n_text) < 0:
        _fail(f"--n-random and --n-text must be >= 0, got {n_random} and {n_text}", 2)
    out = _output(out, "collection")
    runner = mc.Runner(model, seed=seed, device=device)
    inputs = mc.make_inputs(runner, n_random, n_text, length, seed)
    with Progress(console=err_console if as_json else console) as progress:
        task = progress.add_task("collecting", total=len(eqcs))
        coll = mc.collect(runner, eqcs, inputs, on_run=lambda r: progress.update(
            task, advance=1, description=f"{r['status']:>11} {r['label']}"))
    with _writing(f"collection {out}"):
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


def _load_collections(paths: list[Path]) -> list:
    try:
        return mc.load_many(paths)
    except (ValueError, OSError) as exc:
        _fail(f"invalid collection: {exc}", 1)


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
    """EQC lattice, HSPI-LD per axis (+ shuffled control), white-box and black-box identification.
    Needs the models extra: pip install 'hspi_kernels[models]'."""
    try:
        hspi_ld.require_sklearn()
    except RuntimeError as exc:
        _fail(str(exc), 1)
    if plot_dir is not None:
        _need("matplotlib", "--plot-dir")
        plot_dir = _output_dir(plot_dir, "--plot-dir")
    if out is not None:
        out = _output(out, "report JSON")
    for value, option in ((d, "--d"), (queries, "--queries"), (k, "--k")):
        _positive(value, option)
    runs = _load_collections(collections)
    with (err_console if as_json else console).status("classifying") as status:
        report = analysis.analyse(runs, representations=representation, axes=axis, d=d, queries=queries, k=k,
                                  decimals=decimals, plot_dir=plot_dir, progress=lambda s: status.update(s))
    report["collections"] = [str(c) for c in collections]
    if out:
        with _writing(f"report {out}"):
            atomic_write_text(out, json.dumps(report, indent=1, default=str))
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
        _fail(str(exc), 1)
    for suffix in (".json", ".md"):
        _output(Path(f"{out}{suffix}"), "tables output")
    for value, option in ((queries, "--queries"), (k, "--k"), (trials, "--trials")):
        _positive(value, option)
    for c in collections:
        path = c.rsplit("=", 1)[0] if "=" in c and not Path(c).exists() else c
        if not Path(path).is_file():
            _fail(f"invalid collection: {path}: no such file", 1)
    try:
        with err_console.status("analysing") as status:
            rep = cp.analyse_files(collections, out, dtypes=tuple(dtypes.split(",")), queries=queries, k=k,
                                   trials=trials, models=models.split(",") if models else None,
                                   hardware=hardware.split(",") if hardware else None,
                                   progress=lambda s: status.update(s))
    except ValueError as exc:
        _fail(str(exc), 1)
    except OSError as exc:
        _fail(f"cannot write {out}.json / {out}.md: {exc.strerror or exc}", 1)
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
    """HSPI-BI: search border inputs whose top-1 differs between two EQCs. LLMs need the models
    extra: pip install 'hspi_kernels[models]'."""
    _model_spec(model)
    try:
        eqc_a, eqc_b = meqc.parse(a), meqc.parse(b)
    except ValueError as exc:
        _fail(str(exc), 2)
    for value, option in ((budget, "--budget"), (length, "--length")):
        _positive(value, option)
    runner = mc.Runner(model, seed=seed, device=device)
    with (err_console if as_json else console).status("searching border inputs"):
        res = hspi_bi.border_search(runner, eqc_a, eqc_b, budget=budget, length=length, seed=seed)
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
    for value, option in ((k, "--k"), (queries, "--queries")):
        _positive(value, option)
    try:
        observed_collection = mc.load(observed)
    except (ValueError, OSError) as exc:
        _fail(f"invalid collection: {exc}", 1)
    results = matching.identify_runs(observed_collection, _load_collections(ref), blackbox_view=blackbox, k=k,
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
    n: int = typer.Option(4096, "--n", help=f"number of terms (K for matmul), {reveal_targets.MIN_TERMS} to 2^20"),
    replay_count: int = typer.Option(10_000, "--replay", help="random inputs for the bit-exact replay (>= 1)"),
    rows: int = typer.Option(8, "--m", help="torch.matmul.cuda: M of [M,K]x[K,N]"),
    cols: int = typer.Option(4096, "--cols", help="torch.matmul.cuda: N of [M,K]x[K,N]"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Reveal the summation order of an op (FPRev masking), as a plan replayed bit for bit.
    torch.matmul.cuda (cuBLAS bf16): the split-K family confirmed by masking (K chunking, split-K
    factor, part bounds, combine) and the op's output digest on seeded inputs."""
    if replay_count < 1:
        _fail(f"--replay must be >= 1 (a plan is reported only after its replay), got {replay_count}", 2)
    try:
        t = reveal_targets.get_target(target, n, rows, cols)
    except ValueError as exc:
        _fail(str(exc), 2)
    except RuntimeError as exc:  # a GPU target on a machine without one
        _fail(str(exc), 1)
    except ImportError as exc:
        _fail(f"{target} needs torch, which is not importable ({exc})", 1)
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


CARD_GPU_PATHS = ("mma.sync", "wgmma", "triton", "cublas")
CARD_FORMATS = ("bf16", "fp16", "tf32", "e4m3", "e5m2")
CARD_OUT_FORMATS = ("fp32", "fp16")
CARD_MIN_VERIFY = 100


@app.command(help="Tensor-core numerics card: block-model parameters from feature tests, closed-loop verified.\n\n"
             "Presets for --path emulated:<preset>: " + ", ".join(sorted(TC.PRESETS)) + "; AMD MFMA: "
             + ", ".join(sorted(AMD.AMD_PRESETS)) + "; AMD candidate models: " + ", ".join(sorted(AMD.AMD_CANDIDATES)))
def card(
    path: str = typer.Option("emulated:sm_90.mma/bf16->fp32", "--path",
                             help="GPU: " + " | ".join(CARD_GPU_PATHS) + "; anywhere: emulated:<preset> "
                             "(the presets are listed above)"),
    fmt: str = typer.Option("bf16", "--format", help="input format (GPU paths): " + " | ".join(CARD_FORMATS)),
    out_format: str = typer.Option("fp32", "--out-format", help="output/accumulator format (GPU mma.sync/wgmma): "
                                   + " | ".join(CARD_OUT_FORMATS)),
    n_verify: int = typer.Option(100_000, "--verify", help=f"blocks in the final verification (>= {CARD_MIN_VERIFY})"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    if n_verify < CARD_MIN_VERIFY:
        _fail(f"--verify must be >= {CARD_MIN_VERIFY} blocks, got {n_verify}", 2)
    if fmt not in CARD_FORMATS:  # checked for every path: a typo is never silently ignored
        _fail(f"unknown --format {fmt!r}: expected one of {', '.join(CARD_FORMATS)}", 2)
    if out_format not in CARD_OUT_FORMATS:
        _fail(f"unknown --out-format {out_format!r}: expected one of {', '.join(CARD_OUT_FORMATS)}", 2)
    if path.startswith("emulated:"):
        name = path.split(":", 1)[1]
        if name in TC.PRESETS:
            unit = C.emulated_unit(TC.PRESETS[name])
        elif name in AMD.AMD_PRESETS or name in AMD.AMD_CANDIDATES:  # fitted by the card's AMD families
            unit = C.amd_unit(AMD.AMD_PRESETS.get(name) or AMD.AMD_CANDIDATES[name])
        else:
            _fail(f"unknown preset {name!r}; known: "
                  f"{', '.join(sorted(TC.PRESETS) + sorted(AMD.AMD_PRESETS) + sorted(AMD.AMD_CANDIDATES))}", 2)
    else:
        if path not in CARD_GPU_PATHS:
            _fail(f"unknown --path {path!r}: expected one of {', '.join(CARD_GPU_PATHS)} (GPU) or emulated:<preset>", 2)
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            _fail(f"--path {path} needs a CUDA GPU (none visible); use --path emulated:<preset> here, "
                  f"or python -m hspi_kernels.reveal.gpu OUT_DIR on the GPU", 1)
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
    row_cap_mb: float = typer.Option(1.0, "--row-cap-mb",
                                     help="arrays above this size keep their leading rows only (MiB); raise it "
                                          "to re-execute large ops such as lm_head whole"),
    inject: Optional[list[str]] = typer.Option(None, "--inject", help="KEY=PLAN: compute that GEMM by a plan (tests, demos)"),
    profile: bool = typer.Option(True, "--profile/--no-profile", help="extra pass for device kernel names"),
    out: Path = typer.Option(Path("trace.npz"), "--out", "-o"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Record one forward pass op by op (digests, kept inputs, kernel names). Needs the models
    extra: pip install 'hspi_kernels[models]'."""
    keys = list(keep_key or [])
    _model_spec(model)
    if keep not in ("auto", "all", "gemm"):
        _fail(f"--keep must be auto, all or gemm, got {keep!r}", 2)
    for value, option in ((batch, "--batch"), (length, "--length")):
        _positive(value, option)
    if max_mb is not None and not max_mb > 0:
        _fail(f"--max-mb must be > 0, got {max_mb}", 2)
    if not row_cap_mb > 0:
        _fail(f"--row-cap-mb must be > 0, got {row_cap_mb}", 2)
    out = _output(out, "trace")
    try:
        meqc.EQC(dtype=dtype, attn=attn, gemm=gemm, batch=batch)
        inject_plans = T.parse_inject(inject or [])
    except (OSError, ValueError) as exc:
        _fail(str(exc), 2)
    try:
        reference = T.load(keep_diverging) if keep_diverging is not None else None
    except (OSError, ValueError) as exc:
        _fail(f"--keep-diverging: {exc}", 1)
    try:
        tr = T.run_model(model, dtype=dtype, batch=batch, length=length, seed=seed, device=device, attn=attn,
                         gemm=gemm, threads=threads, keep=keep, keep_layers=keep_layers, keep_keys=keys,
                         max_bytes=None if max_mb is None else int(max_mb * (1 << 20)),
                         row_cap_bytes=int(row_cap_mb * (1 << 20)), inject=inject_plans, profile=profile, reference=reference)
    except (ValueError, OSError) as exc:
        _fail(str(exc), 2)
    with _writing(f"trace {out}"):
        tr.save(out)
    summary = {"out": str(out), "label": tr.meta["label"], "ops": len(tr.ops), "stored_bytes": tr.meta["stored_bytes"],
               "file_bytes": out.stat().st_size, "logits_digest": tr.meta["logits_digest"],
               "kernel_note": tr.meta["kernel_note"], "seconds": tr.meta["seconds"]}
    if as_json:
        _print_json(summary)
    else:
        console.print(f"{summary['label']}: {summary['ops']} ops, {summary['file_bytes'] / 2**20:.2f} MiB -> {out}")


def _load_traces(a: Path, b: Path, row: int = 0):
    """Both traces (exit 1 when one cannot be read), checked to be one model and prompt (exit 2).
    A batch-1 trace against a batch-B trace: row ``row`` of the batch (trace.batch.row_trace)."""
    try:
        ta, tb = T.load(a), T.load(b)
    except (OSError, ValueError) as exc:
        _fail(f"invalid trace: {exc}", 1)
    try:
        na, nb = (int((t.meta.get("run") or {}).get("batch", 0)) for t in (ta, tb))
        if na != nb and 1 in (na, nb):
            if na == 1:
                tb = TB.row_trace(tb, ta, row)
            else:
                ta = TB.row_trace(ta, tb, row)
            err_console.print(f"batch {na} vs {nb}: comparing row {row} of the batch-{max(na, nb)} trace "
                              "(its batch kernels re-run with the other side's row in place)")
        T.check_pair(ta, tb)
    except ValueError as exc:
        _fail(f"{exc}", 2)
    return ta, tb


def _write_trace_outputs(what: str, d: dict, explanation: dict | None, record: dict, plot: Optional[Path],
                         html: Optional[Path], out: Optional[Path]) -> None:
    """The --plot / --html / --out files of `trace diff` and `trace explain` (checked beforehand by
    :func:`_trace_outputs`), each written atomically; ``record`` is what --out holds."""
    with _writing(what):
        if plot is not None:
            T.plot_propagation(d, plot)
        if html is not None:
            T.html_view(d, plot, explanation, html)
        if out is not None:
            atomic_write_text(out, json.dumps(record, indent=1, default=str))


def _trace_outputs(plot: Optional[Path], html: Optional[Path], out: Optional[Path]):
    """--plot / --html / --out checked before the traces are read (matplotlib for --plot)."""
    if plot is not None:
        _need("matplotlib", "--plot")
    return tuple(None if p is None else _output(p, kind) for p, kind in
                 ((plot, "--plot"), (html, "--html"), (out, "--out")))


@trace_app.command("diff")
def trace_diff(
    a: Path = typer.Argument(..., help="trace A (.npz)"),
    b: Path = typer.Argument(..., help="trace B (.npz)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="propagation PNG"),
    html: Optional[Path] = typer.Option(None, "--html", help="single-file HTML view"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the diff JSON here"),
    row: int = typer.Option(0, "--row", help="batch row compared when one trace is batch 1 and the other is not"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """First op whose output differs while its inputs are equal; per-layer ULP propagation."""
    plot, html, out = _trace_outputs(plot, html, out)
    ta, tb = _load_traces(a, b, row)
    d = T.diff(ta, tb)
    _write_trace_outputs("the diff outputs", d, None, d, plot, html, out)
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


@trace_app.command("tp")
def trace_tp(
    model: str = typer.Option("tiny-llama", "--model", "-m", help="zoo llama (row/column-parallel sharding)"),
    degree: int = typer.Option(2, "--degree", help="the TP degree compared with TP 1 (2..8)"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (explained by the plan) or bf16 (divergence only)"),
    seed: int = typer.Option(0, "--seed"),
    length: int = typer.Option(8, "--length", help="tokens of the traced prompt"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON record of the trace"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """TP 1 vs TP N of one model (gloo ranks on the CPU): the first op whose output bits differ
    and its explanation by the plan (per-rank partial GEMMs + the all-reduce order revealed on the
    group, N/N on the op's outputs), with the negative controls that must not reproduce it."""
    if not 2 <= degree <= 8:
        _fail(f"--degree must be in 2..8, got {degree}", 2)
    if dtype not in ("fp32", "bf16"):
        _fail(f"--dtype must be fp32 or bf16, got {dtype!r}", 2)
    if not 1 <= length <= 4096:
        _fail(f"--length must be in 1..4096, got {length}", 2)
    _need("transformers", "hspi trace tp")
    from hspi_kernels.models import zoo

    try:
        spec = zoo.get_spec(model)
    except (KeyError, ValueError) as exc:
        _fail(f"--model: {exc}", 2)
    if spec.arch != "llama" or "vocab_size" not in spec.config:
        _fail(f"--model {model}: the TP sharding is written for the zoo's llama configs "
              f"({', '.join(n for n, s_ in zoo.SPECS.items() if s_.arch == 'llama')}), not {spec.arch}", 2)
    if out is not None:
        out = _output(out, "TP trace record")
    import numpy as np

    from hspi_kernels.parallel import tp as tp_mod
    from hspi_kernels.parallel.group import WorkerError

    tokens = np.random.default_rng(seed).integers(3, int(spec.config["vocab_size"]), size=(1, length))
    try:
        with tp_mod.TPSession(1, spec.name, seed, dtype) as s1, tp_mod.TPSession(degree, spec.name, seed, dtype) as sw:
            tr = tp_mod.trace_tp_pair(s1, sw, tokens)
    except WorkerError as exc:
        _fail(f"hspi trace tp: {str(exc).splitlines()[0]}", 1)
    rec = {"model": spec.name, "dtype": dtype, "seed": seed, "degrees": [1, degree], "length": length, **tr}
    if out is not None:
        with _writing(f"TP trace record {out}"):
            atomic_write_json(out, rec)
    if as_json:
        _print_json(rec)
        return
    first = tr["first_divergence"]
    if first["op"] is None:
        console.print(f"TP 1 vs TP {degree}: every traced op bit-identical ({len(first['ops_equal'])} ops)")
        return
    console.print(f"TP 1 vs TP {degree} ({spec.name}, {dtype}): first diverging op [bold]{first['op']}[/bold] "
                  f"({first['kind']}, {first['differing']}/{first['total']} outputs differ; "
                  f"{len(first['ops_equal_before'])} ops equal before it)")
    if "emulation_torch_partials" in tr:
        emu, wrong = tr["emulation_torch_partials"], tr["emulation_wrong_combine"]
        table = Table(title="explanation by the plan")
        for col in ("model of the op", "partials", "outputs"):
            table.add_column(col)
        table.add_row("rank partial GEMMs + all-reduce order " + " ".join(tr["allreduce_order"]),
                      emu["partial_match"], emu["combine_match"])
        table.add_row(f"control: {tr['negative_control_combine']}", wrong["partial_match"], wrong["combine_match"])
        table.add_row("control: TP 1's unsplit GEMM", "-", tr["negative_control_unsplit_gemm"])
        console.print(table)
    verdict = "explained by the plan" if tr.get("explained") else f"not explained: {tr.get('why_not', 'see the record')}"
    console.print(verdict + (f"; wrote {out}" if out is not None else ""))
    if not tr.get("explained"):
        raise typer.Exit(1)


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
    row: int = typer.Option(0, "--row", help="batch row compared when one trace is batch 1 and the other is not"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay the origin ops' inputs under candidate plans: which plan gives each platform's bits."""
    for value, option in ((max_ops, "--max-ops"), (max_outputs, "--max-outputs")):
        _positive(value, option)
    plot, html, out = _trace_outputs(plot, html, out)
    for path in reveal or []:
        if not Path(path).is_file():
            _fail(f"--reveal {path}: no such file", 1)
    ta, tb = _load_traces(a, b, row)
    d = T.diff(ta, tb)
    try:
        x = C_map.explain_with_map(ta, tb, d, revealed_paths=reveal or [], max_ops=max_ops,
                                   max_outputs=max_outputs, keys=key or [])
    except (ValueError, KeyError) as exc:
        _fail(f"cannot explain: {exc}", 1)
    _write_trace_outputs("the explanation outputs", d, x, x, plot, html, out)
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
        if x.get("explained_regions"):
            console.print("[green]explained:[/green] " + x["explained_regions"], highlight=False)
        if x["unexplained"]:
            console.print("[yellow]unexplained:[/yellow] " + "; ".join(x["unexplained"]))
    if (not x["ops"] and not x.get("explained_regions")) or x["unexplained"]:
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
    except ValueError as exc:  # unknown name, scale, unwritable --out: all before any work
        _fail(str(exc), 2)
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


@app.command(help="Kernel cost (needs a CUDA GPU): each kernel family's time against its baseline (cuBLAS, "
             "torch.sum, the fastest SDPA backend) under two clocks (device: CUDA events, L2 flushed; host: "
             "back-to-back calls from Python) and against this GPU's roofline, in alternating rounds of one run, "
             "plus the Triton GEMM geomean over the decode and square shapes.\n\nCases: "
             + ", ".join(kbench.case_names()))
def bench(
    only: Optional[list[str]] = typer.Option(None, "--only", help="only cases whose name or family contains "
                                             "this (repeatable); see the case list above"),
    rounds: int = typer.Option(3, "--rounds", help="alternating rounds (ours, baseline, ours, ...) per case, >= 1"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="bar chart (PNG): ratio to baseline and roofline"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the JSON record (hspi-bench/1) here"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON record"),
) -> None:
    """``kernels.bench.run`` formatted: a table, the geomean line, --json / --out / --plot."""
    _positive(rounds, "--rounds")
    try:
        kbench.select(only)
    except ValueError as exc:
        _fail(str(exc), 2)
    if plot is not None:
        _need("matplotlib", "--plot")
        plot = _output(plot, "--plot")
    if out is not None:
        out = _output(out, "bench record")
    where = err_console if as_json else console
    try:
        with where.status("bench") as status:
            record = kbench.run(only, rounds=rounds, progress=lambda what: status.update(f"bench: {what}"))
    except kbench.BenchUnavailable as exc:
        _fail(str(exc), 1)
    if out is not None:
        with _writing(f"bench record {out}"):
            atomic_write_text(out, json.dumps(record, indent=1, default=str) + "\n")
    if plot is not None:
        try:
            with _writing(f"plot {plot}"):
                kbench.plot(record, plot)
        except ValueError as exc:
            _error(f"--plot: {exc}")
    if as_json:
        _print_json(record)
    else:
        console.print(bench_table(record))
        console.print(bench_geomean_line(record["summary"]))
    if record["summary"]["failed"]:
        raise typer.Exit(1)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}x"


def bench_table(record: dict) -> Table:
    """`hspi bench`'s table: per case the device and host times and ratios, and the roofline."""
    table = Table(title=f"hspi bench — {record.get('gpu')} ({record.get('rounds')} rounds)")
    table.add_column("case", overflow="fold")
    for col in ("ms (device)", "x baseline (device)", "ms (host)", "x baseline (host)", "roofline"):
        table.add_column(col, justify="right", overflow="fold")
    for r in record["cases"]:
        if r["status"] != "ok":
            table.add_row(escape(r["name"]), f"[dim]{r['status']}[/dim]", escape(r.get("reason") or r.get("error", "")),
                          "", "", "")
            continue
        roof = r.get("roofline")
        table.add_row(escape(r["name"]), f"{r['device']['ms']:.4f}", _ratio(r["device"]["ratio"]),
                      f"{r['host']['ms']:.4f}", _ratio(r["host"]["ratio"]), "-" if roof is None else f"{roof:.0%}")
    return table


def bench_geomean_line(summary: dict) -> str:
    shapes = summary.get("triton_gemm_geomean_shapes") or []
    head = (f"{summary['cases']} cases: {summary['ok']} ok, {summary['skipped']} skipped, {summary['failed']} failed. ")
    if not shapes:
        return head + "Triton GEMM geomean vs cuBLAS: no GEMM case ran"
    return head + (f"Triton GEMM geomean vs cuBLAS over {len(shapes)} shapes: host {_ratio(summary['triton_gemm_geomean_host'])}, "
                   f"device {_ratio(summary['triton_gemm_geomean_device'])}")


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
