"""Runtime loader for the package's CUDA kernels: AOT cubin first, NVRTC of the same source second.

Nothing here imports CuPy or torch at import time; both are imported on first use, and every
failure to reach a GPU is a :class:`CudaUnavailable` with a message that says what is missing.

Which cubin a device gets (``select_cubin``), for a device of compute capability X.Y:

1. ``sm_XYa`` -- the arch-specific build (wgmma, setmaxnreg, ...); runs on exactly X.Y only;
2. ``sm_XY``  -- the plain build for exactly X.Y;
3. ``sm_XZf`` -- a family build (CUDA >= 12.9) with the same major X and Z <= Y;
4. ``sm_XZ``  -- a plain build with the same major X and Z < Y (SASS is forward compatible
   within a major version, so a sm_80 cubin runs on sm_86 / sm_89).

An ``a`` cubin of another minor, any cubin of another major and any cubin of a higher minor are
never taken. With no match the source is compiled by NVRTC for ``sm_XY`` (``sm_XYa`` when the
build-info says the source is built for the arch-specific target of that device, or X >= 9).

The NVRTC fallback compiles the *installed* copy of the source (``hspi_kernels/cuda_src``) with
the flags of its ``// hspi-build:`` line translated to NVRTC options (``nvrtc_options``), so the
two paths realise the same contract; ``tests/test_cuda_gpu.py`` checks they give the same bits.
``HSPI_CUDA_LOAD=cubin|nvrtc|auto`` (or ``prefer=``) forces one path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shlex
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("hspi_kernels.kernels.cuda")

LOAD_ENV = "HSPI_CUDA_LOAD"
# nvcc flags every cubin gets (cmake/HspiCuda.cmake, HSPI_COMMON_NVCC_FLAGS); the per-source
# numerics flags follow from its "// hspi-build:" line. tests/test_cuda_build.py checks the match.
COMMON_NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo")
_PREFERENCES = ("auto", "cubin", "nvrtc")
_BUILD_LINE = re.compile(r"^// hspi-build:(.*)$", re.MULTILINE)


class CudaUnavailable(RuntimeError):
    """A CUDA kernel cannot be run here (no CuPy, no GPU, no cubin and no NVRTC, ...)."""


# ---------------------------------------------------------------------------------------------
# Build information and installed files (no CUDA needed)
# ---------------------------------------------------------------------------------------------
def _build_info() -> Any | None:
    try:
        from hspi_kernels import _build_info
    except ImportError:
        return None
    return _build_info


def package_root() -> Path:
    """Folder holding the installed ``cubins/`` and ``cuda_src/`` (next to ``_build_info.py``).

    In an editable install that is the build tree's install folder, not the source tree.
    """
    info = _build_info()
    if info is not None:
        return Path(info.__file__).parent
    return Path(__file__).resolve().parents[2]


def cubin_dir() -> Path:
    return package_root() / "cubins"


def source_path(source_rel: str) -> Path:
    """The installed copy of ``csrc/cuda/<source_rel>`` (what NVRTC compiles)."""
    installed = package_root() / "cuda_src" / source_rel
    if installed.is_file():
        return installed
    # Source checkout without an install step: csrc/cuda next to the package.
    checkout = Path(__file__).resolve().parents[3] / "csrc" / "cuda" / source_rel
    if checkout.is_file():
        return checkout
    raise CudaUnavailable(f"CUDA source {source_rel!r} not found (looked in {installed} and {checkout})")


def build_entries(source_rel: str | None = None) -> list[dict]:
    """The build-info's CUBINS entries (for one source when given), with ``on_disk`` added."""
    info = _build_info()
    if info is None:
        return []
    out = []
    for entry in info.CUBINS:
        if source_rel is None or entry["source"] == source_rel:
            e = dict(entry)
            e["path"] = str(cubin_dir() / entry["cubin"])
            e["on_disk"] = (cubin_dir() / entry["cubin"]).is_file()
            out.append(e)
    return out


def build_flags(source_rel: str) -> list[str]:
    """The numerics-pinning flags of a source's ``// hspi-build:`` line (e.g. ``['-fmad=false']``)."""
    text = source_path(source_rel).read_text()
    match = _BUILD_LINE.search(text)
    if match is None:
        raise CudaUnavailable(f"{source_rel}: no '// hspi-build:' line (the build would refuse it too)")
    flags = shlex.split(match.group(1))
    if not any(re.fullmatch(r"-fmad=(true|false)", f) for f in flags):
        raise CudaUnavailable(f"{source_rel}: '// hspi-build:' line does not pin -fmad=true|false")
    return flags


# ---------------------------------------------------------------------------------------------
# Arch selection and NVRTC option translation (pure functions, tested on CPU)
# ---------------------------------------------------------------------------------------------
_ARCH = re.compile(r"^sm_(\d+)(\d)([af]?)$")


def parse_arch(arch: str) -> tuple[int, int, str]:
    """``'sm_90a'`` -> ``(9, 0, 'a')``."""
    m = _ARCH.match(arch)
    if m is None:
        raise ValueError(f"not an SM arch: {arch!r}")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def select_cubin(archs: list[str], cc: tuple[int, int]) -> str | None:
    """The best of ``archs`` for a device of compute capability ``cc`` (rules in the module doc)."""
    major, minor = cc
    ranked: list[tuple[tuple[int, int], str]] = []
    for arch in archs:
        a_major, a_minor, suffix = parse_arch(arch)
        if a_major != major or a_minor > minor:
            continue
        if suffix == "a" and a_minor == minor:
            ranked.append(((0, 0), arch))
        elif suffix == "" and a_minor == minor:
            ranked.append(((1, 0), arch))
        elif suffix == "f":
            ranked.append(((2, minor - a_minor), arch))
        elif suffix == "" and a_minor < minor:
            ranked.append(((3, minor - a_minor), arch))
    return min(ranked)[1] if ranked else None


def nvrtc_arch(cc: tuple[int, int], built_archs: list[str] | None = None) -> str:
    """NVRTC target for a device: the ``a`` variant when the build targets it (or on sm_90+)."""
    plain = f"sm_{cc[0]}{cc[1]}"
    if built_archs is not None and f"{plain}a" in built_archs:
        return plain + "a"
    if cc[0] >= 9:
        return plain + "a"
    return plain


# nvcc flag -> NVRTC option. Flags that change numerics translate one to one; -O3 is NVRTC's
# default (it has no -O flag); anything else is refused so a new flag cannot be silently dropped.
_NVRTC_VALUE_FLAGS = {
    "-fmad": "--fmad",
    "-ftz": "--ftz",
    "-prec-div": "--prec-div",
    "-prec-sqrt": "--prec-sqrt",
    "-std": "--std",
    "-maxrregcount": "--maxrregcount",
}
_NVRTC_PLAIN_FLAGS = {
    "-lineinfo": "--generate-line-info",
    "-use_fast_math": "--use_fast_math",
    "--use_fast_math": "--use_fast_math",
    "-extra-device-vectorization": "--extra-device-vectorization",
}
_NVRTC_DROPPED = {"-O3", "-O2", "-O1", "-O0"}


def nvrtc_options(flags: list[str], arch: str, include_dirs: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Translate nvcc flags (build-info / ``// hspi-build:``) to NVRTC options for ``arch``.

    >>> nvrtc_options(["-O3", "-std=c++17", "-lineinfo", "-fmad=false"], "sm_90a")
    ['--gpu-architecture=sm_90a', '--std=c++17', '--generate-line-info', '--fmad=false']
    """
    parse_arch(arch)
    out = [f"--gpu-architecture={arch}"]
    it = iter(flags)
    for flag in it:
        if flag in _NVRTC_DROPPED:
            continue
        if flag in _NVRTC_PLAIN_FLAGS:
            out.append(_NVRTC_PLAIN_FLAGS[flag])
            continue
        name, eq, value = flag.partition("=")
        name = "-" + name.lstrip("-")
        if name in _NVRTC_VALUE_FLAGS:
            if not eq:
                value = next(it, "")
            out.append(f"{_NVRTC_VALUE_FLAGS[name]}={value}")
        elif flag.startswith("-D") or flag.startswith("-U"):
            out.append(flag if len(flag) > 2 else flag + next(it, ""))
        elif flag.startswith("-Xptxas"):
            value = value if eq else next(it, "")
            out.append(f"--ptxas-options={value}")
        elif flag.startswith("-I"):
            out.append(f"--include-path={flag[2:] or next(it, '')}")
        else:
            raise ValueError(f"nvcc flag {flag!r} has no NVRTC translation; add one to nvrtc_options")
    out.extend(f"--include-path={d}" for d in include_dirs)
    return out


def _preference(prefer: str | None) -> str:
    prefer = (prefer or os.environ.get(LOAD_ENV) or "auto").lower()
    if prefer not in _PREFERENCES:
        raise ValueError(f"prefer / ${LOAD_ENV} must be one of {_PREFERENCES}, got {prefer!r}")
    return prefer


# ---------------------------------------------------------------------------------------------
# CuPy access
# ---------------------------------------------------------------------------------------------
def import_cupy():
    """CuPy, or :class:`CudaUnavailable` saying why not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install raising at import
        raise CudaUnavailable(
            f"CuPy is not importable ({type(exc).__name__}: {exc}); CUDA kernels need it: "
            "pip install 'hspi_kernels[gpu]' (cupy-cuda13x)"
        ) from exc
    return cupy


def device_capability(device_id: int | None = None) -> tuple[int, tuple[int, int]]:
    """(device id, compute capability) of ``device_id`` or CuPy's current device."""
    cupy = import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise CudaUnavailable(f"no usable CUDA device (CUDA runtime: {exc})") from exc
    if count == 0:
        raise CudaUnavailable("no CUDA device visible (getDeviceCount() == 0)")
    dev = cupy.cuda.Device(device_id) if device_id is not None else cupy.cuda.Device()
    cc = dev.compute_capability  # e.g. '90'
    return dev.id, (int(cc[:-1]), int(cc[-1]))


@dataclasses.dataclass
class LoadedModule:
    """A loaded CUDA module: ``function(name)`` gives a launchable ``cupy.RawKernel``."""

    source: str
    device_id: int
    arch: str
    path_taken: str  # "cubin:<file>" or "nvrtc"
    options: list[str]
    raw: Any  # cupy.RawModule
    nvrtc_log: str = ""
    cubin_file: str = ""  # the file loaded (installed cubin, or NVRTC's output in the cache)
    _functions: dict = dataclasses.field(default_factory=dict, repr=False)

    def function(self, name: str):
        if name not in self._functions:
            try:
                self._functions[name] = self.raw.get_function(name)
            except Exception as exc:
                raise CudaUnavailable(f"{self.source} ({self.path_taken}): no kernel {name!r}: {exc}") from exc
        return self._functions[name]


_CACHE: dict[tuple[str, int, str], LoadedModule] = {}
_LOCK = threading.Lock()


def load_module(source_rel: str, *, prefer: str | None = None, device: int | None = None) -> LoadedModule:
    """Load ``csrc/cuda/<source_rel>`` for a device (default: CuPy's current one), cached.

    ``prefer``: ``"auto"`` (cubin, else NVRTC), ``"cubin"`` (fail without a matching cubin) or
    ``"nvrtc"`` (always compile); default from ``$HSPI_CUDA_LOAD``, else ``"auto"``.
    """
    mode = _preference(prefer)
    device_id, cc = device_capability(device)
    key = (source_rel, device_id, mode)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        cupy = import_cupy()
        entries = [e for e in build_entries(source_rel) if e["built"] and e["on_disk"]]
        with cupy.cuda.Device(device_id):
            module = None
            if mode in ("auto", "cubin"):
                chosen = select_cubin([e["arch"] for e in entries], cc)
                if chosen is not None:
                    entry = next(e for e in entries if e["arch"] == chosen)
                    raw = cupy.RawModule(path=entry["path"])
                    module = LoadedModule(source_rel, device_id, chosen, f"cubin:{entry['cubin']}",
                                          list(entry["flags"]), raw, cubin_file=entry["path"])
                elif mode == "cubin":
                    have = [e["arch"] for e in entries] or "none"
                    raise CudaUnavailable(
                        f"{source_rel}: no cubin for sm_{cc[0]}{cc[1]} (built and on disk: {have}); "
                        f"rebuild with HSPI_CUDA_ARCHS including {cc[0]}{cc[1]}, or allow NVRTC"
                    )
            if module is None:
                module = _compile_nvrtc(cupy, source_rel, device_id, cc, [e["arch"] for e in build_entries(source_rel)])
        log.info("loaded %s on device %d (sm_%d%d) via %s", source_rel, device_id, cc[0], cc[1], module.path_taken)
        _CACHE[key] = module
        return module


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception as exc:
        raise CudaUnavailable(f"no cubin for this device and NVRTC is not available ({exc})") from exc
    return nvrtc


# NVRTC has no C++ standard library. Headers the kernels may include are supplied in memory;
# each defines only what device code uses (LP64: long is 64-bit on every CUDA host).
_NVRTC_SHIM_HEADERS = {
    "cstdint": """#pragma once
// hspi_kernels NVRTC shim for <cstdint> (NVRTC ships no C++ standard library)
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;
namespace std {
using ::int8_t; using ::int16_t; using ::int32_t; using ::int64_t;
using ::uint8_t; using ::uint16_t; using ::uint32_t; using ::uint64_t;
using ::intptr_t; using ::uintptr_t;
}
""",
}
_NVRTC_SHIM_HEADERS["stdint.h"] = _NVRTC_SHIM_HEADERS["cstdint"]


_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def local_headers(source: str, include_root: Path) -> list[tuple[str, str]]:
    """``[(name, text)]`` of the ``#include "..."`` headers a source pulls from the kernel tree
    (recursively, each once): NVRTC reads them from the include path, and their text is part of
    the NVRTC cache key so that editing a header recompiles its users."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    todo = _LOCAL_INCLUDE.findall(source)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = include_root / name
        if path.is_file():
            text = path.read_text()
            out.append((name, text))
            todo.extend(_LOCAL_INCLUDE.findall(text))
    return out


def _compile_nvrtc(cupy, source_rel: str, device_id: int, cc: tuple[int, int], built_archs: list[str]) -> LoadedModule:
    nvrtc = _nvrtc()
    src_file = source_path(source_rel)
    flags = [*COMMON_NVCC_FLAGS, *build_flags(source_rel)]
    arch = nvrtc_arch(cc, built_archs)
    options = nvrtc_options(flags, arch, include_dirs=[str(src_file.parents[len(Path(source_rel).parts) - 1])])
    source = src_file.read_text()
    try:
        version = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:
        raise CudaUnavailable(f"no cubin for this device and NVRTC is not usable ({exc})") from exc
    shims = sorted(_NVRTC_SHIM_HEADERS.items())
    headers = local_headers(source, src_file.parents[len(Path(source_rel).parts) - 1])
    digest = hashlib.sha256("\0".join([source, *options, version, *(t for _, t in shims),
                                        *(t for _, t in headers)]).encode()).hexdigest()[:24]
    cache = Path(os.environ.get("HSPI_CUDA_CACHE", Path(tempfile.gettempdir()) / "hspi_kernels_nvrtc"))
    cache.mkdir(parents=True, exist_ok=True)
    cubin_file = cache / f"{Path(source_rel).stem}.{arch}.{digest}.cubin"
    prog = nvrtc.createProgram(source, str(src_file.name), tuple(t.encode() for _, t in shims),
                               tuple(n.encode() for n, _ in shims))
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as exc:
            log_text = nvrtc.getProgramLog(prog)
            raise CudaUnavailable(f"NVRTC failed on {source_rel} with {options}:\n{log_text}") from exc
        log_text = nvrtc.getProgramLog(prog)
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    tmp = cubin_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(cubin)
    os.replace(tmp, cubin_file)
    raw = cupy.RawModule(path=str(cubin_file))
    return LoadedModule(source_rel, device_id, arch, "nvrtc", options, raw, nvrtc_log=log_text.strip(),
                        cubin_file=str(cubin_file))


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------------------------
# Environment report (for `hspi env`)
# ---------------------------------------------------------------------------------------------
def status() -> dict:
    """What the CUDA side can do here: CuPy, devices, cubins per arch (build-info and disk)."""
    info = _build_info()
    cubins: dict[str, dict] = {}
    for e in build_entries():
        slot = cubins.setdefault(e["arch"], {"built": [], "on_disk": [], "missing": []})
        if e["built"]:
            slot["built"].append(e["source"])
        (slot["on_disk"] if e["on_disk"] else slot["missing"]).append(e["source"])
    on_disk_files = sorted(str(p.relative_to(cubin_dir())) for p in cubin_dir().rglob("*.cubin")) if cubin_dir().is_dir() else []
    out: dict[str, Any] = {
        "cupy": {"importable": False, "version": None, "working": False, "error": None},
        "nvrtc": None,
        "devices": [],
        "build": {
            "nvcc_version": getattr(info, "NVCC_VERSION", None),
            "cuda_archs": list(getattr(info, "CUDA_ARCHS", [])),
            "mode": getattr(info, "HSPI_CUDA_MODE", None),
        },
        "cubins": cubins,
        "cubin_files": on_disk_files,
        "package_root": str(package_root()),
        "load_preference": os.environ.get(LOAD_ENV, "auto"),
    }
    try:
        cupy = import_cupy()
    except CudaUnavailable as exc:
        out["cupy"]["error"] = str(exc)
        return out
    out["cupy"].update(importable=True, version=cupy.__version__)
    try:
        out["nvrtc"] = ".".join(map(str, _nvrtc().getVersion()))
    except Exception as exc:  # noqa: BLE001 - report, never raise
        out["nvrtc"] = f"unavailable: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        for i in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            cc = (props["major"], props["minor"])
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            out["devices"].append({
                "id": i,
                "name": name,
                "cc": f"{cc[0]}.{cc[1]}",
                "sm_count": props["multiProcessorCount"],
                "l2_bytes": props["l2CacheSize"],
                "memory_bytes": props["totalGlobalMem"],
                "cubin_selected": select_cubin(list(cubins), cc),
            })
        out["cupy"]["working"] = count > 0
        if count == 0:
            out["cupy"]["error"] = "no CUDA device visible"
    except Exception as exc:  # noqa: BLE001
        out["cupy"]["error"] = f"CUDA runtime: {exc}"
    return out


# ---------------------------------------------------------------------------------------------
# Arrays in and out: torch CUDA tensors and CuPy arrays, launched on their framework's stream
# ---------------------------------------------------------------------------------------------
def array_kind(x: Any) -> str:
    """``"torch"`` or ``"cupy"`` for a device array; ``ValueError`` for anything else."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        if not x.is_cuda:
            raise ValueError(f"expected a CUDA tensor, got one on {x.device}")
        return "torch"
    if module == "cupy":
        return "cupy"
    if hasattr(x, "__cuda_array_interface__"):
        return "cai"
    raise ValueError(f"expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")


class LaunchContext:
    """Device, stream and zero-copy CuPy views for one launch over arrays of one framework.

    Inside ``with LaunchContext(a, b, ...) as lc:`` CuPy's current device is the arrays' device
    and its current stream is the framework's current stream (torch: ``torch.cuda.current_stream``;
    CuPy: its own current stream), so a ``RawKernel`` call is ordered with the caller's work.
    """

    def __init__(self, *arrays: Any):
        kinds = {array_kind(x) for x in arrays}
        if len(kinds) != 1:
            raise ValueError(f"all arrays must come from one framework, got {sorted(kinds)}")
        self.kind = kinds.pop()
        self.cupy = import_cupy()
        if self.kind == "torch":
            devices = {x.device.index for x in arrays}
        elif self.kind == "cupy":
            devices = {x.device.id for x in arrays}
        else:
            devices = {self.cupy.asarray(x).device.id for x in arrays}
        if len(devices) != 1:
            raise ValueError(f"all arrays must be on one device, got devices {sorted(devices)}")
        self.device_id = devices.pop()
        self._stack: list = []

    def __enter__(self) -> "LaunchContext":
        cupy = self.cupy
        dev = cupy.cuda.Device(self.device_id)
        dev.__enter__()
        self._stack.append(dev)
        if self.kind == "torch":
            import torch

            ptr = torch.cuda.current_stream(self.device_id).cuda_stream
            with warnings.catch_warnings():  # CuPy 14 deprecates ExternalStream, keeps it working
                warnings.simplefilter("ignore", DeprecationWarning)
                stream = cupy.cuda.ExternalStream(ptr, self.device_id)
            stream.__enter__()
            self._stack.append(stream)
        return self

    def __exit__(self, *exc) -> None:
        while self._stack:
            self._stack.pop().__exit__(*exc)

    def view(self, x: Any):
        """Zero-copy CuPy view of ``x`` (DLPack for torch, ``__cuda_array_interface__`` otherwise)."""
        if self.kind == "torch":
            return self.cupy.from_dlpack(x)
        return self.cupy.asarray(x)

    def empty_like(self, x: Any) -> Any:
        """An uninitialised array like ``x`` of the input's framework (the kind returned)."""
        if self.kind == "torch":
            import torch

            return torch.empty_like(x, memory_format=torch.contiguous_format)
        return self.cupy.empty_like(self.view(x))
