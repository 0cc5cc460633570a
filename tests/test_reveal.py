"""Order revelation: CPU ops and emulated plans revealed, replayed bit for bit, call bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hspi_kernels.numerics import plans as P
from hspi_kernels.probes import reveal as R
from hspi_kernels.probes import targets as T

TC = P.TensorCore("sm_90", "bf16", "fp32")


def _bound(n):
    return 4 * n * math.log2(n)


@pytest.mark.parametrize("n", [100, 1000, 4096])
def test_numpy_sum_revealed_and_replayed(n):
    r = R.reveal(T.numpy_sum(n), replay_count=10_000)
    assert r.revealed, r.to_json()
    assert (r.replay_matches, r.replay_total) == (10_000, 10_000)
    assert r.calls <= _bound(n)


@pytest.mark.parametrize("n", [100, 1000, 4096])
def test_torch_cpu_sum_revealed_and_replayed(n):
    pytest.importorskip("torch")
    r = R.reveal(T.torch_sum_cpu(n), replay_count=10_000)
    assert r.revealed, r.to_json()
    assert r.calls <= _bound(n)


def test_torch_cpu_matmul_k_order():
    pytest.importorskip("torch")
    r = R.reveal(T.torch_matmul_cpu(256), replay_count=2_000)
    assert r.revealed and r.compact, r.to_json()


@pytest.mark.parametrize("plan", [P.Sequential(), P.Pairwise(), P.Strided(8, inner=P.Sequential(), combine=P.Pairwise()),
                                  P.BlockTree(256), P.numpy_sum_plan()])
def test_emulated_orders_rediscovered(plan):
    n = 256
    r = R.reveal(T.emulated_sum(plan, n), replay_count=2_000)
    assert r.revealed and r.compact, r.to_json()
    interner = R._Interner(n)
    assert R.plan_tree(r.plan, n, False, interner) == R.plan_tree(plan, n, False, interner)
    assert r.calls <= _bound(n)


@pytest.mark.parametrize("plan", [P.Chain(TC, k=16), P.SplitK(4, inner=P.Chain(TC, k=16), combine=P.Sequential(), tile=16)])
def test_emulated_tensor_core_gemm_rediscovered(plan):
    K = 256
    r = R.reveal(T.emulated_gemm(plan, K, N=512, in_format="bf16", block=TC), replay_count=1_000)
    assert r.revealed and r.compact and r.block_size == 16, r.to_json()
    interner = R._Interner(K)
    assert R.plan_tree(r.plan, K, True, interner) == R.plan_tree(plan, K, True, interner)
    assert r.calls <= _bound(K)


def test_wrong_plan_fails_replay():
    target = T.numpy_sum(1000)
    wrong = P.Pairwise(leaf_size=128, align=8, leaf=P.Strided(4, inner=P.Sequential(), combine=P.Pairwise()))
    m, t = target.replay(wrong, 2_000)
    assert m < t // 2


def test_bf16_output_windowed_counts():
    """An op that rounds its count to bf16 (8 bits) is revealed through windows of 256 ones."""
    plan = P.Sequential()
    base = T.emulated_sum(plan, 1024)
    target = T.Target("bf16-out sequential", 1024, "sum", out_bits=8,
                      sum_rows=lambda x: T.to_format(base.sum_rows(x), "bf16"))
    engine = R.QueryEngine(target)
    assert len(engine.windows) == 4
    tree = R.reveal_tree(engine)
    interner = R._Interner(1024)
    assert R.canonical_tree(tree, interner) == R.plan_tree(plan, 1024, False, interner)
