"""CUDA-core GEMM and fp32 reductions: build-info, SASS, argument checks, plans, bits (gpu).

CPU part: the cubins are in the build-info; their SASS shows the arithmetic each order claims;
the wrappers reject bad input with ValueError before touching a GPU; ``plan()`` returns the
documented plans, and a literal Python transcription of every kernel's loops agrees bit for bit
with ``evaluate`` of that plan (so the plan mapping, +0 seeds and trees included, is checked
without a GPU). gpu part: small bit-exact checks per variant.
"""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import gemm_cuda_core as G
from hspi_kernels.kernels.cuda import reduction as R

P = pytest.importorskip("hspi_kernels.numerics.plans")
E = pytest.importorskip("hspi_kernels.numerics.evaluate")


def _entries(source: str) -> list[dict]:
    from hspi_kernels.kernels.cuda import loader

    return loader.build_entries(source)


def _sass(source: str) -> dict[str, str]:
    from hspi_kernels.kernels.cuda import sass

    entries = [e for e in _entries(source) if e["built"] and e["on_disk"]]
    if not entries:
        pytest.skip(f"{source}: no cubin built here (no nvcc at build time)")
    try:
        return sass.dump_sass(entries[0]["path"])
    except sass.SassToolsMissing as exc:
        pytest.skip(str(exc))


# ---------------------------------------------------------------------------------------------
# build-info and SASS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [G.SOURCE, R.ROW_SOURCE, R.GRID_SOURCE, R.VEC_SOURCE])
def test_cubins_in_build_info(source):
    entries = _entries(source)
    if not entries:
        pytest.skip("no build-info (package not built)")
    for e in entries:
        assert "-fmad=false" in e["flags"], e
        if e["built"]:
            assert e["on_disk"], f"{e['cubin']} listed as built but missing"


def test_gemm_sass_arithmetic():
    from hspi_kernels.kernels.cuda.sass import has_opcode

    funcs = _sass(G.SOURCE)
    assert set(G.all_kernel_names()) <= set(funcs), sorted(set(G.all_kernel_names()) - set(funcs))
    for dtype, (fma, mul, add) in {"fp32": ("FFMA", "FMUL", "FADD"), "fp64": ("DFMA", "DMUL", "DADD")}.items():
        for order in G.ORDERS:
            fused_name = G.kernel_names(order, dtype, True)[0]
            sep_name = G.kernel_names(order, dtype, False)[0]
            assert has_opcode(funcs[fused_name], fma), fused_name
            assert not has_opcode(funcs[fused_name], mul), fused_name
            assert has_opcode(funcs[sep_name], mul) and has_opcode(funcs[sep_name], add), sep_name
            assert not has_opcode(funcs[sep_name], fma), sep_name
        combine = funcs[G.kernel_names("splitk", dtype, True)[1]]
        assert has_opcode(combine, add) and not has_opcode(combine, fma)
    for name, text in funcs.items():  # no tensor cores anywhere on this rung
        assert not has_opcode(text, "HMMA") and not has_opcode(text, "DMMA"), name


def test_reduction_sass():
    from hspi_kernels.kernels.cuda.sass import has_opcode, opcodes

    rows = _sass(R.ROW_SOURCE)
    grid = _sass(R.GRID_SOURCE)
    funcs = {**rows, **grid, **_sass(R.VEC_SOURCE)}
    for name in (n for names in R.KERNELS.values() for n in names):
        assert name in funcs, name
        assert not has_opcode(funcs[name], "FFMA"), name
    xor, down = funcs[R.KERNELS["warp_xor"][0]], funcs[R.KERNELS["warp_down"][0]]
    assert "SHFL.BFLY" in opcodes(xor) and not has_opcode(xor, "SHFL.DOWN")
    assert "SHFL.DOWN" in opcodes(down) and not has_opcode(down, "SHFL.BFLY")
    tree = funcs[R.KERNELS["block_tree"][0]]
    assert has_opcode(tree, "BAR") and has_opcode(tree, "LDS") and not has_opcode(tree, "SHFL")
    atomic = funcs[R.KERNELS["atomic"][0]]
    assert any(has_opcode(atomic, op) for op in ("RED", "REDG", "ATOM", "ATOMG")), opcodes(atomic)
    for name in R.KERNELS["grid_two_pass"] + R.KERNELS["sequential"] + R.KERNELS["block_tree"] + R.KERNELS["vec4"]:
        assert not any(has_opcode(funcs[name], op) for op in ("RED", "REDG", "ATOM", "ATOMG")), name


# ---------------------------------------------------------------------------------------------
# argument checks (CPU tensors and numpy arrays: no GPU needed)
# ---------------------------------------------------------------------------------------------
def test_gemm_bad_arguments():
    torch = pytest.importorskip("torch")
    a = torch.zeros(4, 3)
    b = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="torch CUDA tensor or a CuPy array"):
        G.check_args(np.zeros((4, 3), np.float32), np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        G.check_args(torch.zeros(4, 3, 1), b)
    with pytest.raises(ValueError, match="inner dimensions"):
        G.check_args(a, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="float32 or both float64"):
        G.check_args(a, b.double())
    with pytest.raises(ValueError, match="float32 or both float64"):
        G.check_args(a.half(), b.half())
    with pytest.raises(ValueError, match="contiguous"):
        G.check_args(torch.zeros(3, 4).t(), b)
    with pytest.raises(ValueError, match="CUDA tensor"):
        G.check_args(a, b)
    with pytest.raises(ValueError, match="order"):
        G.gemm(a, b, order="backwards")
    with pytest.raises(ValueError, match="lanes"):
        G.plan("strided", lanes=6)
    with pytest.raises(ValueError, match="parts"):
        G.plan("splitk", parts=0)


def test_reduction_bad_arguments():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="torch CUDA tensor or a CuPy array"):
        R.check_input(np.zeros((2, 3), np.float32), 2)
    with pytest.raises(ValueError, match="2-D"):
        R.check_input(torch.zeros(6), 2)
    with pytest.raises(ValueError, match="1-D"):
        R.check_input(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="float32"):
        R.check_input(torch.zeros(2, 3, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="contiguous"):
        R.check_input(torch.zeros(3, 2).t(), 2)
    with pytest.raises(ValueError, match="CUDA tensor"):
        R.check_input(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="row variant"):
        R.reduce_rows(torch.zeros(2, 3), "atomic")
    with pytest.raises(ValueError, match="power of two"):
        R.reduce_rows(torch.zeros(2, 3), "block_tree", block=96)
    with pytest.raises(ValueError, match="power of two"):
        R.plan("warp_xor", width=64)
    with pytest.raises(ValueError, match="nondeterministic"):
        R.plan("atomic")


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------
def test_gemm_plans():
    seq_f = P.Sequential("fp32", fma=True, init="zero")
    seq_s = P.Sequential("fp32", fma=False, init="zero")
    assert G.plan("sequential", "fp32", True) == seq_f
    assert G.plan("sequential", "fp32", False) == seq_s
    assert G.plan("reverse", "fp32", True) == seq_f and G.terms_reversed("reverse")
    assert G.plan("strided", "fp32", True, lanes=8) == P.Strided(lanes=8, inner=seq_f, combine=P.Pairwise())
    assert G.plan("splitk", "fp32", False, parts=4) == P.SplitK(
        parts=4, layout="contiguous", inner=seq_s, combine=P.Sequential("fp32", init="zero"))
    assert G.plan("sequential", "fp64", True) == P.Sequential("fp64", fma=True, init="zero")
    assert G.plan("splitk", "fp64", False, parts=3) == P.SplitK(
        parts=3, layout="contiguous", inner=P.Sequential("fp64", fma=False, init="zero"),
        combine=P.Sequential("fp64", init="zero"))
    assert G.kernel_names("splitk", "fp64", False) == ["hspi_gemm_f64_splitk_partial_mul_add", "hspi_gemm_f64_splitk_combine"]


def test_reduction_plans():
    lane = P.Sequential("fp32", init="zero")
    assert R.plan("sequential") == lane
    assert R.plan("block_tree", block=128) == P.Strided(lanes=128, inner=lane, combine=P.BlockTree(128))
    assert R.plan("warp_xor", width=16) == P.Strided(lanes=16, inner=lane, combine=P.WarpButterfly(16))
    assert R.plan("warp_down", width=32) == P.Strided(lanes=32, inner=lane, combine=P.BlockTree(32))
    assert R.plan("grid_two_pass", blocks=4, block=8) == P.Strided(
        lanes=32, inner=lane,
        combine=P.SplitK(parts=4, layout="contiguous", inner=P.BlockTree(8), combine=P.Sequential("fp32", init="zero")))
    assert R.DETERMINISTIC["atomic"] is False


# ---------------------------------------------------------------------------------------------
# The kernels' loops, transcribed literally (scalar numpy fp32), against evaluate(plan)
# ---------------------------------------------------------------------------------------------
F32 = np.float32


def _fma(a, b, c):
    return E.fma32(F32(a), F32(b), F32(c))[()]


def _step(acc, a, b, fused):
    return _fma(a, b, acc) if fused else F32(acc + F32(a * b))


def _kernel_gemm_one(a_row, b_col, order, fused, lanes, parts):
    K = len(a_row)
    if order in ("sequential", "reverse"):
        acc = F32(0)
        for k in (range(K) if order == "sequential" else range(K - 1, -1, -1)):
            acc = _step(acc, a_row[k], b_col[k], fused)
        return acc
    if order == "strided":
        v = []
        for j in range(lanes):
            acc = F32(0)
            for k in range(j, K, lanes):
                acc = _step(acc, a_row[k], b_col[k], fused)
            v.append(acc)
        s = 1
        while s < lanes:
            for j in range(0, lanes - s, 2 * s):
                v[j] = F32(v[j] + v[j + s])
            s *= 2
        return v[0]
    chunk = -(-K // parts)
    total = F32(0)
    for p in range(parts):
        acc = F32(0)
        for k in range(min(p * chunk, K), min((p + 1) * chunk, K)):
            acc = _step(acc, a_row[k], b_col[k], fused)
        total = F32(total + acc)
    return total


def _tricky(shape, rng):
    x = rng.standard_normal(shape).astype(F32)
    x[rng.random(shape) < 0.2] = F32(-0.0)
    x[rng.random(shape) < 0.1] = F32(0.0)
    x[rng.random(shape) < 0.1] *= F32(2.0**-140)
    return x


@pytest.mark.parametrize("order,lanes,parts", [("sequential", 8, 4), ("reverse", 8, 4), ("strided", 4, 4),
                                               ("strided", 16, 4), ("splitk", 8, 3), ("splitk", 8, 8)])
@pytest.mark.parametrize("fused", [True, False])
def test_gemm_transcription_matches_plan(order, lanes, parts, fused):
    rng = np.random.default_rng(7)
    for M, N, K in ((5, 4, 11), (3, 3, 0), (4, 2, 2)):
        if K == 0 and order == "splitk":
            continue  # evaluate's numpy SplitK over K = 0 fails to reshape (reported); the GPU gives +0
        A, B = _tricky((M, K), rng), _tricky((K, N), rng)
        A[0] = F32(-0.0)  # a row of -0 products: the +0 seed decides the sign
        B[:, 0] = np.abs(B[:, 0])
        want = np.array([[_kernel_gemm_one(A[m], B[:, n], order, fused, lanes, parts) for n in range(N)]
                         for m in range(M)], F32).reshape(M, N)
        got = G.reference(A, B, order, fused, lanes=lanes, parts=parts, backend="numpy")
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (order, M, N, K)


def _kernel_tree(v):
    v = list(v)
    s = len(v) // 2
    while s:
        for t in range(s):
            v[t] = F32(v[t] + v[t + s])
        s //= 2
    return v[0]


def _kernel_lanes(row, lanes):
    out = []
    for j in range(lanes):
        acc = F32(0)
        for i in range(j, len(row), lanes):
            acc = F32(acc + row[i])
        out.append(acc)
    return out


def _kernel_row(row, variant, block, width):
    if variant == "sequential":
        return _kernel_lanes(row, 1)[0]
    if variant == "block_tree":
        return _kernel_tree(_kernel_lanes(row, block))
    v = _kernel_lanes(row, width)
    s = width // 2
    while s:  # xor: every lane v[i] + v[i^s]; down: v[i] + v[i+s] (own value past the end)
        if variant == "warp_xor":
            v = [F32(v[i] + v[i ^ s]) for i in range(width)]
        else:
            v = [F32(v[i] + (v[i + s] if i + s < width else v[i])) for i in range(width)]
        s //= 2
    return v[0]


@pytest.mark.parametrize("variant,block,width", [("sequential", 1, 1), ("block_tree", 8, 1), ("block_tree", 32, 1),
                                                 ("warp_xor", 1, 8), ("warp_down", 1, 8), ("warp_down", 1, 32)])
def test_row_transcription_matches_plan(variant, block, width):
    rng = np.random.default_rng(3)
    for rows, n in ((6, 37), (3, 5), (2, 0)):
        x = _tricky((rows, n), rng)
        if rows > 1:
            x[1] = F32(-0.0)
        want = np.array([_kernel_row(x[r], variant, block, width) for r in range(rows)], F32)
        got = R.reference(x, variant, block=block, width=width, backend="numpy")
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (variant, rows, n)


@pytest.mark.parametrize("blocks,block", [(3, 4), (1, 8), (4, 2)])
def test_grid_transcription_matches_plan(blocks, block):
    rng = np.random.default_rng(5)
    for n in (0, 5, 29, 100):
        x = _tricky((n,), rng)
        lanes = _kernel_lanes(x, blocks * block)
        partials = [_kernel_tree(lanes[b * block:(b + 1) * block]) for b in range(blocks)]
        want = F32(0)
        for p in partials:
            want = F32(want + p)
        got = R.reference(x, "grid_two_pass", blocks=blocks, block=block, backend="numpy")
        assert got.shape == () and got.view(np.uint32) == np.array(want).view(np.uint32), n


# ---------------------------------------------------------------------------------------------
# On a GPU: small bit-exact checks per variant
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("order,lanes,parts", [("sequential", 8, 4), ("reverse", 8, 4), ("strided", 8, 4),
                                               ("strided", 32, 4), ("splitk", 8, 3)])
@pytest.mark.parametrize("fused", [True, False])
def test_gpu_gemm_bits(dtype, order, lanes, parts, fused):
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    from hspi_kernels.kernels.validation.cuda_core import gemm_inputs
    from hspi_kernels.numerics.formats import same_bits

    np_dtype = G.DTYPES[dtype][1]
    for kind, (M, N, K) in (("random", (67, 45, 77)), ("adversarial", (41, 37, 24))):
        A, B = gemm_inputs(kind, M, N, K, np_dtype, seed=M + K)
        got = G.gemm(torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda(), order, fused, lanes=lanes, parts=parts)
        assert isinstance(got, torch.Tensor) and got.shape == (M, N)
        ref = G.reference(A, B, order, fused, lanes=lanes, parts=parts, backend="numpy")
        assert int(same_bits(got.cpu().numpy(), ref).sum()) == M * N, (kind, order)


@pytest.mark.gpu
@pytest.mark.parametrize("variant,params", [("sequential", {}), ("block_tree", {"block": 128}),
                                            ("warp_xor", {"width": 32}), ("warp_xor", {"width": 8}),
                                            ("warp_down", {"width": 32}), ("warp_down", {"width": 2})])
def test_gpu_row_bits(variant, params):
    cupy = pytest.importorskip("cupy")
    from hspi_kernels.kernels.validation.cuda_core import row_inputs
    from hspi_kernels.numerics.formats import same_bits

    for kind, (rows, n) in (("random", (300, 301)), ("adversarial", (50, 200))):
        x = row_inputs(kind, rows, n, seed=rows)
        got = R.reduce_rows(cupy.asarray(x), variant, **params)
        assert isinstance(got, cupy.ndarray)
        ref = R.reference(x, variant, backend="numpy", **params)
        assert int(same_bits(cupy.asnumpy(got), ref).sum()) == rows, (variant, kind)


@pytest.mark.gpu
def test_gpu_vector_bits_and_atomic_control():
    cupy = pytest.importorskip("cupy")
    from hspi_kernels.kernels.validation.cuda_core import row_inputs
    from hspi_kernels.numerics.formats import same_bits

    x = row_inputs("random", 1, 100_003, seed=1).reshape(-1)
    got = cupy.asnumpy(R.reduce_vector(cupy.asarray(x), blocks=16, block=64))
    assert got.shape == ()
    ref = R.reference(x, "grid_two_pass", blocks=16, block=64, backend="numpy")
    assert int(same_bits(got, ref).sum()) == 1
    total = cupy.asnumpy(R.reduce_vector_atomic(cupy.asarray(x)))
    assert abs(float(total) - float(np.sum(x, dtype=np.float64))) < 1e-2 * np.sqrt(x.size)
