"""Cross-platform tables (H100 vs H200, or any two+ platforms) from one or several collections.

Every number is computed on the same data for our methods and the paper's:

- **white-box** (ours): per pair of runs, the observation is the hidden run's *repeat* execution
  (``rep_digest_logits``) on the held-out prompts; a pair is identified when the observation
  matches its own reference on every queried prompt and differs from the other's on at least one.
  Acceptance: 100 % for every pair whose bits differ on the held-out prompts.
- **black-box** (ours): an OpenAI-style API view (top-k ids + fp32 log-probs as printed) of
  ``queries`` random held-out prompts, matched against each candidate's reference; *strict*
  accuracy scores the hardware/EQC label itself (a tie between bit-identical candidates earns
  1/|tie|, i.e. chance), so platforms whose outputs are bit-identical are reported at chance, not
  hidden by merging them.
- **HSPI-LD** (paper): LinearSVC on the 32 bits of the first ``d`` fp32 log-probs, train/test split
  by prompt (seed 0, half held out: the same held-out prompts as above), classes NOT merged;
  plus our ``native`` features; a labels-shuffled negative control.
- **HSPI-BI** (paper, top-1 only): border inputs = prompts whose greedy top-1 differs between the two
  candidates' reference runs (found on the training prompts, the verifier's own knowledge);
  queried up to ``queries`` times, the observed top-1 (repeat execution) decides by majority.
  ``top1_random`` is the same decision on random held-out prompts without any search.
- **SVM fit time** of a 6-class HSPI-LD problem (acceptance: <= 60 s).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Sequence

import numpy as np

from hspi_kernels.fingerprint import features
from hspi_kernels.models import collect as mc
from hspi_kernels.models import hspi_ld
from hspi_kernels.models.collect import RunView
from hspi_kernels.models.matching import api_view, observed
from hspi_kernels.platform.files import atomic_write_text

__all__ = ["split", "check_same_inputs", "report", "to_markdown", "analyse_files"]


def split(n: int, seed: int = 0, test_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) prompt indices: the same split as :func:`hspi_ld.classify` (seed, fraction)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def check_same_inputs(collections) -> dict[str, str]:
    """Per model, the digest of its prompt arrays; raises when two collections disagree (the
    platforms must have run the very same prompts for any comparison to mean anything)."""
    seen: dict[str, str] = {}
    for coll in collections:
        for model, meta in coll.meta["models"].items():
            arrays = coll.inputs(model)
            dig = "|".join(f"{k}:{features.digest(np.ascontiguousarray(v))}" for k, v in sorted(arrays.items()))
            dig = dig or "|".join(f"{k}:{v}" for k, v in sorted(meta.get("input_digests", {}).items()))
            if model in seen and seen[model] != dig:
                raise ValueError(f"{model}: {coll.source} ran different prompts than an earlier collection")
            seen[model] = dig
    return seen


# --------------------------------------------------------------------------------------------
# white-box
# --------------------------------------------------------------------------------------------
def whitebox_pairs(runs: Sequence[RunView], test: np.ndarray) -> dict[str, Any]:
    ref = {v.label: v.get("digest_logits")[test] for v in runs}
    obs = {v.label: observed(v, "digest_logits")[test] for v in runs}
    pairs = []
    for a, b in itertools.combinations([v.label for v in runs], 2):
        differ = ref[a] != ref[b]
        ok_a = bool(np.all(obs[a] == ref[a]) and np.any(obs[a] != ref[b]))
        ok_b = bool(np.all(obs[b] == ref[b]) and np.any(obs[b] != ref[a]))
        one_q = float(np.mean(np.concatenate([(obs[a] == ref[a]) & (obs[a] != ref[b]),
                                              (obs[b] == ref[b]) & (obs[b] != ref[a])])))
        pairs.append({"a": a, "b": b, "bits_differ": bool(differ.any()),
                      "frac_prompts_differing": round(float(differ.mean()), 4),
                      "acc_all_heldout": (ok_a + ok_b) / 2, "acc_1_query": round(one_q, 4)})
    differing = [p for p in pairs if p["bits_differ"]]
    return {"held_out_prompts": int(len(test)), "n_pairs": len(pairs), "n_pairs_bits_differ": len(differing),
            "n_pairs_100pct": int(sum(p["acc_all_heldout"] == 1.0 for p in differing)),
            "all_differing_pairs_100pct": all(p["acc_all_heldout"] == 1.0 for p in differing),
            "pairs": pairs}


# --------------------------------------------------------------------------------------------
# black-box (top-k API view) and HSPI-BI (top-1 only)
# --------------------------------------------------------------------------------------------
def blackbox_strict(cands: Sequence[RunView], pool: np.ndarray, queries: int = 32, k: int = 20,
                    decimals: int | None = None, trials: int = 200, seed: int = 0) -> dict[str, Any]:
    """Strict identification among ``cands`` from the top-k API view of ``queries`` prompts drawn
    from ``pool``; score = matches (ids and printed values equal), ties broken by the mean |Δ
    log-prob| over shared ids; a tie still left counts 1/|tie| when the truth is in it."""
    rng = np.random.default_rng(seed)
    refs = [api_view(v.get("topk_ids"), v.get("topk_logprobs"), k, decimals) for v in cands]
    per = {}
    q = min(queries, len(pool))
    for t, true in enumerate(cands):
        oid, oval = api_view(observed(true, "topk_ids"), observed(true, "topk_logprobs"), k, decimals)
        score = 0.0
        for _ in range(trials):
            p = rng.choice(pool, size=q, replace=False)
            keys = []
            for rid, rval in refs:
                same_ids = rid[p] == oid[p]
                match = np.all(same_ids, axis=1) & np.all(rval[p] == oval[p], axis=1)
                diff = np.abs(rval[p] - oval[p])[same_ids]
                keys.append((int(match.sum()), -float(diff.mean()) if diff.size else -np.inf))
            best = max(keys)
            tied = [i for i, kk in enumerate(keys) if kk == best]
            score += (1.0 / len(tied)) if t in tied else 0.0
        per[true.label] = score / trials
    return {"accuracy": float(np.mean(list(per.values()))), "chance": 1.0 / len(cands), "queries": q,
            "k": k, "decimals": decimals, "trials": trials, "per_candidate": per}


def top1_identification(cands: Sequence[RunView], pool: np.ndarray, queries: int = 32, trials: int = 200,
                        seed: int = 0) -> dict[str, Any]:
    """Majority vote on the greedy top-1 over ``queries`` prompts from ``pool`` (strict, ties 1/|tie|)."""
    rng = np.random.default_rng(seed)
    refs = [v.get("topk_ids")[:, 0] for v in cands]
    per = {}
    q = min(queries, len(pool))
    if q == 0:
        return {"accuracy": 1.0 / len(cands), "chance": 1.0 / len(cands), "queries": 0,
                "note": "no prompts to query: chance"}
    for t, true in enumerate(cands):
        obs = observed(true, "topk_ids")[:, 0]
        score = 0.0
        for _ in range(trials):
            p = rng.choice(pool, size=q, replace=False)
            m = [int(np.sum(r[p] == obs[p])) for r in refs]
            tied = [i for i, x in enumerate(m) if x == max(m)]
            score += (1.0 / len(tied)) if t in tied else 0.0
        per[true.label] = score / trials
    return {"accuracy": float(np.mean(list(per.values()))), "chance": 1.0 / len(cands), "queries": q,
            "per_candidate": per}


def hspi_bi(cands: Sequence[RunView], train: np.ndarray, test: np.ndarray, queries: int = 32,
            trials: int = 200) -> dict[str, Any]:
    """HSPI-BI on the collected prompts: border inputs searched among the training prompts (top-1
    differs between some two candidates' references), then queried; plus top-1 on random held-out."""
    top = np.stack([v.get("topk_ids")[train, 0] for v in cands])
    border = train[np.any(top != top[0], axis=0)]
    return {"pool": int(len(train)), "border_inputs": int(len(border)),
            "success_rate_per_query": round(len(border) / max(1, len(train)), 4),
            "queries_per_border_input": (len(train) / len(border)) if len(border) else None,
            "border": top1_identification(cands, border, queries, trials),
            "top1_random": top1_identification(cands, test, queries, trials)}


# --------------------------------------------------------------------------------------------
# HSPI-LD wrappers
# --------------------------------------------------------------------------------------------
def _ld_control(runs, rep, d, seeds=(0, 1, 2, 3, 4)) -> dict[str, Any]:
    """Labels-shuffled negative control, averaged over several seeds (must sit at chance)."""
    res = [_ld(runs, rep, d, shuffled=True, seed=s) for s in seeds]
    if any("skipped" in r for r in res):
        return res[0]
    return {"accuracy": float(np.mean([r["accuracy"] for r in res])), "chance": res[0]["chance"],
            "per_seed": [r["accuracy"] for r in res], "representation": rep, "shuffled": True}


def _ld(runs, rep, d, shuffled=False, seed=0) -> dict[str, Any]:
    try:
        r = hspi_ld.classify(runs, rep, d=d, merge_identical=False, shuffle_labels=shuffled, seed=seed)
    except ValueError as exc:
        return {"skipped": str(exc)}
    return {"accuracy": r.accuracy, "chance": r.chance, "classes": r.classes, "confusion": r.confusion,
            "fit_s": r.fit_s, "n_train": r.n_train, "n_test": r.n_test, "shuffled": shuffled}


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def report(runs: Sequence[RunView], *, dtypes: Sequence[str] = ("bf16", "fp16"), queries: int = 32, k: int = 20,
           d: int = 64, trials: int = 200, representations: Sequence[str] = ("paper", "native"),
           all_runs: bool = False, progress=None) -> dict[str, Any]:
    """All tables for every model in ``runs`` (runs of one or several collections)."""
    say = progress or (lambda s: None)
    out: dict[str, Any] = {"settings": {"queries": queries, "k": k, "d": d, "trials": trials,
                                        "dtypes": list(dtypes), "split": "by prompt, seed 0, half held out"},
                           "models": {}}
    for model in sorted({v.model for v in runs}):
        mruns = [v for v in runs if v.model == model]
        n = mruns[0].get("digest_logits").shape[0]
        if any(v.get("digest_logits").shape[0] != n for v in mruns):
            raise ValueError(f"{model}: runs have different prompt counts")
        train, test = split(n)
        hardware = sorted({v.hardware for v in mruns})
        by = {(v.hardware, v.eqc.name): v for v in mruns}
        eqcs = sorted({v.eqc.name for v in mruns})
        rep: dict[str, Any] = {"hardware": hardware, "n_runs": len(mruns), "n_prompts": int(n),
                               "held_out_prompts": int(len(test)),
                               "nondeterministic": [v.label for v in mruns if v.record.get("deterministic") is False],
                               "lattice": hspi_ld.lattice(mruns)}
        say(f"{model}: white-box pairs")
        rep["whitebox"] = whitebox_pairs(mruns, test)
        # ---- hardware pairs: the same EQC on two platforms ---------------------------------
        cross = []
        for name in eqcs:
            for ha, hb in itertools.combinations(hardware, 2):
                if (ha, name) not in by or (hb, name) not in by:
                    continue
                va, vb = by[(ha, name)], by[(hb, name)]
                say(f"{model}: {ha} vs {hb} {name}")
                frac = float(np.mean(va.get("digest_logits") != vb.get("digest_logits")))
                row = {"eqc": name, "a": va.label, "b": vb.label, "frac_prompts_bits_differ": round(frac, 4),
                       "bit_identical": frac == 0.0,
                       "frac_prompts_top1_differ": round(float(np.mean(va.get("topk_ids")[:, 0]
                                                                        != vb.get("topk_ids")[:, 0])), 4),
                       "blackbox": {str(q): blackbox_strict([va, vb], test, q, k, None, trials)["accuracy"]
                                    for q in sorted({1, 4, queries})},
                       "blackbox_decimals4": blackbox_strict([va, vb], test, queries, k, 4, trials)["accuracy"],
                       "hspi_bi": hspi_bi([va, vb], train, test, queries, trials),
                       "hspi_ld": {r: _ld([va, vb], r, d) for r in representations}}
                cross.append(row)
        rep["cross_hardware"] = cross
        # ---- hardware x dtype (4-class) per (attn, gemm, batch) -----------------------------
        four = []
        if len(hardware) >= 2 and len(dtypes) >= 2:
            others = sorted({(v.eqc.attn, v.eqc.gemm, v.eqc.batch, v.eqc.compile, v.eqc.quant) for v in mruns})
            for attn, gemm, batch, comp, quant in others:
                cands = [v for v in mruns if v.eqc.dtype in dtypes and (v.eqc.attn, v.eqc.gemm, v.eqc.batch,
                                                                       v.eqc.compile, v.eqc.quant)
                         == (attn, gemm, batch, comp, quant)]
                if len(cands) != len(hardware) * len(dtypes):
                    continue
                tag = f"{attn}.{gemm}.b{batch}" + (".compile" if comp else "") + ("" if quant == "none" else f".{quant}")
                say(f"{model}: hardware x dtype {tag}")
                four.append({"config": tag, "classes": [v.label for v in cands],
                             "blackbox": {str(q): blackbox_strict(cands, test, q, k, None, trials)["accuracy"]
                                          for q in sorted({1, 4, queries})},
                             "hspi_bi": hspi_bi(cands, train, test, queries, trials),
                             "hspi_ld": {r: _ld(cands, r, d) for r in representations},
                             "hspi_ld_shuffled": _ld_control(cands, "native", d),
                             "chance": 1.0 / len(cands)})
        rep["hardware_x_dtype"] = four
        # ---- SVM 6-class fit time and the all-runs problem ----------------------------------
        six_names = [e for e in (f"{dtypes[0]}.sdpa.torch.b1", f"{dtypes[-1]}.sdpa.torch.b1",
                                 f"{dtypes[0]}.sdpa.torch.b8", f"{dtypes[-1]}.sdpa.torch.b8",
                                 f"{dtypes[0]}.eager.torch.b1", f"{dtypes[-1]}.eager.torch.b1",
                                 f"{dtypes[0]}.sdpa.fixed.b1", f"{dtypes[-1]}.sdpa.fixed.b1") if e in eqcs]
        six = [by[(h, e)] for e in six_names for h in hardware if (h, e) in by][:6]
        if len(six) == 6:
            say(f"{model}: 6-class SVM")
            t0 = time.perf_counter()
            res6 = _ld(six, "paper", d)
            res6["wall_s"] = time.perf_counter() - t0
            rep["svm_6class"] = dict(res6, runs=[v.label for v in six], target_fit_s=60.0,
                                     fit_ok=res6.get("fit_s", 1e9) <= 60.0)
            rep["svm_6class_shuffled"] = _ld_control(six, "paper", d)
        if all_runs:  # one class per run (30+ classes: minutes on a small CPU, hence opt-in)
            say(f"{model}: HSPI-LD all runs")
            rep["hspi_ld_all"] = {r: _ld(mruns, r, d) for r in representations}
            rep["hspi_ld_all_shuffled"] = {"native": _ld_control(mruns, "native", d, seeds=(0, 1, 2))}
        out["models"][model] = rep
    return out


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _acc(r: dict[str, Any]) -> str:
    if not r or "skipped" in r:
        return "n/a"
    return f"{_pct(r['accuracy'])} (chance {_pct(r['chance'])})"


def to_markdown(rep: dict[str, Any], sources: Sequence[str] = (), platforms: Sequence[str] = ()) -> str:
    s = rep["settings"]
    lines = ["# Model-level cross-platform identification", "",
             f"Sources: {', '.join(sources) or '(in memory)'}", ""]
    for p in platforms:
        lines.append(f"* platform: {p}")
    lines += ["", f"Split {s['split']}; black-box = top-{s['k']} log-probs (fp32 as printed), "
              f"<= {s['queries']} queries, {s['trials']} trials per hidden platform, strict labels "
              "(a bit-identical pair scores chance); HSPI-LD = LinearSVC on the bits of the first "
              f"{s['d']} fp32 log-probs (paper) and our native features, classes not merged; "
              "HSPI-BI = top-1 only, border inputs searched among the training prompts.", ""]
    for model, m in rep["models"].items():
        wb = m["whitebox"]
        lines += [f"## {model}", "",
                  f"{m['n_runs']} runs on {', '.join(m['hardware'])}; {m['n_prompts']} prompts, "
                  f"{m['held_out_prompts']} held out; {len(m['lattice'])} bit-distinct classes; "
                  f"non-deterministic runs: {m['nondeterministic'] or 'none'}.", "",
                  "Bit-identical groups (one EQC class each; all other runs are classes of their own):", ""]
        lines += [f"* {' = '.join(g)}" for g in m["lattice"] if len(g) > 1] or ["* none"]
        lines += ["", "### White-box (ours): every pair of runs, held-out prompts", "",
                  "| pairs | pairs whose bits differ | of those at 100 % | min 1-query accuracy (differing pairs) |",
                  "|---|---|---|---|"]
        diff = [p for p in wb["pairs"] if p["bits_differ"]]
        min1 = min((p["acc_1_query"] for p in diff), default=None)
        lines += [f"| {wb['n_pairs']} | {wb['n_pairs_bits_differ']} | **{wb['n_pairs_100pct']}** | {_pct(min1)} |", ""]
        bad = [p for p in diff if p["acc_all_heldout"] < 1.0]
        if bad:
            lines += ["Pairs below 100 %: " + "; ".join(f"{p['a']} vs {p['b']}" for p in bad), ""]
        if m["cross_hardware"]:
            q = str(s["queries"])
            lines += ["### Same EQC on two platforms (the hardware axis)", "",
                      f"| EQC | bits differ (all prompts) | top-1 differs | white-box | black-box q=1 | "
                      f"black-box q={q} | q={q}, 4 decimals | HSPI-BI border (n found) | HSPI-BI top-1 random | "
                      "HSPI-LD paper | HSPI-LD native |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            wbp = {(p["a"], p["b"]): p for p in wb["pairs"]}
            for r in m["cross_hardware"]:
                p = wbp.get((r["a"], r["b"])) or wbp.get((r["b"], r["a"]))
                bi = r["hspi_bi"]
                lines.append(
                    f"| {r['eqc']} | {_pct(r['frac_prompts_bits_differ'])} | {_pct(r['frac_prompts_top1_differ'])} | "
                    f"{(_pct(p['acc_all_heldout']) if p['bits_differ'] else 'identical') if p else '–'} | "
                    f"{_pct(r['blackbox']['1'])} | "
                    f"**{_pct(r['blackbox'][q])}** | {_pct(r['blackbox_decimals4'])} | "
                    f"{_pct(bi['border']['accuracy'])} ({bi['border_inputs']}/{bi['pool']}) | "
                    f"{_pct(bi['top1_random']['accuracy'])} | {_acc(r['hspi_ld'].get('paper'))} | "
                    f"{_acc(r['hspi_ld'].get('native'))} |")
            ident = [r["eqc"] for r in m["cross_hardware"] if r["bit_identical"]]
            lines += ["", f"Bit-identical across platforms (indistinguishable by construction; every method "
                      f"must sit at chance): {', '.join(ident) or 'none'}.", ""]
        if m["hardware_x_dtype"]:
            q = str(s["queries"])
            lines += [f"### Hardware x dtype ({len(m['hardware'])}x{len(s['dtypes'])}-class)", "",
                      f"| config | classes | chance | black-box q=1 | black-box q={q} | HSPI-BI border | "
                      "HSPI-BI top-1 random | HSPI-LD paper | HSPI-LD native | HSPI-LD native, labels shuffled |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in m["hardware_x_dtype"]:
                lines.append(
                    f"| {r['config']} | {len(r['classes'])} | {_pct(r['chance'])} | {_pct(r['blackbox']['1'])} | "
                    f"**{_pct(r['blackbox'][q])}** | {_pct(r['hspi_bi']['border']['accuracy'])} | "
                    f"{_pct(r['hspi_bi']['top1_random']['accuracy'])} | {_acc(r['hspi_ld'].get('paper'))} | "
                    f"{_acc(r['hspi_ld'].get('native'))} | {_acc(r['hspi_ld_shuffled'])} |")
            lines.append("")
        if "svm_6class" in m:
            r6, sh = m["svm_6class"], m["svm_6class_shuffled"]
            lines += ["### HSPI-LD 6-class fit", "",
                      f"Runs: {', '.join(r6['runs'])}. LinearSVC fit **{r6.get('fit_s', float('nan')):.2f} s** "
                      f"(target <= 60 s; {r6.get('n_train')} training samples), accuracy {_acc(r6)}; "
                      f"labels shuffled (mean of 5 seeds): {_acc(sh)}.", ""]
        for r, a in m.get("hspi_ld_all", {}).items():
            ctl = m["hspi_ld_all_shuffled"].get(r)
            lines += [f"HSPI-LD {r} over all {m['n_runs']} runs (classes not merged; bit-identical runs "
                      f"cap it): {_acc(a)}" + (f"; labels shuffled (mean of 3 seeds): {_acc(ctl)}" if ctl else "")
                      + ".", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# files in, tables out (scripts/analyse_models.py and `hspi model tables`)
# --------------------------------------------------------------------------------------------
def analyse_files(specs: Sequence[str], out, *, models: Sequence[str] | None = None,
                  hardware: Sequence[str] | None = None, progress=None, **kw) -> dict[str, Any]:
    """Load collections (``PATH`` or ``PATH=TAG``: hardware relabelled ``HW@TAG``, e.g. two sessions
    of one GPU type as a same-hardware negative control), check they ran the same prompts, build
    :func:`report` and write ``<out>.json`` and ``<out>.md``."""
    import json
    from pathlib import Path

    t0 = time.perf_counter()
    paths, tags = [], []
    for c in map(str, specs):
        path, tag = (c.rsplit("=", 1) if "=" in c and not Path(c).exists() else (c, ""))
        paths.append(Path(path))
        tags.append(tag)
    colls = [mc.load(p) for p in paths]
    check_same_inputs(colls)
    runs = []
    for coll, tag in zip(colls, tags):
        for v in coll.runs():
            if tag:
                hw = f"{v.record['hardware']}@{tag}"
                v.record = dict(v.record, hardware=hw, label=f"{hw}/{v.eqc.name}")
            runs.append(v)
    if hardware:
        runs = [v for v in runs if v.hardware in set(hardware)]
    if models:
        runs = [v for v in runs if v.model in set(models)]
    labels = [(v.model, v.label) for v in runs]
    if len(set(labels)) != len(labels):
        raise ValueError("two runs share a model and label (the same hardware twice?): tag one as PATH=TAG")
    if not runs:
        raise ValueError("no ok runs left to analyse")
    rep = report(runs, progress=progress, **kw)
    platforms = [f"{c.meta.get('platform_label', '?')} ({c.source}; created {c.meta.get('created')})"
                 for c in colls]
    rep["sources"] = [str(p) + (f" (hardware tagged @{t})" if t else "") for p, t in zip(paths, tags)]
    rep["platforms"] = [c.meta.get("platform") for c in colls]
    rep["analysis_s"] = time.perf_counter() - t0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f"{out}.json", json.dumps(rep, indent=1, default=str))
    atomic_write_text(f"{out}.md", to_markdown(rep, rep["sources"], platforms))
    return rep
