"""A self-contained HTML report over several fingerprints (``hspi report``).

One file, no external resources: figures are matplotlib PNGs inlined as base64 ``data:`` URIs,
styles are inline. Sections:

1. platforms (label, created, torch / CUDA / GPU, probe counts);
2. platform × platform agreement (fraction of comparable deterministic probes with equal digests)
   and the per-probe agreement table (equal letters = bit-identical outputs);
3. ULP distance from the fp64 reference per probe (log2 histograms from ``features.ulp_vs_fp64``);
4. fraction-bit frequencies per probe (``features.fraction_bit_frequency``);
5. cross-platform ULP distances of the sampled outputs where digests differ.
"""

from __future__ import annotations

import base64
import html
import io
import string
from pathlib import Path
from typing import Any

import numpy as np

from hspi_kernels.identify import Reference, compare_records, record_role
from hspi_kernels.platform.files import atomic_write_text

__all__ = ["write_report", "render"]

PANELS_PER_FIGURE = 12


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def _probe_ids(refs: list[Reference]) -> list[str]:
    ids: list[str] = []
    for r in refs:
        for rec in r.fingerprint["probes"]:
            if rec["id"] not in ids:
                ids.append(rec["id"])
    return ids


def _records(refs: list[Reference]) -> list[dict[str, dict]]:
    return [{rec["id"]: rec for rec in r.fingerprint["probes"]} for r in refs]


def _agreement_matrix(refs, recs) -> np.ndarray:
    n = len(refs)
    m = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            verdicts = [compare_records(recs[i].get(pid), recs[j].get(pid))["verdict"] for pid in recs[i]]
            agree, differ = verdicts.count("agrees"), verdicts.count("differs")
            if agree + differ:
                m[i, j] = agree / (agree + differ)
    return m


def _digest_classes(pid: str, recs) -> list[str]:
    """Per platform: a letter per distinct digest (same letter = same bits), or a status mark."""
    letters: dict[str, str] = {}
    out = []
    for r in recs:
        rec = r.get(pid)
        if rec is None:
            out.append("")
        elif rec["status"] != "ok":
            out.append(rec["status"])
        elif not rec.get("deterministic"):
            out.append("nondet.")
        else:
            d = rec["digest"]
            if d not in letters:
                letters[d] = string.ascii_uppercase[len(letters) % 26]
            out.append(letters[d])
    return out


_CLASS_COLOURS = ["#9ed99e", "#f4a6a6", "#a6c8f4", "#f4d8a6", "#d8a6f4", "#a6f4e9"]


def _cell(value: str) -> str:
    if len(value) == 1 and value.isupper():
        colour = _CLASS_COLOURS[(ord(value) - 65) % len(_CLASS_COLOURS)]
        return f'<td style="background:{colour};text-align:center">{value}</td>'
    return f'<td style="color:#888;text-align:center">{html.escape(value)}</td>'


def _small_multiples(panels: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], xlabel: str,
                     ylabel: str, kind: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uris = []
    for start in range(0, len(panels), PANELS_PER_FIGURE):
        chunk = panels[start:start + PANELS_PER_FIGURE]
        cols = 3
        rows = -(-len(chunk) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        for ax, (title, series) in zip(axes.flat, chunk):
            for label, x, y in series:
                if kind == "step":
                    ax.step(x, y, where="mid", label=label)
                else:
                    ax.plot(x, y, marker=".", label=label)
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.tick_params(labelsize=6)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", fontsize=7, ncol=min(4, len(labels)))
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        uris.append(_png(fig))
    return uris


def _log2_axis(nbins: int) -> np.ndarray:
    w = (nbins - 1) // 2
    k = np.arange(nbins) - w
    return np.sign(k) * np.where(k == 0, 0, np.abs(k))  # ±k: |d| in [2^(k-1), 2^k - 1]


def render(refs: list[Reference], progress=None) -> tuple[str, dict[str, Any]]:
    """(HTML text, summary) for the fingerprints ``refs``."""
    if not refs:
        raise ValueError("report: no fingerprints given")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = _records(refs)
    ids = _probe_ids(refs)
    names = [r.id for r in refs]
    step = progress or (lambda what: None)
    parts: list[str] = []
    figures = 0

    # 1. platforms
    rows = []
    for r in refs:
        p = r.fingerprint["platform"]
        torch = p.get("torch") or {}
        gpus = ", ".join(g.get("name", "?") for g in torch.get("gpus") or []) or "none"
        probes = r.fingerprint["probes"]
        ok = sum(1 for x in probes if x["status"] == "ok")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r.id, r.label, r.fingerprint["created"], torch.get("version"), torch.get("cuda_runtime"), gpus,
            p.get("cublas"), f"{ok}/{len(probes)}")) + "</tr>")
    parts.append("<h2>Platforms</h2><table><tr><th>id</th><th>label</th><th>created</th><th>torch</th>"
                 "<th>CUDA</th><th>GPUs</th><th>cuBLAS</th><th>probes ok</th></tr>" + "".join(rows) + "</table>")
    step("platforms")

    # 2. agreement
    m = _agreement_matrix(refs, recs)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(refs), 0.8 + 0.7 * len(refs)))
    im = ax.imshow(np.nan_to_num(m, nan=-0.1), vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(refs)), names, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(refs)), names, fontsize=7)
    for i in range(len(refs)):
        for j in range(len(refs)):
            ax.text(j, i, "–" if np.isnan(m[i, j]) else f"{m[i, j]:.0%}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_title("fraction of comparable probes with identical bits", fontsize=8)
    figures += 1
    parts.append("<h2>Agreement between platforms</h2>" + _img(_png(fig), "agreement matrix"))
    table = ["<table><tr><th>probe</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
             + "<th>measures</th></tr>"]
    for pid in ids:
        classes = _digest_classes(pid, recs)
        measures = next((r[pid].get("measures", "") for r in recs if pid in r), "")
        role = next((record_role(r[pid]) for r in recs if pid in r), "fingerprint")
        mark = " (control)" if role == "control" else ""
        table.append(f"<tr><td><code>{html.escape(pid)}</code>{mark}</td>" + "".join(_cell(c) for c in classes)
                     + f"<td>{html.escape(measures)}</td></tr>")
    table.append("</table>")
    parts.append("<h3>Per-probe agreement (equal letters: bit-identical outputs)</h3>" + "".join(table))
    step("agreement")

    # 3. ULP histograms vs fp64
    panels = []
    for pid in ids:
        series = []
        for name, r in zip(names, recs):
            hist = ((r.get(pid) or {}).get("features") or {}).get("ulp_vs_fp64", {}).get("histogram")
            if hist and sum(hist["counts"]):
                counts = np.asarray(hist["counts"], float)
                series.append((name, _log2_axis(len(counts)), counts / counts.sum()))
        if series:
            panels.append((pid, series))
    uris = _small_multiples(panels, "signed log2 ULP bin (0 = exact)", "fraction", "step") if panels else []
    figures += len(uris)
    parts.append("<h2>ULP distance from the correctly rounded fp64 result</h2>"
                 "<p>Bin ±k holds distances 2^(k-1) ≤ |d| ≤ 2^k − 1 in units of the output format.</p>"
                 + "".join(_img(u, "ULP histograms") for u in uris) + ("" if uris else "<p>no data</p>"))
    step("ulp histograms")

    # 4. fraction-bit frequencies
    panels = []
    for pid in ids:
        series = []
        for name, r in zip(names, recs):
            freq = ((r.get(pid) or {}).get("features") or {}).get("fraction_bit_frequency")
            if freq:
                series.append((name, np.arange(len(freq)), np.asarray(freq)))
        if series:
            panels.append((pid, series))
    uris = _small_multiples(panels, "fraction bit (0 = least significant)", "P(bit = 1)", "line") if panels else []
    figures += len(uris)
    parts.append("<h2>Fraction-bit frequencies</h2>" + "".join(_img(u, "fraction-bit frequencies") for u in uris)
                 + ("" if uris else "<p>no data</p>"))
    step("fraction bits")

    # 5. cross-platform ULP distances on the sampled outputs
    panels, rows = [], []
    for pid in ids:
        series = []
        for i in range(len(refs)):
            for j in range(i + 1, len(refs)):
                if pid not in recs[i] and pid not in recs[j]:
                    continue  # a probe only another reference ran (e.g. the H200's stack probes)
                row = compare_records(recs[i].get(pid), recs[j].get(pid))
                if row["verdict"] == "differs" and row["ulp"]:
                    u = row["ulp"]
                    counts = np.asarray(u["histogram"], float)
                    series.append((f"{names[i]} vs {names[j]}", _log2_axis(len(counts)), counts / counts.sum()))
                    rows.append(f"<tr><td><code>{html.escape(pid)}</code></td><td>{html.escape(names[i])}</td>"
                                f"<td>{html.escape(names[j])}</td><td>{u['equal_fraction']:.0%}</td>"
                                f"<td>{u['max_abs']}</td><td>{u['mean_abs']:g}</td>"
                                f"<td>{html.escape(row['why'])}</td></tr>")
        if series:
            panels.append((pid, series))
    uris = _small_multiples(panels, "signed log2 ULP bin (A − B)", "fraction", "step") if panels else []
    figures += len(uris)
    parts.append("<h2>Where platforms differ: sampled ULP distances</h2>"
                 + ("<table><tr><th>probe</th><th>A</th><th>B</th><th>equal</th><th>max |ULP|</th>"
                    "<th>mean |ULP|</th><th>why</th></tr>" + "".join(rows) + "</table>" if rows
                    else "<p>no differing probe with samples on both sides</p>")
                 + "".join(_img(u, "cross-platform ULP histograms") for u in uris))
    step("differences")

    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")
    body = "\n".join(parts)
    doc = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>hspi report</title>"
           f"<style>{style}</style></head><body><h1>hspi fingerprint report</h1>"
           f"<p>{len(refs)} platforms, {len(ids)} probes.</p>{body}</body></html>\n")
    return doc, {"platforms": len(refs), "probes": len(ids), "figures": figures}


def write_report(refs: list[Reference], out: str | Path, console=None) -> dict[str, Any]:
    """Render the report with a progress bar and write it; returns a JSON-able summary."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("report", total=5)
        doc, summary = render(refs, lambda what: progress.update(task, advance=1, description=what))
    out = atomic_write_text(out, doc)
    summary.update(out=str(out), bytes=out.stat().st_size)
    return summary
