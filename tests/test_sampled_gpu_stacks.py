"""GPU serving-stack candidates of sampled-text identification, checked on the CPU (issue 21):
the new Stack tokens (attention backend, b<N> batches), the refusal of stacks the machine cannot
run, the torch sampler and per-step statistics against the numpy reference, the KV-cache decode
against a full forward, the pool resampling, and the GPU driver end to end on the tiny model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hspi_kernels.models import gpu_blackbox, power, prompts, sampled  # noqa: E402

A, M = "fp32.torch.batched", "fp32.sdpa-math.torch.batched"


@pytest.fixture(scope="module")
def plats():
    return sampled.candidates([A, M, "fp32.torch.rowwise"])


# -- stacks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["fp32.torch.batched", "bf16.sdpa-math.torch.batched", "bf16.sdpa-flash.fixed.b8",
                                  "bf16.sdpa-efficient.torch.rowwise", "fp32.sdpa-cudnn.fixed.b1.ulp-2",
                                  "bf16.eager.torch.b64.ulp+1", "bf16.torch.batched.det",
                                  "fp32.sdpa-math.fixed.b8.det.ulp+1"])
def test_stack_name_round_trip(text):
    s = sampled.Stack.parse(text)
    assert sampled.Stack.parse(s.name) == s
    assert s.name == text  # canonical order: dtype, attention (if not the default), gemm, batch, ulp


def test_stack_tokens_parse_in_any_order():
    s = sampled.Stack.parse("b8.sdpa-flash.bf16")
    assert (s.dtype, s.attn, s.gemm, s.batch) == ("bf16", "sdpa-flash", "torch", "b8")
    assert sampled.Stack.parse("bf16.sdpa.torch.batched").name == "bf16.torch.batched"  # default attention omitted
    assert sampled.Stack().name == "fp32.torch.batched"
    assert sampled.Stack.parse("det.bf16").det and not sampled.Stack.parse("bf16").det
    assert [sampled.Stack.parse(t).chunk(20) for t in ("fp32.batched", "fp32.rowwise", "fp32.b8")] == [20, 1, 8]
    for bad in ("fp32.b0", "fp32.sdpa-fast", "fp32.ulpx", "fp16", "fp32.bx"):
        with pytest.raises(ValueError):
            sampled.Stack.parse(bad)


@pytest.mark.parametrize("text,word", [("bf16.sdpa-cudnn.torch.batched", "sdpa-cudnn"),
                                       ("bf16.sdpa-efficient.torch.batched", "sdpa-efficient"),
                                       ("bf16.fixed.batched", "fp32")])
def test_stack_the_cpu_cannot_run_is_refused_with_a_message(text, word):
    reason = sampled.unsupported_reason(text, "cpu")
    assert reason and word in reason and text in reason
    with pytest.raises(sampled.StackUnsupported, match=word):
        sampled.Platform(text, device="cpu")


def test_cpu_runnable_stacks_are_accepted():
    for text in (A, M, "fp32.sdpa-flash.torch.b4", "fp32.fixed.rowwise", "bf16.eager.torch.batched"):
        assert sampled.unsupported_reason(text, "cpu") is None, text


def test_deterministic_mode_stack_runs_and_restores_the_global_mode():
    """``det``: the forward under torch.use_deterministic_algorithms(True), the previous mode back
    afterwards; on the CPU its logits are the default's bit for bit (a CPU cannot tell it apart)."""
    plats = sampled.candidates([A, A + ".det"])
    pr = prompts.random_tokens(4, 6, 512, seed=3)
    tok = np.random.default_rng(1).integers(3, 512, size=(4, 3))
    seen = []
    orig = torch.use_deterministic_algorithms

    def spy(mode, **kw):
        seen.append(mode)
        return orig(mode, **kw)

    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms = spy
        det = plats[A + ".det"].replay(pr, tok)
    finally:
        torch.use_deterministic_algorithms = orig
    assert seen and seen[0] is True and torch.are_deterministic_algorithms_enabled() == before
    assert np.array_equal(det.view(np.uint32), plats[A].replay(pr, tok).view(np.uint32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_asked_without_cuda_is_refused():
    reason = sampled.unsupported_reason("bf16.torch.batched", "cuda")
    assert reason and "CUDA is not available" in reason


# -- sampler and statistics in torch -----------------------------------------------------------
@pytest.mark.parametrize("temperature,top_p", [(0.0, 0.9), (0.7, 0.9), (1.0, 0.9), (0.7, 1.0)])
def test_torch_sampler_is_the_numpy_sampler(temperature, top_p):
    rng = np.random.default_rng(3)
    lo = (rng.standard_normal((40, 300)) * 2.5).astype(np.float32)
    lo[:10, 7] = lo[:10, 3] = lo[:10].max(-1)  # ties at the top: lowest id first
    p = sampled.sampling_probs(lo, temperature, top_p)
    pt = sampled.sampling_probs_torch(torch.from_numpy(lo), temperature, top_p).numpy()
    assert np.array_equal(p > 0, pt > 0)
    assert np.abs(p - pt).max() < 1e-12
    u = rng.random(40)
    ref = sampled.draw(p, u)
    assert np.array_equal(ref, sampled.draw_torch(torch.from_numpy(pt), torch.from_numpy(u)).numpy())
    p2, ps, order = sampled.sampling_probs_torch(torch.from_numpy(lo), temperature, top_p, with_order=True)
    assert torch.equal(p2, torch.from_numpy(pt))
    assert np.array_equal(ref, sampled.draw_torch(p2, torch.from_numpy(u), ps, order).numpy())  # no second sort


def test_step_arrays_torch_match_the_numpy_definitions():
    rng = np.random.default_rng(5)
    b, v, floor = 30, 200, 1e-3
    la = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    lb = la + (rng.standard_normal((b, v)) * 1.5).astype(np.float32)  # different enough: some x outside top-p of A
    pa, pb = sampled.sampling_probs(la, 0.7, 0.9), sampled.sampling_probs(lb, 0.7, 0.9)
    u = rng.random(b)
    x = sampled.draw(pb, u)  # B generated: some tokens may be impossible under A
    sa, sb = sampled.draw(pa, u), x
    u1, u2 = rng.random(b), rng.random(b)
    t = {k: torch.from_numpy(np.asarray(a)) for k, a in dict(pa=pa, pb=pb, x=x, sa=sa, sb=sb, u1=u1, u2=u2).items()}
    r = {k: val.numpy() for k, val in power.step_arrays_torch(t["pa"], t["pb"], t["x"], t["sa"], t["sb"],
                                                              t["u1"], t["u2"], floor).items()}
    qa, qb = (1 - floor) * pa + floor / v, (1 - floor) * pb + floor / v
    d_all = np.log(qb) - np.log(qa)
    d = d_all[np.arange(b), x]
    mu = (pa * d_all).sum(-1)
    assert np.allclose(r["d"], d, rtol=0, atol=1e-12)
    assert np.allclose(r["mu"], mu, rtol=0, atol=1e-10)
    assert np.allclose(r["var"], np.maximum((pa * d_all ** 2).sum(-1) - mu ** 2, 0), rtol=0, atol=1e-9)
    pa_x = pa[np.arange(b), x]
    assert np.array_equal(r["impossible"], pa_x == 0) and r["impossible"].any()
    # the rank PIT: mass of the tokens before x in A's order (probability, then token id)
    order = np.argsort(-pa, axis=-1, kind="stable")
    before = np.array([pa[i, order[i, :list(order[i]).index(x[i])]].sum() for i in range(b)])
    assert np.allclose(r["pit"], np.clip(before + u1 * pa_x, 0, 1), rtol=0, atol=1e-12)
    gt = (pa * (d_all > d[:, None])).sum(-1)
    eq = (pa * (d_all == d[:, None])).sum(-1)
    assert np.allclose(r["vpit"], np.clip(gt + u2 * eq, 0, 1), rtol=0, atol=1e-12)
    assert np.array_equal(r["dis_a"], sa != x) and not r["dis_b"].any()


def test_vectorised_ks_is_scipy_kstest():
    from scipy import stats

    rng = np.random.default_rng(8)
    for n in (1, 7, 64, 500):
        u = rng.random((30, n)) ** rng.uniform(0.7, 1.3, size=(30, 1))  # some rows far from uniform
        ref = np.array([stats.kstest(r, "uniform").pvalue for r in u])
        assert np.allclose(power.ks_uniform_pvalues(u), ref, rtol=1e-12, atol=1e-300)


# -- the decode loop ---------------------------------------------------------------------------
def test_kv_cache_decode_is_the_full_forward(plats):
    """Every decode step's logits equal (to rounding) a full forward over prompt + prefix: the
    KV cache is really passed (a cache keyword the model ignores would decode without context)."""
    pr = prompts.random_tokens(3, 6, 512, seed=41)
    tok = np.random.default_rng(2).integers(3, 512, size=(3, 5))
    lo = plats[A].replay(pr, tok)
    model = plats[A].model
    with torch.inference_mode():
        for t in range(5):
            full = np.concatenate([pr, tok[:, :t]], 1).astype(np.int64)
            ref = model(torch.from_numpy(full)).logits[:, -1].float().numpy()
            assert np.allclose(lo[:, t], ref, atol=1e-4, rtol=1e-4), t
    other = np.random.default_rng(9).integers(3, 512, size=(3, 1))
    changed = plats[A].replay(pr, np.concatenate([other, tok[:, 1:]], 1))
    assert not np.allclose(changed[:, 1], lo[:, 1], atol=1e-3)  # the context matters


def test_pool_pass_is_generation_plus_replay(plats):
    """A pool in blocks of 8 rows (a batched stack's batch is one block) = the Platform's own
    generation and replays of each block."""
    pr = prompts.random_tokens(12, 8, 512, seed=43)
    res = power.pool_pass({A: plats[A], M: plats[M]}, A, [(A, M)], pr, 10, 0.7, 0.9, seed=5, block=8, rand_seed=1)
    tok = res["tokens"]
    u = sampled.uniforms(5, 12, 10)
    blocks = (slice(0, 8), slice(8, 12))
    gen = np.zeros_like(tok)
    for sl in blocks:  # numpy sampler on the block's logits, the same uniforms of rows r
        gen[sl] = plats[A]._decode(pr[sl], 10, lambda t, lo, sl=sl: sampled.draw(sampled.sampling_probs(lo, 0.7),
                                                                                  u[sl, t]))[0]
    assert (tok == gen).mean() > 0.99  # torch vs numpy float64 sums: a draw at an exact tie may differ
    f = res["pairs"][(A, M)]
    assert not f["dis_a"].any() and not f["impossible"].any()  # truth = H0: never refuted, seed sync exact
    la = np.concatenate([plats[A].replay(pr[sl], tok[sl]) for sl in blocks])
    lm = np.concatenate([plats[M].replay(pr[sl], tok[sl]) for sl in blocks])
    da, dm = sampled.sampling_probs(la, 0.7), sampled.sampling_probs(lm, 0.7)
    floor = 1e-3
    d_ref = np.log(((1 - floor) * dm + floor / 512) / ((1 - floor) * da + floor / 512))
    d_ref = np.take_along_axis(d_ref, tok[..., None], -1)[..., 0]
    assert np.allclose(f["d"], d_ref, atol=1e-9)
    assert res["logits_differ"][(A, M)] == pytest.approx((la.view(np.uint32) != lm.view(np.uint32)).mean())
    # the block is the batch: replaying all 12 rows together gives other bits
    assert not np.array_equal(plats[A].replay(pr, tok), la)


def test_pool_resampling_and_disjoint_trials():
    rng = np.random.default_rng(0)
    n, m = 40, 6
    pools = []
    for label in (0, 1):
        pool = {f: rng.random((n, m)) for f in power.FIELDS}
        for f in ("impossible", "dis_a", "dis_b"):
            pool[f] = np.zeros((n, m), bool)
        pool["d"] = np.repeat(np.arange(n, dtype=float)[:, None] + 1000 * label, m, 1)  # row id in the value
        pools.append(pool)
    sim = power.pooled_simulation(("a", "b"), 0.7, pools, trials=25, queries=5, seed=1)
    assert sim.d.shape == (2, 25, 5, m)
    for label in (0, 1):
        rows = sim.d[label, :, :, 0] - 1000 * label
        assert np.array_equal(rows, sim.rows[label])
        assert all(len(set(r)) == 5 for r in rows.astype(int))  # distinct rows inside a trial
        assert rows.min() >= 0 and rows.max() < n
        assert len({tuple(r) for r in rows.astype(int)}) > 20  # trials are drawn independently
    dis = power.pooled_simulation(("a", "b"), 0.7, pools, trials=0, queries=3, seed=2, disjoint=True)
    assert dis.trials == n // 3
    for label in (0, 1):
        used = (dis.d[label, :, :, 0] - 1000 * label).astype(int).reshape(-1)
        assert len(set(used)) == used.size == 3 * (n // 3)  # every row at most once
    with pytest.raises(ValueError):
        power.pooled_simulation(("a", "b"), 0.7, pools, trials=2, queries=n + 1)


# -- generated probes --------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_probe_scores_torch_is_power_probe_scores(temperature):
    """The driver's device-side scores are power.probe_scores (same definition, torch float64)."""
    u = "fp32.torch.batched.ulp+1"
    pl = sampled.candidates([A, u])
    pool = prompts.random_tokens(24, 8, 512, seed=11)
    ref = power.probe_scores((A, u), pool, temperature, platforms=pl)
    got = gpu_blackbox.score_pool(pl, [(A, u)], pool, [temperature], 0.9, block=24)[((A, u), temperature)]
    assert np.allclose(got, ref, rtol=1e-9, atol=1e-12)
    assert np.array_equal(np.argsort(-got, kind="stable")[:4], np.argsort(-ref, kind="stable")[:4])


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_probe_selection_on_identical_stacks_stays_at_the_level(plats, temperature):
    """Negative control: truth = H0 = the other candidate (A vs A). Whatever the probe selection
    picks, no test may reject more often than the level allows: at every budget of both kinds the
    LR and rank rejection counts (truth label 1 = A again: its "power" is a false-positive rate)
    stay inside the 99.9 % binomial interval of 100 trials at alpha, and seed sync never rejects."""
    trials, q = 100, 8
    pool = prompts.random_tokens(64, 8, 512, seed=21)
    scores = gpu_blackbox.score_pool(plats, [(A, A)], pool, [temperature], 0.9, block=64)[((A, A), temperature)]
    rnd = prompts.random_tokens(trials * q, 8, 512, seed=22)
    rows, chosen = gpu_blackbox.probe_prompts(scores, pool, rnd, trials, q)
    assert np.array_equal(rows[:q], pool[chosen]) and np.array_equal(rows[q:2 * q], pool[chosen])  # fixed set
    assert np.array_equal(rows[trials * q:], rnd)
    passes = [power.pool_pass(plats, A, [(A, A)], rows, 8, temperature, 0.9, seed=s, block=400, rand_seed=s)
              for s in (1, 2)]
    rec = gpu_blackbox.probe_record((A, A), temperature, passes, scores, chosen, trials=trials, queries=[1, 2, 4, 8],
                                    tokens=[1, 8], top_p=0.9, seed=3)
    assert rec["probe_scores_top"] == sorted(rec["probe_scores_top"], reverse=True)
    _, hi = power.binomial_interval(trials, gpu_blackbox.ALPHA)
    for kind in ("generated", "random"):
        assert [(r["queries"], r["tokens_per_query"]) for r in rec[kind]] == [(a, b) for a in (1, 2, 4, 8) for b in (1, 8)]
        for r in rec[kind]:
            for key in ("lr_power", "lr_fpr", "rank_power", "rank_fpr"):
                assert round(r[key] * trials) <= hi, (kind, key, r)
            assert r["seed_sync_power"] == 0 and r["seed_sync_fpr"] == 0
        for c in rec["calibration"][kind]:
            assert c["lr_rejections"] <= c["interval"][1] and c["seed_sync_rejections"] == 0


def test_steady_step_seconds_keeps_compile_warmup_out_of_the_estimate():
    # a compiled stack: prefill, then two recompiling calls (dynamo: growing cache), then steady
    # 0.05 s steps; an eager stack steady at 0.06 s. The estimate of a 64-token pool uses the steady
    # step: the mean (the old estimate: 11.2 s a step on the H200, a 781 s pool) must not be it.
    comp = [30.0, 40.0, 20.0, 0.05, 0.05, 0.051, 0.049, 0.05]
    eager = [0.2, 0.06, 0.06, 0.061, 0.059, 0.06, 0.06, 0.06]
    secs = {("c", 0): comp, ("c", 1): [0.2, *comp[3:], 0.05, 0.05], ("e", 0): eager, ("e", 1): eager}
    steady, warm = gpu_blackbox.steady_step_seconds(secs, ["c", "e"])
    assert steady["c"] == pytest.approx(0.05) and steady["e"] == pytest.approx(0.06)
    mean_c = sum(x for k, v in secs.items() if k[0] == "c" for x in v[1:]) / sum(len(v) - 1 for k, v in secs.items() if k[0] == "c")
    assert mean_c > 50 * steady["c"]  # negative control: the mean is dominated by the compile
    assert warm["c"] == pytest.approx(30 + 40 + 20 + 0.2 - 4 * 0.05, abs=0.01) and warm["e"] < 0.5


def test_dynamo_stats_is_a_record_not_a_crash():
    got = gpu_blackbox.dynamo_stats()
    assert isinstance(got, dict) and all(isinstance(v, dict) for v in got.values() if not isinstance(v, str))


# -- the driver ---------------------------------------------------------------------------------
def _run(tmp_path, capsys, *extra):
    out = tmp_path / "o"
    rc = gpu_blackbox.main([str(out), "--model", "tiny-llama", "--std", "0.3", "--device", "cpu", "--rows", "48",
                            "--block", "48", "--small-rows", "8", "--tokens", "8", "--trials", "60",
                            "--queries", "1,2,4,8,12", "--base", A,
                            "--small-pairs", f"fp32.torch.b4:fp32.torch.rowwise,fp32.torch.b4:fp32.fixed.b4,{A}:{A}",
                            "--probe-pool", "96", "--probe-trials", "3", "--probe-small-pool", "16",
                            "--probe-small-trials", "1", "--probe-small-pairs", "fp32.torch.b4:fp32.fixed.b4",
                            *extra])
    text = capsys.readouterr().out
    return rc, json.loads((out / gpu_blackbox.JSON_NAME).read_text()), (out / gpu_blackbox.MD_NAME).read_text(), text


def test_driver_on_the_tiny_cpu_model(tmp_path, capsys, plats, monkeypatch):
    # as if the module had been imported 1000 s before main() (a long test session): the budget
    # counts from main()'s start (it once counted from the import and cut every step)
    monkeypatch.setattr(gpu_blackbox, "START", time.perf_counter() - 1000.0)
    stacks = f"{M},bf16.sdpa-cudnn.torch.batched,{A}.det"
    rc, rec, md, text = _run(tmp_path, capsys, "--temperatures", "0.7", "--stacks", stacks, "--workers", "1")
    assert rc == 0 and "Traceback" not in text, (text, [s for s in rec["steps"] if s["status"] != "ok"])
    assert rec["stacks"]["bf16.sdpa-cudnn.torch.batched"]["status"] == "skipped"
    assert "CUDA" in rec["stacks"]["bf16.sdpa-cudnn.torch.batched"]["reason"]
    assert "platform" in rec and all("seconds" in s or s["status"] == "skipped" for s in rec["steps"])
    assert any(s.get("where", "").startswith("worker") for s in rec["steps"])  # curves in a worker process
    # the bits step: the same count as an independent teacher-forced replay of both stacks
    pr = prompts.random_tokens(48, 16, 512, seed=gpu_blackbox._seed("bits", 0))
    tk = np.random.default_rng(gpu_blackbox._seed("bits-tokens", 0)).integers(3, 512, size=(48, 8))
    la, lm = plats[A].replay(pr, tk), plats[M].replay(pr, tk)
    assert rec["bits"]["batched"]["differing_logits"][f"{A} vs {M}"] == int((la.view(np.uint32) != lm.view(np.uint32)).sum())
    pairs = {(tuple(p["pair"]), p["temperature"]): p for p in rec["pairs"]}
    assert ((A, M), 0.7) in pairs and (("fp32.torch.b4", "fp32.torch.rowwise"), 0.7) in pairs
    assert f"{A} vs {A}" in rec["identical_pairs"]  # a stack against itself: its two runs, bit-identical
    p = pairs[((A, M), 0.7)]
    assert [r["queries"] for r in p["curve"]] == [1, 2, 4, 8, 12] and p["queries_cut"] == []
    small = pairs[(("fp32.torch.b4", "fp32.torch.rowwise"), 0.7)]
    assert [r["queries"] for r in small["curve"]] == [1, 2] and 4 in small["queries_cut"]  # q <= pool / 4
    for r in p["curve"]:
        assert 0.3 <= r["control_shuffled_accuracy"] <= 0.7
        assert r["disjoint"]["trials_per_label"] == 48 // r["queries"]  # the independent-trials check of each budget
    cal = p["calibration"]
    assert cal[0]["trials"] == 48 and cal[0]["queries"] == 1 and cal[1]["trials"] == 24
    assert cal[0]["seed_sync_rejections"] == 0 and cal[0]["lr_rejections"] <= cal[0]["interval"][1]
    assert "| stack | status |" in md and "Power curves" in md and "resampled" in md.lower()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    done = next(i for i, ln in enumerate(lines) if ln.startswith("done in"))
    table = lines[done + 1:]  # the short table comes last: a header and one line per measured pair
    assert table[0].split()[:2] == ["pair", "T"] and len(table) == 1 + len(rec["pairs"])
    assert any(ln.startswith(f"{A} vs {M}") for ln in table)
    # the deterministic-mode stack: in the bits table; on the CPU bit-identical to the default
    assert rec["bits"]["batched"]["differing_logits"][f"{A} vs {A}.det"] == 0
    assert f"| {A} vs {A}.det | 0 |" in md and f"{A} vs {A}.det" in rec["identical_pairs"]
    assert rec["deterministic_mode"][f"{A}.det"]["differing_logits"] == 0
    # probes: both kinds at every budget (tokens cut to --tokens), scores best first, both groups
    pr = rec["probes"]
    assert pr["settings"]["tokens"] == [1, 8] and pr["settings"]["tokens_cut"] == [64]
    got = {(tuple(p["pair"]), p["temperature"]): p for p in pr["pairs"]}
    assert set(got) == {((A, M), 0.7), ((A, M), 0.0), (("fp32.torch.b4", "fp32.fixed.b4"), 0.7),
                        (("fp32.torch.b4", "fp32.fixed.b4"), 0.0)}
    for p in pr["pairs"]:
        assert p["probe_scores_top"] == sorted(p["probe_scores_top"], reverse=True)
        assert p["probe_scores_top"][0] == p["pool_score_quantiles"]["max"]
        for kind in ("generated", "random"):
            assert [(r["queries"], r["tokens_per_query"]) for r in p[kind]] == [(q, m) for q in (1, 2, 4, 8) for m in (1, 8)]
        assert set(p["calibration"]) == {"generated", "random"}
    assert got[((A, M), 0.7)]["trials_per_label"] == 3 and got[((A, M), 0.7)]["pool_prompts"] == 96
    assert got[(("fp32.torch.b4", "fp32.fixed.b4"), 0.0)]["group"] == "small block"
    assert "## Generated probes vs random prompts (equal budget)" in md and "| generated |" in md
    assert "trials vary only in the sampler seeds" in md


def test_driver_records_budget_cuts(tmp_path, capsys):
    rc, rec, md, text = _run(tmp_path, capsys, "--temperatures", "0.7,0", "--stacks", M, "--budget-s", "0.001",
                             "--workers", "0")
    assert "Traceback" not in text
    skipped = [s for s in rec["steps"] if s["status"] == "skipped"]
    assert skipped and all("time budget" in s["reason"] or "pool of the pair was not measured" in s["reason"]
                           for s in skipped)
    assert any("time budget" in s["reason"] and s["step"].startswith("pool") for s in skipped)
    assert any("T=0.0" in s["step"] for s in skipped) and not rec["pairs"]
    assert "time budget" in md
    probe_steps = [s for s in skipped if s["step"].startswith("probes")]  # the probes step: cut, with its reason
    assert probe_steps and all("time budget" in s["reason"] for s in probe_steps) and not rec["probes"]["pairs"]
    assert "No probe comparison was measured" in md


@pytest.mark.parametrize("bad", [["--stacks", "bf16.torch.nope"], ["--small-pairs", "''"], ["--base", "x.y"],
                                 ["--queries", "1,two"], ["--model", "no-such-model"]])
def test_driver_usage_errors_are_messages_not_tracebacks(tmp_path, capsys, bad):
    # a quoted '' passed through a shell variable once reached Stack.parse as the token "''" and
    # ended the GPU job in a traceback; every such typo is a usage error (exit 2) before any work
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        gpu_blackbox.main([str(out), "--device", "cpu", "--workers", "0", *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "error:" in err, err
    assert not out.exists()  # nothing created for a refused run
