"""The fma probe on the GPU: cubin and NVRTC paths, torch and CuPy inputs, bits == CPU reference."""

from __future__ import annotations

import numpy as np
import pytest

from hspi_kernels.kernels.cuda import elementwise as ew
from hspi_kernels.kernels.cuda import loader

pytestmark = pytest.mark.gpu

N = 1 << 20


@pytest.fixture(scope="module")
def inputs():
    return ew.sample_inputs(N, seed=0)


def _count_equal(got: np.ndarray, ref: np.ndarray) -> int:
    return int(np.count_nonzero(got.view(np.uint32) == ref.view(np.uint32)))


def test_load_takes_cubin():
    pytest.importorskip("cupy")
    module = loader.load_module(ew.SOURCE)
    assert module.path_taken.startswith("cubin:"), module.path_taken
    assert module.arch.startswith("sm_")
    module.function("hspi_fma_f32")
    with pytest.raises(loader.CudaUnavailable, match="no kernel"):
        module.function("does_not_exist")


@pytest.mark.parametrize("prefer", ["cubin", "nvrtc"])
@pytest.mark.parametrize("fused", [True, False])
def test_bits_torch(inputs, fused, prefer):
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    a, b, c = (torch.from_numpy(x).cuda() for x in inputs)
    out = ew.fma(a, b, c, fused=fused, prefer=prefer)
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == torch.float32
    assert loader.load_module(ew.SOURCE, prefer=prefer).path_taken.startswith(prefer)
    got = out.cpu().numpy()
    ref = ew.reference(*inputs, fused=fused)
    assert _count_equal(got, ref) == N, f"{_count_equal(got, ref)}/{N} equal"


@pytest.mark.parametrize("prefer", ["cubin", "nvrtc"])
@pytest.mark.parametrize("fused", [True, False])
def test_bits_cupy(inputs, fused, prefer):
    cupy = pytest.importorskip("cupy")
    a, b, c = (cupy.asarray(x) for x in inputs)
    out = ew.fma(a, b, c, fused=fused, prefer=prefer)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
    got = cupy.asnumpy(out)
    ref = ew.reference(*inputs, fused=fused)
    assert _count_equal(got, ref) == N, f"{_count_equal(got, ref)}/{N} equal"


def test_fused_and_unfused_differ(inputs):
    """Negative control: the two kernels are distinguishable on these inputs."""
    ref_f, ref_u = ew.reference(*inputs, fused=True), ew.reference(*inputs, fused=False)
    assert _count_equal(ref_f, ref_u) < N - 1000


def test_torch_stream_and_shapes():
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    x = torch.randn(3, 5, 7, device="cuda")
    y = torch.randn(3, 5, 7, device="cuda")
    z = torch.randn(3, 5, 7, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = ew.fma(x, y, z)
    side.synchronize()
    assert out.shape == x.shape
    ref = ew.reference(x.cpu().numpy(), y.cpu().numpy(), z.cpu().numpy())
    assert np.array_equal(out.cpu().numpy().view(np.uint32), ref.view(np.uint32))
    empty = torch.empty(0, device="cuda")
    assert ew.fma(empty, empty, empty).numel() == 0


def test_wrapper_rejects_bad_inputs():
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    a = torch.zeros(8, device="cuda")
    with pytest.raises(ValueError, match="float32"):
        ew.fma(a.double(), a, a)
    with pytest.raises(ValueError, match="one shape"):
        ew.fma(a, a[:4], a)
    with pytest.raises(ValueError, match="contiguous"):
        ew.fma(a[::2], a[::2], a[::2])
    with pytest.raises(ValueError, match="CUDA tensor"):
        ew.fma(a.cpu(), a, a)


def test_status_on_gpu():
    pytest.importorskip("cupy")
    st = loader.status()
    assert st["cupy"]["working"] and st["devices"]
    assert st["devices"][0]["cubin_selected"] is not None


def test_nvrtc_cubin_sass_matches_contract():
    """NVRTC's cubin keeps the same contract as the AOT one: FFMA in fma, FMUL+FADD in mul_add."""
    pytest.importorskip("cupy")
    from hspi_kernels.kernels.cuda import sass

    try:
        sass.find_tool("cuobjdump")
        sass.find_tool("nvdisasm")
    except sass.SassToolsMissing as exc:
        pytest.skip(str(exc))
    module = loader.load_module(ew.SOURCE, prefer="nvrtc")
    try:
        kernels = sass.dump_sass(module.cubin_file)
    except RuntimeError as exc:
        # seen on H200 / NVRTC 13.0 via CuPy 14.2: cuobjdump "does not contain device code",
        # nvdisasm "invalid ELF file", while the driver loads it and its bits match (open issue)
        pytest.skip(f"SASS tools cannot read the NVRTC cubin: {exc}")
    assert sass.has_opcode(kernels["hspi_fma_f32"], "FFMA")
    assert sass.has_opcode(kernels["hspi_mul_add_f32"], "FMUL")
    assert not sass.has_opcode(kernels["hspi_mul_add_f32"], "FFMA")
