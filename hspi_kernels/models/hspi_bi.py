"""HSPI-BI: border inputs, whose top-1 output differs between two EQCs.

LLM (token search). The verifier knows the model, so a surrogate run (fp32, or fp64 on the GPU)
is free; only executions under the two EQCs count as queries (one per sequence per EQC).
1. a seeded pool of random sequences is scored by the surrogate's top-1/top-2 logit margin;
2. the lowest-margin sequences are hill-climbed on the surrogate (replace one token, keep the
   change when the margin shrinks): the output sits ever closer to the decision border;
3. candidates are queried under both EQCs in margin order, ``batch`` at a time, until the query
   budget is spent; a border input is one whose greedy next token differs.
Vision (as in the paper): PGD on the surrogate minimising (z_top1 − z_top2)² within an L∞ ball,
then the same querying.

Reported: success (≥ 1 border input within the budget), border inputs found, queries per border
input, and transfer (the fraction of border inputs of one pair that also separate another pair).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from hspi_kernels.models import prompts
from hspi_kernels.models.eqc import EQC

__all__ = ["surrogate_margins", "llm_candidates", "vision_candidates", "query_border", "border_search"]


def surrogate_margins(runner, inputs: np.ndarray, surrogate: EQC) -> np.ndarray:
    """top1 − top2 logit (float64) of each input under the surrogate EQC."""
    logits = runner.logits(surrogate, inputs).double()
    top2 = logits.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]).cpu().numpy()


def llm_candidates(runner, surrogate: EQC, n_pool: int = 256, length: int = 16, n_keep: int = 32,
                   rounds: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sequences [n_keep, length], surrogate margins) sorted by margin, smallest first."""
    rng = np.random.default_rng([seed, 11])
    pool = rng.integers(3, runner.out_dim, size=(n_pool, length)).astype(np.int32)
    margins = surrogate_margins(runner, pool, surrogate)
    order = np.argsort(margins)[:n_keep]
    seqs, best = pool[order].copy(), margins[order].copy()
    for _ in range(rounds):
        trial = seqs.copy()
        pos = rng.integers(0, length - 1, size=len(trial))  # keep the last token: it sets the context
        trial[np.arange(len(trial)), pos] = rng.integers(3, runner.out_dim, size=len(trial))
        m = surrogate_margins(runner, trial, surrogate)
        better = m < best
        seqs[better], best[better] = trial[better], m[better]
    order = np.argsort(best)
    return seqs[order], best[order]


def vision_candidates(runner, surrogate: EQC, n: int = 16, steps: int = 40, eps: float = 0.5,
                      step_size: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PGD (L∞, sign steps) on the surrogate towards equal top-2 logits; sorted by margin."""
    import torch

    model = runner.model_for(surrogate)
    dtype = getattr(torch, surrogate.torch_dtype_name)
    x0 = torch.from_numpy(prompts.images(n, runner.meta["image_size"], seed + 101)).to(runner.device, dtype)
    with torch.no_grad():
        cls = model(x0).topk(2, dim=-1).indices
    x = x0.clone()
    rows = torch.arange(n, device=x.device)
    for _ in range(steps):
        x.requires_grad_(True)
        z = model(x)
        loss = ((z[rows, cls[:, 0]] - z[rows, cls[:, 1]]) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - step_size * grad.sign()
            x = (x0 + (x - x0).clamp(-eps, eps)).detach()
    xs = x.float().cpu().numpy()
    margins = surrogate_margins(runner, xs, surrogate)
    order = np.argsort(margins)
    return xs[order], margins[order]


def query_border(greedy_a: Callable[[np.ndarray], np.ndarray], greedy_b: Callable[[np.ndarray], np.ndarray],
                 candidates: np.ndarray, budget: int = 64, batch: int = 8) -> dict[str, Any]:
    """Query candidates under EQC a and b in order until ``budget`` queries (sequences × 2) are spent."""
    found, queries, first_at = [], 0, None
    top_a, top_b = [], []
    for start in range(0, len(candidates), batch):
        if queries + 2 * min(batch, len(candidates) - start) > budget:
            break
        chunk = candidates[start:start + batch]
        a, b = greedy_a(chunk), greedy_b(chunk)
        queries += 2 * len(chunk)
        top_a.append(a)
        top_b.append(b)
        for i in np.nonzero(a != b)[0]:
            found.append(start + int(i))
            if first_at is None:
                first_at = queries - 2 * len(chunk) + 2 * (int(i) + 1)
    n = len(found)
    return {"success": n > 0, "found": found, "n_found": n, "queries": queries,
            "queries_per_border": (queries / n) if n else None, "queries_to_first": first_at,
            "top1_a": np.concatenate(top_a).tolist() if top_a else [],
            "top1_b": np.concatenate(top_b).tolist() if top_b else []}


def border_search(runner, eqc_a: EQC, eqc_b: EQC, *, surrogate: EQC | None = None, budget: int = 64,
                  batch: int = 8, length: int = 16, seed: int = 0, **search_kw) -> dict[str, Any]:
    """Search border inputs between two EQCs of one runner; the result holds the inputs."""
    surrogate = surrogate or EQC(dtype="fp32", attn="sdpa-math" if runner.kind == "llm" else "sdpa", batch=64)
    if runner.kind == "llm":
        cands, margins = llm_candidates(runner, surrogate, length=length, seed=seed, **search_kw)
    else:
        cands, margins = vision_candidates(runner, surrogate, seed=seed, **search_kw)
    res = query_border(lambda x: runner.greedy(eqc_a, x), lambda x: runner.greedy(eqc_b, x), cands, budget, batch)
    res.update(a=eqc_a.name, b=eqc_b.name, surrogate=surrogate.name,
               margins=margins[: len(res["top1_a"])].tolist(), inputs=cands[: len(res["top1_a"])])
    return res


def transfer(border_inputs: np.ndarray, greedy_c: Callable, greedy_d: Callable) -> float:
    """Fraction of border inputs (of some pair) whose top-1 also differs between EQCs c and d."""
    if len(border_inputs) == 0:
        return float("nan")
    return float(np.mean(greedy_c(border_inputs) != greedy_d(border_inputs)))
