"""PyTorch vs JAX/XLA per op (trace.frameworks) on the CPU: each side's plans reproduce its bits
N/N, a plan of one side does not reproduce the other side's bits where they differ (negative
control), and bad input gives a clear error. The plans themselves depend on the machine's BLAS
(the record docs/results/stack/cpu_framework_ops.md is this machine's)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from hspi_kernels.numerics import evaluate  # noqa: E402
from hspi_kernels.numerics import plans as P  # noqa: E402
from hspi_kernels.trace import frameworks as FW  # noqa: E402


@pytest.mark.parametrize("K,N", [(768, 256), (896, 128), (256, 64)])
def test_gemm_row_plans_reproduce_their_side_only(K, N):
    r = FW.gemm_row(torch, jnp, jax, "t", 8, K, N, 0, "cpu")
    rng = np.random.default_rng([0, K, N])
    a = rng.standard_normal((8, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    t = (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    j = np.asarray(jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    for side, want, other in (("torch_plans", t, j), ("xla_plans", j, t)):
        for rp in r[side]:
            got = evaluate.gemm(eval(rp, vars(P)), a, b)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
            if r["equal"] != r["total"]:
                assert not np.array_equal(got.view(np.uint32), other.view(np.uint32))
    assert (r["equal"] == r["total"]) == (r["cause"] == "same bits")
    if r["torch_plans"] and r["xla_plans"] and r["equal"] != r["total"]:
        assert r["cause"].startswith("GEMM order")


def test_blocked_candidates_cover_uneven_k():
    plans = FW.blocked_candidates(896)
    assert P.SplitK(2, tile=512, inner=P.Sequential("fp32", fma=True)) in plans
    assert all(p.tile < 896 for p in plans)


def test_reduction_row_is_consistent():
    r = FW.reduction_row(torch, jnp, jax, "t", 256, 0, "cpu")
    assert r["total"] == 16 and (r["equal"] == 16) == (r["cause"] == "same bits")


def test_cli_bad_input(tmp_path, capsys):
    assert FW.main([str(tmp_path / "o"), "--models", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    f = tmp_path / "f"
    f.write_text("x")
    assert FW.main([str(f), "--models", "tiny-llama"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert FW.main([str(tmp_path / "o"), "--models", "tiny-llama", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("framework ops: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
