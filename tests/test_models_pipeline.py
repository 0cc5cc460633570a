"""Model-level pipeline on CPU EQCs with a tiny Llama: collect → features → classify → identify,
the shuffled-label negative control, exact identification and a border search."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from hspi_kernels.models import collect as mc  # noqa: E402
from hspi_kernels.models import eqc as meqc  # noqa: E402
from hspi_kernels.models import hspi_bi, hspi_ld, matching  # noqa: E402

EQCS = ["fp32.eager.b1", "fp32.sdpa.b1", "fp32.sdpa.b8", "bf16.eager.b1", "bf16.sdpa.b1", "bf16.sdpa.b8"]


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(0)
    return mc.Runner("tiny-llama", device="cpu", slice_size=128, topk=20)


@pytest.fixture(scope="module")
def collection(runner, tmp_path_factory):
    inputs = mc.make_inputs(runner, n_random=24, n_text=24, length=12)
    coll = mc.collect(runner, EQCS, inputs)
    path = coll.save(tmp_path_factory.mktemp("models") / "cpu.npz")
    return path


def test_eqc_names_roundtrip():
    for name in EQCS + ["tf32.sdpa-math.fixed.b4.compile", "bf16.sdpa.torch.b1.fp8"]:
        e = meqc.parse(name)
        assert meqc.parse(e.name) == e
    assert meqc.parse("bf16.b8").differs_from(meqc.BASELINE) == ["batch"]
    with pytest.raises(ValueError):
        meqc.parse("bf17")


def test_seeded_weights_are_reproducible():
    from hspi_kernels.models import zoo

    a, _ = zoo.build("tiny-qwen2", seed=3)
    b, _ = zoo.build("tiny-qwen2", seed=3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


def test_collection_roundtrip_no_pickle(collection):
    coll = mc.load(collection)
    runs = coll.runs()
    assert [v.eqc.name for v in runs] == [meqc.parse(e).name for e in EQCS]
    assert all(v.record["deterministic"] for v in runs)  # CPU runs repeat bit for bit
    assert coll.meta["platform"]["numpy"] and coll.meta["schema"] == mc.SCHEMA
    v = runs[0]
    assert v.get("logprobs_slice").dtype == np.float32 and v.get("topk_ids").shape == (48, 20)
    with np.load(collection, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)


def test_lattice_separates_dtypes(collection):
    runs = mc.load(collection).runs()
    lat = hspi_ld.lattice(runs)
    for group in lat:  # fp32 and bf16 never share a class
        assert len({lab.split("/")[1].split(".")[0] for lab in group}) == 1
    pairs = hspi_ld.pair_distinguishability(runs)
    i, j = pairs["labels"].index("CPU/fp32.sdpa.torch.b1"), pairs["labels"].index("CPU/bf16.sdpa.torch.b1")
    assert pairs["fraction_differing"][i][j] == 1.0


def test_classify_held_out_and_shuffled_control(collection):
    runs = mc.load(collection).runs()
    dtype_runs = [v for v in runs if v.eqc.attn == "sdpa" and v.eqc.batch == 1]
    res = hspi_ld.classify(dtype_runs, "native")
    assert res.accuracy >= 0.95 and len(res.classes) == 2
    res_paper = hspi_ld.classify(dtype_runs, "paper-logits")
    assert res_paper.accuracy >= 0.95
    assert res_paper.fit_s < 60
    test_prompts = res.n_test // len(dtype_runs)
    assert test_prompts == 24  # half of the 48 prompts held out, all classes of a prompt together
    full = hspi_ld.classify(runs, "native")
    control = hspi_ld.classify(runs, "native", shuffle_labels=True)
    n_cls = len(control.classes)
    assert full.accuracy > 2.0 / n_cls
    assert control.accuracy <= control.chance + 0.12, (control.accuracy, control.chance)


def test_whitebox_identifies_fresh_run(runner, collection):
    refs = mc.load(collection).runs()
    inputs = mc.make_inputs(runner, n_random=24, n_text=24, length=12)
    fresh = mc.collect(runner, ["bf16.eager.b1"], inputs, repeat=False).runs()[0]
    prompts = np.arange(8)
    res = matching.whitebox(fresh.get("digest_logits")[prompts], refs, prompts)
    assert "CPU/bf16.eager.torch.b1" in res["survivors"]
    assert all("bf16.eager" in s for s in res["survivors"])
    lat = [g for g in hspi_ld.lattice(refs) if "CPU/bf16.eager.torch.b1" in g][0]
    assert set(res["survivors"]) == set(lat)
    acc = matching.whitebox_accuracy(refs, queries=4, trials=20)
    assert acc["accuracy"] == 1.0


def test_blackbox_topk_identification(collection):
    runs = mc.load(collection).runs()
    res = matching.blackbox_accuracy(runs, queries=16, k=20, decimals=None, trials=20)
    assert res["accuracy"] >= 0.95
    rounded = matching.blackbox_accuracy([v for v in runs if v.eqc.batch == 1], queries=16, k=5, decimals=4,
                                         trials=10)
    assert 0.0 <= rounded["accuracy"] <= 1.0


def test_border_search_fp32_vs_bf16(runner):
    res = hspi_bi.border_search(runner, meqc.parse("fp32.b1"), meqc.parse("bf16.b1"), budget=48, batch=8,
                                length=12, n_pool=128, n_keep=24, rounds=4)
    assert res["success"] and res["queries"] <= 48
    border = res["inputs"][res["found"]]
    a, b = runner.greedy(meqc.parse("fp32.b1"), border), runner.greedy(meqc.parse("bf16.b1"), border)
    assert np.all(a != b)
    # the same EQC on both sides is never a border
    same = hspi_bi.query_border(lambda x: runner.greedy(meqc.parse("bf16.b1"), x),
                                lambda x: runner.greedy(meqc.parse("bf16.b1"), x), border, budget=32)
    assert same["n_found"] == 0


def test_int8_linears_are_real_int_gemms(runner):
    model = runner.model_for(meqc.parse("bf16.int8.b1"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "QuantLinear" in kinds
    q = next(m for m in model.modules() if type(m).__name__ == "QuantLinear")
    assert q.wq.dtype == torch.int8


def test_cli_classify_and_identify(collection, tmp_path):
    from typer.testing import CliRunner

    from hspi_kernels.cli import app

    cli = CliRunner()
    res = cli.invoke(app, ["model", "classify", str(collection), "--rep", "native", "--axis", "dtype",
                           "--plot-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert "tiny-llama" in report["models"]
    assert list(tmp_path.glob("cm_*.png"))
    res = cli.invoke(app, ["model", "identify", str(collection), "--ref", str(collection), "--json"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------------
# cross-platform tables (models.crossplatform.analyse_files, which scripts/analyse_models.py drives) on two synthetic CPU "platforms":
# platform B runs every bf16 linear layer as a split-K GEMM (two half-K products rounded to
# bf16, then added: a different accumulation order, as another GPU's cuBLAS kernel choice would
# give); fp32 is left alone on B, so the fp32 runs are bit-identical across the two platforms
# and every method must report them at chance.
# ------------------------------------------------------------------------------------------
import contextlib  # noqa: E402

XEQCS = ["fp32.sdpa.b1", "fp32.sdpa.b8", "bf16.sdpa.b1", "bf16.sdpa.b8"]


@contextlib.contextmanager
def _split_k_linear(dtypes=(torch.bfloat16,)):
    orig = torch.nn.functional.linear

    def linear(x, w, b=None):
        if x.dtype not in dtypes:
            return orig(x, w, b)
        k = w.shape[1] // 2
        y = orig(x[..., :k], w[:, :k]) + orig(x[..., k:], w[:, k:])
        return y if b is None else y + b

    torch.nn.functional.linear = linear
    try:
        yield
    finally:
        torch.nn.functional.linear = orig


@pytest.fixture(scope="module")
def two_platforms(runner, tmp_path_factory):
    d = tmp_path_factory.mktemp("xplat")
    inputs = mc.make_inputs(runner, n_random=16, n_text=16, length=12)
    a = mc.collect(runner, XEQCS, inputs, hardware="CPU-A").save(d / "a.npz", max_bytes=4 * 2**20)
    with _split_k_linear():
        b = mc.collect(runner, XEQCS, inputs, hardware="CPU-B").save(d / "b.npz", max_bytes=4 * 2**20)
    return a, b


def test_collection_size_budget_fails_before_writing(runner, tmp_path):
    inputs = mc.make_inputs(runner, n_random=4, n_text=4, length=8)
    coll = mc.collect(runner, ["fp32.b1"], inputs, repeat=False)
    with pytest.raises(mc.CollectionTooLarge):
        coll.save(tmp_path / "big.npz", max_bytes=1000)
    assert not (tmp_path / "big.npz").exists()
    skipped = mc.collect(runner, ["fp32.b1"], inputs, repeat=False, deadline=0.0)
    assert [r["status"] for r in skipped.meta["runs"]] == ["skipped"]


def test_cross_platform_tables(two_platforms, tmp_path):
    from pathlib import Path

    from hspi_kernels.models import crossplatform as cp

    out = tmp_path / "xplat"
    # what scripts/analyse_models.py A B -o OUT --dtypes fp32,bf16 --trials 40 --queries 16 --all-runs runs
    cp.analyse_files([str(p) for p in two_platforms], out, dtypes=("fp32", "bf16"), queries=16, k=20, d=64,
                     trials=40, all_runs=True)
    rep = json.loads(Path(f"{out}.json").read_text())["models"]["tiny-llama"]
    md = Path(f"{out}.md").read_text()
    assert "White-box" in md and "Hardware x dtype" in md and "6-class" in md
    assert rep["hardware"] == ["CPU-A", "CPU-B"] and rep["held_out_prompts"] == 16
    # white-box: 100 % for every pair whose bits differ on the held-out prompts
    wb = rep["whitebox"]
    assert wb["n_pairs"] == 28 and wb["n_pairs_bits_differ"] >= 20 and wb["all_differing_pairs_100pct"]
    cross = {r["eqc"]: r for r in rep["cross_hardware"]}
    for name, r in cross.items():
        if name.startswith("bf16"):  # different GEMM order: distinguishable, black-box >= 95 % at 16 queries
            assert not r["bit_identical"] and r["blackbox"]["16"] >= 0.95, (name, r["blackbox"])
            assert 0.0 <= r["hspi_ld"]["paper"]["accuracy"] <= 1.0  # the paper's SVM may well fail here
        else:  # bit-identical by construction: every method at chance, never above
            assert r["bit_identical"]
            assert abs(r["blackbox"]["16"] - 0.5) < 1e-9 and abs(r["hspi_bi"]["top1_random"]["accuracy"] - 0.5) < 1e-9
            assert r["hspi_bi"]["border_inputs"] == 0
            assert r["hspi_ld"]["paper"]["accuracy"] <= 0.5 + 0.15
    four = {r["config"]: r for r in rep["hardware_x_dtype"]}
    b1 = four["sdpa.torch.b1"]
    assert len(b1["classes"]) == 4 and abs(b1["blackbox"]["16"] - 0.75) < 1e-9  # fp32 pair at chance
    assert b1["hspi_ld_shuffled"]["accuracy"] <= b1["hspi_ld_shuffled"]["chance"] + 0.1
    assert b1["hspi_ld"]["native"]["accuracy"] > b1["hspi_ld_shuffled"]["accuracy"] + 0.15
    six = rep["svm_6class"]
    assert six["fit_ok"] and six["fit_s"] < 60 and len(six["runs"]) == 6
    control = rep["hspi_ld_all_shuffled"]["native"]
    assert len(control["per_seed"]) == 3
    assert control["accuracy"] <= control["chance"] + 0.1 < rep["hspi_ld_all"]["native"]["accuracy"]


def test_cross_platform_refuses_different_prompts(runner, two_platforms, tmp_path):
    from hspi_kernels.models import crossplatform as cp

    other = mc.make_inputs(runner, n_random=16, n_text=16, length=12, seed=5)
    c = mc.collect(runner, ["fp32.b1"], other, repeat=False, hardware="CPU-C")
    with pytest.raises(ValueError, match="different prompts"):
        cp.check_same_inputs([mc.load(two_platforms[0]), c])


def test_cli_model_tables_and_same_hardware_tag(two_platforms, tmp_path):
    from typer.testing import CliRunner

    from hspi_kernels.cli import app

    a, _ = two_platforms
    out = tmp_path / "same"
    # one platform against itself (two "sessions"): every pair bit-identical, black-box at chance
    res = CliRunner().invoke(app, ["model", "tables", f"{a}=s1", f"{a}=s2", "-o", str(out), "--dtypes", "fp32,bf16",
                                   "--trials", "10", "--queries", "16"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "same.json").read_text())["models"]["tiny-llama"]
    assert rep["hardware"] == ["CPU-A@s1", "CPU-A@s2"]
    assert all(r["bit_identical"] and abs(r["blackbox"]["16"] - 0.5) < 1e-9 for r in rep["cross_hardware"])
    res = CliRunner().invoke(app, ["model", "tables", str(a), str(a), "-o", str(out)])
    assert res.exit_code != 0  # the same hardware twice without a tag is refused
