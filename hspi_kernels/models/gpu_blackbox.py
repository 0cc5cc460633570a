"""Black-box identification from sampled text on one GPU (issue 21): power curves per serving-stack
axis of a real zoo model, in one time-boxed job::

    python -m hspi_kernels.models.gpu_blackbox OUT_DIR --model qwen2.5-0.5b --budget-s 300

Candidates (:class:`hspi_kernels.models.sampled.Stack`, bf16, the seeded zoo weights), in two blocks:

- batched (``--block`` rows per forward): the default SDPA choice (``bf16.torch.batched``, the H0),
  the attention backends (``sdpa-math`` / ``sdpa-flash`` / ``sdpa-efficient`` / ``sdpa-cudnn``),
  the fixed-order Triton GEMM of ``eqc.applied`` (``fixed``) and the deterministic mode
  (``bf16.torch.batched.det``: every forward under ``torch.use_deterministic_algorithms(True)``),
  the compile mode (``bf16.torch.batched.compile``: ``torch.compile``, inductor default; it compiles
  in the bits step's first calls, recorded as ``warmup_s`` and kept out of the pool estimates, and
  ``dynamo`` records what dynamo compiled) and the framework (``bf16.jax.batched``: the same weights
  under JAX/XLA, :class:`~hspi_kernels.models.sampled.JaxDecoder`); every pair of bit-distinct stacks;
- small (``--small-rows`` rows, ``--small-pairs``): cuBLAS vs the fixed-order GEMM at batch 8
  (``bf16.torch.b8`` vs ``bf16.fixed.b8``; at large batches they are known to agree in bf16), and
  the batch axis: real batches of 8 rows vs every row alone (``rowwise``), 16 vs 8. Every forward
  costs about the same at these sizes (launch bound), so these pools are small and their q short.

The deterministic mode needs ``CUBLAS_WORKSPACE_CONFIG`` (``:4096:8`` or ``:16:8``) before the
process's first cuBLAS call: when a ``det`` stack is listed and the variable is unset, the job sets
``:4096:8`` at its start, for every stack of the run (det and default then run under the same cuBLAS
workspace); the record says the value and who set it.

A stack the device cannot run (a refusal by ``sampled.unsupported_reason``, or a backend that
refuses the model's shapes at run time, e.g. "No available kernel") is recorded as skipped with
the reason.

Steps, each time-boxed (a step whose estimate would end after ``--budget-s`` is recorded as
skipped, never silently dropped):

1. **bits**: every stack teacher-forced twice on the same held-out prompts and tokens, in the
   pools' batch layout; the number of fp32 logits whose bits differ, per pair and between the two
   runs of one stack (repeatability). Pairs whose logits are bit-identical cannot be told apart by
   any test on outputs: no curve is measured for them (power = chance by construction). Each
   ``det`` stack is also recorded against the same stack without the mode
   (``deterministic_mode``: bit-distinct or not on this device).
2. **pools**: per (truth stack, T) one pool of ``--rows`` completions of ``--tokens`` tokens on
   held-out random prompts with fresh sampler seeds, generated in blocks of ``--block`` rows (one
   batched forward per step over a block) while every candidate it is paired with replays the same
   prefixes in lockstep; per row and step the LR increment, its conditional moments, both
   randomised PITs and the seed-synchronised draws are kept (:func:`power.pool_pass`).
3. **curves**: trials are **resampled from the pools**: each of ``--trials`` trials per truth
   label draws q distinct pool rows (trials share rows, so they are not independent; each trial's
   statistic has the law of a trial on prompts drawn from the pool). Accuracy/AUC of the LR sign
   decision and of seed sync, LR / rank power at alpha, shuffled-label controls
   (:func:`power.curve`), for q in ``--queries`` (q <= pool / 4) at ``--tokens`` tokens per completion;
   each budget also on disjoint trials (pool / q independent trials: fewer, but no shared rows).
   **Calibration** (identical platforms: truth = H0) on *disjoint* trials (each pool row used once,
   independent trials: the binomial interval is exact) at q = 1 and q = 2, and on the resampled
   trials at the largest q (approximate: overlapping trials).
4. **probes** (after the curves; each scoring pass, pool pass and record its own time-boxed step):
   generated probes vs random prompts at equal budget, per bit-distinct batched pair and the small
   ``--probe-small-pairs`` (cuBLAS vs fixed at b8) when bit-distinct, at ``--probe-temperatures``
   (0.7, 0). A pool of ``--probe-pool`` random prompts (``--probe-small-pool`` for the small block)
   is scored by the two candidates' own first-token replays on the device in blocks of the pool
   passes' batch (:func:`probe_scores_torch`, :func:`power.probe_scores`' definition in torch); the
   top q_max of ``--probe-queries`` (1, 2, 4, 8) are the probes. Per truth stack one pool pass
   (:func:`power.pool_pass`, fresh sampler seeds, the other candidate replaying in lockstep) over
   ``trials x q_max`` rows of the probes (the SAME probe set in every trial: trials vary only the
   sampler seeds) followed by ``trials x q_max`` fresh held-out random prompts (a trial each), so
   ``2 x --probe-trials x q_max`` rows (512 at the defaults: one block). Curves (LR / rank /
   sync, shuffled-label control) at q x ``--probe-tokens`` (1, 8, 64; kept where <= ``--tokens``)
   for both kinds, and calibration on the truth = H0 trials of both kinds (``probes`` in the JSON).

Writes two files, atomically, rewritten after every step: ``OUT_DIR/h200_power.json`` (platform
metadata of :func:`hspi_kernels.platform.collect`, settings, every number, seconds per step, what
was skipped and why; the probe comparison in ``probes``) and ``OUT_DIR/h200_power.md`` (the tables); prints a short table last.
The file names are fixed (issue 21's record); the machine actually used is in the metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xxhash

from hspi_kernels.models import power, prompts as prompt_sets, sampled

START = time.perf_counter()  # reset by main(): the budget counts from the job's start, not the import
BASE = "bf16.torch.batched"
AXES = {  # axis -> the stacks that change it (each compared with BASE)
    "gemm": ["bf16.fixed.batched"],
    "attention": ["bf16.sdpa-math.torch.batched", "bf16.sdpa-efficient.torch.batched",
                  "bf16.sdpa-cudnn.torch.batched", "bf16.sdpa-flash.torch.batched"],
    "deterministic mode": ["bf16.torch.batched.det"],  # torch.use_deterministic_algorithms(True)
    "compile mode": ["bf16.torch.batched.compile"],  # torch.compile, inductor default
    "framework": ["bf16.jax.batched"],  # jax_llama under XLA (sampled.JaxDecoder), the same weights
}
# small-batch pairs, on their own small block (every forward costs about the same at these batch
# sizes, so their pools are small): the GEMM axis where cuBLAS and the fixed order can differ (at
# large M they are known to agree in bf16), and the batch axis
SMALL_PAIRS = (("bf16.torch.b8", "bf16.fixed.b8"), ("bf16.torch.b8", "bf16.torch.rowwise"),
               ("bf16.torch.b16", "bf16.torch.b8"))
QUERIES = (1, 2, 4, 8, 16, 32, 64, 100)
TEMPERATURES = (0.7, 0.0, 1.0)  # T = 0.7 (the goal) first: a budget cut falls on the others
ALPHA = 0.05
GOAL = 0.95
JSON_NAME, MD_NAME = "h200_power.json", "h200_power.md"
# generated probes vs random prompts: budgets q x tokens, temperatures, and the small-block pairs probed
PROBE_QUERIES = (1, 2, 4, 8)
PROBE_TOKENS = (1, 8, 64)
PROBE_TEMPERATURES = (0.7, 0.0)
PROBE_SMALL_PAIRS = (("bf16.torch.b8", "bf16.fixed.b8"),)  # cuBLAS vs the fixed-order GEMM at batch 8
DET_WORKSPACE = ":4096:8"  # CUBLAS_WORKSPACE_CONFIG for torch.use_deterministic_algorithms on CUDA
PROBE_METHOD = (
    "per (pair, T) a pool of random prompts used nowhere else is scored by the two candidates' own first-token "
    "replays on the device, in blocks of the pool passes' batch (power.probe_scores' definition evaluated in torch: "
    "T = 0: 1 where the two argmaxes differ, minus 1e-3 x A's top-2 logit gap; T > 0: KL(q_B || q_A) of the "
    "floored first-token sampling distributions); the top q_max prompts, best first, are the generated probes. "
    "GENERATED trials: every trial sends the SAME q_max probes (a budget of q uses the best q), a fixed set, so "
    "trials vary only in the sampler seeds (fresh uniforms per row) and the PIT randomisation; at T = 0 the "
    "completions are greedy, so all generated trials of a label are the same completion and their accuracy is "
    "one outcome repeated (0 or 1 up to tie coins), not an average over prompts. RANDOM trials: each trial its "
    "own q_max fresh held-out random prompts (independent trials, no row shared). Both kinds: the same trials "
    "per truth label and the same budgets, generated by the truth stack in one batched pool pass (generated rows "
    "first, then random rows, in blocks of the scoring block, so the probes decode in the batch shape they were "
    "scored in) while the other candidate replays in lockstep (power.pool_pass). Control: shuffled labels "
    "(chance 0.5); calibration: the truth = H0 trials of each kind (the LR p-value is exact given the prompts, "
    "so a fixed probe set keeps the level).")


def elapsed() -> float:
    return time.perf_counter() - START


def _seed(*parts: Any) -> int:
    return xxhash.xxh64_intdigest("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


def _jsonable(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------
def bits_compare(plats: dict[str, sampled.Platform], names: Sequence[str], prompts: np.ndarray,
                 tokens: np.ndarray) -> dict[str, Any]:
    """Teacher-force ``tokens`` [N, n] on ``prompts`` under every stack twice (lockstep, the
    stack's own batching over the N rows); count the fp32 logits whose bits differ per pair of
    stacks and between the two runs of each stack. Also the seconds per decode step per stack."""
    import torch

    decs = {(c, r): plats[c].decoder(prompts) for c in names for r in (0, 1)}
    differ = {(a, b): 0 for i, a in enumerate(names) for b in names[i + 1:]}
    per_step = {(a, b): [] for (a, b) in differ}
    repeat = {c: 0 for c in names}
    seconds = {key: [] for key in decs}  # per decoder, per call (prefill first)
    tk = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    n = tokens.shape[1]
    for t in range(n):
        lo = {}
        for key, dec in decs.items():
            sync = plats[key[0]].device.startswith("cuda")
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            lo[key] = (dec.first() if t == 0 else dec.step(tk[:, t - 1])).view(torch.int32)
            if sync:
                torch.cuda.synchronize()
            seconds[key].append(time.perf_counter() - t0)
        for c in names:
            repeat[c] += int((lo[(c, 0)] != lo[(c, 1)]).sum())
        for a, b in differ:
            k = int((lo[(a, 0)] != lo[(b, 0)]).sum())
            differ[(a, b)] += k
            per_step[(a, b)].append(k)
    total = int(prompts.shape[0] * n * plats[names[0]].vocab)
    step_s, warm_s = steady_step_seconds(seconds, names)
    return {"rows": int(prompts.shape[0]), "steps": int(n), "logits_compared": total,
            "differing_logits": {f"{a} vs {b}": v for (a, b), v in differ.items()},
            "differing_logits_per_step": {f"{a} vs {b}": v for (a, b), v in per_step.items()},
            "repeat_differing_logits": repeat, "decode_step_s": {c: round(v, 5) for c, v in step_s.items()},
            "warmup_s": {c: round(v, 3) for c, v in warm_s.items()},
            "call_s": {f"{c} run {r}": [round(x, 4) for x in v] for (c, r), v in seconds.items()},
            "_differ": differ}


def steady_step_seconds(seconds: dict[tuple[str, int], list[float]], names: Sequence[str]
                        ) -> tuple[dict[str, float], dict[str, float]]:
    """Per stack: the steady seconds of one decode step (median over the decode calls of both
    runs, the prefill excluded) and the warm-up (what the calls took beyond that, prefill
    included): a compiled stack's first calls compile (dynamo recompiles for the growing cache),
    which must not enter the estimate of a 64-token pool."""
    steady, warm = {}, {}
    for c in names:
        calls = [v for (c_, _r), v in seconds.items() if c_ == c]
        decode = sorted(x for v in calls for x in v[1:])
        med = decode[len(decode) // 2] if decode else 0.0
        steady[c] = med
        warm[c] = sum(max(0.0, x - med) for v in calls for x in v)
    return steady, warm


def dynamo_stats() -> dict[str, Any]:
    """What torch.compile did so far in this process (frames compiled, graphs, recompiles, graph
    breaks): the evidence that a ``compile`` stack ran compiled code, not dynamo's eager fallback."""
    try:
        from torch._dynamo.utils import counters
    except Exception as exc:  # noqa: BLE001 - torch without dynamo: say so in the record
        return {"error": f"{type(exc).__name__}: {exc}"}
    keep = ("stats", "frames", "recompiles", "graph_break", "unimplemented")
    return {k: {str(a): int(b) for a, b in counters[k].items()} for k in keep if k in counters}


def sampler_seconds(plat: sampled.Platform, rows: int, temperature: float, top_p: float) -> dict[str, float]:
    """Seconds of one sampler step (probabilities + draw) and of one pair's statistics at ``rows``."""
    import torch

    dev = plat.device
    g = torch.Generator(device=dev).manual_seed(1)
    lo = torch.randn(rows, plat.vocab, generator=g, device=dev, dtype=torch.float32)
    u = torch.rand(rows, generator=g, device=dev, dtype=torch.float64)

    def timed(fn):
        fn()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    s_samp, p = timed(lambda: (lambda q: (q, sampled.draw_torch(q, u)))(
        sampled.sampling_probs_torch(lo, temperature, top_p)))
    pa, x = p
    s_pair, _ = timed(lambda: power.step_arrays_torch(pa, pa, x, x, x, u, u))
    return {"sampler_s": s_samp, "pair_s": s_pair}


def probe_scores_torch(la, lb, temperature: float, top_p: float = 0.9, floor: float = 1e-3):
    """:func:`power.probe_scores` on first-token logits already on the device (``la``/``lb`` [B, V]
    fp32 of A and B), in torch with the sampler of :func:`sampled.sampling_probs_torch` (the GPU
    job cannot afford numpy sorts of [B, 152k] per block); the tests check it against
    :func:`power.probe_scores` on the CPU. Returns float64 [B] (larger: more divergent)."""
    import torch

    if temperature == 0:
        differ = (la.argmax(-1) != lb.argmax(-1)).double()
        top2 = torch.topk(la, 2, dim=-1).values  # descending: the gap is top - second
        return differ - (top2[:, 0] - top2[:, 1]).double() * 1e-3
    v = la.shape[-1]
    pa = sampled.sampling_probs_torch(la, temperature, top_p).mul_(1.0 - floor).add_(floor / v)
    pb = sampled.sampling_probs_torch(lb, temperature, top_p).mul_(1.0 - floor).add_(floor / v)
    return (pb * (pb.log() - pa.log())).sum(-1)


def score_pool(plats: dict[str, sampled.Platform], pairs: Sequence[tuple[str, str]], pool: np.ndarray,
               temperatures: Sequence[float], top_p: float, block: int) -> dict[tuple, np.ndarray]:
    """Probe scores [N] of every pool prompt per (pair, T): the first-token logits of every stack of
    ``pairs`` in blocks of ``block`` rows (each stack's own batching inside a block, as in the pool
    passes), scored by :func:`probe_scores_torch`."""
    names = sorted({c for p in pairs for c in p})
    out = {(tuple(p), t): np.zeros(pool.shape[0]) for p in pairs for t in temperatures}
    for start in range(0, pool.shape[0], block):
        sl = slice(start, min(pool.shape[0], start + block))
        lo = {c: plats[c].decoder(pool[sl]).first() for c in names}
        for (a, b), t in out:
            out[((a, b), t)][sl] = probe_scores_torch(lo[a], lo[b], t, top_p).cpu().numpy()
        del lo
    return out


def probe_prompts(scores: np.ndarray, pool: np.ndarray, random_prompts: np.ndarray, trials: int,
                  queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts of one probe pool pass and the chosen pool indices: ``trials`` x the top
    ``queries`` pool prompts by score (the same set in every trial, best first), then the
    ``trials * queries`` held-out random prompts (each trial its own)."""
    order = np.argsort(-scores, kind="stable")[:queries]
    if random_prompts.shape[0] != trials * queries:
        raise ValueError(f"{random_prompts.shape[0]} random prompts for {trials} trials x {queries} queries")
    return np.concatenate([np.tile(pool[order], (trials, 1)), random_prompts]), order


def probe_simulations(pair, temperature: float, passes: Sequence[dict], trials: int, queries: int,
                      top_p: float) -> dict[str, power.Simulation]:
    """The two :class:`power.Simulation` of a probe comparison ("generated", "random") from the
    two pool passes (truth A, truth B) over :func:`probe_prompts`' rows: row ``k * R + i * q + j``
    is trial ``i``, query ``j`` of kind ``k`` (R = trials x q)."""
    r = trials * queries
    pair = tuple(pair)
    sims = {}
    for k, kind in enumerate(("generated", "random")):
        arrs = [np.stack([ps["pairs"][pair][f][k * r:(k + 1) * r].reshape(trials, queries, -1) for ps in passes])
                for f in power.FIELDS]
        sims[kind] = power.Simulation(pair, temperature, top_p, trials, queries, arrs[0].shape[-1], *arrs,
                                      bits_differ=float(np.mean([ps["logits_differ"][pair] for ps in passes])),
                                      prompt_seed=-1)
    return sims


def probe_record(pair, temperature: float, passes: Sequence[dict], scores: np.ndarray, chosen: np.ndarray, *,
                 trials: int, queries: Sequence[int], tokens: Sequence[int], top_p: float, seed: int) -> dict[str, Any]:
    """Curves (:func:`power.curve`, shuffled-label control included) of generated probes and random
    prompts at the same budgets q x tokens, and calibration of both kinds (truth = H0 trials)."""
    qmax = max(queries)
    sims = probe_simulations(pair, temperature, passes, trials, qmax, top_p)
    budgets = [(q, m) for q in sorted(queries) for m in sorted(tokens)]
    srt = np.sort(scores)[::-1]
    out: dict[str, Any] = {
        "pair": list(pair), "temperature": temperature, "top_p": top_p, "pool_prompts": int(scores.size),
        "trials_per_label": trials, "queries": sorted(queries), "tokens_per_query": sorted(tokens),
        "trials": {"generated": f"the same {qmax} probes in every trial (a budget of q: the best q); trials vary "
                                f"only the sampler seeds" + (" (T = 0: greedy, every trial the same completion)"
                                                             if temperature == 0 else ""),
                   "random": f"each trial its own {qmax} fresh held-out random prompts (independent trials)"},
        "probe_pool_indices": [int(i) for i in chosen],
        "probe_scores_top": [float(x) for x in scores[chosen]],
        "pool_score_quantiles": {"max": float(srt[0]), "p99": float(np.quantile(scores, 0.99)),
                                 "median": float(np.median(scores)), "min": float(srt[-1])},
        "pool_prompts_whose_first_argmax_differs": int((scores > 0.5).sum()) if temperature == 0 else None,
        "bits_differ_fraction": sims["generated"].bits_differ}
    for k, kind in enumerate(("generated", "random")):
        out[kind] = power.curve(sims[kind], budgets, ALPHA, seed=seed + k)
    out["calibration"] = {kind: [power.calibration(sims[kind], ALPHA, q=q, m=max(tokens)) for q in sorted({1, qmax})]
                          for kind in sims}
    return out


def resampled_record(pair, temperature, pools, *, trials, queries, tokens, seed, bits_differ, top_p) -> dict[str, Any]:
    """Curves on resampled trials and calibration on disjoint ones (see the module docstring)."""
    n_rows = min(len(p["d"]) for p in pools)
    # trials of more than a quarter of the pool would mostly share their rows: not measured
    qs = [q for q in queries if q <= max(1, n_rows // 4)]
    qmax = max(qs)
    sim = power.pooled_simulation(pair, temperature, pools, trials=trials, queries=qmax, seed=seed,
                                  top_p=top_p, bits_differ=bits_differ)
    budgets = [(q, tokens) for q in qs]
    curve = power.curve(sim, budgets, ALPHA, seed=seed)
    for row in curve:  # the same budget on disjoint trials (independent, fewer): a check of the resampled numbers
        q = row["queries"]
        dis = power.pooled_simulation(pair, temperature, pools, trials=0, queries=q, seed=seed + 7 * q, top_p=top_p,
                                      disjoint=True, bits_differ=bits_differ)
        (d,) = power.curve(dis, [(q, tokens)], ALPHA, seed=seed + q)
        row["disjoint"] = {"trials_per_label": dis.trials, **{k: d[k] for k in (
            "lr_accuracy", "lr_auc", "lr_power", "seed_sync_accuracy", "control_shuffled_accuracy")}}
    cal = []
    for q in (1, 2):
        if n_rows // q >= 1:
            dis = power.pooled_simulation(pair, temperature, pools, trials=0, queries=q, seed=seed + q,
                                          top_p=top_p, disjoint=True, bits_differ=bits_differ)
            cal.append({**power.calibration(dis, ALPHA), "trials_kind": "disjoint (independent, each pool row once)"})
    cal.append({**power.calibration(sim, ALPHA), "trials_kind": "resampled (overlapping rows): interval approximate"})

    def first_q(key):
        hit = [r["queries"] for r in curve if r[key] >= GOAL]
        return hit[0] if hit else None

    return {"pair": list(pair), "temperature": temperature, "top_p": top_p, "pool_rows_per_label": n_rows,
            "trials_per_label": trials, "tokens_per_completion": tokens,
            "queries_cut": [q for q in queries if q not in qs], "bits_differ_fraction": bits_differ,
            "curve": curve, "calibration": cal,
            "goal": {"accuracy": GOAL, "max_queries": 100, "lr_first_q": first_q("lr_accuracy"),
                     "seed_sync_first_q": first_q("seed_sync_accuracy"),
                     "lr_accuracy_at_max_q": curve[-1]["lr_accuracy"], "max_q_measured": qmax}}


def _timed_record(pair, temperature, pools, kw):
    t0 = time.perf_counter()
    return resampled_record(pair, temperature, pools, **kw), time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# the record
# --------------------------------------------------------------------------------------------
def markdown(rec: dict[str, Any]) -> str:
    m = rec.get("platform", {})
    gpus = ", ".join(g.get("name", "?") for g in (m.get("torch", {}) or {}).get("gpus", [])) or rec["device"]
    s = rec["settings"]
    lines = ["# Black-box identification from sampled text on the GPU (issue 21)", "",
             f"Measured by `python -m hspi_kernels.models.gpu_blackbox` on {gpus} (device {rec['device']}, torch "
             f"{(m.get('torch', {}) or {}).get('version', '?')}), model {rec['model']} (seeded zoo weights, "
             f"{s['dtype']}; random weights of the zoo's seeded init, not a trained checkpoint, so the next-token "
             f"distributions are those of such weights), {rec.get('elapsed_s', 0):.0f} s of a {s['budget_s']:.0f} s "
             f"budget. Sampler: "
             f"{rec['sampler']}. Completions of {s['tokens']} tokens on held-out random prompts of "
             f"{s['prompt_len']} tokens, fresh sampler seeds per pool. Level alpha = {ALPHA}.", "",
             f"**How trials are built:** {rec['method']}", "",
             "Tests: **LR** = exact likelihood-ratio test (per-step randomised PIT, Stouffer), H0 = the first "
             "stack of the pair; **rank** = randomised-PIT Kolmogorov-Smirnov of H0; **sync** = "
             "seed-synchronised agreement (seed exposed). Accuracy/AUC: truth drawn from the pair, LR decision "
             "sign(Lambda); controls: the same LR statistics with shuffled labels (chance = 0.5).", "",
             "## Stacks", "", "| stack | status |", "|---|---|"]
    for name, st in rec["stacks"].items():
        lines.append(f"| {name} | {st['status']}{': ' + st['reason'] if st.get('reason') else ''} |")
    lines += ["", "## Do the bits differ? (teacher-forced logits, every stack run twice)", "",
              "| block | pair | differing logits | of | repeat (A, B) |", "|---|---|---|---|---|"]
    for blk, b in rec.get("bits", {}).items():
        if "differing_logits" not in b:
            continue
        for pair, v in b["differing_logits"].items():
            a, c = pair.split(" vs ")
            lines.append(f"| {blk} ({b['rows']} rows x {b['steps']} steps) | {pair} | {v} | {b['logits_compared']} | "
                         f"{b['repeat_differing_logits'][a]}, {b['repeat_differing_logits'][c]} |")
    for blk, b in rec.get("bits", {}).items():
        if b.get("differing_logits_per_step"):
            lines += ["", f"Per step ({blk}; step 0 = the prefill's last position): differing logits of "
                      f"{b['logits_compared'] // max(1, b['steps'])} per step", ""]
            lines += [f"- {pair}: {', '.join(map(str, v))}" for pair, v in b["differing_logits_per_step"].items()]
        if b.get("warmup_s"):
            lines += ["", "Seconds per decode step (median, both runs) and warm-up beyond it (compiles, first "
                      "calls): " + "; ".join(f"{c} {b['decode_step_s'][c]:.4f} s, warm-up {w:.1f} s"
                                            for c, w in b["warmup_s"].items())]
    dyn = rec.get("dynamo")
    if dyn:
        def _fmt(d):
            st = d.get("stats", {})
            return (f"unique graphs {st.get('unique_graphs', 0)}, frames compiled ok {d.get('frames', {}).get('ok', 0)}, "
                    f"graph breaks {sum(d.get('graph_break', {}).values())}, recompiles "
                    f"{sum(d.get('recompiles', {}).values())}") if "error" not in d else d["error"]
        lines += ["", "torch.compile (dynamo counters of the process): " +
                  "; ".join(f"{k}: {_fmt(v)}" for k, v in dyn.items())]
    lines += ["", "## Goal: >= 95 % accuracy at <= 100 completions", "",
              "| pair | T | pool rows | bits differ | LR: first q | sync: first q | LR acc at max q (q) |",
              "|---|---|---|---|---|---|---|"]
    for p in rec["pairs"]:
        g = p["goal"]
        lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {p['pool_rows_per_label']} | "
                     f"{p['bits_differ_fraction']:.4f} | {g['lr_first_q'] or 'not reached'} | "
                     f"{g['seed_sync_first_q'] or 'not reached'} | {g['lr_accuracy_at_max_q']:.3f} ({g['max_q_measured']}) |")
    lines += ["", "## Calibration on identical platforms (truth = H0 stack)", "",
              "Only the *disjoint* rows are a calibration (independent trials, each pool row once, exact binomial "
              "interval). The *resampled* row shares pool rows between trials, so its rejection count is "
              "overdispersed (one row with a small p-value enters many trials) and can fall outside the interval.", "",
              "| pair | T | trials | kind | q x tokens | LR rej. | rank | sync | 99.9 % interval | LR-CLT |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in rec["pairs"]:
        for c in p["calibration"]:
            lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {c['trials']} | "
                         f"{c['trials_kind'].split(' ')[0]} | {c['queries']} x {c['tokens_per_query']} | "
                         f"{c['lr_rejections']} | {c['rank_rejections']} | {c['seed_sync_rejections']} | "
                         f"{c['interval']} | {c['lr_clt_rejections']} |")
    lines += ["", "## Power curves (resampled trials)", "",
              "| pair | T | q x tokens | LR acc | LR AUC | LR power | LR FPR | rank power | sync acc | sync power "
              "| control acc | control AUC | disjoint trials: n, LR acc, sync acc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in rec["pairs"]:
        for r in p["curve"]:
            lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {r['queries']} x "
                         f"{r['tokens_per_query']} | {r['lr_accuracy']:.3f} | {r['lr_auc']:.3f} | {r['lr_power']:.3f} | "
                         f"{r['lr_fpr']:.3f} | {r['rank_power']:.3f} | {r['seed_sync_accuracy']:.3f} | "
                         f"{r['seed_sync_power']:.3f} | {r['control_shuffled_accuracy']:.3f} | "
                         f"{r['control_shuffled_auc']:.3f} | {_disjoint_cell(r)} |")
    lines += _probe_markdown(rec)
    dm = rec.get("deterministic_mode") or {}
    if dm:
        lines += ["", "## Deterministic mode (`torch.use_deterministic_algorithms(True)`)", "",
                  "| stack | vs | differing logits | of | CUBLAS_WORKSPACE_CONFIG | verdict |", "|---|---|---|---|---|---|"]
        for name, d in dm.items():
            lines.append(f"| {name} | {d['vs']} | {d['differing_logits']} | {d['logits_compared']} | "
                         f"{d['cublas_workspace_config']} | {d['verdict']} |")
    lines += ["", "## Not measured (and why)", ""]
    cut = [f"- {n['step']}: {n['status']} ({n.get('reason') or n.get('error', '')})"
           for n in rec["steps"] if n["status"] != "ok"]
    cut += [f"- {p}: bit-identical to the H0 stack, no curve (no test on outputs can separate them)"
            for p in rec.get("identical_pairs", [])]
    lines += cut or ["- nothing was cut"]
    lines += ["", "## Seconds per step", "", "| step | status | s (estimate) |", "|---|---|---|"]
    for n in rec["steps"]:
        est = f" ({n['estimate_s']:.1f})" if n.get("estimate_s") is not None else ""
        lines.append(f"| {n['step']} | {n['status']} | {n.get('seconds', 0):.1f}{est} |")
    return "\n".join(lines) + "\n"


def _probe_markdown(rec: dict[str, Any]) -> list[str]:
    pr = rec.get("probes") or {}
    lines = ["", "## Generated probes vs random prompts (equal budget)", "",
             f"**How trials are built:** {pr.get('method', '')}", ""]
    if not pr.get("pairs"):
        return lines + ["No probe comparison was measured (see Not measured).", ""]
    lines += ["| pair | T | pool | trials/label | top probe scores | pool median | argmax differs (T = 0) |",
              "|---|---|---|---|---|---|---|"]
    for p in pr["pairs"]:
        top = ", ".join(f"{x:.3g}" for x in p["probe_scores_top"][:4])
        lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {p['pool_prompts']} | "
                     f"{p['trials_per_label']} | {top} | {p['pool_score_quantiles']['median']:.3g} | "
                     f"{'-' if p['pool_prompts_whose_first_argmax_differs'] is None else p['pool_prompts_whose_first_argmax_differs']} |")
    lines += ["", "| pair | T | kind | q x tokens | LR acc | LR AUC | LR power | LR FPR | rank power | sync acc | "
              "sync power | control acc |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in pr["pairs"]:
        for kind in ("generated", "random"):
            for r in p[kind]:
                lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {kind} | {r['queries']} x "
                             f"{r['tokens_per_query']} | {r['lr_accuracy']:.3f} | {r['lr_auc']:.3f} | "
                             f"{r['lr_power']:.3f} | {r['lr_fpr']:.3f} | {r['rank_power']:.3f} | "
                             f"{r['seed_sync_accuracy']:.3f} | {r['seed_sync_power']:.3f} | "
                             f"{r['control_shuffled_accuracy']:.3f} |")
    lines += ["", "Calibration of both kinds (truth = H0 trials; generated: the fixed probe set, random: independent "
              "prompts):", "", "| pair | T | kind | q x tokens | trials | LR rej. | rank | sync | 99.9 % interval |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in pr["pairs"]:
        for kind, cals in p["calibration"].items():
            for c in cals:
                lines.append(f"| {p['pair'][0]} vs {p['pair'][1]} | {p['temperature']} | {kind} | {c['queries']} x "
                             f"{c['tokens_per_query']} | {c['trials']} | {c['lr_rejections']} | {c['rank_rejections']} | "
                             f"{c['seed_sync_rejections']} | {c['interval']} |")
    return lines


def _disjoint_cell(row: dict[str, Any]) -> str:
    d = row.get("disjoint")
    return f"{d['trials_per_label']}, {d['lr_accuracy']:.3f}, {d['seed_sync_accuracy']:.3f}" if d else "-"


def short_table(rec: dict[str, Any]) -> str:
    rows = [f"{'pair':<58} {'T':>4} {'rows':>5} {'bits':>7} {'LR q95':>7} {'sync q95':>8} {'LR@max':>7} "
            f"{'ctl':>5} {'FPR q1':>7}"]
    for p in rec["pairs"]:
        g = p["goal"]
        c1 = p["calibration"][0]
        rows.append(f"{p['pair'][0] + ' vs ' + p['pair'][1]:<58} {p['temperature']:>4} {p['pool_rows_per_label']:>5} "
                    f"{p['bits_differ_fraction']:>7.4f} {str(g['lr_first_q'] or '-'):>7} "
                    f"{str(g['seed_sync_first_q'] or '-'):>8} {g['lr_accuracy_at_max_q']:>7.3f} "
                    f"{p['curve'][-1]['control_shuffled_accuracy']:>5.2f} "
                    f"{c1['lr_rejections']:>3}/{c1['trials']:<3}")
    for n in rec["steps"]:
        if n["status"] != "ok":
            rows.append(f"{n['status']}: {n['step']} ({n.get('reason') or n.get('error', '')})")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    global START
    START = time.perf_counter()  # an importer that calls main() late (a test session) gets its whole budget
    ap = argparse.ArgumentParser(prog="python -m hspi_kernels.models.gpu_blackbox")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model", default="qwen2.5-0.5b", help="zoo model (tiny-llama for a CPU smoke test)")
    ap.add_argument("--std", type=float, default=None, help="weight std of the seeded model (default: the zoo's)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall budget of the whole job (model build included)")
    ap.add_argument("--reserve-s", type=float, default=8.0,
                    help="kept free at the end of the budget (the last curves and the final writes)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--rows", type=int, default=512, help="completions per pool (truth stack, T)")
    ap.add_argument("--block", type=int, default=512, help="rows per batched forward (a batched stack's batch)")
    ap.add_argument("--small-rows", type=int, default=32, help="completions per pool of the small block (q <= rows / 4)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--temperatures", default=",".join(map(str, TEMPERATURES)))
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--trials", type=int, default=200, help="resampled trials per truth label")
    ap.add_argument("--queries", default=",".join(map(str, QUERIES)))
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--stacks", default=None, help="comma list of stacks compared with --base (default: the axes)")
    ap.add_argument("--small-pairs", default=",".join(f"{a}:{b}" for a, b in SMALL_PAIRS),
                    help="A:B,C:D pairs measured on the small block ('' for none)")
    ap.add_argument("--probe-pool", type=int, default=2048, help="random prompts scored per batched probe pair")
    ap.add_argument("--probe-trials", type=int, default=32,
                    help="trials per truth label and kind of the batched probe pairs (rows: 2 x trials x q_max)")
    ap.add_argument("--probe-small-pool", type=int, default=256, help="prompts scored per small-block probe pair")
    ap.add_argument("--probe-small-trials", type=int, default=8, help="trials per label and kind, small-block pairs")
    ap.add_argument("--probe-queries", default=",".join(map(str, PROBE_QUERIES)))
    ap.add_argument("--probe-tokens", default=",".join(map(str, PROBE_TOKENS)), help="kept where <= --tokens")
    ap.add_argument("--probe-temperatures", default=",".join(map(str, PROBE_TEMPERATURES)))
    ap.add_argument("--probe-small-pairs", default=",".join(f"{a}:{b}" for a, b in PROBE_SMALL_PAIRS),
                    help="small-block A:B pairs probed (when measured and bit-distinct; '' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4,
                    help="processes for the curves (CPU statistics overlapped with the GPU pools); 0: inline")
    args = ap.parse_args(argv)
    import torch

    from hspi_kernels import platform as plat
    from hspi_kernels.models import zoo
    from hspi_kernels.platform.files import atomic_write_json, atomic_write_text

    out = args.out_dir
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # torch.use_deterministic_algorithms on CUDA refuses cuBLAS without this workspace setting, read
    # when the first cuBLAS handle gets its workspace: set for the whole run (every stack, det or
    # not, runs under the same workspace) before any CUDA work, unless the caller set it
    try:  # every stack name, pair and number parsed before any GPU work: a typo is a usage error
        listed = [args.base, *(args.stacks.split(",") if args.stacks else [s for v in AXES.values() for s in v])]
        wants_det = any(sampled.Stack.parse(x).det for x in listed if x)
        cublas_env = {"before": os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "set_by_job": False}
        if wants_det and device.startswith("cuda") and cublas_env["before"] is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = DET_WORKSPACE
            cublas_env["set_by_job"] = True
        cublas_env["value"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        temps = [float(t) for t in args.temperatures.split(",") if t]
        queries = sorted({int(q) for q in args.queries.split(",") if q})
        others = args.stacks.split(",") if args.stacks else [s for v in AXES.values() for s in v]
        others = [sampled.Stack.parse(s).name for s in others if s]
        base = sampled.Stack.parse(args.base).name
        small_pairs = [tuple(sampled.Stack.parse(x).name for x in p.split(":")) for p in args.small_pairs.split(",") if p]
        if any(len(p) != 2 for p in small_pairs):
            ap.error(f"--small-pairs: A:B pairs, got {args.small_pairs!r}")
        small_stacks = list(dict.fromkeys(c for p in small_pairs for c in p))
        spec = zoo.get_spec(args.model)
    except (ValueError, KeyError) as exc:
        ap.error(str(exc).strip("'\""))
    out.mkdir(parents=True, exist_ok=True)
    executor = None
    if args.workers > 0:  # started before the model build: the workers import while it builds
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"))
    if args.std is not None:
        spec = zoo.ModelSpec(f"{spec.name}-std{args.std}", spec.kind, spec.arch, dict(spec.config), std=args.std,
                             note=f"{spec.name} config, weight std {args.std}")
    try:
        meta = plat.collect()
    except Exception as exc:  # noqa: BLE001 - metadata must not stop the measurement
        meta = {"error": f"{type(exc).__name__}: {exc}"}
    dtypes = sorted({sampled.Stack.parse(x).dtype for x in [base, *others, *small_stacks]})
    rec: dict[str, Any] = {
        "schema": "hspi-blackbox-gpu/1", "platform": meta, "argv": sys.argv if argv is None else list(argv),
        "device": device, "model": spec.name, "model_spec": spec.to_json(), "model_seed": args.seed,
        "settings": {"budget_s": args.budget_s, "reserve_s": args.reserve_s, "rows": args.rows, "block": args.block, "small_rows": args.small_rows,
                     "small_pairs": [list(p) for p in small_pairs],
                     "dtype": "/".join(dtypes), "tokens": args.tokens, "prompt_len": args.prompt_len, "temperatures": temps, "top_p": args.top_p,
                     "trials": args.trials, "queries": queries, "alpha": ALPHA, "base": base,
                     "floor": 1e-3, "cublas_workspace_config": cublas_env},
        "sampler": "project sampler (sampled.py): float64 softmax(logits/T), top-p, inverse CDF with "
                   "numpy default_rng([seed, row]) uniforms; evaluated in torch float64 on the device",
        "method": ("per (truth stack, T) one pool of completions generated in batched decode while the paired "
                   "candidates replay the same prefixes in lockstep; curve trials are RESAMPLED from the pools "
                   "(each trial: q distinct pool rows at random, trials share rows, so accuracies are estimates "
                   "for prompts drawn from the pool and their spread across trials is understated); calibration "
                   "also on disjoint trials (each pool row once: independent, exact binomial interval)."),
        "stacks": {}, "bits": {}, "steps": [], "pairs": [], "identical_pairs": [], "timings": {},
        "deterministic_mode": {}, "probes": {"method": PROBE_METHOD, "pairs": []}}

    def save():
        rec["elapsed_s"] = round(elapsed(), 1)
        atomic_write_json(out / JSON_NAME, rec, allow_nan=True, default=_jsonable)
        atomic_write_text(out / MD_NAME, markdown(rec))

    def step(name: str, estimate: float | None, fn: Callable[[], Any]):
        if estimate is not None and elapsed() + estimate > args.budget_s - args.reserve_s:
            rec["steps"].append({"step": name, "status": "skipped", "estimate_s": estimate,
                                 "reason": f"time budget: {elapsed():.0f} s used, estimate {estimate:.0f} s, "
                                           f"budget {args.budget_s:.0f} s ({args.reserve_s:.0f} s reserved)"})
            print(f"[{elapsed():6.1f}s] skip {name} (estimate {estimate:.0f} s)", flush=True)
            save()
            return None
        t0 = time.perf_counter()
        try:
            res = fn()
            status: dict[str, Any] = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 - recorded, the job goes on
            res = None
            status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-2000:]}
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        status.update(step=name, seconds=round(time.perf_counter() - t0, 2), estimate_s=estimate)
        rec["steps"].append(status)
        print(f"[{elapsed():6.1f}s] {status['status']:>7} {name} {status['seconds']:.1f} s"
              f"{' est ' + format(estimate, '.1f') if estimate is not None else ''}"
              f"{' ' + status.get('error', '') if status['status'] != 'ok' else ''}", flush=True)
        save()
        return res

    # -- platforms -------------------------------------------------------------------------
    shared: dict = {}
    plats: dict[str, sampled.Platform] = {}

    def build():
        for name in dict.fromkeys([base, *others, *small_stacks]):
            try:
                pl = sampled.Platform(name, spec, args.seed, shared, device=device)
            except sampled.StackUnsupported as exc:
                rec["stacks"][name] = {"status": "skipped", "reason": str(exc)}
                print(f"[{elapsed():6.1f}s] skip stack {exc}", flush=True)
                continue
            try:  # a backend can still refuse these shapes at run time ("no available kernel")
                dec = pl.decoder(prompt_sets.random_tokens(2, args.prompt_len, pl.vocab, seed=1))
                dec.first()
                dec.step(np.array([3, 4]))
            except Exception as exc:  # noqa: BLE001 - recorded as a skip with the backend's words
                msg = " ".join(str(exc).split())[:300]
                rec["stacks"][name] = {"status": "skipped", "reason": f"{name}: refused at run time: "
                                                                      f"{type(exc).__name__}: {msg}"}
                print(f"[{elapsed():6.1f}s] skip stack {rec['stacks'][name]['reason']}", flush=True)
                continue
            plats[name] = pl
            rec["stacks"][name] = {"status": "ok"}
        return True

    if step("build model and stacks", None, build) is None or base not in plats:
        print(f"FATAL: the H0 stack {base} did not build", file=sys.stderr)
        save()
        return 2
    vocab = plats[base].vocab
    rec["vocab"] = vocab
    others = [s for s in others if s in plats and s != base]
    small_pairs = [p for p in small_pairs if all(c in plats for c in p)]
    small_stacks = list(dict.fromkeys(c for p in small_pairs for c in p))

    # -- bits --------------------------------------------------------------------------------
    big = [base, *others]
    rows = args.rows
    block = min(args.block, rows)
    bits_steps = 8
    pr_bits = prompt_sets.random_tokens(block, args.prompt_len, vocab, seed=_seed("bits", args.seed))
    tk_bits = np.random.default_rng(_seed("bits-tokens", args.seed)).integers(3, vocab, size=(block, bits_steps))
    bits = step("bits: batched stacks", None, lambda: bits_compare(plats, big, pr_bits, tk_bits))
    reps = [base]  # one stack per bit-class (the first listed), base first
    compiled = any(sampled.Stack.parse(s_).compile for s_ in big)
    if compiled:
        rec["dynamo"] = {"after_bits": dynamo_stats()}
    if bits is not None:
        rec["bits"]["batched"] = {k: v for k, v in bits.items() if k != "_differ"}

        def same(a, b):
            return bits["_differ"].get((a, b), bits["_differ"].get((b, a), 1)) == 0

        for s_ in others:
            twin = next((r for r in reps if same(r, s_)), None)
            if twin is None:
                reps.append(s_)
            else:
                rec["identical_pairs"].append(f"{twin} vs {s_}")
        for s_ in big:  # each deterministic-mode stack against the same stack without the mode
            st = sampled.Stack.parse(s_)
            if st.det:
                ref = dataclasses.replace(st, det=False).name
                n_diff = bits["_differ"].get((ref, s_), bits["_differ"].get((s_, ref))) if ref in big else None
                rec["deterministic_mode"][s_] = {
                    "vs": ref, "differing_logits": n_diff, "logits_compared": bits["logits_compared"],
                    "cublas_workspace_config": cublas_env["value"],
                    "verdict": ("not compared (the stack without the mode was not run)" if n_diff is None else
                                "bit-distinct from the default: a candidate of the pairs" if n_diff else
                                "bit-identical to the default on this device: no test on outputs can tell it apart")}
    micro = step("sampler timing", None, lambda: {t: sampler_seconds(plats[base], block, t, args.top_p)
                                                  for t in sorted(set(temps))})
    rec["timings"]["sampler"] = micro
    fwd = bits["decode_step_s"] if bits is not None else {}
    factor = [1.0]  # actual / estimated seconds of the passes so far (refines the estimates)

    def pass_estimate(names: Sequence[str], n_pairs: int, n_rows: int, blk: int, temperature: float,
                      step_s: dict[str, float], tokens: int | None = None) -> float:
        ms = (micro or {}).get(temperature, {"sampler_s": 0.05, "pair_s": 0.02})
        per_step = sum(step_s.get(c, 0.05) for c in names) + len(names) * ms["sampler_s"] + n_pairs * ms["pair_s"]
        # prefill ~ a few steps; copying the per-step fields back is small
        return factor[0] * ((tokens or args.tokens) + 3) * per_step * math.ceil(n_rows / blk) + 1.0

    pools: dict[tuple, dict] = {}  # (pair, T, label) -> fields
    differ_frac: dict[tuple, list] = {}
    post_s = [2.0]

    def run_pass(truth: str, pairs: list[tuple[str, str]], temperature: float, n_rows: int, blk: int,
                 step_s: dict[str, float]):
        names = sorted({c for p in pairs for c in p})
        est = pass_estimate(names, len(pairs), n_rows, blk, temperature, step_s)
        label = f"pool T={temperature} truth={truth} vs {', '.join(c for c in names if c != truth)} ({n_rows} rows)"
        pr = prompt_sets.random_tokens(n_rows, args.prompt_len, vocab, seed=_seed("prompts", truth, temperature, n_rows))
        t0 = time.perf_counter()
        collect_curves(wait=False)
        res = step(label, est, lambda: power.pool_pass(
            plats, truth, pairs, pr, args.tokens, temperature, args.top_p, seed=_seed("sampler", truth, temperature),
            block=blk, rand_seed=_seed("pit", truth, temperature)))
        if res is None:
            return False
        factor[0] = 0.5 * factor[0] + 0.5 * factor[0] * (time.perf_counter() - t0) / max(est - 1.0, 1e-3)
        for p, fields in res["pairs"].items():
            pools[(p, temperature, p.index(truth))] = fields
            differ_frac.setdefault((p, temperature), []).append(res["logits_differ"][p])
        return True

    def finish(pair: tuple[str, str], temperature: float):
        have = [(pair, temperature, lab) in pools for lab in (0, 1)]
        if not all(have):
            rec["steps"].append({"step": f"curves T={temperature} {pair[0]} vs {pair[1]}", "status": "skipped",
                                 "reason": "a pool of the pair was not measured (see its step)"})
            save()
            return
        kw = dict(trials=args.trials, queries=queries, tokens=args.tokens, seed=_seed("trials", *pair, temperature),
                  bits_differ=float(np.mean(differ_frac[(pair, temperature)])), top_p=args.top_p)
        pp = [pools[(pair, temperature, 0)], pools[(pair, temperature, 1)]]
        name = f"curves T={temperature} {pair[0]} vs {pair[1]}"
        if executor is not None:
            pending.append((name, time.perf_counter(), executor.submit(_timed_record, pair, temperature, pp, kw)))
            return
        t0 = time.perf_counter()
        r = step(name, post_s[0], lambda: resampled_record(pair, temperature, pp, **kw))
        post_s[0] = max(post_s[0], 1.2 * (time.perf_counter() - t0))
        if r is not None:
            rec["pairs"].append(r)
            save()

    pending: list = []

    def collect_curves(wait: bool):
        for item in list(pending):
            name, t_sub, fut = item
            if not (wait or fut.done()):
                continue
            pending.remove(item)
            try:
                r, secs = fut.result()
                rec["pairs"].append(r)
                rec["steps"].append({"step": name, "status": "ok", "seconds": round(secs, 2), "estimate_s": None,
                                     "where": "worker process (overlapped with the GPU)",
                                     "done_after_s": round(time.perf_counter() - t_sub, 2)})
            except Exception as exc:  # noqa: BLE001
                rec["steps"].append({"step": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            save()

    # -- the small block (small batches: GEMM and batch axes) ---------------------------------
    small: dict[str, Any] = {}

    def small_block(temperature: float):
        if not small_pairs or small.get("failed"):
            return
        n_small = args.small_rows
        if "pairs" not in small:
            n_bits = min(16, n_small)
            pr = prompt_sets.random_tokens(n_bits, args.prompt_len, vocab, seed=_seed("bits-small", args.seed))
            tk = np.random.default_rng(_seed("bits-small-tokens", args.seed)).integers(3, vocab, size=(n_bits, bits_steps))
            per_fwd = max(fwd.values(), default=0.05)  # a forward costs about the same at these batch sizes
            est = 2 * (bits_steps + 1) * per_fwd * sum(math.ceil(n_bits / plats[c].stack.chunk(n_bits))
                                                       for c in small_stacks)
            b = step(f"bits: small block ({', '.join(small_stacks)})", est,
                     lambda: bits_compare(plats, small_stacks, pr, tk))
            if b is None:
                small["failed"] = True
                return
            rec["bits"]["small block"] = {k: v for k, v in b.items() if k != "_differ"}
            small["pairs"] = []
            for a, c in small_pairs:
                n_diff = b["repeat_differing_logits"][a] if a == c else b["_differ"].get((a, c), b["_differ"].get((c, a)))
                if n_diff == 0:
                    rec["identical_pairs"].append(f"{a} vs {c}")
                else:
                    small["pairs"].append((a, c))
            # seconds per decode step over the pool's rows (measured on n_bits rows)
            small["step_s"] = {c: v * n_small / n_bits for c, v in b["decode_step_s"].items()}
        pairs = small["pairs"]
        for truth in dict.fromkeys(c for p in pairs for c in p):
            run_pass(truth, [p for p in pairs if truth in p], temperature, n_small, n_small, small["step_s"])
        for p in pairs:
            finish(p, temperature)

    # -- the schedule: T = 0.7 first (the goal): every pair of bit-distinct batched stacks (each
    # truth's pool replayed by all of them), then the small block; then T = 0, then T = 1 --------
    big_pairs = [(a, b) for i, a in enumerate(reps) for b in reps[i + 1:]]
    for temperature in temps:
        for truth in reps if big_pairs else []:
            run_pass(truth, [p for p in big_pairs if truth in p], temperature, rows, block, fwd)
        for p in big_pairs:
            finish(p, temperature)
        small_block(temperature)

    # -- probes: generated probes vs random prompts at equal budget (after the curves) -----------
    probe_temps = [float(t) for t in args.probe_temperatures.split(",") if t]
    p_queries = sorted({int(q) for q in args.probe_queries.split(",") if q})
    p_tokens = sorted({int(m) for m in args.probe_tokens.split(",") if m})
    p_qmax, p_kept = max(p_queries), [m for m in p_tokens if m <= args.tokens]
    p_small = {tuple(sampled.Stack.parse(x).name for x in pp.split(":")) for pp in args.probe_small_pairs.split(",") if pp}
    rec["probes"]["settings"] = {
        "temperatures": probe_temps, "queries": p_queries, "tokens": p_kept,
        "tokens_cut": [m for m in p_tokens if m not in p_kept], "alpha": ALPHA,
        "batched": {"pool_prompts": args.probe_pool, "trials_per_label": args.probe_trials, "block": block},
        "small block": {"pool_prompts": args.probe_small_pool, "trials_per_label": args.probe_small_trials}}
    groups = [("batched", big_pairs, args.probe_pool, args.probe_trials, block, fwd)]
    if small.get("pairs"):
        sp = [pp for pp in small["pairs"] if pp in p_small or pp[::-1] in p_small]
        n_sm = 2 * args.probe_small_trials * p_qmax  # one block: the b<N> stacks chunk it themselves
        groups.append(("small block", sp, args.probe_small_pool, args.probe_small_trials, n_sm,
                       {c: v * n_sm / args.small_rows for c, v in small["step_s"].items()}))

    def probe_group(group: str, pairs, n_pool: int, trials: int, blk: int, step_s: dict[str, float]):
        if not pairs or not p_kept or n_pool < 1:  # --probe-pool 0: no probe pass (the settings say so)
            return
        names = sorted({c for pp in pairs for c in pp})
        pool = prompt_sets.random_tokens(n_pool, args.prompt_len, vocab, seed=_seed("probe-pool", group, args.seed))
        n_blk = math.ceil(n_pool / blk)
        ms = (micro or {}).get(0.7, {"sampler_s": 0.05})
        est = factor[0] * n_blk * (sum(3 * step_s.get(c, 0.05) for c in names)
                                   + len(pairs) * len(probe_temps) * 3 * ms["sampler_s"]) + 1.0
        scores = step(f"probes: score {n_pool} pool prompts ({group}: {len(pairs)} pairs x T {probe_temps})", est,
                      lambda: score_pool(plats, pairs, pool, probe_temps, args.top_p, blk))
        if scores is None:
            return
        for temperature in probe_temps:
            for pp in pairs:
                pair = tuple(pp)
                sc = scores[(pair, temperature)]
                rnd = prompt_sets.random_tokens(trials * p_qmax, args.prompt_len, vocab,
                                                seed=_seed("probe-random", *pair, temperature, args.seed))
                rows_, chosen = probe_prompts(sc, pool, rnd, trials, p_qmax)
                passes = []
                for truth in pair:
                    est = pass_estimate(list(pair), 1, rows_.shape[0], blk, temperature, step_s, max(p_kept))
                    collect_curves(wait=False)
                    res = step(f"probes T={temperature} truth={truth} {pair[0]} vs {pair[1]} ({rows_.shape[0]} rows)",
                               est, lambda truth=truth: power.pool_pass(
                                   plats, truth, [pair], rows_, max(p_kept), temperature, args.top_p,
                                   seed=_seed("probe-sampler", *pair, temperature, truth), block=blk,
                                   rand_seed=_seed("probe-pit", *pair, temperature, truth)))
                    if res is None:
                        break
                    passes.append(res)
                if len(passes) < 2:
                    continue
                r = step(f"probes curves T={temperature} {pair[0]} vs {pair[1]}", post_s[0], lambda: probe_record(
                    pair, temperature, passes, sc, chosen, trials=trials, queries=p_queries, tokens=p_kept,
                    top_p=args.top_p, seed=_seed("probe-trials", *pair, temperature)))
                if r is not None:
                    r.update(group=group, score_block=blk, pass_block=blk)
                    rec["probes"]["pairs"].append(r)
                    save()

    for g in groups:
        probe_group(*g)
    if executor is not None:
        t0 = time.perf_counter()
        collect_curves(wait=True)
        executor.shutdown()
        rec["waited_for_curves_s"] = round(time.perf_counter() - t0, 2)
    rec["pairs"].sort(key=lambda p: (temps.index(p["temperature"]), p["pool_rows_per_label"] < rows))
    if compiled:
        rec["dynamo"]["end"] = dynamo_stats()
    rec["total_s"] = round(elapsed(), 1)
    save()
    print(f"done in {elapsed():.1f} s: {out / JSON_NAME}, {out / MD_NAME}", flush=True)
    print(short_table(rec), flush=True)
    return 0 if rec["pairs"] or not (big_pairs or small.get("pairs")) else 1


if __name__ == "__main__":
    sys.exit(main())
