"""Supplementary single-GPU analysis of an H100 model collection (pairwise white-box on held-out
prompts, pairwise black-box top-k, 6-class HSPI-LD fit time). Usage:
    python docs/results/models/extra_h100.py /tmp/models_h100/llama.npz OUT.json
"""
import itertools, json, sys, time
import numpy as np
from hspi_kernels.models import collect as mc, hspi_ld, matching

path, out = sys.argv[1], sys.argv[2]
runs = mc.load(path).runs()
model = runs[0].model
by = {v.label: v for v in runs}
n = runs[0].get("digest_logits").shape[0]
rng = np.random.default_rng(0)
perm = rng.permutation(n)
test = np.sort(perm[: n // 2])  # same held-out half as hspi_ld.classify(seed=0, test_fraction=0.5)
rep = {"model": model, "source": path, "n_prompts": int(n), "held_out_prompts": int(len(test))}

# ---- white-box per pair of distinct lattice classes, on held-out prompts only ----------
lat = hspi_ld.lattice(runs)
reps = [g[0] for g in lat]
pairs = []
for a, b in itertools.combinations(reps, 2):
    va, vb = by[a], by[b]
    da, db = va.get("digest_logits")[test], vb.get("digest_logits")[test]
    diff = da != db
    # observation = the repeat execution (rep_*) of the hidden run; identification succeeds on a
    # prompt when the observed digest equals its own reference and differs from the other's
    ok = []
    for hid, oth in ((va, vb), (vb, va)):
        obs = hid.get("rep_digest_logits")[test] if hid.has("rep_digest_logits") else hid.get("digest_logits")[test]
        ok.append((obs == hid.get("digest_logits")[test]) & (obs != oth.get("digest_logits")[test]))
    one_q = float(np.mean(np.concatenate(ok)))
    pairs.append({"a": a, "b": b, "frac_prompts_differing": round(float(diff.mean()), 4),
                  "acc_1_query": round(one_q, 4), "acc_all_heldout": float(all(o.any() for o in ok))})
rep["whitebox_pairs"] = {
    "n_pairs": len(pairs),
    "pairs_100pct_with_all_heldout": int(sum(p["acc_all_heldout"] == 1.0 for p in pairs)),
    "min_frac_prompts_differing": min(p["frac_prompts_differing"] for p in pairs),
    "min_acc_1_query": min(p["acc_1_query"] for p in pairs),
    "pairs_below_100pct_1_query": [p for p in pairs if p["acc_1_query"] < 1.0],
    "pairs": pairs}

# ---- black-box top-20, <=32 queries, between pairs available on one GPU ----------------
bb_pairs = [("H100/bf16.sdpa.torch.b1", "H100/fp16.sdpa.torch.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.torch.b8"),
            ("H100/fp16.sdpa.torch.b1", "H100/fp16.sdpa.torch.b8"),
            ("H100/fp32.sdpa.torch.b1", "H100/fp32.sdpa.torch.b8"),
            ("H100/fp32.sdpa.torch.b1", "H100/tf32.sdpa.torch.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.torch.b4"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.eager.torch.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa-flash.torch.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa-math.torch.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.fixed.b1"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.torch.b1.compile"),
            ("H100/bf16.sdpa.torch.b8", "H100/bf16.sdpa.torch.b8.compile"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.torch.b1.fp8"),
            ("H100/bf16.sdpa.torch.b1", "H100/bf16.sdpa.torch.b1.int8"),
            ("H100/fp32.sdpa.torch.b8", "CPU/fp32.sdpa.torch.b8"),
            ("H100/bf16.sdpa.torch.b8", "CPU/bf16.sdpa.torch.b8"),
            ("H100/bf16.sdpa.torch.b8", "H100/bf16.sdpa.fixed.b8")]
bb = {}
for a, b in bb_pairs:
    if a not in by or b not in by:
        continue
    bb[f"{a} vs {b}"] = {str(q): {k: r[k] for k in ("accuracy", "per_candidate")}
                         for q in (1, 4, 32)
                         for r in [matching.blackbox_accuracy([by[a], by[b]], queries=q, k=20, trials=100)]}
rep["blackbox_pairs_top20"] = bb
# the same pairs when the API rounds log-probs to a few decimals (OpenAI-style clients often see 4-6)
bbr = {}
for dec in (6, 4, 2):
    for a, b in bb_pairs:
        if a in by and b in by:
            r = matching.blackbox_accuracy([by[a], by[b]], queries=32, k=20, decimals=dec, trials=100)
            bbr.setdefault(f"decimals={dec}", {})[f"{a} vs {b}"] = r["accuracy"]
rep["blackbox_pairs_top20_rounded_q32"] = bbr

# ---- 6-class HSPI-LD fit time ----------------------------------------------------------
six = [l for l in ("H100/fp32.sdpa.torch.b1", "H100/tf32.sdpa.torch.b1", "H100/bf16.sdpa.torch.b1",
                   "H100/fp16.sdpa.torch.b1", "H100/bf16.eager.torch.b1", "H100/bf16.sdpa.torch.b1.compile")
       if l in by]
if len(six) < 6:
    six = [g[0] for g in lat][:6]
fits = {}
for r, d in (("paper", 64), ("paper", 256), ("native", 64)):
    for sh in (False, True):
        t0 = time.perf_counter()
        res = hspi_ld.classify([by[l] for l in six], r, d=d, shuffle_labels=sh, all_runs=runs)
        fits[f"{r}|d={d}" + ("|shuffled" if sh else "")] = {
            "classes": len(res.classes), "accuracy": round(res.accuracy, 4), "chance": round(res.chance, 4),
            "fit_s": round(res.fit_s, 3), "total_s": round(time.perf_counter() - t0, 3),
            "n_train": res.n_train, "n_test": res.n_test, "confusion": res.confusion}
rep["six_class"] = {"runs": six, "results": fits}
json.dump(rep, open(out, "w"), indent=1)
print(json.dumps({"wb": {k: v for k, v in rep["whitebox_pairs"].items() if k != "pairs"},
                  "bb32": {k: v["32"]["accuracy"] for k, v in bb.items()},
                  "bb1": {k: v["1"]["accuracy"] for k, v in bb.items()}, "bbr": bbr,
                  "six": {k: (v["accuracy"], v["chance"], v["fit_s"]) for k, v in fits.items()}}, indent=1))
