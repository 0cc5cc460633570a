"""The CPU record of sampled-text identification (``docs/results/blackbox/cpu_power.json`` and
``.md``): power curves per pair and temperature, calibration, generated probes vs random prompts,
deterministic-mode detection. Every number in the record comes from this run::

    python -m hspi_kernels.models.blackbox_records docs/results/blackbox

The H200 curves of issue 21 are not measured here (this is a CPU machine, a tiny seeded model).
"""

from __future__ import annotations

import platform as _platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hspi_kernels.platform.files import atomic_write_json
from hspi_kernels.models import power, prompts, sampled

BASE = "fp32.torch.batched"
BUDGETS = [(1, 8), (1, 32), (2, 32), (4, 32), (8, 8), (8, 32)]


def _pair_record(plats, pair, temperature, trials, queries, tokens, budgets) -> dict[str, Any]:
    t0 = time.time()
    sim = power.simulate(pair, temperature, trials=trials, queries=queries, tokens=tokens,
                         platforms={p: plats[p] for p in pair})
    return {"pair": list(pair), "temperature": temperature, "top_p": 0.9, "trials_per_label": trials,
            "bits_differ_fraction": sim.bits_differ, "calibration": power.calibration(sim, 0.05),
            "curve": power.curve(sim, [b for b in budgets if b[0] <= queries and b[1] <= tokens]),
            "seconds": round(time.time() - t0, 1)}


def _probe_record(plats, pair, temperature, trials, pool_size=512, budgets=((1, 1), (2, 1), (4, 1), (8, 1), (8, 8))):
    """Generated probes (top-scored pool prompts by the candidates' own replays) vs random
    held-out prompts, same budgets, same trial count."""
    pool = prompts.random_tokens(pool_size, 8, plats[pair[0]].vocab, seed=5000)
    scores = power.probe_scores(pair, pool, temperature, platforms={p: plats[p] for p in pair})
    order = np.argsort(-scores, kind="stable")
    qmax = max(b[0] for b in budgets)
    nmax = max(b[1] for b in budgets)
    probes = pool[order[:qmax]]
    out = {"pair": list(pair), "temperature": temperature, "pool": pool_size, "trials_per_label": trials,
           "probe_scores_top": [float(s) for s in scores[order[:qmax]]],
           "pool_prompts_whose_first_argmax_differs": int((scores > 0.5).sum()) if temperature == 0 else None}
    for kind, pr in (("generated", probes), ("random", None)):
        sim = power.simulate(pair, temperature, trials=trials, queries=qmax, tokens=nmax,
                             platforms={p: plats[p] for p in pair}, probes=pr, gen_seed=17)
        out[kind] = power.curve(sim, list(budgets))
    return out


def _deterministic_algorithms_check(plats) -> dict[str, Any]:
    """Does torch.use_deterministic_algorithms change the CPU bits of the replay?"""
    import torch

    pr = prompts.random_tokens(16, 8, plats[BASE].vocab, seed=77)
    tok = plats[BASE].generate(pr, 16, 0.7, seed=77)
    off = plats[BASE].replay(pr, tok)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        on = plats[BASE].replay(pr, tok)
    finally:
        torch.use_deterministic_algorithms(prev)
    n = int((off.view(np.uint32) != on.view(np.uint32)).sum())
    return {"logits_compared": int(off.size), "bits_differ": n,
            "note": "bits differ: a distinguishable mode" if n else "0 bits differ: on CPU the mode is output-indistinguishable from the default (no test can "
                    "tell it apart from outputs); on CUDA it changes kernels (not measured here)"}


def run(out_dir: str | Path, quick: bool = False) -> dict[str, Any]:
    import torch

    t0 = time.time()
    names = [BASE, "bf16.torch.batched", "fp32.torch.batched.ulp+1", "fp32.fixed.batched", "fp32.torch.rowwise"]
    plats = sampled.candidates(names)
    tr = 40 if quick else 100
    rec: dict[str, Any] = {
        "schema": "hspi-blackbox-cpu/1",
        "measured_on": {"machine": "CPU", "python": sys.version.split()[0], "torch": torch.__version__,
                        "platform": _platform.platform(), "threads": torch.get_num_threads()},
        "model": {"spec": sampled.tiny_spec().to_json(), "seed": 0},
        "sampler": "project sampler (sampled.py docstring): float64 softmax(logits/T), top-p 0.9, inverse CDF",
        "h200": "NOT MEASURED HERE: the H200 power curves of issue 21 need the GPU collections",
        "alpha": 0.05, "pairs": [], "probes": [], "deterministic_mode": {}}
    for pair, temps in (((BASE, "bf16.torch.batched"), (0.0, 0.7, 1.0)),
                        ((BASE, "fp32.torch.batched.ulp+1"), (0.0, 0.7)),
                        ((BASE, "fp32.fixed.batched"), (0.0, 0.7))):
        for t in temps:
            rec["pairs"].append(_pair_record(plats, pair, t, tr, 8, 32, BUDGETS))
            print(f"{pair} T={t}: {rec['pairs'][-1]['seconds']} s", flush=True)
    rw = _pair_record(plats, (BASE, "fp32.torch.rowwise"), 0.7, 12 if quick else 30, 2, 16, [(1, 16), (2, 16)])
    rec["deterministic_mode"] = {
        "rowwise_vs_batched": rw, "fixed_vs_torch": [p for p in rec["pairs"] if p["pair"][1] == "fp32.fixed.batched"],
        "use_deterministic_algorithms": _deterministic_algorithms_check(plats)}
    print(f"rowwise: {rw['seconds']} s", flush=True)
    for pair, t in (((BASE, "bf16.torch.batched"), 0.0), ((BASE, "fp32.fixed.batched"), 0.0),
                    ((BASE, "bf16.torch.batched"), 0.7)):
        rec["probes"].append(_probe_record(plats, pair, t, 20 if t == 0 else tr))
        print(f"probes {pair} T={t}", flush=True)
    rec["seconds"] = round(time.time() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cpu_power.json", rec, allow_nan=True)
    return rec


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "docs/results/blackbox", quick="--quick" in sys.argv)


def markdown(rec: dict[str, Any]) -> str:
    """The short markdown of a record (every number read from it)."""
    lines = ["# Black-box identification from sampled text: CPU record (issue 21)", "",
             f"**{rec['h200']}.** Everything below was measured on a CPU ({rec['measured_on']['platform']}, "
             f"torch {rec['measured_on']['torch']}) with a tiny seeded Llama ({rec['model']['spec']['name']}, "
             f"vocab 512), {rec['seconds']} s. Sampler: {rec['sampler']}. Level alpha = {rec['alpha']}.", "",
             "Tests: **LR** = exact likelihood-ratio test (per-step randomised PIT of the increment, Stouffer), "
             "H0 = the first stack; **rank** = randomised-PIT Kolmogorov-Smirnov goodness of fit of H0; "
             "**sync** = seed-synchronised agreement (seed exposed). Accuracy/AUC: truth drawn from the pair, "
             "LR decision sign(Lambda); controls: the same statistics with shuffled labels.", "",
             "## Calibration on identical platforms (truth = H0 stack)", "",
             "| pair | T | trials | budget (q x tokens) | LR rejections | rank | sync | 99.9 % interval | LR-CLT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in rec["pairs"]:
        c = p["calibration"]
        lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {c['trials']} | "
                     f"{c['queries']} x {c['tokens_per_query']} | {c['lr_rejections']} | {c['rank_rejections']} | "
                     f"{c['seed_sync_rejections']} | {c['interval']} | {c['lr_clt_rejections']} |")
    lines += ["", "## Power curves (held-out random prompts, fresh sampler seeds)", "",
              "| pair | T | bits differ | q x tokens | LR acc | LR AUC | LR power | rank power | sync acc | sync power "
              "| control acc | control AUC |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    pairs = list(rec["pairs"]) + [rec["deterministic_mode"]["rowwise_vs_batched"]]
    for p in pairs:
        for r in p["curve"]:
            lines.append(f"| {p['pair'][1]} | {p['temperature']} | {p['bits_differ_fraction']:.3f} | "
                         f"{r['queries']} x {r['tokens_per_query']} | {r['lr_accuracy']:.3f} | {r['lr_auc']:.3f} | "
                         f"{r['lr_power']:.3f} | {r['rank_power']:.3f} | {r['seed_sync_accuracy']:.3f} | "
                         f"{r['seed_sync_power']:.3f} | {r['control_shuffled_accuracy']:.3f} | "
                         f"{r['control_shuffled_auc']:.3f} |")
    lines += ["", "(H0 stack of every row: " + BASE + ".)", "", "## Generated probes vs random prompts (equal budget)", "",
              "| pair | T | kind | q x tokens | LR acc | LR power | sync acc | sync power |", "|---|---|---|---|---|---|---|---|"]
    for pr in rec["probes"]:
        for kind in ("generated", "random"):
            for r in pr[kind]:
                lines.append(f"| {pr['pair'][1]} | {pr['temperature']} | {kind} | {r['queries']} x "
                             f"{r['tokens_per_query']} | {r['lr_accuracy']:.3f} | {r['lr_power']:.3f} | "
                             f"{r['seed_sync_accuracy']:.3f} | {r['seed_sync_power']:.3f} |")
    d = rec["deterministic_mode"]["use_deterministic_algorithms"]
    lines += ["", "## Deterministic modes", "",
              "- row-by-row (batch-invariant serving, batch 1) vs batched decode: the rows above with "
              "`fp32.torch.rowwise`.",
              "- fixed-order linears (sequential-K fp32, batch-invariant) vs torch: the rows with `fp32.fixed.batched`.",
              f"- `torch.use_deterministic_algorithms(True)` on CPU: {d['bits_differ']} of {d['logits_compared']} "
              f"logits differ in bits. {d['note']}.", ""]
    return "\n".join(lines)
