"""CUDA build, SASS and loader checks that need no GPU (run in CI).

The build-info is read exactly as the loader reads it; the SASS test has a negative control
(the same source compiled with -fmad=true must show an FFMA in the mul_add kernel).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hspi_kernels
from hspi_kernels.kernels.cuda import loader, sass

SOURCE = "elementwise/fma_probe.cu"

try:
    from hspi_kernels import _build_info
except ImportError:  # a source tree that was never built
    _build_info = None

needs_build = pytest.mark.skipif(_build_info is None, reason="hspi_kernels._build_info missing (package not built)")


def _cubin(arch: str = "sm_90a") -> Path:
    entry = next((e for e in loader.build_entries(SOURCE) if e["arch"] == arch and e["built"]), None)
    if entry is None:
        pytest.skip(f"no {arch} cubin of {SOURCE} in this build (nvcc missing or arch not requested)")
    return Path(entry["path"])


def _sass_tools() -> None:
    try:
        sass.find_tool("cuobjdump")
        sass.find_tool("nvdisasm")
    except sass.SassToolsMissing as exc:
        pytest.skip(f"SASS tools missing: {exc}")


# ---------------------------------------------------------------------------------------------
# build-info
# ---------------------------------------------------------------------------------------------
@needs_build
def test_build_info_entries_consistent():
    assert _build_info.CUBINS, "build-info lists no cubins"
    root = Path(_build_info.__file__).parent
    for entry in _build_info.CUBINS:
        assert set(entry) >= {"source", "arch", "cubin", "flags", "built"}
        assert any(f.startswith("-fmad=") for f in entry["flags"]), entry
        assert entry["arch"] in {f"sm_{a}" for a in _build_info.CUDA_ARCHS}, entry
        assert entry["cubin"].endswith(f".{entry['arch']}.cubin")
        if entry["built"]:
            assert (root / "cubins" / entry["cubin"]).is_file(), f"built but missing: {entry['cubin']}"
        assert (root / "cuda_src" / entry["source"]).is_file(), f"source not installed: {entry['source']}"


@needs_build
def test_build_flags_match_source_line():
    """The NVRTC fallback re-derives the flags from the source: they must equal the build's."""
    for entry in _build_info.CUBINS:
        expected = [*loader.COMMON_NVCC_FLAGS, *loader.build_flags(entry["source"])]
        assert entry["flags"] == expected, (entry["source"], entry["flags"], expected)


@needs_build
def test_nvcc_version_recorded():
    if shutil.which("nvcc") is None and not _build_info.NVCC:
        pytest.skip("nvcc not on PATH and the build found none")
    assert _build_info.NVCC_VERSION.startswith("release "), _build_info.NVCC_VERSION


# ---------------------------------------------------------------------------------------------
# SASS: the pinned -fmad shows in the machine code (with a negative control)
# ---------------------------------------------------------------------------------------------
@needs_build
def test_sass_fma_and_mul_add():
    _sass_tools()
    kernels = sass.dump_sass(_cubin())
    assert set(kernels) >= {"hspi_fma_f32", "hspi_mul_add_f32"}, sorted(kernels)
    assert sass.has_opcode(kernels["hspi_fma_f32"], "FFMA")
    mul_add = kernels["hspi_mul_add_f32"]
    assert sass.has_opcode(mul_add, "FMUL") and sass.has_opcode(mul_add, "FADD")
    assert not sass.has_opcode(mul_add, "FFMA")


def test_sass_negative_control_fmad_true(tmp_path):
    """With -fmad=true nvcc contracts a plain a*b+c: the FFMA check above can fail."""
    _sass_tools()
    nvcc = shutil.which("nvcc") or (_build_info.NVCC if _build_info else None)
    if not nvcc:
        pytest.skip("nvcc not found")
    src = tmp_path / "contract.cu"
    # the probe's mul_add written without intrinsics, so only -fmad decides fusion
    src.write_text(
        'extern "C" __global__ void mul_add(const float* a, const float* b, const float* c, float* o)\n'
        "{ int i = threadIdx.x; o[i] = a[i] * b[i] + c[i]; }\n"
    )
    out = {}
    for fmad in ("true", "false"):
        cubin = tmp_path / f"contract_{fmad}.cubin"
        subprocess.run([nvcc, "-cubin", "-arch=sm_90a", "-O3", f"-fmad={fmad}", "-o", str(cubin), str(src)],
                       check=True, capture_output=True)
        out[fmad] = sass.dump_sass(cubin)["mul_add"]
    assert sass.has_opcode(out["true"], "FFMA")
    assert not sass.has_opcode(out["false"], "FFMA") and sass.has_opcode(out["false"], "FMUL")


def test_sass_negative_control_probe_source(tmp_path):
    """The shipped probe with -fmad=true: __fmul_rn/__fadd_rn must still keep FMUL+FADD.

    This pins the second half of the contract: the intrinsics, not only the flag, forbid fusion.
    """
    _sass_tools()
    nvcc = shutil.which("nvcc") or (_build_info.NVCC if _build_info else None)
    if not nvcc:
        pytest.skip("nvcc not found")
    cubin = tmp_path / "probe_fmad_true.cubin"
    subprocess.run([nvcc, "-cubin", "-arch=sm_90a", *loader.COMMON_NVCC_FLAGS, "-fmad=true", "-o", str(cubin),
                    str(loader.source_path(SOURCE))], check=True, capture_output=True)
    kernels = sass.dump_sass(cubin)
    assert not sass.has_opcode(kernels["hspi_mul_add_f32"], "FFMA")
    assert sass.has_opcode(kernels["hspi_fma_f32"], "FFMA")


def test_split_functions_and_opcodes():
    text = (
        "\tFunction : k1\n"
        "        /*0000*/                   LDC R1, c[0x0][0x28] ;  /* 0x00000a00ff017b82 */\n"
        "        /*0010*/              @!P0 FFMA.FTZ R0, R1, R2, R3 ;\n"
        "\tFunction : k2\n"
        "        /*0000*/                   HFMA2.MMA R3, -RZ, RZ, 0 ;\n"
    )
    kernels = sass.split_functions(text)
    assert list(kernels) == ["k1", "k2"]
    assert sass.opcodes(kernels["k1"]) == ["LDC", "FFMA.FTZ"]
    assert sass.has_opcode(kernels["k1"], "FFMA")
    assert not sass.has_opcode(kernels["k2"], "FFMA")  # HFMA2 is not FFMA


# ---------------------------------------------------------------------------------------------
# loader: lazy import, clear errors, arch selection, NVRTC options
# ---------------------------------------------------------------------------------------------
def test_import_is_lazy():
    code = (
        "import sys, hspi_kernels, hspi_kernels.kernels.cuda, hspi_kernels.kernels.cuda.elementwise, hspi_kernels.kernels.cuda.sass; "
        "bad = [m for m in ('cupy', 'torch', 'triton') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _cupy_importable() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_cupy_importable(), reason="CuPy is installed here: the no-CuPy error path is not reachable")
def test_unavailable_without_cupy():
    with pytest.raises(loader.CudaUnavailable, match="CuPy is not importable"):
        loader.load_module(SOURCE)
    st = loader.status()
    assert st["cupy"]["importable"] is False and "CuPy" in st["cupy"]["error"]
    assert st["devices"] == []
    assert isinstance(loader.CudaUnavailable("x"), RuntimeError)


def test_status_lists_cubins():
    st = loader.status()
    assert set(st) >= {"cupy", "devices", "cubins", "cubin_files", "build"}
    if _build_info is not None:
        for entry in _build_info.CUBINS:
            slot = st["cubins"][entry["arch"]]
            assert entry["source"] in (slot["on_disk"] if entry["built"] else slot["missing"])


@pytest.mark.parametrize(
    ("archs", "cc", "expected"),
    [
        (["sm_90a"], (9, 0), "sm_90a"),
        (["sm_90", "sm_90a"], (9, 0), "sm_90a"),
        (["sm_90"], (9, 0), "sm_90"),
        (["sm_90a"], (8, 0), None),  # other major
        (["sm_90a"], (10, 0), None),
        (["sm_80"], (8, 6), "sm_80"),  # same major, lower minor: SASS compatible
        (["sm_80", "sm_86"], (8, 9), "sm_86"),
        (["sm_86"], (8, 0), None),  # never a higher minor
        (["sm_100a"], (10, 3), None),  # an 'a' cubin runs on its exact CC only
        (["sm_100f", "sm_100"], (10, 3), "sm_100f"),
        (["sm_103a", "sm_100f"], (10, 3), "sm_103a"),
        ([], (9, 0), None),
    ],
)
def test_select_cubin(archs, cc, expected):
    assert loader.select_cubin(archs, cc) == expected


def test_nvrtc_arch():
    assert loader.nvrtc_arch((9, 0), ["sm_90a"]) == "sm_90a"
    assert loader.nvrtc_arch((9, 0)) == "sm_90a"
    assert loader.nvrtc_arch((8, 9), ["sm_90a"]) == "sm_89"


def test_nvrtc_options_translation():
    opts = loader.nvrtc_options(["-O3", "-std=c++17", "-lineinfo", "-fmad=false"], "sm_90a", ["/inc"])
    assert opts == ["--gpu-architecture=sm_90a", "--std=c++17", "--generate-line-info", "--fmad=false",
                    "--include-path=/inc"]
    assert "--fmad=true" in loader.nvrtc_options(["-fmad=true"], "sm_80")
    assert loader.nvrtc_options(["-ftz=true", "-prec-div=false", "-DX=1", "-Iinc"], "sm_90")[1:] == [
        "--ftz=true", "--prec-div=false", "-DX=1", "--include-path=inc"]
    assert loader.nvrtc_options(["--use_fast_math", "-Xptxas=-v"], "sm_90")[1:] == [
        "--use_fast_math", "--ptxas-options=-v"]
    with pytest.raises(ValueError, match="no NVRTC translation"):
        loader.nvrtc_options(["-fmad=false", "--expt-relaxed-constexpr-typo"], "sm_90a")
    with pytest.raises(ValueError, match="not an SM arch"):
        loader.nvrtc_options([], "compute_90")


def test_nvrtc_options_for_installed_source():
    flags = [*loader.COMMON_NVCC_FLAGS, *loader.build_flags(SOURCE)]
    assert "--fmad=false" in loader.nvrtc_options(flags, "sm_90a")


def test_build_flags_require_fmad(tmp_path, monkeypatch):
    (tmp_path / "cuda_src" / "x").mkdir(parents=True)
    (tmp_path / "cuda_src" / "x" / "k.cu").write_text("// hspi-build: -O3\n")
    monkeypatch.setattr(loader, "package_root", lambda: tmp_path)
    with pytest.raises(loader.CudaUnavailable, match="does not pin -fmad"):
        loader.build_flags("x/k.cu")


def test_prefer_validation(monkeypatch):
    monkeypatch.setenv(loader.LOAD_ENV, "nvrtc")
    assert loader._preference(None) == "nvrtc"
    assert loader._preference("cubin") == "cubin"
    with pytest.raises(ValueError, match="must be one of"):
        loader._preference("ptx")


def test_package_root_holds_installed_files():
    root = loader.package_root()
    assert (root / "cuda_src" / SOURCE).is_file() or not hasattr(hspi_kernels, "_build_info")


@needs_build
def test_nvdisasm_direct_matches_cuobjdump():
    """The nvdisasm fallback of dump_sass (used for NVRTC cubins) sees the same instructions."""
    _sass_tools()
    cubin = _cubin()
    via_cuobjdump = sass.dump_sass(cubin)
    text = subprocess.run([str(sass.find_tool("nvdisasm")), str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    direct = sass.split_nvdisasm(text)
    assert set(direct) == set(via_cuobjdump)
    for name in direct:
        assert sass.opcodes(direct[name]) == sass.opcodes(via_cuobjdump[name]), name
