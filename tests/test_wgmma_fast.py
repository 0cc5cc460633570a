"""Fast Hopper wgmma GEMM (csrc/cuda/gemm/wgmma_fast_gemm.cu): SASS facts, plan, wrapper argument
checks, the shared split-K header; GPU bit-exact smoke tests (``gpu`` / ``sm90`` markers)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from test_tensor_core_kernels import _Fake, _cubin, _mnemonics, _sass

from hspi_kernels.kernels.cuda import gemm_tensor_core as tc

FAST_KERNELS = {  # kernel -> (HGMMA of its format, multicast TMA expected)
    "hspi_wgmma_fast_bf16_f32": ("HGMMA.64x256x16.F32.BF16", False),
    "hspi_wgmma_fast_f16_f32": ("HGMMA.64x256x16.F32", False),
    "hspi_wgmma_fast_bf16_f32_x2": ("HGMMA.64x256x16.F32.BF16", True),
    "hspi_wgmma_fast_f16_f32_x2": ("HGMMA.64x256x16.F32", True),
}
# float arithmetic the epilogue must not contain (it only moves bits; -fmad=false has nothing to do)
FLOAT_MATH = ("FFMA", "FADD", "FMUL", "HFMA2", "HADD2", "HMUL2")


def test_fast_cubin_built_with_pinned_flags():
    entry = _cubin(tc.FAST_SOURCE)
    assert entry["on_disk"], entry["path"]
    assert "-fmad=false" in entry["flags"]
    assert entry["arch"] == "sm_90a"


def test_fast_sass():
    sass_mod, funcs = _sass(tc.FAST_SOURCE)
    assert set(FAST_KERNELS) <= set(funcs), sorted(funcs)
    for name, (hgmma, multicast) in FAST_KERNELS.items():
        ops = _mnemonics(funcs[name])
        gmmas = {o for o in ops if "GMMA" in o or "MMA" in o}
        assert gmmas == {hgmma}, (name, sorted(gmmas))  # one wgmma shape, m64n256k16, this format
        assert "UTMALDG.2D" in ops, name
        assert ("UTMALDG.2D.MULTICAST" in ops) == multicast, name
        assert "USETMAXREG.TRY_ALLOC.CTAPOOL" in ops and "USETMAXREG.DEALLOC.CTAPOOL" in ops, name
        for op in FLOAT_MATH:
            assert not sass_mod.has_opcode(funcs[name], op), (name, op)
        # the wgmmas are pipelined (ptxas did not serialise them: C7515): one group stays in flight
        assert re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1", funcs[name]), name
        # no memory barrier in the main loop (a .release.cluster mbarrier arrive would put a
        # MEMBAR.ALL.GPU behind every stage release): only before the first and after the last HGMMA
        text = funcs[name]
        first, last = text.index("HGMMA"), text.rindex("HGMMA")
        assert not any(first < m.start() < last for m in re.finditer(r"MEMBAR", text)), name
    # negative control for the float-math check: the slow rung's split-K combine is an FADD
    _, slow = _sass(tc.SOURCES["wgmma"])
    assert sass_mod.has_opcode(slow["hspi_wgmma_bf16_f32"], "FADD")


def test_fast_no_spills():
    from hspi_kernels.kernels.cuda import sass

    try:
        tool = sass.find_tool("cuobjdump")
    except sass.SassToolsMissing as exc:
        pytest.skip(str(exc))
    out = subprocess.run([str(tool), "--dump-resource-usage", _cubin(tc.FAST_SOURCE)["path"]], capture_output=True,
                         text=True, check=True).stdout
    usage = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:\d+ STACK:\d+ \S+ LOCAL:\d+)", out))
    assert set(FAST_KERNELS) <= set(usage), out
    for name in FAST_KERNELS:
        assert "STACK:0" in usage[name] and "LOCAL:0" in usage[name], (name, usage[name])


def test_fast_source_states_its_order():
    from hspi_kernels.kernels.cuda.loader import build_flags, source_path

    text = source_path(tc.FAST_SOURCE).read_text()
    assert "Accumulation order" in text and "// hspi-build-archs: 90a" in text
    assert build_flags(tc.FAST_SOURCE) == ["-fmad=false"]
    assert "hspi_wgmma_fast_smem_bytes" in text  # the wrapper reads the shared-memory size from here


def test_fast_plan_is_the_slow_wgmma_plan():
    for fmt in tc.FAST_FORMATS:
        assert tc.wgmma_fast_gemm.plan(fmt) == tc.plan(in_format=fmt, path="wgmma")
        assert tc.wgmma_fast_gemm.plan(fmt, arch="sm_90a") == tc.plan(in_format=fmt, path="wgmma")
    with pytest.raises(ValueError, match="in_format"):
        tc.wgmma_fast_gemm.plan("tf32")


# -- the split-K order has one definition ----------------------------------------------------------
def test_split_k_combine_in_one_header():
    from hspi_kernels.kernels.cuda.loader import local_headers, source_path

    header = source_path("gemm/splitk_combine.cuh").read_text()
    assert "__fadd_rn(out[i], acc[i])" in header
    for source in tc.SOURCES.values():
        path = source_path(source)
        text = path.read_text()
        assert "hspi::splitk_fp32" in text and "__fadd_rn(" not in text, source
        names = [n for n, _ in local_headers(text, path.parents[1])]
        assert names == ["gemm/splitk_combine.cuh"], (source, names)  # found where NVRTC looks


def test_local_headers_follow_includes(tmp_path):
    from hspi_kernels.kernels.cuda.loader import local_headers

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.cuh").write_text('#include "f/b.cuh"\n')
    (tmp_path / "f" / "b.cuh").write_text("// b\n")
    src = '#include "f/a.cuh"\n#include <cstdint>\n#include "f/a.cuh"\n'
    assert [n for n, _ in local_headers(src, tmp_path)] == ["f/a.cuh", "f/b.cuh"]
    assert local_headers("#include <cstdint>\n", tmp_path) == []


# -- wrapper argument checks (no GPU) -----------------------------------------------------------------
def _fast(A=None, B=None, C=None, in_format="bf16", cluster=None):
    A = A if A is not None else _Fake((256, 128), "uint16")
    B = B if B is not None else _Fake((512, 128), "uint16")
    return tc.check_fast_arguments(A, B, C, in_format, cluster)


def test_fast_arguments_ok():
    assert _fast() == (256, 512, 128, "bf16", 2)
    assert _fast(A=_Fake((128, 64), "float16"), B=_Fake((256, 64), "float16"), in_format=None) == (128, 256, 64, "fp16", 1)
    assert _fast(C=_Fake((256, 512), "float32"), cluster=1) == (256, 512, 128, "bf16", 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(A=_Fake((192, 128), "uint16")), "M=192 must be a positive multiple of 128"),
    (dict(A=_Fake((128, 128), "uint16"), cluster=2), "cluster=2 needs M % 256"),
    (dict(B=_Fake((384, 128), "uint16")), "N=384 must be a positive multiple of 256"),
    (dict(A=_Fake((256, 96), "uint16"), B=_Fake((512, 96), "uint16")), "K=96 must be a positive multiple of 64"),
    (dict(B=_Fake((128, 512), "uint16")), "B_nk is"),
    (dict(in_format="tf32"), "in_format"),
    (dict(in_format=None), "cannot infer"),
    (dict(cluster=4), "cluster"),
    (dict(A=_Fake((256, 128), "float32")), "dtype float32"),
    (dict(A=_Fake((256, 128), "float16"), B=_Fake((512, 128), "uint16"), in_format="fp16"), "one dtype"),
    (dict(A=_Fake((256, 128), "uint16", contiguous=False)), "contiguous"),
    (dict(B=_Fake((512, 128), "uint16", ptr=4104)), "aligned"),
    (dict(C=_Fake((256, 256), "float32")), "C must have shape"),
    (dict(C=_Fake((256, 512), "float16")), "dtype float16"),
])
def test_fast_arguments_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fast(**kwargs)


@pytest.mark.parametrize("group_m", [0, -1, 2.5, True])
def test_fast_wrapper_rejects_group_m(group_m, monkeypatch):
    monkeypatch.setattr(tc, "_kind", lambda x: "cupy")  # argument checks only: no launch happens
    with pytest.raises(ValueError, match="group_m"):
        tc.wgmma_fast_gemm(_Fake((256, 128), "uint16"), _Fake((512, 128), "uint16"), in_format="bf16",
                           group_m=group_m)


def test_fast_wrapper_rejects_host_arrays():
    with pytest.raises(ValueError, match="torch CUDA tensor or a CuPy array"):
        tc.wgmma_fast_gemm(np.zeros((128, 64), np.float16), np.zeros((256, 64), np.float16), in_format="fp16")


def test_tensor_map_box_rule():
    with pytest.raises(ValueError, match="128-byte box row"):
        tc.tensor_map_2d(0, 128, 64, 128, box_cols=32)


# -- GPU: bit-exact smoke tests ----------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.sm90
@pytest.mark.parametrize("in_format", tc.FAST_FORMATS)
@pytest.mark.parametrize("cluster, grid", [(1, None), (2, None), (2, 2)])
@pytest.mark.parametrize("with_c", [False, True])
def test_gpu_fast_matches_plan_and_slow_kernel(in_format, cluster, grid, with_c):
    from hspi_kernels.numerics.evaluate import gemm
    from hspi_kernels.kernels.validation import tensor_core as V

    rng = np.random.default_rng(7)
    A, B = V.make_inputs("gdisc", in_format, 256, 512, 320, rng)
    C = V.make_c(A, B, "fp32", rng) if with_c else None
    got = V.gpu_fast_gemm(A, B, C, in_format, cluster, grid)
    assert V.same_bits(got, gemm(tc.wgmma_fast_gemm.plan(in_format), A, B, C)).all()
    assert V.same_bits(got, V.gpu_gemm("wgmma", A, B, C, in_format, "fp32")).all()
    # negative control: the split-K=2 order is told apart on these inputs
    wrong = gemm(tc.plan(in_format=in_format, split_k=2, path="wgmma"), A, B, C)
    assert not V.same_bits(got, wrong).all()


def test_tensor_maps_cached_on_address_and_geometry(monkeypatch):
    made = []
    monkeypatch.setattr(tc, "_TENSOR_MAPS", {})
    monkeypatch.setattr(tc, "_encode_tensor_map", lambda *key: made.append(key) or object())
    first = tc.tensor_map_2d(4096, 256, 128, 128)
    assert tc.tensor_map_2d(4096, 256, 128, 128) is first
    assert tc.tensor_map_2d(8192, 256, 128, 128) is not first  # another address
    assert tc.tensor_map_2d(4096, 128, 256, 128) is not first  # another geometry
    assert made == [(4096, 256, 128, 128, 64), (8192, 256, 128, 128, 64), (4096, 128, 256, 128, 64)]
