"""Exact platform identification with the model known (bit matching; the fingerprint-level
identification is ``hspi_kernels.identify``).

White-box: the verifier regenerates each candidate EQC's outputs (a reference collection per
candidate platform) and matches bits: a candidate survives a query only if its output digest on
that prompt equals the observed one. Whenever two candidates' bits differ on some prompt, enough
queries separate them with certainty; :func:`whitebox` returns the surviving candidates.

Black-box (an OpenAI-compatible API): only the top-k token ids and their log-probs, rounded as
the server prints them (``decimals=None``: the fp32 value as a JSON float, vLLM's behaviour; an
integer: rounded to that many decimals). Per query a candidate matches when the ids and rounded
values agree exactly; the prediction is the candidate with most matches (ties broken by the mean
absolute log-prob difference), with a binomial p-value for "the runner-up produced these outputs
and only run-to-run noise (rate ``eps``) made them differ".

:func:`identify_runs` names the candidate behind every run of an observed collection (`hspi model
identify`); the ``*_accuracy`` functions measure how often each method is right.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from hspi_kernels.models import collect
from hspi_kernels.models.collect import Collection, RunView

__all__ = ["api_view", "whitebox", "blackbox", "identify_runs", "blackbox_accuracy", "whitebox_accuracy"]


def api_view(ids: np.ndarray, logprobs: np.ndarray, k: int = 20, decimals: int | None = None):
    """(ids [n, k], values [n, k] float64) as a client of an OpenAI-style server would read them."""
    values = logprobs[:, :k].astype(np.float64)
    if decimals is not None:
        values = np.round(values, decimals)
    return ids[:, :k], values


def whitebox(observed_digests: np.ndarray, candidates: Sequence[RunView], prompts: np.ndarray | None = None,
             field_name: str = "digest_logits") -> dict[str, Any]:
    """Candidates whose bits equal the observation on every queried prompt (``observed_digests``
    aligned with ``prompts``; all prompts when None)."""
    idx = np.arange(len(observed_digests)) if prompts is None else np.asarray(prompts)
    obs = np.asarray(observed_digests)
    matches = {v.label: int(np.count_nonzero(v.get(field_name)[idx] == obs)) for v in candidates}
    survivors = [lab for lab, m in matches.items() if m == len(idx)]
    return {"survivors": survivors, "matches": matches, "queries": int(len(idx))}


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def blackbox(obs_ids: np.ndarray, obs_values: np.ndarray, candidates: Sequence[RunView], prompts: np.ndarray,
             k: int = 20, decimals: int | None = None, eps: float = 0.01) -> dict[str, Any]:
    """Identify from API views of ``prompts`` (observed rows are aligned with ``prompts``)."""
    scores = []
    for v in candidates:
        ids, vals = api_view(v.get("topk_ids")[prompts], v.get("topk_logprobs")[prompts], k, decimals)
        same = np.all(ids == obs_ids, axis=1) & np.all(vals == obs_values, axis=1)
        shared = ids == obs_ids
        diff = np.abs(vals - obs_values)[shared].mean() if shared.any() else np.inf
        scores.append((int(same.sum()), -float(diff), v.label))
    scores.sort(reverse=True)
    best, runner = scores[0], scores[1] if len(scores) > 1 else None
    q = len(prompts)
    p_value = _binom_sf(q - runner[0], q, eps) if runner is not None else 0.0
    return {"prediction": best[2], "matches": {s[2]: s[0] for s in scores}, "queries": q,
            "tie": runner is not None and runner[:2] == best[:2],
            "p_value_runner_up": p_value, "runner_up": runner[2] if runner else None}


def identify_runs(observed_runs: Collection, references: Sequence[RunView], *, blackbox_view: bool = False,
                  k: int = 20, decimals: int | None = None, queries: int = 32,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One result per run of ``observed_runs``: the reference runs of the same model that explain
    its first ``queries`` prompts, as ``identified`` (white-box: every surviving candidate;
    ``blackbox_view``: the API-view prediction, :func:`blackbox`), or an ``error`` (no reference
    run of that model; prompts that differ from the references'). ``progress(result)`` after
    each run."""
    results = []
    for v in observed_runs.runs():
        res = _identify_run(v, observed_runs, references, blackbox_view, k, decimals, queries)
        results.append(res)
        if progress is not None:
            progress(res)
    return results


def _identify_run(v: RunView, observed_runs: Collection, references: Sequence[RunView], blackbox_view: bool,
                  k: int, decimals: int | None, queries: int) -> dict[str, Any]:
    cands = [r for r in references if r.model == v.model]
    if not cands:
        return {"observed": v.label, "error": "no reference runs of this model"}
    ref_inputs = collect.load(cands[0].source).inputs(v.model)
    obs_inputs = observed_runs.inputs(v.model)
    if set(ref_inputs) != set(obs_inputs) or any(not np.array_equal(ref_inputs[s], obs_inputs[s]) for s in obs_inputs):
        return {"observed": v.label, "error": "observed prompts differ from the references'"}
    prompts = np.arange(min(queries, v.get("digest_logits").shape[0]))
    if blackbox_view:
        ids, vals = api_view(v.get("topk_ids")[prompts], v.get("topk_logprobs")[prompts], k, decimals)
        res = blackbox(ids, vals, cands, prompts, k, decimals)
        res["identified"] = [res["prediction"]]
    else:
        res = whitebox(v.get("digest_logits")[prompts], cands, prompts)
        res["identified"] = res["survivors"]
    res["observed"] = v.label
    return res


def observed(v: RunView, field: str, prefix: str = "rep_") -> np.ndarray:
    """What the hidden platform shows of ``field``: its repeat execution (``prefix`` + field)
    when the collection has one, else the first execution."""
    return v.get(f"{prefix}{field}") if v.has(f"{prefix}{field}") else v.get(field)


def blackbox_accuracy(candidates: Sequence[RunView], queries: int = 32, trials: int = 100, k: int = 20,
                      decimals: int | None = None, seed: int = 0, observe: str = "rep_") -> dict[str, Any]:
    """Accuracy of :func:`blackbox` when each candidate in turn is the hidden platform: its
    observations come from the repeat execution (``rep_*``), references from the first."""
    rng = np.random.default_rng(seed)
    n = candidates[0].get("topk_ids").shape[0]
    per: dict[str, float] = {}
    views = {v.label: api_view(v.get("topk_ids"), v.get("topk_logprobs"), k, decimals) for v in candidates}
    for true in candidates:
        # candidates whose API views equal the true one's on every prompt cannot be told apart
        same = {lab for lab, (i, x) in views.items()
                if np.array_equal(i, views[true.label][0]) and np.array_equal(x, views[true.label][1])}
        ids_all, lp_all = observed(true, "topk_ids", observe), observed(true, "topk_logprobs", observe)
        correct = 0
        for _ in range(trials):
            prompts = rng.choice(n, size=min(queries, n), replace=False)
            ids, vals = api_view(ids_all[prompts], lp_all[prompts], k, decimals)
            res = blackbox(ids, vals, candidates, prompts, k, decimals)
            tied = {lab for lab, m in res["matches"].items() if m == res["matches"][res["prediction"]]}
            correct += int(res["prediction"] in same and (not res["tie"] or tied <= same))
        per[true.label] = correct / trials
    return {"accuracy": float(np.mean(list(per.values()))), "per_candidate": per, "queries": queries,
            "note": "correct = predicted class is the hidden candidate's (API-view-identical candidates merged)",
            "k": k, "decimals": decimals, "trials": trials}


def whitebox_accuracy(candidates: Sequence[RunView], queries: int = 1, trials: int = 100, seed: int = 0,
                      observe: str = "rep_") -> dict[str, Any]:
    """Fraction of trials in which white-box matching over ``queries`` random prompts leaves only
    the hidden candidate's lattice class (bit-identical candidates cannot be told apart)."""
    rng = np.random.default_rng(seed)
    n = candidates[0].get("digest_logits").shape[0]
    digests = {v.label: v.get("digest_logits") for v in candidates}
    per = {}
    for true in candidates:
        obs = observed(true, "digest_logits", observe)
        same_class = {lab for lab, d in digests.items() if np.array_equal(d, digests[true.label])}
        ok = 0
        for _ in range(trials):
            prompts = rng.choice(n, size=min(queries, n), replace=False)
            res = whitebox(obs[prompts], candidates, prompts)
            ok += int(set(res["survivors"]) == same_class)
        per[true.label] = ok / trials
    return {"accuracy": float(np.mean(list(per.values()))), "per_candidate": per, "queries": queries}
