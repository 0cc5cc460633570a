"""The bandwidth-bound deterministic reduction ("vec4", csrc/cuda/reduction/vec_reduce.cu).

CPU part: a literal Python transcription of the kernel's loops (float4 super-iterations of U
vectors, the element-wise tail, the per-thread (x+y)+(z+w), the block tree, the one-block
combine) agrees bit for bit with ``evaluate`` of ``plan("vec4")`` for small G, B and every U,
on both evaluator backends; a wrong plan (the old two-pass plan) is rejected; SASS has 128-bit
loads, no FFMA, no atomics. gpu part: GPU bits == plan bits, U-invariance, alignment check.
"""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import reduction as R
from hspi_kernels.numerics import plans as P
from hspi_kernels.numerics.evaluate import evaluate
from hspi_kernels.numerics.formats import same_bits
from test_cuda_core_kernels import _kernel_tree as _tree  # the block tree, transcribed once

F32 = np.float32


def _tricky(n: int, rng) -> np.ndarray:
    x = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)
    x[rng.random(n) < 0.1] = -0.0
    x[rng.random(n) < 0.05] = 2.0**-149 * rng.integers(-9, 9)
    return x.astype(F32)


def _kernel_vec4(x: np.ndarray, G: int, B: int, U: int, C: int = R.COMBINE_THREADS) -> F32:
    """The kernel's loops, transcribed (thread by thread, in the kernel's order)."""
    n, L = len(x), G * B
    step = U * L
    supers = (n // 4) // step
    thread_sums = []
    for g in range(L):
        acc = [F32(0)] * 4
        for s in range(supers):
            vecs = [x[4 * ((s * U + u) * L + g): 4 * ((s * U + u) * L + g) + 4] for u in range(U)]
            for v in vecs:
                acc = [F32(acc[c] + v[c]) for c in range(4)]
        base = supers * step * 4
        for u in range(U):
            i = base + (u * L + g) * 4
            for c in range(4):
                if i + c < n:
                    acc[c] = F32(acc[c] + x[i + c])
        thread_sums.append(F32(F32(acc[0] + acc[1]) + F32(acc[2] + acc[3])))
    partials = [_tree(thread_sums[b * B:(b + 1) * B]) for b in range(G)]
    lanes = []
    for t in range(C):
        acc = F32(0)
        for b in range(t, G, C):
            acc = F32(acc + partials[b])
        lanes.append(acc)
    return _tree(lanes)


@pytest.mark.parametrize("G,B,U", [(3, 4, 2), (2, 8, 4), (1, 2, 8), (5, 1, 4)])
def test_vec4_transcription_matches_plan(G, B, U):
    rng = np.random.default_rng(G * 100 + B * 10 + U)
    for n in (0, 1, 3, 4 * G * B * U - 1, 4 * G * B * U, 2 * 4 * G * B * U + 7, 301):
        x = _tricky(n, rng)
        want = _kernel_vec4(x, G, B, U, C=8)
        p = R.plan("vec4", blocks=G, block=B)
        # the same plan with the combine block of 8 threads (the transcription above uses C = 8)
        p8 = P.Strided(lanes=p.lanes, inner=p.inner, combine=P.SplitK(
            parts=p.combine.parts, inner=p.combine.inner, combine=P.SplitK(
                parts=G, inner=P.BlockTree(B), combine=P.Strided(lanes=8, inner=P.Sequential(init="zero"),
                                                                 combine=P.BlockTree(8)))))
        for backend in ("numpy", "native"):
            got = evaluate(p8, x, backend=backend)
            assert got.view(np.uint32) == np.array(want).view(np.uint32), (n, backend, got, want)


def test_vec4_plan_with_the_real_combine():
    rng = np.random.default_rng(1)
    G, B, U = 3, 4, 2
    for n in (0, 50, 97):
        x = _tricky(n, rng)
        want = _kernel_vec4(x, G, B, U)
        for backend in ("numpy", "native"):
            got = R.reference(x, "vec4", blocks=G, block=B, backend=backend)
            assert got.shape == () and got.view(np.uint32) == np.array(want).view(np.uint32)


def test_vec4_negative_control_rejected():
    """The old two-pass plan (scalar strided lanes) must not explain the vec4 kernel's bits."""
    rng = np.random.default_rng(2)
    G, B, U = 2, 4, 2
    mismatches = 0
    for trial in range(20):
        x = (rng.standard_normal(200) * 2.0 ** rng.integers(-20, 20, 200)).astype(F32)
        want = _kernel_vec4(x, G, B, U)
        wrong = R.reference(x, "grid_two_pass", blocks=G, block=B, backend="native")
        mismatches += int(wrong.view(np.uint32) != np.array(want).view(np.uint32))
    assert mismatches >= 10


def test_vec4_plan_shape_and_defaults():
    p = R.plan("vec4")
    assert p == R.reduce_vector_fast.plan(12345)
    assert p.lanes == 4 * R.FAST_BLOCKS * R.FAST_BLOCK
    assert P.plan_from_json(p.to_json()) == p
    assert eval(repr(p), vars(P)) == p
    assert R.plan("grid_two_pass").combine.parts == R.DEFAULT_BLOCKS  # the old default is unchanged
    with pytest.raises(ValueError, match="unroll"):
        R.vec4_kernel(3)
    with pytest.raises(ValueError, match="block"):
        R.plan("vec4", block=96)


def test_vec4_bad_arguments():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="1-D"):
        R.reduce_vector_fast(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="CUDA tensor"):
        R.reduce_vector_fast(torch.zeros(8))
    with pytest.raises(ValueError, match="unroll"):
        R.reduce_vector_fast(torch.zeros(8), unroll=5)


def test_vec4_sass():
    from hspi_kernels.kernels.cuda import loader, sass

    entries = [e for e in loader.build_entries(R.VEC_SOURCE) if e["built"] and e["on_disk"]]
    if not entries:
        pytest.skip(f"{R.VEC_SOURCE}: no cubin built here")
    try:
        funcs = sass.dump_sass(entries[0]["path"])
    except sass.SassToolsMissing as exc:
        pytest.skip(str(exc))
    for u in R.FAST_UNROLLS:
        text = funcs[R.vec4_kernel(u)]
        assert sass.has_opcode(text, "FADD") and not sass.has_opcode(text, "FFMA")
        assert "LDG.E.128" in text
    for text in funcs.values():
        assert not any(sass.has_opcode(text, op) for op in ("RED", "REDG", "ATOM", "ATOMG"))


@pytest.mark.gpu
def test_gpu_vec4_bits():
    cupy = pytest.importorskip("cupy")
    from hspi_kernels.kernels.validation.cuda_core import row_inputs

    for n in (0, 5, 4 * 1024 * 3 + 3, 100_003):
        x = row_inputs("random", 1, n, seed=n).reshape(-1)
        ref = R.reference(x, "vec4", blocks=8, block=64, backend="native")
        for u in R.FAST_UNROLLS:
            got = cupy.asnumpy(R.reduce_vector_fast(cupy.asarray(x), blocks=8, block=64, unroll=u))
            assert int(same_bits(got, ref).sum()) == 1, (n, u)
    with pytest.raises(ValueError, match="aligned"):
        R.reduce_vector_fast(cupy.zeros(9, np.float32)[1:])


def test_vec4_validation_entries_and_control(monkeypatch):
    """The validation's vec4 section on the CPU: a stand-in "GPU" that runs the kernel
    transcription gives N/N, and the two-pass negative control is rejected."""
    from hspi_kernels.kernels.validation import cuda_core as V

    monkeypatch.setattr(R, "FAST_BLOCKS", 2)
    monkeypatch.setattr(R, "FAST_BLOCK", 4)
    monkeypatch.setattr(R, "COMBINE_THREADS", 8)

    def fake_gpu(fn, x, *, blocks, block, unroll):
        assert fn is R.reduce_vector_fast
        return np.array(_kernel_vec4(x, blocks, block, unroll, C=8))

    monkeypatch.setattr(V, "VEC4_SMALL_CONFIG", (2, 2))
    result = {"reduction": []}
    controls = V.validate_vec4(result, fake_gpu, 3001, 0, "native", lambda *_: None, to_device=lambda x: x)
    entries = result["reduction"]
    assert entries and all(e["ok"] for e in entries), [e for e in entries if not e["ok"]][:2]
    assert {e["unroll"] for e in entries} == set(R.FAST_UNROLLS)
    (name, got, ref), = controls
    assert got.size >= 3 and int(same_bits(got, ref).sum()) < got.size, name
