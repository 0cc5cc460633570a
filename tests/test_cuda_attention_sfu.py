"""Attention forward and SFU probes: cubins, SASS, the CPU replay, wrapper argument checks;
GPU bit-exact smoke tests (``gpu`` marker, auto-skipped without a device)."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import attention as A
from hspi_kernels.kernels.cuda import sfu
from hspi_kernels.numerics import attention_ref as R


def _cubin(source: str, arch: str = "sm_90a"):
    from hspi_kernels.kernels.cuda.loader import build_entries

    entries = [e for e in build_entries(source) if e["arch"] == arch]
    if not entries:
        pytest.skip(f"no build-info entry for {source} {arch}")
    if not entries[0]["built"]:
        pytest.skip(f"{source}: cubins not built (no nvcc at build time)")
    return entries[0]


def _sass(source):
    from hspi_kernels.kernels.cuda import sass as sass_mod

    try:
        return sass_mod, sass_mod.dump_sass(_cubin(source)["path"])
    except sass_mod.SassToolsMissing as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("source", [A.SOURCE, sfu.SOURCE])
def test_cubins_exist(source):
    entry = _cubin(source)
    assert entry["on_disk"], entry["path"]
    assert "-fmad=false" in entry["flags"]


def test_attention_sass():
    sass_mod, funcs = _sass(A.SOURCE)
    for fmt in A.FORMATS:
        hmma = "HMMA.16816.F32.BF16" if fmt == "bf16" else "HMMA.16816.F32"
        for mode in A.MODES:
            for d in A.HEAD_DIMS:
                for bn in A.BLOCK_NS:
                    name = A.kernel_name(fmt, mode, d, bn)
                    ops = sass_mod.opcodes(funcs[name])
                    mufu = {o for o in ops if o.startswith("MUFU")}
                    assert hmma in ops, name
                    assert f"F2FP.{'BF16' if fmt == 'bf16' else 'F16'}.F32.PACK_AB" in ops, name  # P -> fmt
                    if mode == "exact":
                        assert not mufu, (name, mufu)  # no EX2, no RCP (integer division), nothing
                    else:
                        assert "MUFU.EX2" in mufu, name
                    assert not any(o.startswith(("LDL", "STL")) for o in ops), f"{name} spills"
    assert not any(o.startswith("MUFU") for o in sass_mod.opcodes(funcs["hspi_attn_combine_exact"]))
    assert "MUFU.EX2" in sass_mod.opcodes(funcs["hspi_attn_combine_native"])


def test_sfu_sass():
    sass_mod, funcs = _sass(sfu.SOURCE)
    for op in sfu.OPS:
        for suffix in ("binades", "list"):
            ops = sass_mod.opcodes(funcs[f"hspi_sfu_{op}_{suffix}"])
            mufu = [o for o in ops if o.startswith("MUFU")]
            assert mufu == [sfu.MUFU[op]], (op, suffix, mufu)
    # .ftz is the bare unit: nothing but the MUFU touches the value
    ops = sass_mod.opcodes(funcs["hspi_sfu_ex2_ftz_list"])
    assert not any(o.startswith(("FMUL", "FSETP")) for o in ops)


# ---------------------------------------------------------------------------------------------
# The replay (CPU)
# ---------------------------------------------------------------------------------------------
def test_exp_exact_within_two_ulp():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-103, 88.5, 200_000), rng.uniform(-20, 0, 200_000),
                        -rng.exponential(1.0, 100_000), [0.0, -0.0, -1e-30, -87.0, -100.0]]).astype(np.float32)
    y = R.exp_exact(x).astype(np.float64)
    ex = np.exp(x.astype(np.float64))
    ulp = np.exp2(np.maximum(np.floor(np.log2(ex)) - 23, -149))
    assert np.max(np.abs(y - ex) / ulp) <= 2.0
    assert R.exp_exact(np.array([0.0], np.float32))[0] == 1.0
    assert R.exp_exact(np.array([-np.inf], np.float32))[0] == 0.0
    assert np.isinf(R.exp_exact(np.array([89.0], np.float32))[0])


def test_rowsum_order():
    p = np.arange(32, dtype=np.float32).reshape(1, 32) + np.float32(0.1)
    lanes = [sum(float(p[0, n]) for n in range(32) if (n % 8) // 2 == t) for t in range(4)]
    assert np.isclose(R.rowsum_order(p)[0], sum(lanes))
    big = np.zeros((1, 16), np.float32)
    big[0, 0], big[0, 2], big[0, 1] = 2.0**24, -(2.0**24), 1.0
    # lane 0 holds columns 0, 1 (and 8, 9): (2^24 + 1) rounds back to 2^24 before lane 1's -2^24
    assert R.rowsum_order(big)[0] == 0.0


def _qkv(fmt, BH, Sq, Sk, D, seed=0):
    rng = np.random.default_rng(seed)
    return (R.round_to_input(rng.standard_normal((BH, Sq, D)), fmt), R.round_to_input(rng.standard_normal((BH, Sk, D)), fmt),
            R.round_to_input(rng.standard_normal((BH, Sk, D)), fmt))


def _softmax64(Q, K, V, causal):
    s = np.einsum("bqd,bkd->bqk", Q.astype(np.float64), K.astype(np.float64)) * np.float32(1 / np.sqrt(Q.shape[-1]))
    if causal:
        s = np.where(np.arange(K.shape[1])[None, :] > np.arange(Q.shape[1])[:, None], -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ V.astype(np.float64)


@pytest.mark.parametrize("fmt,bn,splits,causal", [("bf16", 16, 1, False), ("bf16", 32, 2, True), ("fp16", 64, 4, True),
                                                  ("fp16", 16, 3, False)])
def test_replay_self_consistent(fmt, bn, splits, causal):
    Q, K, V = _qkv(fmt, 2, 21, 45, 32)
    O = R.replay(Q, K, V, fmt=fmt, block_n=bn, splits=splits, causal=causal)
    assert O.shape == (2, 21, 32) and O.dtype == np.float32
    assert np.array_equal(O.view(np.uint32),
                          R.replay(Q, K, V, fmt=fmt, block_n=bn, splits=splits, causal=causal).view(np.uint32))
    tol = 4e-3 if fmt == "bf16" else 1e-3  # P is rounded to fmt before P·V
    assert np.max(np.abs(O - _softmax64(Q, K, V, causal))) < tol
    if causal:  # row 0 sees key 0 only
        assert np.array_equal(O[:, 0], V[:, 0])


def test_replay_native_from_table_equals_formula_when_table_is_correctly_rounded():
    # A synthetic, correctly rounded "ex2 table" over the binades the replay needs: the native
    # replay must then agree with rn32(2^rn32(x·L2E)) everywhere it looks up.
    binades = {(1, e): sfu.reference_bits("ex2_ftz", sfu.binade_inputs(1, e)) for e in range(-3, 0)}
    table = R.SfuTable("ex2_ftz", binades, {0: 0x3F800000, 0xFF800000: 0}, reduction="ceil")
    y = np.array([-0.3, -1.7, -2.5, -7.25, 0.0, -np.inf], np.float32)
    out, miss = table.ex2(y)
    assert not miss[[0, 1, 2, 3, 4, 5]].any()
    assert np.array_equal(out[:4], np.exp2(y[:4].astype(np.float64)).astype(np.float32))
    assert out[4] == 1.0 and out[5] == 0.0


def test_negative_controls_differ_on_cpu():
    Q, K, V = _qkv("bf16", 1, 32, 96, 32, seed=3)
    base = R.replay(Q, K, V, fmt="bf16", block_n=32)
    assert not np.array_equal(base, R.replay(Q, K, V, fmt="bf16", block_n=16))
    assert not np.array_equal(base, R.replay(Q, K, V, fmt="bf16", block_n=32, round_p=False))


def test_split_chunk_and_plan():
    assert R.split_chunk(300, 64, 4) == 128 and R.split_chunk(130, 16, 4) == 48 and R.split_chunk(7, 32, 2) == 32
    d = A.plan(fmt="bf16", mode="exact", head_dim=64, block_n=32, splits=2, causal=True)
    assert d["kernel_name"] == "hspi_attn_fwd_bf16_exact_d64_n32"
    assert "Chain" in d["qk"] and "combine" in d["output"]
    assert sfu.plan("tanh")["sass"] == "MUFU.TANH"


# ---------------------------------------------------------------------------------------------
# Argument validation (no GPU work)
# ---------------------------------------------------------------------------------------------
def test_config_errors():
    with pytest.raises(ValueError, match="mode"):
        A.kernel_name("bf16", "fast", 64, 32)
    with pytest.raises(ValueError, match="head dim"):
        A.kernel_name("bf16", "exact", 48, 32)
    with pytest.raises(ValueError, match="block_n"):
        A.kernel_name("bf16", "exact", 64, 24)
    with pytest.raises(ValueError, match="fmt"):
        A.kernel_name("fp8", "exact", 64, 32)
    with pytest.raises(ValueError, match="torch CUDA tensor or a CuPy"):
        A.attention_forward(np.zeros((1, 16, 64), np.float16), np.zeros((1, 16, 64), np.float16),
                            np.zeros((1, 16, 64), np.float16))
    with pytest.raises(ValueError, match="op must be"):
        sfu.plan("exp")
    with pytest.raises(ValueError, match="binade exponent"):
        sfu.binade_base(0, 200)
    with pytest.raises(ValueError, match="native mode needs"):
        R.replay(*_qkv("bf16", 1, 16, 16, 32), fmt="bf16", mode="native")
    with pytest.raises(ValueError, match="fmt must be"):
        R.replay(*_qkv("bf16", 1, 16, 16, 32), fmt="tf32")


def test_torch_argument_errors():
    torch = pytest.importorskip("torch")
    q = torch.zeros((1, 16, 64), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CUDA tensor"):
        A.check_arguments(q, q, q, None, "exact", 32, 1)
    with pytest.raises(ValueError, match="not bf16/fp16"):
        A.check_arguments(q.float(), q.float(), q.float(), None, "exact", 32, 1)
    with pytest.raises(ValueError, match="contradicts"):
        A.check_arguments(q, q, q, "fp16", "exact", 32, 1)


def test_table_roundtrip(tmp_path):
    x = sfu.binade_inputs(1, -1)
    rows = (sfu.reference_bits("ex2_ftz", x).astype(np.int64) + (np.arange(x.size) % 3 == 0)).astype(np.uint32)
    index = sfu.save_table(tmp_path, "ex2_ftz", [(1, -1)], rows[None])
    assert index["summary"]["largest_file_bytes"] < 16 << 20
    table = sfu.load_table(tmp_path / "sfu_ex2_ftz")
    assert np.array_equal(table.binades[(1, -1)], rows)


# ---------------------------------------------------------------------------------------------
# GPU smoke tests (auto-skipped without a device)
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("fmt,D,bn,splits,causal", [("bf16", 64, 32, 1, False), ("fp16", 32, 16, 2, True),
                                                    ("bf16", 128, 64, 4, True)])
def test_gpu_exact_bit_exact(fmt, D, bn, splits, causal):
    from hspi_kernels.kernels.validation.attention_sfu import gpu_attention
    from hspi_kernels.kernels.validation.tensor_core import same_bits

    Q, K, V = _qkv(fmt, 2, 40, 75, D, seed=7)
    gpu = gpu_attention(Q, K, V, fmt, "exact", bn, splits, causal)
    ref = R.replay(Q, K, V, fmt=fmt, mode="exact", block_n=bn, splits=splits, causal=causal)
    assert same_bits(gpu, ref).all()


@pytest.mark.gpu
def test_gpu_sfu_list_matches_binades():
    cupy = pytest.importorskip("cupy")
    x = sfu.binade_inputs(1, -1)
    table = sfu.binade_outputs("ex2_ftz", [(1, -1)])[0]
    y = cupy.asnumpy(sfu.apply("ex2_ftz", cupy.asarray(x[:4096])))
    assert np.array_equal(y.view(np.uint32), table[:4096])
